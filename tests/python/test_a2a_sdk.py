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
