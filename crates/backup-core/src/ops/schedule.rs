//! Cron schedules: five fields, evaluated in a stated time zone.
//!
//! The parser is our own. `croner` 4.0.3 (chrono backend, with chrono-tz) was
//! tried behind this same `Schedule` API against the tests below: steps,
//! ranges, names, the day-of-month OR day-of-week rule and the refused
//! expressions all agreed, but `time_zones_and_dst` fails: for
//! `30 2 * * *` in Europe/Zurich it runs the 02:30 that does not exist on
//! 2026-03-29 at 03:00 local (2026-03-29T01:00Z), where this schedule skips a
//! wall-clock time that never happens. It also accepts six and seven fields
//! (seconds, years), which `[schedule] cron` does not. Hence this parser stays.
//! When clocks go back, a repeated wall-clock time runs once for an
//! expression at fixed hours (the first pass) and in both passes for one
//! that runs every hour, as classic cron does.
use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::{Error, Result};

/// One parsed cron expression: minute, hour, day of month, month, day of week.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CronExpr {
    text: String,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    dom_restricted: bool,
    dow_restricted: bool,
}

impl std::fmt::Display for CronExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field(
    spec: &str,
    min: u32,
    max: u32,
    names: &[&str],
    what: &str,
) -> std::result::Result<(u64, bool), String> {
    let value = |s: &str| -> std::result::Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + min);
        }
        s.parse::<u32>()
            .map_err(|_| format!("{what}: {s:?} is not a number"))
    };
    let mut bits = 0u64;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("{what}: bad step {s:?}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("{what}: step 0"));
        }
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{what}: {part:?} is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, spec != "*"))
}

impl CronExpr {
    /// Parses `minute hour day-of-month month day-of-week` (with `*`, lists,
    /// ranges, steps, month and day names) or `@hourly`, `@daily`,
    /// `@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`.
    pub(crate) fn parse(text: &str) -> Result<CronExpr> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        let bad = |reason: String| Error::Input(format!("cron expression {text:?}: {reason}"));
        if f.len() != 5 {
            return Err(bad(format!(
                "needs 5 fields (minute hour day month weekday), found {}",
                f.len()
            )));
        }
        let (minutes, _) = field(f[0], 0, 59, &[], "minute").map_err(bad)?;
        let (hours, _) = field(f[1], 0, 23, &[], "hour").map_err(bad)?;
        let (days, dom_restricted) = field(f[2], 1, 31, &[], "day of month").map_err(bad)?;
        let (months, _) = field(f[3], 1, 12, &MONTHS, "month").map_err(bad)?;
        let (mut weekdays, dow_restricted) =
            field(f[4], 0, 7, &DAYS, "day of week").map_err(bad)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(CronExpr {
            text: text.trim().to_string(),
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: (weekdays & 0x7f) as u8,
            dom_restricted,
            dow_restricted,
        })
    }

    fn day_matches<T: Datelike>(&self, t: &T) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        // Classic cron: when both are restricted, either one matching is enough.
        match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            _ => dom && dow,
        }
    }

    /// Whether `local` is the second pass of a wall-clock time that a DST
    /// change (clocks set back) makes happen twice, and this expression names
    /// its hours: as in classic cron, a job at fixed hours runs once, at the
    /// first pass; one that runs every hour runs in both.
    fn repeated(&self, local: &DateTime<Tz>, tz: Tz) -> bool {
        const EVERY_HOUR: u32 = (1 << 24) - 1;
        self.hours & EVERY_HOUR != EVERY_HOUR
            && matches!(
                tz.from_local_datetime(&local.naive_local()),
                chrono::LocalResult::Ambiguous(first, _) if first != *local
            )
    }

    /// The first matching minute strictly after `after`, within five years.
    pub(crate) fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let start = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let limit = start + Duration::days(5 * 366);
        let mut t = start;
        while t < limit {
            let local = tz.from_utc_datetime(&t.naive_utc());
            if self.months & (1 << local.month()) == 0
                || !self.day_matches(&local)
                || self.hours & (1 << local.hour()) == 0
            {
                // Jump to the next local hour: safe across DST changes.
                t += Duration::minutes(60 - i64::from(local.minute()));
                continue;
            }
            if self.minutes & (1 << local.minute()) != 0 && !self.repeated(&local, tz) {
                return Some(t);
            }
            t += Duration::minutes(1);
        }
        None
    }
}

/// A set of cron expressions in one time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    exprs: Vec<CronExpr>,
    tz: Tz,
}

