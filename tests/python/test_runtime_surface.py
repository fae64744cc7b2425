"""AgentCore's 2026 runtime surface against the gateway, with real clients and agents: an AG-UI
runtime (the SDK's `AGUIApp` as the backend, AG-UI's own event types to read it) over SSE and
WebSocket, with AG-UI's error shape for a quota refusal; a runtime serving its protocol on
another port and path (`protocol_port`, `protocol_path`) inside a sandbox."""

import json
import shutil
import sys
import uuid

import boto3
import httpx
import pydantic
import pytest
import websockets.sync.client
from ag_ui.core import Event, EventType, RunAgentInput, UserMessage
from botocore.config import Config

from conftest import ROOT, SESSION_HEADER, Gateway

AGENT = ROOT / "tests" / "python" / "agents" / "ag_ui_agent.py"
EVENTS = pydantic.TypeAdapter(Event)


def ag_ui_config(limits: str = "") -> str:
    return f"""{limits}
[[runtimes]]
name = "agui"
protocol = "agui"
[runtimes.backend]
provider = "process"
command = "{sys.executable}"
args = ["{AGENT}", "{{http}}"]
ready_timeout_ms = 30000
"""


def run_input(text: str) -> str:
    return RunAgentInput(
        thread_id="thread-1", run_id=f"run-{uuid.uuid4()}", state={}, tools=[], context=[],
        forwarded_props={}, messages=[UserMessage(id="m1", role="user", content=text)],
    ).model_dump_json(by_alias=True)


