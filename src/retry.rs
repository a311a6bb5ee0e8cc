//! The one place where failed remote requests are retried.
//!
//! Exponential backoff with jitter; a server's `Retry-After` is honoured; only
//! errors that say they are retryable ([`BackendError::Transient`]: timeouts, resets,
//! 429/5xx, SlowDown) are tried again — authentication, permission, quota and
//! not-found fail fast. Each remote has a total retry budget (`retry_budget`, default
//! 10m): the time all its retries in one run may spend waiting, shared by every request
//! to it (parts uploaded at once included), so a remote that keeps failing gives up
//! instead of holding a push for hours.
//!
//! The loop is the `backon` crate's: its exponential backoff gives the next delay, and
//! our policy sits in its `adjust` hook — a server's `Retry-After` replaces the delay,
//! the delay is jittered, and the remote's budget may stop the retries.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use pronto_backends::BackendError;

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Most attempts of one request (the first included).
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Total waiting all retries of one remote may do (`None`: no limit but `attempts`).
    pub budget: Option<&'static RetryBudget>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            budget: None,
        }
    }
}

impl RetryPolicy {
    /// The default policy with a fresh budget of `limit` (one per opened remote).
    pub fn with_budget(limit: Duration) -> Self {
        RetryPolicy {
            budget: Some(RetryBudget::new_static(limit)),
            ..RetryPolicy::default()
        }
    }
}

/// Default `retry_budget` of a remote.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(600);

/// Time a remote's retries may spend waiting, shared by all its requests.
#[derive(Debug)]
pub struct RetryBudget {
    limit: Duration,
    spent_ms: AtomicU64,
}

impl RetryBudget {
    /// A budget that lives as long as the process (a few bytes per opened remote), so
    /// that [`RetryPolicy`] stays `Copy`.
    pub fn new_static(limit: Duration) -> &'static RetryBudget {
        Box::leak(Box::new(RetryBudget {
            limit,
            spent_ms: AtomicU64::new(0),
        }))
    }

    /// Take `wait` from the budget; false (and nothing taken) when it does not fit.
    fn take(&self, wait: Duration) -> bool {
        let want = wait.as_millis() as u64;
        let limit = self.limit.as_millis() as u64;
        self.spent_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |spent| {
                (spent + want <= limit).then_some(spent + want)
            })
            .is_ok()
    }

    /// Waiting done so far.
    pub fn spent(&self) -> Duration {
        Duration::from_millis(self.spent_ms.load(Ordering::SeqCst))
    }
}

/// Run `op` until it succeeds, fails permanently, or the attempts or the budget are spent.
pub async fn retry<T, F, Fut>(policy: RetryPolicy, what: &str, op: F) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    use backon::{ExponentialBuilder, Retryable};

    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.first_delay)
        .with_max_delay(policy.max_delay)
        .with_factor(2.0)
        .with_max_times(policy.attempts.saturating_sub(1) as usize);
    // Attempts made so far, and why we stopped retrying (for the last error's message).
    let attempts = AtomicU32::new(1);
    let stopped = std::sync::Mutex::new(None::<String>);
    let result = op
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(BackendError::is_retryable)
        .adjust(|e, next| {
            let n = attempts.load(Ordering::SeqCst);
            let stop = |why: String| {
                *stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                None
            };
            let Some(next) = next else {
                return stop(format!("gave up after {n} attempts"));
            };
            let wait = match e {
                BackendError::Transient {
                    retry_after: Some(d),
                    ..
                } => *d,
                _ => jitter(next),
            };
            match policy.budget {
                Some(b) if !b.take(wait) => stop(format!(
                    "gave up after {n} attempts: retry budget of {} spent",
                    humantime::format_duration(b.limit)
                )),
                _ => Some(wait),
            }
        })
        .notify(|e, wait| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            tracing::info!(
                "retrying {what} in {:.1}s (attempt {} of {}): {e}",
                wait.as_secs_f64(),
                n + 1,
                policy.attempts
            );
        })
        .await;
    let why = stopped.into_inner().unwrap_or_else(|p| p.into_inner());
    result.map_err(|e| match why {
        Some(why) => gave_up(e, &why),
        None => e,
    })
}

