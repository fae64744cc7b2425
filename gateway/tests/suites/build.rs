//! The build itself: Pingora is pinned, and `pingora-proxy` and `pingora-core` are the vendored
//! copies with our fixes
//! (a version bump would otherwise leave `[patch.crates-io]` unused and drop them silently).

use std::path::Path;
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[test]
fn pingora_is_pinned_and_its_patched_crates_come_from_vendor() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // This platform's dependencies only: the others' sources may never have been downloaded.
    let rustc = Command::new("rustc").arg("-vV").output().unwrap();
    let host = String::from_utf8(rustc.stdout).unwrap();
    let host = host
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap()
        .to_owned();
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host, "--manifest-path"])
        .arg(Path::new(ROOT).join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let named = |name: &str| -> Vec<&serde_json::Value> {
        packages.iter().filter(|p| p["name"] == name).collect()
    };
    for crate_name in ["pingora-proxy", "pingora-core"] {
        let [package] = named(crate_name)[..] else {
            panic!("expected one {crate_name} in the build");
        };
        let vendored =
            std::fs::canonicalize(Path::new(ROOT).join("vendor").join(crate_name)).unwrap();
        let manifest = Path::new(package["manifest_path"].as_str().unwrap());
        assert!(
            manifest.starts_with(&vendored),
            "{crate_name} comes from {}, not vendor/",
            manifest.display()
        );
    }
    for name in ["pingora", "pingora-proxy", "pingora-core"] {
        let versions: Vec<&str> = named(name)
            .iter()
            .map(|p| p["version"].as_str().unwrap())
            .collect();
        assert_eq!(versions, ["0.9.1"], "{name}");
    }
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(r#"pingora = { version = "=0.9.1""#),
        "pingora must stay pinned with = in the workspace Cargo.toml"
    );
}
