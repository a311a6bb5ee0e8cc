//! The prune lease: a lock object `PREFIX.prune-lease.json` in a remote's namespace,
//! created with a conditional write (`put_if_absent`), holding host, pid, start and
//! expiry; refreshed while the prune runs, deleted after it, and taken over once it has
//! expired (a prune that was killed), or at once when its holder was a process of this
//! host that is gone. Two prunes never run at once on one namespace;
//! uploads never take it.
//!
//! Every backend here has the conditional create: `file://` (a no-clobber link), `s3://`
//! (`If-None-Match: *`), `gs://` (`x-goog-if-generation-match: 0`) and `sftp://` (a
//! no-overwrite hard link of a verified temp file). The lease lives in the remote's
//! namespace: with `host_id`, each host has its own (`<host_id>/PREFIX.prune-lease.json`),
//! since a prune only ever touches its own namespace.
//!
//! A backend without a conditional create (none today; a wrapper that forgot to pass it
//! on) prunes without a lease, with a warning.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use pronto_backends::{sha256_of, BackendError};
use serde::{Deserialize, Serialize};

use crate::replicate::RemoteHandle;
use crate::retry::retry;

/// How long a lease lasts without a refresh.
pub const TTL: Duration = Duration::from_secs(600);

/// The lease object's key.
pub fn key(prefix: &str) -> String {
    format!("{prefix}.prune-lease.json")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Body {
    host: String,
    pid: u32,
    started: DateTime<Utc>,
    expires: DateTime<Utc>,
}

impl Body {
    fn bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec_pretty(self).unwrap_or_default())
    }
}

/// A lease held on one remote; [`release`](Lease::release) it when done.
pub struct Lease {
    r: RemoteHandle,
    key: String,
    refresher: tokio::task::JoinHandle<()>,
}

/// Take the prune lease of `r` (`None`: the backend has no conditional create).
pub async fn acquire(r: &RemoteHandle, prefix: &str) -> Result<Option<Lease>> {
    acquire_with(r, prefix, TTL).await
}

