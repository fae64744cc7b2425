"""Session storage (`[[runtimes.filesystems]] kind = "session_storage"`) with boto3 against the
gateway, SigV4 with two principals: a file written in a session is there again after
StopRuntimeSession, in a new backend, for the same principal and session id only; a new runtime
version starts empty; storage unused past its expiry is deleted. Process and sandbox backends,
warm pools included (their storage exists before the session is known); a sandbox's and a
microVM's is a tmpfs of the quota's size (ENOSPC past it)."""

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from conftest import ROOT, Gateway

FIRST = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SECOND = ("AKIDSECONDEXAMPLE", "SecondExampleSecretKey0123456789abcdef")


def config(provider: str, root, versions=False) -> str:
    if provider == "process":
        backend = 'provider = "process"\nwarm_pool = 1\n'
    else:
        backend = 'provider = "sandbox"\nargs = ["agent"]\negress = false\nwarm_pool = 1\n'
    auth = f"""
[runtimes.auth]
mode = "sigv4"
regions = ["us-east-1"]
credentials_file = "{ROOT / 'conf' / 'credentials.example.toml'}"
"""
    fs = '[[runtimes.filesystems]]\nkind = "session_storage"\nmount_path = "/mnt/data"\nexpiry_days = 1\nquota_mb = 2\n'
    if versions:
        body = f"[[runtimes.versions]]\nversion = 1\n[runtimes.versions.backend]\n{backend}\n" \
               f"[[runtimes.versions]]\nversion = 2\n[runtimes.versions.backend]\n{backend}\n" \
               '[[runtimes.endpoints]]\nname = "v1"\nversion = 1\n'
    else:
        body = f"[runtimes.backend]\n{backend}"
    return f'[sessions]\nstorage_root = "{root}"\n\n[[runtimes]]\nname = "default"\n{auth}\n{body}\n{fs}'


@pytest.fixture
def root():
    """A storage root sandboxes can reach: pytest's own tmp dirs are 0700, and a sandbox's
    bubblewrap runs as `nobody` when the tests run as root."""
    base = Path(tempfile.mkdtemp(prefix="sg-storage-", dir="/tmp"))
    base.chmod(0o711)
    yield base / "storage"
    shutil.rmtree(base, ignore_errors=True)


def client(gw, key=FIRST):
    return boto3.client(
        "bedrock-agentcore", region_name="us-east-1", endpoint_url=f"http://{gw.http}",
        aws_access_key_id=key[0], aws_secret_access_key=key[1],
        config=Config(retries={"max_attempts": 1}, read_timeout=60))


def sh(c, sid, command, qualifier=None):
    kwargs = {"qualifier": qualifier} if qualifier else {}
    r = c.invoke_agent_runtime_command(agentRuntimeArn="default", runtimeSessionId=sid,
                                       body={"command": command}, **kwargs)
    out, code = "", None
    for e in r["stream"]:
        out += e["chunk"].get("contentDelta", {}).get("stdout", "")
        code = e["chunk"].get("contentStop", {}).get("exitCode", code)
    return out, code


def stop(c, sid, qualifier=None):
    kwargs = {"qualifier": qualifier} if qualifier else {}
    c.stop_runtime_session(agentRuntimeArn="default", runtimeSessionId=sid, **kwargs)


@pytest.mark.parametrize("provider", ["process", "sandbox"])
def test_files_outlive_the_backend_for_their_principal_only(tmp_path, root, provider):
    if provider == "sandbox" and not shutil.which("bwrap"):
        pytest.fail("bubblewrap is required (scripts/setup --test installs it)")
    gw = Gateway(tmp_path, config(provider, root))
    try:
        a, b = client(gw), client(gw, SECOND)
        sid = f"store-{uuid.uuid4()}"
        where, _ = sh(a, sid, 'printf %s "$SESSIONGATE_STORAGE"')
        if provider == "sandbox":
            assert where == "/mnt/data"
            # A tmpfs of the quota's size: writing past it fails inside, the gateway unharmed.
            out, code = sh(a, sid, 'head -c 3000000 /dev/zero > /mnt/data/big; echo $?; rm -f /mnt/data/big')
            assert code == 0 and out.strip() != "0", "writing past the quota fails (ENOSPC)"
        _, code = sh(a, sid, 'echo kept > "$SESSIONGATE_STORAGE/notes.txt" && mkdir -p "$SESSIONGATE_STORAGE/d" '
                             '&& echo deep > "$SESSIONGATE_STORAGE/d/x"')
        assert code == 0
        stop(a, sid)
        out, code = sh(a, sid, 'cat "$SESSIONGATE_STORAGE/notes.txt" "$SESSIONGATE_STORAGE/d/x"')
        assert (out, code) == ("kept\ndeep\n", 0)
        backends = [s["backend"] for s in gw.sessions() if s["id"] == sid]
        assert len(backends) == 1
        # Another principal with the very same session id (once it is free): its own, empty
        # storage; and the first principal's files are still there for it afterwards.
        stop(a, sid)
        out, _ = sh(b, sid, 'ls -A "$SESSIONGATE_STORAGE"; echo theirs > "$SESSIONGATE_STORAGE/notes.txt"')
        assert out == ""
        stop(b, sid)
        out, _ = sh(a, sid, 'cat "$SESSIONGATE_STORAGE/notes.txt"')
        assert out == "kept\n"
        stop(a, sid)
        # On disk: each principal's files under its own key, nothing left checked out in slots
        # (process backends; a sandbox's files were copied into it and back).
        slots = root / ".slots"
        assert slots.is_dir() == (provider == "process")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(p.suffix == ".key" for p in slots.glob("*")):
            time.sleep(0.1)
        assert not any(p.suffix == ".key" for p in slots.glob("*"))
        stored = sorted(p.read_text() for p in (root / "default" / "v1").glob("*/notes.txt"))
        assert stored == ["kept\n", "theirs\n"]
    finally:
        gw.stop()


