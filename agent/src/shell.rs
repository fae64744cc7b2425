//! Interactive shells in a session (AgentCore's `/ws/shells`): a PTY running `/bin/sh -i`,
//! named by the client's `shellId`, that outlives a dropped connection.
//!
//! Frames are the SDK's (`bedrock_agentcore.runtime.shell.protocol`): one channel byte, then the
//! payload. Between the gateway and an exec socket each frame is preceded by its length (u32,
//! big-endian); the gateway turns them into WebSocket binary messages and back.
//!
//! A shell lives in a [`Shells`] registry (one per backend). Attaching to an id that exists
//! re-attaches to the same PTY: output produced while detached (the last 256 KiB) is replayed
//! after the confirmation. A second client attaching takes the shell over and the first is told
//! it was kicked (the gateway closes it with 4000, as AgentCore does). A shell nobody attaches to
//! for the reconnect window (900 s) is killed, and so is one whose client sends `CLOSE`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The SDK's channel bytes, and one of ours between the exec socket and the gateway.
pub mod channel {
    pub const STDIN: u8 = 0x00;
    pub const STDOUT: u8 = 0x01;
    pub const STDERR: u8 = 0x02;
    pub const STATUS: u8 = 0x03;
    pub const RESIZE: u8 = 0x04;
    pub const HEARTBEAT: u8 = 0x05;
    /// Not on the client's wire: another client took this shell over (close with 4000).
    pub const KICKED: u8 = 0xFE;
    pub const CLOSE: u8 = 0xFF;
}

/// The largest frame either way (the SDK's `MAX_FRAME_SIZE`).
pub const MAX_FRAME: usize = 64 * 1024;
/// Output kept for a detached shell, replayed when a client re-attaches.
pub const REPLAY_BYTES: usize = 256 * 1024;
/// How long a detached shell waits for its client (the SDK's `_DEFAULT_RECONNECT_WINDOW`).
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(900);
/// The SDK's rule for shell ids (`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,127}$`).
pub fn valid_shell_id(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=128).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

/// Reads length-prefixed frames. Cancel-safe (for `select!`): bytes read stay in its buffer
/// until a whole frame is there.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(8 * 1024),
        }
    }

    /// The next frame (channel, payload); `None` at a clean end of the stream.
    pub async fn next(&mut self) -> io::Result<Option<(u8, Vec<u8>)>> {
        loop {
            if let Some(len) = self.buf.get(..4) {
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                if len == 0 || len > MAX_FRAME + 1 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad frame length",
                    ));
                }
                if self.buf.len() >= 4 + len {
                    let frame: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
                    return Ok(Some((frame[0], frame[1..].to_vec())));
                }
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    ch: u8,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len() + 1).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(payload.len() + 5);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.push(ch);
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await
}

/// The STATUS payloads the SDK's client understands.
pub fn confirmation(id: &str, reconnected: bool) -> Vec<u8> {
    serde_json::json!({"kind": "Status", "apiVersion": "v1",
        "metadata": {"shellId": id, "reconnected": reconnected}, "status": "Success"})
    .to_string()
    .into_bytes()
}

pub fn exit_status(code: i32) -> Vec<u8> {
    let status = if code == 0 {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
    } else {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "NonZeroExitCode", "message": format!("command terminated with exit code {code}"),
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    };
    status.to_string().into_bytes()
}

/// What a shell sends its attached client.
enum Out {
    Data(Vec<u8>),
    Exit(i32),
    Kicked,
}

/// The shells of one backend.
#[derive(Default)]
pub struct Shells {
    by_id: Mutex<HashMap<String, Arc<Shell>>>,
}

struct Shell {
    master: AsyncFd<OwnedFd>,
    pid: i32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Output while nobody is attached (the last [`REPLAY_BYTES`]).
    replay: VecDeque<u8>,
    attached: Option<(u64, mpsc::Sender<Out>)>,
    generation: u64,
    exited: Option<i32>,
}

