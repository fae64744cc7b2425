"""Session endpoints (AgentCore's `allowedPorts`): boto3 sees `sessionEndpointUrl`; requests
signed by botocore's own SigV4 signer reach an extra port of the session's sandboxed agent
(HTTP and SSE) through the path form; a browser-style WebSocket reaches it through the host
form with a port-scoped token and no credential; ports outside the list, other principals,
other ports' tokens and ended sessions are refused."""

import json
import shutil
import socket
import uuid

import boto3
import httpx
import pytest
import websockets.sync.client
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from conftest import ROOT, Gateway

FIRST = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SECOND = ("AKIDSECONDEXAMPLE", "SecondExampleSecretKey0123456789abcdef")
DOMAIN = "sessions.localhost"

CONFIG = f"""
[session_endpoints]
domain = "{DOMAIN}"
token_ttl_secs = 120

[[runtimes]]
name = "default"
allowed_ports = [8081, "9100-9101"]
[runtimes.auth]
mode = "sigv4"
regions = ["us-east-1"]
credentials_file = "{ROOT / 'conf' / 'credentials.example.toml'}"
[runtimes.backend]
provider = "sandbox"
args = ["agent", "--extra-port", "8081"]
egress = false
"""


def signed(method: str, url: str, key, body: bytes = b"") -> httpx.Response:
    """A request signed as any AWS SDK signs it (botocore's SigV4 signer)."""
    req = AWSRequest(method=method, url=url, data=body)
    SigV4Auth(Credentials(*key), "bedrock-agentcore", "us-east-1").add_auth(req)
    return httpx.request(method, url, headers=dict(req.headers.items()), content=body, timeout=30)


def browser_ws(gw: Gateway, host: str):
    """A WebSocket as a browser opens one on `http://{host}/`: the host name carries the token,
    no credential is sent (the connection goes to the gateway, as wildcard DNS would send it)."""
    ip, port = gw.http.rsplit(":", 1)
    sock = socket.create_connection((ip, int(port)))
    return websockets.sync.client.connect(f"ws://{host}/ws", sock=sock, origin=f"http://{host}",
                                          open_timeout=30)


def test_session_endpoints_reach_a_sessions_own_ports(tmp_path):
    if not shutil.which("bwrap"):
        pytest.fail("bubblewrap is required (scripts/setup --test installs it)")
    gw = Gateway(tmp_path, CONFIG)
    try:
        c = boto3.client("bedrock-agentcore", region_name="us-east-1", endpoint_url=f"http://{gw.http}",
                         aws_access_key_id=FIRST[0], aws_secret_access_key=FIRST[1],
                         config=Config(retries={"max_attempts": 1}, read_timeout=60))
        sid = f"endpoint-{uuid.uuid4()}"
        r = c.invoke_agent_runtime(agentRuntimeArn="default", runtimeSessionId=sid, payload=b"{}")
        instance = json.loads(r["response"].read())["instance"]
        base = r["sessionEndpointUrl"]
        assert base == f"http://{gw.http}/runtimes/default/sessions/{sid}"

        # HTTP through the path form: the agent's app on 8081 sees its own path and query.
        got = signed("GET", f"{base}/ports/8081/hello?x=1", FIRST)
        assert got.status_code == 200, got.text
        seen = got.json()
        assert (seen["port"], seen["path"], seen["session_id"], seen["instance"]) == \
            (8081, "/hello?x=1", sid, instance)
        # SSE, streamed as the app sends it.
        events = signed("GET", f"{base}/ports/8081/events?n=4", FIRST)
        data = [json.loads(line[5:]) for line in events.text.splitlines() if line.startswith("data:")]
        assert [e["index"] for e in data] == [0, 1, 2, 3]

        # Refusals: a port outside the list; an allowed one nothing listens on (the session
        # stays); another principal (its session is not found); no credential at all.
        outside = signed("GET", f"{base}/ports/9000/", FIRST)
        assert outside.status_code == 403 and outside.headers["x-amzn-errortype"] == "AccessDeniedException"
        silent = signed("GET", f"{base}/ports/9100/", FIRST)
        assert silent.status_code == 502 and "9100" in silent.json()["message"]
        assert [s for s in gw.sessions() if s["id"] == sid], "a silent app port ended the session"
        assert signed("GET", f"{base}/ports/8081/", SECOND).status_code == 404
        assert httpx.get(f"{base}/ports/8081/").status_code in (401, 403)

        # A browser URL: port-scoped, expiring, issued to the session's own principal only.
        assert signed("POST", f"{base}/endpoint-tokens?port=8081", SECOND).status_code == 404
        assert signed("POST", f"{base}/endpoint-tokens?port=9000", FIRST).status_code == 403
        grant = signed("POST", f"{base}/endpoint-tokens?port=8081", FIRST).json()
        host = grant["url"].split("//", 1)[1].rstrip("/")
        assert host.startswith("8081-") and host.endswith(f".{DOMAIN}:{gw.http.rsplit(':', 1)[1]}")
        with browser_ws(gw, host) as ws:
            ws.send("through the host form")
            assert ws.recv(timeout=30) == "through the host form"
        page = httpx.get(f"http://{gw.http}/app/index.html", headers={"Host": host}, timeout=30)
        assert page.status_code == 200 and page.json()["path"] == "/app/index.html"
        assert page.json()["session_id"] == sid
        # The token is for 8081 only; a made-up one is nothing.
        other_port = host.replace("8081-", "9100-", 1)
        assert httpx.get(f"http://{gw.http}/", headers={"Host": other_port}).status_code == 403
        forged = "8081-" + "0" * 32 + f".{DOMAIN}"
        assert httpx.get(f"http://{gw.http}/", headers={"Host": forged}).status_code == 403

        # Once the session is stopped, neither form reaches anything.
        c.stop_runtime_session(agentRuntimeArn="default", runtimeSessionId=sid)
        assert signed("GET", f"{base}/ports/8081/", FIRST).status_code == 404
        assert httpx.get(f"http://{gw.http}/", headers={"Host": host}).status_code == 404
    finally:
        gw.stop()


def test_runtimes_without_allowed_ports_have_no_session_endpoint(tmp_path):
    """No `allowed_ports`: no `sessionEndpointUrl`, and every port is refused."""
    gw = Gateway(tmp_path)
    try:
        sid = f"plain-{uuid.uuid4()}"
        r = httpx.post(f"http://{gw.http}/runtimes/default/invocations", content=b"{}",
                       headers={"X-Amzn-Bedrock-AgentCore-Runtime-Session-Id": sid}, timeout=30)
        assert r.status_code == 200
        assert "x-amzn-bedrock-agentcore-runtime-session-endpoint-url" not in r.headers
        refused = httpx.get(f"http://{gw.http}/runtimes/default/sessions/{sid}/ports/8080/")
        assert refused.status_code == 403
    finally:
        gw.stop()
