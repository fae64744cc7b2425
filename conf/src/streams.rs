//! `[resumable_streams]`: how much of the SSE streams of `runtimes[].resumable_streams`
//! runtimes the gateway keeps for clients that reconnect with `Last-Event-ID`.

use std::time::Duration;

use serde::Deserialize;

use crate::validate::Errors;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileResumableStreams {
    /// Event bytes kept per session, all its streams together; the oldest go first. It is also
    /// how far a slow client may fall behind its live stream. Default 1 MiB.
    pub buffer_bytes_per_session: u64,
    /// Event bytes kept by the whole gateway. Default 256 MiB.
    pub buffer_bytes_total: u64,
    /// How long a finished stream can still be resumed, seconds (1–3 600). Default 300.
    pub retention_secs: u64,
}

impl Default for FileResumableStreams {
    fn default() -> Self {
        Self {
            buffer_bytes_per_session: 1 << 20,
            buffer_bytes_total: 256 << 20,
            retention_secs: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumableStreams {
    pub buffer_bytes_per_session: u64,
    pub buffer_bytes_total: u64,
    pub retention: Duration,
}

pub(crate) fn resumable_streams(errs: &mut Errors, f: &FileResumableStreams) -> ResumableStreams {
    let per_session = errs.range(
        "resumable_streams.buffer_bytes_per_session",
        f.buffer_bytes_per_session,
        4 << 10,
        1 << 30,
    );
    let total = errs.range(
        "resumable_streams.buffer_bytes_total",
        f.buffer_bytes_total,
        per_session,
        64 << 30,
    );
    let retention = errs.range(
        "resumable_streams.retention_secs",
        f.retention_secs,
        1,
        3_600,
    );
    ResumableStreams {
        buffer_bytes_per_session: per_session,
        buffer_bytes_total: total,
        retention: Duration::from_secs(retention),
    }
}

#[cfg(test)]
mod tests {
    use crate::parse;

    #[test]
    fn resumable_streams_are_for_http_faces_within_bounds() {
        let c = parse(
            "[resumable_streams]\nbuffer_bytes_per_session = 8192\n\
             [[runtimes]]\nname = \"a\"\nprotocol = \"agui\"\nresumable_streams = true\n",
        )
        .unwrap();
        assert!(c.runtimes[0].resumable_streams);
        assert_eq!(c.resumable_streams.buffer_bytes_per_session, 8192);
        for (text, path) in [
            (
                "[[runtimes]]\nname = \"m\"\nprotocol = \"mcp\"\nresumable_streams = true\n",
                "runtimes[0].resumable_streams",
            ),
            (
                "[resumable_streams]\nbuffer_bytes_per_session = 100\n[[runtimes]]\n",
                "resumable_streams.buffer_bytes_per_session",
            ),
            (
                "[resumable_streams]\nbuffer_bytes_total = 8192\nbuffer_bytes_per_session = 16384\n[[runtimes]]\n",
                "resumable_streams.buffer_bytes_total",
            ),
        ] {
            let errs = parse(text).unwrap_err().0;
            assert!(errs.iter().any(|e| e.path == path), "{text}: {errs:?}");
        }
    }
}
