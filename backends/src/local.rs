//! Local-disk backend (`file:///path`): a NAS mount, a second drive.
//!
//! # Layout
//! ```text
//! <root>/<key>                         one file per object; key folders are real folders
//! <root>/<dir>/.<name>.tmp-<random>    a write in progress (never listed, removed on failure)
//! <root>/.uploads/<upload id>/         one staging folder per multipart upload
//!     upload.json                      {"key": …, "created_unix": …, "part_size": …}
//!     parts                            the parts, each at its offset: the object to be
//! ```
//!
//! # Durability and atomicity
//! Every file is written under a hidden temp name in the folder it will end up in,
//! fsynced, renamed over its final name, and then the folder is fsynced, so a crash
//! leaves either the old state or the new one (plus, at worst, a hidden temp file that
//! listing ignores). Files are created `0600`, folders `0700`.
//!
//! # Multipart: parts at their offsets in one file, committed by a rename
//! The trait does not tell the backend the part size, and the last (shorter) part may
//! arrive first, so this backend fixes it: [`Capabilities`] has `min_part_size ==
//! max_part_size ==` [`PART_SIZE`], and `upload.json` records the size the upload was
//! created with. Part `n` is written at `(n - 1) * part_size` into the staging folder's
//! `parts` file (re-sending a part overwrites its range) and its writeback is started
//! at once (`sync_file_range`), without waiting. [`complete_upload`](Backend::complete_upload)
//! checks the receipts (parts `1..=k` without gaps, every one but the last exactly
//! `part_size`), reads the file once and hashes it against the whole object's SHA-256
//! (only when that differs does it hash each part, to name the one that differs from its
//! receipt), cuts a longer stale tail, syncs the file once, retires the staging folder
//! and renames the file to its key: no assembly copy, one read, one sync.
//!
//! A receipt is kept through the death of the process (the bytes are in the page cache),
//! not through a crash of the machine before the completion's sync: a part lost that way
//! fails the completion's hash check (`ChecksumMismatch`), and the push starts the upload
//! over. Nothing is ever visible under a key before that check and the sync.
//! Staging folders of earlier versions (one `part-NNNNN` file per part, no part size in
//! `upload.json`) are listed by [`list_uploads`](Backend::list_uploads) and aborted, never
//! resumed: a push learns "upload not found" and starts over.
//!
//! # Checksums
//! `put` and `complete_upload` record the verified SHA-256 in an extended attribute
//! (`user.pronto-offsite.sha256`, best effort) together with the file's size and mtime;
//! `head` and `list` report it only while size and mtime still match, so a file edited in
//! place reports `sha256: None` rather than a stale hash. Filesystems without user xattrs
//! simply report `None`.
//!
//! # A vanished root is an error, never an empty remote
//! The root's device id is recorded when the backend is opened. If the root later
//! disappears, or now lives on another filesystem (the NAS was unmounted and the mount
//! point is an empty folder on the system disk), every operation fails with
//! [`BackendError::Permanent`] instead of listing nothing or writing to the wrong disk.
//! Only folders *below* the root are ever created after [`LocalBackend::new`].

use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{
    check_digest, check_fixed_part_receipts, check_sha256 as check_sha, Backend, BackendError,
    ByteStream, Capabilities, ObjectMeta, PartReceipt, Result, UploadId,
};

/// Folder under the root that holds multipart staging folders.
const UPLOADS: &str = ".uploads";
/// Bytes copied per call in [`Inner::put_file`] (one progress step).
const COPY_CHUNK: usize = 8 << 20;
/// The prefix of a staging folder being removed (see `Inner::retire_staging`).
const RETIRED: &str = ".retired-";
/// Marker in the name of a write in progress: `.<name>.tmp-<random>`.
const TMP_MARK: &str = ".tmp-";
/// Id prefix of a write that never finished, as `list_uploads` reports it.
const TMP_UPLOAD: &str = "tmp-";
/// Metadata file of an upload's staging folder.
const UPLOAD_JSON: &str = "upload.json";
/// Read size for `get` streams and for hashing files.
const CHUNK: usize = 1 << 20;
/// The one part size of multipart uploads (see the module's documentation).
pub const PART_SIZE: u64 = 8 << 20;
/// Most parts one upload may have (8 TiB at [`PART_SIZE`]).
const MAX_PARTS: u32 = 1 << 20;
/// The file in an upload's staging folder that holds its parts at their offsets.
const PARTS_FILE: &str = "parts";
/// Extended attribute holding the verified SHA-256.
#[cfg(target_os = "linux")]
const XATTR_SHA256: &std::ffi::CStr = c"user.pronto-offsite.sha256";
/// How often a write retries when a concurrent `delete` pruned the folder it was creating.
const DIR_RACE_RETRIES: usize = 8;

/// A backend storing objects as files under one root folder.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Device id of the root when the backend was opened.
    root_dev: u64,
    url: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct UploadInfo {
    key: String,
    created_unix: u64,
    /// Part `n` is at `(n - 1) * part_size` in the parts file. Absent in the uploads of
    /// earlier versions (one file per part), which are listed and aborted, not resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    part_size: Option<u64>,
}

impl LocalBackend {
    /// Open (and create, mode `0700`, if missing) a local backend rooted at `root`.
    pub fn new(root: PathBuf) -> Result<Self> {
        Self::open(root, true)
    }

    /// Open a local backend whose root must exist already (read-only commands: a missing
    /// folder is a typo or a disk that is not mounted, never an empty remote).
    pub fn open_existing(root: PathBuf) -> Result<Self> {
        Self::open(root, false)
    }

