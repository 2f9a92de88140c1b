//! Triggers: when a schedule fires, under the daylight-saving rules, and which fire it owes
//! after a pause in service.
//!
//! Fire times are computed here and nowhere else, as milliseconds since the Unix epoch like
//! every other time of the domain. Calendar arithmetic is the crates' (croner matches the cron
//! expression on the wall clock, jiff owns time zones from its bundled copy of the IANA
//! database, so a server behaves the same whatever `/usr/share/zoneinfo` it runs on); this
//! module only states the rules of the API on top of them:
//!
//! - a wall-clock time that a daylight-saving change skips does not fire (02:30 on the night
//!   the clocks go from 02:00 to 03:00 is not moved to 03:00 or 03:30);
//! - a wall-clock time that occurs twice fires once, at its first occurrence;
//! - an interval is measured in elapsed time, not wall-clock time.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::error::{Error, Result};

/// Shortest interval between the fires of an interval schedule.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// Longest interval accepted: a schedule that fires less than once every ten years is a typo.
pub const MAX_INTERVAL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Most fire times a search walks over looking for one the rules let fire (a cron expression
/// every minute spends at most 60 inside a repeated hour).
const MAX_SKIPPED: usize = 1_000;

/// How far ahead a cron expression must have a fire time to be accepted (`0 0 30 2 *`, the
/// 30th of February, never fires and is refused).
const MAX_SEARCH_YEARS: i64 = 10;

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// At the times of a cron expression in a time zone.
    Cron(Box<CronTrigger>),
    /// Every `interval`, measured from the previous fire.
    Interval(Duration),
}

/// A 5-field cron expression read in a time zone.
#[derive(Debug, Clone)]
pub struct CronTrigger {
    expression: String,
    time_zone: String,
    cron: Cron,
    zone: TimeZone,
}

impl PartialEq for CronTrigger {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.time_zone == other.time_zone
    }
}

impl Eq for CronTrigger {}

impl CronTrigger {
    /// Parses `expression` (fields named `<field>.expression`) in `time_zone` (an IANA name;
    /// empty is UTC, named `<field>.time_zone`).
    ///
    /// Accepts the standard five fields (minute, hour, day of month, month, day of week) with
    /// lists, ranges, steps and three-letter month and weekday names; refuses seconds, years,
    /// the non-standard `L`, `W`, `#` and `?`, and an expression that never fires.
    pub fn parse(field: &str, expression: &str, time_zone: &str) -> Result<Self> {
        let expression_field = format!("{field}.expression");
        let expression = expression.trim();
        check_standard_fields(&expression_field, expression)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|error| {
                Error::invalid(&expression_field, format!("{expression:?}: {error}"))
            })?;
        let zone = if time_zone.is_empty() {
            TimeZone::UTC
        } else {
            TimeZone::get(time_zone).map_err(|_| {
                Error::invalid(
                    format!("{field}.time_zone"),
                    format!("{time_zone:?} is not an IANA time zone (e.g. Europe/Berlin)"),
                )
            })?
        };
        let trigger = Self {
            expression: expression.to_string(),
            time_zone: time_zone.to_string(),
            cron,
            zone,
        };
        let now = Timestamp::now();
        let horizon = now
            .as_millisecond()
            .saturating_add(MAX_SEARCH_YEARS * 366 * 24 * 3600 * 1000);
        match trigger.next_after(now.as_millisecond()) {
            Some(next) if next <= horizon => Ok(trigger),
            _ => Err(Error::invalid(
                expression_field,
                format!("{expression:?} has no fire time in the next {MAX_SEARCH_YEARS} years"),
            )),
        }
    }

    /// The expression as given (trimmed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone as given; empty for UTC.
    pub fn time_zone(&self) -> &str {
        &self.time_zone
    }

    /// The time zone itself.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The first fire time strictly after `after_ms`, under the daylight-saving rules of the
    /// module; `None` when there is none the crates can find.
    fn next_after(&self, after_ms: i64) -> Option<i64> {
        let mut from: Zoned = Timestamp::from_millisecond(after_ms)
            .ok()?
            .to_zoned(self.zone.clone());
        for _ in 0..MAX_SKIPPED {
            let candidate = self.cron.find_next_occurrence(&from, false).ok()?;
            if self.fires_at(&candidate) {
                return Some(candidate.timestamp().as_millisecond());
            }
            from = candidate;
        }
        None
    }

    /// Whether the rules let the expression fire at `candidate`, an occurrence the search
    /// found: its wall-clock time must be one the expression names (a search across a skipped
    /// hour may land on the first time after it) and, when that time occurs twice, this must be
    /// its first occurrence.
    fn fires_at(&self, candidate: &Zoned) -> bool {
        if !self.cron.is_time_matching(candidate).unwrap_or(false) {
            return false;
        }
        let ambiguous = self.zone.to_ambiguous_zoned(candidate.datetime());
        if !ambiguous.is_ambiguous() {
            return true;
        }
        match ambiguous.earlier() {
            Ok(first) => first.timestamp() == candidate.timestamp(),
            Err(_) => false,
        }
    }
}

