//! A sandbox under an egress policy (`[runtimes.egress]`): no slirp4netns, so its network
//! namespace has loopback only and no route out. On that loopback the gateway itself listens —
//! its egress proxy on 127.0.0.1:3128 and its DNS on 127.0.0.1:53 (UDP and TCP) — through
//! sockets it opens inside the namespace before the agent starts (`setns(2)` on a thread of its
//! own; a root gateway can, and only the gateway can: the sandbox has no capabilities, and its
//! nested user namespace would not give it port 53 anyway). The agent finds them through
//! `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` and `/etc/resolv.conf`; a connection to anything else,
//! a raw IP included, has no route.
//!
//! With credentials, the gateway's egress CA is added to the sandbox's trust: a bundle (the
//! host's CAs and ours) at [`CA_BUNDLE`], over the host's bundle where the sandbox sees `/etc`,
//! and named by the usual variables. The secrets themselves never enter the sandbox.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use conf::Egress;

/// Where the CA bundle appears inside a sandbox.
const CA_BUNDLE: &str = "/run/sessiongate/ca-certificates.crt";
/// The host's bundle (Debian's path), replaced inside when the sandbox sees it.
const HOST_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The bwrap arguments that point the agent at the gate; writes the files they bind.
pub(super) fn bwrap_args(
    policy: &Egress,
    dir: &Path,
    read_only: &[PathBuf],
) -> std::io::Result<Vec<OsString>> {
    let proxy = format!("http://127.0.0.1:{}", egress::PROXY_PORT);
    let mut a: Vec<OsString> = Vec::new();
    for k in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        a.extend(["--setenv".into(), k.into(), proxy.clone().into()]);
    }
    for k in ["NO_PROXY", "no_proxy"] {
        a.extend(["--setenv".into(), k.into(), "localhost,127.0.0.1".into()]);
    }
    let sees = |p: &str| read_only.iter().any(|r| Path::new(p).starts_with(r));
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n")?;
    // Names resolve through the gate only: not through the host's own hosts file either.
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n::1 localhost\n")?;
    for (file, inside) in [(resolv, "/etc/resolv.conf"), (hosts, "/etc/hosts")] {
        if sees(inside) {
            a.extend(["--ro-bind".into(), file.into(), inside.into()]);
        }
    }
    if !policy.credentials.is_empty() {
        let ca = egress::Ca::get()?;
        let mut bundle = std::fs::read_to_string(HOST_BUNDLE).unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(ca.pem());
        let file = dir.join("ca-certificates.crt");
        std::fs::write(&file, bundle)?;
        a.extend(["--ro-bind".into(), file.clone().into(), CA_BUNDLE.into()]);
        if sees(HOST_BUNDLE) && Path::new(HOST_BUNDLE).exists() {
            a.extend(["--ro-bind".into(), file.into(), HOST_BUNDLE.into()]);
        }
        for k in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "AWS_CA_BUNDLE",
        ] {
            a.extend(["--setenv".into(), k.into(), CA_BUNDLE.into()]);
        }
    }
    Ok(a)
}

/// Opens the proxy and DNS sockets inside the network namespace of `pid` (the sandbox's first
/// process, its loopback up) and serves them with `gate`.
pub(super) async fn open(gate: &egress::Gate, pid: u32) -> std::io::Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let (udp, dns, proxy) = tokio::task::spawn_blocking(move || {
        // A thread of its own, which ends in the sandbox's namespace: never a pooled one.
        std::thread::spawn(move || bind_in(&ns))
            .join()
            .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    gate.serve_dns_udp(tokio::net::UdpSocket::from_std(udp)?);
    gate.serve_dns_tcp(tokio::net::TcpListener::from_std(dns)?);
    gate.serve_proxy(tokio::net::TcpListener::from_std(proxy)?);
    Ok(())
}

type Sockets = (
    std::net::UdpSocket,
    std::net::TcpListener,
    std::net::TcpListener,
);

fn bind_in(ns: &std::fs::File) -> std::io::Result<Sockets> {
    // SAFETY: setns(2) on this thread only, with a namespace descriptor we hold open.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!(
                "an egress policy on a sandbox needs a root gateway (to open its proxy inside the sandbox's network): {e}"
            ),
        ));
    }
    let udp = std::net::UdpSocket::bind(("127.0.0.1", 53))?;
    let dns = std::net::TcpListener::bind(("127.0.0.1", 53))?;
    let proxy = std::net::TcpListener::bind(("127.0.0.1", egress::PROXY_PORT))?;
    for nb in [
        udp.set_nonblocking(true),
        dns.set_nonblocking(true),
        proxy.set_nonblocking(true),
    ] {
        nb?;
    }
    Ok((udp, dns, proxy))
}
