//! Replication: the one place with the upload loop, part concurrency, retries
//! (through [`crate::retry`]) and end-to-end SHA-256 verification. Backends only
//! provide primitives.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use pronto_backends::{
    sha256_of, Backend, BackendError, Capabilities, PartReceipt, StoreChecksum, UploadId,
    HASH_CHUNK,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::journal::{Intent, Journal, MAX_UPLOAD_FAILURES};
use crate::manifest::Manifest;
use crate::plan::Upload;
use crate::retry::{retry, RetryPolicy};

/// A configured remote, opened.
#[derive(Clone)]
pub struct RemoteHandle {
    pub name: String,
    pub backend: Arc<dyn Backend>,
    pub part_concurrency: usize,
    pub retry: RetryPolicy,
}

/// What one upload did.
#[derive(Debug, Default, Clone, Copy)]
pub struct UploadStats {
    /// Bytes sent in this run (parts resumed from a journal are not counted).
    pub bytes_sent: u64,
    /// Parts that a journal said were already there.
    pub parts_resumed: u32,
}

/// Part size for an object of `size` bytes: the backend's preferred size, unless the
/// object would then need more parts than the backend allows; then the smallest size
/// that fits, rounded up to a MiB. Never below the backend's minimum nor above its
/// maximum.
pub fn part_size_for(size: u64, caps: &Capabilities) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let by_count = size.div_ceil(caps.max_parts.max(1) as u64).div_ceil(MIB) * MIB;
    caps.preferred_part_size
        .max(by_count)
        .max(caps.min_part_size)
        .min(caps.max_part_size.max(caps.min_part_size))
}

/// Upload one archive and then its manifest (the commit marker, last), verifying the
/// remote copy's SHA-256 in between.
pub async fn upload_archive(
    r: &RemoteHandle,
    backup_dir: &Path,
    up: &Upload,
) -> Result<UploadStats> {
    upload_archive_with(r, backup_dir, up, None).await
}

/// [`upload_archive`], counting the bytes sent on `progress` (per request or part).
pub async fn upload_archive_with(
    r: &RemoteHandle,
    backup_dir: &Path,
    up: &Upload,
    progress: Option<&crate::progress::Progress>,
) -> Result<UploadStats> {
    let file = &up.archive.name.file;
    let sha = up.manifest.sha256_bytes()?;
    let size = up.manifest.size;
    let caps = r.backend.capabilities();
    let part_size = part_size_for(size, &caps);
    // Before anything is written: `push --cleanup` may abort what this upload leaves.
    let intent = Intent::record(backup_dir, &r.name, file)?;
    // What the store's own checksum of the copy is checked against.
    let local = LocalCopy::open(&up.archive.path, part_size).ok();

    // A re-upload never takes away a complete copy of this very archive (another push
    // may have finished it since this one listed the remote): when the remote's
    // manifest names the same bytes and the copy verifies, there is nothing to do.
    // Only a manifest that names other bytes, or whose copy does not verify, is taken
    // away first, so nobody restores a copy that is being replaced.
    match remote_manifest(r, file).await? {
        None => {}
        Some(Some(m))
            if m.sha256 == up.manifest.sha256
                && m.size == size
                && verify_remote(r, file, size, sha, local.as_ref())
                    .await
                    .is_ok() =>
        {
            tracing::info!(
                "{}: {file} is already there complete (manifest and verified copy): not uploaded again",
                r.name
            );
            intent.done()?;
            return Ok(UploadStats::default());
        }
        Some(_) => {
            // The remote copy is taken away only for local bytes that are what their
            // manifest says (a local manifest naming other bytes must not cost the
            // remote its complete copy).
            let path = up.archive.path.clone();
            let (local_sha, _) =
                tokio::task::spawn_blocking(move || crate::archive::sha256_file(&path)).await??;
            if local_sha != sha {
                bail!(
                    "local archive {} no longer matches its manifest (sha256 differs); run `pronto-offsite verify`; the copy on {} was left as it is",
                    up.archive.path.display(),
                    r.name
                );
            }
            let mkey = Manifest::file_name_for(file);
            retry(r.retry, &format!("delete of {mkey} on {}", r.name), || {
                r.backend.delete(&mkey)
            })
            .await
            .with_context(|| format!("{}: removing stale manifest of {file}", r.name))?;
        }
    }

    let stats = if let Some(stats) = put_file(r, backup_dir, up, sha, progress).await? {
        stats
    } else if size <= part_size {
        let path = up.archive.path.clone();
        let body = tokio::task::spawn_blocking(move || std::fs::read(&path))
            .await?
            .with_context(|| format!("reading {}", up.archive.path.display()))?;
        let body = Bytes::from(body);
        if sha256_of(&body) != sha {
            bail!(
                "local archive {} no longer matches its manifest (sha256 differs); run `pronto-offsite verify`",
                up.archive.path.display()
            );
        }
        retry(r.retry, &format!("upload of {file} to {}", r.name), || {
            r.backend.put(file, body.clone(), sha)
        })
        .await
        .with_context(|| format!("{}: uploading {file}", r.name))?;
        if let Some(p) = progress {
            p.inc(size);
        }
        UploadStats {
            bytes_sent: size,
            parts_resumed: 0,
        }
    } else {
        multipart(
            r,
            backup_dir,
            &up.archive.path,
            file,
            size,
            sha,
            part_size,
            progress,
        )
        .await?
    };

    verify_remote(r, file, size, sha, local.as_ref()).await?;
    write_manifest(r, &up.manifest, file).await?;
    intent.done()?;
    Ok(stats)
}

