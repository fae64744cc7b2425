//! No Docker engine runs here, so the Dockerfile is checked by reading: every path it copies
//! exists, the binary it builds is the one it runs, and the commands it runs (the entrypoint with
//! its default arguments, and the health check) are the real CLI's.

use std::path::Path;
use std::process::Command;

use crate::common::*;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn dockerfile() -> String {
    std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap()
}

/// The JSON array of an exec-form instruction, e.g. `CMD ["a", "b"]`.
fn exec_form(instruction: &str) -> Vec<String> {
    let text = dockerfile().replace("\\\n", " ");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(instruction))
        .unwrap_or_else(|| panic!("no {instruction}"));
    let json = &line[line.find('[').unwrap()..=line.rfind(']').unwrap()];
    serde_json::from_str(json).unwrap()
}

#[test]
fn every_copied_path_exists_and_the_built_binary_is_the_one_run() {
    let text = dockerfile();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(
                Path::new(ROOT).join(src).exists(),
                "Dockerfile copies missing {src}"
            );
        }
    }
    // A workspace member left out of the build context fails `cargo build --locked`.
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = "))
        .unwrap();
    for member in members.trim_matches(['[', ']']).split(',') {
        let member = member.trim().trim_matches('"');
        assert!(
            text.contains(&format!("COPY {member} {member}")),
            "the build does not copy workspace member {member}"
        );
    }
    assert!(text.contains("--bin sessiongate"));
    assert_eq!(exec_form("ENTRYPOINT"), ["/usr/local/bin/sessiongate"]);
    assert!(text.contains("USER 1000"), "runs as non-root");
    for port in ["8080", "8000", "9000", "9090"] {
        assert!(text.contains(port), "{port} not exposed");
    }
}

#[test]
fn the_default_command_and_the_health_check_are_the_real_cli() {
    // CMD: `--config /etc/sessiongate/sessiongate.toml`, which the image fills from conf/.
    let cmd = exec_form("CMD");
    assert_eq!(cmd[0], "--config");
    assert!(dockerfile().contains(&format!("COPY conf/sessiongate.toml {}", cmd[1])));
    let out = Command::new(bin())
        .args(["check-config", &format!("{ROOT}/conf/sessiongate.toml")])
        .output()
        .unwrap();
    assert!(out.status.success());

    // HEALTHCHECK: the `health` subcommand against the admin listener.
    let check = exec_form("HEALTHCHECK");
    assert_eq!(
        &check[..3],
        ["/usr/local/bin/sessiongate", "health", "--admin"]
    );
    let gw = Gateway::start("");
    let healthy = Command::new(bin())
        .args(["health", "--admin", &gw.admin.to_string()])
        .status()
        .unwrap();
    assert!(healthy.success());
    let nobody = format!("127.0.0.1:{}", free_port());
    let down = Command::new(bin())
        .args(["health", "--admin", &nobody])
        .status()
        .unwrap();
    assert!(!down.success());
}
