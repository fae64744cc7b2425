//! The cluster's real parts for the tests: a Debian `redis-server` and HAProxy on loopback
//! ports, and replicas (the gateway binary with a Redis directory) in front of static agents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

/// A `redis-server` without persistence on a free loopback port; killed (by its PID) on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// `requirepass`, if any.
    password: Option<String>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// One that wants `password` (Redis AUTH).
    pub fn start_with(password: Option<&str>) -> Self {
        for _ in 0..3 {
            let mut redis = Self {
                child: None,
                port: free_port(),
                password: password.map(str::to_owned),
            };
            if let Some(child) = redis.spawn() {
                redis.child = Some(child);
                return redis;
            }
        }
        panic!("redis-server did not start");
    }

    fn spawn(&self) -> Option<Child> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
        if let Some(p) = &self.password {
            command.args(["--requirepass", p]);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; scripts/setup --test installs it)");
        let up = eventually(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(None)) && self.cli(&["PING"]) == "PONG"
        });
        if up {
            Some(child)
        } else {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Runs one command with `redis-cli`; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            command.args(["--no-auth-warning", "-a", p]);
        }
        command
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    /// Sessions taken on each static endpoint, summed.
    pub fn slots_taken(&self) -> i64 {
        self.cli(&["HVALS", "{sessiongate}:slots"])
            .lines()
            .filter_map(|l| l.trim().parse::<i64>().ok())
            .sum()
    }

    /// Kills it (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty (a restart that lost its data).
    pub fn restart_empty(&mut self) {
        self.kill();
        self.child = Some(self.spawn().expect("redis-server did not restart"));
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A secret file every replica shares.
pub fn cluster_secret(dir: &TempDir) -> PathBuf {
    dir.write(
        "cluster.secret",
        "0123456789abcdef0123456789abcdef-test-only\n",
    )
}

/// A replica's config: the Redis directory, `agents` as a static pool, and `extra` TOML
/// (more `[cluster]` keys first, then tables).
pub fn replica_config(redis: &Redis, secret: &Path, agents: &[Agent], extra: &str) -> String {
    let endpoints: Vec<String> = agents.iter().map(Agent::toml_endpoint).collect();
    format!(
        "[cluster]\ndirectory = \"redis\"\nredis_url = \"{}\"\nsecret_file = \"{}\"\n{extra}\n\
         [[runtimes]]\nname = \"agent\"\n[runtimes.backend]\nprovider = \"static\"\n\
         sessions_per_endpoint = 50\nendpoints = [{}]\n",
        redis.url(),
        secret.display(),
        endpoints.join(", ")
    )
}

/// HAProxy in round-robin over replicas' HTTP faces (health-checked on their admin
/// `/healthz`), retrying a request that found its replica dead; killed by PID on drop.
pub struct Haproxy {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Haproxy {
    pub fn round_robin(replicas: &[&Gateway]) -> Self {
        let dir = TempDir::new();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let servers: String = replicas
            .iter()
            .enumerate()
            .map(|(i, g)| {
                format!(
                    "  server r{i} {} check port {} inter 200ms fall 1 rise 2\n",
                    g.http,
                    g.admin.port()
                )
            })
            .collect();
        let config = format!(
            "global\n  maxconn 512\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  \
             retries 3\n  option redispatch 1\n  retry-on conn-failure empty-response\n  \
             option http-buffer-request\n\
             frontend front\n  bind {addr}\n  default_backend replicas\n\
             backend replicas\n  balance roundrobin\n  option httpchk GET /healthz\n{servers}"
        );
        let path = dir.write("haproxy.cfg", &config);
        let exe = if Path::new("/usr/sbin/haproxy").exists() {
            "/usr/sbin/haproxy"
        } else {
            "haproxy"
        };
        let child = Command::new(exe)
            .args(["-db", "-q", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .expect("haproxy (Debian package haproxy; scripts/setup --test installs it)");
        let hp = Self {
            child,
            addr,
            _dir: dir,
        };
        let url = format!("http://{addr}/ping");
        assert!(
            eventually(Duration::from_secs(10), || curl(&["-m", "2", &url]).status
                != 0),
            "haproxy did not start"
        );
        hp
    }

    /// `POST /invocations` through HAProxy in session `sid`.
    pub fn invoke(&self, sid: &str) -> Response {
        let url = format!("http://{}/invocations", self.addr);
        let header = format!("{SESSION_HEADER}: {sid}");
        curl(&["-m", "10", "-X", "POST", &url, "-H", &header, "-d", "{}"])
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent instance that answered (each agent process has its own).
pub fn instance(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.body_text());
    r.json()["instance"].as_str().unwrap_or_default().to_owned()
}

/// `sessiongate host` on a free loopback port; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Host {
    pub child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Host {
    pub fn start(config: &str) -> Self {
        for _ in 0..3 {
            let dir = TempDir::new();
            let path = dir.write("host.toml", config);
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut child = Command::new(bin())
                .args(["host", "--config"])
                .arg(&path)
                .args(["--listen", &addr.to_string()])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            let url = format!("http://{addr}/");
            let up = eventually(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(None))
                    && curl(&["-m", "2", &url])
                        .body_text()
                        .contains("not a relayed request")
            });
            if up {
                return Self {
                    child,
                    addr,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the host did not start");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its backend processes.
    pub fn children(&self) -> std::collections::HashSet<u32> {
        children(self.pid())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            if !eventually(Duration::from_secs(10), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            }) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A config every host and replica of a test shares: the Redis directory and the embedded
/// default's runtime (a `process` backend running `sessiongate agent`), with `extra` TOML.
pub fn host_config(redis: &Redis, secret: &Path, extra: &str) -> String {
    format!(
        "[cluster]\ndirectory = \"redis\"\nredis_url = \"{}\"\nsecret_file = \"{}\"\n{extra}\n\
         [[runtimes]]\nname = \"default\"\n",
        redis.url(),
        secret.display(),
    )
}
