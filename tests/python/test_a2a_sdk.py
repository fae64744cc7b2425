"""The official A2A Python SDK through the gateway's A2A port: agent card discovery, then
JSON-RPC message/send in a runtime session."""

import asyncio
import uuid

import httpx
from a2a import types as a2a
from a2a.client import ClientConfig, create_client

from conftest import SESSION_HEADER


async def say(base: str, session_id: str, text: str) -> dict:
    async with httpx.AsyncClient(headers={SESSION_HEADER: session_id}) as http:
        client = await create_client(base, ClientConfig(httpx_client=http, streaming=False))
        request = a2a.SendMessageRequest(
            message=a2a.Message(
                role=a2a.Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[a2a.Part(text=text)]
            )
        )
        answers = [event async for event in client.send_message(request)]
    assert len(answers) == 1, answers
    message = answers[0].message
    assert message.role == a2a.Role.ROLE_AGENT
    return {"text": message.parts[0].text, **dict(message.metadata.items())}


def test_sdk_messages_reach_their_sessions_backend(gateway):
    base = f"http://{gateway.a2a}"
    a, b = (f"a2a-sdk-{uuid.uuid4()}" for _ in range(2))

    async def conversation():
        return await asyncio.gather(say(base, a, "one"), say(base, b, "two"), say(base, a, "three"))

    first, other, again = asyncio.run(conversation())
    assert (first["text"], other["text"], again["text"]) == ("one", "two", "three")
    assert first["session_id"] == again["session_id"] == a
    assert other["session_id"] == b
    assert first["instance"] == again["instance"] != other["instance"]


def test_agent_card_points_clients_back_at_the_gateway(gateway):
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{gateway.a2a}/.well-known/agent-card.json", timeout=10) as r:
        card = json.load(r)
    assert card["url"] == f"http://{gateway.a2a}/"
    assert card["skills"][0]["id"] == "echo"


async def say_streaming(base: str, session_id: str, text: str) -> list:
    async with httpx.AsyncClient(headers={SESSION_HEADER: session_id}) as http:
        client = await create_client(base, ClientConfig(httpx_client=http, streaming=True))
        request = a2a.SendMessageRequest(
            message=a2a.Message(role=a2a.Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[a2a.Part(text=text)])
        )
        return [event async for event in client.send_message(request)]


def test_sdk_streams_message_stream_over_sse(gateway):
    events = asyncio.run(say_streaming(f"http://{gateway.a2a}", f"a2a-stream-{uuid.uuid4()}", "streamed"))
    assert len(events) == 1
    assert events[0].message.parts[0].text == "streamed"


def test_sdk_through_the_aws_face_of_an_a2a_runtime(tmp_path):
    from conftest import Gateway

    gw = Gateway(tmp_path, '[[runtimes]]\nname = "default"\n[[runtimes]]\nname = "peer"\nprotocol = "a2a"\n')
    try:
        base = f"http://{gw.http}/runtimes/peer/invocations/"
        sid = f"a2a-aws-{uuid.uuid4()}"
        first = asyncio.run(say(base, sid, "via aws"))
        again = asyncio.run(say(base, sid, "again"))
        assert first["text"] == "via aws" and first["session_id"] == sid
        assert again["instance"] == first["instance"]
        [s] = gw.sessions()
        assert s["runtime"] == "peer"
    finally:
        gw.stop()


def test_errors_keep_their_http_status_with_a2a_codes(tmp_path):
    from conftest import Gateway

    gw = Gateway(tmp_path, "[limits]\nmax_active_sessions = 1\n")
    try:
        body = {"jsonrpc": "2.0", "id": "1", "method": "message/send",
                "params": {"message": {"role": "user", "messageId": "m", "parts": [{"kind": "text", "text": "x"}]}}}
        url = f"http://{gw.a2a}/"
        assert httpx.post(url, json=body, headers={SESSION_HEADER: f"one-{uuid.uuid4()}"}).status_code == 200
        quota = httpx.post(url, json=body, headers={SESSION_HEADER: f"two-{uuid.uuid4()}"})
        assert quota.status_code == 429 and quota.json()["error"]["code"] == -32053
        bad = httpx.post(url, json=body, headers={SESSION_HEADER: "short"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == -32052
    finally:
        gw.stop()
