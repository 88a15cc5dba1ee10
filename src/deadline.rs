//! When a piece of work must be done by: the boot's `boot.deadline`, and the share of it each
//! step may take. Every step asks the same type what is left, so none computes it by hand.

use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    /// How long it was when set, as messages name it (`10m`), not what was left when it passed.
    length: Duration,
}

impl Deadline {
    /// `length` from now; one beyond what the clock can add (a `--timeout` of centuries) is a
    /// year, as good as forever here.
    pub fn after(length: Duration) -> Deadline {
        let now = Instant::now();
        let at = now
            .checked_add(length)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 60 * 60));
        Deadline { at, length }
    }

    /// The same deadline, but never less than `margin` from now: for work that could start only
    /// late, and must still get a moment.
    pub fn at_least(self, margin: Duration) -> Deadline {
        Deadline {
            at: self.at.max(Instant::now() + margin),
            ..self
        }
    }

    /// What is left of it; zero once it passed.
    pub fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Its length as messages say it: `10m`, `1m 30s`.
    pub fn length(&self) -> String {
        humantime::format_duration(self.length).to_string()
    }

    /// `work`, unless the deadline passes first: then it is dropped (cancelled) and `Expired`.
    pub async fn limit<T>(&self, work: impl Future<Output = T>) -> Result<T, Expired> {
        tokio::time::timeout_at(self.at.into(), work)
            .await
            .map_err(|_| Expired)
    }
}

/// The deadline passed before the work was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_left_shrinks_to_zero_and_the_length_stays_as_set() {
        let deadline = Deadline::after(Duration::from_millis(30));
        assert!(deadline.left() <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(deadline.left(), Duration::ZERO);
        assert_eq!(deadline.length(), "30ms");
    }

    #[test]
    fn a_length_beyond_the_clock_is_a_far_deadline_and_a_margin_extends_a_passed_one() {
        let forever = Deadline::after(Duration::MAX);
        assert!(forever.left() > Duration::from_secs(300 * 24 * 60 * 60));
        let passed = Deadline::after(Duration::ZERO);
        assert_eq!(passed.left(), Duration::ZERO);
        let extended = passed.at_least(Duration::from_secs(5));
        assert!(extended.left() > Duration::from_secs(4), "{extended:?}");
        assert_eq!(extended.length(), "0s");
        assert!(forever.at_least(Duration::from_secs(5)).left() > Duration::from_secs(60));
    }

    #[tokio::test]
    async fn work_past_the_deadline_is_cut_off_and_work_within_it_finishes() {
        let deadline = Deadline::after(Duration::from_millis(50));
        assert_eq!(deadline.limit(async { 7 }).await, Ok(7));
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(deadline.limit(slow).await, Err(Expired));
    }
}
