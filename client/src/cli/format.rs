//! Human renderings of values in tables: sizes, rates, times, durations, labels, enum names.
//!
//! Every function accepts whatever the server sent (absent, negative, out of range) and renders
//! something rather than failing: human output must never be why a command errors.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use coffer_client::proto;

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

/// A transfer rate in binary units: `50.0 MiB/s`; [`NONE`] when idle (0).
pub fn rate(bytes_per_second: u64) -> String {
    if bytes_per_second == 0 {
        return NONE.to_owned();
    }
    format!("{}/s", human_bytes(bytes_per_second))
}

/// `done / total` of a byte count: `1.2 GiB / 10.0 GiB`; only `done` while the total is unknown.
pub fn bytes_of(done: u64, total: u64) -> String {
    if total == 0 {
        human_bytes(done)
    } else {
        format!("{} / {}", human_bytes(done), human_bytes(total))
    }
}

/// `done/total`, or `done` alone when they agree or the total is unknown.
pub fn count_of(done: u64, total: u64) -> String {
    if total == 0 || done == total {
        done.to_string()
    } else {
        format!("{done}/{total}")
    }
}

/// `done / total` bytes, or `done` alone when they agree or the total is unknown.
pub fn size_of(done: u64, total: u64) -> String {
    if done == total {
        human_bytes(done)
    } else {
        bytes_of(done, total)
    }
}

/// The fraction `done / total` as a whole percentage, rounded down so that 100% means finished:
/// `45%`; [`NONE`] while the total is unknown (0).
pub fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return NONE.to_owned();
    }
    let percent = u128::from(done.min(total)) * 100 / u128::from(total);
    format!("{percent}%")
}

/// An estimated time left, as [`compact_duration`] renders it; [`NONE`] when unknown (unset or
/// negative).
pub fn eta(eta: Option<&prost_types::Duration>) -> String {
    match eta.map(|eta| Duration::try_from(*eta)) {
        Some(Ok(eta)) => compact_duration(eta),
        _ => NONE.to_owned(),
    }
}

/// How long a run took or has taken: from `start` to `finish`, or to `now` while unfinished;
/// [`NONE`] before it started or when the times are out of order.
pub fn elapsed(
    start: Option<&prost_types::Timestamp>,
    finish: Option<&prost_types::Timestamp>,
    now: SystemTime,
) -> String {
    let Some(Ok(start)) = start.map(|start| SystemTime::try_from(*start)) else {
        return NONE.to_owned();
    };
    let end = match finish.map(|finish| SystemTime::try_from(*finish)) {
        Some(Ok(finish)) => finish,
        Some(Err(_)) => return NONE.to_owned(),
        None => now,
    };
    match end.duration_since(start) {
        Ok(elapsed) => compact_duration(elapsed),
        Err(_) => NONE.to_owned(),
    }
}

/// A duration to the second in its two largest units: `45s`, `3m20s`, `1h02m`, `2d03h`.
pub fn compact_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (days, hours, minutes, seconds) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

/// An enum value by its name without the type's prefix: `RUNNING` for `RUN_STATE_RUNNING`.
/// `name` is the generated `as_str_name` of the value, `None` when this build does not know the
/// value (a newer server), which renders as `UNKNOWN(7)`; the unspecified value renders as
/// [`NONE`].
pub fn enum_name(value: i32, name: Option<&str>, prefix: &str) -> String {
    match name {
        _ if value == 0 => NONE.to_owned(),
        Some(name) => name.strip_prefix(prefix).unwrap_or(name).to_owned(),
        None => format!("UNKNOWN({value})"),
    }
}

/// `QUEUED`, `RUNNING`, `SUCCEEDED`, ...
pub fn run_state(state: i32) -> String {
    let name = proto::RunState::try_from(state).ok();
    enum_name(state, name.map(|name| name.as_str_name()), "RUN_STATE_")
}

/// `BACKUP` or `RESTORE`.
pub fn run_kind(kind: i32) -> String {
    let name = proto::RunKind::try_from(kind).ok();
    enum_name(kind, name.map(|name| name.as_str_name()), "RUN_KIND_")
}

/// `SNAPSHOTTING`, `UPLOADING`, `DONE`, ...
pub fn node_phase(phase: i32) -> String {
    let name = proto::NodePhase::try_from(phase).ok();
    enum_name(phase, name.map(|name| name.as_str_name()), "NODE_PHASE_")
}

