use super::*;
use conf::{Endpoint, StaticPool};

fn limits() -> AdmissionLimits {
    AdmissionLimits {
        max_active_sessions: 100,
        max_sessions_per_principal: 100,
        max_sessions_per_anonymous_address: 100,
        max_inflight_per_session: 2,
        new_sessions_per_second: 10_000,
        requests_per_second_per_principal: 1_000_000,
    }
}

fn pool(n: u16) -> BackendProvider {
    BackendProvider::Static(crate::provider::StaticProvider::new(
        &StaticPool {
            endpoints: (0..n)
                .map(|i| Endpoint {
                    http: ([127, 0, 0, 1], 20_000 + i).into(),
                    mcp: None,
                    a2a: None,
                })
                .collect(),
            sessions_per_endpoint: 1,
        },
        &Default::default(),
    ))
}

fn rt(n: u32) -> std::sync::Arc<str> {
    std::sync::Arc::from(format!("runtime{n}"))
}

fn id(n: u32) -> SessionId {
    SessionId::parse(format!("session-{n:0>30}").as_bytes()).unwrap()
}

#[tokio::test]
async fn same_id_same_backend_distinct_ids_distinct_backends() {
    let dir = SessionDirectory::new(limits());
    let provider = pool(4);
    let anon = Caller::authenticated(Principal::anonymous());
    let mut seen = std::collections::HashSet::new();
    for n in 0..4 {
        let t = dir.open(&id(n), &rt(0), 1, &anon, true).unwrap();
        assert!(t.created);
        let addr = t
            .backend(&provider)
            .await
            .unwrap()
            .addr(conf::Protocol::Http)
            .cloned()
            .unwrap();
        assert!(seen.insert(addr.clone()), "two sessions share {addr}");
        drop(t);
        let again = dir.open(&id(n), &rt(0), 1, &anon, true).unwrap();
        assert!(!again.created);
        assert_eq!(
            again
                .backend(&provider)
                .await
                .unwrap()
                .addr(conf::Protocol::Http)
                .cloned()
                .unwrap(),
            addr
        );
    }
}

#[tokio::test]
async fn other_principal_or_runtime_sees_not_found() {
    let dir = SessionDirectory::new(limits());
    let alice = Caller::authenticated(Principal::new("alice"));
    let _t = dir.open(&id(1), &rt(0), 1, &alice, true).unwrap();
    let bob = Caller::authenticated(Principal::new("bob"));
    assert_eq!(
        dir.open(&id(1), &rt(0), 1, &bob, true).unwrap_err(),
        OpenError::NotFound
    );
    assert_eq!(
        dir.open(&id(1), &rt(1), 1, &alice, true).unwrap_err(),
        OpenError::NotFound
    );
    assert_eq!(
        dir.open(&id(2), &rt(0), 1, &alice, false).unwrap_err(),
        OpenError::NotFound
    );
}

#[tokio::test]
async fn inflight_limit_per_session() {
    let dir = SessionDirectory::new(limits());
    let anon = Caller::authenticated(Principal::anonymous());
    let a = dir.open(&id(1), &rt(0), 1, &anon, true).unwrap();
    let _b = dir.open(&id(1), &rt(0), 1, &anon, true).unwrap();
    assert_eq!(
        dir.open(&id(1), &rt(0), 1, &anon, true).unwrap_err(),
        OpenError::Rejected(Rejection::SessionInflight)
    );
    drop(a);
    assert!(dir.open(&id(1), &rt(0), 1, &anon, true).is_ok());
}

