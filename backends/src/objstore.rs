//! What the object-store backends ([`s3`](crate::s3), [`gcs`](crate::gcs)) share: the
//! [`Backend`] primitives on top of `object_store`'s [`ObjectStore`] + [`MultipartStore`] +
//! [`PaginatedListStore`], key checks, error mapping, and the HTTP layer under
//! `object_store` (per-request timeouts that scale with the body, `Content-MD5`,
//! `Retry-After`).
//!
//! # Layout
//! `<bucket>/<prefix>/<key>`: the remote's URL names the bucket and the prefix; keys are
//! appended to the prefix as they are (object_store's [`Path::parse`], no re-encoding), so
//! what another tool lists is exactly what we wrote.
//!
//! # Integrity
//! - Every `put` and `put_part` body is hashed here first and refused with
//!   [`BackendError::ChecksumMismatch`] when it does not match the SHA-256 the caller
//!   gives, before a byte is sent: a bad body never becomes an object, whatever the server
//!   and the `checksum` setting.
//! - The body then travels with a checksum the server checks (S3: `x-amz-checksum-sha256`,
//!   or `Content-MD5`; GCS: `Content-MD5`), so corruption in transit is refused by the
//!   server (`BadDigest`), which maps to `ChecksumMismatch` too.
//! - `put` stores the SHA-256 as user metadata (`x-amz-meta-sha256` / `x-goog-meta-sha256`);
//!   `head` reports it. `list` reports none (listings carry no user metadata). Neither S3
//!   nor GCS take metadata at multipart completion, so a multipart upload records it when
//!   it starts: the replicator calls [`Backend::create_upload_for`] with the archive's hash
//!   (plain `create_upload` records none).
//!
//! # Timeouts
//! object_store's own overall timeout is off; this layer gives each request
//! `60 s + body / 256 KiB/s` to get its response headers (8 MiB part: 92 s; 5 GiB part:
//! ~5.7 h), and a response body (a download) 120 s without a byte before it fails. Both
//! surface as [`BackendError::Transient`].
//!
//! # Retries
//! Writes, listings and heads are not retried inside object_store (`max_retries = 0`):
//! the CLI's replicator is the one place that retries, and needs the error (with
//! `Retry-After`) to do it. Downloads keep object_store's retries, because only it can
//! resume a body that broke off mid-stream.

use std::borrow::Cow;
use std::fmt;
use std::future::Future as _;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::TryStreamExt;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService, ReqwestConnector,
};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, GetRange, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload,
};
use tokio::sync::OnceCell;

use crate::{
    check_sha256 as check_sha, Backend, BackendError, ByteStream, Capabilities, ObjectMeta,
    PartReceipt, Result, UploadId,
};

/// User-metadata name of the SHA-256 (`x-amz-meta-sha256`, `x-goog-meta-sha256`).
pub const SHA256_METADATA: &str = "sha256";

/// Base time every request gets for its response headers.
const BASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Slowest upload rate a request body is given time for.
const MIN_UPLOAD_RATE: u64 = 256 * 1024;
/// A response body that delivers nothing for this long fails.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Retries object_store itself makes for downloads (it resumes broken bodies).
const READ_RETRIES: usize = 4;

/// Everything an object store needs to be a backend: objects, multipart, raw-prefix lists.
pub trait Store: ObjectStore + MultipartStore + PaginatedListStore {}
impl<T: ObjectStore + MultipartStore + PaginatedListStore> Store for T {}

/// The two clients over one bucket: `main` never retries, `reads` resumes downloads.
#[derive(Clone)]
pub struct Stores {
    pub main: Arc<dyn Store>,
    pub reads: Arc<dyn Store>,
    /// Lists the multipart uploads in progress under a raw prefix (bucket-relative) as
    /// `(path, upload id)`; object_store has no call for it. `None`: not supported.
    pub list_uploads: Option<UploadLister>,
    /// Reads the bucket's versioning and lifecycle (S3); `None`: not supported.
    pub versioning: Option<VersioningProbe>,
    /// Reads the checksum the store computed for an object (raw, bucket-relative path);
    /// `None`: the store keeps none (see [`Backend::store_checksum`]).
    pub checksums: Option<ChecksumProbe>,
}

/// See [`Stores::checksums`].
pub type ChecksumProbe =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Option<crate::StoreChecksum>>> + Send + Sync>;

/// See [`Stores::versioning`].
pub type VersioningProbe =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Option<crate::Versioning>>> + Send + Sync>;

/// See [`Stores::list_uploads`].
pub type UploadLister =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Vec<(String, String)>>> + Send + Sync>;

/// Opens the stores on first use (the S3 region may need an async lookup).
pub type OpenStores = Box<dyn Fn() -> BoxFuture<'static, Result<Stores>> + Send + Sync>;

/// Secrets that must never appear in a message, shared with the credential provider
/// (which adds the keys it resolves).
#[derive(Default, Clone)]
pub struct Redactor(Arc<Mutex<Vec<String>>>);

