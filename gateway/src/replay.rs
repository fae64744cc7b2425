//! Replay buffers of resumable streams (`runtimes[].resumable_streams`): the SSE events of a
//! session's streams, numbered `id: {stream}.{event}` as they pass, kept so that a client that
//! reconnects with `Last-Event-ID` gets the events after it, then the live rest
//! (`crate::resumable` serves both).
//!
//! Memory is bounded twice (`[resumable_streams]`): per session (its streams together; the
//! oldest events go first, which is also how far a slow reader may fall behind) and in total (a
//! session that would push the total over evicts its own oldest). A reader whose next event
//! was evicted sees a [`Read::Gap`]: its stream cannot continue without loss, so it ends rather
//! than skip. Finished streams are kept for `retention`, then swept.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use conf::ResumableStreams;
use dashmap::DashMap;
use tokio::sync::Notify;

/// How often, at most, the whole registry is swept for expired streams.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Every session's streams.
pub struct Streams {
    /// By (runtime, principal, session id): another caller reusing an ended session's id never
    /// reads its streams.
    sessions: DashMap<Box<str>, Arc<SessionStreams>>,
    /// Stream numbers, never reused in this process (an old `Last-Event-ID` never names a
    /// newer stream).
    next_stream: AtomicU64,
    /// Event bytes buffered, all sessions.
    total: AtomicU64,
    last_sweep: Mutex<Instant>,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            sessions: DashMap::new(),
            next_stream: AtomicU64::new(1),
            total: AtomicU64::new(0),
            last_sweep: Mutex::new(Instant::now()),
        }
    }
}

/// One session's streams.
#[derive(Default)]
pub struct SessionStreams {
    inner: Mutex<SessionBuf>,
}

#[derive(Default)]
struct SessionBuf {
    streams: VecDeque<Arc<Replay>>,
    bytes: u64,
}

/// One stream: its events so far.
pub struct Replay {
    pub number: u64,
    state: Mutex<ReplayState>,
    /// Woken when an event arrives or the stream ends.
    pub changed: Notify,
}

#[derive(Default)]
struct ReplayState {
    /// `(event number, the event's bytes with its id)`, oldest first.
    events: VecDeque<(u64, Bytes)>,
    /// The last event numbered (the first is 1).
    last: u64,
    /// Every event numbered this or lower is gone.
    evicted_through: u64,
    /// The bytes of an event not yet complete.
    partial: BytesMut,
    finished: Option<Instant>,
}

