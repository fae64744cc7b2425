//! The server name a TLS ClientHello asks for: a tunnel to an allowed host must not carry a
//! handshake for another (domain fronting past the list).

use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest first record we wait for (a TLS record is at most 16 KiB plus its header).
const MAX_RECORD: usize = 16_384 + 5;

/// What the client sent first: at least one read; if it starts a TLS handshake record, the
/// whole record. Empty when the client closed without a byte.
pub(crate) async fn first_flight<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        match buf.as_slice() {
            [0x16, _, _, hi, lo, ..] => {
                let want = 5 + usize::from(u16::from_be_bytes([*hi, *lo]));
                if buf.len() >= want.min(MAX_RECORD) {
                    return Ok(buf);
                }
            }
            [0x16, ..] => {}
            _ => return Ok(buf),
        }
    }
}

/// Whether `first` looks like a TLS handshake at all.
pub(crate) fn is_tls(first: &[u8]) -> bool {
    first.first() == Some(&0x16)
}

/// What a tunnel's first bytes say about the server they are for.
pub(crate) enum Hello {
    NotTls,
    /// A ClientHello naming this server (lower-case).
    Named(String),
    /// A ClientHello without a server name.
    Unnamed,
    /// A TLS handshake that is not one whole ClientHello in one record: it could name anything.
    Unreadable,
}

pub(crate) fn hello(first: &[u8]) -> Hello {
    if !is_tls(first) {
        return Hello::NotTls;
    }
    match parse(first) {
        Some(Some(name)) => Hello::Named(name),
        Some(None) => Hello::Unnamed,
        None => Hello::Unreadable,
    }
}

/// The SNI host name of a ClientHello record, lower-case; `None` if it has none or is not one.
#[cfg(test)]
pub(crate) fn server_name(record: &[u8]) -> Option<String> {
    parse(record).flatten()
}

/// `Some(name or None)` for a whole ClientHello; `None` for anything else.
fn parse(record: &[u8]) -> Option<Option<String>> {
    let mut c = Cursor(record);
    (c.u8()? == 0x16).then_some(())?;
    c.skip(2)?; // version
    // Only this record, and it must hold the whole ClientHello: one split across records
    // (valid TLS, reassembled by the server) would be read across the next record's header.
    let body = usize::from(c.u16()?);
    let mut c = Cursor(c.take(body)?);
    (c.u8()? == 1).then_some(())?; // ClientHello
    let hello = c.take(3)?;
    let hello = usize::from(hello[0]) << 16 | usize::from(hello[1]) << 8 | usize::from(hello[2]);
    (hello + 4 == body).then_some(())?;
    c.skip(2 + 32)?; // version, random
    let n = usize::from(c.u8()?);
    c.skip(n)?; // session id
    let n = usize::from(c.u16()?);
    c.skip(n)?; // cipher suites
    let n = usize::from(c.u8()?);
    c.skip(n)?; // compression methods
    let n = usize::from(c.u16()?);
    let mut exts = Cursor(c.take(n)?);
    while let (Some(kind), Some(len)) = (exts.u16(), exts.u16()) {
        let body = exts.take(usize::from(len))?;
        if kind != 0 {
            continue;
        }
        let mut list = Cursor(body);
        let n = usize::from(list.u16()?);
        let mut names = Cursor(list.take(n)?);
        while let Some(name_type) = names.u8() {
            let n = usize::from(names.u16()?);
            let name = names.take(n)?;
            if name_type == 0 {
                return std::str::from_utf8(name)
                    .ok()
                    .map(|n| Some(n.to_ascii_lowercase()));
            }
        }
    }
    Some(None)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}
