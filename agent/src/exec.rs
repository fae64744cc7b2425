//! Commands inside a session (AgentCore's `InvokeAgentRuntimeCommand`): run `/bin/sh -c` in the
//! session's isolation and stream what it prints as AWS event-stream `chunk` events —
//! `contentStart`, `contentDelta {stdout|stderr}`, `contentStop {exitCode, status}` — the
//! encoding boto3's `invoke_agent_runtime_command` decodes.
//!
//! The same runner serves every provider: the gateway calls [`run`] itself for `process`
//! backends (no isolation to enter), `sessiongate sandbox-init` serves it on the sandbox's
//! `exec.sock`, and a microVM guest's `sessiongate-agent exec-server` on a forwarded port. On
//! those sockets the protocol is one JSON line in ([`CommandRequest`]), the event stream out,
//! then close; the client closing its end first kills the command.
//!
//! The command gets its own process group: a timeout, the client going away, or the shell
//! exiting kills the whole tree (`killpg`), so nothing it started outlives it. Output is read
//! 16 KiB at a time and each event is written before the next read: a slow reader holds the
//! command back through its pipes, nothing is buffered without bound.

use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The model's bounds (botocore `InvokeAgentRuntimeCommandRequestBody`, AgentCore's docs).
pub const MAX_COMMAND_CHARS: usize = 65_536;
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
pub const MAX_TIMEOUT_SECS: u64 = 3_600;
/// The content type of the answer.
pub const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
/// The largest request line an exec socket reads (the command, JSON-escaped, and the timeout).
pub const MAX_REQUEST_LINE: u64 = 8 * MAX_COMMAND_CHARS as u64;

const READ_CHUNK: usize = 16 * 1024;
/// The exit code reported for a command killed by its timeout (as `timeout(1)` does).
pub const TIMED_OUT_EXIT_CODE: i32 = 124;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

impl CommandRequest {
    /// Parses and checks a request body; the error is the client's `ValidationException`.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let req: Self = serde_json::from_slice(body)
            .map_err(|e| format!("Invalid command request body: {e}"))?;
        let chars = req.command.chars().count();
        if !(1..=MAX_COMMAND_CHARS).contains(&chars) {
            return Err(format!(
                "command must be 1 to {MAX_COMMAND_CHARS} characters long (got {chars})"
            ));
        }
        if let Some(t) = req.timeout
            && !(1..=MAX_TIMEOUT_SECS).contains(&t)
        {
            return Err(format!(
                "timeout must be 1 to {MAX_TIMEOUT_SECS} seconds (got {t})"
            ));
        }
        Ok(req)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS))
    }
}

/// One `chunk` event of the answer.
fn chunk(payload: serde_json::Value) -> Bytes {
    frame(
        vec![
            header(":message-type", "event"),
            header(":event-type", "chunk"),
            header(":content-type", "application/json"),
        ],
        payload,
    )
}

/// A modelled exception event (`internalServerException`, `runtimeClientError`, …).
pub fn exception(kind: &'static str, message: &str) -> Bytes {
    frame(
        vec![
            header(":message-type", "exception"),
            header(":exception-type", kind),
            header(":content-type", "application/json"),
        ],
        serde_json::json!({ "message": message }),
    )
}

fn header(name: &'static str, value: &'static str) -> Header {
    Header::new(name, HeaderValue::String(value.into()))
}

fn frame(headers: Vec<Header>, payload: serde_json::Value) -> Bytes {
    let message = Message::new_from_parts(headers, payload.to_string());
    let mut out = Vec::with_capacity(128);
    // Writing to a Vec fails only for a message over the format's 16 MB: ours are ≤ 16 KiB of
    // output, escaped.
    if write_message_to(&message, &mut out).is_err() {
        out.clear();
    }
    Bytes::from(out)
}