impl Shells {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Serves one client of shell `id` on `conn` (length-prefixed frames) until it detaches,
    /// is kicked, or the shell ends.
    pub async fn attach<S: AsyncRead + AsyncWrite + Unpin>(
        self: &Arc<Self>,
        id: &str,
        env: &[(String, String)],
        conn: S,
    ) -> io::Result<()> {
        let (shell, reconnected) = self.open(id, env)?;
        let (tx, mut rx) = mpsc::channel::<Out>(8);
        let (generation, replay, exited) = {
            let mut st = lock(&shell.state);
            if let Some((_, old)) = st.attached.take() {
                let _ = old.try_send(Out::Kicked);
            }
            st.generation += 1;
            st.attached = Some((st.generation, tx));
            (st.generation, std::mem::take(&mut st.replay), st.exited)
        };
        let (read, write) = tokio::io::split(conn);
        let mut read = FrameReader::new(read);
        let ended = serve(
            &shell,
            id,
            reconnected,
            replay,
            exited,
            &mut rx,
            &mut read,
            write,
        )
        .await;
        if ended.is_err() {
            // The client cannot be written to: what it sent before it left still reaches the
            // shell (keystrokes typed right before a disconnect are not lost).
            while let Ok(Some(frame)) = read.next().await {
                if !shell.input(frame).await {
                    break;
                }
            }
        }
        match ended {
            Ok(Ending::Exited) => self.forget(id),
            Ok(Ending::Detached | Ending::Kicked) | Err(_) => self.detach(id, &shell, generation),
        }
        Ok(())
    }

    /// The shell named `id`, started now if there is none; true when it already ran.
    fn open(
        self: &Arc<Self>,
        id: &str,
        env: &[(String, String)],
    ) -> io::Result<(Arc<Shell>, bool)> {
        let mut by_id = lock(&self.by_id);
        if let Some(s) = by_id.get(id) {
            return Ok((Arc::clone(s), true));
        }
        let shell = Arc::new(Shell::spawn(env)?);
        by_id.insert(id.to_owned(), Arc::clone(&shell));
        tokio::spawn(pump(Arc::clone(&shell)));
        Ok((shell, false))
    }

    fn forget(&self, id: &str) {
        lock(&self.by_id).remove(id);
    }