/// The one-pass upload of a backend that writes local files itself (file://; see
/// [`Backend::put_file`]); `None` when the remote has no such path. A multipart upload
/// of the same archive that an earlier push left (its journal) is aborted once the
/// copy is in place: its parts are no longer needed.
async fn put_file(
    r: &RemoteHandle,
    backup_dir: &Path,
    up: &Upload,
    sha: [u8; 32],
    progress: Option<&crate::progress::Progress>,
) -> Result<Option<UploadStats>> {
    let file = &up.archive.name.file;
    let path = &up.archive.path;
    let counter = progress.map(|p| p.counter());
    let stored = retry(r.retry, &format!("upload of {file} to {}", r.name), || {
        let on_bytes = counter
            .clone()
            .unwrap_or_else(|| std::sync::Arc::new(|_| {}));
        r.backend.put_file(file, path, sha, on_bytes)
    })
    .await;
    let meta = match stored {
        Ok(Some(meta)) => meta,
        Ok(None) => return Ok(None),
        Err(BackendError::ChecksumMismatch { .. }) => bail!(
            "local archive {} no longer matches its manifest (sha256 differs); run `pronto-offsite verify`",
            path.display()
        ),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("{}: uploading {file}", r.name))),
    };
    let jpath = Journal::path(backup_dir, &r.name, file);
    if let Some(old) = Journal::load(&jpath) {
        let _ = r.backend.abort_upload(&old.key, &old.upload_id).await;
        Journal::remove(&jpath)?;
    }
    Ok(Some(UploadStats {
        bytes_sent: meta.size,
        parts_resumed: 0,
    }))
}

/// The remote's manifest of archive `file`: `None` when it has none, `Some(None)` when
/// it has one that is not a manifest this version reads. An error when it cannot tell.
async fn remote_manifest(r: &RemoteHandle, file: &str) -> Result<Option<Option<Manifest>>> {
    let mkey = Manifest::file_name_for(file);
    let res = retry(
        r.retry,
        &format!("download of {mkey} from {}", r.name),
        || async { pronto_backends::collect(r.backend.get(&mkey, None).await?).await },
    )
    .await;
    match res {
        Ok(bytes) => Ok(Some(
            Manifest::from_json(&bytes, &format!("{}:{mkey}", r.name)).ok(),
        )),
        Err(BackendError::NotFound(_)) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}: reading {mkey}", r.name)),
    }
}

/// Put `manifest` beside the archive `file` on the remote: the commit marker, always
/// written last (an archive without one is an incomplete upload).
async fn write_manifest(r: &RemoteHandle, manifest: &Manifest, file: &str) -> Result<()> {
    let body = Bytes::from(manifest.for_remote().to_json());
    let msha = sha256_of(&body);
    let mkey = Manifest::file_name_for(file);
    retry(r.retry, &format!("upload of {mkey} to {}", r.name), || {
        r.backend.put(&mkey, body.clone(), msha)
    })
    .await
    .with_context(|| format!("{}: uploading {mkey}", r.name))?;
    Ok(())
}

/// Finish an archive whose bytes reached the remote some other way (`backup --push`
/// streams them while the archive is written, see the `stream_upload` module): check the
/// remote copy as [`upload_archive`] does (size, then the SHA-256 the backend recorded,
/// else a read-back), then write the manifest, the commit marker, last.
///
/// `parts_checked`: every part went out with its own SHA-256, which the backend checked
/// on arrival, and the sender hashed exactly the bytes it sent to the archive's SHA-256.
/// Then a backend that records no whole-object hash (S3/GCS multipart created before the
/// hash was known) is checked by size alone: reading the object back would double the
/// transfer (and the cloud egress bill) to prove what the part checksums already proved.
pub async fn verify_and_write_manifest(
    r: &RemoteHandle,
    manifest: &Manifest,
    parts_checked: bool,
    local: Option<&LocalCopy>,
) -> Result<()> {
    let file = &manifest.file;
    let sha = manifest.sha256_bytes()?;
    verify_remote_with(r, file, manifest.size, sha, !parts_checked, local).await?;
    write_manifest(r, manifest, file).await
}

/// The local archive an uploaded copy is checked against, and the part size its
/// upload used (to rebuild a store's composite checksum of a multipart upload).
pub struct LocalCopy {
    pub file: Arc<std::fs::File>,
    pub part_size: u64,
}

impl LocalCopy {
    pub fn open(path: &Path, part_size: u64) -> Result<LocalCopy> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("opening {} to check its upload", path.display()))?;
        Ok(LocalCopy {
            file: Arc::new(file),
            part_size,
        })
    }
}

