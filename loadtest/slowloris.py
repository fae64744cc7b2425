#!/usr/bin/env python3
"""Slowloris against the gateway, measured: N connections that send a request head one header
line at a time and never finish it, while a normal client keeps invoking.

Reports, for each binary given, side by side in one run: the gateway's RSS and open descriptors
before, at the peak and after; how long until every attacking connection was closed by the
gateway (or how many were still open at the end); and the latency of the normal requests made
meanwhile. Loopback only, bounded by --seconds; every process started here is stopped by PID.

    loadtest/slowloris.py                          # this build, 1 000 connections
    loadtest/slowloris.py --connections 1000 --seconds 40 BIN_BEFORE BIN_AFTER
"""

import argparse
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stats(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open descriptors) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def invoke(url: str, sid: str) -> float:
    """One normal request; its latency in ms (or inf when it failed)."""
    req = urllib.request.Request(
        url, data=b'{"prompt":"hi"}', method="POST",
        headers={"Content-Type": "application/json",
                 "X-Amzn-Bedrock-AgentCore-Runtime-Session-Id": sid})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            if r.status != 200:
                return float("inf")
    except OSError:
        return float("inf")
    return (time.monotonic() - start) * 1000


def attack(binary: str, args) -> list:
    """Starts `binary` on free loopback ports and attacks it `args.rounds` times."""
    ports = {k: free_port() for k in ("http", "mcp", "a2a", "admin")}
    log = tempfile.TemporaryFile()
    gw = subprocess.Popen(
        [binary] + [a for k, p in ports.items() for a in (f"--{k}", f"127.0.0.1:{p}")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "error"})
    base = f"http://127.0.0.1:{ports['http']}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{base}/ping", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        sid = "slowloris-bystander-0123456789abcdef0123456789"
        invoke(f"{base}/invocations", sid)  # the bystander's session exists before the attack
        rows = []
        for n in range(1, args.rounds + 1):
            row = one_round(gw.pid, ports["http"], f"{base}/invocations", sid, args)
            rows.append({"binary": binary, "round": n, **row})
        return rows
    finally:
        gw.terminate()
        try:
            gw.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gw.kill()
            gw.wait()


def one_round(pid: int, http_port: int, url: str, sid: str, args) -> dict:
    """One attack on a running gateway."""
    before = proc_stats(pid)
    sel = selectors.DefaultSelector()
    open_now = set()
    t0 = time.monotonic()
    for _ in range(args.connections):
        s = socket.create_connection(("127.0.0.1", http_port))
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        open_now.add(s)
    opened_in = time.monotonic() - t0
    peak_rss, peak_fds = proc_stats(pid)
    latencies = []
    all_closed_at = None
    next_line = time.monotonic() + args.line_every
    while time.monotonic() - t0 < args.seconds:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            # A 408 then EOF, or EOF alone: either way the gateway let go of it.
            if not data or b"\r\n\r\n" in data:
                sel.unregister(s)
                s.close()
                open_now.discard(s)
        if time.monotonic() >= next_line:
            for s in open_now:
                try:
                    s.send(b"X-Slow: 1\r\n")
                except OSError:
                    pass
            next_line += args.line_every
        rss, fds = proc_stats(pid)
        peak_rss, peak_fds = max(peak_rss, rss), max(peak_fds, fds)
        latencies.append(invoke(url, sid))
        if not open_now:
            all_closed_at = time.monotonic() - t0
            break
    still_open = len(open_now)
    for s in open_now:
        s.close()
    time.sleep(1)
    after = proc_stats(pid)
    ok = [x for x in latencies if x != float("inf")]
    return {
        "connections": args.connections,
        "opened_in_s": round(opened_in, 2),
        "rss_kib": {"before": before[0], "peak": peak_rss, "after": after[0]},
        "fds": {"before": before[1], "peak": peak_fds, "after": after[1]},
        "all_closed_after_s": None if all_closed_at is None else round(all_closed_at, 1),
        "still_open_at_end": still_open,
        "normal_requests": len(latencies),
        "normal_failed": len(latencies) - len(ok),
        "normal_p50_ms": round(statistics.median(ok), 2) if ok else None,
        "normal_max_ms": round(max(ok), 2) if ok else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="*")
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--rounds", type=int, default=1, help="attacks on the same gateway, one after another")
    ap.add_argument("--line-every", type=float, default=5, help="seconds between header lines")
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/sessiongate/target"))
    binaries = args.binaries or [f"{target}/release/sessiongate"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.connections + 100:
        print(f"the descriptor limit ({hard}) is too low for {args.connections} connections", file=sys.stderr)
        return 1
    rows = [row for b in binaries for row in attack(b, args)]
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
