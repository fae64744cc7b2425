//! The floor `loadtest/insn` measures sessiongate against: Pingora's HTTP/1 proxy (the same
//! vendored crate, the same build profile, the same allocator) doing nothing but pick its one
//! peer. Whatever sessiongate spends per request above this is its own stages'.
//!
//!   cargo build --release --example bare_proxy
//!   bare_proxy LISTEN PEER            # e.g. bare_proxy 127.0.0.1:18080 127.0.0.1:8081

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// The allocator sessiongate runs with, so that the floor differs from it only in the stages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    peer: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.peer, false, String::new())))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(peer)) = (args.next(), args.next()) else {
        return Err("usage: bare_proxy LISTEN PEER".into());
    };
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            peer: peer.parse()?,
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