/// Check the remote copy: the backend's recorded hash when it keeps one, else read it back.
async fn verify_remote(
    r: &RemoteHandle,
    key: &str,
    size: u64,
    sha: [u8; 32],
    local: Option<&LocalCopy>,
) -> Result<()> {
    verify_remote_with(r, key, size, sha, true, local)
        .await
        .map(drop)
}

/// How [`verify_remote_with`] found a remote copy to be the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proven {
    /// By a checksum the store or the backend computed from the stored bytes.
    ByStoredChecksum,
    /// By reading the copy back and hashing it.
    ByReadingBack,
    /// By its size alone (no checksum, and reading back was not asked for).
    SizeOnly,
}

/// [`verify_remote_with`] for a copy whose local archive is at `local` (`prune`: before a
/// local copy goes, its remote copy must be proven). A copy that contradicts the archive
/// is a verification error ([`crate::error::verification`]).
pub(crate) async fn prove_remote_copy(
    r: &RemoteHandle,
    key: &str,
    size: u64,
    sha: [u8; 32],
    local: &Path,
    read_back: bool,
) -> Result<Proven> {
    let local = LocalCopy::open(local, part_size_for(size, &r.backend.capabilities())).ok();
    verify_remote_with(r, key, size, sha, read_back, local.as_ref()).await
}

/// Check the remote copy's size, then its bytes. First by the checksum the store
/// computed from the bytes it holds ([`Backend::store_checksum`]): a whole-object
/// SHA-256 against the manifest's; a composite of part checksums against the same
/// composite of the local archive (read once here, its whole SHA-256 checked against
/// the manifest too); GCS's CRC32C against the local archive's. A store without one:
/// the SHA-256 the backend computed from the stored bytes (file:// and sftp, at
/// completion: [`Backend::sha256_is_computed_from_stored_bytes`]), else (with
/// `read_back`) the object read back and hashed — never a hash recorded in object
/// metadata; without either, size alone. Says which it was.
async fn verify_remote_with(
    r: &RemoteHandle,
    key: &str,
    size: u64,
    sha: [u8; 32],
    read_back: bool,
    local: Option<&LocalCopy>,
) -> Result<Proven> {
    let meta = retry(r.retry, &format!("head of {key} on {}", r.name), || {
        r.backend.head(key)
    })
    .await
    .with_context(|| format!("{}: checking {key}", r.name))?;
    if meta.size != size {
        bail!(
            "{}: {key} has {} bytes after upload, expected {size}",
            r.name,
            meta.size
        );
    }
    if store_proves(r, key, size, sha, local).await? {
        return Ok(Proven::ByStoredChecksum);
    }
    // A hash the backend computed from the stored bytes (file://, sftp) is proof; one the
    // writer recorded beside them (object metadata) is not, and is never consulted here.
    let (got, how) = match meta.sha256 {
        Some(h) if r.backend.sha256_is_computed_from_stored_bytes() => {
            (h, Proven::ByStoredChecksum)
        }
        _ if read_back => {
            let (h, n) = hash_remote(r, key).await?;
            tracing::info!(
                "{}: {key} verified by reading it back ({n} bytes): the store keeps no checksum of its own",
                r.name
            );
            (h, Proven::ByReadingBack)
        }
        _ => return Ok(Proven::SizeOnly),
    };
    if got != sha {
        return Err(crate::error::verification(format!(
            "{}: {key} has sha256 {}, expected {}",
            r.name,
            hex::encode(got),
            hex::encode(sha)
        )));
    }
    Ok(how)
}

/// Whether the checksum the store computed for `key` proves its bytes are the archive
/// whose SHA-256 is `sha` (`verify --remote`): `Ok(true)` proven, `Ok(false)` when the store
/// keeps no checksum or cannot decide (a composite without the local archive at
/// `local`), a verification error when it contradicts the archive.
pub(crate) async fn store_checksum_proves(
    r: &RemoteHandle,
    key: &str,
    size: u64,
    sha: [u8; 32],
    local: Option<&Path>,
) -> Result<bool> {
    let part_size = part_size_for(size, &r.backend.capabilities());
    let local = local.and_then(|p| LocalCopy::open(p, part_size).ok());
    store_proves(r, key, size, sha, local.as_ref()).await
}

/// Read the checksum the store computed for `key` (with retries) and judge it with
/// [`store_checksum_matches`]; `Ok(false)` when the store keeps none.
async fn store_proves(
    r: &RemoteHandle,
    key: &str,
    size: u64,
    sha: [u8; 32],
    local: Option<&LocalCopy>,
) -> Result<bool> {
    let computed = retry(r.retry, &format!("checksum of {key} on {}", r.name), || {
        r.backend.store_checksum(key)
    })
    .await
    .with_context(|| {
        format!(
            "{}: reading the checksum the store computed for {key}",
            r.name
        )
    })?;
    match computed {
        Some(c) => store_checksum_matches(r, key, size, sha, c, local).await,
        None => Ok(false),
    }
}

