//! A connection to where a session's commands and shells run (`agent::exec`'s protocol: one
//! JSON line in, then the command's event stream or the shell's frames), whatever that is:
//!
//! | [`ExecAt`] | the connection |
//! |---|---|
//! | `Local(env)` (a `process` backend of this process) | an in-memory pipe to `agent::exec::serve_connection`, run here with the backend's environment |
//! | `Socket(Unix)` / `Socket(Tcp)` | a sandbox's `exec.sock`, a guest's forwarded exec port |
//! | `Socket(Relay)` (a backend on a `sessiongate host`) | the host's relay, upgraded (`101`) to the same protocol; the host then connects as above |
//!
//! Dropping the connection cancels a command (its process group is killed) or detaches a shell.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use agent::shell::Shells;
use dashmap::DashMap;
use routing::provider::addr::{RELAY_AUTH, RELAY_BACKEND, Relay};
use routing::provider::{BackendAddr, ExecAt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// How long reaching an exec socket (or a host's relay) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes in flight in the pipe to a local exec server.
const LOCAL_PIPE: usize = 128 * 1024;
/// The relay path that upgrades to the exec protocol.
pub const RELAY_EXEC_PATH: &str = "/_sessiongate/exec";

pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Conn for T {}

/// Shells of this process's `process` backends, by the backend's pid.
static LOCAL_SHELLS: LazyLock<DashMap<u32, Arc<Shells>>> = LazyLock::new(DashMap::new);

/// Opens a connection to `at` and sends `line` (a JSON request without its newline).
/// `pid` is the backend's process, for the shells of a local one.
pub async fn open(at: ExecAt, pid: Option<u32>, line: &[u8]) -> std::io::Result<Box<dyn Conn>> {
    let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, connect(at, pid)).await {
        Ok(c) => c?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    };
    let mut out = Vec::with_capacity(line.len() + 1);
    out.extend_from_slice(line);
    out.push(b'\n');
    conn.write_all(&out).await?;
    conn.flush().await?;
    Ok(conn)
}

/// Connects to `at` without sending anything (a host's relay passes the client's bytes on).
pub async fn connect(at: ExecAt, pid: Option<u32>) -> std::io::Result<Box<dyn Conn>> {
    Ok(match at {
        ExecAt::Local(env) => {
            let shells = pid.map(local_shells).unwrap_or_default();
            let (ours, theirs) = tokio::io::duplex(LOCAL_PIPE);
            tokio::spawn(async move {
                let _ = agent::exec::serve_connection(theirs, &env, &shells, false).await;
            });
            Box::new(ours)
        }
        ExecAt::Socket(BackendAddr::Unix(path)) => {
            Box::new(tokio::net::UnixStream::connect(&*path).await?)
        }
        ExecAt::Socket(BackendAddr::Tcp(addr)) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        ExecAt::Socket(BackendAddr::Relay(relay)) => through_relay(&relay).await?,
    })
}

/// The shells of the local backend `pid`, ended with it.
fn local_shells(pid: u32) -> Arc<Shells> {
    Arc::clone(&*LOCAL_SHELLS.entry(pid).or_insert_with(|| {
        let shells = Shells::new();
        tokio::spawn(end_with_backend(pid, Arc::clone(&shells)));
        shells
    }))
}

/// A `process` backend's shells end with it (its session ended, or it died).
async fn end_with_backend(pid: u32, shells: Arc<Shells>) {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return;
    };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid_t, 0) } != 0 {
            break;
        }
    }
    LOCAL_SHELLS.remove(&pid);
    shells.kill_all();
}

/// Asks a host's relay for its backend's exec protocol: an upgrade, then the bytes as is.
async fn through_relay(relay: &Relay) -> std::io::Result<Box<dyn Conn>> {
    let stream = tokio::net::TcpStream::connect(relay.host).await?;
    stream.set_nodelay(true)?;
    let mut stream = BufReader::new(stream);
    let head = format!(
        "GET {RELAY_EXEC_PATH} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: sessiongate-exec\r\n\
         {RELAY_BACKEND}: {}\r\n{RELAY_AUTH}: {}\r\n\r\n",
        relay.host, relay.backend, relay.token
    );
    stream.write_all(head.as_bytes()).await?;
    let mut status = String::new();
    stream.read_line(&mut status).await?;
    if !status.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::other(format!(
            "the host's relay refused: {}",
            status.trim()
        )));
    }
    // The rest of the head; whatever follows belongs to the exec protocol (kept buffered).
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    Ok(Box::new(stream))
}

/// Copies an upgraded client connection (Pingora's session after a `101`) to and from `conn`
/// until either side ends.
pub async fn carry(session: &mut pingora::proxy::Session, mut conn: impl Conn) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            got = session.read_request_body() => match got {
                Ok(Some(data)) => if conn.write_all(&data).await.is_err() { break },
                _ => break,
            },
            n = conn.read(&mut buf) => match n {
                Ok(n) if n > 0 => {
                    let data = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if session.write_response_body(Some(data), false).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
        }
    }
    let _ = conn.shutdown().await;
    let _ = session.write_response_body(None, true).await;
}

/// Writes the head of a command's or shell's answer: `status`, `headers`, and the session id.
/// `Ok(false)` when the client is gone already.
pub async fn write_head(
    session: &mut pingora::proxy::Session,
    status: u16,
    headers: &[(&'static str, &str)],
    session_id: Option<&str>,
) -> Result<bool, crate::error::GatewayError> {
    use crate::error::GatewayError;
    let mut head = pingora::http::ResponseHeader::build(status, Some(headers.len() + 1))
        .map_err(|_| GatewayError::Internal)?;
    for (name, value) in headers
        .iter()
        .copied()
        .chain(session_id.map(|id| (crate::headers::SESSION_ID, id)))
    {
        head.insert_header(name, value)
            .map_err(|_| GatewayError::Internal)?;
    }
    Ok(session
        .write_response_header(Box::new(head), false)
        .await
        .is_ok())
}
