#!/usr/bin/env python3
"""Time to first byte of a NEW session, per provider, side by side in one run.

For each variant a gateway is started on loopback with that runtime; then, one after another,
N requests each open a new session (a fresh session id) and curl reports the time to the
first byte of the answer; each session is stopped (DELETE /sessions/{id}) before the next.
With a warm pool, each request is sent only once the pool is full again, so it measures a
session served by a ready backend. The first line, `existing session`, is a request to a
session already placed: what the gateway itself costs. `microvm resume from suspend` places one
session of an `on_idle = "suspend"` runtime, then N times suspends it (admin
`POST /sessions/{id}/suspend`) and times the request that resumes it.

    loadtest/coldstart.py [--n 15] [--vm-n 5] [--only process,sandbox,...]

Needs the release binary (`make build`) and the microVM guest (`make guest`). Bounded: each
variant runs N sessions with a 3-minute cap per request, then its gateway is stopped.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def target_dir():
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, capture_output=True, check=True, text=True,
    )
    return json.loads(meta.stdout)["target_directory"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, binary, backend_toml, runtime_toml=""):
        self.dir = tempfile.TemporaryDirectory(prefix="sessiongate-coldstart-")
        self.ports = {k: free_port() for k in ("http", "mcp", "a2a", "admin")}
        cfg = os.path.join(self.dir.name, "sessiongate.toml")
        snapshots = os.path.join(self.dir.name, "snapshots")
        with open(cfg, "w") as f:
            f.write(
                f'[sessions]\nsweep_interval_ms = 50\nsnapshot_root = "{snapshots}"\n'
                "[limits]\nnew_sessions_per_second = 1000\n\n"
                '[[runtimes]]\nname = "default"\n' + runtime_toml + "[runtimes.backend]\n" + backend_toml
            )
        args = [binary, "--config", cfg]
        for k, p in self.ports.items():
            args += [f"--{k}", f"127.0.0.1:{p}"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "RUST_LOG": "error"})
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.admin("/healthz"), timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("gateway did not start")

    def admin(self, path):
        return f"http://127.0.0.1:{self.ports['admin']}{path}"

    def warm(self):
        text = urllib.request.urlopen(self.admin("/metrics"), timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith("sessiongate_warm_backends{"):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def ttfb(self, sid):
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-m", "180", "-w", "%{http_code} %{time_starttransfer}",
             "-X", "POST", f"http://127.0.0.1:{self.ports['http']}/invocations",
             "-H", f"X-Amzn-Bedrock-AgentCore-Runtime-Session-Id: {sid}", "-d", "{}"],
            capture_output=True, text=True,
        ).stdout.split()
        if out[0] != "200":
            raise RuntimeError(f"status {out[0]}")
        return float(out[1]) * 1000

    def suspend(self, sid):
        """Suspends now; a 409 (the last request's bookkeeping still finishing) is retried."""
        deadline = time.time() + 10
        while True:
            req = urllib.request.Request(self.admin(f"/sessions/{sid}/suspend"), method="POST")
            try:
                urllib.request.urlopen(req, timeout=120).read()
                return
            except urllib.error.HTTPError as e:
                if e.code != 409 or time.time() > deadline:
                    raise
                time.sleep(0.02)

    def stop_session(self, sid):
        req = urllib.request.Request(self.admin(f"/sessions/{sid}"), method="DELETE")
        urllib.request.urlopen(req, timeout=30).read()

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


def run(binary, name, backend, n, warm_pool):
    resume = name.endswith("resume from suspend")
    gw = Gateway(binary, backend + (f"warm_pool = {warm_pool}\n" if warm_pool else ""),
                 'on_idle = "suspend"\n' if resume else "")
    try:
        times = []
        if resume:
            sid = f"coldstart-resume-{os.getpid()}-{time.time_ns()}"
            gw.ttfb(sid)
            for _ in range(n):
                gw.suspend(sid)
                times.append(gw.ttfb(sid))
            return times
        existing = name.endswith("existing session")
        if existing:
            gw.ttfb("coldstart-existing-session-0000000000000000")
        for i in range(n):
            if warm_pool:
                deadline = time.time() + 300
                while gw.warm() < warm_pool and time.time() < deadline:
                    time.sleep(0.02)
            sid = f"coldstart-existing-session-0000000000000000" if existing \
                else f"coldstart-{name.replace(' ', '-')}-{i:04d}-{os.getpid()}-{time.time_ns()}"
            times.append(gw.ttfb(sid))
            if not existing:
                gw.stop_session(sid)
        return times
    finally:
        gw.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--vm-n", type=int, default=5)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    tdir = target_dir()
    binary = os.path.join(tdir, "release", "sessiongate")
    guest = os.environ.get("SESSIONGATE_GUEST_DIR", os.path.join(tdir, "guest"))
    vm = f'provider = "microvm"\nkernel = "{guest}/vmlinux"\ninitrd = "{guest}/initrd.cpio"\nready_timeout_ms = 180000\n'
    variants = [
        ("existing session", 'provider = "process"\n', a.n, 0),
        ("process", 'provider = "process"\n', a.n, 0),
        ("process + warm pool", 'provider = "process"\n', a.n, 2),
        ("sandbox", 'provider = "sandbox"\n', a.n, 0),
        ("sandbox + warm pool", 'provider = "sandbox"\n', a.n, 2),
        ("sandbox without egress", 'provider = "sandbox"\negress = false\n', a.n, 0),
        ("microvm existing session", vm, a.vm_n, 0),
        ("microvm cold boot", vm + "snapshot = false\n", a.vm_n, 0),
        ("microvm from snapshot", vm, a.vm_n, 0),
        ("microvm + warm pool", vm, a.vm_n, 2),
        ("microvm resume from suspend", vm, a.vm_n, 0),
    ]
    only = [o.strip() for o in a.only.split(",") if o.strip()]
    print(f"| variant | n | min ms | median ms | p95 ms | max ms |")
    print(f"|---|---|---|---|---|---|")
    for name, backend, n, warm in variants:
        if only and not any(o in name for o in only):
            continue
        try:
            t = run(binary, name, backend, n, warm)
        except Exception as e:  # report and go on with the other variants
            print(f"| {name} | - | failed: {e} | | | |")
            continue
        p95 = sorted(t)[min(len(t) - 1, int(len(t) * 0.95))]
        print(f"| {name} | {n} | {min(t):.1f} | {statistics.median(t):.1f} | {p95:.1f} | {max(t):.1f} |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