def sse_events(text: str) -> list:
    """AG-UI events from an SSE body, each checked against AG-UI's own event types."""
    return [EVENTS.validate_json(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]


def test_ag_ui_runs_stream_over_sse_and_websocket(tmp_path):
    gw = Gateway(tmp_path, ag_ui_config())
    try:
        sid = f"agui-{uuid.uuid4()}"
        r = httpx.post(f"http://{gw.http}/runtimes/agui/invocations", content=run_input("hello"),
                       headers={SESSION_HEADER: sid, "content-type": "application/json",
                                "accept": "text/event-stream"}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert [e.type for e in events] == [
            EventType.RUN_STARTED, EventType.TEXT_MESSAGE_START, EventType.TEXT_MESSAGE_CONTENT,
            EventType.TEXT_MESSAGE_CONTENT, EventType.TEXT_MESSAGE_END, EventType.RUN_FINISHED]
        text = "".join(e.delta for e in events if e.type == EventType.TEXT_MESSAGE_CONTENT)
        assert text == f"echo: hello (session {sid})"
        # The same run over the WebSocket transport, in the same session (one backend).
        with websockets.sync.client.connect(f"ws://{gw.http}/runtimes/agui/ws",
                                            additional_headers={SESSION_HEADER: sid}) as ws:
            ws.send(run_input("over ws"))
            seen = []
            while not seen or seen[-1].type != EventType.RUN_FINISHED:
                seen += sse_events(ws.recv(timeout=30))  # the SDK frames each event as SSE
        text = "".join(e.delta for e in seen if e.type == EventType.TEXT_MESSAGE_CONTENT)
        assert text == f"echo: over ws (session {sid})"
        assert len([s for s in gw.sessions() if s["id"] == sid]) == 1
    finally:
        gw.stop()


def test_ag_ui_refusals_are_run_error_events(tmp_path):
    """A quota refusal is AG-UI's `SERVICE_QUOTA_EXCEEDED` RUN_ERROR event with HTTP 429 (as
    AgentCore answers AG-UI runtimes); an HTTP runtime's is still 402 ServiceQuotaExceeded."""
    gw = Gateway(tmp_path, ag_ui_config("[limits]\nmax_active_sessions = 1\n"))
    try:
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        first = httpx.post(f"http://{gw.http}/runtimes/agui/invocations", content=run_input("a"),
                           headers={**headers, SESSION_HEADER: f"agui-{uuid.uuid4()}"}, timeout=30)
        assert first.status_code == 200
        refused = httpx.post(f"http://{gw.http}/runtimes/agui/invocations", content=run_input("b"),
                             headers={**headers, SESSION_HEADER: f"agui-{uuid.uuid4()}"}, timeout=30)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "text/event-stream"
        assert int(refused.headers["retry-after"]) >= 1
        (event,) = sse_events(refused.text)
        assert (event.type, event.code) == (EventType.RUN_ERROR, "SERVICE_QUOTA_EXCEEDED")
        # A malformed session id: RUN_ERROR too, with the status AgentCore gives it.
        bad = httpx.post(f"http://{gw.http}/runtimes/agui/invocations", content=run_input("c"),
                         headers={**headers, SESSION_HEADER: "short"}, timeout=30)
        assert bad.status_code == 400
        (event,) = sse_events(bad.text)
        assert (event.type, event.code) == (EventType.RUN_ERROR, "VALIDATION")
    finally:
        gw.stop()


def test_a_runtime_serves_its_protocol_on_its_own_port_and_path(tmp_path):
    """`protocol_port` and `protocol_path` (AgentCore's protocolConfiguration): the reference
    agent in a sandbox listens on 8100 and serves invocations at /agent/run; boto3's
    InvokeAgentRuntime and the container face's /invocations both reach it there."""
    if not shutil.which("bwrap"):
        pytest.fail("bubblewrap is required (scripts/setup --test installs it)")
    cfg = """
[[runtimes]]
name = "default"
protocol_port = 8100
protocol_path = "/agent/run"
[runtimes.backend]
provider = "sandbox"
args = ["agent", "--http", "0.0.0.0:8100", "--invocations-path", "/agent/run"]
egress = false
"""
    gw = Gateway(tmp_path, cfg)
    try:
        c = boto3.client("bedrock-agentcore", region_name="us-east-1", endpoint_url=f"http://{gw.http}",
                         aws_access_key_id="x", aws_secret_access_key="y",
                         config=Config(retries={"max_attempts": 1}))
        sid = f"ported-{uuid.uuid4()}"
        r = c.invoke_agent_runtime(agentRuntimeArn="default", runtimeSessionId=sid,
                                   payload=json.dumps({"prompt": "on 8100"}))
        assert r["statusCode"] == 200
        body = json.loads(r["response"].read())
        assert body["session_id"] == sid and "on 8100" in json.dumps(body)
        direct = httpx.post(f"http://{gw.http}/invocations", json={"prompt": "container face"},
                            headers={SESSION_HEADER: sid}, timeout=30)
        assert direct.status_code == 200 and direct.json()["session_id"] == sid
    finally:
        gw.stop()


def test_stop_runtime_session_is_idempotent_by_client_token(tmp_path):
    """StopRuntimeSession's clientToken: a replay is a no-op success, even once the id names a
    new session, which it never ends (the token fences it); a token is one stop's only; a
    malformed one is a ValidationException."""
    gw = Gateway(tmp_path)
    try:
        c = boto3.client("bedrock-agentcore", region_name="us-east-1", endpoint_url=f"http://{gw.http}",
                         aws_access_key_id="x", aws_secret_access_key="y",
                         config=Config(retries={"max_attempts": 1}))
        sid, token = f"stop-{uuid.uuid4()}", f"token-{uuid.uuid4()}"
        first = json.loads(c.invoke_agent_runtime(agentRuntimeArn="default", runtimeSessionId=sid,
                                                  payload=b"{}")["response"].read())
        r = c.stop_runtime_session(agentRuntimeArn="default", runtimeSessionId=sid, clientToken=token)
        assert r["runtimeSessionId"] == sid
        assert not [s for s in gw.sessions() if s["id"] == sid]
        # The id starts a new session; the replay answers as the first stop did and ends nothing.
        second = json.loads(c.invoke_agent_runtime(agentRuntimeArn="default", runtimeSessionId=sid,
                                                   payload=b"{}")["response"].read())
        assert second["instance"] != first["instance"]
        r = c.stop_runtime_session(agentRuntimeArn="default", runtimeSessionId=sid, clientToken=token)
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
        again = json.loads(c.invoke_agent_runtime(agentRuntimeArn="default", runtimeSessionId=sid,
                                                  payload=b"{}")["response"].read())
        assert again["instance"] == second["instance"], "the replay ended the new session"
        # The same token for another session id: a conflict, and that session lives on.
        other = f"stop-{uuid.uuid4()}"
        c.invoke_agent_runtime(agentRuntimeArn="default", runtimeSessionId=other, payload=b"{}")
        with pytest.raises(c.exceptions.ConflictException):
            c.stop_runtime_session(agentRuntimeArn="default", runtimeSessionId=other, clientToken=token)
        assert [s for s in gw.sessions() if s["id"] == other]
        # A fresh token (boto3 makes one up when none is given) stops the new session; a second
        # fresh one finds nothing.
        c.stop_runtime_session(agentRuntimeArn="default", runtimeSessionId=sid)
        with pytest.raises(c.exceptions.ResourceNotFoundException):
            c.stop_runtime_session(agentRuntimeArn="default", runtimeSessionId=sid)
        bad = httpx.post(f"http://{gw.http}/runtimes/default/stopruntimesession",
                         json={"clientToken": "short"}, headers={SESSION_HEADER: other})
        assert bad.status_code == 400 and bad.headers["x-amzn-errortype"] == "ValidationException"
        assert "clientToken" in bad.json()["message"]
        assert [s for s in gw.sessions() if s["id"] == other]
    finally:
        gw.stop()


IDENTITY_AGENT = ROOT / "tests" / "python" / "agents" / "identity_agent.py"
# The SDK agent that verifies its workload token, as a process backend's settings.
IDENTITY_BACKEND = f'provider = "process"\ncommand = "{sys.executable}"\n' \
                   f'args = ["{IDENTITY_AGENT}", "{{http}}", "my-tools"]\nready_timeout_ms = 30000\n'
FIRST = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SECOND = ("AKIDSECONDEXAMPLE", "SecondExampleSecretKey0123456789abcdef")


def test_agents_get_a_workload_token_they_verify_against_the_published_keys(tmp_path):
    """`[identity] workload_tokens`: an SDK agent reads its request's workload access token and
    verifies it against the gateway's JWKS (PyJWT, EdDSA): the caller's principal, the runtime,
    the session and — for a caller allowed to name one — the user. Another caller naming a user
    is refused (403); a client cannot smuggle in a token of its own."""
    cfg = f"""
[identity]
workload_tokens = true
audience = "my-tools"

[[runtimes]]
name = "default"
user_id_principals = ["sigv4:example-user"]
[runtimes.auth]
mode = "sigv4"
regions = ["us-east-1"]
credentials_file = "{ROOT / 'conf' / 'credentials.example.toml'}"
[runtimes.backend]
{IDENTITY_BACKEND}"""
    gw = Gateway(tmp_path, cfg)
    try:
        def client(key):
            return boto3.client("bedrock-agentcore", region_name="us-east-1", endpoint_url=f"http://{gw.http}",
                                aws_access_key_id=key[0], aws_secret_access_key=key[1],
                                config=Config(retries={"max_attempts": 1}, read_timeout=60))

        a, b = client(FIRST), client(SECOND)
        payload = json.dumps({"jwks": f"http://{gw.http}/.well-known/jwks.json"})
        sid = f"wat-{uuid.uuid4()}"
        r = a.invoke_agent_runtime(agentRuntimeArn="default", runtimeSessionId=sid, runtimeUserId="user-42",
                                   payload=payload)
        answer = json.loads(r["response"].read())
        assert answer["verified"], answer
        claims = answer["claims"]
        assert (claims["sub"], claims["runtime"], claims["session_id"], claims["user_id"], claims["aud"]) == \
            ("sigv4:example-user", "default", sid, "user-42", "my-tools")
        assert claims["exp"] - claims["iat"] == 900
        # The admin listener publishes the same keys (verifiers may use either).
        data_plane = httpx.get(f"http://{gw.http}/.well-known/jwks.json").json()
        assert httpx.get(f"http://{gw.admin}/.well-known/jwks.json").json() == data_plane
        assert {k["kty"] for k in data_plane["keys"]} == {"OKP"} and len(data_plane["keys"]) == 3
        # Without a user id: no user claim. A token the client sends is not passed on.
        r = a.invoke_agent_runtime(agentRuntimeArn="default", runtimeSessionId=sid, payload=payload)
        claims = json.loads(r["response"].read())["claims"]
        assert "user_id" not in claims and claims["sub"] == "sigv4:example-user"
        # The second principal may not act for users.
        with pytest.raises(b.exceptions.AccessDeniedException):
            b.invoke_agent_runtime(agentRuntimeArn="default", runtimeSessionId=f"wat-{uuid.uuid4()}",
                                   runtimeUserId="user-42", payload=payload)
        r = b.invoke_agent_runtime(agentRuntimeArn="default", runtimeSessionId=f"wat-{uuid.uuid4()}",
                                   payload=payload)
        assert json.loads(r["response"].read())["claims"]["sub"] == "sigv4:second-user"
    finally:
        gw.stop()


def test_a_client_cannot_pass_its_own_workload_token(tmp_path):
    """Without `[identity]`, no token reaches the agent — not even one the client sends — and
    there are no keys to fetch."""
    cfg = f'[[runtimes]]\nname = "default"\n[runtimes.backend]\n{IDENTITY_BACKEND}'
    gw = Gateway(tmp_path, cfg)
    try:
        r = httpx.post(f"http://{gw.http}/invocations", json={"jwks": "http://unused/"},
                       headers={SESSION_HEADER: f"wat-{uuid.uuid4()}", "WorkloadAccessToken": "forged",
                                "X-Amz-Bedrock-AgentCore-Identity-WAT": "forged"}, timeout=30)
        assert r.status_code == 200 and r.json()["verified"] is False
        assert httpx.get(f"http://{gw.http}/.well-known/jwks.json").status_code == 404
        assert httpx.get(f"http://{gw.admin}/.well-known/jwks.json").status_code == 404
        # An anonymous runtime lets nobody name users.
        r = httpx.post(f"http://{gw.http}/invocations", json={},
                       headers={SESSION_HEADER: f"wat-{uuid.uuid4()}",
                                "X-Amzn-Bedrock-AgentCore-Runtime-User-Id": "u"}, timeout=30)
        assert r.status_code == 403 and r.headers["x-amzn-errortype"] == "AccessDeniedException"
    finally:
        gw.stop()


def test_a_split_endpoint_tells_the_agent_its_variant_in_baggage(tmp_path):
    """An endpoint splitting versions: the SDK agent reads the routing experiment (the
    endpoint's ARN, the session's variant) from W3C baggage; a client's own experiment entries
    never reach it; a pinned endpoint names no experiment."""
    backend = IDENTITY_BACKEND
    cfg = f"""
[aws]
region = "eu-west-1"
account_id = "123456789012"
[[runtimes]]
name = "default"
[[runtimes.versions]]
version = 1
[runtimes.versions.backend]
{backend}
[[runtimes.versions]]
version = 2
[runtimes.versions.backend]
{backend}
[[runtimes.endpoints]]
name = "canary"
split = [{{ version = 1, weight = 1 }}, {{ version = 2, weight = 1 }}]
[[runtimes.endpoints]]
name = "stable"
version = 1
"""
    gw = Gateway(tmp_path, cfg)
    try:
        seen = set()
        for _ in range(16):
            r = httpx.post(f"http://{gw.http}/runtimes/default/invocations?qualifier=canary", json={},
                           headers={SESSION_HEADER: f"exp-{uuid.uuid4()}",
                                    "baggage": "aws.agentcore.gateway.routing_experiment_variant_name=forged,team=blue"},
                           timeout=30)
            assert r.status_code == 200, r.text
            arn, variant, baggage = r.json()["experiment"]
            # The client's other baggage passes; its experiment entries never do.
            assert "team=blue" in baggage and "forged" not in baggage, baggage
            assert arn == "arn:aws:bedrock-agentcore:eu-west-1:123456789012:runtime/default/runtime-endpoint/canary"
            seen.add(variant)
        assert seen <= {"v1", "v2"} and len(seen) == 2, seen
        r = httpx.post(f"http://{gw.http}/runtimes/default/invocations?qualifier=stable", json={},
                       headers={SESSION_HEADER: f"exp-{uuid.uuid4()}",
                                "baggage": "aws.agentcore.gateway.routing_experiment_variant_name=forged"}, timeout=30)
        assert r.json()["experiment"][:2] == [None, None]
        assert "forged" not in (r.json()["experiment"][2] or "")
    finally:
        gw.stop()


def burst(gw, n, then_stop=False, runtime="default"):
    """`n` first requests of new sessions at once; each one's status (stopping its session after
    it, when asked, so its room frees up)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        sid = f"burst-{uuid.uuid4()}"
        r = httpx.post(f"http://{gw.http}/runtimes/{runtime}/invocations", json={},
                       headers={SESSION_HEADER: sid}, timeout=30)
        if then_stop and r.status_code == 200:
            httpx.post(f"http://{gw.http}/runtimes/{runtime}/stopruntimesession",
                       headers={SESSION_HEADER: sid}, timeout=30)
        return r.status_code

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_parking_turns_a_burst_of_refusals_into_successes(tmp_path):
    """`park_ms`: a burst past the new-session rate gets 429s without parking; with it, every
    request waits for its turn and succeeds. The same for the active-session limit (402), as
    sessions end. Past `max_parked_requests`, requests get their refusal at once."""
    rate = "[limits]\nnew_sessions_per_second = 2\n"
    gw = Gateway(tmp_path, rate)
    try:
        assert 429 in burst(gw, 8), "without parking the burst is refused in part"
    finally:
        gw.stop()
    gw = Gateway(tmp_path, rate + '[[runtimes]]\nname = "default"\npark_ms = 8000\n')
    try:
        assert burst(gw, 8) == [200] * 8
        assert 'sessiongate_parked_total{outcome="admitted"}' in gw.metrics()
    finally:
        gw.stop()
    gw = Gateway(tmp_path, '[limits]\nmax_active_sessions = 2\n[[runtimes]]\nname = "default"\npark_ms = 8000\n')
    try:
        assert burst(gw, 6, then_stop=True) == [200] * 6
    finally:
        gw.stop()
    gw = Gateway(tmp_path, rate + 'max_parked_requests = 1\n[[runtimes]]\nname = "default"\npark_ms = 8000\n')
    try:
        assert 429 in burst(gw, 8)
        assert 'sessiongate_parked_total{outcome="full"}' in gw.metrics()
    finally:
        gw.stop()
