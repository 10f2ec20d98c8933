//! Retry delays: a pure function of the attempt, a server's hint and a
//! random number, so it is unit-tested and the same for every caller.

use std::time::Duration;

const BASE: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(60 * 60);

/// The delay before attempt `attempt + 1`, after `attempt` (≥ 1) failed.
///
/// Exponential from 1 s, doubling per attempt, capped at 1 h, with ±20 %
/// jitter from `random` (in `[0, 1)`) so retries from many jobs spread out.
/// A `Retry-After` hint from the server is honoured when it asks for longer,
/// clamped to [1 s, 1 h] so a bad header can neither hammer nor stall.
pub fn retry_delay(attempt: u32, retry_after: Option<Duration>, random: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let base = BASE.saturating_mul(1u32 << exp).min(MAX);
    let factor = 0.8 + 0.4 * random.clamp(0.0, 1.0);
    let jittered = base.mul_f64(factor).min(MAX);
    match retry_after {
        Some(hint) => jittered.max(hint.clamp(BASE, MAX)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_with_bounded_jitter() {
        assert_eq!(retry_delay(1, None, 0.5), Duration::from_secs(1));
        assert_eq!(retry_delay(2, None, 0.5), Duration::from_secs(2));
        assert_eq!(retry_delay(5, None, 0.5), Duration::from_secs(16));
        assert_eq!(
            retry_delay(4, None, 0.0),
            Duration::from_secs(8).mul_f64(0.8)
        );
        assert_eq!(
            retry_delay(4, None, 1.0),
            Duration::from_secs(8).mul_f64(1.2)
        );
        for a in 1..40 {
            let d = retry_delay(a, None, 0.99);
            assert!(d <= MAX, "attempt {a}: {d:?}");
            assert!(d >= retry_delay(a.saturating_sub(1).max(1), None, 0.0));
        }
        assert_eq!(retry_delay(0, None, 0.5), Duration::from_secs(1));
        assert_eq!(retry_delay(u32::MAX, None, 1.0), MAX);
    }

    #[test]
    fn honours_retry_after_within_bounds() {
        let hint = Some(Duration::from_secs(120));
        assert_eq!(retry_delay(1, hint, 0.5), Duration::from_secs(120));
        // The exponential delay wins when it is longer than the hint.
        assert_eq!(retry_delay(10, hint, 0.5), Duration::from_secs(512));
        // Absurd hints are clamped.
        assert_eq!(
            retry_delay(1, Some(Duration::ZERO), 0.5),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(86_400 * 30)), 0.5),
            MAX
        );
    }
}