/// Runs `req` and writes its event stream to `out`. Returns when the command ended and its
/// `contentStop` was written, or early (the command killed) when `cancelled` completes or
/// `out` fails.
pub async fn run<W: AsyncWrite + Unpin>(
    req: &CommandRequest,
    env: &[(String, String)],
    cwd: Option<&Path>,
    out: &mut W,
    cancelled: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&req.command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let message = format!("cannot start the command: {e}");
            out.write_all(&exception("internalServerException", &message))
                .await?;
            return out.flush().await;
        }
    };
    let group = Group(child.id());
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("the command's pipes are missing"));
    };
    out.write_all(&chunk(serde_json::json!({ "contentStart": {} })))
        .await?;
    out.flush().await?;

    let (mut a, mut b) = (Output::new(stdout, "stdout"), Output::new(stderr, "stderr"));
    let deadline = tokio::time::sleep(req.timeout());
    tokio::pin!(deadline, cancelled);
    let mut exited: Option<ExitStatus> = None;
    let mut timed_out = false;
    while a.open || b.open {
        tokio::select! {
            got = a.read(), if a.open => a.deliver(got, out).await?,
            got = b.read(), if b.open => b.deliver(got, out).await?,
            status = child.wait(), if exited.is_none() => {
                exited = Some(status?);
                // The shell is done: what it left running in the background goes with it
                // (its pipes would otherwise hold the answer open until the timeout).
                group.kill();
            }
            () = &mut deadline, if !timed_out => {
                timed_out = true;
                group.kill();
            }
            () = &mut cancelled => return Ok(()),
        }
    }
    let status = match exited {
        Some(s) => s,
        None => child.wait().await?,
    };
    let (exit_code, status) = if timed_out {
        (TIMED_OUT_EXIT_CODE, "TIMED_OUT")
    } else {
        (exit_code(status), "COMPLETED")
    };
    out.write_all(&chunk(serde_json::json!({
        "contentStop": { "exitCode": exit_code, "status": status }
    })))
    .await?;
    out.flush().await
}

/// The shell's exit code, or 128 + the signal that killed it (as shells report it).
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The command's process group, killed when this goes (every way out of [`run`]).
struct Group(Option<u32>);