/// `FULL` or `INCREMENTAL`.
pub fn backup_kind(kind: i32) -> String {
    let name = proto::BackupKind::try_from(kind).ok();
    enum_name(kind, name.map(|name| name.as_str_name()), "BACKUP_KIND_")
}

/// An object named by name and id: `prod (0190...)`, or whichever of the two is known.
pub fn name_with_id(name: &str, id: &str) -> String {
    if name.is_empty() {
        or_none(id)
    } else if id.is_empty() || id == name {
        name.to_owned()
    } else {
        format!("{name} ({id})")
    }
}

/// The first `length` characters of an id or hash, for narrow columns.
pub fn short(text: &str, length: usize) -> String {
    text.chars().take(length).collect()
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
    fn rates_and_byte_progress() {
        assert_eq!(rate(0), "-");
        assert_eq!(rate(512), "512 B/s");
        assert_eq!(rate(50 * 1024 * 1024), "50.0 MiB/s");
        assert_eq!(bytes_of(1536, 0), "1.5 KiB");
        assert_eq!(bytes_of(1 << 30, 10 << 30), "1.0 GiB / 10.0 GiB");
        assert_eq!(size_of(1024, 1024), "1.0 KiB");
        assert_eq!(size_of(1024, 0), "1.0 KiB");
        assert_eq!(size_of(1024, 2048), "1.0 KiB / 2.0 KiB");
        assert_eq!(count_of(5, 5), "5");
        assert_eq!(count_of(5, 0), "5");
        assert_eq!(count_of(2, 5), "2/5");
    }

    #[test]
    fn percent_rounds_down_and_never_passes_100() {
        assert_eq!(percent(0, 0), "-");
        assert_eq!(percent(0, 10), "0%");
        assert_eq!(percent(999, 1000), "99%");
        assert_eq!(percent(1000, 1000), "100%");
        assert_eq!(percent(2000, 1000), "100%");
        assert_eq!(percent(u64::MAX - 1, u64::MAX), "99%");
    }

    #[test]
    fn compact_durations_keep_two_units() {
        let of = Duration::from_secs;
        assert_eq!(compact_duration(of(0)), "0s");
        assert_eq!(compact_duration(Duration::from_millis(999)), "0s");
        assert_eq!(compact_duration(of(45)), "45s");
        assert_eq!(compact_duration(of(200)), "3m20s");
        assert_eq!(compact_duration(of(3_720)), "1h02m");
        assert_eq!(compact_duration(of(2 * 86_400 + 3 * 3_600 + 59)), "2d03h");
    }

    #[test]
    fn eta_and_elapsed() {
        let of = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        assert_eq!(eta(of(200).as_ref()), "3m20s");
        assert_eq!(eta(of(-1).as_ref()), "-");
        assert_eq!(eta(None), "-");

        let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(elapsed(at(100).as_ref(), at(145).as_ref(), now), "45s");
        assert_eq!(elapsed(at(100).as_ref(), None, now), "15m00s");
        assert_eq!(elapsed(None, at(145).as_ref(), now), "-");
        assert_eq!(elapsed(at(145).as_ref(), at(100).as_ref(), now), "-");
    }

    #[test]
    fn enum_names_drop_the_prefix() {
        assert_eq!(
            enum_name(2, Some("RUN_STATE_RUNNING"), "RUN_STATE_"),
            "RUNNING"
        );
        assert_eq!(
            enum_name(0, Some("RUN_STATE_UNSPECIFIED"), "RUN_STATE_"),
            "-"
        );
        assert_eq!(enum_name(42, None, "RUN_STATE_"), "UNKNOWN(42)");
        assert_eq!(run_state(proto::RunState::Canceling as i32), "CANCELING");
        assert_eq!(
            node_phase(proto::NodePhase::RunningHook as i32),
            "RUNNING_HOOK"
        );
        assert_eq!(run_kind(proto::RunKind::Restore as i32), "RESTORE");
        assert_eq!(
            backup_kind(proto::BackupKind::Incremental as i32),
            "INCREMENTAL"
        );
        assert_eq!(backup_kind(99), "UNKNOWN(99)");
        assert_eq!(short("0123456789abcdef", 12), "0123456789ab");
        assert_eq!(short("abc", 12), "abc");
        assert_eq!(name_with_id("prod", "c-1"), "prod (c-1)");
        assert_eq!(name_with_id("prod", ""), "prod");
        assert_eq!(name_with_id("", "c-1"), "c-1");
        assert_eq!(name_with_id("", ""), "-");
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
