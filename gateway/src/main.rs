//! `sessiongate`: the front door for AI-agent runtimes.
//!
//! ```text
//! sessiongate [--config FILE] [--http ADDR] [--mcp ADDR] [--a2a ADDR] [--admin ADDR]
//! sessiongate check-config FILE
//! sessiongate reload [--admin ADDR] [--token-file FILE] [--allow-auth-downgrade]
//! sessiongate agent [--http ADDR] [--mcp ADDR] [--a2a ADDR]
//! sessiongate invoke PAYLOAD [--endpoint URL] [--runtime NAME] [--session-id ID] [--qualifier Q]
//!                            [--bearer-token TOKEN] [--region REGION]
//! ```

mod admin;

mod authn;
mod cluster;
mod commands;
mod ctx;
mod dashboard;
mod endpoints;
mod error;
mod exec_conn;
mod front;
mod handover;
mod headers;
mod hibernate;
mod host;
mod identity;
mod ids;
mod invoke;
mod lograte;
mod observe;
mod parking;
mod proxy;
mod reload;
mod replay;
mod request;
mod respond;
mod response;
mod resumable;
mod route;
mod sandbox_init;
mod server;
mod shells;
mod state;
mod telemetry;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// glibc's malloc showed up as ~12% of the gateway's CPU under load, with arena-lock
/// contention between Pingora's worker threads; mimalloc's thread-local heaps avoid both.
/// Built without transparent huge pages (`no_thp`): with them, each idle client connection's
/// buffers kept ~90 KB resident (1 000 slowloris connections: 114 MB), without them ~27 KB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sessiongate",
    version,
    about = "A self-hostable front door for AI-agent runtimes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run(RunArgs),
    /// Validate a config file; print every error with its key path; exit 1 if any.
    CheckConfig { file: PathBuf },
    /// Invoke a runtime through a gateway (the AWS face) and print the answer as it streams.
    Invoke(invoke::InvokeArgs),
    /// Ask a running gateway to reload its config file now (through its admin listener); print
    /// the outcome; exit 1 if the file was refused (the old config stays in force).
    Reload(ReloadArgs),
    /// Exit 0 if the gateway's admin `/healthz` answers 200 (container health checks).
    Health {
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
    },
    /// Run the reference agent (the container contract: HTTP, MCP, A2A).
    Agent(agent::AgentAddrs),
    /// Run a backend host: own this machine's spawned backends and serve them to every replica
    /// (needs `[cluster]`; see `[host]`).
    Host(host::HostArgs),
    /// Inside a sandbox: run the agent command and relay its contract ports to Unix sockets.
    #[command(hide = true)]
    SandboxInit(sandbox_init::Args),
    /// For QEMU's `guestfwd`: relay stdin/stdout (one guest connection) to a backend's egress
    /// gate, announcing the connection's kind (`proxy` or `dns`).
    #[command(hide = true)]
    EgressConnect {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        socket: PathBuf,
    },
}

#[derive(Args)]
struct ReloadArgs {
    /// The gateway's admin listener.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// The admin bearer token's file (`admin.token_file` in the gateway's config), if it has one.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Take the new file even if it weakens a runtime's auth mode (e.g. `jwt` to `none`).
    #[arg(long)]
    allow_auth_downgrade: bool,
}

#[derive(Args, Clone, Default)]
struct RunArgs {
    /// TOML config file; without it the embedded default runs.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override `listeners.http`.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Override `listeners.mcp`.
    #[arg(long)]
    mcp: Option<SocketAddr>,
    /// Override `listeners.a2a`.
    #[arg(long)]
    a2a: Option<SocketAddr>,
    /// Override `listeners.admin`.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Take over the listening sockets of a running sessiongate (graceful upgrade: start this,
    /// then send the old process SIGQUIT).
    #[arg(long)]
    upgrade: bool,
}

