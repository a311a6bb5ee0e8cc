//! Bandwidth limits: `push --bwlimit 10MiB` and a remote's `bwlimit` key, a rate or a
//! timetable like rclone's (`"08:00-18:00 2MiB, 18:00-08:00 off"`, local time).
//!
//! Applied by [`ThrottledBackend`], a [`Backend`] wrapper: every body sent (`put`,
//! `put_part`) and every chunk read (`get`) first takes its bytes from the remote's one
//! token clock, shared by all parts in flight, so the remote's total stays within the rate
//! averaged over a part or two (parts are sent whole once their time has come).

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use pronto_backends::{
    Backend, ByteStream, Capabilities, ObjectMeta, PartReceipt, Result, UploadId,
};
use tokio::time::Instant;

/// A rate limit: always the same, or by time of day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// `(from, to, bytes per second)` in minutes after local midnight; `None` = no limit.
    /// A window with `to <= from` runs over midnight. Outside every window: no limit.
    windows: Vec<(u32, u32, Option<u64>)>,
}

impl Schedule {
    /// Parse `10MiB`, `512KiB`, `off`, or `"08:00-18:00 2MiB, 18:00-08:00 off"`.
    /// Units: `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB` (binary, as rclone), `KB`/`MB`/`GB`
    /// (decimal); per second.
    pub fn parse(s: &str) -> std::result::Result<Schedule, String> {
        let s = s.trim();
        if !s.contains('-') || !s.contains(':') {
            return Ok(Schedule {
                windows: vec![(0, 24 * 60, parse_rate(s)?)],
            });
        }
        let mut windows = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (span, rate) = part.split_once(char::is_whitespace).ok_or_else(|| {
                format!("'{part}': expected HH:MM-HH:MM RATE, like \"08:00-18:00 2MiB\"")
            })?;
            let (from, to) = span
                .split_once('-')
                .ok_or_else(|| format!("'{span}': expected HH:MM-HH:MM"))?;
            windows.push((parse_hm(from)?, parse_hm(to)?, parse_rate(rate)?));
        }
        Ok(Schedule { windows })
    }

    /// The limit at `minute` after local midnight (`None`: unlimited).
    pub fn rate_at(&self, minute: u32) -> Option<u64> {
        self.windows
            .iter()
            .find(|(from, to, _)| {
                if from < to {
                    (*from..*to).contains(&minute)
                } else {
                    minute >= *from || minute < *to
                }
            })
            .and_then(|w| w.2)
    }

    /// The limit now, in local time.
    pub fn rate_now(&self) -> Option<u64> {
        use chrono::Timelike;
        let now = chrono::Local::now();
        self.rate_at(now.hour() * 60 + now.minute())
    }
}

