//! Prune through the library: the config key `[retention] max_delete_fraction`, and the
//! order of remote deletions (manifest first, then the archive) seen by a backend that
//! records every call.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use pronto_backends::local::LocalBackend;
use pronto_backends::{
    Backend, BackendError, ByteStream, Capabilities, ObjectMeta, PartReceipt, UploadId,
};
use pronto_offsite::config;
use pronto_offsite::plan;
use pronto_offsite::prune_locations as prune;
use pronto_offsite::replicate::RemoteHandle;
use pronto_offsite::retention::{Count, Policy};
use pronto_offsite::retry::RetryPolicy;

fn parse(text: &str) -> anyhow::Result<config::Config> {
    config::parse(text, Path::new("/etc/pronto-offsite/test.toml"))
}

#[test]
fn max_delete_fraction_defaults_to_half_and_sits_in_retention() {
    let c = parse("[local]\ndir = \"b\"\n").unwrap();
    assert_eq!(c.max_delete_fraction, 0.5);
    assert_eq!(c.retention, Policy::seed_default());

    let c =
        parse("[local]\ndir = \"b\"\n[retention]\nlast = 3\nmax_delete_fraction = 0.25\n").unwrap();
    assert_eq!(c.max_delete_fraction, 0.25);
    assert_eq!(
        c.retention,
        Policy {
            last: Some(Count::N(3)),
            ..Policy::none()
        }
    );
    // Whole numbers are fractions too.
    let c =
        parse("[local]\ndir = \"b\"\n[retention]\ndaily = 1\nmax_delete_fraction = 1\n").unwrap();
    assert_eq!(c.max_delete_fraction, 1.0);
    // Only the cap: the seed's policy still applies.
    let c = parse("[local]\ndir = \"b\"\n[retention]\nmax_delete_fraction = 0.3\n").unwrap();
    assert_eq!(c.retention, Policy::seed_default());
    assert_eq!(c.max_delete_fraction, 0.3);
}

#[test]
fn bad_retention_tables_are_still_config_errors() {
    for (text, needle) in [
        (
            "[local]\ndir = \"b\"\n[retention]\ndaily = 3\nmax_delete_fraction = 1.5\n",
            "test.toml:5: retention.max_delete_fraction",
        ),
        (
            "[local]\ndir = \"b\"\n[retention]\ndaily = 3\nmax_delete_fraction = -0.1\n",
            "max_delete_fraction",
        ),
        (
            "[local]\ndir = \"b\"\n[retention]\ndaily = 3\nmax_delete_fraction = \"half\"\n",
            "fraction",
        ),
        // The policy's own errors keep their exact line and the list of keys.
        (
            "[local]\ndir = \"b\"\n[retention]\ndaily = 3\nkeep_daily = 3\n",
            "test.toml:5: unknown field `keep_daily`, expected one of `last`",
        ),
        (
            "[local]\ndir = \"b\"\n[retention]\ndaily = \"lots\"\n",
            "test.toml:4: invalid count \"lots\"",
        ),
        ("[local]\ndir = \"b\"\n[retention]\n", "keeps nothing"),
        (
            "[local]\ndir = \"b\"\n[retention]\ndaily = 0\nmax_delete_fraction = 0.5\n",
            "keeps nothing",
        ),
    ] {
        let err = format!("{:#}", parse(text).unwrap_err());
        assert!(err.contains(needle), "{text:?}: {err}");
        assert!(err.contains("test.toml"), "{text:?}: {err}");
    }
}

/// A local backend that records deletes, and can be told to fail deleting one key.
struct Recording {
    inner: LocalBackend,
    log: Arc<Mutex<Vec<String>>>,
    fail_delete: Option<String>,
}

