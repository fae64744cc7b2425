//! A microVM guest's network: the gateway's way in to its contract ports, and (with `egress`)
//! the guest's way out — never to the host's loopback.
//!
//! QEMU's own user-mode network (slirp) turns every connection a guest opens to its gateway
//! address, 10.0.2.2, into one to the host's 127.0.0.1: a guest could list the admin API's
//! `/sessions` and then call other sessions' backends on their forwarded loopback ports, past
//! all authentication. libslirp can refuse that (`disable_host_loopback`, which slirp4netns
//! sets for sandboxes), but QEMU exposes no option for it (7.2 here: `disable-host-loopback` is
//! an invalid `-netdev user` parameter). So each setting gets the backend that is safe for it:
//!
//! | `egress` | the guest's NIC is backed by | the guest reaches |
//! |---|---|---|
//! | false | QEMU slirp with `restrict=on` | nothing: every connection or datagram it sends is dropped or refused; the gateway's `hostfwd`s still come in |
//! | true (default) | `passt --no-map-gw`, over a socket pair | what the host reaches through its non-loopback addresses (the network, and the host's own address for services bound to it or to 0.0.0.0); never 127.0.0.0/8 |
//! | a runtime egress policy | QEMU slirp with `restrict=on` and two `guestfwd`s | only the gateway's egress proxy and DNS, at 10.0.2.100:3128 and :53 (each connection relayed by `sessiongate egress-connect` to the backend's gate) |
//!
//! Both keep the guest's static setup (10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3, see
//! `scripts/build-guest`): passt is told the same addresses and forwards DNS sent to 10.0.2.3
//! to the host's resolver (none if that is a loopback one: passt skips those without the
//! gateway mapping). A template snapshot restores under the same backend it was saved with,
//! since one provider has one `egress`.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use conf::{ContractPorts, Endpoint};
use tokio::process::{Child, Command};

/// Where the guest's `sessiongate-agent exec-server` takes the session's commands.
pub const GUEST_EXEC_PORT: u16 = 7070;
/// How long passt may take to bind the forwarded ports.
const PASST_DEADLINE: Duration = Duration::from_secs(5);

/// How one guest's NIC is backed, decided before QEMU starts.
pub(super) struct GuestNet {
    /// QEMU's `-netdev` value (id `n0`).
    pub netdev: String,
    /// With egress: QEMU's end and passt's end of the socket pair they exchange frames on.
    passt: Option<(OwnedFd, OwnedFd)>,
    forwards: Vec<(SocketAddr, u16)>,
}

impl GuestNet {
    /// Forwards `ports` (the host's ends) to `guest` (the agent's HTTP, MCP and A2A ports), and
    /// `exec` to the guest's exec server.
    pub fn new(
        egress: bool,
        ports: &Endpoint,
        guest: ContractPorts,
        exec: SocketAddr,
        gate: Option<&Path>,
    ) -> std::io::Result<Self> {
        let forwards: Vec<(SocketAddr, u16)> = [Some(ports.http), ports.mcp, ports.a2a]
            .into_iter()
            .zip(guest.all())
            .filter_map(|(host, guest)| Some((host?, guest)))
            .chain([(exec, GUEST_EXEC_PORT)])
            .collect();
        if !egress || gate.is_some() {
            let hostfwd: String = forwards
                .iter()
                .map(|(h, g)| format!(",hostfwd=tcp:{}:{}-:{g}", h.ip(), h.port()))
                .collect();
            let guestfwd = match gate {
                Some(socket) => guestfwd(socket)?,
                None => String::new(),
            };
            return Ok(Self {
                netdev: format!("user,id=n0,restrict=on{hostfwd}{guestfwd}"),
                passt: None,
                forwards,
            });
        }
        let (qemu_end, passt_end) = socketpair()?;
        Ok(Self {
            netdev: format!("socket,id=n0,fd={}", qemu_end.as_raw_fd()),
            passt: Some((qemu_end, passt_end)),
            forwards,
        })
    }

    /// The descriptor QEMU must inherit, if any (it is close-on-exec until then).
    pub fn qemu_fd(&self) -> Option<RawFd> {
        self.passt.as_ref().map(|(q, _)| q.as_raw_fd())
    }

