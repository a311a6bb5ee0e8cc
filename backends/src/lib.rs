//! Remote storage for pronto-offsite, behind one [`Backend`] trait.
//!
//! Backends implement *primitives only*: listing, reading, atomic single puts and
//! multipart uploads. Everything with policy in it — what to upload, retries,
//! concurrency, verification, pruning — lives in the CLI crate's `replicate` and
//! `plan` modules, so each backend stays small and every backend is held to the
//! same contract by the shared [`conformance`] suite.

pub mod conformance;
pub mod error;
pub mod gcs;
pub mod local;
pub mod objstore;
pub mod s3;
pub mod sftp;

use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

pub use error::{io_advice, BackendError, Result};

/// A stream of bytes read from a backend.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// What a backend knows about one stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Key relative to the backend's root (its configured prefix), `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The SHA-256 the writer recorded for this object, when the backend can store one.
    pub sha256: Option<[u8; 32]>,
    /// When the store last wrote the object, by the store's own clock (S3/GCS
    /// `Last-Modified`, the file's mtime on file:// and sftp). `head` fills it in where
    /// the store reports it (`None`: unknown); `doctor` compares it with this host's
    /// clock after writing a probe object.
    pub modified: Option<std::time::SystemTime>,
}

/// A checksum that a store computed from the bytes it holds (see
/// [`Backend::store_checksum`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChecksum {
    /// The SHA-256 of the whole object (S3 `FULL_OBJECT`: a single PUT).
    Sha256([u8; 32]),
    /// S3's composite checksum of a multipart upload: the SHA-256 of the concatenated
    /// SHA-256 digests of its `parts` parts, in part order.
    Sha256OfParts { digest: [u8; 32], parts: u32 },
    /// GCS's CRC32C (Castagnoli) of the whole object, which it keeps for every object,
    /// multipart and composed ones included (`x-goog-hash: crc32c=…`).
    Crc32c(u32),
}

/// The part sizes of a backend's multipart uploads: its limits, which the engine must
/// respect, and the size it prefers, which the engine plans with ([`Backend::capabilities`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Smallest size of any part but the last.
    pub min_part_size: u64,
    /// Largest size of one part.
    pub max_part_size: u64,
    /// The part size this backend works best with, between the two limits. The engine
    /// uses it unless the object would then need more than `max_parts` parts, in which
    /// case it takes the smallest size that fits (rounded up to a MiB, at most
    /// `max_part_size`). The conformance suite uploads in parts of this size.
    pub preferred_part_size: u64,
    /// Most parts one upload may have.
    pub max_parts: u32,
}

/// The id of a multipart upload, as the backend returned it. Saved in the push
/// journal so that a new process can finish the upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadId(pub String);

/// Proof that one part was stored, exactly as the backend returned it.
/// Saved in the push journal; `complete_upload` takes these back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReceipt {
    /// 1-based part number.
    pub number: u32,
    /// Size of the part in bytes.
    pub size: u64,
    /// Backend-specific token (an ETag, a content id, an offset…).
    pub token: String,
}

/// A bucket's object versioning, where the store has it (S3): a deleted object's bytes
/// stay as a noncurrent version, and cost, until a lifecycle rule expires them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioning {
    /// `Enabled` or `Suspended` (versions made while it was on are kept).
    pub status: String,
    /// Whether a lifecycle rule expires noncurrent versions (`NoncurrentVersionExpiration`).
    pub noncurrent_expiration: bool,
}

