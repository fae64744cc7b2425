"""Egress policy with credential injection (issue 17), end to end: a real gateway, real sandbox
and microVM sessions, and destinations in a network namespace this test makes (10.200.0.1 is on
the list, 10.200.0.3 is not; never an outside address). The session's commands run inside it
through boto3's InvokeAgentRuntimeCommand, with curl (sandbox) and busybox (guest)."""

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import Gateway, binary
from egress_world import ALLOWED, DENIED, egress_world, gateway_prefix
from test_commands_boto3 import client, run

SECRET = f"s3cr3t-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the egress tests need root (a network namespace of their own)")
    with egress_world(tmp_path_factory.mktemp("egress"), os.environ.get("PYTHON", "python3")) as d:
        yield d


POLICY = """
[runtimes.egress]
mode = "allow_list"
allow = ["allowed.test"]
deny = ["169.254.0.0/16"]
budget_mb = 1
[[runtimes.egress.credentials]]
host = "allowed.test"
header = "Authorization"
value_from = "env:EGRESS_TEST_TOKEN"
"""


@pytest.fixture(scope="module")
def gw(world, tmp_path_factory):
    guest = Path(os.environ.get("SESSIONGATE_GUEST_DIR", Path(binary()).parents[1] / "guest"))
    assert (guest / "vmlinux").exists(), f"no microVM guest in {guest}: run make guest"
    cfg = f"""
[[runtimes]]
name = "sbx"
[runtimes.backend]
provider = "sandbox"
args = ["agent"]
memory_mb = 256
{POLICY}
[[runtimes]]
name = "vm"
[runtimes.backend]
provider = "microvm"
kernel = "{guest}/vmlinux"
initrd = "{guest}/initrd.cpio"
ready_timeout_ms = 180000
{POLICY}
"""
    workdir = tmp_path_factory.mktemp("gw")
    log = open(workdir / "gateway.log", "w")
    g = Gateway(
        workdir, cfg,
        prefix=gateway_prefix(world),
        env={"EGRESS_TEST_TOKEN": f"Bearer {SECRET}", "SSL_CERT_FILE": str(world / "ca.pem"),
             "RUST_LOG": os.environ.get("EGRESS_TEST_LOG", "warn,sessiongate::egress=info")},
        stderr=log,
    )
    g.log = workdir / "gateway.log"
    yield g
    g.stop()
    log.close()


def audit(g) -> list[str]:
    return [line for line in g.log.read_text().splitlines() if "sessiongate::egress" in line]


def metric(g, runtime: str, verdict: str) -> int:
    m = re.search(rf'sessiongate_egress_connections_total{{[^}}]*runtime="{runtime}"[^}}]*'
                  rf'verdict="{verdict}"[^}}]*}} (\d+)', g.metrics())
    return int(m.group(1)) if m else 0


def test_a_sandbox_reaches_only_what_its_list_allows(gw):
    c, s = client(gw), f"egress-{uuid.uuid4()}"
    out, _, stop = run(c, s, "curl -s -m 20 http://allowed.test:8080/hello", runtime="sbx")
    assert stop["exitCode"] == 0 and json.loads(out)["server"] == "allowed", out
    # Another server: refused by the proxy, by name and by address.
    out, _, _ = run(c, s, "curl -s -m 20 -o /dev/null -w '%{http_code}' http://denied.test:8080/",
                    runtime="sbx")
    assert out == "403"
    out, _, _ = run(c, s, f"curl -s -m 20 http://{DENIED}:8080/", runtime="sbx")
    assert "not on the list" in out
    # A name outside the list does not even resolve; one on it does, to the allowed address.
    out, _, stop = run(c, s, "getent hosts denied.test", runtime="sbx")
    assert stop["exitCode"] != 0 and out == ""
    out, _, _ = run(c, s, "getent hosts allowed.test", runtime="sbx")
    assert out.split()[0] == ALLOWED
    # A raw IP without the proxy has no route at all, on the list or not.
    for ip in (DENIED, ALLOWED):
        out, _, stop = run(c, s, f"curl -s -m 5 --noproxy '*' http://{ip}:8080/; echo rc=$?",
                           runtime="sbx")
        assert "rc=7" in out or "rc=28" in out, out
    # An allowed name with another's Host header, and the instance-metadata address: refused.
    out, _, _ = run(c, s, "curl -s -m 20 -o /dev/null -w '%{http_code}' -H 'Host: denied.test' "
                          "http://allowed.test:8080/", runtime="sbx")
    assert out == "421"
    out, _, _ = run(c, s, "curl -s -m 20 http://169.254.169.254/latest/meta-data/", runtime="sbx")
    assert "not on the list" in out, out
    lines = audit(gw)
    assert any("denied.test" in l and "deny" in l for l in lines), lines
    assert any(s in l for l in lines), "the audit lines name the session"


