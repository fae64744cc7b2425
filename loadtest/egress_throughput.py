#!/usr/bin/env python3
"""Throughput through the egress proxy against direct, side by side in one run: one large
download from the egress tests' own network namespace (tests/python/egress_world.py, never an
outside address), by curl, as

- the host itself (no sandbox, no proxy);
- a sandbox with plain `egress = true` (slirp4netns, no policy: today's default);
- a sandbox under a policy: plain HTTP through the proxy, HTTPS tunnelled (CONNECT, untouched),
  and HTTPS to a credential host (intercepted: TLS terminated, the header added, re-encrypted).

    .venv/bin/python loadtest/egress_throughput.py [--mb 100] [--runs 3]   # as root

Needs root (a network namespace), the release binary (`make build`) and the repository's venv
(`scripts/setup --test`). Bounded: RUNS downloads per row, then everything it started stops.
Prints the median MB/s per row and writes the table to loadtest/egress-last-run.md.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

from conftest import Gateway  # noqa: E402
from egress_world import ALLOWED, egress_world, gateway_prefix  # noqa: E402
from test_commands_boto3 import client, run  # noqa: E402

SANDBOX = '[runtimes.backend]\nprovider = "sandbox"\nargs = ["agent"]\nmemory_mb = 512\n'
CONFIG = f"""
[[runtimes]]
name = "open"
{SANDBOX}
[[runtimes]]
name = "policy"
{SANDBOX}
[runtimes.egress]
mode = "allow_list"
allow = ["allowed.test"]
[[runtimes]]
name = "cred"
{SANDBOX}
[runtimes.egress]
mode = "allow_list"
allow = ["allowed.test"]
[[runtimes.egress.credentials]]
host = "allowed.test"
header = "Authorization"
value_from = "env:EGRESS_BENCH_TOKEN"
"""
CURL = "curl -s -o /dev/null -w '%{speed_download} %{size_download}' "


def mb_per_s(output: str, size: int) -> float:
    speed, got = output.split()
    assert int(got) == size, f"downloaded {got} of {size} bytes"
    return float(speed) / 1e6


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    size = a.mb * 1_000_000
    with tempfile.TemporaryDirectory() as tmp, egress_world(Path(tmp)) as world:
        gw = Gateway(Path(tmp), CONFIG, prefix=gateway_prefix(world),
                     env={"EGRESS_BENCH_TOKEN": "Bearer bench",
                          "SSL_CERT_FILE": str(world / "ca.pem")})
        try:
            c = client(gw)
            sessions = {r: f"bench-{uuid.uuid4()}" for r in ("open", "policy", "cred")}
            https = f"https://allowed.test:8443/bytes/{size}"
            http = f"http://allowed.test:8080/bytes/{size}"
            host_https = f"--cacert {world / 'ca.pem'} --resolve allowed.test:8443:{ALLOWED} "
            rows = [
                ("host, direct: HTTP", None, f"{CURL}http://{ALLOWED}:8080/bytes/{size}"),
                ("host, direct: HTTPS", None, f"{CURL}{host_https}{https}"),
                ("sandbox, slirp4netns (no policy): HTTP", "open",
                 f"{CURL}http://{ALLOWED}:8080/bytes/{size}"),
                ("sandbox, policy, proxy: HTTP", "policy", f"{CURL}{http}"),
                # -k: the sandbox does not hold the test CA (the tunnel passes TLS untouched).
                ("sandbox, policy, proxy: HTTPS tunnelled", "policy", f"{CURL}-k {https}"),
                ("sandbox, policy, proxy: HTTPS intercepted (credentials)", "cred",
                 f"{CURL}{https}"),
            ]
            table = []
            for label, runtime, cmd in rows:
                speeds = []
                for _ in range(a.runs):
                    if runtime is None:
                        out = subprocess.run(["sh", "-c", cmd], check=True, capture_output=True,
                                             text=True).stdout
                    else:
                        out, err, stop = run(c, sessions[runtime], cmd, runtime=runtime)
                        assert stop["exitCode"] == 0, (label, out, err)
                    speeds.append(mb_per_s(out, size))
                table.append((label, statistics.median(speeds)))
                print(f"{label:58} {table[-1][1]:8.1f} MB/s", flush=True)
        finally:
            gw.stop()
    base = table[0][1]
    lines = [f"# Egress throughput, one run ({a.mb} MB downloads, median of {a.runs})", "",
             "| path | MB/s | vs host direct HTTP |", "|---|---:|---:|"]
    lines += [f"| {label} | {speed:.1f} | {speed / base:.2f}× |" for label, speed in table]
    out = ROOT / "loadtest" / "egress-last-run.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