impl Redactor {
    /// Remember a secret (ignored when short enough to be a false positive).
    pub fn add(&self, secret: &str) {
        if secret.len() >= 8 {
            let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if !v.iter().any(|s| s == secret) {
                v.push(secret.to_string());
            }
        }
    }

    /// `text` with every known secret replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        let v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = text.to_string();
        for s in v.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[redacted]");
            }
        }
        out
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redactor(..)")
    }
}

/// A backend over one bucket and prefix of an object store.
pub struct ObjectStoreBackend {
    /// `s3://bucket/prefix`, for messages; never with secrets.
    url: String,
    /// `prefix/` (or empty): prepended to every key.
    root: String,
    /// `S3` or `GCS`, for messages.
    provider: &'static str,
    storage_class: Option<String>,
    stores: OnceCell<Stores>,
    open: OpenStores,
    redactor: Redactor,
}

impl fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("url", &self.url)
            .field("storage_class", &self.storage_class)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreBackend {
    /// A backend whose stores are opened by `open` on first use.
    pub fn new(
        url: String,
        prefix: &str,
        provider: &'static str,
        storage_class: Option<String>,
        redactor: Redactor,
        open: OpenStores,
    ) -> Self {
        let prefix = prefix.trim_matches('/');
        ObjectStoreBackend {
            url,
            root: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            provider,
            storage_class,
            stores: OnceCell::new(),
            open,
            redactor,
        }
    }

    async fn stores(&self) -> Result<&Stores> {
        self.stores.get_or_try_init(|| (self.open)()).await
    }

    fn path(&self, key: &str) -> Result<Path> {
        check_key(key)?;
        Path::parse(format!("{}{key}", self.root))
            .map_err(|e| BackendError::Permanent(format!("invalid key {key:?}: {e}")))
    }

    fn err(&self, what: &str, e: object_store::Error) -> BackendError {
        map_error(self.provider, &self.url, what, &e, &self.redactor)
    }

    fn attributes(&self, sha256: Option<&[u8; 32]>) -> Attributes {
        let mut attrs = Attributes::new();
        if let Some(sha) = sha256 {
            attrs.insert(
                Attribute::Metadata(Cow::Borrowed(SHA256_METADATA)),
                AttributeValue::from(hex::encode(sha)),
            );
        }
        if let Some(class) = &self.storage_class {
            attrs.insert(Attribute::StorageClass, AttributeValue::from(class.clone()));
        }
        attrs
    }

    /// Start a multipart upload whose object will carry `sha256` in its metadata (so that
    /// `head` reports it without a download). [`Backend::create_upload_for`] calls this with
    /// the hash, [`Backend::create_upload`] with `None`.
    pub async fn create_upload_with_sha256(
        &self,
        key: &str,
        sha256: Option<[u8; 32]>,
    ) -> Result<UploadId> {
        let path = self.path(key)?;
        let opts = PutMultipartOptions {
            attributes: self.attributes(sha256.as_ref()),
            ..Default::default()
        };
        let id = self
            .stores()
            .await?
            .main
            .create_multipart_opts(&path, opts)
            .await
            .map_err(|e| self.err(&format!("start upload of {key}"), e))?;
        Ok(UploadId(id))
    }
}

#[async_trait]
impl Backend for ObjectStoreBackend {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn capabilities(&self) -> Capabilities {
        // S3's limits; GCS's XML multipart API has the same ones.
        Capabilities {
            min_part_size: 5 * 1024 * 1024,
            max_part_size: 5 * 1024 * 1024 * 1024,
            // 8 MiB: what the AWS CLI uses; enough requests in flight saturate a link.
            preferred_part_size: 8 * 1024 * 1024,
            max_parts: 10_000,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        let stores = self.stores().await?;
        let raw = format!("{}{prefix}", self.root);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let opts = PaginatedListOptions {
                page_token: token.take(),
                ..Default::default()
            };
            let page = stores
                .main
                .list_paginated((!raw.is_empty()).then_some(raw.as_str()), opts)
                .await
                .map_err(|e| self.err(&format!("list {prefix:?}"), e))?;
            for o in page.result.objects {
                let full = o.location.as_ref();
                // The server filtered by the raw prefix; check anyway, and never report
                // anything outside the root.
                if let Some(key) = full.strip_prefix(self.root.as_str()) {
                    if key.starts_with(prefix) && !key.is_empty() {
                        out.push(ObjectMeta {
                            modified: Some(o.last_modified.into()),
                            key: key.to_string(),
                            size: o.size,
                            sha256: None,
                        });
                    }
                }
            }
            match page.page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        let res = self
            .stores()
            .await?
            .main
            .get_opts(&path, opts)
            .await
            .map_err(|e| self.err(&format!("head {key}"), e))?;
        let sha256 = res
            .attributes
            .get(&Attribute::Metadata(Cow::Borrowed(SHA256_METADATA)))
            .and_then(|v| parse_sha_hex(v.as_ref()));
        Ok(ObjectMeta {
            modified: Some(res.meta.last_modified.into()),
            key: key.to_string(),
            size: res.meta.size,
            sha256,
        })
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        let path = self.path(key)?;
        let range = match range {
            Some(r) if r.start > r.end => {
                return Err(BackendError::Permanent(format!(
                    "{key}: invalid range {}..{}",
                    r.start, r.end
                )))
            }
            Some(r) if r.start == r.end => {
                // HTTP cannot ask for zero bytes; the object must still exist.
                self.head(key).await?;
                return Ok(Box::pin(futures::stream::empty()));
            }
            other => other,
        };
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let res = self
            .stores()
            .await?
            .reads
            .get_opts(&path, opts)
            .await
            .map_err(|e| self.err(&format!("get {key}"), e))?;
        let (provider, url, redactor, what) = (
            self.provider,
            self.url.clone(),
            self.redactor.clone(),
            format!("get {key}"),
        );
        let stream = res
            .into_stream()
            .map_err(move |e| map_error(provider, &url, &what, &e, &redactor));
        Ok(Box::pin(stream))
    }

