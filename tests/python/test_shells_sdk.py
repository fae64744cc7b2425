"""Interactive shells with the bedrock-agentcore SDK's own client (`AgentCoreRuntimeClient.open_shell`)
against the gateway running conf/sigv4.toml: SigV4-signed and presigned connections, typing and
reading, resize, exit codes, detach and re-attach with the output buffered meanwhile, a second
client kicking the first, and another principal refused.

The SDK builds `wss://bedrock-agentcore.{region}.amazonaws.com` and has no endpoint override for
shells that allows plain ws:// on loopback, so the test's client overrides `_build_shell_url` to
point the very same URL at the gateway; signing, framing and reconnects are the SDK's, unmodified."""

import asyncio
import os
import uuid

import pytest
from bedrock_agentcore.runtime.agent_core_runtime_client import AgentCoreRuntimeClient
from bedrock_agentcore.runtime.shell import PresignedAuth
from websockets.exceptions import InvalidStatus

from conftest import ROOT, Gateway

ARN = "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/default"
FIRST = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SECOND = ("AKIDSECONDEXAMPLE", "SecondExampleSecretKey0123456789abcdef")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = Gateway(tmp_path_factory.mktemp("shells"), config_path=ROOT / "conf" / "sigv4.toml")
    yield g
    g.stop()


def sdk(gw, key=FIRST):
    import boto3

    session = boto3.Session(aws_access_key_id=key[0], aws_secret_access_key=key[1], region_name="us-east-1")

    class Client(AgentCoreRuntimeClient):
        def _build_shell_url(self, *a, **k):
            url = super()._build_shell_url(*a, **k)
            return url.replace("wss://bedrock-agentcore.us-east-1.amazonaws.com", f"ws://{gw.http}")

    return Client(region="us-east-1", session=session)


async def read_until(shell, needle: str, timeout=20.0) -> str:
    seen = ""

    async def go():
        nonlocal seen
        async for frame in shell:
            if frame.channel.name == "STDOUT":
                seen += frame.payload.decode(errors="replace")
                if needle in seen:
                    return

    await asyncio.wait_for(go(), timeout)
    return seen


def test_type_read_resize_and_exit(gw):
    async def go(sid):
        async with sdk(gw).open_shell(ARN, session_id=sid, shell_id="main") as sh:
            await sh.send("echo hello-$((6*7))\n")
            assert "hello-42" in await read_until(sh, "hello-42")
            await sh.resize(100, 30)
            await sh.send("stty size\n")
            assert "30 100" in await read_until(sh, "30 100")
            await sh.send("exit 3\n")
            async for _ in sh:
                pass
            assert sh.exit_code == 3

    asyncio.run(go(f"shell-{uuid.uuid4()}"))


def test_detach_reattach_replays_and_a_second_client_kicks_the_first(gw):
    async def go(sid):
        c = sdk(gw)
        async with c.open_shell(ARN, session_id=sid, shell_id="keep") as sh:
            await sh.send("X=kept; sleep 1; echo printed-while-away\n")
        # Detached: the shell runs on and buffers what it prints.
        await asyncio.sleep(2.5)
        async with c.open_shell(ARN, session_id=sid, shell_id="keep", auth=PresignedAuth(expires=60)) as sh:
            assert "printed-while-away" in await read_until(sh, "printed-while-away")
            await sh.send("echo still-$X\n")
            assert "still-kept" in await read_until(sh, "still-kept")
            async with c.open_shell(ARN, session_id=sid, shell_id="keep") as other:
                # The newcomer has the shell; the first connection was closed with 4000.
                async for _ in sh:
                    pass
                assert sh.kicked
                await other.send("echo newcomer\n")
                assert "newcomer" in await read_until(other, "newcomer")

    asyncio.run(go(f"shell-{uuid.uuid4()}"))


