//! Request parking (`park_ms` per runtime): a request refused only because there is no room
//! *right now* — the gateway's or its caller's session limit, a rate limit, a full static pool,
//! too many requests in its session — waits up to `park_ms` for room instead of getting its
//! 402/429 at once. At most `limits.max_parked_requests` wait at a time (a request past that is
//! answered at once); none waits longer than its runtime's `park_ms`. Waiting requests look
//! again every [`POLL`] (on a replica, each look is one round trip to Redis).

use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::GatewayError;

/// How often a parked request looks for room.
const POLL: Duration = Duration::from_millis(50);

/// One request's parking: started at its first refusal.
pub struct Parking {
    park: Duration,
    since: Option<(Instant, OwnedSemaphorePermit)>,
}

impl Parking {
    pub fn new(park: Duration) -> Self {
        Self { park, since: None }
    }

    /// After a refusal: waits for the next look and returns `Ok`, or gives the refusal back when
    /// it is not about room, parking is off or full, or the request has waited `park_ms`.
    pub async fn wait(
        &mut self,
        spaces: &std::sync::Arc<Semaphore>,
        e: GatewayError,
    ) -> Result<(), GatewayError> {
        if self.park.is_zero() || !for_want_of_room(&e) {
            return Err(e);
        }
        let started = match &self.since {
            Some((started, _)) => *started,
            None => {
                let Ok(permit) = std::sync::Arc::clone(spaces).try_acquire_owned() else {
                    metrics::counter!("sessiongate_parked_total", "outcome" => "full").increment(1);
                    return Err(e);
                };
                let now = Instant::now();
                self.since = Some((now, permit));
                now
            }
        };
        let left = self.park.saturating_sub(started.elapsed());
        if left.is_zero() {
            metrics::counter!("sessiongate_parked_total", "outcome" => "expired").increment(1);
            return Err(e);
        }
        tokio::time::sleep(left.min(POLL)).await;
        Ok(())
    }
}

impl Parking {
    /// The request got its room (after waiting, if it did).
    pub fn admitted(&self) {
        if self.since.is_some() {
            metrics::counter!("sessiongate_parked_total", "outcome" => "admitted").increment(1);
        }
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        if let Some((started, _)) = &self.since {
            metrics::histogram!("sessiongate_park_duration_seconds")
                .record(started.elapsed().as_secs_f64());
        }
    }
}

/// Refusals that room freed a moment later would have avoided.
fn for_want_of_room(e: &GatewayError) -> bool {
    matches!(e, GatewayError::Rejected(_) | GatewayError::PoolExhausted)
}
