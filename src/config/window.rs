//! Deploy windows: `deploy_window: { days: [mon-fri], hours: "09:00-17:00",
//! timezone: Europe/Berlin }`. A deploy due outside waits for the next
//! opening; builds are never held back. Time is a parameter here.

use jiff::Timestamp;
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;

/// When deploys may go out.
#[derive(Debug, Clone)]
pub struct DeployWindow {
    /// Monday first.
    pub days: [bool; 7],
    /// Seconds after midnight; an end at or before the start runs past
    /// midnight (the opening day is the day listed).
    pub start: u32,
    pub end: u32,
    pub tz: TimeZone,
    /// As written, for messages: `mon-fri 09:00-17:00 Europe/Berlin`.
    pub text: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(s: &str) -> Option<usize> {
    let s = s.to_ascii_lowercase();
    DAYS.iter().position(|d| s.starts_with(d) && s.len() >= 3)
}

/// `mon`, `mon-fri`, `sat-sun`, `fri-mon` (wrapping).
pub fn parse_days(items: &[String]) -> Result<[bool; 7], String> {
    if items.is_empty() {
        return Ok([true; 7]);
    }
    let mut days = [false; 7];
    for it in items {
        let bad = || format!("invalid day `{it}` (mon..sun, or a range like mon-fri)");
        match it.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day_index(a).ok_or_else(bad)?, day_index(b).ok_or_else(bad)?);
                let mut i = a;
                loop {
                    days[i] = true;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => days[day_index(it).ok_or_else(bad)?] = true,
        }
    }
    Ok(days)
}

fn parse_time(s: &str) -> Option<u32> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    let n = |p: &str| p.parse::<u32>().ok();
    let (h, m, sec) = match parts[..] {
        [h, m] => (n(h)?, n(m)?, 0),
        [h, m, s] => (n(h)?, n(m)?, n(s)?),
        _ => return None,
    };
    (h <= 24 && m < 60 && sec < 60 && h * 3600 + m * 60 + sec <= 86_400)
        .then_some(h * 3600 + m * 60 + sec)
}

/// `09:00-17:00` (seconds allowed: `09:00:30`); `22:00-06:00` runs past
/// midnight.
pub fn parse_hours(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("invalid hours `{s}` (expected HH:MM-HH:MM, e.g. 09:00-17:00)");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b) = (
        parse_time(a).ok_or_else(bad)?,
        parse_time(b).ok_or_else(bad)?,
    );
    if a >= 86_400 {
        return Err(format!(
            "hours `{s}`: a window opens by 23:59:59 (24:00 is the next day's 00:00)"
        ));
    }
    if a == b {
        return Err(format!("hours `{s}` open and close at the same time"));
    }
    Ok((a, b))
}

pub fn parse_timezone(s: &str) -> Result<TimeZone, String> {
    if s.eq_ignore_ascii_case("utc") {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(s).map_err(|e| {
        format!("unknown timezone `{s}` ({e}); use an IANA name such as Europe/Berlin")
    })
}

fn weekday_index(w: Weekday) -> usize {
    w.to_monday_zero_offset() as usize
}

impl DeployWindow {
    /// None when deploys may go now (`now_ms`, ms since the epoch);
    /// otherwise the next opening.
    pub fn next_opening(&self, now_ms: i64) -> Option<i64> {
        let now = Timestamp::from_millisecond(now_ms).ok()?;
        let z = now.to_zoned_datetime(self.tz.clone());
        let secs = z.hour() as u32 * 3600 + z.minute() as u32 * 60 + z.second() as u32;
        let today = z.date();
        let day = weekday_index(today.weekday());
        let yesterday = (day + 6) % 7;
        let open = if self.start < self.end {
            self.days[day] && secs >= self.start && secs < self.end
        } else {
            (self.days[day] && secs >= self.start) || (self.days[yesterday] && secs < self.end)
        };
        if open {
            return None;
        }
        for d in 0..=7i64 {
            let date: Date = today.checked_add(jiff::Span::new().days(d)).ok()?;
            if !self.days[weekday_index(date.weekday())] {
                continue;
            }
            let t = Time::new(
                (self.start / 3600).min(23) as i8,
                ((self.start % 3600) / 60) as i8,
                (self.start % 60) as i8,
                0,
            )
            .ok()?;
            let opening = date
                .to_datetime(t)
                .to_zoned_datetime(self.tz.clone())
                .ok()?;
            let ms = opening.timestamp().as_millisecond();
            if ms > now_ms {
                return Some(ms);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[&str], hours: &str, tz: &str) -> DeployWindow {
        let (start, end) = parse_hours(hours).unwrap();
        DeployWindow {
            days: parse_days(&days.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
            start,
            end,
            tz: parse_timezone(tz).unwrap(),
            text: String::new(),
        }
    }

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn office_hours_in_berlin() {
        let w = window(&["mon-fri"], "09:00-17:00", "Europe/Berlin");
        // Friday 2026-11-27 10:00 in Berlin (UTC+1): open.
        assert_eq!(w.next_opening(ms("2026-11-27T09:00:00Z")), None);
        // Friday 17:30 Berlin: next opening Monday 09:00 Berlin = 08:00Z.
        assert_eq!(
            w.next_opening(ms("2026-11-27T16:30:00Z")),
            Some(ms("2026-11-30T08:00:00Z"))
        );
        // Monday 07:00 Berlin: the same morning.
        assert_eq!(
            w.next_opening(ms("2026-11-30T06:00:00Z")),
            Some(ms("2026-11-30T08:00:00Z"))
        );
        // Summer time (UTC+2): 09:00 Berlin is 07:00Z.
        assert_eq!(
            w.next_opening(ms("2026-07-04T12:00:00Z")),
            Some(ms("2026-07-06T07:00:00Z"))
        );
    }

    #[test]
    fn overnight_windows_and_ranges_that_wrap() {
        let w = window(&["fri-sun"], "22:00-06:00", "UTC");
        // Saturday 03:00: inside Friday night's window.
        assert_eq!(w.next_opening(ms("2026-11-28T03:00:00Z")), None);
        // Monday 03:00: inside Sunday night's window.
        assert_eq!(w.next_opening(ms("2026-11-30T03:00:00Z")), None);
        // Monday noon: Friday 22:00.
        assert_eq!(
            w.next_opening(ms("2026-11-30T12:00:00Z")),
            Some(ms("2026-12-04T22:00:00Z"))
        );
        assert_eq!(
            parse_days(&["sat-mon".into()]).unwrap(),
            [true, false, false, false, false, true, true]
        );
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        assert!(parse_hours("9-5").unwrap_err().contains("HH:MM-HH:MM"));
        assert!(parse_hours("09:00-09:00").is_err());
        assert!(parse_hours("24:00-06:00").unwrap_err().contains("00:00"));
        assert_eq!(parse_hours("00:00-24:00").unwrap(), (0, 86_400));
        assert!(
            parse_days(&["funday".into()])
                .unwrap_err()
                .contains("mon..sun")
        );
        assert!(parse_timezone("Mars/Olympus").unwrap_err().contains("IANA"));
        assert!(parse_timezone("Europe/Berlin").is_ok());
    }
}