#[tokio::test]
async fn idle_end_never_takes_a_session_with_a_request_in_flight() {
    let dir = SessionDirectory::new(limits());
    let provider = pool(1);
    let anon = Caller::authenticated(Principal::anonymous());
    let t = dir.open(&id(1), &rt(0), 1, &anon, true).unwrap();
    t.backend(&provider).await.unwrap();
    let s = Arc::clone(t.session());
    assert!(
        !dir.end_if_idle(&s, Duration::ZERO, EndReason::Idle).await,
        "in flight"
    );
    drop(t);
    assert!(dir.end_if_idle(&s, Duration::ZERO, EndReason::Idle).await);
    assert!(s.is_ended());
    assert!(dir.is_empty());
    assert_eq!(
        dir.admission().active(),
        1,
        "the dropped handle still holds the session"
    );
    drop(s);
    assert_eq!(dir.admission().active(), 0);
    // The slot came back and the same id starts afresh.
    let t = dir.open(&id(1), &rt(0), 1, &anon, true).unwrap();
    assert!(t.created);
    t.backend(&provider).await.unwrap();
}

#[tokio::test]
async fn ended_session_refuses_its_waiting_requests() {
    let dir = SessionDirectory::new(limits());
    let provider = pool(1);
    let anon = Caller::authenticated(Principal::anonymous());
    let t = dir.open(&id(1), &rt(0), 1, &anon, true).unwrap();
    assert!(dir.end(t.session(), EndReason::Stopped).await);
    assert!(
        !dir.end(t.session(), EndReason::Idle).await,
        "ending is idempotent"
    );
    assert_eq!(
        t.session().end_reason(),
        Some(EndReason::Stopped),
        "the first reason stays"
    );
    assert!(matches!(
        t.backend(&provider).await,
        Err(TicketError::Ended)
    ));
}

#[tokio::test]
async fn mcp_ids_route_and_are_forgotten_with_the_session() {
    let dir = SessionDirectory::new(limits());
    let anon = Caller::authenticated(Principal::anonymous());
    let t = dir.open(&id(7), &rt(0), 1, &anon, true).unwrap();
    assert!(dir.learn_mcp_id(t.session(), "mcp-abc"));
    assert_eq!(dir.session_for_mcp_id("mcp-abc"), Some(id(7)));
    dir.end(t.session(), EndReason::Stopped).await;
    assert_eq!(dir.session_for_mcp_id("mcp-abc"), None);
}

#[tokio::test]
async fn a_backend_cannot_claim_another_sessions_mcp_id() {
    let dir = SessionDirectory::new(limits());
    let anon = Caller::authenticated(Principal::anonymous());
    let victim = dir.open(&id(8), &rt(0), 1, &anon, true).unwrap();
    let attacker = dir.open(&id(9), &rt(0), 1, &anon, true).unwrap();
    assert!(dir.learn_mcp_id(victim.session(), "mcp-victim"));
    assert!(!dir.learn_mcp_id(attacker.session(), "mcp-victim"));
    assert_eq!(dir.session_for_mcp_id("mcp-victim"), Some(id(8)));
    // Once the victim's session ends, the id is free again.
    dir.end(victim.session(), EndReason::Stopped).await;
    assert!(dir.learn_mcp_id(attacker.session(), "mcp-victim"));
    assert_eq!(dir.session_for_mcp_id("mcp-victim"), Some(id(9)));
}

#[tokio::test]
async fn concurrent_first_requests_share_one_placement() {
    let dir = Arc::new(SessionDirectory::new(AdmissionLimits {
        max_inflight_per_session: 64,
        ..limits()
    }));
    let provider = Arc::new(pool(8));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (dir, provider) = (Arc::clone(&dir), Arc::clone(&provider));
        tasks.spawn(async move {
            let t = dir
                .open(
                    &id(3),
                    &rt(0),
                    1,
                    &Caller::authenticated(Principal::anonymous()),
                    true,
                )
                .unwrap();
            t.backend(&provider)
                .await
                .unwrap()
                .addr(conf::Protocol::Http)
                .cloned()
                .unwrap()
        });
    }
    let addrs: std::collections::HashSet<_> = tasks.join_all().await.into_iter().collect();
    assert_eq!(addrs.len(), 1);
    let BackendProvider::Static(p) = &*provider else {
        unreachable!()
    };
    assert_eq!(p.occupancy().iter().sum::<u32>(), 1);
}