/// What a reader at some event finds next.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// These events, the last of them numbered `.1`.
    Events(Vec<Bytes>, u64),
    /// Nothing yet: wait for [`Replay::changed`].
    Nothing,
    /// The stream ended and the reader has all of it.
    Done,
    /// The events after the reader's were evicted.
    Gap,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Streams {
    /// Starts a stream of `session`.
    pub fn open(
        &self,
        session: &str,
        limits: &ResumableStreams,
    ) -> (Arc<SessionStreams>, Arc<Replay>) {
        self.sweep_now_and_then(limits.retention);
        let streams = Arc::clone(&*self.sessions.entry(session.into()).or_default());
        let replay = {
            let mut buf = lock(&streams.inner);
            let replay = Arc::new(Replay {
                number: self.next_stream.fetch_add(1, Ordering::Relaxed),
                state: Mutex::default(),
                changed: Notify::new(),
            });
            buf.streams.push_back(Arc::clone(&replay));
            replay
        };
        (streams, replay)
    }

    /// Stream `number` of `session`, while it is kept.
    pub fn find(&self, session: &str, number: u64) -> Option<Arc<Replay>> {
        let streams = self.sessions.get(session)?;
        let buf = lock(&streams.inner);
        buf.streams.iter().find(|r| r.number == number).cloned()
    }

    /// Bytes of the stream's body as they come: complete events are numbered and kept; memory
    /// over the bounds is freed, oldest events first.
    pub fn feed(
        &self,
        session: &SessionStreams,
        replay: &Replay,
        chunk: &[u8],
        limits: &ResumableStreams,
    ) {
        let added = {
            let mut state = lock(&replay.state);
            state.partial.extend_from_slice(chunk);
            let mut added = 0;
            loop {
                let end = match event_end(&state.partial) {
                    Some(end) => end,
                    // One event bigger than a session may keep: pass it on as it is so far.
                    None if state.partial.len() as u64 > limits.buffer_bytes_per_session => {
                        state.partial.len()
                    }
                    None => break,
                };
                let raw = state.partial.split_to(end);
                added += state.push(replay.number, &raw);
            }
            added
        };
        if added > 0 {
            self.account(session, added, limits);
            replay.changed.notify_waiters();
        }
    }

    /// The stream's body ended: what is left becomes its last event.
    pub fn finish(&self, session: &SessionStreams, replay: &Replay, limits: &ResumableStreams) {
        let added = {
            let mut state = lock(&replay.state);
            let rest = state.partial.split();
            let added = if rest.iter().all(u8::is_ascii_whitespace) {
                0
            } else {
                let mut rest = rest.to_vec();
                rest.extend_from_slice(b"\n\n");
                state.push(replay.number, &rest)
            };
            state.finished = Some(Instant::now());
            added
        };
        if added > 0 {
            self.account(session, added, limits);
        }
        replay.changed.notify_waiters();
    }

    /// What a reader that has every event up to `after` reads next.
    pub fn read_after(&self, replay: &Replay, after: u64) -> Read {
        let state = lock(&replay.state);
        if after < state.evicted_through {
            return Read::Gap;
        }
        let events: Vec<Bytes> = state
            .events
            .iter()
            .filter(|(n, _)| *n > after)
            .map(|(_, b)| b.clone())
            .collect();
        match (events.is_empty(), state.finished.is_some()) {
            (false, _) => Read::Events(events, state.last),
            (true, true) => Read::Done,
            (true, false) => Read::Nothing,
        }
    }

    /// Event bytes buffered now, all sessions.
    pub fn buffered(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn account(&self, session: &SessionStreams, added: u64, limits: &ResumableStreams) {
        let mut buf = lock(&session.inner);
        buf.bytes += added;
        let mut total = self.total.fetch_add(added, Ordering::Relaxed) + added;
        while buf.bytes > limits.buffer_bytes_per_session || total > limits.buffer_bytes_total {
            let reason = if buf.bytes > limits.buffer_bytes_per_session {
                "session_cap"
            } else {
                "total_cap"
            };
            let Some(freed) = buf
                .streams
                .iter()
                .find_map(|r| lock(&r.state).evict_oldest())
            else {
                break;
            };
            buf.bytes = buf.bytes.saturating_sub(freed);
            total = self.sub_total(freed);
            metrics::counter!("sessiongate_replay_evicted_events_total", "reason" => reason)
                .increment(1);
        }
        metrics::gauge!("sessiongate_replay_buffer_bytes").set(total as f64);
    }

    /// Takes `freed` off the total, never below zero; the total after.
    fn sub_total(&self, freed: u64) -> u64 {
        let before = self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(freed))
            })
            .unwrap_or(0);
        before.saturating_sub(freed)
    }

    fn sweep_now_and_then(&self, retention: Duration) {
        {
            let mut last = lock(&self.last_sweep);
            if last.elapsed() < SWEEP_EVERY {
                return;
            }
            *last = Instant::now();
        }
        self.sweep(retention);
    }

    /// Forgets streams finished longer than `retention` ago, and sessions left without any.
    pub fn sweep(&self, retention: Duration) {
        self.sessions.retain(|_, streams| {
            let mut buf = lock(&streams.inner);
            let mut freed = 0;
            buf.streams.retain(|r| {
                let state = lock(&r.state);
                let expired = state.finished.is_some_and(|at| at.elapsed() >= retention);
                if expired {
                    freed += state.bytes();
                }
                !expired
            });
            buf.bytes = buf.bytes.saturating_sub(freed);
            self.sub_total(freed);
            !buf.streams.is_empty()
        });
        metrics::gauge!("sessiongate_replay_buffer_bytes").set(self.buffered() as f64);
    }
}

impl ReplayState {
    /// Numbers one raw event and keeps it; its size.
    fn push(&mut self, stream: u64, raw: &[u8]) -> u64 {
        self.last += 1;
        let event = numbered(raw, &format!("{stream}.{}", self.last));
        let len = event.len() as u64;
        self.events.push_back((self.last, event));
        len
    }

