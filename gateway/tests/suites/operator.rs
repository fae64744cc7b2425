//! What a careless operator can do to a running gateway, and what it no longer does: reload an
//! empty, cut-short or half-written config file, silently drop authentication, or leave the
//! admin API open to every process on the host.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use crate::common::oidc::{Issuer, SigningKey};
use crate::common::*;

const JWT_RUNTIME: &str = r#"
[[runtimes]]
name = "default"
[runtimes.auth]
mode = "jwt"
discovery_url = "DISCOVERY"
allowed_audiences = ["sessiongate-test"]
"#;

fn jwt_config(issuer: &Issuer) -> String {
    JWT_RUNTIME.replace("DISCOVERY", &issuer.discovery_url())
}

#[test]
fn an_empty_or_cut_short_config_file_is_refused_and_the_running_config_stays() {
    let issuer = Issuer::start(&[&SigningKey::rsa1()]);
    let gw = Gateway::start(&jwt_config(&issuer));
    assert_eq!(gw.invoke(None, "{}").status, 401);

    // `: > file` — truncated in place, as a careless `>` redirect or a full disk leaves it.
    std::fs::File::create(gw.dir().join("sessiongate.toml")).unwrap();
    gw.wait_reloads("error", 1);
    // A file cut short after its first table.
    gw.rewrite_config("[limits]\nmax_active_sessions = 5\n");
    gw.wait_reloads("error", 2);
    assert!(
        gw.metrics()
            .contains("sessiongate_config_reloads_total{result=\"error\"} 2")
    );
    assert!(!gw.metrics().contains("result=\"ok\""));
    // Still authenticated: the anonymous request is refused as before.
    assert_eq!(gw.invoke(None, "{}").status, 401);

    // `check-config` says why.
    let out = Command::new(bin())
        .args(["check-config"])
        .arg(gw.dir().join("sessiongate.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no runtime is declared"));
}

#[test]
fn a_slow_in_place_writer_is_waited_for_and_its_file_read_whole() {
    let gw = Gateway::start("[limits]\nmax_active_sessions = 100\n");
    let sid = session_id("stays");
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    // Written in place, a few bytes every 40 ms for half a second: past the 200 ms debounce,
    // and no two looks 100 ms apart see the same file until the last piece is in. Until then
    // the file declares no runtime.
    let text = "[limits]\nmax_active_sessions = 7\n[sessions]\nidle_timeout_secs = 600\n\n";
    let mut f = std::fs::File::create(gw.dir().join("sessiongate.toml")).unwrap();
    for piece in text.as_bytes().chunks(text.len() / 11 + 1) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    f.write_all(b"[[runtimes]]\n").unwrap();
    drop(f);
    gw.wait_reloads("ok", 1);
    std::thread::sleep(Duration::from_millis(500));
    let metrics = gw.metrics();
    assert!(
        !metrics.contains("result=\"error\""),
        "a half-written file was read:\n{metrics}"
    );
    // The session of the old config lives on.
    assert!(gw.sessions().iter().any(|s| s["id"] == sid.as_str()));
}

#[test]
fn a_reload_that_drops_authentication_needs_the_operators_explicit_word() {
    let issuer = Issuer::start(&[&SigningKey::rsa1()]);
    let gw = Gateway::start(&jwt_config(&issuer));
    gw.rewrite_config("[[runtimes]]\nname = \"default\"\n");
    gw.wait_reloads("auth_downgrade", 1);
    assert_eq!(gw.invoke(None, "{}").status, 401, "auth was dropped");

    // `sessiongate reload` without the flag is refused the same way, and says how to proceed.
    let admin = gw.admin.to_string();
    let out = Command::new(bin())
        .args(["reload", "--admin", &admin])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-auth-downgrade"), "{err}");
    assert!(err.contains("from auth `jwt` to `none`"), "{err}");
    assert_eq!(gw.invoke(None, "{}").status, 401);

    let out = Command::new(bin())
        .args(["reload", "--admin", &admin, "--allow-auth-downgrade"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(gw.invoke(None, "{}").status, 200);
    gw.wait_reloads("ok", 1);
}

#[test]
fn the_admin_api_wants_its_token_when_one_is_configured() {
    let dir = TempDir::new();
    let token = "s3cret-admin-token-0123456789";
    let token_file = dir.write("admin-token", &format!("{token}\n"));
    let gw = Gateway::start(&format!(
        "[admin]\ntoken_file = \"{}\"\n",
        token_file.display()
    ));
    let url = |p: &str| format!("http://{}{p}", gw.admin);
    assert_eq!(curl(&[&url("/healthz")]).status, 200, "health stays open");
    for path in ["/sessions", "/metrics"] {
        let r = curl(&[&url(path)]);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = curl(&[
            &url(path),
            "-H",
            "Authorization: Bearer wrong-token-0123456789",
        ]);
        assert_eq!(r.status, 401, "{path}");
        let auth = format!("Authorization: Bearer {token}");
        assert_eq!(curl(&[&url(path), "-H", &auth]).status, 200, "{path}");
    }
    let r = curl(&[
        "-X",
        "DELETE",
        &url("/sessions/anything-at-all-here-0123456789"),
    ]);
    assert_eq!(r.status, 401);
    let r = curl(&["-X", "POST", &url("/config/reload")]);
    assert_eq!(r.status, 401);

    // The CLI takes the token from the same file.
    let admin = gw.admin.to_string();
    let out = Command::new(bin())
        .args(["reload", "--admin", &admin])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(bin())
        .args(["reload", "--admin", &admin, "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_short_admin_token_is_refused_at_start() {
    let dir = TempDir::new();
    let token_file = dir.write("admin-token", "short\n");
    let config = dir.write(
        "sessiongate.toml",
        &format!(
            "[admin]\ntoken_file = \"{}\"\n[[runtimes]]\n",
            token_file.display()
        ),
    );
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.token_file"));
}
