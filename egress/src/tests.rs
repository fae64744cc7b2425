use std::sync::Arc;

use conf::{Egress, EgressMode, Rule};

use super::*;

fn shared(mode: EgressMode, allow: &[&str], budget: Option<u64>) -> Arc<Shared> {
    let policy = Egress {
        runtime: "r".into(),
        mode,
        allow: allow.iter().map(|r| Rule::parse(r).unwrap()).collect(),
        deny: vec![Rule::parse("169.254.0.0/16").unwrap()],
        budget_bytes: budget,
        credentials: Vec::new(),
    };
    Gate::new(Arc::new(policy), "r").shared.clone()
}

/// The first flight of a real TLS client (rustls) asking for `server`.
fn client_hello(server: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    hello
}

/// A DNS query for `name`, type `qtype`, id 0x1234, recursion desired.
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

#[tokio::test]
async fn a_name_off_the_list_gets_nxdomain_with_the_question_echoed() {
    let s = shared(EgressMode::AllowList, &["allowed.test"], None);
    let q = query("Denied.Test", 1);
    let a = dns::answer(&s, &q).await.unwrap();
    assert_eq!(&a[..2], &[0x12, 0x34], "the id");
    assert_eq!(a[2] & 0x80, 0x80, "a response");
    assert_eq!(a[2] & 0x01, 0x01, "recursion desired is kept");
    assert_eq!(a[3] & 0x0F, 3, "NXDOMAIN");
    assert_eq!(&a[4..8], &[0, 1, 0, 0], "one question, no answers");
    assert_eq!(&a[12..], &q[12..], "the question as asked");
}

#[tokio::test]
async fn a_name_on_the_list_never_resolves_to_the_hosts_loopback() {
    let s = shared(EgressMode::AllowList, &["localhost"], None);
    let a = dns::answer(&s, &query("localhost", 1)).await.unwrap();
    assert_eq!(a[3] & 0x0F, 0, "NOERROR");
    assert_eq!(
        &a[6..8],
        &[0, 0],
        "but no address: 127.0.0.1 is never reachable"
    );
    let refused = s.admit("localhost", 80).await.unwrap_err();
    assert!(refused.contains("addresses"), "{refused}");
}

#[tokio::test]
async fn other_question_types_and_junk_get_answers_not_silence() {
    let s = shared(EgressMode::Open, &[], None);
    let a = dns::answer(&s, &query("example.test", 16)).await.unwrap();
    assert_eq!((a[3] & 0x0F, &a[6..8]), (0, &[0u8, 0][..]), "TXT: empty");
    let mut bad = query("x", 1);
    bad.truncate(14);
    let a = dns::answer(&s, &bad).await.unwrap();
    assert_eq!(a[3] & 0x0F, 1, "FORMERR");
    assert!(
        dns::answer(&s, &[0; 5]).await.is_none(),
        "too short to answer"
    );
    let mut response = query("x", 1);
    response[2] |= 0x80;
    assert!(
        dns::answer(&s, &response).await.is_none(),
        "a response is not a question"
    );
}

#[tokio::test]
async fn literal_addresses_are_held_to_the_address_rules_and_never_loopback() {
    let s = shared(
        EgressMode::AllowList,
        &["10.200.0.0/24:8080", "127.0.0.0/8"],
        None,
    );
    assert!(s.admit("10.200.0.1", 8080).await.is_ok());
    assert!(s.admit("10.200.0.1", 8081).await.is_err(), "another port");
    assert!(
        s.admit("10.200.1.1", 8080).await.is_err(),
        "another network"
    );
    assert!(
        s.admit("127.0.0.1", 80).await.is_err(),
        "loopback, even when listed"
    );
    assert!(
        s.admit("[::ffff:127.0.0.1]", 80).await.is_err(),
        "loopback, mapped"
    );
    assert!(s.admit("0.0.0.0", 80).await.is_err(), "this host");
    let open = shared(EgressMode::Open, &[], None);
    assert!(
        open.admit("169.254.169.254", 80).await.is_err(),
        "deny wins over open"
    );
}