/// Judge the store's own checksum `c` of `key`: `Ok(true)` when it proves the bytes,
/// a verification error when it contradicts them, `Ok(false)` when it cannot decide
/// (a composite without the local archive, or of another part size).
async fn store_checksum_matches(
    r: &RemoteHandle,
    key: &str,
    size: u64,
    sha: [u8; 32],
    c: StoreChecksum,
    local: Option<&LocalCopy>,
) -> Result<bool> {
    let (want, got, what) = match c {
        StoreChecksum::Sha256(got) => (sha.to_vec(), got.to_vec(), "sha256"),
        StoreChecksum::Sha256OfParts { digest, parts } => {
            let Some(l) = hash_local(r, key, size, sha, local).await? else {
                return Ok(false);
            };
            if l.parts != parts {
                tracing::debug!(
                    "{}: {key} was uploaded in {parts} parts, not {} of {} bytes: its composite checksum cannot be rebuilt here",
                    r.name,
                    l.parts,
                    local.map_or(0, |l| l.part_size)
                );
                return Ok(false);
            }
            (
                l.composite.to_vec(),
                digest.to_vec(),
                "composite sha256 of its parts",
            )
        }
        StoreChecksum::Crc32c(got) => {
            let Some(l) = hash_local(r, key, size, sha, local).await? else {
                return Ok(false);
            };
            (
                l.crc32c.to_be_bytes().to_vec(),
                got.to_be_bytes().to_vec(),
                "crc32c",
            )
        }
    };
    if want != got {
        return Err(crate::error::verification(format!(
            "{}: the store computed {what} {} for {key}, but the local archive gives {}",
            r.name,
            hex::encode(got),
            hex::encode(want)
        )));
    }
    tracing::info!(
        "{}: {key} verified by the {what} the store computed",
        r.name
    );
    Ok(true)
}

/// The checksums a store may keep, computed from the local archive `local` (`None`
/// without one), which must still match its manifest's SHA-256 `sha`.
async fn hash_local(
    r: &RemoteHandle,
    key: &str,
    size: u64,
    sha: [u8; 32],
    local: Option<&LocalCopy>,
) -> Result<Option<LocalHashes>> {
    let Some(l) = local else {
        return Ok(None);
    };
    let (file, part_size) = (Arc::clone(&l.file), l.part_size);
    let hashes = tokio::task::spawn_blocking(move || hash_parts(&file, size, part_size))
        .await?
        .with_context(|| format!("{}: reading the local copy of {key}", r.name))?;
    if hashes.sha256 != sha {
        bail!(
            "the local archive {key} no longer matches its manifest (sha256 {}, manifest {}); run `pronto-offsite verify`",
            hex::encode(hashes.sha256),
            hex::encode(sha)
        );
    }
    Ok(Some(hashes))
}

/// What [`hash_parts`] computes in one read of a file.
struct LocalHashes {
    sha256: [u8; 32],
    /// The SHA-256 of the concatenated SHA-256s of its parts (S3's composite checksum).
    composite: [u8; 32],
    /// How many parts of the given size it has.
    parts: u32,
    /// Its CRC32C (Castagnoli), as GCS computes it.
    crc32c: u32,
}

/// Read `file` once: its whole SHA-256, the SHA-256 of the concatenated SHA-256s of its
/// `part_size` parts (S3's composite checksum) with the number of parts, and its CRC32C.
fn hash_parts(file: &std::fs::File, size: u64, part_size: u64) -> std::io::Result<LocalHashes> {
    use std::os::unix::fs::FileExt;
    let part_size = part_size.max(1);
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    let mut whole = Sha256::new();
    let mut of_parts = Sha256::new();
    let mut part = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut pos, mut in_part, mut parts) = (0u64, 0u64, 0u32);
    while pos < size {
        let want = (size - pos).min(part_size - in_part).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ends at {pos} bytes, expected {size}"),
            ));
        }
        whole.update(&buf[..n]);
        part.update(&buf[..n]);
        crc.update(&buf[..n]);
        pos += n as u64;
        in_part += n as u64;
        if in_part == part_size || pos == size {
            of_parts.update(std::mem::replace(&mut part, Sha256::new()).finalize());
            parts += 1;
            in_part = 0;
        }
    }
    Ok(LocalHashes {
        sha256: whole.finalize().into(),
        composite: of_parts.finalize().into(),
        parts,
        crc32c: crc.finalize() as u32,
    })
}

/// Stream an object and hash it.
pub async fn hash_remote(r: &RemoteHandle, key: &str) -> Result<([u8; 32], u64)> {
    let stream = retry(
        r.retry,
        &format!("download of {key} from {}", r.name),
        || r.backend.get(key, None),
    )
    .await
    .with_context(|| format!("{}: reading {key}", r.name))?;
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    let mut stream = stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("{}: reading {key}", r.name))?;
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((hasher.finalize().into(), n))
}