/// The last error, saying why we stopped retrying.
fn gave_up(e: BackendError, why: &str) -> BackendError {
    match e {
        BackendError::Transient { msg, retry_after } => BackendError::Transient {
            msg: format!("{msg} ({why})"),
            retry_after,
        },
        other => other,
    }
}

/// A delay between half and all of `d` (pseudo-random: spreads out clients that failed
/// together; no need for a real random source).
fn jitter(d: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 over time and a counter
    let mut z = seed ^ STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let frac = 0.5 + (z % 10_000) as f64 / 20_000.0;
    d.mul_f64(frac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 10,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            budget: None,
        }
    }

    /// An op that fails with `errs` in turn, then succeeds; counts its calls.
    fn fake(
        errs: Vec<BackendError>,
    ) -> (
        Arc<AtomicU32>,
        impl FnMut() -> std::future::Ready<Result<u32, BackendError>>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let errs = std::sync::Mutex::new(errs.into_iter());
        let op = move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(match errs.lock().unwrap().next() {
                Some(e) => Err(e),
                None => Ok(n),
            })
        };
        (calls, op)
    }

    fn transient() -> BackendError {
        BackendError::transient("503 Service Unavailable")
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_with_growing_delays() {
        let (calls, op) = fake(vec![transient(), transient(), transient()]);
        let t0 = tokio::time::Instant::now();
        assert_eq!(retry(policy(), "test", op).await.unwrap(), 4);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // 1s + 2s + 4s, each jittered to between half and all of it.
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(3500), "{waited:?}");
        assert!(waited <= Duration::from_secs(7), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_once_on_auth_not_found_and_permanent() {
        for e in [
            BackendError::Auth("403 Forbidden".into()),
            BackendError::NotFound("k".into()),
            BackendError::Permanent("quota exceeded".into()),
        ] {
            let (calls, op) = fake(vec![e]);
            let t0 = tokio::time::Instant::now();
            let err = retry(policy(), "test", op).await.unwrap_err();
            assert!(!err.is_retryable());
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            assert_eq!(t0.elapsed(), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let slow = || BackendError::Transient {
            msg: "429 Too Many Requests".into(),
            retry_after: Some(Duration::from_secs(20)),
        };
        let (calls, op) = fake(vec![slow(), slow()]);
        let t0 = tokio::time::Instant::now();
        retry(policy(), "test", op).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Exactly what the server asked for, beyond max_delay (8s).
        assert_eq!(t0.elapsed(), Duration::from_secs(40));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_attempts_are_spent() {
        let (calls, op) = fake((0..20).map(|_| transient()).collect());
        let p = RetryPolicy {
            attempts: 3,
            ..policy()
        };
        let err = retry(p, "test", op).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(
            err.to_string().contains("gave up after 3 attempts"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn respects_the_budget_shared_by_all_requests_of_a_remote() {
        let p = RetryPolicy {
            attempts: 100,
            budget: Some(RetryBudget::new_static(Duration::from_secs(30))),
            ..policy()
        };
        let wait10 = || BackendError::Transient {
            msg: "SlowDown".into(),
            retry_after: Some(Duration::from_secs(10)),
        };
        // First request: two retries (20s of the 30s budget), then success.
        let (_, op) = fake(vec![wait10(), wait10()]);
        retry(p, "first", op).await.unwrap();
        assert_eq!(p.budget.unwrap().spent(), Duration::from_secs(20));
        // Second request: one more 10s retry fits, the next does not.
        let (calls, op) = fake((0..20).map(|_| wait10()).collect());
        let t0 = tokio::time::Instant::now();
        let err = retry(p, "second", op).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        assert!(
            err.to_string().contains("retry budget of 30s spent"),
            "{err}"
        );
        assert!(
            err.is_retryable(),
            "still the transient error, with a reason"
        );
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(10));
            assert!(j >= Duration::from_secs(5) && j <= Duration::from_secs(10));
        }
    }
}
