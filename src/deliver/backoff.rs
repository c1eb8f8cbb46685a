//! Retry timing: exponential backoff with full jitter, and `Retry-After` parsing.
//!
//! In: the configured `initial_backoff`/`max_backoff` and the server's `Retry-After`.
//! Out: how long to wait before the next attempt. Guarantees: a wait is never longer than the
//! current ceiling `min(max, initial · 2^attempt)` unless `Retry-After` asks for more, and
//! full jitter (uniform in `[0, ceiling]`) keeps many agents from retrying in lockstep.

use std::time::{Duration, SystemTime};

/// A `Retry-After` longer than this is treated as this: a wrong clock or a typo on the server
/// must not pause delivery for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial` and growing to at most `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The ceiling of the next wait: `min(max, initial · 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The next wait, uniform in `[0, ceiling]`; each call raises the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(0..=micros))
    }

    /// Number of waits handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Start again from `initial` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Parse a `Retry-After` value (delta-seconds or HTTP-date) into a wait from `now`,
/// capped at [`MAX_RETRY_AFTER`]. A date in the past is a zero wait; garbage is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let wait = if value.bytes().all(|b| b.is_ascii_digit()) {
        // Overlong digit strings are still "a long time", not garbage.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = jiff::fmt::rfc2822::DateTimeParser::new()
            .parse_timestamp(value)
            .ok()?;
        let now = jiff::Timestamp::try_from(now).ok()?;
        let delta = at.as_nanosecond() - now.as_nanosecond();
        if delta <= 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(u64::try_from(delta).unwrap_or(u64::MAX))
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_within_exponential_ceiling() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(initial, max);
        for attempt in 0..40u32 {
            let ceiling = b.ceiling();
            let expected = initial
                .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
                .map_or(max, |d| d.min(max));
            assert_eq!(ceiling, expected, "attempt {attempt}");
            for _ in 0..50 {
                let mut probe = b.clone();
                assert!(probe.next_delay() <= ceiling);
            }
            b.next_delay();
        }
        assert_eq!(b.ceiling(), max);
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let mut low = false;
        let mut high = false;
        for _ in 0..2000 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            let d = b.next_delay();
            low |= d < Duration::from_millis(100);
            high |= d > Duration::from_millis(900);
        }
        assert!(
            low && high,
            "full jitter must reach both ends of [0, ceiling]"
        );
    }

    #[test]
    fn reset_returns_to_initial() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(10));
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.attempts(), 5);
        assert_eq!(b.ceiling(), Duration::from_millis(320));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(10));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(300), Duration::from_secs(300));
        b.attempt = u32::MAX;
        assert_eq!(b.ceiling(), Duration::from_secs(300));
        assert!(b.next_delay() <= Duration::from_secs(300));
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_http_date() {
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777 s after the epoch (RFC 9110's example).
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 - 30);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(30))
        );
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 + 30);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
            Some(Duration::ZERO)
        );
        let long_before = SystemTime::UNIX_EPOCH;
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", long_before),
            Some(MAX_RETRY_AFTER)
        );
    }
}
