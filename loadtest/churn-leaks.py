#!/usr/bin/env python3
"""Session churn leak check: N sessions (default 1 000) opened and stopped per provider, then
a count of everything a backend could leave behind, while the gateway runs and after it exits.

    loadtest/churn-leaks.py [--n 1000] [--vm-n 100] [--only process,sandbox,microvm]

Counted: the gateway's open file descriptors (sockets included) before and after, processes
still running from its state dir or as its children, entries in its state dir
($TMPDIR/sessiongate-<pid>), and cgroups named after it. A pass leaves, while running, only the
warm pool's backends and the descriptors it started with (±2), and after exit nothing at all.
Bounded: 4 workers, each request capped at 3 minutes; loopback only.
"""

import argparse
import concurrent.futures
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coldstart import Gateway, target_dir  # noqa: E402


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def processes(pid):
    state = f"/tmp/sessiongate-{pid}"
    n = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")
            stat = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if state in cmd or stat[1] == str(pid) or (stat[0] != "Z" and "qemu-system" in cmd and state in cmd):
            n += 1
    return n


def state_entries(pid):
    try:
        return len([e for e in os.listdir(f"/tmp/sessiongate-{pid}") if e != "sessiongate"])
    except FileNotFoundError:
        return 0


def cgroups(pid):
    prefix = f"sessiongate-{pid}-"
    n = 0
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        n += sum(1 for d in dirs if d.startswith(prefix))
        dirs[:] = [d for d in dirs if not d.startswith(prefix)]
        if root.count("/") > 7:
            dirs[:] = []
    return n


def churn(name, backend, n, warm):
    gw = Gateway(BINARY, backend + (f"warm_pool = {warm}\n" if warm else ""))
    pid = gw.proc.pid
    try:
        gw.ttfb(f"churn-warmup-{name}-0000000000000000000000000000")
        gw.stop_session(f"churn-warmup-{name}-0000000000000000000000000000")
        time.sleep(1)
        before = fds(pid)
        start = time.time()

        def one(i):
            sid = f"churn-{name}-{i:05d}-{time.time_ns()}-00000000000000"
            gw.ttfb(sid)
            gw.stop_session(sid)

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            list(ex.map(one, range(n)))
        took = time.time() - start
        # Let the pool refill and the last stops finish.
        deadline = time.time() + 30
        while time.time() < deadline and (gw.warm() < warm or state_entries(pid) > warm + 1):
            time.sleep(0.1)
        time.sleep(0.5)
        running = (fds(pid) - before, processes(pid), state_entries(pid), cgroups(pid))
    finally:
        gw.close()
    time.sleep(0.5)
    after = (processes(pid), state_entries(pid), cgroups(pid), os.path.exists(f"/tmp/sessiongate-{pid}"))
    return took, running, after


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--vm-n", type=int, default=100)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    guest = os.environ.get("SESSIONGATE_GUEST_DIR", os.path.join(target_dir(), "guest"))
    vm = f'provider = "microvm"\nkernel = "{guest}/vmlinux"\ninitrd = "{guest}/initrd.cpio"\nready_timeout_ms = 180000\n'
    variants = [
        ("process", 'provider = "process"\n', a.n, 2),
        ("sandbox", 'provider = "sandbox"\n', a.n, 2),
        ("microvm", vm, a.vm_n, 2),
    ]
    only = [o.strip() for o in a.only.split(",") if o.strip()]
    print("| provider | sessions | s | fds Δ | procs | state entries | cgroups | after exit: procs, entries, cgroups, dir | pass |")
    print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    for name, backend, n, warm in variants:
        if only and name not in only:
            continue
        took, (dfd, procs, entries, cgs), after = churn(name, backend, n, warm)
        per_backend_procs = {"process": 1, "sandbox": 4, "microvm": 1}[name]
        passed = (
            abs(dfd) <= 2
            and procs <= warm * per_backend_procs
            and entries <= warm + (1 if name == "microvm" else 0)  # + the snapshot template
            and cgs <= (warm * 3 if name == "sandbox" else 0)
            and after == (0, 0, 0, False)
        )
        ok &= passed
        print(f"| {name} | {n} | {took:.0f} | {dfd:+d} | {procs} | {entries} | {cgs} | {after} | {'yes' if passed else 'NO'} |", flush=True)
    return 0 if ok else 1


BINARY = os.path.join(target_dir(), "release", "sessiongate")

if __name__ == "__main__":
    sys.exit(main())
