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
//!
//! With `tcp=reset` every TCP connection the guest had when it was saved is dropped
//! (`SOCK_DESTROY`; listening sockets stay): their peers are gone with the network of its
//! previous life, and the new network reuses their addresses — the gateway's side of a new
//! connection may get the source port of an old one, which the guest would answer as that old
//! connection (a reset instead of a handshake).

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
            "tcp" if value == "reset" => {
                // Best effort: a guest without socket diagnostics still serves.
                if let Err(e) = forget_connections() {
                    eprintln!("guest-control: old connections not dropped: {e}");
                }
            }
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

/// Drops every IPv4 and IPv6 TCP socket but the listening ones: a dump of them over
/// `NETLINK_SOCK_DIAG`, then `SOCK_DESTROY` for each. Returns how many went.
fn forget_connections() -> std::io::Result<usize> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const SOCK_DESTROY: u16 = 21;
    const TCP_LISTEN: u32 = 10;
    let mut destroyed = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let nl = Netlink::open()?;
        let all_but_listen = !(1u32 << TCP_LISTEN);
        nl.send(
            SOCK_DIAG_BY_FAMILY,
            libc::NLM_F_REQUEST as u16 | libc::NLM_F_DUMP as u16,
            &diag_request(family, all_but_listen, &[0; SOCKID_LEN]),
        )?;
        let mut ids = Vec::new();
        nl.dump(|msg| {
            // struct inet_diag_msg: family, state, timer, retrans, then the socket id.
            if msg.len() >= 4 + SOCKID_LEN {
                let mut id = [0u8; SOCKID_LEN];
                id.copy_from_slice(&msg[4..4 + SOCKID_LEN]);
                ids.push((msg[1], id));
            }
        })?;
        for (state, id) in ids {
            nl.send(
                SOCK_DESTROY,
                libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16,
                &diag_request(family, 1u32 << state, &id),
            )?;
            if nl.ack().is_ok() {
                destroyed += 1;
            }
        }
    }
    Ok(destroyed)
}

/// `struct inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID_LEN: usize = 48;

/// `struct inet_diag_req_v2` for TCP sockets of `family` in `states`, with `id`.
fn diag_request(family: u8, states: u32, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let mut req = vec![family, libc::IPPROTO_TCP as u8, 0, 0];
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(id);
    req
}

/// A `NETLINK_SOCK_DIAG` socket.
struct Netlink(std::os::fd::OwnedFd);

impl Netlink {
    fn open() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, kind: u16, flags: u16, payload: &[u8]) -> std::io::Result<()> {
        let len = 16 + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        msg.extend_from_slice(payload);
        // SAFETY: sends `msg`, which lives across the call, to the kernel (no address needed).
        let n = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one datagram of netlink messages: `(type, payload)` each.
    fn recv(&self) -> std::io::Result<Vec<(u16, Vec<u8>)>> {
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: receives into `buf`, within its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
        let mut out = Vec::new();
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
            if len < 16 || at + len > n {
                break;
            }
            out.push((kind, buf[at + 16..at + len].to_vec()));
            at += (len + 3) & !3;
        }
        Ok(out)
    }

    /// Reads a dump to its end, handing each message's payload to `each`.
    fn dump(&self, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
        loop {
            for (kind, payload) in self.recv()? {
                match kind as i32 {
                    libc::NLMSG_DONE => return Ok(()),
                    libc::NLMSG_ERROR => return Err(netlink_error(&payload)),
                    _ => each(&payload),
                }
            }
        }
    }

    /// Waits for the acknowledgement of the last request.
    fn ack(&self) -> std::io::Result<()> {
        for (kind, payload) in self.recv()? {
            if kind as i32 == libc::NLMSG_ERROR {
                let e = netlink_error(&payload);
                return if e.raw_os_error() == Some(0) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
        }
        Ok(())
    }
}

/// `struct nlmsgerr`'s error (negative errno; 0 is an acknowledgement).
fn netlink_error(payload: &[u8]) -> std::io::Error {
    let code = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(-libc::EIO, i32::from_ne_bytes);
    std::io::Error::from_raw_os_error(-code)
}