    fn open(root: PathBuf, create: bool) -> Result<Self> {
        let root = std::path::absolute(&root)
            .map_err(|e| BackendError::from_io(&format!("resolve {}", root.display()), e))?;
        let ctx = format!("backend root {}", root.display());
        let meta = match fs::metadata(&root) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => {
                return Err(BackendError::Permanent(format!(
                    "the remote folder {} does not exist (a typo in the URL, or the disk or NAS not mounted?); nothing was created",
                    root.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&root)
                    .map_err(|e| BackendError::from_io(&format!("create {ctx}"), e))?;
                fs::metadata(&root).map_err(|e| BackendError::from_io(&ctx, e))?
            }
            Err(e) => return Err(BackendError::from_io(&ctx, e)),
        };
        if !meta.is_dir() {
            return Err(BackendError::Permanent(format!("{ctx} is not a folder")));
        }
        let url = url::Url::from_file_path(&root)
            .map(|u| u.to_string())
            .unwrap_or_else(|()| format!("file://{}", root.display()));
        Ok(LocalBackend {
            inner: Arc::new(Inner {
                root,
                root_dev: meta.dev(),
                url,
            }),
        })
    }

    /// The absolute root folder.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Run blocking filesystem work off the async threads.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| BackendError::Permanent(format!("local backend task failed: {e}")))?
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn describe(&self) -> String {
        self.inner.url.clone()
    }

    fn capabilities(&self) -> Capabilities {
        // One fixed part size, so that part n's offset in the parts file is known when
        // part n arrives (see the module's documentation).
        Capabilities {
            min_part_size: PART_SIZE,
            max_part_size: PART_SIZE,
            preferred_part_size: PART_SIZE,
            max_parts: MAX_PARTS,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = prefix.to_string();
        self.blocking(move |i| i.list(&prefix)).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let key = key.to_string();
        self.blocking(move |i| i.head(&key)).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        check_key(key)?;
        let path = self.inner.root.join(key);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => return Err(self.inner.missing_object(key, &path, e)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| BackendError::from_io(&path.display().to_string(), e))?;
        if !meta.is_file() {
            return Err(BackendError::NotFound(key.to_string()));
        }
        let size = meta.len();
        let (start, len) = crate::byte_range(key, range, size)?;
        if start > 0 {
            file.seek(io::SeekFrom::Start(start))
                .await
                .map_err(|e| BackendError::from_io(&path.display().to_string(), e))?;
        }
        let ctx = path.display().to_string();
        // Read exactly `len` bytes: a file that shrank under us is an error, not a short object.
        let stream = futures::stream::try_unfold((file, len), move |(mut file, left)| {
            let ctx = ctx.clone();
            async move {
                if left == 0 {
                    return Ok(None);
                }
                let n = left.min(CHUNK as u64) as usize;
                let mut buf = vec![0u8; n];
                file.read_exact(&mut buf).await.map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        BackendError::Permanent(format!("{ctx}: file shrank while being read"))
                    } else {
                        BackendError::from_io(&ctx, e)
                    }
                })?;
                Ok(Some((Bytes::from(buf), (file, left - n as u64))))
            }
        });
        Ok(Box::pin(stream))
    }

    async fn put(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta> {
        check_key(key)?;
        // The body is in memory: check it before touching the disk, so a mismatch leaves
        // nothing behind, not even a temp file.
        check_sha(key, &body, &sha256)?;
        let key = key.to_string();
        self.blocking(move |i| i.put(&key, &body, sha256)).await
    }

    async fn put_file(
        &self,
        key: &str,
        path: &Path,
        sha256: [u8; 32],
        on_bytes: crate::OnBytes,
    ) -> Result<Option<ObjectMeta>> {
        check_key(key)?;
        let (key, path) = (key.to_string(), path.to_path_buf());
        self.blocking(move |i| i.put_file(&key, &path, sha256, &*on_bytes))
            .await
            .map(Some)
    }

    async fn create_upload(&self, key: &str) -> Result<UploadId> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |i| i.create_upload(&key)).await
    }

    async fn put_part(
        &self,
        key: &str,
        up: &UploadId,
        n: u32,
        body: Bytes,
        sha256: [u8; 32],
    ) -> Result<PartReceipt> {
        check_key(key)?;
        crate::check_part(key, n, body.len(), &self.capabilities())?;
        let (key, up) = (key.to_string(), up.clone());
        self.blocking(move |i| i.put_part(&key, &up, n, &body, sha256))
            .await
    }

    async fn complete_upload(
        &self,
        key: &str,
        up: &UploadId,
        parts: &[PartReceipt],
        sha256: [u8; 32],
    ) -> Result<ObjectMeta> {
        check_key(key)?;
        let (key, up, parts) = (key.to_string(), up.clone(), parts.to_vec());
        self.blocking(move |i| i.complete_upload(&key, &up, &parts, sha256))
            .await
    }

    async fn abort_upload(&self, key: &str, up: &UploadId) -> Result<()> {
        check_key(key)?;
        let (key, up) = (key.to_string(), up.clone());
        self.blocking(move |i| i.abort_upload(&key, &up)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |i| i.delete(&key)).await
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Option<Vec<(String, UploadId)>>> {
        check_prefix(prefix)?;
        let prefix = prefix.to_string();
        self.blocking(move |i| i.list_uploads(&prefix).map(Some))
            .await
    }

    /// The recorded SHA-256 is of the finished file, hashed before its rename.
    fn sha256_is_computed_from_stored_bytes(&self) -> bool {
        true
    }
    fn supports_put_if_absent(&self) -> bool {
        true
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta> {
        check_key(key)?;
        check_sha(key, &body, &sha256)?;
        let key = key.to_string();
        self.blocking(move |i| i.put_if_absent(&key, &body, sha256))
            .await
    }
}

impl Inner {
    /// Fail unless the root is still the folder we opened.
    fn check_root(&self) -> Result<()> {
        let root = &self.root;
        match fs::metadata(root) {
            Ok(m) if !m.is_dir() => Err(BackendError::Permanent(format!(
                "backend root {} is no longer a folder",
                root.display()
            ))),
            Ok(m) if m.dev() != self.root_dev => Err(BackendError::Permanent(format!(
                "backend root {} is now on a different filesystem than when it was opened \
                 (was it unmounted?)",
                root.display()
            ))),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BackendError::Permanent(format!(
                "backend root {} has disappeared (is the disk or NAS mounted?)",
                root.display()
            ))),
            Err(e) => Err(BackendError::from_io(
                &format!("backend root {}", root.display()),
                e,
            )),
        }
    }

    /// Map an error opening/statting an object: a missing file (or a file where a
    /// folder was expected) is `NotFound` — unless the whole root is gone.
    fn missing_object(&self, key: &str, path: &Path, e: io::Error) -> BackendError {
        if is_missing(&e) {
            match self.check_root() {
                Ok(()) => BackendError::NotFound(key.to_string()),
                Err(root_err) => root_err,
            }
        } else {
            BackendError::from_io(&path.display().to_string(), e)
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        self.check_root()?;
        // Start the walk at the deepest folder the prefix names in full.
        let dir_key = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_key.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_key)
        };
        let mut out = Vec::new();
        self.walk(&start, dir_key, prefix, &mut out)?;
        // A root that vanished during the walk must not yield a partial listing.
        self.check_root()?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Collect objects under `dir` (whose key is `dir_key`) whose keys start with `prefix`.
    fn walk(
        &self,
        dir: &Path,
        dir_key: &str,
        prefix: &str,
        out: &mut Vec<ObjectMeta>,
    ) -> Result<()> {
        let ctx = || format!("list {}", dir.display());
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            // The prefix's folder does not exist (or is a file), or a subfolder was
            // removed by a concurrent delete: nothing to list there. `list` checks that
            // the root itself still exists.
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(BackendError::from_io(&ctx(), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| BackendError::from_io(&ctx(), e))?;
            let name = entry.file_name();
            // Names that are not UTF-8 cannot be keys: they were not written by a backend.
            let Some(name) = name.to_str() else { continue };
            if is_temp_name(name) || (dir_key.is_empty() && name == UPLOADS) {
                continue;
            }
            let key = if dir_key.is_empty() {
                name.to_string()
            } else {
                format!("{dir_key}/{name}")
            };
            let file_type = entry
                .file_type()
                .map_err(|e| BackendError::from_io(&ctx(), e))?;
            if file_type.is_dir() {
                let sub = format!("{key}/");
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    self.walk(&entry.path(), &key, prefix, out)?;
                }
                continue;
            }
            if !key.starts_with(prefix) {
                continue;
            }
            // Follows symlinks: a link to a file is an object, a link to a folder is not
            // descended into (no loops).
            let path = entry.path();
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if is_missing(&e) => continue, // deleted while we listed
                Err(e) => return Err(BackendError::from_io(&path.display().to_string(), e)),
            };
            if meta.is_file() {
                out.push(ObjectMeta {
                    modified: meta.modified().ok(),
                    sha256: read_sha_xattr(&path, &meta),
                    size: meta.len(),
                    key,
                });
            }
        }
        Ok(())
    }

    fn head(&self, key: &str) -> Result<ObjectMeta> {
        check_key(key)?;
        let path = self.root.join(key);
        let meta = fs::metadata(&path).map_err(|e| self.missing_object(key, &path, e))?;
        if !meta.is_file() {
            return Err(BackendError::NotFound(key.to_string()));
        }
        Ok(ObjectMeta {
            modified: meta.modified().ok(),
            key: key.to_string(),
            size: meta.len(),
            sha256: read_sha_xattr(&path, &meta),
        })
    }

    /// [`put`](Inner::put), but the final rename is a link that fails when `key` exists.
    fn put_if_absent(&self, key: &str, body: &[u8], sha256: [u8; 32]) -> Result<ObjectMeta> {
        self.check_root()?;
        let (dir, name) = self.split_key(key);
        let mut tmp = self.temp_beside(&dir, &name, true)?;
        let tmp_ctx = tmp.path().display().to_string();
        tmp.as_file_mut()
            .write_all(body)
            .map_err(|e| BackendError::from_io(&tmp_ctx, e))?;
        self.finish_with(tmp, &dir, &name, Some(sha256), false)
            .map_err(|e| match e {
                BackendError::AlreadyExists(_) => BackendError::AlreadyExists(key.to_string()),
                e => e,
            })?;
        Ok(ObjectMeta {
            modified: None,
            key: key.to_string(),
            size: body.len() as u64,
            sha256: Some(sha256),
        })
    }

    fn put(&self, key: &str, body: &[u8], sha256: [u8; 32]) -> Result<ObjectMeta> {
        self.check_root()?;
        let (dir, name) = self.split_key(key);
        let mut tmp = self.temp_beside(&dir, &name, true)?;
        let tmp_ctx = tmp.path().display().to_string();
        tmp.as_file_mut()
            .write_all(body)
            .map_err(|e| BackendError::from_io(&tmp_ctx, e))?;
        self.finish(tmp, &dir, &name, Some(sha256))?;
        Ok(ObjectMeta {
            modified: None,
            key: key.to_string(),
            size: body.len() as u64,
            sha256: Some(sha256),
        })
    }

    /// A local file copied in, then proven by reading the copy back: the data goes
    /// from file to file inside the kernel (`copy_file_range`: a reflink where the
    /// filesystem shares extents, never through our buffers; a read/write loop where it
    /// cannot), the copy is synced, then read back and hashed. Only a copy whose own
    /// bytes hash to `sha256` is renamed into place, and that hash is the one recorded
    /// (never the hash we were told). The remote needs the file's size free, nothing
    /// more. A mismatch (the source changed under us) leaves nothing.
    fn put_file(
        &self,
        key: &str,
        path: &Path,
        sha256: [u8; 32],
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<ObjectMeta> {
        self.check_root()?;
        let src_ctx = path.display().to_string();
        let src = File::open(path).map_err(|e| BackendError::from_io(&src_ctx, e))?;
        let len = src
            .metadata()
            .map_err(|e| BackendError::from_io(&src_ctx, e))?
            .len();
        let (dir, name) = self.split_key(key);
        let tmp = self.temp_beside(&dir, &name, true)?;
        let tmp_ctx = tmp.path().display().to_string();
        // Reserve the space up front: a full disk fails now, not at 90 %.
        preallocate(tmp.as_file(), len).map_err(|e| BackendError::from_io(&tmp_ctx, e))?;
        let copied = copy_all(&src, tmp.as_file(), 0, on_bytes).map_err(|(e, on_src)| {
            BackendError::from_io(if on_src { &src_ctx } else { &tmp_ctx }, e)
        })?;
        // Preallocation reserved `len`; a file that shrank meanwhile is cut to what came.
        tmp.as_file()
            .set_len(copied)
            .map_err(|e| BackendError::from_io(&tmp_ctx, e))?;
        // The disk writes the copy while the copy is read back and hashed (from the page
        // cache, as it would be after the sync too); `finish` syncs before the rename.
        start_writeback(tmp.as_file(), 0, copied);
        let actual =
            hash_range(tmp.as_file(), 0, copied).map_err(|e| BackendError::from_io(&tmp_ctx, e))?;
        // On a mismatch `tmp` is removed on drop.
        check_digest(key, &actual, &sha256)?;
        self.finish(tmp, &dir, &name, Some(actual))?;
        Ok(ObjectMeta {
            modified: None,
            key: key.to_string(),
            size: copied,
            sha256: Some(actual),
        })
    }

    fn create_upload(&self, key: &str) -> Result<UploadId> {
        self.check_root()?;
        let uploads = self.root.join(UPLOADS);
        self.ensure_dirs(UPLOADS)?;
        self.sweep_retired()?;
        let staging = tempfile::Builder::new()
            .prefix("")
            .rand_bytes(20)
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(&uploads)
            .map_err(|e| {
                BackendError::from_io(&format!("create upload in {}", uploads.display()), e)
            })?;
        let info = UploadInfo {
            key: key.to_string(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            part_size: Some(PART_SIZE),
        };
        let json = serde_json::to_vec_pretty(&info)
            .map_err(|e| BackendError::Permanent(format!("encode upload info: {e}")))?;
        let mut tmp = self.temp_beside(staging.path(), UPLOAD_JSON, false)?;
        let tmp_ctx = tmp.path().display().to_string();
        tmp.as_file_mut()
            .write_all(&json)
            .map_err(|e| BackendError::from_io(&tmp_ctx, e))?;
        self.finish(tmp, staging.path(), UPLOAD_JSON, None)?;
        let id = staging
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| BackendError::Permanent("upload folder has no name".into()))?;
        // From here on the staging folder outlives this call.
        let _ = staging.keep();
        fsync_dir(&uploads)?;
        Ok(UploadId(id))
    }

    /// The staging folders under `.uploads/` whose key starts with `prefix` (a folder
    /// whose `create_upload` was killed before `upload.json` got its name is listed by
    /// the key in its temp file; one killed before even that names no key and is not
    /// listed), and the temp files of writes that never finished
    /// (`.<name>.tmp-<random>`, left by a killed process) as uploads with id
    /// `tmp-<random>`, which `abort_upload` removes.
    fn list_uploads(&self, prefix: &str) -> Result<Vec<(String, UploadId)>> {
        self.check_root()?;
        let uploads = self.root.join(UPLOADS);
        // No staging folder yet still leaves the temp files below to find.
        let rd = match fs::read_dir(&uploads) {
            Ok(rd) => Some(rd),
            Err(e) if is_missing(&e) => None,
            Err(e) => return Err(BackendError::from_io(&uploads.display().to_string(), e)),
        };
        let mut out = Vec::new();
        for e in rd.into_iter().flatten() {
            let e = e.map_err(|e| BackendError::from_io(&uploads.display().to_string(), e))?;
            let Some(id) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !is_valid_upload_id(&id) || !e.path().is_dir() {
                continue; // a temp file of create_upload's, or not ours
            }
            let key = staged_upload_info(&e.path()).map(|i| i.key);
            if let Some(key) = key.filter(|k| k.starts_with(prefix)) {
                out.push((key, UploadId(id)));
            }
        }
        // Temp files, in every folder below the root but `.uploads`.
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(BackendError::from_io(&dir.display().to_string(), e)),
            };
            for e in rd.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    if !(rel.is_empty() && name == UPLOADS) {
                        stack.push((e.path(), format!("{rel}{name}/")));
                    }
                    continue;
                }
                let Some((object, rand)) =
                    name.strip_prefix('.').and_then(|n| n.rsplit_once(TMP_MARK))
                else {
                    continue;
                };
                let key = format!("{rel}{object}");
                if ft.is_file() && is_valid_upload_id(rand) && key.starts_with(prefix) {
                    out.push((key, UploadId(format!("{TMP_UPLOAD}{rand}"))));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The staging folder of upload `up` for `key` and the upload's part size, or
    /// `UploadNotFound` (also for an upload staged by a version before parts were written
    /// at their offsets, whose `upload.json` has no part size: the push starts it over).
    fn open_upload(&self, key: &str, up: &UploadId) -> Result<(PathBuf, u64)> {
        let not_found = || BackendError::UploadNotFound(format!("{} (for {key})", up.0));
        if !is_valid_upload_id(&up.0) {
            return Err(not_found());
        }
        let dir = self.root.join(UPLOADS).join(&up.0);
        let json_path = dir.join(UPLOAD_JSON);
        let json = match fs::read(&json_path) {
            Ok(json) => json,
            Err(e) if is_missing(&e) => {
                self.check_root()?;
                return Err(not_found());
            }
            Err(e) => return Err(BackendError::from_io(&json_path.display().to_string(), e)),
        };
        let info: UploadInfo = serde_json::from_slice(&json).map_err(|e| {
            BackendError::Permanent(format!("{}: unreadable: {e}", json_path.display()))
        })?;
        match info.part_size {
            Some(size) if info.key == key && size > 0 => Ok((dir, size)),
            _ => Err(not_found()),
        }
    }

    fn put_part(
        &self,
        key: &str,
        up: &UploadId,
        n: u32,
        body: &[u8],
        sha256: [u8; 32],
    ) -> Result<PartReceipt> {
        use std::os::unix::fs::FileExt;
        let (staging, part_size) = self.open_upload(key, up)?;
        if body.len() as u64 > part_size {
            return Err(BackendError::Permanent(format!(
                "{key}: part {n} has {} bytes, more than this upload's part size {part_size}",
                body.len()
            )));
        }
        let path = staging.join(PARTS_FILE);
        let ctx = path.display().to_string();
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            // Never: the other parts are in this file.
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| BackendError::from_io(&ctx, e))?;
        // The body is hashed as it is written, a chunk at a time while the chunk is in
        // the cache. A body that is not what `sha256` says is refused — after it was
        // written over this part's region: an earlier receipt for the part then fails
        // the completion's whole hash (naming the part) until the part is sent again.
        let offset = (n as u64 - 1) * part_size;
        let mut hasher = sha2::Sha256::new();
        let mut at = offset;
        for chunk in body.chunks(crate::HASH_CHUNK) {
            hasher.update(chunk);
            file.write_all_at(chunk, at)
                .map_err(|e| BackendError::from_io(&ctx, e))?;
            at += chunk.len() as u64;
        }
        check_digest(
            &format!("{key} part {n}"),
            &hasher.finalize().into(),
            &sha256,
        )?;
        start_writeback(&file, offset, body.len() as u64);
        Ok(PartReceipt {
            number: n,
            size: body.len() as u64,
            token: hex::encode(sha256),
        })
    }

    fn complete_upload(
        &self,
        key: &str,
        up: &UploadId,
        parts: &[PartReceipt],
        sha256: [u8; 32],
    ) -> Result<ObjectMeta> {
        let (staging, part_size) = self.open_upload(key, up)?;
        // 1. The receipts must describe one object: parts 1..=k, every one but the last
        //    exactly the upload's part size.
        let tokens = check_fixed_part_receipts(key, parts, part_size)?;
        let total: u64 = parts.iter().map(|p| p.size).sum();

        // 2. Prove the stored bytes, reading only: the first `total` bytes of the parts
        //    file must hash to the whole object's SHA-256 (one pass; when they do not,
        //    a second pass names the part that differs from its receipt). A mismatch
        //    leaves the upload as it was, to be completed with the right receipts or
        //    aborted.
        let path = staging.join(PARTS_FILE);
        let ctx = path.display().to_string();
        let file = match fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if is_missing(&e) => return Err(never_stored(key, up, &parts[0])),
            Err(e) => return Err(BackendError::from_io(&ctx, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| BackendError::from_io(&ctx, e))?
            .len();
        if len < total {
            let missing = parts
                .iter()
                .find(|p| (p.number as u64 - 1) * part_size + p.size > len)
                .unwrap_or(&parts[0]);
            return Err(never_stored(key, up, missing));
        }
        let actual = hash_range(&file, 0, total).map_err(|e| BackendError::from_io(&ctx, e))?;
        if actual != sha256 {
            for (part, expected) in parts.iter().zip(&tokens) {
                let offset = (part.number as u64 - 1) * part_size;
                let got = hash_range(&file, offset, part.size)
                    .map_err(|e| BackendError::from_io(&ctx, e))?;
                // A part re-sent after this receipt was issued, never sent, or damaged.
                check_digest(&format!("{key} part {}", part.number), &got, expected)?;
            }
            check_digest(key, &actual, &sha256)?;
        }

        // 3. The file is the object: cut what a longer earlier last part left beyond
        //    it, sync it once (the parts started their writeback as they arrived), and
        //    record its hash.
        if len > total {
            file.set_len(total)
                .map_err(|e| BackendError::from_io(&ctx, e))?;
        }
        file.sync_all()
            .map_err(|e| BackendError::from_io(&ctx, e))?;
        if let Ok(meta) = file.metadata() {
            write_sha_xattr(&file, &sha256, &meta);
        }
        drop(file);

        // 4. Take the upload out of reach, atomically: from here a process killed leaves a
        //    retired folder (swept by the next write) and a resumed push learns "upload
        //    not found" and starts over; nobody ever resumes a half-committed upload.
        self.check_root()?;
        let uploads = self.root.join(UPLOADS);
        let retired = uploads.join(format!("{RETIRED}{}", up.0));
        fs::rename(&staging, &retired)
            .map_err(|e| BackendError::from_io(&staging.display().to_string(), e))?;
        fsync_dir(&uploads)?;

        // 5. Under its final name; the rest of the retired folder goes.
        let rel = key.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        self.ensure_dirs(rel)?;
        let (dir, name) = self.split_key(key);
        let dest = dir.join(&name);
        let src = retired.join(PARTS_FILE);
        fs::rename(&src, &dest).map_err(|e| {
            BackendError::from_io(
                &format!("rename {} to {}", src.display(), dest.display()),
                e,
            )
        })?;
        fsync_dir(&dir)?;
        // The object is committed; failing to tidy must not undo that.
        let _ = self.sweep_retired();
        Ok(ObjectMeta {
            modified: None,
            key: key.to_string(),
            size: total,
            sha256: Some(sha256),
        })
    }

    fn abort_upload(&self, key: &str, up: &UploadId) -> Result<()> {
        self.check_root()?;
        if let Some(rand) = up.0.strip_prefix(TMP_UPLOAD) {
            // A write that never finished (see `list_uploads`): its temp file.
            if !is_valid_upload_id(rand) {
                return Ok(());
            }
            let (dir, name) = self.split_key(key);
            let path = dir.join(format!(".{name}{TMP_MARK}{rand}"));
            return match fs::remove_file(&path) {
                Ok(()) => fsync_dir(&dir),
                Err(e) if is_missing(&e) => Ok(()),
                Err(e) => Err(BackendError::from_io(&path.display().to_string(), e)),
            };
        }
        if !is_valid_upload_id(&up.0) {
            return Ok(()); // cannot exist
        }
        let dir = self.root.join(UPLOADS).join(&up.0);
        match staged_upload_info(&dir) {
            // Another key's upload: not ours to remove, and ours does not exist.
            Some(info) if info.key != key => return Ok(()),
            Some(_) => {}
            // No upload folder at all: already gone.
            None if !dir.exists() => return Ok(()),
            // A folder naming no key is a create_upload killed before it wrote one.
            None => {}
        }
        self.retire_staging(&up.0)
    }

    /// Remove upload `id`'s staging folder so that no process ever sees it half removed:
    /// it is first renamed (atomically) to `.uploads/.retired-<id>`, a name no upload id
    /// can take, and only then emptied. A process killed while emptying it leaves a
    /// retired folder that `open_upload` and `list_uploads` no longer see (a resumed push
    /// learns "upload not found" and starts over, never "part 3 was never stored") and
    /// that the next `create_upload` or `abort_upload` sweeps away.
    fn retire_staging(&self, id: &str) -> Result<()> {
        let uploads = self.root.join(UPLOADS);
        let dir = uploads.join(id);
        let retired = uploads.join(format!("{RETIRED}{id}"));
        match fs::rename(&dir, &retired) {
            Ok(()) => fsync_dir(&uploads)?,
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(BackendError::from_io(&dir.display().to_string(), e)),
        }
        self.sweep_retired()
    }

    /// Remove every retired staging folder (see `retire_staging`). Two processes sweeping
    /// at once is harmless: what one removes the other finds gone.
    fn sweep_retired(&self) -> Result<()> {
        let uploads = self.root.join(UPLOADS);
        let rd = match fs::read_dir(&uploads) {
            Ok(rd) => rd,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(BackendError::from_io(&uploads.display().to_string(), e)),
        };
        let mut removed = false;
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_prefix(RETIRED)) else {
                continue;
            };
            if !is_valid_upload_id(id) {
                continue; // not a name we give
            }
            match fs::remove_dir_all(e.path()) {
                Ok(()) => removed = true,
                Err(err) if is_missing(&err) => {}
                Err(err) => {
                    return Err(BackendError::from_io(&e.path().display().to_string(), err))
                }
            }
        }
        if removed {
            fsync_dir(&uploads)?;
        }
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.root.join(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if is_missing(&e) || e.kind() == io::ErrorKind::IsADirectory => {
                // Already gone (a folder is not an object) — but a vanished root is an error.
                return self.check_root();
            }
            Err(e) => return Err(BackendError::from_io(&path.display().to_string(), e)),
        }
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        // A concurrent delete may already have pruned the (now empty) parent; it fsyncs
        // the grandparent itself.
        match fsync_dir(&parent) {
            Ok(()) | Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        // Remove folders the delete left empty, up to (never including) the root.
        let mut dir = parent;
        while dir != self.root && dir.starts_with(&self.root) {
            if fs::remove_dir(&dir).is_err() {
                break; // not empty (or already gone): stop
            }
            match dir.parent() {
                Some(p) => dir = p.to_path_buf(),
                None => break,
            }
            let _ = fsync_dir(&dir);
        }
        Ok(())
    }

    /// The folder a key's file lives in, and its file name.
    fn split_key(&self, key: &str) -> (PathBuf, String) {
        match key.rsplit_once('/') {
            Some((dir, name)) => (self.root.join(dir), name.to_string()),
            None => (self.root.clone(), key.to_string()),
        }
    }

    /// Create the folders of `rel` (a `/`-separated path below the root) that are missing,
    /// mode `0700`, fsyncing each new folder's parent. Never creates the root itself.
    fn ensure_dirs(&self, rel: &str) -> Result<()> {
        let mut cur = self.root.clone();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            let parent = cur.clone();
            cur.push(comp);
            match fs::DirBuilder::new().mode(0o700).create(&cur) {
                Ok(()) => fsync_dir(&parent)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match fs::metadata(&cur) {
                    Ok(m) if m.is_dir() => {}
                    // Pruned by a concurrent delete just now: the caller retries.
                    Err(e) if is_missing(&e) => {
                        return Err(BackendError::from_io(&cur.display().to_string(), e))
                    }
                    _ => {
                        return Err(BackendError::Permanent(format!(
                            "{} exists and is not a folder",
                            cur.display()
                        )))
                    }
                },
                Err(e) => {
                    return Err(BackendError::from_io(
                        &format!("create {}", cur.display()),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    /// A new `0600` temp file `.<name>.tmp-<random>` in `dir`. With `create_dirs`, the
    /// folders are created first, retrying if a concurrent delete prunes them meanwhile.
    fn temp_beside(
        &self,
        dir: &Path,
        name: &str,
        create_dirs: bool,
    ) -> Result<tempfile::NamedTempFile> {
        let prefix = format!(".{name}{TMP_MARK}");
        let rel = dir
            .strip_prefix(&self.root)
            .ok()
            .and_then(Path::to_str)
            .unwrap_or("")
            .to_string();
        let mut attempt = 0;
        loop {
            if create_dirs {
                match self.ensure_dirs(&rel) {
                    Ok(()) => {}
                    // A concurrent delete pruned a folder while we created the next one.
                    Err(BackendError::NotFound(_)) if attempt < DIR_RACE_RETRIES => {
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            match tempfile::Builder::new()
                .prefix(&prefix)
                .rand_bytes(12)
                .permissions(fs::Permissions::from_mode(0o600))
                .tempfile_in(dir)
            {
                Ok(tmp) => return Ok(tmp),
                Err(e) if create_dirs && is_missing(&e) && attempt < DIR_RACE_RETRIES => {
                    attempt += 1;
                }
                Err(e) => {
                    return Err(BackendError::from_io(
                        &format!("create temp file in {}", dir.display()),
                        e,
                    ))
                }
            }
        }
    }

    /// Commit a fully written temp file: record `sha256` (best effort), fsync, rename over
    /// `dir/name`, fsync `dir`.
    fn finish(
        &self,
        tmp: tempfile::NamedTempFile,
        dir: &Path,
        name: &str,
        sha256: Option<[u8; 32]>,
    ) -> Result<()> {
        self.finish_with(tmp, dir, name, sha256, true)
    }

    /// [`finish`](Inner::finish); with `replace == false` the rename is a link that fails
    /// (`AlreadyExists`) when `name` exists, for [`put_if_absent`](Inner::put_if_absent).
    fn finish_with(
        &self,
        tmp: tempfile::NamedTempFile,
        dir: &Path,
        name: &str,
        sha256: Option<[u8; 32]>,
        replace: bool,
    ) -> Result<()> {
        let tmp_ctx = tmp.path().display().to_string();
        tmp.as_file()
            .sync_all()
            .map_err(|e| BackendError::from_io(&tmp_ctx, e))?;
        // After the data is flushed, so the recorded mtime is final (network filesystems
        // may update it on flush). Best effort: a lost xattr only means `sha256: None`.
        if let Some(sha) = sha256 {
            if let Ok(meta) = tmp.as_file().metadata() {
                write_sha_xattr(tmp.as_file(), &sha, &meta);
            }
        }
        let dest = dir.join(name);
        let what = format!("rename {tmp_ctx} to {}", dest.display());
        if replace {
            tmp.persist(&dest)
                .map_err(|e| BackendError::from_io(&what, e.error))?;
        } else {
            tmp.persist_noclobber(&dest)
                .map_err(|e| BackendError::from_io(&what, e.error))?;
        }
        fsync_dir(dir)
    }
}

/// Keys are `/`-separated relative paths with no empty, `.` or `..` components and no
/// names this backend reserves (temp names, the top-level `.uploads`).
fn check_key(key: &str) -> Result<()> {
    crate::check_key_with(key, |i, comp| check_component(comp, i == 0))
}

fn check_component(comp: &str, first: bool) -> std::result::Result<(), String> {
    if comp.is_empty() {
        return Err("empty path component".into());
    }
    if comp == "." || comp == ".." {
        return Err(format!("'{comp}' component"));
    }
    if comp.contains('\0') {
        return Err("NUL byte".into());
    }
    if is_temp_name(comp) {
        return Err(format!("'{comp}' looks like a temp file name"));
    }
    if first && comp == UPLOADS {
        return Err(format!("'{UPLOADS}' is reserved"));
    }
    Ok(())
}

/// A list prefix: any string, but the folders it names in full must be valid components.
fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.starts_with('/') {
        return Err(BackendError::Permanent(format!(
            "invalid prefix {prefix:?}: must not start with '/'"
        )));
    }
    if let Some((dirs, _partial)) = prefix.rsplit_once('/') {
        for (i, comp) in dirs.split('/').enumerate() {
            check_component(comp, i == 0).map_err(|why| {
                BackendError::Permanent(format!("invalid prefix {prefix:?}: {why}"))
            })?;
        }
    }
    Ok(())
}

/// What a staging folder's `upload.json` says; when a killed `create_upload` left it
/// under its temp name (`.upload.json.tmp-<random>`), what that complete temp file says.
fn staged_upload_info(staging: &Path) -> Option<UploadInfo> {
    let parse = |p: &Path| serde_json::from_slice::<UploadInfo>(&fs::read(p).ok()?).ok();
    if let Some(info) = parse(&staging.join(UPLOAD_JSON)) {
        return Some(info);
    }
    let temp_prefix = format!(".{UPLOAD_JSON}{TMP_MARK}");
    fs::read_dir(staging)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&temp_prefix))
        })
        .find_map(|e| parse(&e.path()))
}

/// Copy all of `src` (from its offset 0) into `dst` at offset `at`, whatever their
/// cursors, telling `on_bytes` of each chunk; the bytes copied. `copy_file_range` first; where the
/// kernel or filesystem pair cannot (`EXDEV`, `ENOSYS`, `EOPNOTSUPP`, `EINVAL`), a plain
/// read/write loop. An error says whether it was the source's (`true`) or the copy's.
fn copy_all(
    src: &File,
    dst: &File,
    at: u64,
    on_bytes: &(dyn Fn(u64) + Send + Sync),
) -> std::result::Result<u64, (io::Error, bool)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let mut done = 0u64;
    let mut in_kernel = true;
    let mut buf = Vec::new();
    loop {
        if in_kernel {
            let mut off_in = done as libc::loff_t;
            let mut off_out = (at + done) as libc::loff_t;
            // SAFETY: valid descriptors, offsets owned by this frame, a plain length.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    &mut off_out,
                    COPY_CHUNK,
                    0,
                )
            };
            if n >= 0 {
                if n == 0 {
                    return Ok(done);
                }
                done += n as u64;
                on_bytes(n as u64);
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) if done == 0 => {
                    in_kernel = false;
                    buf = vec![0u8; COPY_CHUNK];
                    continue;
                }
                // Which side failed is not told; ENOSPC, EFBIG and EDQUOT are the copy's.
                Some(libc::ENOSPC | libc::EFBIG | libc::EDQUOT) => return Err((e, false)),
                _ => return Err((e, true)),
            }
        }
        let n = match src.read_at(&mut buf, done) {
            Ok(0) => return Ok(done),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((e, true)),
        };
        dst.write_all_at(&buf[..n], at + done)
            .map_err(|e| (e, false))?;
        done += n as u64;
        on_bytes(n as u64);
    }
}