    /// Once QEMU runs (as `qemu_pid`, its own process group): starts passt in that group, so
    /// stopping the guest stops it too, and waits until it listens on the forwarded ports.
    /// Returns passt, which also exits by itself when QEMU closes its end. `None` for slirp.
    pub async fn start_helper(self, qemu_pid: u32) -> std::io::Result<Option<Child>> {
        let Some((qemu_end, passt_end)) = self.passt else {
            return Ok(None);
        };
        // Ours: closed, so QEMU's exit is passt's end of file.
        drop(qemu_end);
        let fd = passt_end.as_raw_fd();
        let mut cmd = Command::new("passt");
        cmd.args(["--foreground", "--quiet", "--one-off", "--ipv4-only"])
            .args(["--fd", &fd.to_string()])
            // The one setting that matters: the gateway address is not the host's loopback.
            .arg("--no-map-gw")
            .args(["--address", "10.0.2.15", "--netmask", "24"])
            .args(["--gateway", "10.0.2.2", "--dns-forward", "10.0.2.3"])
            .args(["--udp-ports", "none"]);
        for (host, guest) in &self.forwards {
            cmd.arg("--tcp-ports")
                .arg(format!("{}/{}:{guest}", host.ip(), host.port()));
        }
        cmd.stdin(Stdio::null())
            // It reports to syslog, which a gateway host may not run; failures show as its exit.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(i32::try_from(qemu_pid).unwrap_or(0));
        // SAFETY: the closure runs in the forked child before exec and makes two
        // async-signal-safe syscalls. (passt drops root for `nobody`, which clears the
        // parent-death signal; QEMU has its own, and its exit ends passt.)
        unsafe {
            cmd.pre_exec(move || {
                inherit(fd)?;
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut passt = super::child::spawn(cmd).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("microVM egress needs passt (Debian: passt), or egress = false: {e}"),
            )
        })?;
        drop(passt_end);
        let deadline = tokio::time::Instant::now() + PASST_DEADLINE;
        while !self.forwards.iter().all(|(h, _)| listening(*h)) {
            if let Some(status) = passt.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "passt exited ({status}) before forwarding the guest's ports"
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(std::io::Error::other(format!(
                    "passt did not forward the guest's ports within {PASST_DEADLINE:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(Some(passt))
    }
}

/// The egress policy's way out of a restricted guest: its connections to the gate address's
/// proxy and DNS ports each start `sessiongate egress-connect`, which relays them to the gate's
/// Unix socket. (`restrict=on` drops everything else, forwards included in it are kept.)
fn guestfwd(socket: &Path) -> std::io::Result<String> {
    let exe = std::env::current_exe()?;
    let quoted = |p: &Path| {
        let s = p.display().to_string();
        if s.contains([',', ' ']) {
            Err(std::io::Error::other(format!(
                "{s}: a path with commas or spaces cannot go in QEMU's guestfwd"
            )))
        } else {
            Ok(s)
        }
    };
    let (exe, socket) = (quoted(&exe)?, quoted(socket)?);
    let gate = egress::GUEST_GATE;
    Ok([("proxy", egress::PROXY_PORT), ("dns", 53)]
        .iter()
        .map(|(kind, port)| {
            format!(",guestfwd=tcp:{gate}:{port}-cmd:{exe} egress-connect --kind {kind} --socket {socket}")
        })
        .collect())
}

/// Keeps `fd` open across the child's exec. Called in `pre_exec`: async-signal-safe.
pub(super) fn inherit(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: clears FD_CLOEXEC on a descriptor we own; no memory involved.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn socketpair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair(2) fills the two-element array on success.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether some socket listens on `addr` (IPv4), from `/proc/net/tcp`: asking by connecting
/// would push a stray connection into a guest that is not up yet.
fn listening(addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else {
        return false;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| proc_net_listens(&t, &want))
}

/// `want` (`ADDR:PORT` as `/proc/net/tcp` spells it) in state LISTEN (0A).
fn proc_net_listens(table: &str, want: &str) -> bool {
    table.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let (local, state) = (f.nth(1), f.nth(1));
        local == Some(want) && state == Some("0A")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            http: "127.0.0.1:41000".parse().unwrap(),
            mcp: Some("127.0.0.1:41001".parse().unwrap()),
            a2a: None,
        }
    }

    #[test]
    fn without_egress_slirp_is_restricted_and_still_forwards() {
        let net = GuestNet::new(
            false,
            &endpoint(),
            ContractPorts::default(),
            "127.0.0.1:41002".parse().unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(
            net.netdev,
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:41000-:8080,hostfwd=tcp:127.0.0.1:41001-:8000,hostfwd=tcp:127.0.0.1:41002-:7070"
        );
        assert!(net.qemu_fd().is_none());
    }

    #[test]
    fn a_runtimes_protocol_port_is_where_the_guest_end_points_either_way() {
        let mut guest = ContractPorts::default();
        guest.set(conf::Protocol::Http, 8100);
        let slirp = GuestNet::new(
            false,
            &endpoint(),
            guest,
            "127.0.0.1:41002".parse().unwrap(),
            None,
        )
        .unwrap();
        assert!(
            slirp.netdev.contains("hostfwd=tcp:127.0.0.1:41000-:8100,"),
            "{}",
            slirp.netdev
        );
        let passt = GuestNet::new(
            true,
            &endpoint(),
            guest,
            "127.0.0.1:41002".parse().unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(
            passt.forwards[..2],
            [
                ("127.0.0.1:41000".parse().unwrap(), 8100),
                ("127.0.0.1:41001".parse().unwrap(), 8000)
            ]
        );
    }

    #[test]
    fn with_egress_qemu_gets_a_socket_not_slirp() {
        let net = GuestNet::new(
            true,
            &endpoint(),
            ContractPorts::default(),
            "127.0.0.1:41002".parse().unwrap(),
            None,
        )
        .unwrap();
        let fd = net.qemu_fd().unwrap();
        assert_eq!(net.netdev, format!("socket,id=n0,fd={fd}"));
        assert!(!net.netdev.contains("user"));
    }

    #[test]
    fn a_listening_socket_is_found_in_proc_net_tcp() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listening(l.local_addr().unwrap()));
        let table = "  sl  local_address rem_address   st\n   0: 0100007F:1F90 00000000:0000 0A 0\n   1: 0100007F:1F91 0100007F:1F90 01 0\n";
        assert!(proc_net_listens(table, "0100007F:1F90"));
        assert!(
            !proc_net_listens(table, "0100007F:1F91"),
            "established, not listening"
        );
    }
}