/// [`acquire`] with a given time to live.
pub async fn acquire_with(r: &RemoteHandle, prefix: &str, ttl: Duration) -> Result<Option<Lease>> {
    if !r.backend.supports_put_if_absent() {
        tracing::warn!(
            "{}: pruning without a lease ({} offers no conditional create): do not prune this namespace from two places at once",
            r.name,
            r.backend.describe()
        );
        return Ok(None);
    }
    let key = key(prefix);
    let started = Utc::now();
    let body = Body {
        host: crate::host_namespace::default_host_id(),
        pid: std::process::id(),
        started,
        expires: started + ttl,
    };
    let mut took_over = false;
    // The holder released the lease between our create and our read: try again, a few times.
    let mut vanished = 0;
    loop {
        let bytes = body.bytes();
        let sha = sha256_of(&bytes);
        let res = retry(r.retry, &format!("prune lease on {}", r.name), || {
            r.backend.put_if_absent(&key, bytes.clone(), sha)
        })
        .await;
        match res {
            Ok(_) => break,
            Err(BackendError::AlreadyExists(_)) if !took_over => {
                let held = match read(r, &key).await? {
                    Held::Gone if vanished < 3 => {
                        vanished += 1;
                        continue;
                    }
                    Held::Gone => {
                        return Err(anyhow::anyhow!(
                            "{}: the prune lease {key} keeps appearing and disappearing: another prune is starting and stopping; try again",
                            r.name
                        ))
                    }
                    // Just created or being written (an SFTP server without hard links
                    // shows a lease empty for a moment): look once more before calling it
                    // unreadable.
                    Held::Unreadable => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match read(r, &key).await? {
                            Held::Body(h) => Some(h),
                            _ => None,
                        }
                    }
                    Held::Body(h) => Some(h),
                };
                match held {
                    // Ours: an earlier attempt of this very call created it and its answer
                    // was lost (the retry then found it).
                    Some(h)
                        if h.host == body.host
                            && h.pid == body.pid
                            && h.started == body.started =>
                    {
                        break
                    }
                    // Held by a process of this host that is gone (killed): taken over at
                    // once, not after its expiry.
                    Some(h) if h.expires > Utc::now() && dead_here(&h, &body) => {
                        tracing::warn!(
                            "{}: repaired: took over the prune lease {key} of pid {} on this host ({}), since {}: that process is gone",
                            r.name,
                            h.pid,
                            h.host,
                            h.started.to_rfc3339()
                        );
                        retry(r.retry, &format!("removal of stale {key}"), || {
                            r.backend.delete(&key)
                        })
                        .await
                        .with_context(|| format!("{}: removing stale {key}", r.name))?;
                        took_over = true;
                    }
                    Some(h) if h.expires > Utc::now() => {
                        return Err(anyhow::anyhow!(
                            "another prune holds the lease {key} on {}: host {}, pid {}, since {}, until {} (wait for it; remove {key} only if that prune is gone)",
                            r.name,
                            h.host,
                            h.pid,
                            h.started.to_rfc3339(),
                            h.expires.to_rfc3339()
                        ));
                    }
                    stale => {
                        tracing::warn!(
                            "{}: taking over a stale prune lease ({})",
                            r.name,
                            match stale {
                                Some(h) => format!(
                                    "host {}, pid {}, expired at {}",
                                    h.host,
                                    h.pid,
                                    h.expires.to_rfc3339()
                                ),
                                None => "unreadable".into(),
                            }
                        );
                        retry(r.retry, &format!("removal of stale {key}"), || {
                            r.backend.delete(&key)
                        })
                        .await
                        .with_context(|| format!("{}: removing stale {key}", r.name))?;
                        took_over = true;
                    }
                }
            }
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("{}: taking the prune lease {key}", r.name))
            }
        }
    }
    // Refresh at a third of the time to live, for as long as the prune runs.
    let refresher = {
        let r = r.clone();
        let key = key.clone();
        let mut body = body.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                body.expires = Utc::now() + ttl;
                let bytes = body.bytes();
                let sha = sha256_of(&bytes);
                if let Err(e) = r.backend.put(&key, bytes, sha).await {
                    tracing::warn!("{}: refreshing the prune lease: {e}", r.name);
                }
            }
        })
    };
    Ok(Some(Lease {
        r: r.clone(),
        key,
        refresher,
    }))
}

