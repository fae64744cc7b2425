"""Instructions per proxied request, counted by valgrind's callgrind (user space, the whole
process): sessiongate, a bare Pingora proxy (the floor: `gateway/examples/bare_proxy.rs`), nginx
and HAProxy, each alone in front of the same reference agent, one thread or worker each.

Each proxy runs under callgrind; for each request kind it is warmed up, its counters zeroed, then
sent N1 requests on one keep-alive connection (counters dumped), then N2 on another (dumped):
instructions per request = (count(N2) - count(N1)) / (N2 - N1), so what a window costs whatever
its size (a connection, the dump) cancels out.

Run it through `loadtest/insn` (builds, installs valgrind/nginx/HAProxy, uses the venv)."""

import base64
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/sessiongate/target"))
BIN = TARGET / "release/sessiongate"
BARE = TARGET / "release/examples/bare_proxy"
N1 = int(os.environ.get("N1", 200))
N2 = int(os.environ.get("N2", 800))
OUT = Path(os.environ.get("OUT", ROOT / "loadtest/insn-last-run.md"))
# PROFILE=DIR keeps each proxy's N2 window per request kind there, for `callgrind_annotate`.
PROFILE = Path(os.environ["PROFILE"]) if os.environ.get("PROFILE") else None
SESSION = "X-Amzn-Bedrock-AgentCore-Runtime-Session-Id"
SID = "insn-session-0123456789abcdef0123456789"
WARMUP = 20
MB = b'{"pad": "' + b"x" * 999_980 + b'"}'


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(p: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited early ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", p), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {p}")


# --- what the client sends -----------------------------------------------------------------