/// A multipart upload of `path` to `key`, resumed from its journal when one matches.
///
/// Self-recovery, so that one broken upload never keeps the remote stuck on its journal:
/// - the server no longer knows the upload (`NoSuchUpload`), or the parts it holds fail
///   the whole object's checksum at completion (a `.partial` damaged in a crash): the
///   journal is dropped and the upload started over at once (once per run);
/// - any other failure of a resumed upload is counted in its journal; after
///   [`MAX_UPLOAD_FAILURES`] the next push starts it over instead of resuming it.
///
/// Each start-over is logged as a repair.
#[allow(clippy::too_many_arguments)]
async fn multipart(
    r: &RemoteHandle,
    backup_dir: &Path,
    path: &Path,
    key: &str,
    size: u64,
    sha: [u8; 32],
    part_size: u64,
    progress: Option<&crate::progress::Progress>,
) -> Result<UploadStats> {
    let jpath = Journal::path(backup_dir, &r.name, key);
    let sha_hex = hex::encode(sha);
    let journal = match Journal::load(&jpath) {
        Some(j)
            if j.key == key
                && j.size == size
                && j.sha256 == sha_hex
                && j.part_size == part_size
                && j.failures < MAX_UPLOAD_FAILURES =>
        {
            tracing::info!(
                "{}: resuming upload of {key}: {} parts already sent",
                r.name,
                j.parts.len()
            );
            j
        }
        other => {
            if let Some(old) = other {
                if old.failures >= MAX_UPLOAD_FAILURES {
                    tracing::warn!(
                        "{}: repaired: the upload of {key} failed {} pushes in a row; starting it over",
                        r.name,
                        old.failures
                    );
                }
                let _ = r.backend.abort_upload(&old.key, &old.upload_id).await;
            }
            start_upload(r, &jpath, key, size, &sha_hex, sha, part_size).await?
        }
    };

    match send_parts(r, &jpath, path, journal.clone(), progress).await {
        Ok(stats) => Ok(stats),
        Err(e) if is_upload_gone(&e) || is_upload_damaged(&e) => {
            tracing::warn!(
                "{}: repaired: {}; starting the upload of {key} over",
                r.name,
                if is_upload_gone(&e) {
                    "the server forgot the upload"
                } else {
                    "the parts on the server fail the archive's checksum"
                }
            );
            let _ = r.backend.abort_upload(key, &journal.upload_id).await;
            Journal::remove(&jpath)?;
            let j = start_upload(r, &jpath, key, size, &sha_hex, sha, part_size).await?;
            send_parts(r, &jpath, path, j, progress).await
        }
        Err(e) => {
            count_failure(&jpath, &journal.upload_id, &e);
            Err(e)
        }
    }
}

/// Start a fresh multipart upload of `key` and journal it (before any part is sent).
async fn start_upload(
    r: &RemoteHandle,
    jpath: &Path,
    key: &str,
    size: u64,
    sha_hex: &str,
    sha: [u8; 32],
    part_size: u64,
) -> Result<Journal> {
    let id = retry(
        r.retry,
        &format!("start of upload {key} to {}", r.name),
        || r.backend.create_upload_for(key, sha),
    )
    .await
    .with_context(|| format!("{}: starting upload of {key}", r.name))?;
    let j = Journal {
        key: key.to_string(),
        size,
        sha256: sha_hex.to_string(),
        upload_id: id,
        part_size,
        parts: Vec::new(),
        failures: 0,
    };
    j.save(jpath)?;
    Ok(j)
}

/// Count a failed push in the upload's journal (when it still names this upload).
/// Credentials that were refused are not the upload's fault and are not counted.
fn count_failure(jpath: &Path, id: &pronto_backends::UploadId, e: &anyhow::Error) {
    let auth = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<BackendError>(),
            Some(BackendError::Auth(_) | BackendError::HostKey(_))
        )
    });
    if auth {
        return;
    }
    if let Some(mut j) = Journal::load(jpath).filter(|j| &j.upload_id == id) {
        j.failures += 1;
        if let Err(e) = j.save(jpath) {
            tracing::warn!("could not count the failure in {}: {e:#}", jpath.display());
        }
    }
}

fn is_upload_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<BackendError>(),
            Some(BackendError::UploadNotFound(_))
        )
    })
}

/// The parts the server holds do not make the archive: completion found another
/// checksum than the archive's.
fn is_upload_damaged(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<BackendError>(),
            Some(BackendError::ChecksumMismatch { .. })
        )
    })
}

/// Send the parts the journal lacks, concurrently, then complete the upload.
async fn send_parts(
    r: &RemoteHandle,
    jpath: &Path,
    path: &Path,
    journal: Journal,
    progress: Option<&crate::progress::Progress>,
) -> Result<UploadStats> {
    let key = journal.key.clone();
    let n_parts = journal.size.div_ceil(journal.part_size) as u32;
    let have: std::collections::HashSet<u32> = journal.parts.iter().map(|p| p.number).collect();
    let todo: Vec<u32> = (1..=n_parts).filter(|n| !have.contains(n)).collect();
    let resumed = n_parts - todo.len() as u32;
    if let Some(p) = progress {
        // Parts a journal says are there already.
        p.inc(journal.size.min(resumed as u64 * journal.part_size));
    }
    let upload_id = journal.upload_id.clone();
    let sha: [u8; 32] = hex::decode(&journal.sha256)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("journal sha256 is not 32 bytes"))?;
    let mut source = FinishedFile {
        path: path.to_path_buf(),
        size: journal.size,
        part_size: journal.part_size,
        todo: todo.into_iter(),
    };
    let journal = Arc::new(Mutex::new(journal));
    let sent = send_parts_from(r, &key, &upload_id, &journal, jpath, &mut source, progress).await?;
    complete_journaled(r, &key, &upload_id, &journal, sha, jpath).await?;
    Ok(UploadStats {
        bytes_sent: sent,
        parts_resumed: resumed,
    })
}

