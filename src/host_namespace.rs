//! Many hosts, one bucket: a [`Backend`] wrapper that puts every key of this host under
//! `<host_id>/` and strips it from listings, so everything above it (plan, replicate,
//! prune, pins, list, pull) sees only this host's archives and can touch nothing else.
//! Every backend gets it for free.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pronto_backends::{
    Backend, ByteStream, Capabilities, ObjectMeta, PartReceipt, Result, UploadId,
};

pub use crate::config::valid_host_id;

/// How `list --all-hosts` shows the flat layout (archives at the remote's root, no
/// `host_id`), and what `pull --host` takes to reach them.
pub const FLAT: &str = "-";

/// This machine's host name as a host id (`host_id` when none is configured for
/// `pull --host` / `list --all-hosts` output): unusable characters become `_`.
pub fn default_host_id() -> String {
    let h = gethostname::gethostname().to_string_lossy().into_owned();
    let h: String = h
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if valid_host_id(&h) {
        h
    } else {
        "localhost".to_string()
    }
}

/// A backend seen through one host's namespace.
pub struct NamespacedBackend {
    inner: Arc<dyn Backend>,
    host: String,
    /// `"<host>/"`.
    ns: String,
}

impl NamespacedBackend {
    pub fn new(inner: Arc<dyn Backend>, host_id: &str) -> NamespacedBackend {
        NamespacedBackend {
            inner,
            host: host_id.to_string(),
            ns: format!("{host_id}/"),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.ns)
    }

    fn strip(&self, mut m: ObjectMeta) -> ObjectMeta {
        if let Some(k) = m.key.strip_prefix(&self.ns) {
            m.key = k.to_string();
        }
        m
    }
}

/// The host ids present under a remote's root, from a listing of the whole root
/// (each `<host>/<file>` key names its host; flat files belong to no host).
pub fn hosts_in(listing: &[ObjectMeta]) -> Vec<String> {
    let mut hosts: Vec<String> = listing
        .iter()
        .filter_map(|o| o.key.split_once('/').map(|(h, _)| h.to_string()))
        .filter(|h| valid_host_id(h))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

#[async_trait]
impl Backend for NamespacedBackend {
    fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.inner.describe().trim_end_matches('/'),
            self.host
        )
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let all = self.inner.list(&self.key(prefix)).await?;
        Ok(all
            .into_iter()
            .filter(|o| o.key.starts_with(&self.ns))
            .map(|o| self.strip(o))
            .collect())
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        Ok(self.strip(self.inner.head(&self.key(key)).await?))
    }
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        self.inner.get(&self.key(key), range).await
    }
    async fn put(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta> {
        Ok(self.strip(self.inner.put(&self.key(key), body, sha256).await?))
    }
    async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        sha256: [u8; 32],
        on_bytes: pronto_backends::OnBytes,
    ) -> Result<Option<ObjectMeta>> {
        let meta = self
            .inner
            .put_file(&self.key(key), path, sha256, on_bytes)
            .await?;
        Ok(meta.map(|m| self.strip(m)))
    }
    async fn create_upload(&self, key: &str) -> Result<UploadId> {
        self.inner.create_upload(&self.key(key)).await
    }
    async fn create_upload_for(&self, key: &str, sha256: [u8; 32]) -> Result<UploadId> {
        self.inner.create_upload_for(&self.key(key), sha256).await
    }
    async fn put_part(
        &self,
        key: &str,
        up: &UploadId,
        n: u32,
        body: Bytes,
        sha256: [u8; 32],
    ) -> Result<PartReceipt> {
        self.inner
            .put_part(&self.key(key), up, n, body, sha256)
            .await
    }
    async fn complete_upload(
        &self,
        key: &str,
        up: &UploadId,
        parts: &[PartReceipt],
        sha256: [u8; 32],
    ) -> Result<ObjectMeta> {
        Ok(self.strip(
            self.inner
                .complete_upload(&self.key(key), up, parts, sha256)
                .await?,
        ))
    }
    async fn abort_upload(&self, key: &str, up: &UploadId) -> Result<()> {
        self.inner.abort_upload(&self.key(key), up).await
    }
    fn supports_put_if_absent(&self) -> bool {
        self.inner.supports_put_if_absent()
    }
    async fn put_if_absent(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta> {
        self.inner
            .put_if_absent(&self.key(key), body, sha256)
            .await
            .map(|m| self.strip(m))
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(&self.key(key)).await
    }
    async fn list_uploads(&self, prefix: &str) -> Result<Option<Vec<(String, UploadId)>>> {
        let all = self.inner.list_uploads(&self.key(prefix)).await?;
        Ok(all.map(|v| {
            v.into_iter()
                .filter_map(|(k, id)| Some((k.strip_prefix(&self.ns)?.to_string(), id)))
                .collect()
        }))
    }
    async fn versioning(&self) -> Result<Option<pronto_backends::Versioning>> {
        self.inner.versioning().await
    }
    async fn store_checksum(&self, key: &str) -> Result<Option<pronto_backends::StoreChecksum>> {
        self.inner.store_checksum(&self.key(key)).await
    }
    fn sha256_is_computed_from_stored_bytes(&self) -> bool {
        self.inner.sha256_is_computed_from_stored_bytes()
    }
}