def test_https_to_a_credential_host_gets_the_header_the_session_never_sees(gw):
    c, s = client(gw), f"egress-{uuid.uuid4()}"
    # The agent sends a placeholder at most; the proxy puts the real value in its place.
    out, err, stop = run(c, s, "curl -s -m 20 -H 'Authorization: Bearer placeholder' "
                               "https://allowed.test:8443/api", runtime="sbx")
    assert stop["exitCode"] == 0, err
    seen = json.loads(out)
    assert seen["server"] == "allowed-tls" and seen["headers"]["authorization"] == f"Bearer {SECRET}"
    # Credentials go over TLS only: a plain http:// request to the same host goes without.
    out, _, _ = run(c, s, "curl -s -m 20 http://allowed.test:8080/plain", runtime="sbx")
    assert "authorization" not in json.loads(out)["headers"]
    # Python's own TLS stack trusts the gateway's CA too (SSL_CERT_FILE / REQUESTS_CA_BUNDLE).
    py = ("import json,os,urllib.request;"
          "print(json.load(urllib.request.urlopen('https://allowed.test:8443/py',timeout=20))"
          "['headers']['authorization'])")
    out, err, stop = run(c, s, f'python3 -c "{py}"', runtime="sbx")
    assert out.strip() == f"Bearer {SECRET}", err
    # No trace of the secret in the session: its environment, its processes', its files.
    out, _, _ = run(c, s, f"env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; "
                          f"grep -rl '{SECRET[:12]}' /scratch /tmp /run /etc 2>/dev/null; echo end",
                    runtime="sbx")
    assert SECRET not in out and SECRET[:12] not in out.replace(f"'{SECRET[:12]}'", "")
    assert out.rstrip().endswith("end")


def test_the_budget_cuts_a_session_off(gw):
    c, s = client(gw), f"egress-{uuid.uuid4()}"
    out, _, _ = run(c, s, "curl -s -m 20 -o /dev/null -w '%{size_download}' "
                          "http://allowed.test:8080/bytes/600000", runtime="sbx")
    assert out == "600000"
    out, _, _ = run(c, s, "curl -s -m 20 -o /dev/null -w '%{size_download}' "
                          "http://allowed.test:8080/bytes/900000; echo; echo rc=$?", runtime="sbx")
    assert int(out.split()[0]) < 900000, out
    out, _, _ = run(c, s, "curl -s -m 20 http://allowed.test:8080/", runtime="sbx")
    assert "budget" in out, out


def test_a_microvm_reaches_only_what_its_list_allows(gw):
    c, s = client(gw), f"egress-{uuid.uuid4()}"
    out, err, stop = run(c, s, "timeout 20 wget -q -O - http://allowed.test:8080/vm", runtime="vm")
    assert stop["exitCode"] == 0 and json.loads(out)["server"] == "allowed", (out, err)
    out, err, stop = run(c, s, "timeout 20 wget -q -O - http://denied.test:8080/", runtime="vm")
    assert stop["exitCode"] != 0 and "403" in err, (out, err)
    out, err, stop = run(c, s, "nslookup denied.test", runtime="vm")
    assert ALLOWED not in out and DENIED not in out and stop["exitCode"] != 0, (out, err)
    out, err, stop = run(c, s, "nslookup allowed.test", runtime="vm")
    assert ALLOWED in out, (out, err)
    # Direct, without the proxy: dropped, on the list or not.
    for ip in (DENIED, ALLOWED):
        out, err, stop = run(c, s, f"timeout 10 wget -q -Y off -O - http://{ip}:8080/", runtime="vm")
        assert stop["exitCode"] != 0 and "server" not in out, (ip, out, err)
    # HTTPS with the credential: busybox wget asks the proxy for the https:// URL itself, and
    # the proxy makes (and verifies) the TLS connection.
    out, err, stop = run(c, s, "timeout 20 wget -q -O - https://allowed.test:8443/vm",
                         runtime="vm")
    assert json.loads(out)["headers"]["authorization"] == f"Bearer {SECRET}", (out, err)
    out, _, _ = run(c, s, "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'", runtime="vm")
    assert SECRET not in out


def test_every_attempt_is_audited_and_counted(gw):
    lines = audit(gw)
    allowed = [l for l in lines if "allow" in l and "allowed.test" in l]
    denied = [l for l in lines if "deny" in l]
    assert allowed and denied, lines
    assert any("dns" in l for l in denied), "refused names are audited"
    for runtime in ("sbx", "vm"):
        assert metric(gw, runtime, "allow") >= 2, gw.metrics()
        assert metric(gw, runtime, "deny") >= 1, gw.metrics()
    assert re.search(r'sessiongate_egress_dns_total{[^}]*verdict="deny"[^}]*} [1-9]', gw.metrics())
    assert re.search(r'sessiongate_egress_bytes_total{[^}]*direction="in"[^}]*} [1-9]', gw.metrics())


def test_check_config_refuses_a_policy_on_a_process_runtime(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[[runtimes]]\nname = "p"\n[runtimes.backend]\nprovider = "process"\n'
                 '[runtimes.egress]\nmode = "none"\n')
    r = subprocess.run([binary(), "check-config", str(f)], capture_output=True, text=True)
    assert r.returncode == 1 and "shares the host's network" in r.stdout + r.stderr, r
