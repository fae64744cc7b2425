//! Session directory benchmarks: lookup of a live session, placement of new sessions on a
//! static pool, and session-id validation. `cargo bench -p routing`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use auth::Principal;
use conf::{Endpoint, StaticPool};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use routing::provider::StaticProvider;
use routing::{AdmissionLimits, BackendProvider, Caller, SessionDirectory, SessionId};

const LIVE_SESSIONS: u32 = 100_000;

fn limits() -> AdmissionLimits {
    AdmissionLimits {
        max_active_sessions: 10_000_000,
        max_sessions_per_principal: 10_000_000,
        max_sessions_per_anonymous_address: 10_000_000,
        max_inflight_per_session: 1_000,
        new_sessions_per_second: 1_000_000,
        requests_per_second_per_principal: 1_000_000,
    }
}

fn runtime_name(n: u32) -> std::sync::Arc<str> {
    std::sync::Arc::from(format!("runtime{n}"))
}

fn id(n: u32) -> SessionId {
    SessionId::parse(format!("bench-session-{n:0>24}").as_bytes()).unwrap()
}

fn pool(endpoints: u16, per: u32) -> BackendProvider {
    BackendProvider::Static(StaticProvider::new(
        &StaticPool {
            endpoints: (0..endpoints)
                .map(|i| Endpoint {
                    http: ([10, 0, (i >> 8) as u8, i as u8], 8080).into(),
                    mcp: None,
                    a2a: None,
                })
                .collect(),
            sessions_per_endpoint: per,
        },
        &Default::default(),
    ))
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let anon = Caller::authenticated(Principal::anonymous());
    let runtime = runtime_name(0);

    // A directory holding LIVE_SESSIONS placed sessions.
    let dir = SessionDirectory::new(limits());
    let provider = pool(1_000, 1_000);
    let ids: Vec<SessionId> = (0..LIVE_SESSIONS).map(id).collect();
    rt.block_on(async {
        for i in &ids {
            let t = dir.open(i, &runtime, 1, &anon, true).unwrap();
            t.backend(&provider).await.unwrap();
        }
    });

    let mut n = 0usize;
    c.bench_function("directory/lookup_warm_session", |b| {
        b.iter(|| {
            n = (n + 7919) % ids.len();
            let t = dir
                .open(black_box(&ids[n]), &runtime, 1, &anon, false)
                .unwrap();
            black_box(t.session().backend().is_some());
        })
    });

    c.bench_function("directory/place_new_session_static_pool", |b| {
        let dir = SessionDirectory::new(limits());
        let provider = pool(1_000, 1_000);
        let mut next = LIVE_SESSIONS;
        b.iter_batched(
            || {
                next += 1;
                id(next)
            },
            |sid| {
                rt.block_on(async {
                    let t = dir.open(&sid, &runtime, 1, &anon, true).unwrap();
                    black_box(
                        t.backend(&provider)
                            .await
                            .unwrap()
                            .addr(conf::Protocol::Http)
                            .is_some(),
                    );
                    // End it so the pool never fills: placement + release per iteration.
                    dir.end(t.session(), routing::EndReason::Stopped).await;
                })
            },
            BatchSize::SmallInput,
        )
    });

    c.bench_function("session_id/parse", |b| {
        let raw = b"0f8fad5b-d9cb-469f-a165-70867728950e-abcdef";
        b.iter(|| SessionId::parse(black_box(raw)).unwrap())
    });
}

criterion_group!(directory, benches);
criterion_main!(directory);