/// SHA-256 of the `len` bytes of `f` from `offset` (a file shorter than that is an
/// `UnexpectedEof` error).
fn hash_range(f: &File, offset: u64, len: u64) -> io::Result<[u8; 32]> {
    use std::os::unix::fs::FileExt;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        match f.read_at(&mut buf[..want], offset + done) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                done += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finalize().into())
}

/// Ask the kernel to start writing `len` bytes of `f` from `offset` to the disk, without
/// waiting: the sync at completion then has little left to do. Only a hint; a kernel or
/// filesystem without `sync_file_range` is no error.
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open file descriptor and plain integer arguments.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// The error of a completion whose part `part` is not in the parts file.
fn never_stored(key: &str, up: &UploadId, part: &PartReceipt) -> BackendError {
    BackendError::Permanent(format!(
        "{key}: part {} of upload {} was never stored",
        part.number, up.0
    ))
}

/// Reserve `len` bytes for `f` (fallocate); a filesystem that cannot is no error.
fn preallocate(f: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a valid open file descriptor and plain integer arguments.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TMP_MARK)
}

fn is_valid_upload_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// "No such object": the file is missing, or a component of its path is a file.
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// fsync a folder so a rename or create in it is durable. Filesystems that cannot fsync
/// folders (some network and FUSE filesystems) are tolerated.
fn fsync_dir(dir: &Path) -> Result<()> {
    let ctx = || format!("fsync {}", dir.display());
    let f = File::open(dir).map_err(|e| BackendError::from_io(&ctx(), e))?;
    match f.sync_all() {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(BackendError::from_io(&ctx(), e)),
    }
}