/// Refuses what croner accepts beyond the standard five fields.
fn check_standard_fields(field: &str, expression: &str) -> Result<()> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(Error::invalid(
            field,
            format!(
                "{expression:?} has {} fields; a cron expression has 5: minute, hour, day of \
                 month, month, day of week (e.g. \"30 2 * * *\")",
                fields.len()
            ),
        ));
    }
    for (index, text) in fields.iter().enumerate() {
        for atom in text.split([',', '-', '/']) {
            let known_name = match index {
                3 => MONTHS.contains(&atom.to_ascii_uppercase().as_str()),
                4 => WEEKDAYS.contains(&atom.to_ascii_uppercase().as_str()),
                _ => false,
            };
            let plain =
                atom == "*" || (!atom.is_empty() && atom.chars().all(|c| c.is_ascii_digit()));
            if !(plain || known_name) {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{expression:?}: {atom:?} in the {} field is not a number{}",
                        ["minute", "hour", "day-of-month", "month", "day-of-week"][index],
                        match index {
                            3 => " or a month name (JAN to DEC)",
                            4 => " or a weekday name (SUN to SAT)",
                            _ => "",
                        }
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl PartialEq for Trigger {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Cron(a), Self::Cron(b)) => a == b,
            (Self::Interval(a), Self::Interval(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Trigger {}

impl Trigger {
    /// An interval trigger (named `field`): at least [`MIN_INTERVAL`], whole seconds.
    pub fn interval(field: &str, interval: Duration) -> Result<Self> {
        if interval < MIN_INTERVAL {
            return Err(Error::invalid(
                field,
                format!(
                    "{} is shorter than the shortest interval, {}",
                    humantime::format_duration(interval),
                    humantime::format_duration(MIN_INTERVAL)
                ),
            ));
        }
        if interval > MAX_INTERVAL {
            return Err(Error::invalid(
                field,
                format!(
                    "{} is longer than the longest interval, 10 years",
                    humantime::format_duration(interval)
                ),
            ));
        }
        if interval.subsec_nanos() != 0 {
            return Err(Error::invalid(field, "must be whole seconds"));
        }
        Ok(Self::Interval(interval))
    }

    /// The time zone whose days, weeks and months retention counts in: the cron expression's,
    /// UTC for an interval.
    pub fn zone(&self) -> TimeZone {
        match self {
            Self::Cron(cron) => cron.zone().clone(),
            Self::Interval(_) => TimeZone::UTC,
        }
    }

    /// The first fire time after `after_ms`: for a cron trigger the next time of the expression
    /// strictly after it; for an interval, `after_ms` plus the interval (`after_ms` being the
    /// previous fire, or the creation or resumption of the schedule).
    pub fn next_fire_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Self::Cron(cron) => cron.next_after(after_ms),
            Self::Interval(interval) => {
                after_ms.checked_add(i64::try_from(interval.as_millis()).ok()?)
            }
        }
    }

    /// The next `count` fire times after `after_ms`, as [`Trigger::next_fire_after`] gives them
    /// one after the other.
    pub fn next_fire_times(&self, after_ms: i64, count: usize) -> Vec<i64> {
        let mut times = Vec::with_capacity(count);
        let mut from = after_ms;
        while times.len() < count {
            match self.next_fire_after(from) {
                Some(next) => {
                    times.push(next);
                    from = next;
                }
                None => break,
            }
        }
        times
    }
}

/// How far back a catch-up looks at the fire times of a cron trigger that passed unfired: the
/// walk over them is bounded (an every-minute schedule of a server down for a year passed half
/// a million), and older ones change nothing but the count.
const CATCH_UP_WINDOW_MS: i64 = 2 * 24 * 3600 * 1000;

/// A fire the scheduler owes a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueFire {
    /// The fire time it stands for: the latest of those that passed. The run's idempotency key
    /// is made of it, so a server that restarts before recording the fire starts no second run.
    pub fire_time_ms: i64,
    /// Fire times before it that passed unfired (the server was down) and that this one fire
    /// makes up for; for a cron trigger counted over the last two days at most.
    pub missed: u64,
    /// The fire time after it.
    pub next_fire_ms: Option<i64>,
}

impl Trigger {
    /// The fire owed at `now_ms` to a schedule whose next fire time is `next_fire_ms`: none
    /// before that time, and one from then on, however many fire times passed since.
    pub fn due(&self, next_fire_ms: i64, now_ms: i64) -> Option<DueFire> {
        if now_ms < next_fire_ms {
            return None;
        }
        let (fire_time_ms, missed) = match self {
            Self::Interval(interval) => {
                let step = i64::try_from(interval.as_millis()).ok()?.max(1);
                let passed = (now_ms - next_fire_ms) / step;
                (next_fire_ms + passed * step, passed.unsigned_abs())
            }
            Self::Cron(_) => {
                let mut fire = next_fire_ms;
                let mut missed = 0;
                if now_ms - fire > CATCH_UP_WINDOW_MS
                    && let Some(recent) = self.next_fire_after(now_ms - CATCH_UP_WINDOW_MS)
                    && recent <= now_ms
                {
                    fire = recent;
                    missed = 1;
                }
                while let Some(later) = self.next_fire_after(fire).filter(|later| *later <= now_ms)
                {
                    fire = later;
                    missed += 1;
                }
                (fire, missed)
            }
        };
        Some(DueFire {
            fire_time_ms,
            missed,
            next_fire_ms: self.next_fire_after(fire_time_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    fn ms(zone: &str, year: i16, month: i8, day: i8, hour: i8, minute: i8) -> i64 {
        let zone = TimeZone::get(zone).expect("zone");
        zone.to_ambiguous_zoned(date(year, month, day).at(hour, minute, 0, 0))
            .earlier()
            .expect("a time")
            .timestamp()
            .as_millisecond()
    }

    /// Wall-clock times, with their UTC offsets, of the next `count` fires after `after`.
    fn wall_times(trigger: &Trigger, zone: &str, after: i64, count: usize) -> Vec<String> {
        let zone = TimeZone::get(zone).expect("zone");
        trigger
            .next_fire_times(after, count)
            .into_iter()
            .map(|fire| {
                Timestamp::from_millisecond(fire)
                    .expect("time")
                    .to_zoned(zone.clone())
                    .strftime("%Y-%m-%d %H:%M %:z")
                    .to_string()
            })
            .collect()
    }

    fn cron(expression: &str, zone: &str) -> Trigger {
        Trigger::Cron(Box::new(
            CronTrigger::parse("cron", expression, zone).expect("valid"),
        ))
    }

    #[test]
    fn a_time_skipped_by_the_spring_change_does_not_fire() {
        // Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
        let daily = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            wall_times(
                &daily,
                "Europe/Berlin",
                ms("Europe/Berlin", 2026, 3, 27, 12, 0),
                3
            ),
            [
                "2026-03-28 02:30 +01:00",
                "2026-03-30 02:30 +02:00",
                "2026-03-31 02:30 +02:00"
            ]
        );
        // A time just after the gap still fires, once.
        let after_gap = cron("30 3 * * *", "Europe/Berlin");
        assert_eq!(
            wall_times(
                &after_gap,
                "Europe/Berlin",
                ms("Europe/Berlin", 2026, 3, 28, 12, 0),
                2
            ),
            ["2026-03-29 03:30 +02:00", "2026-03-30 03:30 +02:00"]
        );
    }

    #[test]
    fn a_time_repeated_by_the_autumn_change_fires_once() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00-02:59 occurs twice.
        let daily = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            wall_times(
                &daily,
                "Europe/Berlin",
                ms("Europe/Berlin", 2026, 10, 24, 12, 0),
                2
            ),
            ["2026-10-25 02:30 +02:00", "2026-10-26 02:30 +01:00"]
        );
        let quarterly = cron("*/30 * * * *", "Europe/Berlin");
        assert_eq!(
            wall_times(
                &quarterly,
                "Europe/Berlin",
                ms("Europe/Berlin", 2026, 10, 25, 1, 45),
                5
            ),
            [
                "2026-10-25 02:00 +02:00",
                "2026-10-25 02:30 +02:00",
                "2026-10-25 03:00 +01:00",
                "2026-10-25 03:30 +01:00",
                "2026-10-25 04:00 +01:00"
            ]
        );
    }

    #[test]
    fn cron_fields_take_lists_ranges_steps_and_names() {
        let trigger = cron("0 */6 * JAN-MAR mon-fri", "");
        // Friday 2027-01-01 00:00 UTC is excluded (strictly after); then 06:00, 12:00, 18:00,
        // then Monday the 4th.
        assert_eq!(
            wall_times(&trigger, "UTC", ms("UTC", 2027, 1, 1, 0, 0), 4),
            [
                "2027-01-01 06:00 +00:00",
                "2027-01-01 12:00 +00:00",
                "2027-01-01 18:00 +00:00",
                "2027-01-04 00:00 +00:00"
            ]
        );
        let listed = cron("5,35 1-2 1,15 * *", "Asia/Tokyo");
        assert_eq!(
            wall_times(&listed, "Asia/Tokyo", ms("Asia/Tokyo", 2027, 5, 2, 0, 0), 3),
            [
                "2027-05-15 01:05 +09:00",
                "2027-05-15 01:35 +09:00",
                "2027-05-15 02:05 +09:00"
            ]
        );
    }

    #[test]
    fn bad_cron_fields_are_refused_naming_the_field() {
        for (expression, zone, field, words) in [
            ("30 2 * *", "", "cron.expression", "4 fields"),
            ("0 30 2 * * *", "", "cron.expression", "6 fields"),
            ("61 * * * *", "", "cron.expression", "\"61 * * * *\""),
            ("0 0 L * *", "", "cron.expression", "\"L\""),
            ("0 0 ? * MON", "", "cron.expression", "\"?\""),
            ("0 0 * * MON#2", "", "cron.expression", "\"MON#2\""),
            ("0 0 * MON *", "", "cron.expression", "month name"),
            ("0 0 30 2 *", "", "cron.expression", "no fire time"),
            ("30 2 * * *", "Mars/Olympus", "cron.time_zone", "IANA"),
        ] {
            let error = CronTrigger::parse("cron", expression, zone).expect_err(expression);
            let Error::InvalidArgument {
                field: named,
                reason,
            } = &error
            else {
                panic!("{expression}: {error}");
            };
            assert_eq!(named, field, "{expression}");
            assert!(reason.contains(words), "{expression}: {reason}");
        }
    }

    #[test]
    fn intervals_are_at_least_a_minute_and_count_elapsed_time() {
        assert!(Trigger::interval("interval", Duration::from_secs(59)).is_err());
        assert!(Trigger::interval("interval", Duration::from_millis(60_500)).is_err());
        let every_six_hours =
            Trigger::interval("interval", Duration::from_secs(6 * 3600)).expect("valid");
        // Across the spring change: 6 h of elapsed time, 7 h on the wall clock.
        let start = ms("Europe/Berlin", 2026, 3, 28, 23, 0);
        assert_eq!(
            wall_times(&every_six_hours, "Europe/Berlin", start, 2),
            ["2026-03-29 06:00 +02:00", "2026-03-29 12:00 +02:00"]
        );
    }

    #[test]
    fn a_fire_is_due_once_however_many_times_passed() {
        let daily = cron("30 2 * * *", "Europe/Berlin");
        let first = ms("Europe/Berlin", 2026, 6, 1, 2, 30);
        assert_eq!(daily.due(first, first - 1), None);
        // On time (the scheduler wakes a little late): that fire, the next day's after it.
        let on_time = daily.due(first, first + 250).expect("due");
        assert_eq!(on_time.fire_time_ms, first);
        assert_eq!(on_time.missed, 0);
        assert_eq!(
            on_time.next_fire_ms,
            Some(ms("Europe/Berlin", 2026, 6, 2, 2, 30))
        );
        // Down from before the 1st until the 3rd at 01:00: one fire, for the 2nd's time.
        let back = daily
            .due(first, ms("Europe/Berlin", 2026, 6, 3, 1, 0))
            .expect("due");
        assert_eq!(back.fire_time_ms, ms("Europe/Berlin", 2026, 6, 2, 2, 30));
        assert_eq!(back.missed, 1);
        assert_eq!(
            back.next_fire_ms,
            Some(ms("Europe/Berlin", 2026, 6, 3, 2, 30))
        );
        // Down for longer than two days: the count covers the last two.
        let long = daily
            .due(first, ms("Europe/Berlin", 2026, 6, 9, 12, 0))
            .expect("due");
        assert_eq!(long.fire_time_ms, ms("Europe/Berlin", 2026, 6, 9, 2, 30));
        assert_eq!(
            long.next_fire_ms,
            Some(ms("Europe/Berlin", 2026, 6, 10, 2, 30))
        );
        assert!((2..=7).contains(&long.missed), "{}", long.missed);
        // Down for a year, every minute: still one fire, for the latest minute, quickly.
        let every_minute = cron("* * * * *", "");
        let start = ms("UTC", 2026, 1, 1, 0, 0);
        let year_later = ms("UTC", 2027, 1, 1, 0, 0) + 30_000;
        let caught_up = every_minute.due(start, year_later).expect("due");
        assert_eq!(caught_up.fire_time_ms, ms("UTC", 2027, 1, 1, 0, 0));
        assert_eq!(caught_up.next_fire_ms, Some(ms("UTC", 2027, 1, 1, 0, 1)));
        assert!(caught_up.missed >= 2 * 24 * 60, "{}", caught_up.missed);

        // An interval keeps its phase: fires stay on the grid of the first one.
        let hourly = Trigger::interval("interval", Duration::from_secs(3600)).expect("valid");
        let hour = 3_600_000;
        let late = hourly.due(10 * hour, 13 * hour + 5).expect("due");
        assert_eq!(
            (late.fire_time_ms, late.missed, late.next_fire_ms),
            (13 * hour, 3, Some(14 * hour))
        );
    }

    #[test]
    fn restricted_day_of_month_and_weekday_fire_on_either_as_in_vixie_cron() {
        // Friday 2026-11-13 is both; the 13th of December is a Sunday; Fridays fire too.
        let either = cron("0 0 13 * FRI", "");
        assert_eq!(
            wall_times(&either, "UTC", ms("UTC", 2026, 11, 12, 0, 0), 4),
            [
                "2026-11-13 00:00 +00:00",
                "2026-11-20 00:00 +00:00",
                "2026-11-27 00:00 +00:00",
                "2026-12-04 00:00 +00:00"
            ]
        );
        assert!(
            wall_times(&either, "UTC", ms("UTC", 2026, 12, 5, 0, 0), 3)
                .contains(&"2026-12-13 00:00 +00:00".to_string())
        );
    }
}