def test_a_new_version_starts_empty_and_unused_storage_expires(tmp_path, root):
    gw = Gateway(tmp_path, config("process", root, versions=True))
    try:
        a = client(gw)
        sid = f"store-{uuid.uuid4()}"
        sh(a, sid, 'echo v1 > "$SESSIONGATE_STORAGE/f"', qualifier="v1")
        stop(a, sid, qualifier="v1")
        out, _ = sh(a, sid, 'ls -A "$SESSIONGATE_STORAGE"')  # DEFAULT: version 2
        assert out == ""
        stop(a, sid)
        (key,) = [p for p in (root / "default" / "v1").iterdir() if p.is_dir()]
        assert (key / "f").read_text() == "v1\n"
        # Unused for longer than expiry_days: deleted by the storage housekeeping (it runs at
        # a gateway's start, then every 30 s).
        old = time.time() - 2 * 86_400
        os.utime(key, (old, old))
        gw.stop()
        gw = Gateway(tmp_path, config("process", root, versions=True))
        a = client(gw)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and key.exists():
            time.sleep(0.1)
        assert not key.exists(), "expired storage is deleted"
        out, _ = sh(a, sid, 'ls -A "$SESSIONGATE_STORAGE"', qualifier="v1")
        assert out == ""
    finally:
        gw.stop()


def test_files_checked_out_by_a_gateway_that_crashed_come_back(tmp_path, root):
    """SIGKILL to the gateway while a session holds its files in a backend's slot: the next
    gateway on the same storage root checks them back in, and the session id finds them."""
    import signal

    cfg = f'[sessions]\nstorage_root = "{root}"\n[[runtimes]]\nname = "default"\n' \
          '[[runtimes.filesystems]]\nkind = "session_storage"\nmount_path = "/mnt/data"\n'
    gw = Gateway(tmp_path, cfg)
    sid = f"store-{uuid.uuid4()}"
    try:
        _, code = sh(client(gw), sid, 'echo survived > "$SESSIONGATE_STORAGE/f"')
        assert code == 0
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(timeout=10)
    finally:
        gw.stop()
    assert any(p.suffix == ".key" for p in (root / ".slots").iterdir()), "left checked out"
    gw = Gateway(tmp_path, cfg)
    try:
        deadline = time.monotonic() + 15
        out = ""
        while time.monotonic() < deadline:
            out, _ = sh(client(gw), sid, 'cat "$SESSIONGATE_STORAGE/f" 2>/dev/null || true')
            if out:
                break
            stop(client(gw), sid)
            time.sleep(0.5)
        assert out == "survived\n"
    finally:
        gw.stop()


def test_microvm_storage_is_copied_into_the_guest_and_back_with_a_hard_quota(tmp_path, root):
    """A microVM's files live in its guest (a tmpfs of the quota's size: ENOSPC past it) and are
    copied back when it stops; the next guest for the session id gets them."""
    from conftest import binary

    guest = Path(os.environ.get("SESSIONGATE_GUEST_DIR", Path(binary()).parents[1] / "guest"))
    assert (guest / "vmlinux").exists(), f"no microVM guest in {guest}: run make guest"
    cfg = f'[sessions]\nstorage_root = "{root}"\n[[runtimes]]\nname = "default"\n' \
          f'[runtimes.backend]\nprovider = "microvm"\nkernel = "{guest}/vmlinux"\n' \
          f'initrd = "{guest}/initrd.cpio"\nready_timeout_ms = 180000\n' \
          '[[runtimes.filesystems]]\nkind = "session_storage"\nmount_path = "/mnt/data"\nquota_mb = 2\n'
    gw = Gateway(tmp_path, cfg)
    try:
        c = client(gw)
        c.meta.config.read_timeout = 240
        sid = f"store-vm-{uuid.uuid4()}"
        out, code = sh(c, sid, "echo in-guest > /mnt/data/f && mkdir /mnt/data/d && echo x > /mnt/data/d/y && cat /run/session-id")
        assert (out.strip(), code) == (sid, 0)
        _, code = sh(c, sid, "head -c 3000000 /dev/zero > /mnt/data/big")
        assert code != 0, "writing past the quota fails (ENOSPC)"
        _, code = sh(c, sid, "rm -f /mnt/data/big")
        first = [s["backend"] for s in gw.sessions() if s["id"] == sid]
        stop(c, sid)
        out, code = sh(c, sid, "cat /mnt/data/f /mnt/data/d/y")
        assert (out, code) == ("in-guest\nx\n", 0)
        assert [s["backend"] for s in gw.sessions() if s["id"] == sid] != first, "a new guest"
        stop(c, sid)
        stored = sorted(p.read_text() for p in root.glob("default/v1/*/f"))
        assert stored == ["in-guest\n"], "copied back under storage_root"
    finally:
        gw.stop()