def test_another_principal_cannot_attach_and_bad_ids_are_refused(gw):
    async def go(sid):
        async with sdk(gw).open_shell(ARN, session_id=sid, shell_id="mine") as sh:
            await sh.send("echo ok\n")
            await read_until(sh, "ok")
        with pytest.raises(InvalidStatus) as e:
            async with sdk(gw, SECOND).open_shell(ARN, session_id=sid, shell_id="mine"):
                pass
        assert e.value.response.status_code in (403, 404)

    asyncio.run(go(f"shell-{uuid.uuid4()}"))
    import httpx

    r = httpx.get(f"http://{gw.http}/runtimes/default/ws/shells?shellId=-bad",
                  headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    # Unsigned on a SigV4 runtime: refused before anything else.
    assert r.status_code == 403


def test_shells_run_inside_sandboxes_and_microvm_guests(tmp_path):
    """The same SDK client, auth none: a sandbox's shell is in its namespaces (its own pid 1
    and hostname), a microVM's in its guest (the session id the guest was told)."""
    from pathlib import Path

    from conftest import binary

    guest = Path(os.environ.get("SESSIONGATE_GUEST_DIR", Path(binary()).parents[1] / "guest"))
    assert (guest / "vmlinux").exists(), f"no microVM guest in {guest}: run make guest"
    gw = Gateway(tmp_path, f"""
[[runtimes]]
name = "boxed"
[runtimes.backend]
provider = "sandbox"
args = ["agent"]
egress = false

[[runtimes]]
name = "vm"
[runtimes.backend]
provider = "microvm"
kernel = "{guest}/vmlinux"
initrd = "{guest}/initrd.cpio"
ready_timeout_ms = 180000
""")

    async def go(runtime, command, needle):
        sid = f"shell-{runtime}-{uuid.uuid4()}"
        arn = ARN.replace("/default", f"/{runtime}")
        async with sdk(gw).open_shell(arn, session_id=sid, shell_id="s1") as sh:
            await sh.send(command)
            seen = await read_until(sh, needle(sid), timeout=120)
            await sh.send("exit 5\n")
            async for _ in sh:
                pass
            assert sh.exit_code == 5
            return seen

    try:
        assert "box=sandbox" in asyncio.run(go("boxed", "echo box=$(hostname)\n", lambda _: "box=sandbox"))
        seen = asyncio.run(go("vm", "echo vm=$(cat /run/session-id)\n", lambda sid: f"vm={sid}"))
        assert "vm=shell-vm-" in seen
    finally:
        gw.stop()


def test_an_attached_shell_keeps_its_session_busy_and_ends_with_it(tmp_path):
    """A quiet attached shell holds its session in flight (the idle timeout does not end it);
    StopRuntimeSession ends the shell with the session: the client's stream ends."""
    import boto3

    gw = Gateway(tmp_path, "[sessions]\nidle_timeout_secs = 2\nsweep_interval_ms = 200\n")

    async def go(sid):
        async with sdk(gw).open_shell(ARN, session_id=sid, shell_id="busy") as sh:
            await sh.send("echo up\n")
            await read_until(sh, "up")
            await asyncio.sleep(4)  # twice the idle timeout, nothing typed
            assert [s["state"] for s in gw.sessions() if s["id"] == sid] == ["active"]
            await sh.send("echo still-here\n")
            assert "still-here" in await read_until(sh, "still-here")
            c = boto3.client("bedrock-agentcore", region_name="us-east-1", endpoint_url=f"http://{gw.http}",
                             aws_access_key_id="AKID", aws_secret_access_key="x")
            await asyncio.to_thread(c.stop_runtime_session, agentRuntimeArn="default", runtimeSessionId=sid)

            async def drain():
                async for _ in sh:
                    pass

            await asyncio.wait_for(drain(), 15)
        assert not [s for s in gw.sessions() if s["id"] == sid]

    try:
        asyncio.run(go(f"shell-{uuid.uuid4()}"))
    finally:
        gw.stop()
