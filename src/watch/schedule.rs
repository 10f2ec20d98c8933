//! When to poll an image: its cron schedule plus a per-image jitter, so
//! thousands of images on one schedule do not fire in the same second.

use std::hash::{Hash, Hasher};
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};

use crate::store::Millis;

/// A parsed cron schedule (with seconds).
#[derive(Clone, Debug)]
pub struct Schedule(cron::Schedule);

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        cron::Schedule::from_str(expr)
            .map(Schedule)
            .map_err(|e| e.to_string())
    }

    /// The first fire time strictly after `now`, shifted by the image's
    /// jitter: a stable offset in [0, min(period / 2, 60 s)) derived from
    /// its name, so the same image always polls at the same point of its
    /// period and the set of images spreads evenly.
    pub fn next_after(&self, now: Millis, image: &str) -> Option<Millis> {
        let t = to_utc(now)?;
        let mut upcoming = self.0.after(&t);
        let first = upcoming.next()?.timestamp_millis();
        let second = upcoming.next().map(|d| d.timestamp_millis());
        let period = second.map_or(60_000, |s| s - first).max(1);
        let spread = (period / 2).clamp(1, 60_000);
        Some(first + jitter(image) % spread)
    }
}

fn to_utc(ms: Millis) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn jitter(image: &str) -> i64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    image.hash(&mut h);
    (h.finish() >> 1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_within_the_period_with_spread() {
        let every_5m = Schedule::parse("0 */5 * * * *").unwrap();
        let now = 1_800_000_000_000; // a whole minute
        let mut seconds = std::collections::HashSet::new();
        for i in 0..1000 {
            let name = format!("registry.example.com/app{i}:1");
            let next = every_5m.next_after(now, &name).unwrap();
            assert!(
                next > now && next <= now + 5 * 60_000 + 60_000,
                "{}",
                next - now
            );
            // stable for the same image
            assert_eq!(every_5m.next_after(now, &name), Some(next));
            seconds.insert(next / 1000);
        }
        assert!(
            seconds.len() > 50,
            "1000 images spread over {} seconds only",
            seconds.len()
        );
        let every_s = Schedule::parse("* * * * * *").unwrap();
        let next = every_s.next_after(now, "x").unwrap();
        assert!(next > now && next < now + 2_000);
        assert!(Schedule::parse("nope").is_err());
    }
}