    async fn put(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        check_sha(key, &body, &sha256)?;
        let size = body.len() as u64;
        let opts = PutOptions {
            mode: PutMode::Overwrite,
            attributes: self.attributes(Some(&sha256)),
            ..Default::default()
        };
        self.stores()
            .await?
            .main
            .put_opts(&path, PutPayload::from(body), opts)
            .await
            .map_err(|e| self.err(&format!("put {key}"), e))?;
        Ok(ObjectMeta {
            modified: None,
            key: key.to_string(),
            size,
            sha256: Some(sha256),
        })
    }

    async fn create_upload(&self, key: &str) -> Result<UploadId> {
        self.create_upload_with_sha256(key, None).await
    }

    async fn create_upload_for(&self, key: &str, sha256: [u8; 32]) -> Result<UploadId> {
        self.create_upload_with_sha256(key, Some(sha256)).await
    }

    async fn put_part(
        &self,
        key: &str,
        up: &UploadId,
        n: u32,
        body: Bytes,
        sha256: [u8; 32],
    ) -> Result<PartReceipt> {
        let path = self.path(key)?;
        crate::check_part(key, n, body.len(), &self.capabilities())?;
        check_sha(&format!("{key} part {n}"), &body, &sha256)?;
        let size = body.len() as u64;
        let part = self
            .stores()
            .await?
            .main
            .put_part(&path, &up.0, n as usize - 1, PutPayload::from(body))
            .await
            .map_err(|e| self.err(&format!("put part {n} of {key}"), e))?;
        Ok(PartReceipt {
            number: n,
            size,
            token: part.content_id,
        })
    }

    async fn complete_upload(
        &self,
        key: &str,
        up: &UploadId,
        parts: &[PartReceipt],
        _sha256: [u8; 32],
    ) -> Result<ObjectMeta> {
        // The whole object's SHA-256 cannot be checked here: S3 and GCS only know each
        // part's checksum (each verified when it was sent). The caller keeps the hash in
        // the manifest and verifies the result.
        let path = self.path(key)?;
        if parts.is_empty() {
            return Err(BackendError::Permanent(format!(
                "{key}: complete_upload needs at least one part"
            )));
        }
        for (i, p) in parts.iter().enumerate() {
            if p.number as usize != i + 1 {
                return Err(BackendError::Permanent(format!(
                    "{key}: complete_upload needs parts 1..={} in order, got part {} at position {}",
                    parts.len(),
                    p.number,
                    i + 1
                )));
            }
        }
        let size = parts.iter().map(|p| p.size).sum();
        let ids = parts
            .iter()
            .map(|p| PartId {
                content_id: p.token.clone(),
            })
            .collect();
        self.stores()
            .await?
            .main
            .complete_multipart(&path, &up.0, ids)
            .await
            .map_err(|e| self.err(&format!("complete upload of {key}"), e))?;
        Ok(ObjectMeta {
            modified: None,
            key: key.to_string(),
            size,
            sha256: None,
        })
    }