/// Relays fd 0 (the socket QEMU's `guestfwd` gives a command, one per guest connection) to
/// the egress gate's Unix socket, after a line naming the kind of traffic.
fn egress_connect(kind: &str, socket: &std::path::Path) -> anyhow::Result<()> {
    use std::os::fd::FromRawFd;
    use tokio::io::AsyncWriteExt;
    anyhow::ensure!(matches!(kind, "proxy" | "dns"), "--kind is proxy or dns");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // SAFETY: fd 0 is the stream socket libslirp hands the command; nothing else owns it.
        let guest = unsafe { std::os::unix::net::UnixStream::from_raw_fd(0) };
        guest.set_nonblocking(true)?;
        let mut guest = tokio::net::UnixStream::from_std(guest)?;
        let mut gate = tokio::net::UnixStream::connect(socket).await?;
        gate.write_all(format!("{kind}\n").as_bytes()).await?;
        tokio::io::copy_bidirectional(&mut guest, &mut gate).await?;
        Ok(())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // egress-connect's stdout and stderr are a guest's connection: nothing may be written
    // there, so no logging, and a failure is only its exit status.
    if !matches!(cli.command, Some(Command::EgressConnect { .. })) {
        init_tracing();
    }
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::CheckConfig { file }) => return check_config(&file),
        Some(Command::Agent(addrs)) => agent::run(addrs),
        Some(Command::Host(args)) => run_host(args),
        Some(Command::SandboxInit(args)) => return sandbox_init::run(args),
        Some(Command::EgressConnect { kind, socket }) => {
            return match egress_connect(&kind, &socket) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            };
        }
        Some(Command::Invoke(args)) => invoke::run(args),
        Some(Command::Health { admin }) => health(admin),
        Some(Command::Reload(args)) => reload(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiongate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => conf::load(path).map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?,
        None => conf::Config::embedded_default(),
    };
    let overrides = state::ListenerOverrides {
        http: args.http,
        mcp: args.mcp,
        a2a: args.a2a,
        admin: args.admin,
    };
    overrides.apply(&mut config.listeners);
    for w in config.warnings() {
        tracing::warn!("config: {w}");
    }
    server::run(args.upgrade, config, args.config, overrides)
}

fn health(admin: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(async {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()?
            .get(format!("http://{admin}/healthz"))
            .send()
            .await
            .map(|r| r.status())
    })?;
    anyhow::ensure!(status.is_success(), "healthz answered {status}");
    Ok(())
}

fn reload(args: ReloadArgs) -> anyhow::Result<()> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = rt.block_on(async {
        let mut request = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?
            .post(format!(
                "http://{}/config/reload?allow_auth_downgrade={}",
                args.admin, args.allow_auth_downgrade
            ));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        anyhow::Ok((status, response.text().await?))
    })?;
    let body = body.trim_end();
    anyhow::ensure!(status.is_success(), "reload refused ({status}): {body}");
    println!("{body}");
    Ok(())
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match conf::load(path) {
        Ok(c) => {
            for w in c.warnings() {
                eprintln!("{}: warning: {w}", path.display());
            }
            println!(
                "{}: ok ({} runtime{})",
                path.display(),
                c.runtimes.len(),
                if c.runtimes.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` filters them (default `info`, without Pingora's chatter and
/// without the per-request access log: `RUST_LOG=info,sessiongate::access=info` turns it on).
/// `SESSIONGATE_LOG_FORMAT=json` writes JSON lines. Warning and error lines are rate-limited per
/// call site ([`lograte`]).
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::prelude::*;
    let levels = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora=warn,sessiongate::access=off")
    });
    let rate = lograte::LogRate::default();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if std::env::var("SESSIONGATE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        fmt.json().boxed()
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).boxed()
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(levels.and(rate.clone())))
        .init();
    rate.spawn_reporter();
}

fn run_host(args: host::HostArgs) -> anyhow::Result<()> {
    let config = conf::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    host::run(config, args.listen, args.advertise)
}
