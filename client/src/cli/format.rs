//! Human renderings of values in tables: sizes, times, durations, labels.
//!
//! Every function accepts whatever the server sent (absent, negative, out of range) and renders
//! something rather than failing: human output must never be why a command errors.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Shown for an absent or empty value.
pub const NONE: &str = "-";

/// Bytes in binary units: `512 B`, `1.5 KiB`, `931.3 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // f64 is exact enough for one decimal of any u64.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A timestamp as RFC 3339 in UTC to the second: `2025-11-21T22:50:00Z`.
pub fn timestamp(timestamp: Option<&prost_types::Timestamp>) -> String {
    // humantime formats from the epoch to the end of year 9999 only.
    const END_OF_YEAR_9999: i64 = 253_402_300_800;
    match timestamp {
        None => NONE.to_owned(),
        Some(timestamp) if (0..END_OF_YEAR_9999).contains(&timestamp.seconds) => {
            match SystemTime::try_from(*timestamp) {
                Ok(time) => humantime::format_rfc3339_seconds(time).to_string(),
                Err(_) => format!("{}s", timestamp.seconds),
            }
        }
        Some(timestamp) => format!("{}s", timestamp.seconds),
    }
}

/// A short duration for latencies: `850µs`, `12.3ms`, `1.20s`.
pub fn duration(duration: Option<&prost_types::Duration>) -> String {
    let Some(duration) = duration else {
        return NONE.to_owned();
    };
    match Duration::try_from(*duration) {
        Ok(duration) if duration < Duration::from_millis(1) => {
            format!("{}µs", duration.as_micros())
        }
        Ok(duration) if duration < Duration::from_secs(1) => {
            format!("{:.1}ms", duration.as_secs_f64() * 1000.0)
        }
        Ok(duration) => format!("{:.2}s", duration.as_secs_f64()),
        Err(_) => NONE.to_owned(),
    }
}

/// Labels as `k1=v1,k2=v2`, sorted by key.
pub fn labels(labels: &HashMap<String, String>) -> String {
    if labels.is_empty() {
        return NONE.to_owned();
    }
    let mut pairs: Vec<_> = labels.iter().collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The text itself, or [`NONE`] when it is empty.
pub fn or_none(text: &str) -> String {
    if text.is_empty() {
        NONE.to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 * 1024 * 1024), "10.0 MiB");
        assert_eq!(human_bytes(1_000_000_000_000), "931.3 GiB");
        assert_eq!(human_bytes(1 << 40), "1.0 TiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn timestamps_render_as_rfc3339_seconds() {
        let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        assert_eq!(
            timestamp(at(1_700_000_000, 999_000_000).as_ref()),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(timestamp(None), "-");
        // Out of humantime's range: still rendered, never a panic.
        assert_eq!(timestamp(at(-5, 0).as_ref()), "-5s");
        assert_eq!(
            timestamp(at(i64::MAX, 0).as_ref()),
            format!("{}s", i64::MAX)
        );
    }

    #[test]
    fn durations_pick_a_readable_unit() {
        let of = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(duration(of(0, 850_000).as_ref()), "850µs");
        assert_eq!(duration(of(0, 12_340_000).as_ref()), "12.3ms");
        assert_eq!(duration(of(1, 200_000_000).as_ref()), "1.20s");
        assert_eq!(duration(of(-1, 0).as_ref()), "-");
        assert_eq!(duration(None), "-");
    }

    #[test]
    fn labels_are_sorted() {
        let map = HashMap::from([
            ("team".to_owned(), "db".to_owned()),
            ("env".to_owned(), "prod".to_owned()),
        ]);
        assert_eq!(labels(&map), "env=prod,team=db");
        assert_eq!(labels(&HashMap::new()), "-");
    }
}