/// Whether lease `h` was taken by a process of this very host (`me.host`) that no longer
/// exists. Never for a host named `localhost` (the fallback name: two machines may share
/// it), and never for a pid that exists or cannot be checked.
fn dead_here(h: &Body, me: &Body) -> bool {
    if h.host != me.host || h.host == "localhost" || h.pid == me.pid {
        return false;
    }
    let Ok(pid) = libc::pid_t::try_from(h.pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// What a lease object read back holds.
enum Held {
    /// Gone again (released since).
    Gone,
    /// There, but not a lease (empty, cut short, garbage).
    Unreadable,
    Body(Body),
}

/// Read the lease at `key`. A failed read is an error, never "unreadable": a lease that
/// could not be read must not be taken over.
async fn read(r: &RemoteHandle, key: &str) -> Result<Held> {
    let got = retry(r.retry, &format!("read of {key} on {}", r.name), || async {
        pronto_backends::collect(r.backend.get(key, None).await?).await
    })
    .await;
    match got {
        Ok(bytes) => Ok(match serde_json::from_slice(&bytes) {
            Ok(b) => Held::Body(b),
            Err(_) => Held::Unreadable,
        }),
        Err(BackendError::NotFound(_)) => Ok(Held::Gone),
        Err(e) => Err(anyhow::Error::new(e))
            .with_context(|| format!("{}: reading the prune lease {key}", r.name)),
    }
}

impl Lease {
    /// Stop refreshing and delete the lease object.
    pub async fn release(self) {
        self.refresher.abort();
        let _ = self.refresher.await;
        let r = &self.r;
        if let Err(e) = retry(r.retry, &format!("release of {}", self.key), || {
            r.backend.delete(&self.key)
        })
        .await
        {
            tracing::warn!(
                "{}: could not remove the prune lease {} (it expires by itself): {e}",
                r.name,
                self.key
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pronto_backends::local::LocalBackend;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn handle(dir: &std::path::Path) -> RemoteHandle {
        RemoteHandle {
            name: "nas".into(),
            backend: Arc::new(LocalBackend::new(dir.to_path_buf()).unwrap()),
            part_concurrency: 1,
            retry: crate::retry::RetryPolicy::default(),
        }
    }

    #[tokio::test]
    async fn one_holder_at_a_time_released_and_stale_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let r = handle(dir.path());
        let lease = acquire(&r, "p").await.unwrap().unwrap();
        let held: Body =
            serde_json::from_slice(&std::fs::read(dir.path().join("p.prune-lease.json")).unwrap())
                .unwrap();
        assert_eq!(held.pid, std::process::id());
        let err = acquire(&r, "p").await.err().unwrap().to_string();
        assert!(err.contains("another prune holds the lease"), "{err}");
        lease.release().await;
        assert!(!dir.path().join("p.prune-lease.json").exists());

        // A lease that expired (its prune was killed) is taken over.
        let stale = Body {
            host: "gone".into(),
            pid: 1,
            started: Utc::now() - chrono::TimeDelta::hours(2),
            expires: Utc::now() - chrono::TimeDelta::hours(1),
        };
        std::fs::write(dir.path().join("p.prune-lease.json"), stale.bytes()).unwrap();
        let lease = acquire(&r, "p").await.unwrap().unwrap();
        lease.release().await;
        // So is an unreadable one.
        std::fs::write(dir.path().join("p.prune-lease.json"), "garbage").unwrap();
        acquire(&r, "p").await.unwrap().unwrap().release().await;
    }

    #[tokio::test]
    async fn a_long_prune_keeps_its_lease_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let r = handle(dir.path());
        let ttl = Duration::from_secs(2);
        let lease = acquire_with(&r, "p", ttl).await.unwrap().unwrap();
        let read = || -> Body {
            serde_json::from_slice(&std::fs::read(dir.path().join("p.prune-lease.json")).unwrap())
                .unwrap()
        };
        let first = read().expires;
        // Evidence, not a clock: wait (however slow the machine) until the first expiry
        // has passed and the lease file shows a later, still valid one.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let now = Utc::now();
            let body = read();
            if now > first && body.expires > now {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the lease was never refreshed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Past the first expiry, still held (refreshed).
        let err = acquire_with(&r, "p", ttl).await.err().unwrap().to_string();
        assert!(err.contains("another prune holds the lease"), "{err}");
        lease.release().await;
    }

    /// A pid that no process has (above any kernel's pid_max, yet a valid `pid_t`).
    const NO_SUCH_PID: u32 = i32::MAX as u32;

    fn body(host: &str, pid: u32) -> Body {
        let now = Utc::now();
        Body {
            host: host.into(),
            pid,
            started: now - chrono::TimeDelta::minutes(1),
            expires: now + chrono::TimeDelta::minutes(9),
        }
    }

    #[test]
    fn only_a_gone_process_of_this_very_host_counts_as_dead() {
        let me = body("web1", std::process::id());
        // Same host, no such process: gone.
        assert!(dead_here(&body("web1", NO_SUCH_PID), &me));
        // Another host's process can never be checked from here.
        assert!(!dead_here(&body("web2", NO_SUCH_PID), &me));
        // `localhost` is the fallback name: two machines may share it.
        let me_local = body("localhost", std::process::id());
        assert!(!dead_here(&body("localhost", NO_SUCH_PID), &me_local));
        // A process that exists (this one, or init) is alive, whatever kill(0) says.
        let other_me = body("web1", NO_SUCH_PID - 1);
        assert!(!dead_here(&body("web1", std::process::id()), &other_me));
        assert!(!dead_here(&body("web1", 1), &me));
        // The holder's pid is our own pid: never "gone" (we are running).
        let me_gone = body("web1", NO_SUCH_PID);
        assert!(!dead_here(&body("web1", NO_SUCH_PID), &me_gone));
        // A pid that is not a pid_t cannot be checked.
        assert!(!dead_here(&body("web1", u32::MAX), &me));
    }

    fn write_lease(dir: &std::path::Path, b: &Body) {
        std::fs::write(dir.join("p.prune-lease.json"), b.bytes()).unwrap();
    }

    fn read_lease(dir: &std::path::Path) -> Body {
        serde_json::from_slice(&std::fs::read(dir.join("p.prune-lease.json")).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_valid_lease_of_a_gone_process_here_is_taken_over_at_once() {
        let host = crate::host_namespace::default_host_id();
        if host == "localhost" {
            return; // never taken over on a host without a name (see dead_here's test)
        }
        let dir = tempfile::tempdir().unwrap();
        let r = handle(dir.path());
        write_lease(dir.path(), &body(&host, NO_SUCH_PID));
        let lease = acquire(&r, "p").await.unwrap().unwrap();
        let now_held = read_lease(dir.path());
        assert_eq!(now_held.pid, std::process::id());
        assert!(now_held.expires > Utc::now());
        lease.release().await;
        assert!(!dir.path().join("p.prune-lease.json").exists());
    }

    #[tokio::test]
    async fn a_valid_lease_of_a_live_process_or_another_host_is_refused() {
        let host = crate::host_namespace::default_host_id();
        let dir = tempfile::tempdir().unwrap();
        let r = handle(dir.path());
        for holder in [
            body(&host, 1),
            body(&host, std::process::id()),
            body("elsewhere", NO_SUCH_PID),
        ] {
            write_lease(dir.path(), &holder);
            let err = acquire(&r, "p").await.err().unwrap().to_string();
            assert!(err.contains("another prune holds the lease"), "{err}");
            assert!(err.contains(&format!("pid {}", holder.pid)), "{err}");
            // Left as it was.
            let still = read_lease(dir.path());
            assert_eq!((still.host, still.pid), (holder.host, holder.pid));
        }
    }

    /// A local backend with injected faults, each for a given number of calls.
    struct Flaky {
        inner: LocalBackend,
        /// Whether it offers the conditional create at all.
        conditional: bool,
        /// Conditional creates that succeed but answer with a transient error (lost).
        lose_creates: AtomicU32,
        /// Reads of the lease that find it empty (still being written).
        empty_reads: AtomicU32,
        /// Reads of the lease that find it gone (its holder released it meanwhile), the
        /// file itself left (another holder took it again).
        vanished_reads: AtomicU32,
        /// Reads that find the lease gone because its holder released it just then.
        releasing_reads: AtomicU32,
        /// Deletes that answer success and remove nothing.
        ignored_deletes: AtomicU32,
    }

    /// Take one from `n` if it is not zero.
    fn take(n: &AtomicU32) -> bool {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
            .is_ok()
    }

    impl Flaky {
        fn new(dir: &std::path::Path) -> Flaky {
            Flaky {
                inner: LocalBackend::new(dir.to_path_buf()).unwrap(),
                conditional: true,
                lose_creates: AtomicU32::new(0),
                empty_reads: AtomicU32::new(0),
                vanished_reads: AtomicU32::new(0),
                releasing_reads: AtomicU32::new(0),
                ignored_deletes: AtomicU32::new(0),
            }
        }

        fn handle(self) -> RemoteHandle {
            RemoteHandle {
                name: "nas".into(),
                backend: Arc::new(self),
                part_concurrency: 1,
                retry: crate::retry::RetryPolicy {
                    attempts: 3,
                    first_delay: Duration::ZERO,
                    max_delay: Duration::ZERO,
                    budget: None,
                },
            }
        }
    }

    #[async_trait::async_trait]
    impl pronto_backends::Backend for Flaky {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn capabilities(&self) -> pronto_backends::Capabilities {
            self.inner.capabilities()
        }
        async fn list(
            &self,
            prefix: &str,
        ) -> pronto_backends::Result<Vec<pronto_backends::ObjectMeta>> {
            self.inner.list(prefix).await
        }
        async fn head(&self, key: &str) -> pronto_backends::Result<pronto_backends::ObjectMeta> {
            self.inner.head(key).await
        }
        async fn get(
            &self,
            key: &str,
            range: Option<std::ops::Range<u64>>,
        ) -> pronto_backends::Result<pronto_backends::ByteStream> {
            if take(&self.releasing_reads) {
                self.inner.delete(key).await?;
                return Err(BackendError::NotFound(key.into()));
            }
            if take(&self.vanished_reads) {
                return Err(BackendError::NotFound(key.into()));
            }
            if take(&self.empty_reads) {
                return Ok(Box::pin(futures::stream::empty()));
            }
            self.inner.get(key, range).await
        }
        async fn put(
            &self,
            key: &str,
            body: Bytes,
            sha256: [u8; 32],
        ) -> pronto_backends::Result<pronto_backends::ObjectMeta> {
            self.inner.put(key, body, sha256).await
        }
        async fn create_upload(
            &self,
            key: &str,
        ) -> pronto_backends::Result<pronto_backends::UploadId> {
            self.inner.create_upload(key).await
        }
        async fn put_part(
            &self,
            key: &str,
            up: &pronto_backends::UploadId,
            n: u32,
            body: Bytes,
            sha256: [u8; 32],
        ) -> pronto_backends::Result<pronto_backends::PartReceipt> {
            self.inner.put_part(key, up, n, body, sha256).await
        }
        async fn complete_upload(
            &self,
            key: &str,
            up: &pronto_backends::UploadId,
            parts: &[pronto_backends::PartReceipt],
            sha256: [u8; 32],
        ) -> pronto_backends::Result<pronto_backends::ObjectMeta> {
            self.inner.complete_upload(key, up, parts, sha256).await
        }
        async fn abort_upload(
            &self,
            key: &str,
            up: &pronto_backends::UploadId,
        ) -> pronto_backends::Result<()> {
            self.inner.abort_upload(key, up).await
        }
        async fn delete(&self, key: &str) -> pronto_backends::Result<()> {
            if take(&self.ignored_deletes) {
                return Ok(());
            }
            self.inner.delete(key).await
        }
        fn supports_put_if_absent(&self) -> bool {
            self.conditional
        }
        async fn put_if_absent(
            &self,
            key: &str,
            body: Bytes,
            sha256: [u8; 32],
        ) -> pronto_backends::Result<pronto_backends::ObjectMeta> {
            let meta = self.inner.put_if_absent(key, body, sha256).await?;
            if take(&self.lose_creates) {
                return Err(BackendError::transient("connection reset"));
            }
            Ok(meta)
        }
    }

    #[tokio::test]
    async fn a_create_whose_answer_was_lost_is_recognised_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        let r = Flaky {
            lose_creates: AtomicU32::new(1),
            ..Flaky::new(dir.path())
        }
        .handle();
        let lease = acquire(&r, "p").await.unwrap().unwrap();
        assert_eq!(read_lease(dir.path()).pid, std::process::id());
        lease.release().await;
        assert!(!dir.path().join("p.prune-lease.json").exists());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_being_written_is_read_again_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let r = Flaky {
            empty_reads: AtomicU32::new(1),
            ..Flaky::new(dir.path())
        }
        .handle();
        write_lease(dir.path(), &body("elsewhere", 4242));
        let err = acquire(&r, "p").await.err().unwrap().to_string();
        assert!(err.contains("another prune holds the lease"), "{err}");
        assert_eq!(read_lease(dir.path()).pid, 4242);
    }

    #[tokio::test]
    async fn a_lease_released_while_we_looked_is_taken_at_the_next_try() {
        let dir = tempfile::tempdir().unwrap();
        let r = Flaky {
            releasing_reads: AtomicU32::new(1),
            ..Flaky::new(dir.path())
        }
        .handle();
        write_lease(dir.path(), &body("elsewhere", 4242));
        let lease = acquire(&r, "p").await.unwrap().unwrap();
        assert_eq!(read_lease(dir.path()).pid, std::process::id());
        lease.release().await;
    }

    #[tokio::test]
    async fn a_lease_that_keeps_vanishing_is_read_three_times_then_an_error() {
        // Three times gone, then there: read again each time, then refused as held.
        let dir = tempfile::tempdir().unwrap();
        write_lease(dir.path(), &body("elsewhere", 4242));
        let r = Flaky {
            vanished_reads: AtomicU32::new(3),
            ..Flaky::new(dir.path())
        }
        .handle();
        let err = acquire(&r, "p").await.err().unwrap().to_string();
        assert!(err.contains("another prune holds the lease"), "{err}");
        // Four times gone: another prune keeps starting and stopping; give up, not loop.
        let r = Flaky {
            vanished_reads: AtomicU32::new(4),
            ..Flaky::new(dir.path())
        }
        .handle();
        let err = acquire(&r, "p").await.err().unwrap().to_string();
        assert!(err.contains("keeps appearing and disappearing"), "{err}");
        assert_eq!(read_lease(dir.path()).pid, 4242);
    }

    #[tokio::test]
    async fn without_a_conditional_create_a_prune_runs_without_a_lease() {
        let dir = tempfile::tempdir().unwrap();
        let r = Flaky {
            conditional: false,
            ..Flaky::new(dir.path())
        }
        .handle();
        assert!(acquire(&r, "p").await.unwrap().is_none());
        assert!(!dir.path().join("p.prune-lease.json").exists());
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_is_refreshed_long_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let r = handle(dir.path());
        let ttl = Duration::from_secs(600);
        let lease = acquire_with(&r, "p", ttl).await.unwrap().unwrap();
        let first = read_lease(dir.path());
        // Paused clock: look once a (virtual) second, up to half the time to live.
        let mut refreshed = None;
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = read_lease(dir.path());
            if now.expires != first.expires {
                refreshed = Some(now);
                break;
            }
        }
        let b = refreshed.expect("the lease was not refreshed within half its time to live");
        // A full time to live from the refresh, by the wall clock the other hosts read.
        assert!(
            b.expires > Utc::now() + chrono::TimeDelta::minutes(9),
            "{b:?}"
        );
        assert_eq!((b.pid, b.started), (first.pid, first.started));
        lease.release().await;
    }

    #[tokio::test]
    async fn a_stale_lease_that_will_not_go_is_an_error_not_a_loop() {
        // The stale lease is removed, yet the create still finds one (a store whose
        // delete did not take, or another prune quicker than us): give up at once.
        let dir = tempfile::tempdir().unwrap();
        let mut stale = body("gone", 1);
        stale.expires = Utc::now() - chrono::TimeDelta::hours(1);
        write_lease(dir.path(), &stale);
        let r = Flaky {
            ignored_deletes: AtomicU32::new(1),
            ..Flaky::new(dir.path())
        }
        .handle();
        let err = format!("{:#}", acquire(&r, "p").await.err().unwrap());
        assert!(err.contains("taking the prune lease"), "{err}");
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(read_lease(dir.path()).host, "gone");
    }
}
