//! A request body held while its SHA-256 is checked: in memory up to a threshold, then in an
//! unlinked temporary file, so a 100 MB body costs disk, not memory. Handed on as one `Bytes`
//! (a read-only memory map for the file case: page cache, not heap).

use std::fs::File;
use std::io::Write;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

pub struct SignedBody {
    hasher: Sha256,
    memory: BytesMut,
    memory_limit: usize,
    file: Option<File>,
    len: u64,
}

impl SignedBody {
    pub fn new(memory_limit: usize) -> Self {
        Self {
            hasher: Sha256::new(),
            memory: BytesMut::new(),
            memory_limit,
            file: None,
            len: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        if let Some(f) = &mut self.file {
            return f.write_all(chunk);
        }
        if self.memory.len() + chunk.len() <= self.memory_limit {
            self.memory.extend_from_slice(chunk);
            return Ok(());
        }
        // Over the threshold: move what is held to a file nobody else can open.
        let mut f = tempfile::tempfile()?;
        f.write_all(&self.memory)?;
        f.write_all(chunk)?;
        self.memory = BytesMut::new();
        self.file = Some(f);
        Ok(())
    }

    /// The body's SHA-256, hex, and the body itself.
    pub fn finish(self) -> std::io::Result<(String, Bytes)> {
        let hash = hex::encode(self.hasher.finalize());
        let bytes = match self.file {
            None => self.memory.freeze(),
            Some(mut f) => {
                f.flush()?;
                // SAFETY: the file is unlinked and private to this process, and nothing writes
                // it after this point, so the mapping cannot change under the reader.
                let map = unsafe { memmap2::Mmap::map(&f)? };
                let _ = map.advise(memmap2::Advice::Sequential);
                Bytes::from_owner(map)
            }
        };
        Ok((hash, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_file_give_the_same_bytes_and_hash() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let run = |limit| {
            let mut b = SignedBody::new(limit);
            for c in data.chunks(7_001) {
                b.push(c).unwrap();
            }
            assert_eq!(b.len(), data.len() as u64);
            b.finish().unwrap()
        };
        let (h1, b1) = run(1 << 20);
        let (h2, b2) = run(1_000);
        assert_eq!(h1, h2);
        assert_eq!(h1, hex::encode(Sha256::digest(&data)));
        assert_eq!(&b1[..], &data[..]);
        assert_eq!(&b2[..], &data[..]);
    }

    #[test]
    fn empty_body_hash() {
        let (h, b) = SignedBody::new(10).finish().unwrap();
        assert_eq!(h, super::super::EMPTY_SHA256);
        assert!(b.is_empty());
    }
}