    async fn abort_upload(&self, key: &str, up: &UploadId) -> Result<()> {
        let path = self.path(key)?;
        match self
            .stores()
            .await?
            .main
            .abort_multipart(&path, &up.0)
            .await
            .map_err(|e| self.err(&format!("abort upload of {key}"), e))
        {
            Ok(()) | Err(BackendError::UploadNotFound(_)) | Err(BackendError::NotFound(_)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn versioning(&self) -> Result<Option<crate::Versioning>> {
        match self.stores().await?.versioning.clone() {
            Some(probe) => probe().await,
            None => Ok(None),
        }
    }

    async fn store_checksum(&self, key: &str) -> Result<Option<crate::StoreChecksum>> {
        let path = self.path(key)?;
        match self.stores().await?.checksums.clone() {
            Some(probe) => probe(path.as_ref().to_string()).await,
            None => Ok(None),
        }
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Option<Vec<(String, UploadId)>>> {
        check_prefix(prefix)?;
        let Some(lister) = self.stores().await?.list_uploads.clone() else {
            return Ok(None);
        };
        let found = lister(format!("{}{prefix}", self.root)).await?;
        Ok(Some(
            found
                .into_iter()
                .filter_map(|(path, id)| {
                    let key = path.strip_prefix(self.root.as_str())?;
                    (key.starts_with(prefix) && !key.is_empty())
                        .then(|| (key.to_string(), UploadId(id)))
                })
                .collect(),
        ))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self
            .stores()
            .await?
            .main
            .delete(&path)
            .await
            .map_err(|e| self.err(&format!("delete {key}"), e))
        {
            Ok(()) | Err(BackendError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn supports_put_if_absent(&self) -> bool {
        true
    }

    /// A conditional create: object_store's [`PutMode::Create`], which sends
    /// `If-None-Match: *` to S3 and `x-goog-if-generation-match: 0` to GCS. The server
    /// decides atomically; a key that exists answers 412 (or 304), which object_store
    /// reports as `AlreadyExists` and this maps to [`BackendError::AlreadyExists`]. S3's
    /// 409 `ConditionalRequestConflict` (another conditional write to the key in flight)
    /// is [`BackendError::Transient`]: worth asking again. The body is checked against
    /// `sha256` first and travels with the same checksum header as [`put`](Backend::put).
    async fn put_if_absent(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        check_sha(key, &body, &sha256)?;
        let size = body.len() as u64;
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes: self.attributes(Some(&sha256)),
            ..Default::default()
        };
        let what = format!("conditional put of {key}");
        match self
            .stores()
            .await?
            .main
            .put_opts(&path, PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(ObjectMeta {
                modified: None,
                key: key.to_string(),
                size,
                sha256: Some(sha256),
            }),
            Err(e @ object_store::Error::AlreadyExists { .. }) => {
                let mut text = String::new();
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(err) = cur {
                    text.push_str(&err.to_string());
                    cur = err.source();
                }
                if text.contains("ConditionalRequestConflict") {
                    Err(BackendError::transient(format!(
                        "{}: {what}: another conditional write to the key was in flight (409 ConditionalRequestConflict)",
                        self.url
                    )))
                } else {
                    Err(BackendError::AlreadyExists(format!("{}: {key}", self.url)))
                }
            }
            Err(e) => Err(self.err(&what, e)),
        }
    }
}

/// Implement [`Backend`] for a newtype around [`ObjectStoreBackend`] (field `inner`).
macro_rules! delegate_backend {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl $crate::Backend for $t {
            fn describe(&self) -> String {
                self.inner.describe()
            }
            fn capabilities(&self) -> $crate::Capabilities {
                self.inner.capabilities()
            }
            async fn list(&self, prefix: &str) -> $crate::Result<Vec<$crate::ObjectMeta>> {
                self.inner.list(prefix).await
            }
            async fn head(&self, key: &str) -> $crate::Result<$crate::ObjectMeta> {
                self.inner.head(key).await
            }
            async fn get(
                &self,
                key: &str,
                range: Option<std::ops::Range<u64>>,
            ) -> $crate::Result<$crate::ByteStream> {
                self.inner.get(key, range).await
            }
            async fn put(
                &self,
                key: &str,
                body: bytes::Bytes,
                sha256: [u8; 32],
            ) -> $crate::Result<$crate::ObjectMeta> {
                self.inner.put(key, body, sha256).await
            }
            async fn create_upload(&self, key: &str) -> $crate::Result<$crate::UploadId> {
                self.inner.create_upload(key).await
            }
            async fn create_upload_for(
                &self,
                key: &str,
                sha256: [u8; 32],
            ) -> $crate::Result<$crate::UploadId> {
                self.inner.create_upload_for(key, sha256).await
            }
            async fn put_part(
                &self,
                key: &str,
                up: &$crate::UploadId,
                n: u32,
                body: bytes::Bytes,
                sha256: [u8; 32],
            ) -> $crate::Result<$crate::PartReceipt> {
                self.inner.put_part(key, up, n, body, sha256).await
            }
            async fn complete_upload(
                &self,
                key: &str,
                up: &$crate::UploadId,
                parts: &[$crate::PartReceipt],
                sha256: [u8; 32],
            ) -> $crate::Result<$crate::ObjectMeta> {
                self.inner.complete_upload(key, up, parts, sha256).await
            }
            async fn abort_upload(&self, key: &str, up: &$crate::UploadId) -> $crate::Result<()> {
                self.inner.abort_upload(key, up).await
            }
            async fn delete(&self, key: &str) -> $crate::Result<()> {
                self.inner.delete(key).await
            }
            async fn list_uploads(
                &self,
                prefix: &str,
            ) -> $crate::Result<Option<Vec<(String, $crate::UploadId)>>> {
                self.inner.list_uploads(prefix).await
            }
            async fn versioning(&self) -> $crate::Result<Option<$crate::Versioning>> {
                self.inner.versioning().await
            }
            async fn store_checksum(
                &self,
                key: &str,
            ) -> $crate::Result<Option<$crate::StoreChecksum>> {
                self.inner.store_checksum(key).await
            }
            fn supports_put_if_absent(&self) -> bool {
                self.inner.supports_put_if_absent()
            }
            async fn put_if_absent(
                &self,
                key: &str,
                body: bytes::Bytes,
                sha256: [u8; 32],
            ) -> $crate::Result<$crate::ObjectMeta> {
                self.inner.put_if_absent(key, body, sha256).await
            }
        }
    };
}
pub(crate) use delegate_backend;

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

/// Keys are `/`-separated, with no empty, `.` or `..` components and no control characters
/// (object_store's rules; S3 itself would take more).
/// The URL of object `path` under the bucket URL `base`, each path segment escaped (for
/// the requests object_store cannot make: the store-checksum HEADs). `url` and `what`
/// name the remote and the step in an error.
pub(crate) fn object_url(base: &str, path: &str, url: &str, what: &str) -> Result<url::Url> {
    let mut u = url::Url::parse(base)
        .map_err(|e| BackendError::Permanent(format!("{url}: {what}: {e}")))?;
    u.path_segments_mut()
        .map_err(|()| BackendError::Permanent(format!("{url}: {what}: not a base URL")))?
        .pop_if_empty()
        .extend(path.split('/'));
    Ok(u)
}

/// The error of a request we made ourselves that answered `status` (not 2xx): a missing
/// object, refused credentials, a transient failure worth a retry, else permanent.
pub(crate) fn status_error(status: u16, msg: String) -> BackendError {
    match status {
        404 => BackendError::NotFound(msg),
        401 | 403 => BackendError::Auth(msg),
        408 | 429 | 500..=599 => BackendError::transient(msg),
        _ => BackendError::Permanent(msg),
    }
}

pub fn check_key(key: &str) -> Result<()> {
    crate::check_key_with(key, |_, comp| check_component(comp))
}

fn check_component(comp: &str) -> std::result::Result<(), String> {
    if comp.is_empty() {
        return Err("empty path component".into());
    }
    if comp == "." || comp == ".." {
        return Err(format!("'{comp}' component"));
    }
    if comp.chars().any(|c| c.is_ascii_control()) {
        return Err("control character".into());
    }
    Ok(())
}

/// A list prefix: any string, but the folders it names in full must be valid components.
pub fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.starts_with('/') {
        return Err(BackendError::Permanent(format!(
            "invalid prefix {prefix:?}: must not start with '/'"
        )));
    }
    if prefix.chars().any(|c| c.is_ascii_control()) {
        return Err(BackendError::Permanent(format!(
            "invalid prefix {prefix:?}: control character"
        )));
    }
    if let Some((dirs, _partial)) = prefix.rsplit_once('/') {
        for comp in dirs.split('/') {
            check_component(comp).map_err(|why| {
                BackendError::Permanent(format!("invalid prefix {prefix:?}: {why}"))
            })?;
        }
    }
    Ok(())
}

fn parse_sha_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// A credential provider's failure, recognisable in an error chain (→ `Auth`).
#[derive(Debug)]
pub struct CredentialsUnavailable(pub String);

impl fmt::Display for CredentialsUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CredentialsUnavailable {}

/// Marker this module's HTTP layer appends to an error body that came with `Retry-After`.
const RETRY_AFTER_MARK: &str = "[pronto-retry-after-secs:";

/// Map an object_store error to the backend's error enum, at the edge. `what` names the
/// operation and key. Messages are built from the status, the S3/GCS error code and its
/// message only — never the raw body, which may echo the access key id
/// (`SignatureDoesNotMatch`) — and known secrets are redacted.
pub fn map_error(
    provider: &str,
    url: &str,
    what: &str,
    e: &object_store::Error,
    redactor: &Redactor,
) -> BackendError {
    use object_store::Error as E;
    let ctx = format!("{url}: {what}");

    // Walk the chain: credentials, transport errors, and the text of the response.
    let mut text = String::new();
    let mut transport: Option<String> = None;
    let mut creds: Option<String> = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<CredentialsUnavailable>() {
            creds = Some(c.0.clone());
        }
        if let Some(h) = err.downcast_ref::<HttpError>() {
            if transport.is_none() {
                transport = Some(match h.kind() {
                    HttpErrorKind::Timeout => "timed out".to_string(),
                    HttpErrorKind::Connect => format!("cannot connect: {h}"),
                    _ => format!("connection failed: {h}"),
                });
            }
        }
        text.push_str(&err.to_string());
        text.push('\n');
        cur = err.source();
    }
    let status = parse_status(&text);
    let code = xml_tag(&text, "Code");
    let message = xml_tag(&text, "Message");
    let retry_after = parse_retry_after_mark(&text);
    let detail = |fallback: &str| -> String {
        let s = match (&code, &message, status) {
            (Some(c), Some(m), Some(s)) => format!("{c}: {m} (HTTP {s})"),
            (Some(c), None, Some(s)) => format!("{c} (HTTP {s})"),
            (None, _, Some(s)) => format!("HTTP {s} {}", reason(s)),
            _ => fallback.to_string(),
        };
        redactor.redact(&format!("{ctx}: {s}"))
    };

    if let Some(c) = creds {
        return BackendError::Auth(redactor.redact(&format!("{ctx}: {provider} credentials: {c}")));
    }
    // A certificate that is not trusted (unknown CA, wrong name, expired) does not get
    // better by asking again: fail at once, and say how to trust a private CA.
    if status.is_none() {
        if let Some(line) = text.lines().find(|l| {
            l.contains("invalid peer certificate") || l.contains("certificate verify failed")
        }) {
            return BackendError::Permanent(redactor.redact(&format!(
                "{ctx}: failed to verify the server's TLS certificate ({}); for a private CA, set `ca_bundle` on this remote",
                line.trim()
            )));
        }
    }
    if status.is_none() && transport.is_some() {
        if let Some(cause) = unhealable_connect(&text) {
            let to = endpoint_in(&text).unwrap_or_else(|| "the endpoint".into());
            return BackendError::Permanent(
                redactor.redact(&format!("{ctx}: cannot connect to {to}: {cause}")),
            );
        }
    }
    if status.is_none() {
        if let Some(t) = transport {
            return BackendError::Transient {
                msg: redactor.redact(&format!("{ctx}: {t}")),
                retry_after: None,
            };
        }
    }
    match code.as_deref() {
        Some("NoSuchUpload") => return BackendError::UploadNotFound(detail("")),
        Some("BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch" | "InvalidChecksum") => {
            return BackendError::ChecksumMismatch {
                key: ctx,
                expected: "the checksum sent with the body".into(),
                actual: format!(
                    "a different one computed by the server, which refused the body ({})",
                    redactor.redact(&code.clone().unwrap_or_default())
                ),
            }
        }
        Some(
            "SlowDown"
            | "InternalError"
            | "ServiceUnavailable"
            | "RequestTimeout"
            | "OperationAborted"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeTooSkewed",
        ) => {
            return BackendError::Transient {
                msg: detail(""),
                retry_after,
            }
        }
        Some(
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired"
            | "AccountProblem"
            | "AllAccessDisabled"
            | "InvalidSecurity",
        ) => return BackendError::Auth(detail("")),
        Some("NoSuchBucket") => {
            return BackendError::Permanent(
                detail("") + " — the bucket does not exist (check the remote's URL and region)",
            )
        }
        Some("NoSuchKey") => return BackendError::NotFound(ctx),
        _ => {}
    }
    match e {
        E::NotFound { .. } => return BackendError::NotFound(ctx),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            return BackendError::Auth(detail("access denied"))
        }
        _ => {}
    }
    match status {
        Some(404) => BackendError::NotFound(ctx),
        Some(401 | 403) => BackendError::Auth(detail("")),
        Some(408 | 429 | 500 | 502 | 503 | 504) => BackendError::Transient {
            msg: detail(""),
            retry_after,
        },
        Some(_) => BackendError::Permanent(detail("")),
        None => {
            // No HTTP status: a client-side problem (bad config, bad response). Keep the
            // first line of object_store's text, which names the operation.
            let first = e.to_string();
            BackendError::Permanent(redactor.redact(&format!("{ctx}: {first}")))
        }
    }
}

/// A connection error that asking again will not heal — nothing listens at the address,
/// the host name does not resolve, no route — as the cause to report, from the text of
/// an error chain. A timeout or a reset is not one of them (those are retried).
pub fn unhealable_connect(text: &str) -> Option<&'static str> {
    const CAUSES: [(&str, &str); 6] = [
        (
            "Connection refused",
            "connection refused (is the server running, and are the host and port right?)",
        ),
        (
            "failed to lookup address",
            "unknown host: the name does not resolve (check the endpoint, and DNS)",
        ),
        (
            "Name or service not known",
            "unknown host: the name does not resolve (check the endpoint, and DNS)",
        ),
        (
            "nodename nor servname",
            "unknown host: the name does not resolve (check the endpoint, and DNS)",
        ),
        (
            "No route to host",
            "no route to host (is it up and reachable from here?)",
        ),
        (
            "Network is unreachable",
            "network unreachable (is this machine's network up?)",
        ),
    ];
    CAUSES
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map(|(_, cause)| *cause)
}

/// `scheme://host:port` of the first URL in an error text (reqwest names the URL it was
/// sending to).
fn endpoint_in(text: &str) -> Option<String> {
    let start = text.find("http://").or_else(|| text.find("https://"))?;
    let rest = &text[start..];
    let after_scheme = rest.find("://")? + 3;
    let end = rest[after_scheme..]
        .find(|c: char| c == '/' || c == ')' || c == '?' || c.is_whitespace())
        .map_or(rest.len(), |i| after_scheme + i);
    let url = &rest[..end];
    // Never a user or password, should one be in the URL.
    Some(match url[after_scheme..].rsplit_once('@') {
        Some((_, host)) => format!("{}{host}", &url[..after_scheme]),
        None => url.to_string(),
    })
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// `... status code: 404 Not Found: ...` → 404.
fn parse_status(text: &str) -> Option<u16> {
    let i = text.find("status code: ")? + "status code: ".len();
    text[i..].get(..3)?.parse().ok()
}

/// The trimmed text of the first `<tag>…</tag>` in `text`.
pub(crate) fn xml_tag(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let i = text.find(&open)? + open.len();
    let j = text[i..].find(&close)? + i;
    let v = text[i..j].trim();
    (!v.is_empty()).then(|| v.to_string())
}

fn parse_retry_after_mark(text: &str) -> Option<Duration> {
    let i = text.find(RETRY_AFTER_MARK)? + RETRY_AFTER_MARK.len();
    let j = text[i..].find(']')? + i;
    text[i..j]
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP date>`, capped at an hour.
fn retry_after_secs(headers: &http::HeaderMap) -> Option<u64> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let secs = match v.parse::<u64>() {
        Ok(s) => s,
        Err(_) => {
            let when = chrono_like_http_date(v)?;
            when.saturating_sub(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_secs(),
            )
        }
    };
    Some(secs.min(3600))
}

/// Parse an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
fn chrono_like_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u64
        + 1;
    let year: u64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

// ---------------------------------------------------------------------------------------
// HTTP layer under object_store
// ---------------------------------------------------------------------------------------

/// Client options shared by both stores: no overall timeout (the HTTP layer below sets
/// one per request), a short connect timeout, plain http only when allowed, and the
/// certificates of a remote's `ca_bundle` trusted in addition to the system's roots
/// (certificates are always verified).
pub fn client_options(allow_http: bool, ca_bundle: Option<&CaBundle>) -> ClientOptions {
    let mut o = ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(10));
    for cert in ca_bundle.map(|b| b.certs.as_slice()).unwrap_or_default() {
        o = o.with_root_certificate(cert.clone());
    }
    o
}

/// A PEM file of one or more CA certificates (a private S3's CA), trusted in addition to
/// the system's roots for one remote.
#[derive(Clone)]
pub struct CaBundle {
    /// The file it was read from.
    pub path: std::path::PathBuf,
    /// The file's bytes (what two bundles are compared by).
    pem: Vec<u8>,
    certs: Vec<object_store::Certificate>,
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.pem == other.pem
    }
}

impl Eq for CaBundle {}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaBundle({}, {} certificates)",
            self.path.display(),
            self.certs.len()
        )
    }
}

impl CaBundle {
    /// Reads and checks a PEM bundle: it must hold at least one certificate that an HTTP
    /// client accepts as a root. The error says what is wrong, for a config message.
    pub fn load(path: &std::path::Path) -> std::result::Result<CaBundle, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certs = object_store::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        let bundle = CaBundle {
            path: path.to_path_buf(),
            pem,
            certs,
        };
        // Building a client parses every certificate as a trust anchor.
        ReqwestConnector::default()
            .connect(&client_options(false, Some(&bundle)))
            .map_err(|e| {
                format!(
                    "{}: a certificate is not usable as a CA: {e}",
                    path.display()
                )
            })?;
        Ok(bundle)
    }

    /// How many certificates it holds.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Never true for a loaded bundle.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// object_store's retry settings for the two stores (see the module docs).
pub fn retry_config(reads: bool) -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: if reads { READ_RETRIES } else { 0 },
        retry_timeout: Duration::from_secs(180),
        ..Default::default()
    }
}

/// How long a request with a `len`-byte body may take to get its response headers.
pub fn request_timeout(len: u64) -> Duration {
    BASE_TIMEOUT + Duration::from_secs(len / MIN_UPLOAD_RATE)
}

/// The [`HttpConnector`] every store here is built with.
#[derive(Debug, Clone, Default)]
pub struct Connector {
    /// Send `Content-MD5` with every PUT body.
    pub content_md5: bool,
}

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Service {
            inner,
            content_md5: self.content_md5,
        }))
    }
}

#[derive(Debug)]
struct Service {
    inner: HttpClient,
    content_md5: bool,
}

#[derive(Debug)]
struct TimeoutError(String);

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimeoutError {}

#[async_trait]
impl HttpService for Service {
    async fn call(&self, mut req: HttpRequest) -> std::result::Result<HttpResponse, HttpError> {
        let len = req.body().content_length() as u64;
        if self.content_md5
            && req.method() == http::Method::PUT
            && !req.headers().contains_key("content-md5")
        {
            let md5 = body_md5(req.body().clone()).await?;
            let value = http::HeaderValue::from_str(&base64_encode(&md5))
                .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
            req.headers_mut().insert("content-md5", value);
        }
        let limit = request_timeout(len);
        let resp = match tokio::time::timeout(limit, self.inner.execute(req)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(HttpError::new(
                    HttpErrorKind::Timeout,
                    TimeoutError(format!(
                        "no response within {}s (for a {len}-byte body)",
                        limit.as_secs()
                    )),
                ))
            }
        };
        let (parts, body) = resp.into_parts();
        let body = if !parts.status.is_success() {
            match retry_after_secs(&parts.headers) {
                // Error bodies are small: read it and carry Retry-After along in it.
                Some(secs) => {
                    let bytes = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.bytes())
                        .await
                        .unwrap_or_else(|_| Ok(Bytes::new()))
                        .unwrap_or_default();
                    let mut text = String::from_utf8_lossy(&bytes).into_owned();
                    text.push_str(&format!("\n{RETRY_AFTER_MARK}{secs}]"));
                    HttpResponseBody::from(text)
                }
                None => body,
            }
        } else {
            HttpResponseBody::new(IdleTimeoutBody::new(body, BODY_IDLE_TIMEOUT))
        };
        Ok(HttpResponse::from_parts(parts, body))
    }
}

async fn body_md5(
    mut body: object_store::client::HttpRequestBody,
) -> std::result::Result<[u8; 16], HttpError> {
    use http_body_util::BodyExt;
    use md5::Digest;
    let mut h = md5::Md5::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            h.update(&data);
        }
    }
    Ok(h.finalize().into())
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A response body that fails when no data arrives for `idle`.
struct IdleTimeoutBody {
    inner: HttpResponseBody,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The last poll returned `Pending`: the clock is running. A consumer that is slow to
    /// poll again (a slow disk) does not count as an idle server.
    waiting: bool,
}

impl IdleTimeoutBody {
    fn new(inner: HttpResponseBody, idle: Duration) -> Self {
        IdleTimeoutBody {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
        }
    }
}

impl http_body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        if !this.waiting {
            let deadline = tokio::time::Instant::now() + this.idle;
            this.sleep.as_mut().reset(deadline);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.waiting = false;
                Poll::Ready(r)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::new(
                    HttpErrorKind::Timeout,
                    TimeoutError(format!(
                        "no data received for {}s while reading a response",
                        this.idle.as_secs()
                    )),
                )))),
                Poll::Pending => {
                    this.waiting = true;
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for good in ["a", "a/b", "a b/ü.tar.gz", "x/.hidden", "p+q%20=&.bin"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a\nb", "a\0b"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        for good in ["", "a", "a/", "a/b", "t-1/many"] {
            assert!(check_prefix(good).is_ok(), "{good}");
        }
        for bad in ["/", "/a", "a//b", "../x"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timeouts_scale_with_the_body() {
        assert_eq!(request_timeout(0), Duration::from_secs(60));
        assert_eq!(request_timeout(8 << 20), Duration::from_secs(92));
        assert!(request_timeout(5 << 30) > Duration::from_secs(5 * 3600));
    }

    #[test]
    fn error_text_parsing() {
        let t = "Error performing PUT http://x/b/k in 1ms - Server returned non-2xx status code: 503 Service Unavailable: <Error><Code>SlowDown</Code><Message>Reduce</Message></Error>\n[pronto-retry-after-secs:7]";
        assert_eq!(parse_status(t), Some(503));
        assert_eq!(xml_tag(t, "Code").as_deref(), Some("SlowDown"));
        assert_eq!(parse_retry_after_mark(t), Some(Duration::from_secs(7)));
        assert_eq!(
            chrono_like_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_download_times_out_but_a_slow_reader_does_not() {
        use http_body_util::BodyExt;
        type Frame = std::result::Result<http_body::Frame<Bytes>, HttpError>;
        let pending = futures::stream::pending::<Frame>();
        let body = HttpResponseBody::new(http_body_util::StreamBody::new(pending));
        let mut b = IdleTimeoutBody::new(body, Duration::from_secs(5));
        let err = b.frame().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), HttpErrorKind::Timeout);

        // Data that is there when asked for, however late, is no stall.
        let chunks = futures::stream::iter(vec![
            Ok::<_, HttpError>(http_body::Frame::data(Bytes::from_static(b"a"))),
            Ok(http_body::Frame::data(Bytes::from_static(b"b"))),
        ]);
        let body = HttpResponseBody::new(http_body_util::StreamBody::new(chunks));
        let mut b = IdleTimeoutBody::new(body, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(b.frame().await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(b.frame().await.unwrap().is_ok());
        assert!(b.frame().await.is_none());
    }

    #[test]
    fn redactor_hides_secrets() {
        let r = Redactor::default();
        r.add("AKIAEXAMPLEKEY123");
        r.add("short");
        assert_eq!(
            r.redact("id AKIAEXAMPLEKEY123 and short"),
            "id [redacted] and short"
        );
    }
}