/// A callback told of the bytes a long write has done (a progress bar's counter).
pub type OnBytes = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// One remote store.
///
/// # Contract (checked by [`conformance`])
/// - Keys are `/`-separated and relative to the backend's root; a backend never
///   touches anything outside its root.
/// - Nothing is visible under `key` before [`put`](Backend::put) or
///   [`complete_upload`](Backend::complete_upload) returns successfully; a failed or
///   interrupted write leaves the previous state (usually: no object).
/// - `put` and `put_part` verify the body against the given SHA-256 and fail with
///   [`BackendError::ChecksumMismatch`] without storing anything when it differs.
/// - Re-sending a part replaces it. Parts may be sent in any order.
/// - An [`UploadId`] and its [`PartReceipt`]s saved to disk can be completed by a new
///   process with a new backend instance: that is how a killed push resumes.
/// - [`list`](Backend::list) returns every object under the prefix, or an error —
///   never a silently truncated list. In-progress uploads are not listed.
/// - [`delete`](Backend::delete) and [`abort_upload`](Backend::abort_upload) are
///   idempotent: a missing object or upload is success.
/// - [`head`](Backend::head) and [`get`](Backend::get) of a missing key fail with
///   [`BackendError::NotFound`].
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A human-readable location such as `file:///mnt/nas/pronto`, never with secrets.
    fn describe(&self) -> String;
    /// Part size limits.
    fn capabilities(&self) -> Capabilities;
    /// Every object whose key starts with `prefix`, sorted by key. Complete, or an error.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Metadata of one object.
    async fn head(&self, key: &str) -> Result<ObjectMeta>;
    /// The object's bytes, or the given byte range of them.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream>;
    /// Store `body` under `key` atomically, after checking it against `sha256`.
    async fn put(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta>;
    /// Store the local file at `path` under `key` in one pass, where this backend writes
    /// to local files itself (file://): it reads the file once, hashes what it writes,
    /// syncs once and renames; nothing is visible under `key` unless what was written
    /// hashes to `sha256` ([`BackendError::ChecksumMismatch`] otherwise, nothing left).
    /// `on_bytes` is told of each chunk written (progress). `Ok(None)`: this backend has
    /// no such path (the default); the caller then uses [`put`](Backend::put) or a
    /// multipart upload.
    async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        sha256: [u8; 32],
        on_bytes: OnBytes,
    ) -> Result<Option<ObjectMeta>> {
        let _ = (key, path, sha256, on_bytes);
        Ok(None)
    }
    /// Start a multipart upload to `key`.
    async fn create_upload(&self, key: &str) -> Result<UploadId>;
    /// Start a multipart upload to `key` whose whole object will hash to `sha256`.
    /// Stores that cannot take metadata at completion (S3, GCS) record it now, so that
    /// [`head`](Backend::head) reports it later without a download. The default ignores it.
    async fn create_upload_for(&self, key: &str, sha256: [u8; 32]) -> Result<UploadId> {
        let _ = sha256;
        self.create_upload(key).await
    }
    /// Store part `n` (1-based) of an upload. Every part but the last has the same size,
    /// which the caller chooses within [`Capabilities`].
    async fn put_part(
        &self,
        key: &str,
        up: &UploadId,
        n: u32,
        body: Bytes,
        sha256: [u8; 32],
    ) -> Result<PartReceipt>;
    /// Assemble the parts (given in part order) and make the object visible under `key`.
    /// `sha256` is the whole object's hash; backends that can store it do.
    async fn complete_upload(
        &self,
        key: &str,
        up: &UploadId,
        parts: &[PartReceipt],
        sha256: [u8; 32],
    ) -> Result<ObjectMeta>;
    /// Forget an upload and its parts. Idempotent.
    async fn abort_upload(&self, key: &str, up: &UploadId) -> Result<()>;
    /// Remove one object. Idempotent.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Multipart uploads in progress (started, neither completed nor aborted) whose key
    /// starts with `prefix`, as `(key, id)`: what `push --cleanup` aborts when no journal
    /// knows it (a push killed after starting an upload, before journaling its id).
    /// `None`: this backend cannot list them (the default).
    async fn list_uploads(&self, prefix: &str) -> Result<Option<Vec<(String, UploadId)>>> {
        let _ = prefix;
        Ok(None)
    }
    /// The bucket's object versioning, when it was ever turned on (`None`: off, or the
    /// store has no such thing, the default). Read by `doctor` and prune, which say that
    /// deleted archives keep costing until a lifecycle rule expires old versions.
    async fn versioning(&self) -> Result<Option<Versioning>> {
        Ok(None)
    }
    /// The checksum the store itself computed from the bytes it holds under `key` (not
    /// one a writer recorded beside them): S3's `x-amz-checksum-sha256`, whole-object for
    /// a single PUT, composite for a multipart upload. `None` (the default): this store
    /// keeps none, or not for this object; the caller then relies on what else it has.
    async fn store_checksum(&self, key: &str) -> Result<Option<StoreChecksum>> {
        let _ = key;
        Ok(None)
    }
    /// Whether the `sha256` that [`head`](Backend::head) reports was computed by this
    /// backend from the bytes it stored — file:// hashes the finished file before its
    /// rename, sftp runs `sha256sum` on the server or reads the file back — rather than
    /// recorded beside them by the writer (object metadata, the default `false`), which
    /// proves nothing about the bytes. Push trusts a recorded hash after an upload only
    /// when this is `true`; otherwise it asks [`store_checksum`](Backend::store_checksum)
    /// or reads the object back.
    fn sha256_is_computed_from_stored_bytes(&self) -> bool {
        false
    }
    /// Whether [`put_if_absent`](Backend::put_if_absent) is implemented (prune leases use it).
    fn supports_put_if_absent(&self) -> bool {
        false
    }
    /// Store `body` under `key` only when nothing is there, atomically (a conditional
    /// create, for lock objects): [`BackendError::AlreadyExists`] when something is.
    /// The default: not supported ([`BackendError::Permanent`]).
    async fn put_if_absent(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta> {
        let _ = (body, sha256);
        Err(BackendError::Permanent(format!(
            "{}: conditional create of {key} is not supported by this backend",
            self.describe()
        )))
    }
}

/// Check `body` against the SHA-256 it was sent with: [`BackendError::ChecksumMismatch`]
/// naming `what` when it differs. Every backend calls this before storing anything.
pub fn check_sha256(what: &str, body: &[u8], expected: &[u8; 32]) -> Result<()> {
    check_digest(what, &sha256_of(body), expected)
}

