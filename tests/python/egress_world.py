"""The egress tests' (and loadtest/egress_throughput.py's) destinations: a network namespace
made for them, joined to the host by a veth pair (10.200.0.2 on the host's side), holding
10.200.0.1 (`allowed.test`: HTTP on 8080, HTTPS on 8443 with a certificate from a test CA) and
10.200.0.3 (`denied.test`: HTTP on 8080). Never an outside address; removed on exit.

It yields a directory with `ca.pem` (the test CA, for the gateway's SSL_CERT_FILE) and `hosts`
(the two names, for the gateway's /etc/hosts in a mount namespace of its own: `GATEWAY_PREFIX`)."""

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

ALLOWED, DENIED, HOST_SIDE = "10.200.0.1", "10.200.0.3", "10.200.0.2"
NS = f"sgeg{os.getpid() % 100000}"
ECHO = Path(__file__).parent / "agents" / "egress_echo.py"


def sh(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True)


def gateway_prefix(world: Path) -> list:
    """Runs the gateway in a mount namespace whose /etc/hosts knows the test's names."""
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
            str(world / "hosts")]


@contextlib.contextmanager
def egress_world(d: Path, python: str = "python3"):
    if os.geteuid() != 0 or not shutil.which("ip"):
        raise RuntimeError("the egress tests need root and iproute2 (a network namespace)")
    # A test CA and a certificate for allowed.test: what the real host presents upstream.
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "2",
       "-subj", "/CN=egress test CA")
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", d / "srv.key", "-out", d / "srv.csr", "-subj", "/CN=allowed.test")
    (d / "ext").write_text("subjectAltName=DNS:allowed.test\n")
    sh("openssl", "x509", "-req", "-in", d / "srv.csr", "-CA", d / "ca.pem", "-CAkey",
       d / "ca.key", "-CAcreateserial", "-out", d / "srv.pem", "-days", "2", "-extfile", d / "ext")
    host_if, ns_if = f"{NS}a", f"{NS}b"
    sh("ip", "netns", "add", NS)
    servers = []
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", NS)
        sh("ip", "addr", "add", f"{HOST_SIDE}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        for addr in (ALLOWED, DENIED):
            sh("ip", "-n", NS, "addr", "add", f"{addr}/24", "dev", ns_if)
        sh("ip", "-n", NS, "link", "set", ns_if, "up")
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        for listen, name, tls in [(f"{ALLOWED}:8080", "allowed", False),
                                  (f"{DENIED}:8080", "denied", False),
                                  (f"{ALLOWED}:8443", "allowed-tls", True)]:
            extra = ["--cert", str(d / "srv.pem"), "--key", str(d / "srv.key")] if tls else []
            p = subprocess.Popen(["ip", "netns", "exec", NS, python, str(ECHO),
                                  "--listen", listen, "--name", name, *extra],
                                 stdout=subprocess.PIPE, text=True)
            servers.append(p)
            assert p.stdout.readline().strip() == "ready", f"{name} did not start"
        (d / "hosts").write_text(f"127.0.0.1 localhost\n{ALLOWED} allowed.test\n"
                                 f"{DENIED} denied.test\n")
        yield d
    finally:
        for p in servers:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", NS], check=False)
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
