"""Fixtures for the Python tests: the real sessiongate binary on OS-chosen loopback ports."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SESSION_HEADER = "X-Amzn-Bedrock-AgentCore-Runtime-Session-Id"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> str:
    if os.environ.get("SESSIONGATE_BIN"):
        return os.environ["SESSIONGATE_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "release" / "sessiongate")


def http_json(url: str, method: str = "GET"):
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read() or b"null")


class Gateway:
    def __init__(self, workdir: Path, config: str = "", config_path: Path | None = None,
                 prefix: list | None = None, env: dict | None = None, stderr=None):
        path = config_path
        if path is None:
            path = workdir / "sessiongate.toml"
            # A config file must name its runtimes (an empty one is refused): tests that only
            # set limits get the default runtime, as running with no file would.
            if "[[runtimes]]" not in config:
                config += "\n[[runtimes]]\n"
            path.write_text(config)
        # A port picked free can be taken by another process before the gateway binds it; the
        # gateway then exits and the start is tried again on other ports.
        for _ in range(3):
            self.http, self.mcp, self.a2a, self.admin = (f"127.0.0.1:{free_port()}" for _ in range(4))
            self.proc = subprocess.Popen(
                [*(prefix or []), binary(), "--config", str(path), "--http", self.http,
                 "--mcp", self.mcp, "--a2a", self.a2a, "--admin", self.admin],
                env={**os.environ, "RUST_LOG": "warn", **(env or {})},
                stdin=subprocess.DEVNULL,
                stderr=stderr,
            )
            if self._wait_healthy():
                return
            self.stop()
        raise RuntimeError("the gateway did not become healthy")

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, body = http_json(f"http://{self.admin}/healthz")
                if status == 200 and isinstance(body, dict) and "draining" in body:
                    return True
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return False

    def sessions(self) -> list:
        return http_json(f"http://{self.admin}/sessions")[1]["sessions"]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path)
    yield gw
    gw.stop()
