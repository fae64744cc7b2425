#!/usr/bin/env python3
"""Commands and shells inside a session, per provider, side by side in one run:

- command round-trip: boto3 `invoke_agent_runtime_command` running `true` on a warm session,
  from the call to the end of its event stream (contentStop decoded);
- shell keystroke echo: one character typed into an attached shell (`/runtimes/{id}/ws/shells`)
  until the PTY's echo of it arrives back.

    .venv/bin/python loadtest/commands.py [--n 50] [--only process,sandbox,microvm]

Needs the release binary (`make build`) and the microVM guest (`make guest`); runs with the
repository's venv (`scripts/setup --test`). Bounded: N round-trips per provider, then the
gateway stops. Loopback only. Prints a table and writes it to loadtest/commands-last-run.md.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import boto3  # noqa: E402
import websockets  # noqa: E402
from botocore.config import Config  # noqa: E402
from conftest import Gateway, binary  # noqa: E402


def config(guest: Path) -> str:
    return f"""
[[runtimes]]
name = "process"
[runtimes.backend]
provider = "process"
args = ["agent", "--http", "{{http}}", "--mcp", "{{mcp}}", "--a2a", "{{a2a}}"]

[[runtimes]]
name = "sandbox"
[runtimes.backend]
provider = "sandbox"
args = ["agent"]
egress = false

[[runtimes]]
name = "microvm"
[runtimes.backend]
provider = "microvm"
kernel = "{guest}/vmlinux"
initrd = "{guest}/initrd.cpio"
ready_timeout_ms = 180000
"""


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def command_round_trips(gw, runtime, n):
    c = boto3.client("bedrock-agentcore", region_name="us-east-1", endpoint_url=f"http://{gw.http}",
                     aws_access_key_id="AKID", aws_secret_access_key="x",
                     config=Config(retries={"max_attempts": 1}, read_timeout=300))
    sid = f"bench-{runtime}-{uuid.uuid4()}"

    def once():
        r = c.invoke_agent_runtime_command(agentRuntimeArn=runtime, runtimeSessionId=sid, body={"command": "true"})
        stop = [e["chunk"]["contentStop"] for e in r["stream"] if "contentStop" in e["chunk"]]
        assert stop and stop[0]["exitCode"] == 0, stop

    once()  # places the session
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        once()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


async def echo_latencies(gw, runtime, n):
    sid = f"bench-sh-{runtime}-{uuid.uuid4()}"
    url = (f"ws://{gw.http}/runtimes/{runtime}/ws/shells?shellId=bench"
           f"&X-Amzn-Bedrock-AgentCore-Runtime-Session-Id={sid}")
    async with websockets.connect(url, open_timeout=300, max_size=2**20) as ws:
        await ws.send(b"\x00stty -echoctl; PS1=; export PS1\n")
        await asyncio.sleep(1.0)
        while True:  # drain the prompt and the echo of the line above
            try:
                await asyncio.wait_for(ws.recv(), 0.3)
            except asyncio.TimeoutError:
                break
        times = []
        for i in range(n):
            ch = b"abcdefghij"[i % 10 : i % 10 + 1]
            t0 = time.perf_counter()
            await ws.send(b"\x00" + ch)
            while True:
                m = await asyncio.wait_for(ws.recv(), 30)
                if m[:1] == b"\x01" and ch in m[1:]:
                    break
            times.append((time.perf_counter() - t0) * 1e3)
        await ws.send(b"\x00\x15exit\n")
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--only", default="process,sandbox,microvm")
    args = ap.parse_args()
    guest = Path(os.environ.get("SESSIONGATE_GUEST_DIR", Path(binary()).parents[1] / "guest"))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        gw = Gateway(Path(d), config(guest))
        try:
            for runtime in args.only.split(","):
                cmd = command_round_trips(gw, runtime, args.n)
                echo = asyncio.run(echo_latencies(gw, runtime, args.n))
                rows.append((runtime, cmd, echo))
                print(f"{runtime:8} command p50 {statistics.median(cmd):7.2f} ms  p95 {pct(cmd, 95):7.2f} ms   "
                      f"echo p50 {statistics.median(echo):6.2f} ms  p95 {pct(echo, 95):6.2f} ms", flush=True)
        finally:
            gw.stop()
    table = [f"machine: {os.cpu_count()} cores, {os.uname().release}; "
             f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}; n={args.n} per provider", "",
             "| provider | command `true` p50 | p95 | keystroke echo p50 | p95 |", "|---|---|---|---|---|"]
    for runtime, cmd, echo in rows:
        table.append(f"| {runtime} | {statistics.median(cmd):.1f} ms | {pct(cmd, 95):.1f} ms | "
                     f"{statistics.median(echo):.2f} ms | {pct(echo, 95):.2f} ms |")
    (ROOT / "loadtest" / "commands-last-run.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