fn parse_hm(s: &str) -> std::result::Result<u32, String> {
    let s = s.trim();
    let bad = || format!("'{s}': expected a time like 08:00 (00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h * 60 + m > 24 * 60 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// `10MiB` → bytes per second; `off` (or `0`) → `None`.
pub fn parse_rate(s: &str) -> std::result::Result<Option<u64>, String> {
    let s = s.trim();
    let t = s.strip_suffix("/s").unwrap_or(s);
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("'{s}': expected a rate like 10MiB, 512KiB or off");
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "k" | "KiB" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return Err(bad()),
    };
    let v = (n * mult).round() as u64;
    Ok(if v == 0 { None } else { Some(v) })
}

/// One remote's token clock.
#[derive(Debug)]
pub struct Limiter {
    schedule: Schedule,
    /// When the bytes taken so far will have been sent at the rate.
    next: Mutex<Option<Instant>>,
}

impl Limiter {
    pub fn new(schedule: Schedule) -> Limiter {
        Limiter {
            schedule,
            next: Mutex::new(None),
        }
    }

    /// Wait until `n` more bytes may go to `remote` (named in the debug log, which records
    /// every metered body and the wait it took: what the end-to-end tests observe).
    pub async fn acquire(&self, remote: &str, n: u64) {
        let rate = self.schedule.rate_now();
        let waited = self.acquire_at(n, rate).await;
        if let Some(rate) = rate {
            tracing::debug!(
                "bwlimit {remote}: {n} bytes at {rate} B/s after waiting {:.3}s",
                waited.as_secs_f64()
            );
        }
    }

    /// Take `n` bytes from the clock at `rate` and sleep until they may go; returns how
    /// long that was.
    async fn acquire_at(&self, n: u64, rate: Option<u64>) -> Duration {
        let Some(rate) = rate else {
            *self.next.lock().unwrap() = None;
            return Duration::ZERO;
        };
        let (start, now) = {
            let mut next = self.next.lock().unwrap();
            let now = Instant::now();
            let start = next.map_or(now, |t| t.max(now));
            *next = Some(start + Duration::from_secs_f64(n as f64 / rate as f64));
            (start, now)
        };
        tokio::time::sleep_until(start).await;
        start - now
    }
}

/// A backend whose transfers go through a [`Limiter`].
pub struct ThrottledBackend {
    inner: Arc<dyn Backend>,
    limiter: Arc<Limiter>,
}

impl ThrottledBackend {
    pub fn new(inner: Arc<dyn Backend>, schedule: Schedule) -> ThrottledBackend {
        ThrottledBackend {
            inner,
            limiter: Arc::new(Limiter::new(schedule)),
        }
    }
}

#[async_trait]
impl Backend for ThrottledBackend {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        let stream = self.inner.get(key, range).await?;
        let limiter = self.limiter.clone();
        let remote = self.inner.describe();
        Ok(stream
            .then(move |item| {
                let limiter = limiter.clone();
                let remote = remote.clone();
                async move {
                    if let Ok(b) = &item {
                        limiter.acquire(&remote, b.len() as u64).await;
                    }
                    item
                }
            })
            .boxed())
    }
    async fn put(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta> {
        self.limiter
            .acquire(&self.inner.describe(), body.len() as u64)
            .await;
        self.inner.put(key, body, sha256).await
    }
    async fn create_upload(&self, key: &str) -> Result<UploadId> {
        self.inner.create_upload(key).await
    }
    async fn create_upload_for(&self, key: &str, sha256: [u8; 32]) -> Result<UploadId> {
        self.inner.create_upload_for(key, sha256).await
    }
    async fn put_part(
        &self,
        key: &str,
        up: &UploadId,
        n: u32,
        body: Bytes,
        sha256: [u8; 32],
    ) -> Result<PartReceipt> {
        self.limiter
            .acquire(&self.inner.describe(), body.len() as u64)
            .await;
        self.inner.put_part(key, up, n, body, sha256).await
    }
    async fn complete_upload(
        &self,
        key: &str,
        up: &UploadId,
        parts: &[PartReceipt],
        sha256: [u8; 32],
    ) -> Result<ObjectMeta> {
        self.inner.complete_upload(key, up, parts, sha256).await
    }
    async fn abort_upload(&self, key: &str, up: &UploadId) -> Result<()> {
        self.inner.abort_upload(key, up).await
    }
    fn supports_put_if_absent(&self) -> bool {
        self.inner.supports_put_if_absent()
    }
    async fn put_if_absent(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta> {
        self.inner.put_if_absent(key, body, sha256).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn list_uploads(&self, prefix: &str) -> Result<Option<Vec<(String, UploadId)>>> {
        self.inner.list_uploads(prefix).await
    }
    async fn versioning(&self) -> Result<Option<pronto_backends::Versioning>> {
        self.inner.versioning().await
    }
    async fn store_checksum(&self, key: &str) -> Result<Option<pronto_backends::StoreChecksum>> {
        self.inner.store_checksum(key).await
    }
    fn sha256_is_computed_from_stored_bytes(&self) -> bool {
        self.inner.sha256_is_computed_from_stored_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10MiB"), Ok(Some(10 * MIB)));
        assert_eq!(parse_rate("10M"), Ok(Some(10 * MIB)));
        assert_eq!(parse_rate("512KiB/s"), Ok(Some(512 * 1024)));
        assert_eq!(parse_rate("1.5MiB"), Ok(Some(3 * MIB / 2)));
        assert_eq!(parse_rate("2MB"), Ok(Some(2_000_000)));
        assert_eq!(parse_rate("off"), Ok(None));
        assert_eq!(parse_rate("0"), Ok(None));
        for bad in ["", "fast", "10 parsecs", "-1M"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timetables() {
        let s = Schedule::parse("08:00-18:00 2MiB, 18:00-08:00 off").unwrap();
        assert_eq!(s.rate_at(8 * 60), Some(2 * MIB));
        assert_eq!(s.rate_at(17 * 60 + 59), Some(2 * MIB));
        assert_eq!(s.rate_at(18 * 60), None);
        assert_eq!(s.rate_at(3 * 60), None);
        let s = Schedule::parse("22:00-06:00 off, 06:00-22:00 1MiB").unwrap();
        assert_eq!(s.rate_at(23 * 60), None);
        assert_eq!(s.rate_at(5 * 60), None);
        assert_eq!(s.rate_at(12 * 60), Some(MIB));
        let s = Schedule::parse("4MiB").unwrap();
        assert_eq!(s.rate_at(0), Some(4 * MIB));
        assert_eq!(s.rate_at(24 * 60 - 1), Some(4 * MIB));
        for bad in [
            "08:00-18:00",
            "8-18 1M",
            "08:00-25:00 1M",
            "08:00-18:00 lots",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_spaces_transfers_at_the_rate() {
        let l = Limiter::new(Schedule::parse("off").unwrap());
        let t0 = Instant::now();
        // 4 parts of 2 MiB at 1 MiB/s: the first goes at once, the last after 6 s.
        let mut waits = Vec::new();
        for _ in 0..4 {
            waits.push(l.acquire_at(2 * MIB, Some(MIB)).await);
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(6));
        let secs = |s| Duration::from_secs(s);
        assert_eq!(waits, [secs(0), secs(2), secs(2), secs(2)]);
        // Unlimited: no waiting, and the clock resets.
        assert_eq!(l.acquire_at(100 * MIB, None).await, Duration::ZERO);
        assert_eq!(t0.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn parts_in_flight_share_one_clock() {
        let l = Arc::new(Limiter::new(Schedule::parse("off").unwrap()));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire_at(MIB, Some(MIB)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
    }
}
