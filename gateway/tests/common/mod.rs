//! Helpers for the integration tests: the real `sessiongate` binary on OS-chosen loopback
//! ports, real agents, and curl as the client.

#![allow(dead_code)]

pub mod cluster;
mod faces;
pub mod oidc;

pub use faces::*;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SESSION_HEADER: &str = "X-Amzn-Bedrock-AgentCore-Runtime-Session-Id";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sessiongate")
}

/// A loopback port nobody listens on now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A session id of the valid length, unique per call.
pub fn session_id(tag: &str) -> String {
    format!("{tag}-{}", uuid_like())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:032x}-{:08x}-{}", t, n, std::process::id())
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sessiongate-test-{}", uuid_like()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running gateway. Stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Gateway {
    pub child: Child,
    pub http: SocketAddr,
    pub mcp: SocketAddr,
    pub a2a: SocketAddr,
    pub admin: SocketAddr,
    _dir: TempDir,
}

impl Gateway {
    /// Starts the gateway with `config` (TOML; listener addresses are chosen here) and waits
    /// until its admin `/healthz` answers.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// The gateway's stderr, when started by [`Gateway::start_with`] with logging variables.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("stderr.log")).unwrap_or_default()
    }

    /// Starts it with extra environment (e.g. `RUST_LOG`), stderr kept in [`Gateway::log`].
    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_limited(config, env, None)
    }

    /// Starts it with `RLIMIT_NOFILE` (soft and hard) set to `nofile`.
    pub fn start_with_fd_limit(config: &str, nofile: u64) -> Self {
        Self::start_limited(config, &[], Some(nofile))
    }

    fn start_limited(config: &str, env: &[(&str, &str)], nofile: Option<u64>) -> Self {
        // A port picked free can be taken by another test's process before the gateway binds
        // it; the gateway then exits, and the start is tried again on other ports.
        let mut config_dir = Some(TempDir::new());
        for _ in 0..3 {
            let dir = config_dir.take().unwrap_or_else(TempDir::new);
            match Self::try_start(dir, config, env, nofile) {
                Ok(gw) => return gw,
                Err(dir) => config_dir = Some(dir),
            }
        }
        panic!("the gateway did not become healthy");
    }

    fn try_start(
        dir: TempDir,
        config: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Result<Self, TempDir> {
        // A config file must declare its runtimes; the tests that only tune limits or timers
        // run the embedded default's one runtime (every key at its default).
        let config = if config.contains("[[runtimes]]") {
            config.to_owned()
        } else {
            format!("{config}\n[[runtimes]]\n")
        };
        let path = dir.write("sessiongate.toml", &config);
        let addr = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (http, mcp, a2a, admin) = (addr(), addr(), addr(), addr());
        let mut command = Command::new(bin());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe; `lim` is a plain value moved in.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command
            .arg("--config")
            .arg(&path)
            .args(["--http", &http.to_string(), "--mcp", &mcp.to_string()])
            .args(["--a2a", &a2a.to_string(), "--admin", &admin.to_string()])
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stderr(if env.is_empty() {
                Stdio::inherit()
            } else {
                Stdio::from(std::fs::File::create(dir.0.join("stderr.log")).unwrap())
            })
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut gw = Gateway {
            child,
            http,
            mcp,
            a2a,
            admin,
            _dir: dir,
        };
        if gw.wait_healthy() {
            return Ok(gw);
        }
        let _ = gw.child.kill();
        let _ = gw.child.wait();
        let dir = std::mem::replace(&mut gw._dir, TempDir(PathBuf::new()));
        Err(dir)
    }

    /// True once this gateway's own `/healthz` answers; false if it exited or took too long.
    fn wait_healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let r = curl(&[&format!("http://{}/healthz", self.admin)]);
            // Another process on a reused port would not answer with the gateway's fields, and
            // every face must be this gateway's too: a listener still waiting for its address
            // refuses, another process's answers without the gateway's error type.
            if r.status == 200
                && r.body_text().contains("\"draining\"")
                && [self.http, self.mcp, self.a2a].iter().all(|face| {
                    let probe = format!("http://{face}/sessiongate-listener-probe");
                    curl(&["-m", "2", &probe])
                        .header("x-amzn-ErrorType")
                        .is_some()
                })
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The arguments this gateway was started with (to start another on the same sockets).
    pub fn args(&self) -> Vec<String> {
        vec![
            "--config".into(),
            self._dir
                .0
                .join("sessiongate.toml")
                .to_string_lossy()
                .into_owned(),
            "--http".into(),
            self.http.to_string(),
            "--mcp".into(),
            self.mcp.to_string(),
            "--a2a".into(),
            self.a2a.to_string(),
            "--admin".into(),
            self.admin.to_string(),
        ]
    }

    pub fn dir(&self) -> &std::path::Path {
        &self._dir.0
    }

    /// Replaces the config file the way editors do: write a new file, rename it over the old.
    pub fn rewrite_config(&self, text: &str) {
        let tmp = self._dir.write("sessiongate.toml.new", text);
        std::fs::rename(tmp, self._dir.0.join("sessiongate.toml")).unwrap();
    }

    /// Waits until the gateway has counted `n` config reloads with `result` (ok / error).
    pub fn wait_reloads(&self, result: &str, n: usize) {
        let want = format!("sessiongate_config_reloads_total{{result=\"{result}\"}} {n}");
        assert!(
            eventually(Duration::from_secs(10), || self.metrics().contains(&want)),
            "no {want}:\n{}",
            self.metrics()
        );
    }

    pub fn url(&self, addr: SocketAddr, path: &str) -> String {
        format!("http://{addr}{path}")
    }

    /// `POST /invocations` with `payload`, in session `sid` (none: let the gateway mint one).
    pub fn invoke(&self, sid: Option<&str>, payload: &str) -> Response {
        self.invoke_with(sid, payload, &[])
    }

    /// The same, with extra request headers (`Name: value`).
    pub fn invoke_with(&self, sid: Option<&str>, payload: &str, headers: &[String]) -> Response {
        self.post("/invocations", sid, payload, headers)
    }

    /// `POST path` on the HTTP listener, in session `sid`, with extra headers.
    pub fn post(
        &self,
        path: &str,
        sid: Option<&str>,
        payload: &str,
        headers: &[String],
    ) -> Response {
        let url = self.url(self.http, path);
        let session = sid.map(|s| format!("{SESSION_HEADER}: {s}"));
        let mut args = vec![
            "-X",
            "POST",
            &url,
            "-H",
            "Content-Type: application/json",
            "-d",
            payload,
        ];
        for h in session.iter().chain(headers) {
            args.extend(["-H", h.as_str()]);
        }
        curl(&args)
    }

    /// The admin API's view of live sessions.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let r = curl(&[&format!("http://{}/sessions", self.admin)]);
        assert_eq!(r.status, 200);
        r.json()["sessions"].as_array().unwrap().clone()
    }

    /// The pid of the process backing session `sid`, if it is live.
    pub fn backend_pid(&self, sid: &str) -> Option<u32> {
        self.sessions()
            .iter()
            .find(|s| s["id"] == sid)
            .and_then(|s| {
                s["backend"]
                    .as_str()?
                    .strip_prefix("process ")?
                    .parse()
                    .ok()
            })
    }

    pub fn metrics(&self) -> String {
        curl(&[&format!("http://{}/metrics", self.admin)]).body_text()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits (up to 20 s) for the gateway to exit.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the gateway did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process's live direct children (a gateway's or host's backends: warm or in use), whichever
/// thread forked them; empty once the process is gone.
pub fn children(pid: u32) -> std::collections::HashSet<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|&p| alive(p))
        .collect()
}

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits up to `timeout` for `cond`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP response as curl saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            // A panic here (not in a closure) is reported at the caller's line.
            Err(e) => panic!(
                "not JSON ({e}): status {}, headers {:?}, body {:?}",
                self.status,
                self.headers,
                String::from_utf8_lossy(&self.body)
            ),
        }
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs curl with `args` (plus `-s -i`) and parses the final response.
pub fn curl(args: &[&str]) -> Response {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap();
    parse_curl(&out)
}