#[test]
fn the_budget_counts_both_ways_and_stops_at_its_limit() {
    let s = shared(EgressMode::Open, &[], Some(100));
    assert!(s.charge(60) && s.budget_left());
    assert!(s.charge(40), "exactly the budget is within it");
    assert!(!s.budget_left());
    assert!(!s.charge(1));
}

#[tokio::test]
async fn a_connection_says_its_kind_in_one_short_line() {
    let kind_of = |bytes: &'static [u8]| async move { kind(&mut &bytes[..]).await };
    assert!(matches!(
        kind_of(b"proxy\nCONNECT").await,
        Some(Kind::Proxy)
    ));
    assert!(matches!(kind_of(b"dns\n").await, Some(Kind::Dns)));
    assert!(kind_of(b"smtp\n").await.is_none());
    assert!(
        kind_of(b"proxyproxyproxy\n").await.is_none(),
        "no long lines"
    );
    assert!(kind_of(b"proxy").await.is_none(), "no line at all");
}

#[test]
fn the_server_name_of_a_real_client_hello() {
    let hello = client_hello("API.Example.com");
    assert!(sni::is_tls(&hello));
    assert_eq!(sni::server_name(&hello).as_deref(), Some("api.example.com"));
    for cut in [0, 5, 40, hello.len() / 2, hello.len() - 1] {
        assert_eq!(sni::server_name(&hello[..cut]), None, "cut at {cut}");
    }
    assert_eq!(sni::server_name(b"GET / HTTP/1.1\r\n\r\n"), None);
}

#[tokio::test]
async fn link_local_is_never_reachable_even_when_listed() {
    let s = shared(
        EgressMode::AllowList,
        &["169.254.0.0/16", "fe80::/10"],
        None,
    );
    assert!(
        s.admit("169.254.169.254", 80).await.is_err(),
        "instance metadata"
    );
    assert!(s.admit("[fe80::1]", 80).await.is_err());
}

#[test]
fn a_handshake_that_cannot_be_read_is_not_waved_through() {
    assert!(matches!(sni::hello(b"SSH-2.0-x\r\n"), sni::Hello::NotTls));
    assert!(matches!(
        sni::hello(&[0x16, 3, 1, 0, 200, 1, 0]),
        sni::Hello::Unreadable
    ));
    assert!(
        matches!(sni::hello(&[]), sni::Hello::NotTls),
        "nothing sent"
    );
}

#[test]
fn the_host_header_is_the_host_the_request_goes_to() {
    let mut h = http::HeaderMap::new();
    proxy::one_host(&mut h, "api.example.com", 443, "https").unwrap();
    assert_eq!(
        h["host"], "api.example.com",
        "set when missing, default port left out"
    );
    h.insert("host", "API.example.com.:8443".parse().unwrap());
    proxy::one_host(&mut h, "api.example.com", 8443, "https").unwrap();
    assert_eq!(h["host"], "api.example.com:8443");
    h.insert("host", "other.example".parse().unwrap());
    assert!(proxy::one_host(&mut h, "api.example.com", 443, "https").is_err());
    h.insert("host", "api.example.com".parse().unwrap());
    h.append("host", "other.example".parse().unwrap());
    assert!(
        proxy::one_host(&mut h, "api.example.com", 443, "https").is_err(),
        "two"
    );
}

#[test]
fn a_client_hello_split_across_records_is_unreadable_not_unnamed() {
    let hello = client_hello("other.example");
    // The same handshake message in two records, sent together.
    let body = &hello[5..];
    let (a, b) = body.split_at(body.len() / 2);
    let mut split = Vec::new();
    for part in [a, b] {
        split.extend_from_slice(&[0x16, 3, 1]);
        split.extend_from_slice(&(part.len() as u16).to_be_bytes());
        split.extend_from_slice(part);
    }
    assert!(matches!(sni::hello(&split), sni::Hello::Unreadable));
    assert!(matches!(sni::hello(&hello), sni::Hello::Named(n) if n == "other.example"));
}
