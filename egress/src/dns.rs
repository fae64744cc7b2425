//! The session's DNS: answered by the gateway, so a name outside the list does not resolve.
//!
//! A/AAAA questions for a name the policy lets through are looked up with the gateway's own
//! resolver (`/etc/hosts`, then DNS) and answered with the addresses the policy allows (TTL
//! 30 s); a name it does not gets NXDOMAIN. Other question types get an empty answer: the
//! session reaches names, not records.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use crate::{CLIENT_DEADLINE, Io, Outcome, Shared};

const A: u16 = 1;
const AAAA: u16 = 28;
const NXDOMAIN: u8 = 3;
const FORMERR: u8 = 1;
const NOTIMP: u8 = 4;
const REFUSED: u8 = 5;
const TTL: u32 = 30;

/// DNS over UDP: one task per question, so a slow lookup holds up no other.
pub(crate) async fn serve_udp(shared: Arc<Shared>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        // A question past the gate's slots is dropped: the resolver asks again.
        let Some(slot) = shared.slot() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (task_shared, socket) = (shared.clone(), socket.clone());
        shared.spawn(async move {
            if let Some(answer) = answer(&task_shared, &query).await {
                let _ = socket.send_to(&answer, from).await;
            }
            drop(slot);
        });
    }
}

/// DNS over a stream (TCP, or a microVM's forwarded connection): two-byte length prefixes.
pub(crate) async fn serve_stream<S: Io>(shared: Arc<Shared>, mut s: S) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(CLIENT_DEADLINE, s.read_u16()).await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        let read = tokio::time::timeout(CLIENT_DEADLINE, s.read_exact(&mut query)).await;
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let Some(answer) = answer(&shared, &query).await else {
            return;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        if s.write_u16(len).await.is_err() || s.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// The answer to one query; `None` for what is not a query at all.
pub(crate) async fn answer(shared: &Shared, query: &[u8]) -> Option<Vec<u8>> {
    let answer = answer_within_budget(shared, query).await?;
    shared.charge((query.len() + answer.len()) as u64);
    Some(answer)
}

async fn answer_within_budget(shared: &Shared, query: &[u8]) -> Option<Vec<u8>> {
    let q = Question::parse(query)?;
    if q.opcode != 0 {
        return Some(q.reply(NOTIMP, &[]));
    }
    if !shared.budget_left() {
        return Some(q.reply(REFUSED, &[]));
    }
    let Some(name) = q.name.as_deref() else {
        return Some(q.reply(FORMERR, &[]));
    };
    if !shared.policy.resolves(name) {
        let started = Instant::now();
        shared.audit(
            "dns",
            name,
            Outcome::refused(started, "the name is not on the list"),
        );
        return Some(q.reply(NXDOMAIN, &[]));
    }
    if q.qtype != A && q.qtype != AAAA {
        return Some(q.reply(0, &[]));
    }
    let found = match tokio::net::lookup_host((name, 0)).await {
        Ok(found) => found,
        Err(_) => return Some(q.reply(NXDOMAIN, &[])),
    };
    let mut ips: Vec<IpAddr> = found
        .map(|a| a.ip())
        .filter(|ip| ip.is_ipv4() == (q.qtype == A))
        .filter(|ip| shared.allows_some_port(name, *ip))
        .collect();
    ips.dedup();
    Some(q.reply(0, &ips))
}

impl Shared {
    /// Whether a connection to `ip` for `name` could be allowed on some port (the question
    /// carries none): the address is not the host's loopback and no port-less deny rule holds it.
    fn allows_some_port(&self, name: &str, ip: IpAddr) -> bool {
        !crate::never(ip) && !self.policy.denies_everywhere(Some(name), Some(ip))
    }
}

struct Question<'a> {
    query: &'a [u8],
    /// Lower-case, without the trailing dot; `None` if malformed.
    name: Option<String>,
    qtype: u16,
    opcode: u8,
    /// Where the question section ends.
    end: usize,
}

impl<'a> Question<'a> {
    fn parse(query: &'a [u8]) -> Option<Self> {
        if query.len() < 12 || query[2] & 0x80 != 0 {
            return None; // too short, or a response
        }
        let qdcount = u16::from_be_bytes([query[4], query[5]]);
        let opcode = (query[2] >> 3) & 0x0F;
        let mut at = 12;
        let mut labels = Vec::new();
        let parsed = qdcount == 1
            && loop {
                let Some(&len) = query.get(at) else {
                    break false;
                };
                at += 1;
                if len == 0 {
                    break true;
                }
                if len & 0xC0 != 0 || labels.len() > 127 {
                    break false;
                }
                let Some(label) = query.get(at..at + usize::from(len)) else {
                    break false;
                };
                labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                at += usize::from(len);
            };
        let fixed = query.get(at..at + 4);
        match (parsed, fixed) {
            (true, Some(f)) => Some(Self {
                query,
                name: Some(labels.join(".")),
                qtype: u16::from_be_bytes([f[0], f[1]]),
                opcode,
                end: at + 4,
            }),
            _ => Some(Self {
                query,
                name: None,
                qtype: 0,
                opcode,
                end: 12,
            }),
        }
    }

    fn reply(&self, rcode: u8, ips: &[IpAddr]) -> Vec<u8> {
        let has_question = self.end > 12;
        let mut out = Vec::with_capacity(self.end + ips.len() * 28);
        out.extend_from_slice(&self.query[..2]); // id
        // QR, the query's opcode and RD; RA; the rcode.
        out.push(0x80 | (self.query[2] & 0x79));
        out.push(0x80 | (rcode & 0x0F));
        out.extend_from_slice(&u16::from(has_question).to_be_bytes());
        out.extend_from_slice(&(ips.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional records
        if !has_question {
            return out;
        }
        out.extend_from_slice(&self.query[12..self.end]);
        for ip in ips {
            out.extend_from_slice(&[0xC0, 12]); // the name: a pointer to the question's
            let (kind, data): (u16, Vec<u8>) = match ip {
                IpAddr::V4(v4) => (A, v4.octets().to_vec()),
                IpAddr::V6(v6) => (AAAA, v6.octets().to_vec()),
            };
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes()); // IN
            out.extend_from_slice(&TTL.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(&data);
        }
        out
    }
}