impl Group {
    fn kill(&self) {
        if let Some(pid) = self.0.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: killpg only sends a signal; the group is the command's own (process_group(0)).
            unsafe { libc::killpg(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One of the command's output pipes, decoded as UTF-8 across reads.
struct Output<R> {
    pipe: R,
    name: &'static str,
    open: bool,
    buf: Vec<u8>,
    /// The start of a character split by the last read (at most 3 bytes).
    partial: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Output<R> {
    fn new(pipe: R, name: &'static str) -> Self {
        Self {
            pipe,
            name,
            open: true,
            buf: vec![0; READ_CHUNK],
            partial: Vec::new(),
        }
    }

    async fn read(&mut self) -> io::Result<usize> {
        self.pipe.read(&mut self.buf).await
    }

    async fn deliver<W: AsyncWrite + Unpin>(
        &mut self,
        got: io::Result<usize>,
        out: &mut W,
    ) -> io::Result<()> {
        let n = got.unwrap_or(0);
        let mut bytes = std::mem::take(&mut self.partial);
        bytes.extend_from_slice(&self.buf[..n]);
        if n == 0 {
            self.open = false;
        } else {
            self.partial = split_incomplete(&mut bytes);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&bytes);
        let event = chunk(serde_json::json!({ "contentDelta": { self.name: text } }));
        out.write_all(&event).await?;
        out.flush().await
    }
}

/// Takes a character cut off at the end of `bytes` (to be completed by the next read).
fn split_incomplete(bytes: &mut Vec<u8>) -> Vec<u8> {
    let tail = bytes.len().saturating_sub(3);
    match std::str::from_utf8(&bytes[tail..]) {
        Ok(_) => Vec::new(),
        Err(e) if e.error_len().is_none() => bytes.split_off(tail + e.valid_up_to()),
        Err(_) => Vec::new(),
    }
}

/// What a connection to an exec socket asks for (its first line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExecLine {
    /// Attach to (or start) the interactive shell with this id (`crate::shell`).
    Shell {
        shell: String,
    },
    /// Session storage (`crate::files`): a tar stream in; onto a tmpfs of `size_mb` this server
    /// mounts (a guest), or without one into what the isolation mounted (a sandbox).
    Unpack {
        unpack: PathBuf,
        #[serde(default)]
        size_mb: Option<u64>,
    },
    /// Session storage in a guest: its files out as a tar stream.
    Pack {
        pack: PathBuf,
    },
    /// A session endpoint: a TCP connection to this port on the isolation's own loopback,
    /// spliced to this one ([`splice_to_port`]).
    Connect {
        connect: u16,
    },
    Command(CommandRequest),
}

/// Serves commands and shells on a listening socket: one per connection (see the module docs).
pub async fn serve<L, S>(
    mut accept: impl FnMut() -> L,
    env: Vec<(String, String)>,
) -> io::Result<()>
where
    L: Future<Output = io::Result<S>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let env = std::sync::Arc::new(env);
    let shells = crate::shell::Shells::new();
    loop {
        let conn = accept().await?;
        let env = std::sync::Arc::clone(&env);
        let shells = std::sync::Arc::clone(&shells);
        tokio::spawn(async move {
            if let Err(e) = serve_connection(conn, &env, &shells, true).await {
                eprintln!("exec: {e}");
            }
        });
    }
}

/// Serves one connection: a command (its event stream, then close) or a shell (its frames until
/// the client detaches); with `files`, also session storage's copies in and out (only where the
/// server runs inside the isolation: a guest, a sandbox).
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    conn: S,
    env: &[(String, String)],
    shells: &std::sync::Arc<crate::shell::Shells>,
    files: bool,
) -> io::Result<()> {
    let mut conn = BufReader::new(conn);
    let mut line = Vec::new();
    (&mut conn)
        .take(MAX_REQUEST_LINE)
        .read_until(b'\n', &mut line)
        .await?;
    let shell = match serde_json::from_slice::<ExecLine>(&line) {
        Ok(ExecLine::Shell { shell }) if crate::shell::valid_shell_id(&shell) => Some(shell),
        Ok(ExecLine::Unpack { unpack, size_mb }) if files => {
            let (read, write) = tokio::io::split(conn);
            return crate::files::unpack(read, write, &unpack, size_mb).await;
        }
        Ok(ExecLine::Pack { pack }) if files => {
            let (_, write) = tokio::io::split(conn);
            return crate::files::pack(write, &pack).await;
        }
        Ok(ExecLine::Connect { connect }) if files => {
            return splice_to_port(conn, connect).await;
        }
        _ => None,
    };
    if let Some(id) = shell {
        return shells.attach(&id, env, conn).await;
    }
    let (read, mut write) = tokio::io::split(conn);
    let req = match CommandRequest::parse(&line) {
        Ok(r) => r,
        Err(message) => {
            write
                .write_all(&exception("validationException", &message))
                .await?;
            return write.shutdown().await;
        }
    };
    let mut read = read;
    // The client closing its end (or sending anything more) cancels the command.
    let cancelled = async move {
        let mut rest = [0u8; 1];
        let _ = read.read(&mut rest).await;
    };
    run(&req, env, None, &mut write, cancelled).await?;
    write.shutdown().await
}

/// The answer to a [`ExecLine::Connect`] that reached its port; anything else is one line saying
/// why not, then close.
pub const CONNECTED: &[u8] = b"connected\n";

/// Connects to `port` on loopback (inside the isolation this server runs in), answers
/// [`CONNECTED`], then carries bytes both ways until either side closes.
async fn splice_to_port<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: BufReader<S>,
    port: u16,
) -> io::Result<()> {
    let mut upstream =
        match tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).await {
            Ok(s) => s,
            Err(e) => {
                let line = format!("cannot connect to port {port}: {e}\n");
                conn.write_all(line.as_bytes()).await?;
                return conn.shutdown().await;
            }
        };
    upstream.set_nodelay(true)?;
    conn.write_all(CONNECTED).await?;
    conn.flush().await?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::read_message_from;

    fn events(mut bytes: &[u8]) -> Vec<(String, serde_json::Value)> {
        let mut all = Vec::new();
        while !bytes.is_empty() {
            let m = read_message_from(&mut bytes).unwrap();
            let kind = m
                .headers()
                .iter()
                .find(|h| {
                    h.name().as_str() == ":event-type" || h.name().as_str() == ":exception-type"
                })
                .map(|h| h.value().as_string().unwrap().as_str().to_owned())
                .unwrap();
            all.push((kind, serde_json::from_slice(m.payload()).unwrap()));
        }
        all
    }