/// Like [`curl`], with `stdin` piped in (for `--data-binary @-` / `-T -`).
pub fn curl_with_stdin(
    args: &[&str],
    feed: impl FnOnce(&mut std::process::ChildStdin) + Send + 'static,
) -> Response {
    let mut child = Command::new("curl")
        .args(["-s", "-i", "--max-time", "120"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || feed(&mut stdin));
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    parse_curl(&out)
}

fn parse_curl(out: &Output) -> Response {
    let mut rest: &[u8] = &out.stdout;
    loop {
        let Some(end) = find(rest, b"\r\n\r\n") else {
            return Response {
                status: 0,
                headers: vec![],
                body: rest.to_vec(),
            };
        };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let body = &rest[end + 4..];
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) && status != 101 && body.starts_with(b"HTTP/") {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        return Response {
            status,
            headers,
            body: body.to_vec(),
        };
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Starts `sessiongate agent` on fresh loopback ports (a "deployed runtime" for static pools)
/// and waits until its `/ping` answers.
pub struct Agent {
    pub child: Child,
    pub http: SocketAddr,
    pub mcp: SocketAddr,
    pub a2a: SocketAddr,
}

impl Agent {
    pub fn start() -> Self {
        // As for the gateway: a port taken between picking and binding means another try.
        for _ in 0..3 {
            let addr = || SocketAddr::from(([127, 0, 0, 1], free_port()));
            let (http, mcp, a2a) = (addr(), addr(), addr());
            let child = Command::new(bin())
                .args([
                    "agent",
                    "--http",
                    &http.to_string(),
                    "--mcp",
                    &mcp.to_string(),
                ])
                .args(["--a2a", &a2a.to_string()])
                .spawn()
                .unwrap();
            let mut agent = Agent {
                child,
                http,
                mcp,
                a2a,
            };
            let up = eventually(Duration::from_secs(10), || {
                matches!(agent.child.try_wait(), Ok(None))
                    && curl(&[&format!("http://{http}/ping")])
                        .body_text()
                        .contains("time_of_last_update")
            });
            if up {
                return agent;
            }
        }
        panic!("agent did not start");
    }

    pub fn toml_endpoint(&self) -> String {
        format!(
            r#"{{ http = "{}", mcp = "{}", a2a = "{}" }}"#,
            self.http, self.mcp, self.a2a
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
