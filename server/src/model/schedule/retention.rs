//! Retention: which of a schedule's backups to keep.

use std::collections::HashSet;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most backups, days, weeks or months one rule keeps: more is a typo.
pub const MAX_KEEP: u32 = 100_000;

/// Which backups of a schedule to keep: a backup is kept when any rule keeps it, and the newest
/// is always kept. Every rule off keeps everything.
///
/// The calendar rules work as restic's `--keep-daily` and kopia's daily snapshots do: walking
/// from the newest backup back, the newest backup of each day (week, month) is kept, for as
/// many days (weeks, months) that have a backup as the rule says. Days are those of the
/// schedule's time zone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionPolicy {
    /// Keep the newest this many; 0 turns the rule off.
    pub keep_last: u32,
    /// Keep the backups that started within this long before now; `None` turns the rule off.
    pub keep_within: Option<Duration>,
    /// Keep the newest backup of each of the last this many days that have one.
    pub keep_daily: u32,
    /// Keep the newest backup of each of the last this many ISO weeks that have one.
    pub keep_weekly: u32,
    /// Keep the newest backup of each of the last this many months that have one.
    pub keep_monthly: u32,
}

/// A backup as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedBackup<Id> {
    pub id: Id,
    /// When the backup started, in ms since the epoch.
    pub start_ms: i64,
}

/// A calendar bucket a backup falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bucket {
    Day(i16, i16),
    Week(i16, i8),
    Month(i16, i8),
}

impl RetentionPolicy {
    /// Checks a policy read from `field`: no rule keeps more than [`MAX_KEEP`].
    pub fn parse(self, field: &str) -> Result<Self> {
        for (name, value) in [
            ("keep_last", self.keep_last),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
        ] {
            if value > MAX_KEEP {
                return Err(Error::invalid(
                    format!("{field}.{name}"),
                    format!("{value} is more than {MAX_KEEP}"),
                ));
            }
        }
        Ok(Self {
            keep_within: self.keep_within.filter(|within| !within.is_zero()),
            ..self
        })
    }

    /// Whether the policy keeps every backup.
    pub fn keeps_all(&self) -> bool {
        self.keep_last == 0
            && self.keep_within.is_none()
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
    }

    /// The backups, among `backups` (committed backups of the schedule, in any order), that no
    /// rule keeps at `now_ms`, newest first; calendar buckets are those of `zone`.
    pub fn to_delete<Id: Copy>(
        &self,
        backups: &[RetainedBackup<Id>],
        now_ms: i64,
        zone: &TimeZone,
    ) -> Vec<RetainedBackup<Id>> {
        if self.keeps_all() {
            return Vec::new();
        }
        let mut newest_first = backups.to_vec();
        newest_first.sort_by_key(|backup| std::cmp::Reverse(backup.start_ms));
        let within_ms = self
            .keep_within
            .and_then(|within| i64::try_from(within.as_millis()).ok());
        let keep_count = usize::try_from(self.keep_last).unwrap_or(usize::MAX).max(1);
        let mut calendar = [
            (self.keep_daily, HashSet::new()),
            (self.keep_weekly, HashSet::new()),
            (self.keep_monthly, HashSet::new()),
        ];
        let mut doomed = Vec::new();
        for (rank, backup) in newest_first.into_iter().enumerate() {
            let kept_by_count = rank < keep_count;
            let kept_by_age =
                within_ms.is_some_and(|within| now_ms.saturating_sub(backup.start_ms) <= within);
            let mut kept_by_calendar = false;
            for (index, (limit, seen)) in calendar.iter_mut().enumerate() {
                let bucket = bucket(index, backup.start_ms, zone);
                // The first (newest) backup of a bucket not seen yet, while the rule wants more.
                if seen.len() < *limit as usize && seen.insert(bucket) {
                    kept_by_calendar = true;
                }
            }
            if !(kept_by_count || kept_by_age || kept_by_calendar) {
                doomed.push(backup);
            }
        }
        doomed
    }
}

