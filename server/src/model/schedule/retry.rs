//! Retries of a schedule's failed runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a schedule starts a failed run of its own again: up to `attempts` more runs, the first
/// after `first_wait`, each next one after twice the wait before it, never more than
/// `max_wait`; each wait is shortened by up to a quarter at random so that schedules that
/// failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Runs started again after the first failed; 0 retries nothing.
    pub attempts: u32,
    pub first_wait: Duration,
    pub max_wait: Duration,
}

/// Most retries of one fire.
pub const MAX_RETRY_ATTEMPTS: u32 = 20;

impl Default for RetryPolicy {
    /// No retries.
    fn default() -> Self {
        Self {
            attempts: 0,
            first_wait: Duration::from_secs(10 * 60),
            max_wait: Duration::from_secs(6 * 3600),
        }
    }
}

impl RetryPolicy {
    /// Checks a policy read from `field`: at most [`MAX_RETRY_ATTEMPTS`] attempts, waits of at
    /// least a second, the first no longer than the longest.
    pub fn parse(
        field: &str,
        attempts: u32,
        first_wait: Duration,
        max_wait: Duration,
    ) -> Result<Self> {
        if attempts > MAX_RETRY_ATTEMPTS {
            return Err(Error::invalid(
                format!("{field}.attempts"),
                format!("{attempts} is more than {MAX_RETRY_ATTEMPTS}"),
            ));
        }
        if first_wait < Duration::from_secs(1) {
            return Err(Error::invalid(
                format!("{field}.first_wait"),
                "must be at least one second",
            ));
        }
        if max_wait < first_wait {
            return Err(Error::invalid(
                format!("{field}.max_wait"),
                format!(
                    "{} is shorter than first_wait ({})",
                    humantime::format_duration(max_wait),
                    humantime::format_duration(first_wait)
                ),
            ));
        }
        Ok(Self {
            attempts,
            first_wait,
            max_wait,
        })
    }

    /// When to start retry number `attempt` (1 for the first) of a fire whose last run failed
    /// at `failed_at_ms`, or `None` when the policy has no such attempt or the retry would not
    /// start before `next_fire_ms`, the schedule's next regular fire (a retry never overlaps
    /// it: that fire takes over). `jitter_seed` (the schedule's id, say) makes the time the same
    /// however often it is computed, so a restarted server agrees with the one before.
    pub fn retry_at(
        &self,
        attempt: u32,
        failed_at_ms: i64,
        next_fire_ms: Option<i64>,
        jitter_seed: u128,
    ) -> Option<i64> {
        if attempt == 0 || attempt > self.attempts {
            return None;
        }
        let doubled = self
            .first_wait
            .checked_mul(1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX))
            .unwrap_or(self.max_wait);
        let wait_ms = i64::try_from(doubled.min(self.max_wait).as_millis()).ok()?;
        // Up to a quarter less, the same for the same seed and attempt.
        let jitter_ms = i64::try_from(mix(jitter_seed, attempt) % (wait_ms as u64 / 4 + 1)).ok()?;
        let at = failed_at_ms.checked_add(wait_ms - jitter_ms)?;
        match next_fire_ms {
            Some(next) if at >= next => None,
            _ => Some(at),
        }
    }
}

/// A well-spread 64-bit number from a seed and an attempt (SplitMix64's finalizer): jitter that
/// needs no random source and no state.
fn mix(seed: u128, attempt: u32) -> u64 {
    let mut z = (seed as u64)
        ^ ((seed >> 64) as u64)
        ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_the_longest_wait() {
        let minute = 60_000;
        let policy = RetryPolicy::parse(
            "retry",
            6,
            Duration::from_secs(60),
            Duration::from_secs(10 * 60),
        )
        .expect("valid");
        let seed = 0x0193_a0b4_0000_7000_8000_0000_0000_0001;
        let waits: Vec<i64> = (1..=6)
            .map(|attempt| policy.retry_at(attempt, 0, None, seed).expect("an attempt"))
            .collect();
        // Nominal 1, 2, 4, 8, 10, 10 minutes, each up to a quarter shorter.
        for (wait, nominal) in waits.iter().zip([1, 2, 4, 8, 10, 10]) {
            let nominal = nominal * minute;
            assert!(
                (nominal - nominal / 4..=nominal).contains(wait),
                "{wait} for {nominal}"
            );
        }
        assert_eq!(policy.retry_at(7, 0, None, seed), None, "no 7th attempt");
        assert_eq!(policy.retry_at(0, 0, None, seed), None);
        // The same seed gives the same time; another seed (another schedule) spreads.
        assert_eq!(policy.retry_at(3, 5, None, seed), Some(waits[2] + 5));
        let spread: std::collections::BTreeSet<i64> = (0..20u128)
            .filter_map(|other| policy.retry_at(3, 0, None, other))
            .collect();
        assert!(spread.len() > 10, "{spread:?}");
        // A retry that would reach the next regular fire is left to that fire.
        assert_eq!(policy.retry_at(4, 0, Some(5 * minute), seed), None);
        assert_eq!(
            policy.retry_at(1, 0, Some(5 * minute), seed),
            Some(waits[0])
        );
    }

    #[test]
    fn bad_retry_policies_are_refused_naming_the_field() {
        let second = Duration::from_secs(1);
        for (attempts, first, max, field) in [
            (21, second, second, "retry.attempts"),
            (3, Duration::from_millis(500), second, "retry.first_wait"),
            (3, 10 * second, second, "retry.max_wait"),
        ] {
            match RetryPolicy::parse("retry", attempts, first, max) {
                Err(Error::InvalidArgument { field: named, .. }) => assert_eq!(named, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
