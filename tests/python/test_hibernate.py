"""Hibernation (`on_idle = "suspend"`): an idle microVM session is saved whole and its VM ends;
its next request resumes it — the agent's in-memory counter and a file in its session storage
intact every time, over many cycles; requests racing a resume get one VM; a stop reclaims the
snapshot. A process runtime keeps its files and is re-placed; a suspended session nobody
resumes ends after its retention."""

import json
import os
import shutil
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import SESSION_HEADER, Gateway, binary

# The proof is 100 cycles; each is a save and a restore under software emulation.
CYCLES = int(os.environ.get("SESSIONGATE_SUSPEND_CYCLES", "100"))


@pytest.fixture
def roots():
    base = Path(tempfile.mkdtemp(prefix="sg-hibernate-", dir="/tmp"))
    base.chmod(0o711)
    yield base / "storage", base / "snapshots"
    shutil.rmtree(base, ignore_errors=True)


def admin_post(gw: Gateway, path: str):
    req = urllib.request.Request(f"http://{gw.admin}{path}", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def suspend(gw: Gateway, sid: str) -> dict:
    """Suspends now; a 409 (the last answer's request not yet finished in the gateway: its
    bookkeeping ends just after the client has its answer) is tried again."""
    deadline = time.monotonic() + 10
    while True:
        status, body = admin_post(gw, f"/sessions/{sid}/suspend")
        if status != 409 or time.monotonic() > deadline:
            assert status == 200, body
            return body
        time.sleep(0.02)


def invoke(gw: Gateway, sid: str, payload=None) -> dict:
    r = httpx.post(f"http://{gw.http}/invocations", json=payload or {}, headers={SESSION_HEADER: sid},
                   timeout=240)
    assert r.status_code == 200, r.text
    return r.json()


def command(gw: Gateway, sid: str, cmd: str) -> str:
    r = httpx.post(f"http://{gw.http}/runtimes/default/commands", json={"command": cmd},
                   headers={SESSION_HEADER: sid}, timeout=240)
    assert r.status_code == 200, r.text
    # The event stream's stdout deltas, in order (their JSON payloads are plain in the frames).
    out = []
    for chunk in r.content.split(b'{"contentDelta":')[1:]:
        delta = json.JSONDecoder().raw_decode(chunk.decode(errors="replace"))[0]
        out.append(delta.get("stdout", ""))
    return "".join(out)


def state(gw: Gateway, sid: str):
    rows = [s for s in gw.sessions() if s["id"] == sid]
    return rows[0]["state"] if rows else None


def mcp_call(gw: Gateway, body: dict, mcp_id: str | None = None) -> tuple[dict, str]:
    """One MCP request on the MCP port; its JSON-RPC answer (JSON or one SSE event)."""
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    if mcp_id:
        headers["Mcp-Session-Id"] = mcp_id
    r = httpx.post(f"http://{gw.mcp}/mcp", json=body, headers=headers, timeout=240)
    assert r.status_code in (200, 202), r.text
    text = r.text.strip()
    if text.startswith("event:") or text.startswith("data:"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
    return (json.loads(text) if text else {}), r.headers.get("mcp-session-id", mcp_id)


def mcp_across_a_suspension(gw: Gateway) -> tuple[dict, dict]:
    """An MCP session (the caller's implicit one on the MCP port) used, suspended with its
    runtime session, and used again with the same Mcp-Session-Id."""
    _, mcp_id = mcp_call(gw, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "hibernate-test", "version": "1"}}})
    mcp_call(gw, {"jsonrpc": "2.0", "method": "notifications/initialized"}, mcp_id)
    echo = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "before"}}}
    before = mcp_call(gw, echo, mcp_id)[0]["result"]["structuredContent"]
    suspend(gw, before["session_id"])
    assert state(gw, before["session_id"]) == "suspended"
    after = mcp_call(gw, {**echo, "id": 3}, mcp_id)[0]["result"]["structuredContent"]
    return before, after


