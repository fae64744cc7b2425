"""SigV4 runtimes with the real AWS SDK: boto3's InvokeAgentRuntime and botocore's signers
(header and presigned query) against the gateway running conf/sigv4.toml."""

import json
import time
import uuid

import boto3
import botocore
import httpx
import pytest
import websockets.sync.client
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from conftest import ROOT, SESSION_HEADER, Gateway

ARN = "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/default"
FIRST = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SECOND = ("AKIDSECONDEXAMPLE", "SecondExampleSecretKey0123456789abcdef")


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path, config_path=ROOT / "conf" / "sigv4.toml")
    yield gw
    gw.stop()


def client(gw, key=FIRST):
    return boto3.client(
        "bedrock-agentcore",
        region_name="us-east-1",
        endpoint_url=f"http://{gw.http}",
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=Config(retries={"max_attempts": 1}),
    )


def session_id() -> str:
    return f"boto-{uuid.uuid4()}"


def invoke(gw, sid, payload, key=FIRST):
    r = client(gw, key).invoke_agent_runtime(agentRuntimeArn=ARN, runtimeSessionId=sid, payload=payload)
    return r, json.loads(r["response"].read())


def test_boto3_invoke_agent_runtime_is_verified_and_sticky(gateway):
    sid = session_id()
    r, first = invoke(gateway, sid, json.dumps({"prompt": "hello", "echo_headers": True}).encode())
    assert r["runtimeSessionId"] == sid
    assert first["echo"]["prompt"] == "hello" and first["session_id"] == sid
    # The SigV4 credential stays at the gateway.
    for gone in ("authorization", "x-amz-date", "x-amz-security-token", "x-amz-user-agent"):
        assert gone not in first["headers"], gone
    _, again = invoke(gateway, sid, b'{"prompt": "again"}')
    assert again["instance"] == first["instance"]
    [s] = gateway.sessions()
    assert s["principal"] == "sigv4:example-user"


def test_a_large_body_is_verified_through_a_temporary_file(gateway):
    big = json.dumps({"pad": "x" * (5 * 1024 * 1024)}).encode()   # over body_memory_bytes
    _, seen = invoke(gateway, session_id(), big)
    assert seen["bytes"] == len(big)


def test_another_principal_cannot_see_the_session(gateway):
    sid = session_id()
    invoke(gateway, sid, b"{}")
    with pytest.raises(botocore.exceptions.ClientError) as other:
        invoke(gateway, sid, b"{}", key=SECOND)
    with pytest.raises(botocore.exceptions.ClientError) as unknown:
        client(gateway, SECOND).stop_runtime_session(agentRuntimeArn=ARN, runtimeSessionId=session_id())
    with pytest.raises(botocore.exceptions.ClientError) as stop:
        client(gateway, SECOND).stop_runtime_session(agentRuntimeArn=ARN, runtimeSessionId=sid)
    for e in (other, unknown, stop):
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    # The owner still has it, and can stop it.
    client(gateway).stop_runtime_session(agentRuntimeArn=ARN, runtimeSessionId=sid)
    assert gateway.sessions() == []


def signed(gw, body=b'{"prompt":"hi"}', sid=None, key=FIRST):
    """A request signed by botocore's SigV4Auth, as the SDK signs InvokeAgentRuntime."""
    url = f"http://{gw.http}/runtimes/{ARN.replace(':', '%3A').replace('/', '%2F')}/invocations"
    req = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/json", SESSION_HEADER: sid or session_id()},
    )
    SigV4Auth(Credentials(*key), "bedrock-agentcore", "us-east-1").add_auth(req)
    return url, dict(req.headers.items()), body


def test_tampering_is_refused(gateway):
    url, headers, body = signed(gateway)
    assert httpx.post(url, headers=headers, content=body).status_code == 200

    def refused(h, b=body):
        r = httpx.post(url, headers=h, content=b)
        assert r.status_code == 403, r.text
        assert r.headers["x-amzn-errortype"] == "AccessDeniedException"

    url, headers, body = signed(gateway)
    refused(headers, b'{"prompt":"ho"}')                                   # body
    refused({**headers, SESSION_HEADER: session_id()})                      # signed header
    refused({**headers, "X-Amz-Date": "20200101T000000Z"})                  # date
    auth = headers["Authorization"]
    refused({**headers, "Authorization": auth.replace("AKIDEXAMPLE", "AKIDSECONDEXAMPLE")})  # credential
    sig = auth[-1]
    refused({**headers, "Authorization": auth[:-1] + ("0" if sig != "0" else "1")})        # signature
    refused({k: v for k, v in headers.items() if k != "Authorization"})     # missing
    assert len(gateway.sessions()) == 1, "only the valid request started a session"


def test_a_bearer_token_on_a_sigv4_runtime_is_a_method_mismatch(gateway):
    r = httpx.post(f"http://{gateway.http}/invocations", headers={"Authorization": "Bearer a.b.c"}, content=b"{}")
    assert r.status_code == 403
    assert r.json()["message"].startswith("Authorization method mismatch")


def test_a_replay_outside_the_clock_window_is_refused(tmp_path):
    config = (ROOT / "conf" / "sigv4.toml").read_text().replace("max_clock_skew_secs = 300", "max_clock_skew_secs = 1")
    (tmp_path / "credentials.example.toml").write_text((ROOT / "conf" / "credentials.example.toml").read_text())
    (tmp_path / "short.toml").write_text(config)
    gw = Gateway(tmp_path, config_path=tmp_path / "short.toml")
    try:
        url, headers, body = signed(gw)
        time.sleep(2.5)
        r = httpx.post(url, headers=headers, content=body)
        assert r.status_code == 403
    finally:
        gw.stop()


def test_presigned_and_header_signed_websockets(gateway):
    sid = session_id()
    creds = Credentials(*FIRST)
    # Presigned URL, as browsers and the AgentCore SDK connect: session id in the query, signed.
    req = AWSRequest(method="GET", url=f"http://{gateway.http}/runtimes/default/ws?{SESSION_HEADER}={sid}")
    SigV4QueryAuth(creds, "bedrock-agentcore", "us-east-1", expires=300).add_auth(req)
    assert "X-Amz-Signature=" in req.url
    with websockets.sync.client.connect(req.url.replace("http://", "ws://", 1)) as ws:
        ws.send("presigned")
        assert ws.recv() == "presigned"
    # Headers form.
    req = AWSRequest(method="GET", url=f"http://{gateway.http}/runtimes/default/ws", headers={SESSION_HEADER: sid})
    SigV4Auth(creds, "bedrock-agentcore", "us-east-1").add_auth(req)
    with websockets.sync.client.connect(
        f"ws://{gateway.http}/runtimes/default/ws", additional_headers=dict(req.headers.items())
    ) as ws:
        ws.send("headers")
        assert ws.recv() == "headers"
    [s] = gateway.sessions()
    assert s["id"] == sid and s["principal"] == "sigv4:example-user"
    # A presigned URL for another session id cannot be bent to this one.
    req = AWSRequest(method="GET", url=f"http://{gateway.http}/runtimes/default/ws?{SESSION_HEADER}={sid}")
    SigV4QueryAuth(creds, "bedrock-agentcore", "us-east-1", expires=300).add_auth(req)
    forged = req.url.replace(sid, session_id())
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(forged.replace("http://", "ws://", 1))
    assert refused.value.response.status_code == 403
