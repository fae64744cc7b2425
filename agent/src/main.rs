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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => agent::run(cli.addrs),
        Some(Command::GuestControl { port }) => agent::guest::control(&port),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiongate-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
