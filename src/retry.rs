//! Waiting, one way for the whole agent. A call to something remote is retried with exponential
//! backoff and full jitter — each wait a random part of the growing bound, so a fleet that failed
//! together does not retry together — for as long as a next try can start before one overall
//! deadline ([`retry`]). A local condition is polled at a steady pace until a deadline
//! ([`poll`]).

use std::future::Future;
use std::time::{Duration, Instant};

use crate::deadline::Deadline;

/// How the waits between tries grow: the n-th wait is a random part of `min(cap, base * 2^n)`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

/// Why one try failed.
#[derive(Debug)]
pub enum Failure<T, P> {
    /// Worth another try (a timeout, throttling, a 5xx).
    Transient(T),
    /// Worth another try, and the server said how long to wait first (`Retry-After`,
    /// `x-amz-retry-after`).
    TransientAfter(T, Duration),
    /// Another try would fail the same way.
    Permanent(P),
}

/// Why [`retry`] stopped.
#[derive(Debug)]
pub enum Stopped<T, P> {
    Permanent(P),
    /// The deadline left no room for another try; `last` is the last try's error.
    GaveUp {
        last: T,
        attempts: u32,
        waited: Duration,
    },
}

/// Calls `attempt` (with the attempt's number, from 1) until it succeeds or fails permanently,
/// or until the deadline leaves no room for the next wait.
pub async fn retry<V, T, P, F, Fut>(
    backoff: Backoff,
    deadline: Duration,
    mut attempt: F,
) -> Result<V, Stopped<T, P>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<V, Failure<T, P>>>,
{
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (last, asked) = match attempt(attempts).await {
            Ok(value) => return Ok(value),
            Err(Failure::Permanent(error)) => return Err(Stopped::Permanent(error)),
            Err(Failure::Transient(error)) => (error, Duration::ZERO),
            Err(Failure::TransientAfter(error, asked)) => (error, asked.min(backoff.cap)),
        };
        // Never sooner than the server asked (up to the cap), and spread by the same jitter, so
        // a fleet told the same time does not come back at once.
        let wait = asked + jittered(backoff, attempts);
        let waited = started.elapsed();
        if waited + wait >= deadline {
            return Err(Stopped::GaveUp {
                last,
                attempts,
                waited,
            });
        }
        tokio::time::sleep(wait).await;
    }
}

/// The error of a call to an outside service: whether another try can help, and, once the tries
/// ran out, the same error saying how many there were.
pub trait Retryable: Sized {
    fn is_transient(&self) -> bool;
    /// How long the server asked to wait before the next try, if it said.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    fn after(self, attempts: u32, waited: Duration) -> Self;
}

/// [`retry`] for calls whose errors are [`Retryable`]: the transient ones are tried again, and
/// the last one says how many tries were made over how long.
pub async fn retry_call<V, E, F, Fut>(
    backoff: Backoff,
    within: Duration,
    mut call: F,
) -> Result<V, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<V, E>>,
{
    let tried = retry(backoff, within, |_| {
        let attempt = call();
        async move {
            attempt
                .await
                .map_err(|e| match (e.is_transient(), e.retry_after()) {
                    (true, Some(asked)) => Failure::TransientAfter(e, asked),
                    (true, None) => Failure::Transient(e),
                    (false, _) => Failure::Permanent(e),
                })
        }
    })
    .await;
    tried.map_err(|stopped| match stopped {
        Stopped::Permanent(e) => e,
        Stopped::GaveUp {
            last,
            attempts,
            waited,
        } => last.after(attempts, waited),
    })
}

/// The backoff of calls to AWS, which bootagent applies itself: the SDKs' standard base (1 s),
/// with a cap of 8 s rather than their 20 s. bench/fleet measured it against a throttling bucket:
/// with the 20 s cap, the last of 300 agents still waited out long waits after the bucket had
/// room again (1.86× the ideal time); see docs/benchmarks.md.
pub const AWS_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(8),
};

