//! The microVM guest's control channel. A guest restored from a snapshot wakes up with the
//! template's entropy pool and clock; before its session's first request the gateway sends one
//! line over the serial port:
//!
//! ```text
//! sessiongate-config seed=<64 hex> clock=<unix ms> session=<id>
//! ```
//!
//! and waits for `sessiongate-config-ok`. The seed is credited to the kernel's pool and the
//! CRNG reseeded at once (`RNDADDENTROPY`, `RNDRESEEDCRNG`), so two clones of one template never
//! share random numbers; the clock is set; the session id is written to `/run/session-id`.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context;

const RNDADDENTROPY: libc::Ioctl = 0x4008_5203;
const RNDRESEEDCRNG: libc::Ioctl = 0x5207;

pub fn control(port: &Path) -> anyhow::Result<()> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open(port)
        .with_context(|| format!("open {}", port.display()))?;
    let mut out = tty.try_clone()?;
    for line in BufReader::new(tty).lines() {
        let line = line?;
        let Some(rest) = line.trim().strip_prefix("sessiongate-config ") else {
            continue;
        };
        let answer = match apply(rest) {
            Ok(()) => "sessiongate-config-ok".to_owned(),
            Err(e) => format!("sessiongate-config-error {e:#}"),
        };
        writeln!(out, "{answer}")?;
    }
    Ok(())
}

fn apply(settings: &str) -> anyhow::Result<()> {
    for kv in settings.split_whitespace() {
        let (key, value) = kv.split_once('=').context("expected key=value")?;
        match key {
            "seed" => reseed(&hex(value)?)?,
            "clock" => set_clock(value.parse().context("clock")?)?,
            "session" => std::fs::write("/run/session-id", value)?,
            _ => {} // newer gateways may send more
        }
    }
    Ok(())
}

fn hex(s: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("bad hex"))
        .collect()
}

/// Credits `seed` to the input pool and reseeds the CRNG from it now.
fn reseed(seed: &[u8]) -> anyhow::Result<()> {
    let dev = OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&i32::try_from(seed.len() * 8)?.to_ne_bytes());
    info.extend_from_slice(&i32::try_from(seed.len())?.to_ne_bytes());
    info.extend_from_slice(seed);
    // SAFETY: the buffer is a complete rand_pool_info of `seed.len()` bytes, alive for the call.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("RNDADDENTROPY");
    }
    // SAFETY: an argument-less ioctl on an open descriptor.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(std::io::Error::last_os_error()).context("RNDRESEEDCRNG");
    }
    Ok(())
}

fn set_clock(unix_ms: u64) -> anyhow::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_ms / 1000).try_into()?,
        tv_nsec: ((unix_ms % 1000) * 1_000_000).try_into()?,
    };
    // SAFETY: a valid timespec on the stack.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_settime");
    }
    Ok(())
}