    async fn run_to_vec(command: &str, timeout: Option<u64>) -> Vec<(String, serde_json::Value)> {
        let req = CommandRequest {
            command: command.into(),
            timeout,
        };
        let mut out = Vec::new();
        run(&req, &[], None, &mut out, std::future::pending())
            .await
            .unwrap();
        events(&out)
    }

    fn text(events: &[(String, serde_json::Value)], stream: &str) -> String {
        events
            .iter()
            .filter_map(|(_, v)| v["contentDelta"][stream].as_str())
            .collect()
    }

    #[tokio::test]
    async fn streams_stdout_and_stderr_apart_with_the_exit_code() {
        let ev = run_to_vec("echo out; echo err >&2; exit 3", None).await;
        assert_eq!(ev[0].1, serde_json::json!({ "contentStart": {} }));
        assert_eq!(text(&ev, "stdout"), "out\n");
        assert_eq!(text(&ev, "stderr"), "err\n");
        let stop = &ev.last().unwrap().1["contentStop"];
        assert_eq!(
            (stop["exitCode"].as_i64(), stop["status"].as_str()),
            (Some(3), Some("COMPLETED"))
        );
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_tree() {
        let ev = run_to_vec("sleep 30 & echo started; wait", Some(1)).await;
        assert_eq!(text(&ev, "stdout"), "started\n");
        let stop = &ev.last().unwrap().1["contentStop"];
        assert_eq!(stop["status"], "TIMED_OUT");
        assert_eq!(stop["exitCode"], TIMED_OUT_EXIT_CODE);
    }

    #[tokio::test]
    async fn characters_split_between_reads_arrive_whole() {
        // 16 383 ASCII bytes, then a 3-byte character across the 16 KiB read boundary.
        let ev = run_to_vec(
            "head -c 16383 /dev/zero | tr '\\0' a; printf '\\342\\202\\254'",
            None,
        )
        .await;
        let out = text(&ev, "stdout");
        assert!(out.ends_with('€'), "{:?}", &out[out.len() - 8..]);
        assert_eq!(out.chars().count(), 16_384);
    }

    #[test]
    fn requests_are_checked_as_the_model_bounds_them() {
        assert!(CommandRequest::parse(br#"{"command":"true"}"#).is_ok());
        assert_eq!(
            CommandRequest::parse(br#"{"command":"true","timeout":3600}"#)
                .unwrap()
                .timeout(),
            Duration::from_secs(3600)
        );
        for bad in [
            &br#"{"command":""}"#[..],
            br#"{"command":"x","timeout":0}"#,
            br#"{"command":"x","timeout":3601}"#,
            br#"{"timeout":5}"#,
            br#"{"command":"x","extra":1}"#,
            b"not json",
        ] {
            assert!(
                CommandRequest::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(r#"{{"command":"{}"}}"#, "x".repeat(MAX_COMMAND_CHARS + 1));
        assert!(CommandRequest::parse(long.as_bytes()).is_err());
    }

    #[tokio::test]
    async fn connect_splices_to_a_loopback_port_or_says_why_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let shells = crate::shell::Shells::new();
        let open = |line: String| {
            let (mut ours, theirs) = tokio::io::duplex(1024);
            let shells = std::sync::Arc::clone(&shells);
            tokio::spawn(async move { serve_connection(theirs, &[], &shells, true).await });
            async move {
                ours.write_all(line.as_bytes()).await.unwrap();
                ours
            }
        };
        let mut conn = open(format!("{{\"connect\":{port}}}\nping")).await;
        let mut got = vec![0u8; CONNECTED.len() + 4];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [CONNECTED, b"ping"].concat());

        // Nothing listens there any more: one line saying so, then the end.
        let mut conn = open(format!("{{\"connect\":{port}}}\n")).await;
        let mut said = String::new();
        conn.read_to_string(&mut said).await.unwrap();
        assert!(
            said.starts_with(&format!("cannot connect to port {port}")),
            "{said}"
        );
    }
}