    /// The client of `generation` left; the shell waits for the next one, not forever.
    fn detach(self: &Arc<Self>, id: &str, shell: &Arc<Shell>, generation: u64) {
        {
            let mut st = lock(&shell.state);
            if st.attached.as_ref().is_none_or(|(g, _)| *g != generation) {
                return; // another client has it now
            }
            st.attached = None;
        }
        let (shells, shell, id) = (Arc::clone(self), Arc::clone(shell), id.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(RECONNECT_WINDOW).await;
            let st = lock(&shell.state);
            if st.attached.is_none() && st.generation == generation {
                drop(st);
                shell.signal(libc::SIGKILL);
                shells.forget(&id);
            }
        });
    }

    /// Kills every shell (the backend is going away).
    pub fn kill_all(&self) {
        for (_, s) in lock(&self.by_id).drain() {
            s.signal(libc::SIGKILL);
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.by_id).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a client's attachment ended.
enum Ending {
    Exited,
    Detached,
    Kicked,
}

/// One attachment: the confirmation, the replay, then output and input until it ends.
#[allow(clippy::too_many_arguments)]
async fn serve<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    shell: &Shell,
    id: &str,
    reconnected: bool,
    replay: VecDeque<u8>,
    exited: Option<i32>,
    rx: &mut mpsc::Receiver<Out>,
    read: &mut FrameReader<R>,
    mut write: W,
) -> io::Result<Ending> {
    write_frame(&mut write, channel::STATUS, &confirmation(id, reconnected)).await?;
    let replay: Vec<u8> = replay.into();
    for part in replay.chunks(MAX_FRAME) {
        write_frame(&mut write, channel::STDOUT, part).await?;
    }
    if let Some(code) = exited {
        write_frame(&mut write, channel::STATUS, &exit_status(code)).await?;
        return Ok(Ending::Exited);
    }
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Data(d)) => write_frame(&mut write, channel::STDOUT, &d).await?,
                Some(Out::Exit(code)) => {
                    write_frame(&mut write, channel::STATUS, &exit_status(code)).await?;
                    return Ok(Ending::Exited);
                }
                Some(Out::Kicked) | None => {
                    write_frame(&mut write, channel::KICKED, b"").await?;
                    return Ok(Ending::Kicked);
                }
            },
            frame = read.next() => match frame {
                Ok(Some((channel::HEARTBEAT, _))) => {
                    write_frame(&mut write, channel::HEARTBEAT, b"").await?;
                }
                Ok(Some(frame)) => {
                    if !shell.input(frame).await {
                        return Ok(Ending::Detached);
                    }
                }
                // The client went away: detach, keep the shell for the reconnect window.
                Ok(None) | Err(_) => return Ok(Ending::Detached),
            },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shell {
    fn spawn(env: &[(String, String)]) -> io::Result<Self> {
        let pty = nix::pty::openpty(None, None).map_err(io::Error::from)?;
        let (master, slave) = (pty.master, pty.slave);
        set_size(&master, 80, 24);
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-i")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("TERM", "xterm-256color")
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: runs in the forked child before exec; setsid and ioctl are async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
        // Reaped by `pump` (waitpid), not by `Child`.
        std::mem::forget(child);
        set_nonblocking(&master)?;
        Ok(Self {
            // SAFETY: an OwnedFd stays open and names the same file until the AsyncFd drops it.
            master: unsafe { AsyncFd::register(master) }
                .map_err(|e| io::Error::other(e.to_string()))?,
            pid,
            state: Mutex::new(State::default()),
        })
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| {
                // SAFETY: writes from a valid slice to an fd we own.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Applies one frame from the client; false when the shell can take no more input.
    async fn input(&self, (ch, data): (u8, Vec<u8>)) -> bool {
        match ch {
            channel::STDIN => self.write_all(&data).await.is_ok(),
            channel::RESIZE => {
                self.resize(&data);
                true
            }
            // The client asks the shell to end: hang up; the exit is reported as usual.
            channel::CLOSE => {
                self.signal(libc::SIGHUP);
                true
            }
            _ => true,
        }
    }

    fn resize(&self, json: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Size {
            width: u16,
            height: u16,
        }
        if let Ok(s) = serde_json::from_slice::<Size>(json)
            && s.width > 0
            && s.height > 0
        {
            set_size(self.master.get_ref(), s.width, s.height);
        }
    }

    fn signal(&self, sig: i32) {
        // Once reaped, the pid may name someone else's group.
        if lock(&self.state).exited.is_some() {
            return;
        }
        // SAFETY: signals the shell's own process group (it is a session leader).
        unsafe { libc::kill(-self.pid, sig) };
    }
}

/// Reads the PTY until the shell's side closes: to the attached client (waiting for it: a slow
/// client holds the shell back), or into the replay buffer while detached.
async fn pump(shell: Arc<Shell>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = {
            let Ok(mut guard) = shell.master.readable().await else {
                break;
            };
            match guard.try_io(|fd| {
                // SAFETY: reads into a valid buffer from an fd we own.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(0)) | Ok(Err(_)) => break, // EIO: the shell side is closed
                Ok(Ok(n)) => n,
                Err(_would_block) => continue,
            }
        };
        let data = buf[..n].to_vec();
        let sender = lock(&shell.state)
            .attached
            .as_ref()
            .map(|(_, tx)| tx.clone());
        let undelivered = match sender {
            Some(tx) => tx.send(Out::Data(data)).await.err().map(|e| e.0),
            None => Some(Out::Data(data)),
        };
        if let Some(Out::Data(d)) = undelivered {
            let mut st = lock(&shell.state);
            st.replay.extend(d);
            let over = st.replay.len().saturating_sub(REPLAY_BYTES);
            st.replay.drain(..over);
        }
    }
    let pid = shell.pid;
    let code = tokio::task::spawn_blocking(move || {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        }
    })
    .await
    .unwrap_or(-1);
    let sender = {
        let mut st = lock(&shell.state);
        st.exited = Some(code);
        st.attached.as_ref().map(|(_, tx)| tx.clone())
    };
    if let Some(tx) = sender {
        let _ = tx.send(Out::Exit(code)).await;
    }
}

fn set_size(fd: &OwnedFd, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