class Issuer:
    """A local OIDC issuer (discovery + JWKS) for the JWT row, with the tests' RSA key."""

    def __init__(self):
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        pem = (ROOT / "gateway/tests/fixtures/rsa1.pem").read_bytes()
        self.key = serialization.load_pem_private_key(pem, password=None)
        self.padding, self.hashes = padding, hashes
        numbers = self.key.public_key().public_numbers()
        b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
        self.port = port()
        self.url = f"http://127.0.0.1:{self.port}"
        jwks = {"keys": [{"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": b64(numbers.n), "e": b64(numbers.e)}]}
        docs = {
            "/.well-known/openid-configuration": {"issuer": self.url, "jwks_uri": f"{self.url}/jwks"},
            "/jwks": jwks,
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps(docs.get(self.path, {})).encode()
                self.send_response(200 if self.path in docs else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def token(self) -> str:
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
        now = int(time.time())
        head = enc({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"})
        claims = enc({"iss": self.url, "sub": "insn", "aud": "insn", "iat": now, "exp": now + 3600})
        sig = self.key.sign(f"{head}.{claims}".encode(), self.padding.PKCS1v15(), self.hashes.SHA256())
        return f"{head}.{claims}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def sigv4_headers(host: str, path: str, body: bytes, sid: str) -> dict:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="POST", url=f"http://{host}{path}", data=body, headers={SESSION: sid, "Content-Type": "application/json"})
    SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"), "bedrock-agentcore", "us-east-1").add_auth(req)
    return dict(req.headers.items())


KINDS = {
    # kind: (path, body, extra headers or a function of (host, path, body), requests scale)
    "small": ("/invocations", b"{}", {}, 1.0),
    "sse": ("/invocations", b'{"stream": 5, "interval_ms": 0}', {}, 1.0),
    "upload 1 MB": ("/invocations", MB, {}, 0.1),
    "sigv4": ("/runtimes/sigv4/invocations", b"{}", "sigv4", 1.0),
    "jwt": ("/runtimes/jwt/invocations", b"{}", "jwt", 1.0),
}


def drive(p: int, kind: str, n: int, issuer: Issuer) -> None:
    path, body, extra, _ = KINDS[kind]
    conn = http.client.HTTPConnection("127.0.0.1", p, timeout=120)
    token = issuer.token() if extra == "jwt" else None
    # A session belongs to its runtime and principal: one per request kind.
    sid = f"{SID}-{kind.split()[0]}"
    for _ in range(n):
        headers = {SESSION: sid, "Content-Type": "application/json"}
        if extra == "sigv4":
            headers = sigv4_headers(f"127.0.0.1:{p}", path, body, sid)
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{kind}: {r.status} {data[:200]!r}")
    conn.close()


# --- the proxies -----------------------------------------------------------------------------


def sessiongate(work: Path, agent: dict, issuer: Issuer):
    listen = {k: port() for k in ("http", "mcp", "a2a", "admin")}
    endpoint = f'{{ http = "127.0.0.1:{agent["http"]}", mcp = "127.0.0.1:{agent["mcp"]}", a2a = "127.0.0.1:{agent["a2a"]}" }}'
    pool = f'[runtimes.backend]\nprovider = "static"\nsessions_per_endpoint = 1000000\nendpoints = [{endpoint}]\n'
    creds = work / "credentials.toml"
    creds.write_text('[[credentials]]\naccess_key_id = "AKIDEXAMPLE"\nsecret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"\nprincipal = "insn"\n')
    (work / "gateway.toml").write_text(
        "[server]\nthreads = 1\n"
        "[limits]\nrequests_per_second_per_principal = 10000000\nmax_inflight_per_session = 10000\n"
        f'[[runtimes]]\nname = "default"\n{pool}'
        f'[[runtimes]]\nname = "sigv4"\n[runtimes.auth]\nmode = "sigv4"\nregions = ["us-east-1"]\ncredentials_file = "{creds}"\n{pool}'
        f'[[runtimes]]\nname = "jwt"\n[runtimes.auth]\nmode = "jwt"\n'
        f'discovery_url = "{issuer.url}/.well-known/openid-configuration"\nallowed_audiences = ["insn"]\n{pool}'
    )
    args = [str(BIN), "--config", str(work / "gateway.toml")]
    for k, p in listen.items():
        args += [f"--{k}", f"127.0.0.1:{p}"]
    return args, listen["http"], signal.SIGTERM, {"RUST_LOG": "warn"}


def bare(work: Path, agent: dict, issuer: Issuer):
    p = port()
    return [str(BARE), f"127.0.0.1:{p}", f"127.0.0.1:{agent['http']}"], p, signal.SIGINT, {"RUST_LOG": "error"}


def bare_patched(work: Path, agent: dict, issuer: Issuer):
    """The bare proxy awaiting the vendored crate's `serve_http`, as sessiongate's front does."""
    args, p, stop, env = bare(work, agent, issuer)
    return [*args, "--serve-http"], p, stop, env


def nginx(work: Path, agent: dict, issuer: Issuer):
    p = port()
    (work / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  upstream agent {{
    hash $http_x_amzn_bedrock_agentcore_runtime_session_id consistent;
    server 127.0.0.1:{agent['http']};
    keepalive 16;
  }}
  server {{
    listen 127.0.0.1:{p};
    client_max_body_size 100m;
    location / {{
      proxy_pass http://agent;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
""")
    return ["nginx", "-c", str(work / "nginx.conf")], p, signal.SIGQUIT, {}


def haproxy(work: Path, agent: dict, issuer: Issuer):
    p = port()
    (work / "haproxy.cfg").write_text(f"""
global
  nbthread 1
  maxconn 1024
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend gateway
  bind 127.0.0.1:{p}
  default_backend agent
backend agent
  balance hdr({SESSION})
  hash-type consistent
  http-reuse always
  server agent 127.0.0.1:{agent['http']}
""")
    exe = "haproxy" if subprocess.run(["sh", "-c", "command -v haproxy"], capture_output=True).returncode == 0 else "/usr/sbin/haproxy"
    return [exe, "-db", "-f", str(work / "haproxy.cfg")], p, signal.SIGUSR1, {}


PROXIES = {
    "nginx": nginx,
    "HAProxy": haproxy,
    "bare Pingora": bare,
    "bare Pingora + serve_http": bare_patched,
    "sessiongate": sessiongate,
}


class Counted:
    """One proxy under callgrind, counted in windows (`callgrind_control` dumps)."""

    def __init__(self, work: Path, name: str, proxy, agent: dict, issuer: Issuer):
        self.out = work / f"{name.replace(' ', '-')}.callgrind"
        args, self.port, self.stop, env = proxy(work, agent, issuer)
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}", "--dump-instr=no", "--quiet", *args]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(work / "proxies.log", "a"))
        self.dumps = 0
        wait_port(self.port, self.proc)

    def control(self, flag: str) -> None:
        subprocess.run(["callgrind_control", flag, str(self.proc.pid)], check=True, capture_output=True, timeout=120)

    def window(self, kind: str, n: int, issuer: Issuer) -> int:
        """Instructions spent on n requests of `kind` (on a fresh connection)."""
        self.control("-z")
        drive(self.port, kind, n, issuer)
        self.control("-d")
        self.dumps += 1
        dump = Path(f"{self.out}.{self.dumps}")
        for line in dump.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {dump}")

    def keep(self) -> Path:
        """The last dump (a profile of the last window: `callgrind_annotate` reads it)."""
        return Path(f"{self.out}.{self.dumps}")

    def close(self) -> None:
        self.proc.send_signal(self.stop)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    # Arguments name proxies and/or request kinds; each unnamed set means all of it.
    named_proxies = {a for a in sys.argv[1:] if a in PROXIES}
    named_kinds = {a for a in sys.argv[1:] if a in KINDS}
    unknown = set(sys.argv[1:]) - named_proxies - named_kinds
    if unknown:
        sys.exit(f"unknown proxy or request kind: {', '.join(sorted(unknown))} (proxies: {', '.join(PROXIES)}; kinds: {', '.join(KINDS)})")
    work = Path(tempfile.mkdtemp(prefix="insn-"))
    agent = {k: port() for k in ("http", "mcp", "a2a")}
    agent_proc = subprocess.Popen(
        [str(BIN), "agent", "--http", f"127.0.0.1:{agent['http']}", "--mcp", f"127.0.0.1:{agent['mcp']}", "--a2a", f"127.0.0.1:{agent['a2a']}"],
        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    issuer = Issuer()
    results: dict = {}
    try:
        wait_port(agent["http"], agent_proc)
        for name, proxy in PROXIES.items():
            kinds = [k for k, (_, _, extra, _) in KINDS.items() if not extra or name == "sessiongate"]
            if named_proxies and name not in named_proxies:
                continue
            kinds = [k for k in kinds if not named_kinds or k in named_kinds]
            if not kinds:
                continue  # authentication is sessiongate's alone
            counted = Counted(work, name, proxy, agent, issuer)
            try:
                for kind in kinds:
                    scale = KINDS[kind][3]
                    n1, n2 = max(1, int(N1 * scale)), max(2, int(N2 * scale))
                    drive(counted.port, kind, WARMUP, issuer)
                    a = counted.window(kind, n1, issuer)
                    b = counted.window(kind, n2, issuer)
                    results[(kind, name)] = (b - a) / (n2 - n1)
                    if PROFILE:
                        PROFILE.mkdir(parents=True, exist_ok=True)
                        shutil.copy(counted.keep(), PROFILE / f"{name.replace(' ', '-')}-{kind.split()[0]}.callgrind")
                    print(f"{kind:12} {name:26} {results[(kind, name)]:>10,.0f} instructions/request", flush=True)
            finally:
                counted.close()
    finally:
        agent_proc.terminate()
        agent_proc.wait()
    report(results)


def report(results: dict) -> None:
    k = lambda v: f"{v / 1000:,.1f} k" if v else "—"
    lines = [
        f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}; "
        f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}; N1={N1}, N2={N2} (uploads a tenth)",
        "",
        "| request | nginx | HAProxy | bare Pingora | bare Pingora + `serve_http` | sessiongate | sessiongate / nginx | sessiongate / bare Pingora |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        row = {name: results.get((kind, name)) for name in PROXIES}
        sg, ng, bp = row["sessiongate"], row["nginx"], row["bare Pingora"]
        if sg is None:
            continue
        ratio = lambda a, b: f"{a / b:.2f}×" if a and b else "—"
        lines.append(
            f"| {kind} | {k(ng)} | {k(row['HAProxy'])} | {k(bp)} | {k(row['bare Pingora + serve_http'])} "
            f"| {k(sg)} | {ratio(sg, ng)} | {ratio(sg, bp)} |"
        )
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