/// The xattr value: the hash plus the size and mtime it is valid for.
fn sha_xattr_value(sha: &[u8; 32], meta: &fs::Metadata) -> String {
    format!(
        "{} {} {}.{:09}",
        hex::encode(sha),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

#[cfg(target_os = "linux")]
fn write_sha_xattr(file: &File, sha: &[u8; 32], meta: &fs::Metadata) {
    use std::os::fd::AsRawFd;
    let value = sha_xattr_value(sha, meta);
    // SAFETY: valid fd, NUL-terminated name, pointer and length of a live buffer.
    // Best effort: filesystems without user xattrs just report no sha256 later.
    unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            XATTR_SHA256.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn write_sha_xattr(_file: &File, _sha: &[u8; 32], _meta: &fs::Metadata) {}

#[cfg(target_os = "linux")]
fn read_sha_xattr(path: &Path, meta: &fs::Metadata) -> Option<[u8; 32]> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 128];
    // SAFETY: NUL-terminated path and name, pointer and length of a live buffer.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            XATTR_SHA256.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    let value = std::str::from_utf8(&buf[..n as usize]).ok()?;
    let hex_sha = value.split(' ').next()?;
    // Only trust the hash while the file is the one it was computed for.
    let mut sha = [0u8; 32];
    hex::decode_to_slice(hex_sha, &mut sha).ok()?;
    (sha_xattr_value(&sha, meta) == value).then_some(sha)
}

#[cfg(not(target_os = "linux"))]
fn read_sha_xattr(_path: &Path, _meta: &fs::Metadata) -> Option<[u8; 32]> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for good in [
            "a",
            "a/b",
            "a/b.tar.gz",
            "x/.hidden",
            "x/..dots",
            ".uploadsx/a",
            "x/.uploads",
        ] {
            assert!(check_key(good).is_ok(), "{good} should be accepted");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "../a",
            "a/../b",
            "a/./b",
            ".",
            ".uploads",
            ".uploads/x",
            "a/.b.tmp-123",
            "a\0b",
        ] {
            assert!(
                matches!(check_key(bad), Err(BackendError::Permanent(_))),
                "{bad:?} should be rejected"
            );
        }
    }

    /// A process killed while removing a completed (or aborted) upload's staging folder
    /// must never leave that upload half there: a resumed push would then fail its
    /// completion ("part 3 was never stored") on every run instead of starting over.
    #[test]
    fn a_half_removed_staging_folder_is_gone_for_every_reader_and_swept() {
        let root = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(root.path().join("r")).unwrap();
        let i = &b.inner;
        let body = vec![7u8; PART_SIZE as usize];
        let sha: [u8; 32] = sha2::Sha256::digest(&body).into();
        let up = i.create_upload("a/x.tar.gz").unwrap();
        let p1 = i.put_part("a/x.tar.gz", &up, 1, &body, sha).unwrap();
        let p2 = i.put_part("a/x.tar.gz", &up, 2, &body, sha).unwrap();

        // The state a kill leaves in the middle of `retire_staging`: renamed, the parts
        // already removed, `upload.json` still there.
        let uploads = i.root.join(UPLOADS);
        let retired = uploads.join(format!("{RETIRED}{}", up.0));
        fs::rename(uploads.join(&up.0), &retired).unwrap();
        fs::remove_file(retired.join(PARTS_FILE)).unwrap();

        let whole: [u8; 32] = sha2::Sha256::digest([body.clone(), body].concat()).into();
        let r = i.complete_upload("a/x.tar.gz", &up, &[p1, p2], whole);
        assert!(
            matches!(r, Err(BackendError::UploadNotFound(_))),
            "a resumed completion must learn the upload is gone: {r:?}"
        );
        assert_eq!(i.list_uploads("").unwrap(), vec![]);
        assert!(matches!(
            i.head("a/x.tar.gz"),
            Err(BackendError::NotFound(_))
        ));

        // The next write sweeps it; nothing of the upload stays on the disk.
        let up2 = i.create_upload("a/y.tar.gz").unwrap();
        assert!(!retired.exists(), "the retired folder was not swept");
        i.abort_upload("a/y.tar.gz", &up2).unwrap();
        let left: Vec<_> = fs::read_dir(&uploads).unwrap().flatten().collect();
        assert!(left.is_empty(), "left in .uploads: {left:?}");
    }

    #[test]
    fn prefixes_are_checked() {
        for good in ["", "a", "a/", "a/b", "a/b/", "a/..partial", "a/.."] {
            assert!(check_prefix(good).is_ok(), "{good} should be accepted");
        }
        for bad in ["/", "/a", "../", "a/../b", "a//", ".uploads/"] {
            assert!(check_prefix(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