impl Schedule {
    /// Parses expressions and an IANA time zone name (`UTC`, `Europe/Zurich`).
    pub fn new(exprs: &[String], timezone: &str) -> Result<Schedule> {
        let tz: Tz = timezone.parse().map_err(|_| {
            Error::Input(format!(
                "unknown time zone {timezone:?} (use an IANA name such as UTC or Europe/Zurich)"
            ))
        })?;
        let exprs = exprs
            .iter()
            .map(|e| CronExpr::parse(e))
            .collect::<Result<Vec<_>>>()?;
        if exprs.is_empty() {
            return Err(Error::Input("[schedule] cron is empty".into()));
        }
        Ok(Schedule { exprs, tz })
    }

    /// The time zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The next run strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.exprs
            .iter()
            .filter_map(|e| e.next_after(after, self.tz))
            .min()
    }

    /// The next `n` runs after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// Scheduled times in `(from, to]` (runs missed while nothing was running).
    pub fn between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cap: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from;
        while let Some(next) = self.next_after(t) {
            if next > to || out.len() >= cap {
                break;
            }
            out.push(next);
            t = next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_and_steps() {
        let s = Schedule::new(&["*/15 2-3 * * *".into()], "UTC").unwrap();
        let next = s.upcoming(utc("2026-11-22T01:59:30Z"), 5);
        let want: Vec<_> = ["02:00", "02:15", "02:30", "02:45", "03:00"]
            .iter()
            .map(|hm| utc(&format!("2026-11-22T{hm}:00Z")))
            .collect();
        assert_eq!(next, want);
    }

    #[test]
    fn names_weekdays_and_dom_or_dow() {
        // 09:30 on weekdays.
        let s = Schedule::new(&["30 9 * * mon-fri".into()], "UTC").unwrap();
        // 2026-11-21 is a Saturday.
        assert_eq!(
            s.next_after(utc("2026-11-21T10:00:00Z")),
            Some(utc("2026-11-23T09:30:00Z"))
        );
        // Day 1 of the month OR a Sunday.
        let s = Schedule::new(&["0 0 1 * sun".into()], "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-11-22T00:00:00Z")),
            Some(utc("2026-11-29T00:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-11-29T00:00:00Z")),
            Some(utc("2026-12-01T00:00:00Z"))
        );
        assert!(Schedule::new(&["0 0 1 jan *".into(), "@daily".into()], "UTC").is_ok());
    }

    #[test]
    fn time_zones_and_dst() {
        // 02:30 local in Zurich does not exist on 2026-03-29 (clocks jump 02:00 → 03:00).
        let s = Schedule::new(&["30 2 * * *".into()], "Europe/Zurich").unwrap();
        let runs = s.upcoming(utc("2026-03-27T12:00:00Z"), 3);
        assert_eq!(
            runs,
            [
                utc("2026-03-28T01:30:00Z"),
                utc("2026-03-30T00:30:00Z"),
                utc("2026-03-31T00:30:00Z")
            ]
        );
        let s = Schedule::new(&["0 2 * * *".into()], "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-11-22T02:00:00Z")),
            Some(utc("2026-11-23T02:00:00Z"))
        );
        // 02:00–03:00 local happens twice on 2026-10-25 (clocks go back
        // 03:00 → 02:00): a job at a fixed hour runs once, at the first pass …
        let s = Schedule::new(&["30 2 * * *".into()], "Europe/Zurich").unwrap();
        assert_eq!(
            s.upcoming(utc("2026-10-24T12:00:00Z"), 3),
            [
                utc("2026-10-25T00:30:00Z"),
                utc("2026-10-26T01:30:00Z"),
                utc("2026-10-27T01:30:00Z")
            ]
        );
        // … and one that runs every hour runs in both.
        let s = Schedule::new(&["30 * * * *".into()], "Europe/Zurich").unwrap();
        assert_eq!(
            s.upcoming(utc("2026-10-24T23:45:00Z"), 3),
            [
                utc("2026-10-25T00:30:00Z"),
                utc("2026-10-25T01:30:00Z"),
                utc("2026-10-25T02:30:00Z")
            ]
        );
    }

    #[test]
    fn rejects_bad_expressions() {
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "*/0 * * * *",
            "a * * * *",
        ] {
            assert!(CronExpr::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(Schedule::new(&["* * * * *".into()], "Mars/Olympus").is_err());
    }

    #[test]
    fn missed_runs_are_counted() {
        let s = Schedule::new(&["0 * * * *".into()], "UTC").unwrap();
        let missed = s.between(
            utc("2026-11-22T00:30:00Z"),
            utc("2026-11-22T05:10:00Z"),
            100,
        );
        assert_eq!(missed.len(), 5);
    }
}
