"""InvokeAgentRuntimeCommand with boto3 pointed at the gateway: a command runs inside the
session's own backend (process and sandbox here; microVMs in the Rust suite), its output comes
back as AWS event-stream chunks that botocore decodes unmodified — stdout and stderr apart, the
exit code, a timeout — and it runs in the session's isolation: its environment and files, not
another session's."""

import os
import shutil
import time
import uuid

import boto3
import httpx
import botocore.exceptions
import pytest
from botocore.config import Config

from conftest import Gateway

AGENT_ARGS = 'args = ["agent", "--http", "{http}", "--mcp", "{mcp}", "--a2a", "{a2a}"]'


def config(provider: str) -> str:
    if provider == "process":
        backend = f'provider = "process"\n{AGENT_ARGS}\nenv = {{ AGENT_MARK = "mark-{{http}}" }}\n'
    else:
        backend = 'provider = "sandbox"\nargs = ["agent"]\nmemory_mb = 256\negress = false\n'
    return f'[[runtimes]]\nname = "default"\n[runtimes.backend]\n{backend}\n[[runtimes]]\nname = "fixed"\n' \
        '[runtimes.backend]\nprovider = "static"\nendpoints = [{ http = "127.0.0.1:9" }]\n'


def client(gw):
    return boto3.client(
        "bedrock-agentcore",
        region_name="us-east-1",
        endpoint_url=f"http://{gw.http}",
        aws_access_key_id="AKIDANYTHING",
        aws_secret_access_key="anything-at-all",
        config=Config(retries={"max_attempts": 1}, read_timeout=120),
    )


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def running(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    return True
        except (OSError, ValueError):
            continue
    return False


def sid() -> str:
    return f"cmd-{uuid.uuid4()}"


def run(c, session, command, timeout=None, runtime="default"):
    kwargs = {"body": {"command": command}}
    if timeout is not None:
        kwargs["body"]["timeout"] = timeout
    r = c.invoke_agent_runtime_command(agentRuntimeArn=runtime, runtimeSessionId=session, **kwargs)
    out, err, stop, started = [], [], None, False
    for event in r["stream"]:
        chunk = event["chunk"]
        if "contentStart" in chunk:
            started = True
        delta = chunk.get("contentDelta", {})
        out.append(delta.get("stdout", ""))
        err.append(delta.get("stderr", ""))
        if "contentStop" in chunk:
            stop = chunk["contentStop"]
    assert started and stop is not None, "the stream has contentStart and contentStop"
    assert r["runtimeSessionId"] == session
    return "".join(out), "".join(err), stop


@pytest.fixture(params=["process", "sandbox"])
def gw(request, tmp_path):
    if request.param == "sandbox" and not shutil.which("bwrap"):
        pytest.fail("bubblewrap is required (scripts/setup --test installs it)")
    g = Gateway(tmp_path, config(request.param))
    g.provider = request.param
    yield g
    g.stop()


def test_output_streams_apart_with_exit_codes_and_timeouts(gw):
    c = client(gw)
    s = sid()
    out, err, stop = run(c, s, "echo hello; echo oops >&2; exit 3")
    assert (out, err) == ("hello\n", "oops\n")
    assert stop == {"exitCode": 3, "status": "COMPLETED"}
    out, _, stop = run(c, s, "true")
    assert (out, stop["exitCode"], stop["status"]) == ("", 0, "COMPLETED")
    t0 = time.monotonic()
    out, _, stop = run(c, s, "echo before; sleep 60; echo after", timeout=2)
    assert out == "before\n" and stop["status"] == "TIMED_OUT"
    assert time.monotonic() - t0 < 30
    # The session is one: the same backend served the invocation and the commands.
    assert len([x for x in gw.sessions() if x["id"] == s]) == 1


def test_commands_run_in_the_sessions_own_isolation(gw):
    c = client(gw)
    a, b = sid(), sid()
    if gw.provider == "sandbox":
        # Its own scratch dir and pid namespace: the other session's file is not there.
        run(c, a, "echo secret-a > mine.txt")
        run(c, b, "echo secret-b > mine.txt")
        out, _, _ = run(c, a, "cat mine.txt; pwd")
        assert out == "secret-a\n/scratch\n"
        ps, _, _ = run(c, a, "ls /proc | grep -c '^[0-9]'")
        assert int(ps) < 10, f"a sandbox sees only its own processes, saw {ps}"
    else:
        # A process backend has no isolation of its own: the agent's environment (its own
        # ports filled in), the gateway's working directory. Nothing is written there.
        env_a, _, _ = run(c, a, "echo $AGENT_MARK; pwd")
        env_b, _, _ = run(c, b, "echo $AGENT_MARK")
        assert env_a.startswith("mark-127.0.0.1:") and env_a.endswith(f"\n{os.getcwd()}\n")
        assert env_b.startswith("mark-127.0.0.1:") and env_b != env_a.splitlines()[0] + "\n"


def test_a_big_output_streams_and_a_disconnect_kills_the_command(gw):
    c = client(gw)
    s = sid()
    # 50 MB through the event stream, read slowly at first: every byte arrives, and the
    # gateway's memory stays flat (the command waits for the reader; nothing piles up).
    run(c, s, "true")
    before = rss_kib(gw.proc.pid)
    r = c.invoke_agent_runtime_command(
        agentRuntimeArn="default", runtimeSessionId=s,
        body={"command": "head -c 50000000 /dev/zero | tr '\\0' x"})
    total, peak = 0, before
    for i, event in enumerate(r["stream"]):
        total += len(event["chunk"].get("contentDelta", {}).get("stdout", ""))
        if i < 20:
            time.sleep(0.05)
        if i % 200 == 0:
            peak = max(peak, rss_kib(gw.proc.pid))
    assert total == 50_000_000
    assert peak - before < 16 * 1024, f"gateway RSS grew {peak - before} KiB while streaming 50 MB"
    # A client that goes away mid-command: the command's process tree ends.
    marker = f"sg-marker-{uuid.uuid4().hex[:8]}"
    r = c.invoke_agent_runtime_command(
        agentRuntimeArn="default", runtimeSessionId=s,
        body={"command": f"echo go; sleep 300; echo {marker}"})
    events = iter(r["stream"])
    next(events)  # contentStart
    next(events)  # "go"
    assert running(marker)
    r["stream"].close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not running(marker):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the command outlived its client")


def test_bad_requests_and_static_runtimes_are_refused_clearly(gw):
    c = client(gw)
    with pytest.raises(botocore.exceptions.ParamValidationError):
        c.invoke_agent_runtime_command(agentRuntimeArn="default", runtimeSessionId=sid(), body={"command": ""})
    with pytest.raises(c.exceptions.ValidationException, match="timeout"):
        c.invoke_agent_runtime_command(
            agentRuntimeArn="default", runtimeSessionId=sid(), body={"command": "true", "timeout": 5000})
    with pytest.raises(c.exceptions.ValidationException, match="static"):
        run(c, sid(), "true", runtime="fixed")
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        run(c, sid(), "true", runtime="nope")


def test_commands_run_inside_a_microvm_guest(tmp_path):
    """A microVM session's commands run in its guest (the guest agent's exec server, reached
    through a forwarded port): the guest's kernel and the session id it was told, not the
    host's; a disconnect kills the command inside the guest."""
    from pathlib import Path

    from conftest import binary

    guest = Path(os.environ.get("SESSIONGATE_GUEST_DIR", Path(binary()).parents[1] / "guest"))
    assert (guest / "vmlinux").exists(), f"no microVM guest in {guest}: run make guest"
    gw = Gateway(tmp_path, f"""
[[runtimes]]
name = "default"
[runtimes.backend]
provider = "microvm"
kernel = "{guest}/vmlinux"
initrd = "{guest}/initrd.cpio"
ready_timeout_ms = 180000
""".replace('name = "default"', 'name = "default"\nallowed_ports = [8081]'))
    try:
        c = client(gw)
        c.meta.config.read_timeout = 240
        s = sid()
        out, err, stop = run(c, s, "cat /run/session-id; echo; uname -r; echo warn >&2; exit 7")
        assert out.splitlines() == [s, out.splitlines()[1]]
        assert out.splitlines()[1] != os.uname().release, "the guest's kernel, not the host's"
        assert (err, stop) == ("warn\n", {"exitCode": 7, "status": "COMPLETED"})
        _, _, stop = run(c, s, "sleep 30", timeout=1)
        assert stop["status"] == "TIMED_OUT"
        r = c.invoke_agent_runtime_command(
            agentRuntimeArn="default", runtimeSessionId=s,
            body={"command": "echo go; sleep 300; echo guest-marker"})
        events = iter(r["stream"])
        next(events)
        next(events)
        count = "ps -o args | grep -c '[g]uest-marker' || true"
        assert run(c, s, count)[0].strip() == "1", "the command runs in the guest meanwhile"
        r["stream"].close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out, _, _ = run(c, s, count)
            if out.strip() == "0":
                break
            time.sleep(0.5)
        else:
            pytest.fail("the command outlived its client inside the guest")

        # A session endpoint reaches an app the session started inside its guest, on the
        # guest's own loopback (a command daemonises it: its own session outlives the command,
        # once setsid has run — hence the wait before the command ends).
        run(c, s, "setsid /bin/sessiongate-agent --http 127.0.0.1:8090 --mcp 127.0.0.1:8091 "
                  "--a2a 127.0.0.1:8092 --extra-port 8081 >/dev/null 2>&1 < /dev/null & sleep 1")
        url = f"http://{gw.http}/runtimes/default/sessions/{s}/ports/8081/in-guest?q=1"
        deadline = time.monotonic() + 60
        while (got := httpx.get(url, timeout=60)).status_code != 200 and time.monotonic() < deadline:
            assert got.status_code == 502, got.text  # not listening yet
            time.sleep(0.5)
        assert (got.json()["port"], got.json()["path"], got.json()["session_id"]) == (8081, "/in-guest?q=1", s)
    finally:
        gw.stop()
