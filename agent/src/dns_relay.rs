//! In a microVM guest whose runtime has an egress policy: the guest's resolver. Questions sent
//! over UDP to `--listen` (127.0.0.1:53, in `/etc/resolv.conf`) go on over TCP to the gateway's
//! DNS (`--upstream`, 10.0.2.100:53, which restricted QEMU networking forwards to the gateway);
//! the guest has no other way to resolve a name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one question may take end to end.
const DEADLINE: Duration = Duration::from_secs(10);

pub fn run(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await?;
            let query = buf[..n].to_vec();
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(Ok(answer)) = tokio::time::timeout(DEADLINE, ask(upstream, &query)).await
                {
                    let _ = socket.send_to(&answer, from).await;
                }
            });
        }
    })
}

async fn ask(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    s.write_u16(len).await?;
    s.write_all(query).await?;
    let len = s.read_u16().await?;
    let mut answer = vec![0u8; usize::from(len)];
    s.read_exact(&mut answer).await?;
    Ok(answer)
}