/// Where the parts of a multipart upload come from: a finished file (`push`), or one
/// still being written (`backup --push`, in `backup_and_push`).
pub(crate) trait PartSource: Send {
    /// Wait until the next part can be read (`Ok(true)`) or there is none left
    /// (`Ok(false)`). Cancel-safe: the loop waits on it beside the parts in flight.
    fn ready(&mut self) -> impl std::future::Future<Output = Result<bool>> + Send;
    /// Read the next part, after [`ready`](PartSource::ready) said there is one: its
    /// number, bytes and SHA-256.
    fn take(&mut self) -> impl std::future::Future<Output = Result<(u32, Bytes, [u8; 32])>> + Send;
}

/// The one upload loop: keeps up to the remote's `part_concurrency` parts in flight,
/// each sent by [`send_part`] (and so recorded in the journal), until the source has
/// none left. Returns the bytes sent. The caller completes the upload.
pub(crate) async fn send_parts_from(
    r: &RemoteHandle,
    key: &str,
    upload_id: &UploadId,
    journal: &Arc<Mutex<Journal>>,
    jpath: &Path,
    source: &mut impl PartSource,
    progress: Option<&crate::progress::Progress>,
) -> Result<u64> {
    let concurrency = r.part_concurrency.max(1);
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut exhausted = false;
    let mut sent = 0u64;
    loop {
        if exhausted || inflight.len() >= concurrency {
            match inflight.next().await {
                Some(res) => sent += res?,
                None => return Ok(sent),
            }
            continue;
        }
        let more = if inflight.is_empty() {
            source.ready().await?
        } else {
            tokio::select! {
                more = source.ready() => more?,
                Some(res) = inflight.next() => {
                    sent += res?;
                    continue;
                }
            }
        };
        if !more {
            exhausted = true;
            continue;
        }
        let (n, body, psha) = source.take().await?;
        let (journal, jpath) = (journal.clone(), jpath.to_path_buf());
        inflight.push(async move {
            let len = send_part(r, key, upload_id.clone(), n, body, psha, journal, jpath).await?;
            if let Some(p) = progress {
                p.inc(len);
            }
            anyhow::Ok(len)
        });
    }
}

/// The parts of a finished local archive that an upload still lacks.
struct FinishedFile {
    path: PathBuf,
    size: u64,
    part_size: u64,
    todo: std::vec::IntoIter<u32>,
}

impl PartSource for FinishedFile {
    async fn ready(&mut self) -> Result<bool> {
        Ok(self.todo.len() > 0)
    }

    async fn take(&mut self) -> Result<(u32, Bytes, [u8; 32])> {
        let n = self.todo.next().context("no part left to read")?;
        let offset = (n as u64 - 1) * self.part_size;
        let len = self.part_size.min(self.size - offset);
        let (body, psha) = read_part(self.path.clone(), offset, len).await?;
        Ok((n, body, psha))
    }
}

/// Complete a multipart upload from the parts its journal recorded (in order), with the
/// remote's retries, then drop the journal: the one completion, for `push` and for
/// upload-while-archiving alike. The backend checks the whole object against `sha`.
pub(crate) async fn complete_journaled(
    r: &RemoteHandle,
    key: &str,
    upload_id: &UploadId,
    journal: &Mutex<Journal>,
    sha: [u8; 32],
    jpath: &Path,
) -> Result<()> {
    let mut parts = journal.lock().await.parts.clone();
    parts.sort_by_key(|p| p.number);
    retry(
        r.retry,
        &format!("completion of {key} on {}", r.name),
        || r.backend.complete_upload(key, upload_id, &parts, sha),
    )
    .await
    .with_context(|| format!("{}: completing upload of {key}", r.name))?;
    Journal::remove(jpath)?;
    Ok(())
}

/// Send part `n` of an upload (with the remote's retries) and record its receipt in the
/// journal, so that a later run resumes after it. The one place a part is sent: `push`
/// and upload-while-archiving (`backup --push`) both come here. Returns the bytes sent.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_part(
    r: &RemoteHandle,
    key: &str,
    upload_id: UploadId,
    n: u32,
    body: Bytes,
    psha: [u8; 32],
    journal: Arc<Mutex<Journal>>,
    jpath: PathBuf,
) -> Result<u64> {
    let len = body.len() as u64;
    let receipt: PartReceipt = retry(r.retry, &format!("part {n} of {key} to {}", r.name), || {
        r.backend.put_part(key, &upload_id, n, body.clone(), psha)
    })
    .await
    .with_context(|| format!("{}: uploading part {n} of {key}", r.name))?;
    let mut j = journal.lock().await;
    j.parts.retain(|p| p.number != n);
    j.parts.push(receipt);
    j.save(&jpath)?;
    tracing::debug!("{}: part {n} of {key} sent ({len} bytes)", r.name);
    Ok(len)
}

