//! The one place where failed remote requests are retried.
//!
//! Exponential backoff with jitter; a server's `Retry-After` is honoured; only
//! errors that say they are retryable (timeouts, resets, 429/5xx, SlowDown) are
//! tried again — authentication, permission, quota and not-found fail fast.

use std::future::Future;
use std::time::Duration;

use pronto_backends::BackendError;

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Run `op` until it succeeds, fails permanently, or the attempts are spent.
pub async fn retry<T, F, Fut>(policy: RetryPolicy, what: &str, mut op: F) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    let mut delay = policy.first_delay;
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < policy.attempts => {
                let wait = match &e {
                    BackendError::Transient {
                        retry_after: Some(d),
                        ..
                    } => *d,
                    _ => jitter(delay),
                };
                tracing::info!(
                    "retrying {what} in {:.1}s (attempt {} of {}): {e}",
                    wait.as_secs_f64(),
                    attempt + 1,
                    policy.attempts
                );
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(policy.max_delay);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A delay between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let frac = 0.5 + (nanos % 1000) as f64 / 2000.0;
    d.mul_f64(frac)
}