/// Compare a SHA-256 computed from stored or sent bytes with the expected one:
/// [`BackendError::ChecksumMismatch`] naming `what` when they differ.
pub fn check_digest(what: &str, actual: &[u8; 32], expected: &[u8; 32]) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(BackendError::ChecksumMismatch {
            key: what.to_string(),
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        })
    }
}

/// The `(start, len)` to read for `range` of an object of `size` bytes: a range past the
/// end is cut at the end, an empty range reads nothing, a reversed range or one that
/// starts beyond the end is an error.
pub fn byte_range(key: &str, range: Option<Range<u64>>, size: u64) -> Result<(u64, u64)> {
    match range {
        None => Ok((0, size)),
        Some(r) if r.start > r.end => Err(BackendError::Permanent(format!(
            "{key}: invalid range {}..{}",
            r.start, r.end
        ))),
        Some(r) if r.start == r.end => Ok((r.start.min(size), 0)),
        Some(r) if r.start >= size => Err(BackendError::Permanent(format!(
            "{key}: range {}..{} starts beyond the object's {size} bytes",
            r.start, r.end
        ))),
        Some(r) => Ok((r.start, r.end.min(size) - r.start)),
    }
}

/// How many bytes are hashed at a time when a part is read or written and hashed in
/// one pass: small enough to be hashed while still in the CPU's cache. Hashing a whole
/// 8 MiB part after reading or before writing it reads it from memory a second time,
/// measurably slower on a machine busy compressing (BENCHMARKS.md, issue 20).
pub const HASH_CHUNK: usize = 256 * 1024;

/// Refuse a part number or part size outside the backend's [`Capabilities`].
pub fn check_part(key: &str, n: u32, len: usize, caps: &Capabilities) -> Result<()> {
    if n == 0 || n > caps.max_parts {
        return Err(BackendError::Permanent(format!(
            "{key}: part number {n} outside 1..={}",
            caps.max_parts
        )));
    }
    if len as u64 > caps.max_part_size {
        return Err(BackendError::Permanent(format!(
            "{key}: part {n} has {len} bytes, more than the {} allowed",
            caps.max_part_size
        )));
    }
    Ok(())
}

/// Check the receipts of a completion against an upload whose parts are `part_size`
/// bytes (backends that write part n at offset (n - 1) × `part_size` of one staging
/// file: local and sftp): parts `1..=k` in order, every one but the last exactly
/// `part_size`, the last at most that, each with a well-formed token. Returns the
/// tokens (each part's SHA-256). Errors are [`BackendError::Permanent`] naming the key.
pub fn check_fixed_part_receipts(
    key: &str,
    parts: &[PartReceipt],
    part_size: u64,
) -> Result<Vec<[u8; 32]>> {
    if parts.is_empty() {
        return Err(BackendError::Permanent(format!(
            "{key}: cannot complete an upload without parts"
        )));
    }
    let mut tokens = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if part.number as usize != i + 1 {
            return Err(BackendError::Permanent(format!(
                "{key}: the parts must be 1, 2, 3 … in order without gaps (receipt {} is for part {})",
                i + 1,
                part.number
            )));
        }
        let last = i + 1 == parts.len();
        if (!last && part.size != part_size) || part.size > part_size {
            return Err(BackendError::Permanent(format!(
                "{key}: part {} is {} bytes; every part but the last must be exactly {part_size} (the last at most that)",
                part.number, part.size
            )));
        }
        let token = hex::decode(&part.token)
            .ok()
            .and_then(|t| <[u8; 32]>::try_from(t).ok())
            .ok_or_else(|| {
                BackendError::Permanent(format!(
                    "{key}: part {}: malformed receipt token {:?}",
                    part.number, part.token
                ))
            })?;
        tokens.push(token);
    }
    Ok(tokens)
}

/// Check a key's shape: not empty, not starting with `/`, and every `/`-separated
/// component accepted by `component(index, text)` (each backend's own rules: which
/// characters, which reserved names). Errors are [`BackendError::Permanent`] naming the key.
pub fn check_key_with(
    key: &str,
    component: impl Fn(usize, &str) -> std::result::Result<(), String>,
) -> Result<()> {
    let bad = |why: &str| BackendError::Permanent(format!("invalid key {key:?}: {why}"));
    if key.is_empty() {
        return Err(bad("empty"));
    }
    if key.starts_with('/') {
        return Err(bad("must not start with '/'"));
    }
    for (i, comp) in key.split('/').enumerate() {
        component(i, comp).map_err(|why| bad(&why))?;
    }
    Ok(())
}

/// SHA-256 of a byte slice.
pub fn sha256_of(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Read a whole stream into memory (for manifests and tests; archives are streamed).
pub async fn collect(mut stream: ByteStream) -> Result<Vec<u8>> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}
