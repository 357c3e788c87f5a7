//! Five-field cron expressions (minute, hour, day of month, month, day of
//! week) for nightly schedulers, as Vixie cron reads them: `*`, `a-b`, `*/n`,
//! `a-b/n`, lists, month and weekday names, `7` for Sunday, and the `@daily`
//! family. When both day fields are restricted, either one matching is
//! enough. Matching is against a local wall-clock time; the nightly
//! scheduler walks the minutes in its time zone.

use chrono::{Datelike, NaiveDateTime, Timelike};

/// A parsed cron expression: the allowed values of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronExpr {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

/// Why an expression does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CronError(String);

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl CronExpr {
    pub fn parse(text: &str) -> Result<CronExpr, CronError> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with('@') => return Err(CronError(format!("unknown macro {t:?}"))),
            t => t,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            )));
        }
        let minutes = field(fields[0], "minute", 0, 59, &[])?;
        let hours = field(fields[1], "hour", 0, 23, &[])?;
        let days = field(fields[2], "day of month", 1, 31, &[])?;
        let months = field(fields[3], "month", 1, 12, &MONTHS)?;
        let mut weekdays = field(fields[4], "day of week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(CronExpr {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_any: fields[2].starts_with('*'),
            weekdays_any: fields[4].starts_with('*'),
        })
    }

    /// Whether the minute starting at local time `t` matches.
    pub fn matches(&self, t: &NaiveDateTime) -> bool {
        let bit = |set: u64, v: u32| set & (1u64 << v) != 0;
        if !bit(self.minutes, t.minute()) || !bit(self.hours, t.hour()) {
            return false;
        }
        if !bit(self.months, t.month()) {
            return false;
        }
        let day = bit(self.days, t.day());
        let weekday = bit(self.weekdays, t.weekday().num_days_from_sunday());
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => day,
            (true, false) => weekday,
            (false, false) => day || weekday,
        }
    }
}

/// One field as a bit set of allowed values in `lo..=hi`.
fn field(text: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, CronError> {
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| CronError(format!("{what}: bad step {s:?}")))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, what, lo, hi, names)?,
                value(b, what, lo, hi, names)?,
            )
        } else {
            let v = value(range, what, lo, hi, names)?;
            // `5/15` means from 5 to the end, every 15.
            (v, if step > 1 { hi } else { v })
        };
        if from > to {
            return Err(CronError(format!("{what}: range {range:?} runs backwards")));
        }
        let mut v = from;
        while v <= to {
            set |= 1u64 << v;
            v += step;
        }
    }
    Ok(set)
}

fn value(text: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u32, CronError> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        // Month names count from 1, weekday names from 0.
        return Ok(i as u32 + if names.len() == 12 { 1 } else { 0 });
    }
    let v: u32 = text
        .parse()
        .map_err(|_| CronError(format!("{what}: {text:?} is not a number")))?;
    if v < lo || v > hi {
        return Err(CronError(format!("{what}: {v} is outside {lo}..={hi}")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap()
    }

    #[test]
    fn daily_at_a_time() {
        let c = CronExpr::parse("30 2 * * *").unwrap();
        assert!(c.matches(&at(2026, 11, 28, 2, 30)));
        assert!(!c.matches(&at(2026, 11, 28, 2, 31)));
        assert!(!c.matches(&at(2026, 11, 28, 3, 30)));
    }

    #[test]
    fn steps_ranges_lists_and_names() {
        let c = CronExpr::parse("*/15 9-17 * jan,dec mon-fri").unwrap();
        // 2026-12-01 is a Tuesday.
        assert!(c.matches(&at(2026, 12, 1, 9, 45)));
        assert!(!c.matches(&at(2026, 12, 1, 9, 46)));
        assert!(!c.matches(&at(2026, 12, 5, 9, 45)), "Saturday");
        assert!(!c.matches(&at(2026, 11, 3, 9, 45)), "November");
        let sunday = CronExpr::parse("0 0 * * 7").unwrap();
        assert!(sunday.matches(&at(2026, 11, 29, 0, 0)));
    }

    #[test]
    fn both_day_fields_restricted_means_either() {
        let c = CronExpr::parse("0 0 13 * fri").unwrap();
        assert!(c.matches(&at(2026, 11, 13, 0, 0)));
        assert!(c.matches(&at(2026, 11, 27, 0, 0)), "a Friday");
        assert!(!c.matches(&at(2026, 11, 14, 0, 0)));
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "a * * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "@sometimes",
        ] {
            assert!(CronExpr::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(CronExpr::parse("@daily").is_ok());
    }
}