/// What a failed call says before the retries count its attempts.
pub const ONE_ATTEMPT: &str = "1 attempt";

/// How a give-up is told: `5 attempts over 12.3s`.
pub fn tries(attempts: u32, waited: Duration) -> String {
    let waited = Duration::from_millis(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
    let plural = if attempts == 1 { "" } else { "s" };
    format!(
        "{attempts} attempt{plural} over {}",
        humantime::format_duration(waited)
    )
}

/// A wait a server asked for before the next try, in milliseconds: small, since it travels
/// inside errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked(u32);

impl Asked {
    pub fn duration(self) -> Duration {
        Duration::from_millis(u64::from(self.0))
    }
}

/// How long a server asked to wait before the next try: `x-amz-retry-after` (milliseconds, what
/// AWS services send) or else `Retry-After` in seconds (HTTP's; its date form is not honoured).
/// A number too large for [`Asked`] asks for longer than any cap: it is kept as the longest.
pub fn server_asked(x_amz_retry_after: Option<&str>, retry_after: Option<&str>) -> Option<Asked> {
    let number = |value: Option<&str>| {
        let digits = value?.trim();
        let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        all_digits.then(|| digits.parse::<u128>().unwrap_or(u128::MAX))
    };
    number(x_amz_retry_after)
        .or_else(|| number(retry_after).map(|seconds| seconds.saturating_mul(1000)))
        .map(|ms| Asked(u32::try_from(ms).unwrap_or(u32::MAX)))
}

/// What one look at a condition found.
pub enum Look<T, P, E> {
    Ready(T),
    /// Not yet, and what was seen: look again after the interval.
    Pending(P),
    Failed(E),
}

/// Why [`poll`] stopped without the condition ready.
#[derive(Debug, PartialEq, Eq)]
pub enum Unready<P, E> {
    Failed(E),
    /// The limit passed; what the last look saw.
    TimedOut(P),
}

/// Looks at a condition every `interval` until it is ready or failed, or `limit` has passed.
/// The first look is at once, the last one at the limit.
pub async fn poll<T, P, E, F, Fut>(
    interval: Duration,
    limit: Duration,
    mut look: F,
) -> Result<T, Unready<P, E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Look<T, P, E>>,
{
    let deadline = Deadline::after(limit);
    loop {
        let pending = match look().await {
            Look::Ready(value) => return Ok(value),
            Look::Failed(error) => return Err(Unready::Failed(error)),
            Look::Pending(seen) => seen,
        };
        let left = deadline.left();
        if left.is_zero() {
            return Err(Unready::TimedOut(pending));
        }
        tokio::time::sleep(interval.min(left)).await;
    }
}

/// A random duration in `[0, bound)` for the n-th wait (full jitter).
pub fn jittered(backoff: Backoff, attempt: u32) -> Duration {
    let doubled = backoff.base.saturating_mul(
        1u32.checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX),
    );
    random_part_of(doubled.min(backoff.cap))
}

