//! The floor `loadtest/insn` measures sessiongate against: Pingora's HTTP/1 proxy (the same
//! vendored crate, the same build profile, the same allocator) doing nothing but pick its one
//! peer. Whatever sessiongate spends per request above this is its own stages'.
//!
//! With `--serve-http` it runs its connections the way sessiongate's `Front` does, awaiting the
//! vendored crate's `HttpProxy::serve_http` (an upstreamable patch: see
//! `vendor/pingora-proxy/README.sessiongate.md`) instead of the boxed
//! `HttpServerApp::process_new_http`: the floor that patch gives every custom accept loop.
//!
//!   cargo build --release --example bare_proxy
//!   bare_proxy LISTEN PEER [--serve-http]      # e.g. bare_proxy 127.0.0.1:18080 127.0.0.1:8081

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::prelude::*;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

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

/// A connection's requests, one after another, each awaited without boxing.
struct Loop {
    proxy: Arc<HttpProxy<Bare>>,
}

#[async_trait]
impl ServerApp for Loop {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut reused = self
            .proxy
            .serve_http(ServerSession::new_http1(stream), shutdown)
            .await;
        while let Some((stream, settings)) = reused.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            reused = self.proxy.serve_http(session, shutdown).await;
        }
        None
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(peer)) = (args.next(), args.next()) else {
        return Err("usage: bare_proxy LISTEN PEER [--serve-http]".into());
    };
    let serve_http = args.next().is_some_and(|a| a == "--serve-http");
    let bare = Bare {
        peer: peer.parse()?,
    };
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    if serve_http {
        let mut proxy = HttpProxy::new(bare, Arc::clone(&server.configuration));
        proxy.handle_init_modules();
        let app = Loop {
            proxy: Arc::new(proxy),
        };
        let mut svc = Service::new("bare".into(), app);
        svc.add_tcp(&listen);
        server.add_service(svc);
    } else {
        let mut proxy = http_proxy_service(&server.configuration, bare);
        proxy.add_tcp(&listen);
        server.add_service(proxy);
    }
    server.run_forever()
}
