"""The AWS client face with boto3's bedrock-agentcore client pointed at the gateway (auth none):
InvokeAgentRuntime (JSON and streaming), StopRuntimeSession, GetAgentCard, and each error as
its botocore exception class."""

import json
import uuid

import boto3
import pytest
from botocore.config import Config

from conftest import Gateway

ARN = "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/default"


def client(gw):
    return boto3.client(
        "bedrock-agentcore",
        region_name="us-east-1",
        endpoint_url=f"http://{gw.http}",
        aws_access_key_id="AKIDANYTHING",   # auth none: signed, not checked
        aws_secret_access_key="anything-at-all",
        config=Config(retries={"max_attempts": 1}),
    )


def sid() -> str:
    return f"face-{uuid.uuid4()}"


@pytest.fixture
def limited(tmp_path):
    gw = Gateway(tmp_path, "[limits]\nmax_payload_bytes = 1000\nnew_sessions_per_second = 1\nmax_active_sessions = 2\n")
    yield gw
    gw.stop()


@pytest.mark.parametrize("runtime", [ARN, "default"])
def test_invoke_json_by_arn_or_name_with_qualifier(gateway, runtime):
    s = sid()
    r = client(gateway).invoke_agent_runtime(
        agentRuntimeArn=runtime, runtimeSessionId=s, qualifier="DEFAULT", payload=b'{"prompt":"hi"}'
    )
    assert r["runtimeSessionId"] == s
    assert r["contentType"] == "application/json"
    assert r["statusCode"] == 200
    body = json.loads(r["response"].read())
    assert body["echo"] == {"prompt": "hi"} and body["session_id"] == s


def test_invoke_streaming_sse(gateway):
    c = client(gateway)
    r = c.invoke_agent_runtime(
        agentRuntimeArn=ARN, runtimeSessionId=sid(), payload=json.dumps({"stream": 4, "interval_ms": 50}).encode()
    )
    assert r["contentType"] == "text/event-stream"
    events = [json.loads(line[len(b"data: "):]) for line in r["response"].iter_lines() if line.startswith(b"data: ")]
    assert [e["index"] for e in events] == [0, 1, 2, 3]


def test_stop_runtime_session_and_get_agent_card(gateway):
    c = client(gateway)
    s = sid()
    c.invoke_agent_runtime(agentRuntimeArn=ARN, runtimeSessionId=s, payload=b"{}")
    card = c.get_agent_card(agentRuntimeArn=ARN, runtimeSessionId=s)
    assert card["agentCard"]["skills"][0]["id"] == "echo"
    assert card["runtimeSessionId"] == s
    stopped = c.stop_runtime_session(agentRuntimeArn=ARN, runtimeSessionId=s)
    assert stopped["runtimeSessionId"] == s
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.stop_runtime_session(agentRuntimeArn=ARN, runtimeSessionId=s)


def test_errors_are_botocore_exception_classes(limited):
    c = client(limited)
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.invoke_agent_runtime(agentRuntimeArn="no-such-runtime", runtimeSessionId=sid(), payload=b"{}")
    with pytest.raises(c.exceptions.ValidationException):
        c.invoke_agent_runtime(agentRuntimeArn=ARN, runtimeSessionId=sid(), payload=b"x" * 2000)
    # Two new sessions at once against one new session per second: one is throttled. The clients
    # are made first and the two calls released together: making a boto3 client takes long
    # enough, on a loaded machine, for the second call to come a second after the first.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    calls = [(client(limited), sid()), (client(limited), sid())]
    together = threading.Barrier(2)

    def start(call):
        own, session = call
        together.wait()
        try:
            own.invoke_agent_runtime(agentRuntimeArn=ARN, runtimeSessionId=session, payload=b"{}")
            return session
        except c.exceptions.ThrottlingException:
            return None

    with ThreadPoolExecutor(2) as pool:
        started = [s for s in pool.map(start, calls) if s]
    assert len(started) == 1
    first = started[0]
    with pytest.raises(c.exceptions.RuntimeClientError) as e:
        c.invoke_agent_runtime(agentRuntimeArn=ARN, runtimeSessionId=first, payload=b'{"status":500}')
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424


def test_active_session_quota(tmp_path):
    gw = Gateway(tmp_path, "[limits]\nmax_active_sessions = 1\n")
    try:
        c = client(gw)
        c.invoke_agent_runtime(agentRuntimeArn=ARN, runtimeSessionId=sid(), payload=b"{}")
        with pytest.raises(c.exceptions.ServiceQuotaExceededException) as e:
            c.invoke_agent_runtime(agentRuntimeArn=ARN, runtimeSessionId=sid(), payload=b"{}")
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402
    finally:
        gw.stop()