/// `pull --host H`: read every remote through host `H`'s namespace, and keep what is
/// downloaded in H's own folder `<backup folder>/hosts/H/` — never among this host's
/// archives, where the next push would upload H's archive into this host's namespace,
/// and where a same-named archive of this host's could be taken for H's. (Unless `H` is
/// this config's own `host_id` on every remote: then it is the backup folder itself.)
///
/// `H` = [`FLAT`] (`-`, as `list --all-hosts` shows it): the archives at the remotes' root,
/// kept in `<backup folder>/hosts/-/`.
pub fn as_host(cfg: &crate::config::Config, host: &str) -> anyhow::Result<crate::config::Config> {
    if host != FLAT && !valid_host_id(host) {
        return Err(crate::error::usage(format!(
            "--host '{host}': a host id is letters, digits, '.', '-' and '_', or {FLAT} for the flat layout (see `list --all-hosts`)"
        )));
    }
    let ns = (host != FLAT).then(|| host.to_string());
    let mut cfg = cfg.clone();
    let own = !cfg.remotes.is_empty() && cfg.remotes.iter().all(|r| r.host_id == ns);
    for r in &mut cfg.remotes {
        r.host_id = ns.clone();
    }
    if !own {
        let home = cfg.local.dir.clone();
        cfg.local.dir = home.join("hosts").join(host);
        cfg.local.home = Some(home);
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pronto_backends::local::LocalBackend;
    use pronto_backends::{collect, sha256_of};

    #[test]
    fn host_ids() {
        assert!(valid_host_id("web1"));
        assert!(valid_host_id("db-2.example_com"));
        for bad in ["", ".", "..", "a/b", "a b", "é", "-", "--", "-web1"] {
            assert!(!valid_host_id(bad), "{bad:?}");
        }
        assert!(valid_host_id(&default_host_id()));
    }

    #[tokio::test]
    async fn keys_live_under_the_host_and_listings_see_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let root: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path().to_path_buf()).unwrap());
        let web1 = NamespacedBackend::new(root.clone(), "web1");
        let web2 = NamespacedBackend::new(root.clone(), "web2");
        let body = Bytes::from_static(b"hello");
        let m = web1
            .put("a.tar.gz", body.clone(), sha256_of(&body))
            .await
            .unwrap();
        assert_eq!(m.key, "a.tar.gz");
        web2.put("b.tar.gz", body.clone(), sha256_of(&body))
            .await
            .unwrap();
        root.put("flat.tar.gz", body.clone(), sha256_of(&body))
            .await
            .unwrap();
        assert!(dir.path().join("web1/a.tar.gz").exists());

        let keys = |v: Vec<ObjectMeta>| v.into_iter().map(|o| o.key).collect::<Vec<_>>();
        assert_eq!(keys(web1.list("").await.unwrap()), ["a.tar.gz"]);
        assert_eq!(keys(web2.list("").await.unwrap()), ["b.tar.gz"]);
        assert_eq!(web1.head("a.tar.gz").await.unwrap().key, "a.tar.gz");
        assert!(web1.head("b.tar.gz").await.is_err());
        let got = collect(web1.get("a.tar.gz", None).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got, b"hello");
        assert!(web1.describe().ends_with("/web1"));

        // Deleting through one host never reaches another's copy.
        web1.delete("b.tar.gz").await.unwrap();
        assert!(dir.path().join("web2/b.tar.gz").exists());
        web1.delete("a.tar.gz").await.unwrap();
        assert!(!dir.path().join("web1/a.tar.gz").exists());

        assert_eq!(hosts_in(&root.list("").await.unwrap()), ["web2"]);
    }
}