/// The day (0), ISO week (1) or month (2) of `ms` in `zone`.
fn bucket(index: usize, ms: i64, zone: &TimeZone) -> Option<Bucket> {
    let date = Timestamp::from_millisecond(ms)
        .ok()?
        .to_zoned(zone.clone())
        .date();
    Some(match index {
        0 => Bucket::Day(date.year(), date.day_of_year()),
        1 => {
            let week = date.iso_week_date();
            Bucket::Week(week.year(), week.week())
        }
        _ => Bucket::Month(date.year(), date.month()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_newest_the_recent_and_always_the_last() {
        let hour = 3_600_000;
        let backups: Vec<RetainedBackup<u32>> = (0..6)
            .map(|n| RetainedBackup {
                id: n,
                start_ms: i64::from(n) * hour,
            })
            .collect();
        let now = 10 * hour;
        let ids = |policy: RetentionPolicy| -> Vec<u32> {
            policy
                .to_delete(&backups, now, &TimeZone::UTC)
                .iter()
                .map(|b| b.id)
                .collect()
        };
        assert!(ids(RetentionPolicy::default()).is_empty());
        assert_eq!(
            ids(RetentionPolicy {
                keep_last: 2,
                keep_within: None,
                ..RetentionPolicy::default()
            }),
            [3, 2, 1, 0]
        );
        assert_eq!(
            ids(RetentionPolicy {
                keep_last: 0,
                keep_within: Some(Duration::from_secs(6 * 3600)),
                ..RetentionPolicy::default()
            }),
            [3, 2, 1, 0]
        );
        assert_eq!(
            ids(RetentionPolicy {
                keep_last: 1,
                keep_within: Some(Duration::from_secs(7 * 3600)),
                ..RetentionPolicy::default()
            }),
            [2, 1, 0]
        );
        // However short the window, the newest stays.
        assert_eq!(
            ids(RetentionPolicy {
                keep_last: 0,
                keep_within: Some(Duration::from_secs(60)),
                ..RetentionPolicy::default()
            }),
            [4, 3, 2, 1, 0]
        );
    }

    #[test]
    fn calendar_rules_keep_the_newest_backup_of_each_day_week_and_month() {
        let hour = 3_600_000_i64;
        let day = 24 * hour;
        // 2026-01-01 00:00 UTC is a Thursday. Two backups a day (06:00 and 18:00) for 70 days.
        let start = 1_767_225_600_000_i64;
        let backups: Vec<RetainedBackup<i64>> = (0..140)
            .map(|n| RetainedBackup {
                id: n,
                start_ms: start + (n / 2) * day + 6 * hour + (n % 2) * 12 * hour,
            })
            .collect();
        let now = start + 70 * day;
        let kept = |policy: RetentionPolicy, zone: &TimeZone| -> Vec<i64> {
            let doomed: HashSet<i64> = policy
                .to_delete(&backups, now, zone)
                .iter()
                .map(|b| b.id)
                .collect();
            let mut kept: Vec<i64> = backups
                .iter()
                .map(|b| b.id)
                .filter(|id| !doomed.contains(id))
                .collect();
            kept.sort_unstable_by(|a, b| b.cmp(a));
            kept
        };
        // The 18:00 backups of the last three days.
        let daily = RetentionPolicy {
            keep_daily: 3,
            ..RetentionPolicy::default()
        };
        assert_eq!(kept(daily, &TimeZone::UTC), [139, 137, 135]);
        // In UTC+10 the 18:00 UTC backup falls at 04:00 the next local day, so each local day's
        // newest is the 06:00 UTC one (16:00 local), after the newest of all.
        let sydney = TimeZone::get("Australia/Brisbane").expect("zone");
        assert_eq!(kept(daily, &sydney), [139, 138, 136]);
        // Weeks end on Sunday: day 67 (2026-03-09) is a Monday, so the newest of the last
        // week is day 69's, then Sunday 2026-03-08 (day 66), then Sunday 2026-03-01 (day 59).
        let weekly = RetentionPolicy {
            keep_weekly: 3,
            ..RetentionPolicy::default()
        };
        assert_eq!(kept(weekly, &TimeZone::UTC), [139, 133, 119]);
        // Months: March (newest), February's last (day 58, 2026-02-28), January's (day 30).
        let monthly = RetentionPolicy {
            keep_monthly: 5,
            ..RetentionPolicy::default()
        };
        assert_eq!(kept(monthly, &TimeZone::UTC), [139, 117, 61]);
        // Rules add up: any rule that keeps a backup keeps it.
        let both = RetentionPolicy {
            keep_last: 2,
            keep_monthly: 2,
            ..RetentionPolicy::default()
        };
        assert_eq!(kept(both, &TimeZone::UTC), [139, 138, 117]);
    }

    #[test]
    fn rules_keeping_too_many_are_refused_naming_the_field() {
        let policy = RetentionPolicy {
            keep_weekly: MAX_KEEP + 1,
            ..RetentionPolicy::default()
        };
        match policy.parse("retention") {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "retention.keep_weekly"),
            other => panic!("{other:?}"),
        }
    }
}