/// A uniformly spread duration in `[0, bound)`, from the kernel's randomness.
pub fn random_part_of(bound: Duration) -> Duration {
    use std::io::Read;
    let millis = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
    if millis == 0 {
        return Duration::ZERO;
    }
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map(|()| u64::from_ne_bytes(bytes))
        .unwrap_or_else(|_| u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    Duration::from_millis(random % millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const FAST: Backoff = Backoff {
        base: Duration::from_millis(2),
        cap: Duration::from_millis(8),
    };

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let result: Result<u32, Stopped<&str, ()>> =
            retry(FAST, Duration::from_secs(5), |n| async move {
                if n < 3 {
                    Err(Failure::Transient("busy"))
                } else {
                    Ok(n)
                }
            })
            .await;
        assert_eq!(result.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_permanent_failure_stops_at_once() {
        let calls = Cell::new(0);
        let result: Result<(), Stopped<(), &str>> = retry(FAST, Duration::from_secs(5), |_| {
            calls.set(calls.get() + 1);
            async { Err(Failure::Permanent("denied")) }
        })
        .await;
        assert!(matches!(result, Err(Stopped::Permanent("denied"))));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn the_deadline_ends_the_tries_and_counts_them() {
        let result: Result<(), Stopped<&str, ()>> =
            retry(FAST, Duration::from_millis(100), |_| async {
                Err(Failure::Transient("down"))
            })
            .await;
        let Err(Stopped::GaveUp { last, attempts, .. }) = result else {
            panic!("expected to give up");
        };
        assert_eq!(last, "down");
        // Waits of at most 8 ms within 100 ms: several tries, however slow the machine.
        assert!(attempts >= 2, "{attempts}");
    }

    #[tokio::test]
    async fn a_wait_the_server_asked_for_is_kept_up_to_the_cap() {
        let patient = Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(200),
        };
        let twice = |asked| {
            retry(patient, Duration::from_secs(30), move |n| async move {
                match n {
                    1 => Err(Failure::<(), ()>::TransientAfter((), asked)),
                    _ => Ok(()),
                }
            })
        };
        let started = Instant::now();
        twice(Duration::from_millis(150)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        // An hour asked is held to the cap.
        let started = Instant::now();
        twice(Duration::from_secs(3600)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn the_server_says_how_long_in_milliseconds_or_seconds() {
        let ms = |text, seconds| server_asked(text, seconds).map(Asked::duration);
        assert_eq!(ms(Some("1500"), None), Some(Duration::from_millis(1500)));
        assert_eq!(ms(None, Some("2")), Some(Duration::from_secs(2)));
        // AWS's own header wins over HTTP's.
        assert_eq!(ms(Some("250"), Some("9")), Some(Duration::from_millis(250)));
        assert_eq!(
            server_asked(None, Some("Wed, 21 Oct 2026 07:28:00 GMT")),
            None
        );
        assert_eq!(server_asked(Some("soon"), None), None);
        assert_eq!(server_asked(None, None), None);
        // Beyond u32 (and u64): the longest wait, which the cap then bounds.
        let longest = Some(Duration::from_millis(u64::from(u32::MAX)));
        assert_eq!(ms(None, Some("4294967296")), longest);
        assert_eq!(ms(Some(&"9".repeat(50)), None), longest);
    }

    #[test]
    fn waits_are_random_parts_of_a_capped_doubling_bound() {
        for attempt in 1..40 {
            let bound = FAST
                .base
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(FAST.cap);
            assert!(jittered(FAST, attempt) < bound, "attempt {attempt}");
        }
        let spread: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| random_part_of(Duration::from_secs(10)))
            .collect();
        assert!(spread.len() > 40, "not spread: {spread:?}");
        assert_eq!(random_part_of(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn poll_returns_what_is_ready_failed_or_last_seen_at_the_limit() {
        let looks = Cell::new(0);
        let ready: Result<u32, Unready<(), ()>> =
            poll(Duration::from_millis(1), Duration::from_secs(5), || {
                looks.set(looks.get() + 1);
                let n = looks.get();
                async move {
                    if n == 3 {
                        Look::Ready(n)
                    } else {
                        Look::Pending(())
                    }
                }
            })
            .await;
        assert_eq!(ready, Ok(3));
        let started = Instant::now();
        let never: Result<(), Unready<&str, ()>> = poll(
            Duration::from_millis(5),
            Duration::from_millis(20),
            || async { Look::Pending("activating") },
        )
        .await;
        assert_eq!(never, Err(Unready::TimedOut("activating")));
        assert!(started.elapsed() >= Duration::from_millis(20));
        let failed: Result<(), Unready<(), &str>> =
            poll(Duration::from_millis(5), Duration::from_secs(5), || async {
                Look::Failed("gone")
            })
            .await;
        assert_eq!(failed, Err(Unready::Failed("gone")));
    }
}
