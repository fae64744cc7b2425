//! `sessiongate-agent`: the reference agent as a small binary of its own (built static with
//! musl for microVM guests), and the guest's control channel.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sessiongate-agent",
    version,
    about = "sessiongate's reference agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    addrs: agent::AgentAddrs,
}

#[derive(Subcommand)]
enum Command {
    /// In a microVM guest: apply what the gateway sends over the serial port after a snapshot
    /// restore (fresh entropy, the clock, the session id).
    GuestControl {
        #[arg(long, default_value = "/dev/ttyS0")]
        port: std::path::PathBuf,
    },
    /// In a microVM guest: run the session's commands (`InvokeAgentRuntimeCommand`) sent to
    /// this TCP address, one per connection (see `agent::exec`).
    ExecServer {
        #[arg(long, default_value = "0.0.0.0:7070")]
        listen: std::net::SocketAddr,
    },
    /// In a microVM guest under an egress policy: answer the guest's DNS (UDP on `listen`)
    /// by asking the gateway's (TCP on `upstream`), see `agent::dns_relay`.
    DnsRelay {
        #[arg(long, default_value = "127.0.0.1:53")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "10.0.2.100:53")]
        upstream: std::net::SocketAddr,
    },
}

fn exec_server(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        agent::exec::serve(|| async { Ok(listener.accept().await?.0) }, Vec::new()).await?;
        Ok(())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => agent::run(cli.addrs),
        Some(Command::GuestControl { port }) => agent::guest::control(&port),
        Some(Command::ExecServer { listen }) => exec_server(listen),
        Some(Command::DnsRelay { listen, upstream }) => agent::dns_relay::run(listen, upstream),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiongate-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
