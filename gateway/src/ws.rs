//! WebSocket limits on the client's frames, as AgentCore enforces them: a frame larger than the
//! cap closes the connection with 1009 (message too big), more frames per second than allowed
//! with 1008 (policy violation).
//!
//! [`FrameMeter`] follows the frame boundaries of the client-to-backend byte stream (RFC 6455
//! §5.2: 2–14 header bytes, then the payload) without buffering payloads: it only counts.

use std::time::Instant;

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Close code 1009.
    FrameTooBig,
    /// Close code 1008.
    TooManyFrames,
}

impl Violation {
    pub const fn close_code(self) -> u16 {
        match self {
            Violation::FrameTooBig => 1009,
            Violation::TooManyFrames => 1008,
        }
    }

    const fn reason(self) -> &'static str {
        match self {
            Violation::FrameTooBig => "frame too big",
            Violation::TooManyFrames => "too many frames per second",
        }
    }

    /// The unmasked close frame a server sends.
    pub fn close_frame(self) -> Bytes {
        let reason = self.reason().as_bytes();
        let mut f = Vec::with_capacity(4 + reason.len());
        f.push(0x88); // FIN + close
        f.push(2 + reason.len() as u8);
        f.extend_from_slice(&self.close_code().to_be_bytes());
        f.extend_from_slice(reason);
        Bytes::from(f)
    }
}

pub struct FrameMeter {
    max_payload: u64,
    per_second: f64,
    /// Frames still allowed now (refills at `per_second`, up to one second's worth).
    tokens: f64,
    refilled: Instant,
    /// Bytes of the current frame header seen so far.
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
}

impl FrameMeter {
    pub fn new(max_payload: u64, per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            max_payload,
            per_second,
            tokens: per_second,
            refilled: Instant::now(),
            header: [0; 14],
            have: 0,
            payload_left: 0,
        }
    }

    /// Accounts for the next bytes the client sent.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Violation> {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len() as u64);
                self.payload_left -= n;
                data = &data[n as usize..];
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if let Some(len) = self.header_complete() {
                self.have = 0;
                self.count_frame()?;
                if len > self.max_payload {
                    return Err(Violation::FrameTooBig);
                }
                self.payload_left = len;
            }
        }
        Ok(())
    }

    /// The payload length once the whole header has been seen.
    fn header_complete(&self) -> Option<u64> {
        let h = &self.header[..self.have];
        if h.len() < 2 {
            return None;
        }
        let masked = h[1] & 0x80 != 0;
        let (ext, len7) = match h[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let needed = 2 + ext + if masked { 4 } else { 0 };
        if h.len() < needed {
            return None;
        }
        Some(match len7 {
            Some(n) => n,
            None => h[2..2 + ext]
                .iter()
                .fold(0u64, |n, b| (n << 8) | u64::from(*b)),
        })
    }

    fn count_frame(&mut self) -> Result<(), Violation> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.refilled = now;
        if self.tokens < 1.0 {
            return Err(Violation::TooManyFrames);
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `len` payload bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    #[test]
    fn frames_are_followed_across_chunk_boundaries() {
        let mut m = FrameMeter::new(65_536, 1000);
        let stream: Vec<u8> = [frame(5), frame(300), frame(65_536), frame(0)].concat();
        for chunk in stream.chunks(7) {
            m.feed(chunk).unwrap();
        }
        assert_eq!(m.payload_left, 0);
        assert_eq!(m.have, 0);
    }

    #[test]
    fn a_frame_over_the_cap_is_refused_from_its_header() {
        let mut m = FrameMeter::new(65_536, 1000);
        let big = frame(65_537);
        assert_eq!(m.feed(&big[..14]), Err(Violation::FrameTooBig));
        assert_eq!(
            Violation::FrameTooBig.close_frame()[2..4],
            1009u16.to_be_bytes()
        );
    }

    #[test]
    fn too_many_frames_per_second() {
        let mut m = FrameMeter::new(65_536, 10);
        let f = frame(1);
        for _ in 0..10 {
            m.feed(&f).unwrap();
        }
        assert_eq!(m.feed(&f), Err(Violation::TooManyFrames));
    }
}