#[async_trait]
impl Backend for Recording {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn list(&self, prefix: &str) -> pronto_backends::Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn head(&self, key: &str) -> pronto_backends::Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> pronto_backends::Result<ByteStream> {
        self.inner.get(key, range).await
    }
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        sha256: [u8; 32],
    ) -> pronto_backends::Result<ObjectMeta> {
        self.inner.put(key, body, sha256).await
    }
    async fn create_upload(&self, key: &str) -> pronto_backends::Result<UploadId> {
        self.inner.create_upload(key).await
    }
    async fn put_part(
        &self,
        key: &str,
        up: &UploadId,
        n: u32,
        body: Bytes,
        sha256: [u8; 32],
    ) -> pronto_backends::Result<PartReceipt> {
        self.inner.put_part(key, up, n, body, sha256).await
    }
    async fn complete_upload(
        &self,
        key: &str,
        up: &UploadId,
        parts: &[PartReceipt],
        sha256: [u8; 32],
    ) -> pronto_backends::Result<ObjectMeta> {
        self.inner.complete_upload(key, up, parts, sha256).await
    }
    async fn abort_upload(&self, key: &str, up: &UploadId) -> pronto_backends::Result<()> {
        self.inner.abort_upload(key, up).await
    }
    async fn delete(&self, key: &str) -> pronto_backends::Result<()> {
        if self.fail_delete.as_deref() == Some(key) {
            return Err(BackendError::Permanent(format!("{key}: injected failure")));
        }
        self.log.lock().unwrap().push(key.to_string());
        self.inner.delete(key).await
    }
}

const IDS: [&str; 3] = ["20250101-020000", "20250102-020000", "20250103-020000"];

fn archive(id: &str) -> String {
    format!("pronto-app-backup-{id}.tar.gz")
}

fn manifest(id: &str) -> String {
    format!("pronto-app-backup-{id}.tar.gz.manifest.json")
}

/// A remote folder with three complete archives (content does not matter to prune).
fn remote_with_three(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for id in IDS {
        std::fs::write(dir.join(archive(id)), format!("archive {id}")).unwrap();
        std::fs::write(dir.join(manifest(id)), "{}").unwrap();
    }
}

fn handle(dir: &Path, log: &Arc<Mutex<Vec<String>>>, fail_delete: Option<String>) -> RemoteHandle {
    RemoteHandle {
        name: "rec".into(),
        backend: Arc::new(Recording {
            inner: LocalBackend::new(dir.to_path_buf()).unwrap(),
            log: log.clone(),
            fail_delete,
        }),
        part_concurrency: 1,
        retry: RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        },
    }
}

#[tokio::test]
async fn remote_prune_deletes_the_manifest_first_then_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    remote_with_three(&remote);
    let cfg = parse(&format!(
        "[local]\ndir = \"{}\"\n[retention]\nlast = 1\nmax_delete_fraction = 1\n",
        tmp.path().join("backups").display()
    ))
    .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let r = handle(&remote, &log, None);
    let state = prune::list_state(&cfg, &r).await.unwrap();
    let mut out = Vec::new();
    let rep = prune::prune_remote(
        &cfg,
        &r,
        &state,
        &BTreeSet::new(),
        chrono::Utc::now(),
        false,
        false,
        &mut out,
    )
    .await;
    assert_eq!(rep.error, None);
    assert_eq!(rep.deleted, vec![archive(IDS[0]), archive(IDS[1])]);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            manifest(IDS[0]),
            archive(IDS[0]),
            manifest(IDS[1]),
            archive(IDS[1])
        ]
    );
    assert!(remote.join(archive(IDS[2])).exists() && remote.join(manifest(IDS[2])).exists());
}

#[tokio::test]
async fn a_failed_remote_delete_stops_that_remote_and_leaves_no_restorable_half() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    remote_with_three(&remote);
    let cfg = parse(&format!(
        "[local]\ndir = \"{}\"\n[retention]\nlast = 1\nmax_delete_fraction = 1\n",
        tmp.path().join("backups").display()
    ))
    .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    // Deleting the first archive fails after its manifest is gone.
    let r = handle(&remote, &log, Some(archive(IDS[0])));
    let state = prune::list_state(&cfg, &r).await.unwrap();
    let mut out = Vec::new();
    let rep = prune::prune_remote(
        &cfg,
        &r,
        &state,
        &BTreeSet::new(),
        chrono::Utc::now(),
        false,
        false,
        &mut out,
    )
    .await;
    let err = rep.error.expect("the failure is reported");
    assert!(err.contains("injected failure"), "{err}");
    assert!(rep.deleted.is_empty());
    assert_eq!(
        *log.lock().unwrap(),
        vec![manifest(IDS[0])],
        "stopped at the first failure"
    );
    // The half-deleted archive has no manifest: never a restore candidate, and a later
    // prune leaves it alone as incomplete.
    assert!(remote.join(archive(IDS[0])).exists() && !remote.join(manifest(IDS[0])).exists());
    assert!(remote.join(manifest(IDS[1])).exists());
    let state = plan::remote_state("pronto-app-backup", &r.backend.list("").await.unwrap());
    assert!(!state.archives[IDS[0]].complete());
}