    fn evict_oldest(&mut self) -> Option<u64> {
        let (n, event) = self.events.pop_front()?;
        self.evicted_through = n;
        Some(event.len() as u64)
    }

    fn bytes(&self) -> u64 {
        self.events.iter().map(|(_, e)| e.len() as u64).sum()
    }
}

/// Where the first event in `buf` ends: just past its blank line (`\n\n` or `\n\r\n`).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = buf[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| from + p)
    {
        let rest = &buf[at + 1..];
        if rest.starts_with(b"\n") {
            return Some(at + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(at + 3);
        }
        from = at + 1;
    }
    None
}

/// The event with `id: {id}` first and any id of its own dropped (the last id field would win).
fn numbered(raw: &[u8], id: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len() + id.len() + 5);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\n");
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text == b"id" || text.starts_with(b"id:") {
            continue;
        }
        out.extend_from_slice(line);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_session: u64, total: u64) -> ResumableStreams {
        ResumableStreams {
            buffer_bytes_per_session: per_session,
            buffer_bytes_total: total,
            retention: Duration::from_millis(0),
        }
    }

    fn text(read: Read) -> (String, u64) {
        match read {
            Read::Events(events, last) => (
                events
                    .iter()
                    .map(|e| String::from_utf8_lossy(e).into_owned())
                    .collect(),
                last,
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_are_numbered_across_chunk_boundaries_and_read_from_any_point() {
        let streams = Streams::default();
        let l = limits(1 << 20, 1 << 30);
        let (session, replay) = streams.open("s", &l);
        streams.feed(&session, &replay, b"data: a\n\nda", &l);
        assert_eq!(
            text(streams.read_after(&replay, 0)),
            ("id: 1.1\ndata: a\n\n".into(), 1)
        );
        streams.feed(
            &session,
            &replay,
            b"ta: b\r\nid: theirs\r\n\r\ndata: c\n\n",
            &l,
        );
        assert_eq!(
            text(streams.read_after(&replay, 1)),
            ("id: 1.2\ndata: b\r\n\r\nid: 1.3\ndata: c\n\n".into(), 3)
        );
        assert_eq!(streams.read_after(&replay, 3), Read::Nothing);
        streams.feed(&session, &replay, b"data: unterminated", &l);
        streams.finish(&session, &replay, &l);
        assert_eq!(text(streams.read_after(&replay, 3)).1, 4);
        assert_eq!(streams.read_after(&replay, 4), Read::Done);
        let (_, second) = streams.open("s", &l);
        assert_eq!(second.number, 2);
        let (_, third) = streams.open("other", &l);
        assert_eq!(
            third.number, 3,
            "numbers are never reused, whatever the session"
        );
        assert!(streams.find("s", 1).is_some() && streams.find("other", 1).is_none());
    }

    #[test]
    fn memory_is_bounded_per_session_and_in_total_and_an_evicted_reader_sees_a_gap() {
        let streams = Streams::default();
        // Each event is 16 bytes numbered ("id: 1.N\ndata: x\n\n").
        let l = limits(40, 1 << 30);
        let (session, replay) = streams.open("s", &l);
        for _ in 0..5 {
            streams.feed(&session, &replay, b"data: x\n\n", &l);
        }
        assert!(streams.buffered() <= 40);
        assert_eq!(streams.read_after(&replay, 1), Read::Gap);
        assert_eq!(text(streams.read_after(&replay, 3)).1, 5);
        // The total bound: another session's stream evicts its own oldest.
        let l = limits(1 << 20, 60);
        let (other, theirs) = streams.open("t", &l);
        for _ in 0..5 {
            streams.feed(&other, &theirs, b"data: y\n\n", &l);
        }
        assert!(streams.buffered() <= 60, "{}", streams.buffered());
        assert_eq!(streams.read_after(&theirs, 0), Read::Gap);
        // Finished streams go after their retention (zero here).
        streams.finish(&session, &replay, &l);
        streams.finish(&other, &theirs, &l);
        streams.sweep(Duration::ZERO);
        assert_eq!(streams.buffered(), 0);
        assert!(streams.find("s", 1).is_none());
    }
}
