"""The official MCP Python SDK (2.x, streamable HTTP) through the gateway's MCP port."""

import asyncio
import uuid

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import SESSION_HEADER


async def echo_twice(url: str, headers: dict | None = None):
    http = httpx2.AsyncClient(headers=headers or {})
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        tools = await client.list_tools()
        assert [t.name for t in tools.tools] == ["echo"]
        first = await client.call_tool("echo", {"text": "hello"})
        second = await client.call_tool("echo", {"text": "again"})
    assert first.content[0].text == "hello"
    assert second.content[0].text == "again"
    # One MCP session, one backend.
    assert first.structured_content["instance"] == second.structured_content["instance"]
    return first.structured_content


def test_sdk_session_is_sticky_to_one_backend(gateway):
    seen = asyncio.run(echo_twice(f"http://{gateway.mcp}/mcp"))
    # The SDK's server/discover probe and its initialize share the caller's implicit session:
    # one backend, not one per request.
    sessions = gateway.sessions()
    assert len(sessions) == 1, sessions
    assert sessions[0]["id"] == seen["session_id"]


def test_explicit_runtime_sessions_get_their_own_backends(gateway):
    async def both():
        url = f"http://{gateway.mcp}/mcp"
        ids = [f"mcp-sdk-{uuid.uuid4()}" for _ in range(2)]
        return ids, await asyncio.gather(*(echo_twice(url, {SESSION_HEADER: i}) for i in ids))

    ids, seen = asyncio.run(both())
    assert [s["session_id"] for s in seen] == ids
    assert seen[0]["instance"] != seen[1]["instance"]
    assert sorted(s["id"] for s in gateway.sessions()) == sorted(ids)