/// Read one part and hash it, both on a blocking thread (hashing 8 MiB takes ~12 ms,
/// which must not stall the async workers that drive the other uploads).
async fn read_part(path: PathBuf, offset: u64, len: u64) -> Result<(Bytes, [u8; 32])> {
    tokio::task::spawn_blocking(move || {
        let f =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let (buf, sha) = read_hashed_at(&f, offset, len, None)
            .with_context(|| format!("reading {} at {offset}", path.display()))?;
        Ok((Bytes::from(buf), sha))
    })
    .await?
}

/// Read `len` bytes of `f` at `offset` (`pread`: the handle's position is never used),
/// hashing each [`HASH_CHUNK`] as it arrives: returns the bytes and their SHA-256, and
/// feeds them to `whole` too when given (the hash of a file read part by part, in order).
pub(crate) fn read_hashed_at(
    f: &std::fs::File,
    offset: u64,
    len: u64,
    mut whole: Option<&mut Sha256>,
) -> std::io::Result<(Vec<u8>, [u8; 32])> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len as usize];
    let mut part = Sha256::new();
    let mut at = offset;
    for chunk in buf.chunks_mut(HASH_CHUNK) {
        f.read_exact_at(chunk, at)?;
        part.update(&*chunk);
        if let Some(w) = whole.as_deref_mut() {
            w.update(&*chunk);
        }
        at += chunk.len() as u64;
    }
    Ok((buf, part.finalize().into()))
}

/// Download `key` into `dest` (created 0600, must not exist), hashing as it goes.
/// Returns the sha256 and size of what was written; the caller compares.
pub async fn download(r: &RemoteHandle, key: &str, dest: &Path) -> Result<([u8; 32], u64)> {
    download_progress(r, key, dest, None, None).await
}

async fn download_progress(
    r: &RemoteHandle,
    key: &str,
    dest: &Path,
    progress: Option<&crate::progress::Progress>,
    on_written: Option<OnWritten<'_>>,
) -> Result<([u8; 32], u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let std_file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(std_file));
    let mut stream = retry(
        r.retry,
        &format!("download of {key} from {}", r.name),
        || r.backend.get(key, None),
    )
    .await
    .with_context(|| format!("{}: downloading {key}", r.name))?;
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("{}: downloading {key}", r.name))?;
        hasher.update(&chunk);
        n += chunk.len() as u64;
        if let Some(p) = progress {
            p.inc(chunk.len() as u64);
        }
        out.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    out.flush().await?;
    out.get_mut().sync_all().await?;
    if let Some(w) = on_written {
        w(n);
    }
    Ok((hasher.finalize().into(), n))
}

/// Objects larger than this are downloaded in concurrent ranges of this size.
pub const RANGE_SIZE: u64 = 16 << 20;
/// Ranges in flight at once. Memory stays bounded: at most this many ranges are held
/// (fetched, written, waiting for their turn to be hashed) plus the one being hashed.
pub const RANGE_CONCURRENCY: usize = 4;

/// [`download`] of an object whose size is known (from the listing): one larger than
/// [`RANGE_SIZE`] is fetched in [`RANGE_CONCURRENCY`] concurrent ranges, each written at
/// its offset as it completes and hashed in order; a smaller one (or an unknown size) is
/// one sequential stream. Returns the sha256 and size of what was written.
pub async fn download_sized(
    r: &RemoteHandle,
    key: &str,
    dest: &Path,
    size: Option<u64>,
) -> Result<([u8; 32], u64)> {
    download_sized_with(r, key, dest, size, None, None).await
}

/// Called with the number of bytes at the start of the file that are written (all of
/// them, in order, with no gap): a reader may read that far while the rest arrives.
pub type OnWritten<'a> = &'a (dyn Fn(u64) + Sync);

/// [`download_sized`], counting the bytes received on `progress` and telling
/// `on_written` how far the file is written without a gap (after each range in order;
/// once at the end for an archive fetched as one stream).
pub async fn download_sized_with(
    r: &RemoteHandle,
    key: &str,
    dest: &Path,
    size: Option<u64>,
    progress: Option<&crate::progress::Progress>,
    on_written: Option<OnWritten<'_>>,
) -> Result<([u8; 32], u64)> {
    match size {
        Some(size) if size > RANGE_SIZE => {
            download_ranges_progress(
                r,
                key,
                dest,
                size,
                (RANGE_SIZE, RANGE_CONCURRENCY),
                progress,
                on_written,
            )
            .await
        }
        _ => download_progress(r, key, dest, progress, on_written).await,
    }
}

