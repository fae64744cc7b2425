"""The official MCP Python SDK (2.x, streamable HTTP) through the gateway's MCP port."""

import asyncio
import uuid

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.client.streamable_http import streamable_http_client

from conftest import SESSION_HEADER


async def echo_twice(url: str, headers: dict | None = None, first_answer_s: float = 30):
    # The first request opens the session, so its answer may wait for the backend to start (a
    # microVM booting its template on a cold machine): the client waits as long as the runtime's
    # ready deadline, not httpx's default 5 s.
    timeout = httpx2.Timeout(30, read=first_answer_s)
    http = httpx2.AsyncClient(headers=headers or {}, timeout=timeout)
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


def gateway_with(tmp_path, config):
    from conftest import Gateway

    return Gateway(tmp_path, config)


MCP_RUNTIMES = """
[[runtimes]]
name = "default"
[[runtimes]]
name = "tools"
protocol = "mcp"
[[runtimes]]
name = "stateless"
protocol = "mcp"
[runtimes.backend]
args = ["agent", "--http", "{http}", "--mcp", "{mcp}", "--a2a", "{a2a}", "--mcp-stateless"]
"""


def test_sdk_through_the_aws_face_of_an_mcp_runtime(tmp_path):
    gw = gateway_with(tmp_path, MCP_RUNTIMES)
    try:
        seen = asyncio.run(echo_twice(f"http://{gw.http}/runtimes/tools/invocations"))
        assert seen["text"] == "hello"
        [s] = gw.sessions()
        assert s["runtime"] == "tools"
    finally:
        gw.stop()


def test_stateless_backends_get_a_gateway_minted_mcp_session_id(tmp_path):
    gw = gateway_with(tmp_path, MCP_RUNTIMES)
    try:
        url = f"http://{gw.http}/runtimes/stateless/invocations"
        init = httpx2.post(url, headers=ACCEPT, json=INITIALIZE)
        minted = init.headers["mcp-session-id"]
        assert len(minted) == 32
        # The SDK works against it, and the minted id routes to the same backend.
        seen = asyncio.run(echo_twice(url))
        call = httpx2.post(url, headers={**ACCEPT, "Mcp-Session-Id": minted}, json=ECHO)
        assert call.json()["result"]["structuredContent"]["instance"] == seen["instance"]
    finally:
        gw.stop()


ACCEPT = {"Accept": "application/json, text/event-stream"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
ECHO = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}


def test_get_stream_and_delete_stay_on_the_sessions_backend(gateway):
    url = f"http://{gateway.mcp}/mcp"
    init = httpx2.post(url, headers={**ACCEPT, SESSION_HEADER: f"get-{uuid.uuid4()}"}, json=INITIALIZE)
    mcp_id = init.headers["mcp-session-id"]
    instance = httpx2.post(url, headers={**ACCEPT, "Mcp-Session-Id": mcp_id}, json=ECHO).json()["result"]["structuredContent"]["instance"]
    # Another session, so a wrong routing would show.
    httpx2.post(url, headers={**ACCEPT, SESSION_HEADER: f"other-{uuid.uuid4()}"}, json=INITIALIZE)
    with httpx2.stream("GET", url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": mcp_id}, timeout=10) as s:
        assert s.status_code == 200
        for line in s.iter_lines():
            if line.startswith("data: "):
                import json
                assert json.loads(line[6:])["params"]["data"]["instance"] == instance
                break
    # DELETE ends the MCP session at its backend; the id is then unknown there (404, re-initialize).
    assert httpx2.delete(url, headers={"Mcp-Session-Id": mcp_id}).status_code == 200
    after = httpx2.post(url, headers={**ACCEPT, "Mcp-Session-Id": mcp_id}, json=ECHO)
    assert after.status_code == 404


def test_sdk_sessions_in_sandboxes_and_microvms(tmp_path):
    """The SDK sees the same MCP server whatever isolates the session: a sandbox (namespaces +
    cgroup, reached over a Unix socket) or a microVM (QEMU, restored from a snapshot)."""
    import os
    from pathlib import Path

    from conftest import binary

    guest = Path(os.environ.get("SESSIONGATE_GUEST_DIR", Path(binary()).parents[1] / "guest"))
    assert (guest / "vmlinux").exists(), f"no microVM guest in {guest}: run make guest"
    gw = gateway_with(
        tmp_path,
        f"""
[[runtimes]]
name = "boxed"
protocol = "mcp"
[runtimes.backend]
provider = "sandbox"

[[runtimes]]
name = "vm"
protocol = "mcp"
[runtimes.backend]
provider = "microvm"
kernel = "{guest}/vmlinux"
initrd = "{guest}/initrd.cpio"
ready_timeout_ms = 180000
""",
    )
    try:
        for runtime, kind in (("boxed", "sandbox"), ("vm", "microvm")):
            sid = f"mcp-sdk-{kind}-{uuid.uuid4()}"
            url = f"http://{gw.http}/runtimes/{runtime}/invocations"
            # ready_timeout_ms above, plus a margin.
            seen = asyncio.run(echo_twice(url, {SESSION_HEADER: sid}, first_answer_s=200))
            assert seen["session_id"] == sid
            backend = next(s["backend"] for s in gw.sessions() if s["id"] == sid)
            assert backend.startswith(kind + " "), backend
    finally:
        gw.stop()


def test_gateway_refusals_reach_the_sdk_as_errors_of_the_call(tmp_path):
    """An error the gateway answers itself names the refused call's JSON-RPC id, so the SDK
    raises it for that call at once (with `"id": null` no call matches and the SDK waits out
    its read timeout)."""
    gw = gateway_with(tmp_path, "[limits]\nmax_active_sessions = 1\n")
    try:
        url = f"http://{gw.mcp}/mcp"
        held = httpx2.post(url, headers={**ACCEPT, SESSION_HEADER: f"held-{uuid.uuid4()}"}, json=INITIALIZE)
        assert held.status_code == 200 and "result" in held.json()

        async def refused():
            http = httpx2.AsyncClient(headers={SESSION_HEADER: f"refused-{uuid.uuid4()}"}, timeout=60)
            async with http, Client(streamable_http_client(url, http_client=http)) as client:
                await client.list_tools()

        async def within(seconds):
            with anyio.fail_after(seconds):
                await refused()

        with pytest.raises(BaseException) as raised:
            asyncio.run(within(20))
        # The SDK raises it from a task group; a timeout would be a TimeoutError instead.
        error = raised.value
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        assert isinstance(error, MCPError), repr(raised.value)
        assert error.error.code == -32003, error
    finally:
        gw.stop()


def test_sdk_learns_that_an_ended_session_is_gone_and_starts_again(gateway):
    """A session that ended (stopped here; idle, lifetime or a lost host elsewhere): its
    Mcp-Session-Id gets HTTP 404 with a JSON-RPC "not found", which the SDK surfaces as an error;
    a new client then initialises a new session on a new backend."""
    url = f"http://{gateway.mcp}/mcp"

    async def run():
        http = httpx2.AsyncClient(timeout=httpx2.Timeout(30))
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            first = await client.call_tool("echo", {"text": "before"})
            sid = first.structured_content["session_id"]
            stopped = httpx2.delete(f"http://{gateway.admin}/sessions/{sid}")
            assert stopped.status_code == 200, stopped.text
            with pytest.raises(MCPError) as gone:
                await client.call_tool("echo", {"text": "after"})
        again = await echo_twice(url)
        return first.structured_content, gone.value, again

    first, gone, again = asyncio.run(run())
    assert gone.code == -32004, gone
    assert again["instance"] != first["instance"]
