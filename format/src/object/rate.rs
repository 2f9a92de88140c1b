//! The byte-rate limiter shared by every transfer of an agent (hashing, uploads, downloads).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An async token bucket on bytes, shared by every transfer that clones it: together they move at
/// most `bytes_per_second` (plus a burst of a tenth of a second).
///
/// A transfer takes its bytes first and then waits until the bucket has paid them back, so one
/// large block may make the bucket briefly negative; the average rate still holds.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    bucket: Arc<Mutex<TokenBucket>>,
}

#[derive(Debug)]
struct TokenBucket {
    bytes_per_second: f64,
    capacity: f64,
    tokens: f64,
    last_refill: Instant,
}

impl TokenBucket {
    fn new(bytes_per_second: u64, now: Instant) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        let capacity = (rate / 10.0).max(1.0);
        Self {
            bytes_per_second: rate,
            capacity,
            tokens: capacity,
            last_refill: now,
        }
    }

    /// Takes `bytes` at `now` and says how long the taker must wait for them.
    fn reserve(&mut self, now: Instant, bytes: u64) -> Duration {
        let elapsed = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.last_refill = self.last_refill.max(now);
        self.tokens = (self.tokens + elapsed * self.bytes_per_second).min(self.capacity);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.bytes_per_second)
        }
    }
}

impl RateLimiter {
    /// A limiter of `bytes_per_second` (0 is taken as 1).
    pub fn new(bytes_per_second: u64) -> Self {
        Self {
            bucket: Arc::new(Mutex::new(TokenBucket::new(
                bytes_per_second,
                Instant::now(),
            ))),
        }
    }

    /// The rate this limiter allows.
    pub fn bytes_per_second(&self) -> u64 {
        self.lock().bytes_per_second as u64
    }

    /// Waits until `bytes` may pass.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits until `bytes` may pass, on a thread that may block.
    pub(super) fn acquire_blocking(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    fn reserve(&self, bytes: u64) -> Duration {
        self.lock().reserve(Instant::now(), bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        // The bucket holds plain numbers: a panic elsewhere cannot leave it inconsistent.
        self.bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_bucket_charges_bytes_at_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, start);
        // The burst (a tenth of a second) passes at once, then bytes wait for their time.
        assert_eq!(bucket.reserve(start, 100), Duration::ZERO);
        assert_eq!(bucket.reserve(start, 500), Duration::from_millis(500));
        // Half a second later the debt is paid; the next 1000 bytes take one second.
        let later = start + Duration::from_millis(500);
        assert_eq!(bucket.reserve(later, 1000), Duration::from_secs(1));
        // Idle time refills no more than the burst.
        let idle = later + Duration::from_secs(60);
        assert_eq!(bucket.reserve(idle, 100), Duration::ZERO);
        assert_eq!(bucket.reserve(idle, 1), Duration::from_millis(1));
    }
}
