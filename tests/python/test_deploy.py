"""deploy/ is checked by reading, as no container engine runs here: every command and flag the
compose file and the Kubernetes manifests pass to sessiongate is its real CLI, every config they
mount passes `sessiongate check-config` (with the files mounted beside it where they would be),
and the HAProxy config passes `haproxy -c`."""

import shutil
import subprocess
from pathlib import Path

import yaml

from conftest import ROOT, binary

DEPLOY = ROOT / "deploy"
SECRET = "0123456789abcdef0123456789abcdef-deploy-test\n"


def sessiongate_commands():
    """Every argument list given to the sessiongate image, with where it comes from."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        if svc["image"].startswith("sessiongate"):
            yield f"compose {name}", svc["command"]
    for doc in manifests():
        if doc["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith("sessiongate"):
                yield f"k8s {doc['metadata']['name']}", c["args"]
            probe = c.get("readinessProbe", {}).get("exec", {}).get("command")
            if probe:
                assert probe[0] == "/usr/local/bin/sessiongate", probe  # the Dockerfile's path
                yield f"k8s {doc['metadata']['name']} probe", probe[1:]


def manifests():
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        yield from (d for d in yaml.safe_load_all(f.read_text()) if d)


def help_text(sub: str | None) -> str:
    args = [binary()] + ([sub] if sub else []) + ["--help"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, f"{args}: {out.stderr}"
    return out.stdout


def test_every_command_and_flag_is_the_real_cli():
    subcommands = {"run", "check-config", "invoke", "reload", "health", "agent", "host"}
    seen = 0
    for where, args in sessiongate_commands():
        sub = args[0] if args and not args[0].startswith("-") else None
        assert sub is None or sub in subcommands, f"{where}: unknown subcommand {sub}"
        text = help_text(sub)
        for flag in (a for a in args if a.startswith("--")):
            assert f"{flag} " in text or f"{flag}\n" in text, f"{where}: `{flag}` is not a flag of `{sub or 'sessiongate'}`"
        seen += 1
    assert seen >= 9, seen


def check_config(config_text: str, files: dict[str, str], tmp_path: Path, name: str):
    d = tmp_path / name
    d.mkdir()
    for path, text in files.items():
        p = d / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        config_text = config_text.replace(f'"/etc/sessiongate/{path}"', f'"{p}"')
    cfg = d / "replica.toml"
    cfg.write_text(config_text)
    out = subprocess.run([binary(), "check-config", str(cfg)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}"
    assert "ok" in out.stdout


def test_every_mounted_config_passes_check_config(tmp_path):
    # compose: replica.toml with cluster.secret beside it (both under /etc/sessiongate).
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["x-replica"]["volumes"]
    assert "./replica.toml:/etc/sessiongate/replica.toml:ro" in mounts
    assert "./cluster.secret:/etc/sessiongate/cluster.secret:ro" in mounts
    check_config((DEPLOY / "replica.toml").read_text(), {"cluster.secret": SECRET}, tmp_path, "compose")
    # k8s: the ConfigMap's replica.toml, the Secret mounted under /etc/sessiongate/secret.
    configmaps = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "ConfigMap"}
    text = configmaps["sessiongate-replica"]["data"]["replica.toml"]
    check_config(text, {"secret/cluster.secret": SECRET}, tmp_path, "k8s")
    # What the manifests mount is what they define.
    deployment = next(d for d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "sessiongate")
    hosts = next(d for d in manifests() if d["kind"] == "DaemonSet")
    for workload in (deployment, hosts):
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == "sessiongate-replica"
        assert volumes["secret"]["secret"]["secretName"] == "sessiongate-cluster"
    # Hosts and replicas share the file; a host's wildcard listen gets its address on the CLI.
    for where, args in sessiongate_commands():
        if args[0] == "host":
            assert "--advertise" in args, where


def test_the_k8s_services_reach_what_the_configs_name():
    services = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "Service"}
    configmaps = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "ConfigMap"}
    text = configmaps["sessiongate-replica"]["data"]["replica.toml"]
    assert "redis://redis:6379/0" in text and services["redis"]["spec"]["ports"][0]["port"] == 6379
    for agent in ("agent-1", "agent-2"):
        ip = services[agent]["spec"]["clusterIP"]
        assert f'http = "{ip}:8080"' in text, agent


def test_the_haproxy_config_is_valid():
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    out = subprocess.run([exe, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stdout + out.stderr
