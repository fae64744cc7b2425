//! `sessiongate sandbox-init`: the first process of a sandbox (see `routing`'s sandbox
//! provider). It starts the agent command, which listens on the contract's ports inside the
//! sandbox's private network namespace, and relays each port to a Unix socket in a directory
//! the gateway shares: the only way in. A fourth socket, `exec.sock`, runs the session's
//! commands (`InvokeAgentRuntimeCommand`, see `agent::exec`) in here: in the sandbox's
//! namespaces and cgroup, as the agent's user, in its working directory and environment. It exits with the agent (so an agent killed by its
//! memory limit ends the sandbox and the session), and passes SIGTERM on to it.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

/// The sockets the agent's HTTP, MCP and A2A ports are relayed to.
const SOCKETS: [&str; 3] = ["http.sock", "mcp.sock", "a2a.sock"];

/// Where the session's commands come in (`routing`'s sandbox provider connects to it).
const EXEC_SOCKET: &str = "exec.sock";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where to create `http.sock`, `mcp.sock`, `a2a.sock` and `exec.sock`.
    #[arg(long)]
    sockets: PathBuf,
    /// The agent's HTTP, MCP and A2A ports inside the sandbox.
    #[arg(long, value_delimiter = ',', default_values_t = [8080, 8000, 9000])]
    ports: Vec<u16>,
    /// The agent command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sandbox-init: {e}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(supervise(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("sandbox-init: {e}");
            ExitCode::from(70)
        }
    }
}

async fn supervise(args: Args) -> std::io::Result<u8> {
    if args.ports.len() != SOCKETS.len() {
        return Err(std::io::Error::other(
            "--ports takes three ports: HTTP,MCP,A2A",
        ));
    }
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("no agent command"))?;
    let mut agent = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {program}: {e}")))?;
    for (name, &port) in SOCKETS.iter().zip(&args.ports) {
        let path = args.sockets.join(name);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        tokio::spawn(relay(listener, port));
    }
    let path = args.sockets.join(EXEC_SOCKET);
    let _ = std::fs::remove_file(&path);
    let exec = UnixListener::bind(&path)?;
    tokio::spawn(async move {
        let accept = || async { Ok(exec.accept().await?.0) };
        if let Err(e) = agent::exec::serve(accept, Vec::new()).await {
            eprintln!("sandbox-init: exec socket: {e}");
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let status = tokio::select! {
        status = agent.wait() => status?,
        _ = term.recv() => stop(&mut agent).await?,
        _ = int.recv() => stop(&mut agent).await?,
    };
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        _ => 1,
    })
}

async fn stop(agent: &mut tokio::process::Child) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = agent.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) on our own child's pid; no memory involved.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    agent.wait().await
}

/// Each connection to the socket becomes a connection to the agent's port on loopback; one
/// the agent refuses (not listening yet) is closed, which the gateway's readiness probe retries.
async fn relay(listener: UnixListener, port: u16) {
    loop {
        let Ok((mut outer, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut inner) = TcpStream::connect(("127.0.0.1", port)).await {
                let _ = inner.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut outer, &mut inner).await;
            }
            drop::<UnixStream>(outer);
        });
    }
}
