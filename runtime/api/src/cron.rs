//! Cron schedules as CronJobs write them: standard 5-field cron (minute hour day-of-month month
//! day-of-week; `*`, `?`, ranges, steps, lists, month and weekday names; day-of-month and
//! day-of-week are ORed when both are restricted) or a macro (`@yearly`, `@annually`,
//! `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`), in UTC. The API validates a
//! CronJob's schedule with it and the CronJob controller runs it.

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Day-of-month or day-of-week was `*`/`?`: the day matches when both match (else either).
    day_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn parse_value(s: &str, names: &[&str], base: u32) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + base);
    }
    s.parse::<u32>()
        .map_err(|_| format!("failed to parse int from {s}"))
}

fn parse_field(field: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("failed to parse int from {s}"))?;
                if step == 0 {
                    return Err(format!("step of range should be a positive number: {part}"));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            star = true;
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (parse_value(a, names, min)?, parse_value(b, names, min)?)
        } else {
            let v = parse_value(range, names, min)?;
            (v, if step.is_some() { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!(
                "value out of range ({min} - {max}) or beginning of range beyond end: {part}"
            ));
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(format!("unrecognized descriptor: {s}")),
            s if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") => {
                return Err(
                    "CRON_TZ or TZ used in schedule is not supported; use spec.timeZone".into(),
                )
            }
            s => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {spec}",
                fields.len()
            ));
        }
        let (minute, _) = parse_field(fields[0], 0, 59, &[])?;
        let (hour, _) = parse_field(fields[1], 0, 23, &[])?;
        let (dom, dom_star) = parse_field(fields[2], 1, 31, &[])?;
        let (month, _) = parse_field(fields[3], 1, 12, &MONTHS)?;
        let (mut dow, dow_star) = parse_field(fields[4], 0, 7, &DAYS)?;
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & !(1 << 7);
        }
        Ok(Schedule {
            minute,
            hour,
            dom,
            month,
            dow,
            day_star: dom_star || dow_star,
        })
    }

    /// Whether the minute starting at `t` (seconds since the epoch, UTC) is scheduled.
    pub fn matches(&self, t: i64) -> bool {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (minute, hour) = ((secs / 60) % 60, secs / 3600);
        if self.minute & (1 << minute) == 0 || self.hour & (1 << hour) == 0 {
            return false;
        }
        let (_, month, day) = cairn_wire::time::civil_from_days(days);
        if self.month & (1 << month) == 0 {
            return false;
        }
        let weekday = (days + 4).rem_euclid(7); // 1970-01-01 was a Thursday.
        let dom_ok = self.dom & (1 << day) != 0;
        let dow_ok = self.dow & (1 << weekday) != 0;
        if self.day_star {
            dom_ok && dow_ok
        } else {
            dom_ok || dow_ok
        }
    }

    /// The first scheduled time strictly after `t` (within five years).
    pub fn next_after(&self, t: i64) -> Option<i64> {
        let mut m = t.div_euclid(60) * 60 + 60;
        let end = t + 5 * 366 * 86_400;
        while m <= end {
            if self.matches(m) {
                return Some(m);
            }
            m += 60;
        }
        None
    }

    /// The latest scheduled time in `(after, until]`.
    pub fn most_recent(&self, after: i64, until: i64) -> Option<i64> {
        let mut m = until.div_euclid(60) * 60;
        while m > after {
            if self.matches(m) {
                return Some(m);
            }
            m -= 60;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_704_067_200;

    #[test]
    fn parses_schedules() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        assert!(s.matches(T0 + 9 * 3600 + 15 * 60)); // Monday 09:15
        assert!(!s.matches(T0 + 8 * 3600));
        assert!(!s.matches(T0 + 5 * 86_400 + 9 * 3600)); // Saturday
        let s = Schedule::parse("0 0 1,15 jan,JUL ?").unwrap();
        assert!(s.matches(T0) && s.matches(T0 + 14 * 86_400) && !s.matches(T0 + 86_400));
        // Both day fields restricted: either matches (1st of the month, or any Sunday).
        let s = Schedule::parse("0 0 1 * 0").unwrap();
        assert!(s.matches(T0) && s.matches(T0 + 6 * 86_400) && !s.matches(T0 + 86_400));
        assert_eq!(Schedule::parse("@daily"), Schedule::parse("0 0 * * *"));
        assert_eq!(Schedule::parse("@weekly"), Schedule::parse("0 0 * * 7"));
        assert_eq!(
            Schedule::parse("5/20 * * * *"),
            Schedule::parse("5,25,45 * * * *")
        );
        assert_eq!(
            Schedule::parse("@hourly").unwrap().next_after(T0 + 1),
            Some(T0 + 3600)
        );
        assert_eq!(
            Schedule::parse("@yearly").unwrap().next_after(T0),
            Some(1_735_689_600)
        );
        for bad in [
            "* * * *",
            "60 * * * *",
            "*/0 * * * *",
            "@every 5m",
            "5-1 * * * *",
            "x * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
