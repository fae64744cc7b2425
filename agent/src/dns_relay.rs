//! In a microVM guest whose runtime has an egress policy: the guest's resolver. Questions sent
//! over UDP to `--listen` (127.0.0.1:53, in `/etc/resolv.conf`) go on over TCP to the gateway's
//! DNS (`--upstream`, 10.0.2.100:53, which restricted QEMU networking forwards to the gateway);
//! the guest has no other way to resolve a name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;

/// How long one question may take end to end.
const DEADLINE: Duration = Duration::from_secs(10);

pub fn run(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        // One connection to the gateway, reused: each new one costs the host a process
        // (QEMU's guestfwd starts `sessiongate egress-connect` per connection). Questions take
        // turns on it; a broken or idle-closed one is replaced on the next question.
        let link: Arc<Mutex<Option<TcpStream>>> = Arc::new(Mutex::new(None));
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await?;
            let query = buf[..n].to_vec();
            let (socket, link) = (socket.clone(), link.clone());
            tokio::spawn(async move {
                if let Ok(answer) = ask(&link, upstream, &query).await {
                    let _ = socket.send_to(&answer, from).await;
                }
            });
        }
    })
}

/// Asks on the kept connection, and once more on a fresh one if that fails. A connection that
/// failed or timed out mid-question is dropped (a late answer on it would go to the next
/// question), and an answer must carry the question's id.
async fn ask(
    link: &Mutex<Option<TcpStream>>,
    upstream: SocketAddr,
    query: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut link = link.lock().await;
    for fresh in [false, true] {
        if fresh || link.is_none() {
            let connected = tokio::time::timeout(DEADLINE, TcpStream::connect(upstream)).await;
            *link = Some(connected.map_err(std::io::Error::other)??);
        }
        if let Some(s) = link.as_mut() {
            match tokio::time::timeout(DEADLINE, exchange(s, query)).await {
                Ok(Ok(answer)) if answer.get(..2) == query.get(..2) => return Ok(answer),
                _ => *link = None,
            }
        }
    }
    Err(std::io::Error::other("the gateway's DNS did not answer"))
}

async fn exchange(s: &mut TcpStream, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    s.write_u16(len).await?;
    s.write_all(query).await?;
    let len = s.read_u16().await?;
    let mut answer = vec![0u8; usize::from(len)];
    s.read_exact(&mut answer).await?;
    Ok(answer)
}
