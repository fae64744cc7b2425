//! Rate limits for warning and error lines, so one bad client cannot make the gateway write a
//! log line per request it sends.
//!
//! Each `warn!`/`error!` call site may write [`BURST`] lines per [`WINDOW`]; lines over that are
//! dropped and counted, and once per window a summary says how many lines each call site
//! dropped (`repeated log lines suppressed`). Info and debug lines (off by default on the
//! request path) and other call sites are not affected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Lines one call site may write per window.
pub const BURST: u32 = 20;
/// The window, and how often summaries of dropped lines are written.
pub const WINDOW: Duration = Duration::from_secs(10);

/// A per-layer filter: pass it to `with_filter` next to the level filter.
#[derive(Clone, Default)]
pub struct LogRate {
    sites: Arc<Mutex<HashMap<Identifier, Site>>>,
}

struct Site {
    window_start: Instant,
    written: u32,
    dropped: u64,
    name: &'static str,
    location: String,
}

impl LogRate {
    /// Starts the thread that writes the summaries (it lives as long as the process).
    pub fn spawn_reporter(&self) {
        let sites = Arc::clone(&self.sites);
        let spawned = std::thread::Builder::new()
            .name("log-rate".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(WINDOW);
                    for (location, name, dropped) in take_dropped(&sites) {
                        tracing::warn!(
                            target: "sessiongate::log",
                            dropped,
                            location,
                            line = name,
                            "repeated log lines suppressed"
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the log rate reporter");
        }
    }

    fn admit(&self, meta: &'static Metadata<'static>) -> bool {
        let Ok(mut sites) = self.sites.lock() else {
            return true;
        };
        let now = Instant::now();
        let site = sites.entry(meta.callsite()).or_insert_with(|| Site {
            window_start: now,
            written: 0,
            dropped: 0,
            name: meta.name(),
            location: format!(
                "{}:{}",
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or(0)
            ),
        });
        if now.duration_since(site.window_start) >= WINDOW {
            site.window_start = now;
            site.written = 0;
        }
        if site.written < BURST {
            site.written += 1;
            true
        } else {
            site.dropped += 1;
            false
        }
    }
}

/// Every call site's dropped count since the last look, reset to zero.
fn take_dropped(sites: &Mutex<HashMap<Identifier, Site>>) -> Vec<(String, &'static str, u64)> {
    let Ok(mut sites) = sites.lock() else {
        return Vec::new();
    };
    sites
        .values_mut()
        .filter(|s| s.dropped > 0)
        .map(|s| {
            let dropped = std::mem::take(&mut s.dropped);
            (s.location.clone(), s.name, dropped)
        })
        .collect()
}

fn limited(meta: &Metadata<'_>) -> bool {
    meta.is_event() && *meta.level() <= Level::WARN && meta.target() != "sessiongate::log"
}

impl<S> Filter<S> for LogRate {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        // Only the event's own metadata is 'static; everything here is decided per event below.
        let _ = meta;
        true
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if limited(meta) {
            // Asked per event, not cached: the answer changes with the rate.
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        !limited(meta) || self.admit(meta)
    }

    /// Every level passes (only the rate limits). Without a hint, the filter it is combined
    /// with could not give its own: the most verbose level would be in force, and every
    /// `log` record of Pingora's (`debug!`, `trace!`) would be built and then dropped by the
    /// subscriber on every request.
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
}
