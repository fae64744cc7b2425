//! An outbound connection, counted: its bytes each way, charged to the session's budget as
//! they pass (a spent budget fails the next read or write, which closes the connection).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Shared;

/// The bytes one connection moved: sent to the destination, received from it.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

impl Tally {
    pub fn get(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }
}

pub(crate) struct Metered<S> {
    inner: S,
    shared: Arc<Shared>,
    tally: Arc<Tally>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, shared: Arc<Shared>) -> (Self, Arc<Tally>) {
        let tally = Arc::new(Tally::default());
        (
            Self {
                inner,
                shared,
                tally: tally.clone(),
            },
            tally,
        )
    }
}

fn spent() -> std::io::Error {
    std::io::Error::other("the session's egress budget is spent")
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.tally.received.fetch_add(n, Ordering::Relaxed);
            if !self.shared.charge(n) {
                return Poll::Ready(Err(spent()));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.shared.budget_left() {
            return Poll::Ready(Err(spent()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.tally.sent.fetch_add(*n as u64, Ordering::Relaxed);
            self.shared.charge(*n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