def test_a_microvm_session_survives_many_suspend_resume_cycles(tmp_path, roots):
    storage, snapshots = roots
    guest = Path(os.environ.get("SESSIONGATE_GUEST_DIR", Path(binary()).parents[1] / "guest"))
    assert (guest / "vmlinux").exists(), f"no microVM guest in {guest}: run make guest"
    cfg = f"""
[sessions]
storage_root = "{storage}"
snapshot_root = "{snapshots}"

[[runtimes]]
name = "default"
on_idle = "suspend"
[runtimes.backend]
provider = "microvm"
kernel = "{guest}/vmlinux"
initrd = "{guest}/initrd.cpio"
ready_timeout_ms = 180000
[[runtimes.filesystems]]
kind = "session_storage"
mount_path = "/mnt/data"
quota_mb = 2
"""
    gw = Gateway(tmp_path, cfg)
    try:
        sid = f"hibernate-{uuid.uuid4()}"
        first = invoke(gw, sid)
        assert first["count"] == 1
        assert command(gw, sid, "echo kept > /mnt/data/f && cat /mnt/data/f") == "kept\n"
        count, timings = 1, []
        for cycle in range(CYCLES):
            assert suspend(gw, sid)["snapshot_bytes"] > 0
            assert state(gw, sid) == "suspended"
            assert len(list((snapshots / "default").iterdir())) == 1
            started = time.monotonic()
            answer = invoke(gw, sid)
            timings.append(time.monotonic() - started)
            count += 1
            assert (answer["count"], answer["instance"]) == (count, first["instance"]), \
                f"cycle {cycle}: the agent's memory was not kept"
            if cycle % 10 == 0 or cycle == CYCLES - 1:
                assert command(gw, sid, "cat /mnt/data/f") == "kept\n", f"cycle {cycle}: the file"
        timings.sort()
        print(f"\n{CYCLES} resumes: p50 {timings[len(timings) // 2] * 1000:.0f} ms, "
              f"p95 {timings[int(len(timings) * 0.95)] * 1000:.0f} ms")
        # Requests racing a resume: one VM serves them all.
        suspend(gw, sid)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: invoke(gw, sid), range(8)))
        assert {a["instance"] for a in answers} == {first["instance"]}
        assert sorted(a["count"] for a in answers) == list(range(count + 1, count + 9))
        assert len([s for s in gw.sessions() if s["id"] == sid]) == 1
        metrics = gw.metrics()
        assert "sessiongate_resume_duration_seconds_count" in metrics
        assert 'sessiongate_suspends_total{outcome="suspended"}' in metrics
        count += 8
        # An MCP client's session goes on across a suspension: its id still routes, and the
        # resumed guest still knows it.
        before, after = mcp_across_a_suspension(gw)
        assert after["instance"] == before["instance"] and after["session_id"] == before["session_id"]
        # A suspended session outlives the gateway process: a new one takes it up from the
        # snapshot root and resumes it, memory and all.
        suspend(gw, sid)
        gw.stop()
        gw = Gateway(tmp_path, cfg)
        answer = invoke(gw, sid)
        assert (answer["count"], answer["instance"]) == (count + 1, first["instance"])
        # A stop of a suspended session reclaims its snapshot.
        suspend(gw, sid)
        r = httpx.post(f"http://{gw.http}/runtimes/default/stopruntimesession", content=b"{}",
                       headers={SESSION_HEADER: sid}, timeout=30)
        assert r.status_code == 200, r.text
        assert state(gw, sid) is None
        assert list((snapshots / "default").iterdir()) == []
    finally:
        gw.stop()


def test_a_process_session_keeps_its_files_and_ends_after_its_retention(tmp_path, roots):
    storage, snapshots = roots
    gw = Gateway(tmp_path, f"""
[sessions]
storage_root = "{storage}"
snapshot_root = "{snapshots}"
sweep_interval_ms = 100

[[runtimes]]
name = "default"
on_idle = "suspend"
idle_timeout_secs = 1
suspend_retention_secs = 3
[runtimes.backend]
provider = "process"
[[runtimes.filesystems]]
kind = "session_storage"
mount_path = "/mnt/data"
""")
    try:
        sid = f"files-{uuid.uuid4()}"
        first = invoke(gw, sid)
        assert command(gw, sid, 'echo kept > "$SESSIONGATE_STORAGE/f" && cat "$SESSIONGATE_STORAGE/f"') == "kept\n"
        # Idle past its timeout: suspended by the sweep, its backend gone.
        deadline = time.monotonic() + 20
        while state(gw, sid) != "suspended":
            assert time.monotonic() < deadline, gw.sessions()
            time.sleep(0.1)
        again = invoke(gw, sid)
        assert again["instance"] != first["instance"], "a process is re-placed"
        assert again["count"] == 1, "its memory is not kept (only a microVM's is)"
        assert command(gw, sid, 'cat "$SESSIONGATE_STORAGE/f"') == "kept\n", "its files are"
        # Left alone: suspended again, then ended for good after its retention.
        deadline = time.monotonic() + 30
        while state(gw, sid) is not None or "suspend_expired" not in gw.metrics():
            assert time.monotonic() < deadline, gw.sessions()
            time.sleep(0.2)
        assert list((snapshots / "default").iterdir()) == []
    finally:
        gw.stop()