/// A spawned task that is aborted when dropped (an error in one range stops the others).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Download `key` (`size` bytes) into `dest` (created 0600, must not exist) in ranges of
/// `range_size`, `concurrency` at a time: each range is fetched (with retries) on its own
/// task and written at its offset (`pwrite`); ranges are hashed strictly in order on a
/// blocking thread while the next ones download.
pub async fn download_ranges(
    r: &RemoteHandle,
    key: &str,
    dest: &Path,
    size: u64,
    range_size: u64,
    concurrency: usize,
) -> Result<([u8; 32], u64)> {
    download_ranges_progress(r, key, dest, size, (range_size, concurrency), None, None).await
}

async fn download_ranges_progress(
    r: &RemoteHandle,
    key: &str,
    dest: &Path,
    size: u64,
    (range_size, concurrency): (u64, usize),
    progress: Option<&crate::progress::Progress>,
    on_written: Option<OnWritten<'_>>,
) -> Result<([u8; 32], u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    let file = Arc::new(file);
    let range_size = range_size.max(1);
    let count = size.div_ceil(range_size);
    tracing::debug!(
        "{}: downloading {key} ({size} bytes) in {count} ranges, {concurrency} at a time",
        r.name
    );
    let mut ranges = futures::stream::iter((0..count).map(|i| {
        let start = i * range_size;
        let end = (start + range_size).min(size);
        let r = r.clone();
        let key = key.to_string();
        let file = file.clone();
        let dest = dest.to_path_buf();
        AbortOnDrop(tokio::spawn(async move {
            fetch_range(&r, &key, start, end, &file, &dest).await
        }))
    }))
    .buffered(concurrency.max(1));
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    while let Some(joined) = ranges.next().await {
        let chunks = joined.context("a download task failed")??;
        let got = chunks.iter().map(|c| c.len() as u64).sum::<u64>();
        total += got;
        if let Some(p) = progress {
            p.inc(got);
        }
        // This range is written at its offset, and every range before it.
        if let Some(w) = on_written {
            w(total);
        }
        hasher = tokio::task::spawn_blocking(move || {
            for c in &chunks {
                hasher.update(c);
            }
            hasher
        })
        .await?;
    }
    drop(ranges);
    let what = dest.to_path_buf();
    tokio::task::spawn_blocking(move || file.sync_all())
        .await?
        .with_context(|| format!("fsync of {}", what.display()))?;
    Ok((hasher.finalize().into(), total))
}

/// Fetch bytes `start..end` of `key` (retrying the whole range), write them at `start`.
async fn fetch_range(
    r: &RemoteHandle,
    key: &str,
    start: u64,
    end: u64,
    file: &Arc<std::fs::File>,
    dest: &Path,
) -> Result<Vec<Bytes>> {
    let what = format!("download of {key} bytes {start}..{end} from {}", r.name);
    let chunks = retry(r.retry, &what, || async {
        let mut stream = r.backend.get(key, Some(start..end)).await?;
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.next().await {
            chunks.push(chunk?);
        }
        Ok(chunks)
    })
    .await
    .with_context(|| format!("{}: downloading {key} (bytes {start}..{end})", r.name))?;
    let got: u64 = chunks.iter().map(|c: &Bytes| c.len() as u64).sum();
    if got != end - start {
        bail!(
            "{}: {key}: bytes {start}..{end} came back as {got} bytes (did the object change during the download?)",
            r.name
        );
    }
    let file = file.clone();
    let dest = dest.to_path_buf();
    let to_write = chunks.clone();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut at = start;
        for c in &to_write {
            file.write_all_at(c, at)
                .with_context(|| format!("writing {} at {at}", dest.display()))?;
            at += c.len() as u64;
        }
        anyhow::Ok(())
    })
    .await??;
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn s3_like(preferred: u64) -> Capabilities {
        Capabilities {
            min_part_size: 5 * MIB,
            max_part_size: 5 << 30,
            preferred_part_size: preferred,
            max_parts: 10_000,
        }
    }

    #[test]
    fn parts_are_the_backends_preferred_size_while_the_part_count_allows() {
        assert_eq!(part_size_for(0, &s3_like(8 * MIB)), 8 * MIB);
        assert_eq!(part_size_for(4 << 30, &s3_like(8 * MIB)), 8 * MIB);
        assert_eq!(part_size_for(4 << 30, &s3_like(16 * MIB)), 16 * MIB);
    }

    #[test]
    fn parts_grow_to_fit_the_part_count_within_the_limits() {
        // 200 GiB: 8 MiB parts would be 25,600; they grow to fit 10,000, MiB-aligned.
        let p = part_size_for(200 << 30, &s3_like(8 * MIB));
        assert!(p * 10_000 >= 200 << 30, "{p}");
        assert_eq!(p % MIB, 0);
        assert!(p <= 21 * MIB, "{p}");
        // Never above the maximum, even when the object cannot fit (the upload then fails
        // at the backend with its own message).
        assert_eq!(part_size_for(u64::MAX / 2, &s3_like(8 * MIB)), 5 << 30);
        // A fixed part size (sftp) stays fixed.
        let sftp = Capabilities {
            min_part_size: 8 * MIB,
            max_part_size: 8 * MIB,
            preferred_part_size: 8 * MIB,
            max_parts: 1_000_000,
        };
        assert_eq!(part_size_for(1 << 40, &sftp), 8 * MIB);
    }
}
