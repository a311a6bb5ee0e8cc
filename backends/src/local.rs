//! Local-disk backend (`file:///path`): a NAS mount, a second drive.
//!
//! # Layout
//! ```text
//! <root>/<key>                         one file per object; key folders are real folders
//! <root>/<dir>/.<name>.tmp-<random>    a write in progress (never listed, removed on failure)
//! <root>/.uploads/<upload id>/         one staging folder per multipart upload
//!     upload.json                      {"key": …, "created_unix": …}
//!     part-00001, part-00002, …        one file per part, each written temp + rename
//! ```
//!
//! # Durability and atomicity
//! Every file is written under a hidden temp name in the folder it will end up in,
//! fsynced, renamed over its final name, and then the folder is fsynced, so a crash
//! leaves either the old state or the new one (plus, at worst, a hidden temp file that
//! listing ignores). Files are created `0600`, folders `0700`.
//!
//! # Why one file per part (and not "parts at their offsets in one staging file")
//! A part's offset is `(n - 1) * part_size`, but the trait never tells the backend the
//! part size, and the last part is shorter and may arrive first (parts may come in any
//! order and from a new process after a restart), so its offset cannot be known when it
//! arrives. One file per part has no such problem, makes "re-sending a part replaces it"
//! a plain atomic rename that can never damage a neighbouring part, and lets a resumed
//! upload check exactly which parts exist. The price is one sequential copy at
//! [`complete_upload`](Backend::complete_upload) — which has to read every byte anyway to
//! verify the whole object's SHA-256 — into a temp file in the staging folder, renamed
//! over the final name.
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
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{
    check_sha256 as check_sha, Backend, BackendError, ByteStream, Capabilities, ObjectMeta,
    PartReceipt, Result, UploadId,
};

/// Folder under the root that holds multipart staging folders.
const UPLOADS: &str = ".uploads";
/// Marker in the name of a write in progress: `.<name>.tmp-<random>`.
const TMP_MARK: &str = ".tmp-";
/// Id prefix of a write that never finished, as `list_uploads` reports it.
const TMP_UPLOAD: &str = "tmp-";
/// Metadata file of an upload's staging folder.
const UPLOAD_JSON: &str = "upload.json";
/// Read size for `get` streams and for assembling uploads.
const CHUNK: usize = 1 << 20;
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
        // S3's limits, so that part sizing tested against a local remote holds on S3 too.
        Capabilities {
            min_part_size: 5 * 1024 * 1024,
            max_part_size: 5 * 1024 * 1024 * 1024,
            max_parts: 10_000,
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
        check_sha(&format!("{key} part {n}"), &body, &sha256)?;
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
        let min_part_size = self.capabilities().min_part_size;
        let (key, up, parts) = (key.to_string(), up.clone(), parts.to_vec());
        self.blocking(move |i| i.complete_upload(&key, &up, &parts, sha256, min_part_size))
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

    fn create_upload(&self, key: &str) -> Result<UploadId> {
        self.check_root()?;
        let uploads = self.root.join(UPLOADS);
        self.ensure_dirs(UPLOADS)?;
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

    /// The staging folder of upload `up` for `key`, or `UploadNotFound`.
    fn open_upload(&self, key: &str, up: &UploadId) -> Result<PathBuf> {
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
        if info.key != key {
            return Err(not_found());
        }
        Ok(dir)
    }

    fn put_part(
        &self,
        key: &str,
        up: &UploadId,
        n: u32,
        body: &[u8],
        sha256: [u8; 32],
    ) -> Result<PartReceipt> {
        let staging = self.open_upload(key, up)?;
        let name = part_name(n);
        let mut tmp = self.temp_beside(&staging, &name, false)?;
        let tmp_ctx = tmp.path().display().to_string();
        tmp.as_file_mut()
            .write_all(body)
            .map_err(|e| BackendError::from_io(&tmp_ctx, e))?;
        self.finish(tmp, &staging, &name, None)?;
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
        min_part_size: u64,
    ) -> Result<ObjectMeta> {
        let staging = self.open_upload(key, up)?;
        let Some(last) = parts.last() else {
            return Err(BackendError::Permanent(format!(
                "{key}: cannot complete an upload without parts"
            )));
        };
        // Validate the receipts against what is staged before writing anything.
        let mut expected_tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            if i > 0 && part.number <= parts[i - 1].number {
                return Err(BackendError::Permanent(format!(
                    "{key}: parts must be given in ascending order without repeats \
                     (part {} follows part {})",
                    part.number,
                    parts[i - 1].number
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
            expected_tokens.push(token);
            let path = staging.join(part_name(part.number));
            let size = match fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if is_missing(&e) => {
                    return Err(BackendError::Permanent(format!(
                        "{key}: part {} of upload {} was never stored",
                        part.number, up.0
                    )))
                }
                Err(e) => return Err(BackendError::from_io(&path.display().to_string(), e)),
            };
            if size != part.size {
                return Err(BackendError::Permanent(format!(
                    "{key}: part {} is {size} bytes but its receipt says {}",
                    part.number, part.size
                )));
            }
            if part.number != last.number && size < min_part_size {
                return Err(BackendError::Permanent(format!(
                    "{key}: part {} is {size} bytes; every part but the last needs at least {min_part_size}",
                    part.number
                )));
            }
        }

        // Assemble into a temp file in the upload's staging folder (under the root, so on
        // the same filesystem as the final name), hashing as we go: a process killed here
        // leaves it where a resumed completion or `abort_upload` removes it with the
        // folder, never a stray temp file beside the object.
        self.check_root()?;
        let (dir, name) = self.split_key(key);
        let mut tmp = self.temp_beside(&staging, &name, false)?;
        let tmp_ctx = tmp.path().display().to_string();
        let mut whole = sha2::Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; CHUNK];
        for (part, expected) in parts.iter().zip(&expected_tokens) {
            let path = staging.join(part_name(part.number));
            let ctx = path.display().to_string();
            let mut file = File::open(&path).map_err(|e| BackendError::from_io(&ctx, e))?;
            let mut hasher = sha2::Sha256::new();
            let mut size = 0u64;
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(BackendError::from_io(&ctx, e)),
                };
                hasher.update(&buf[..n]);
                whole.update(&buf[..n]);
                tmp.as_file_mut()
                    .write_all(&buf[..n])
                    .map_err(|e| BackendError::from_io(&tmp_ctx, e))?;
                size += n as u64;
            }
            let actual: [u8; 32] = hasher.finalize().into();
            if &actual != expected {
                // The part was re-sent after this receipt was issued.
                return Err(BackendError::ChecksumMismatch {
                    key: format!("{key} part {}", part.number),
                    expected: hex::encode(expected),
                    actual: hex::encode(actual),
                });
            }
            if size != part.size {
                return Err(BackendError::Permanent(format!(
                    "{key}: part {} changed size while being assembled",
                    part.number
                )));
            }
            total += size;
        }
        let actual: [u8; 32] = whole.finalize().into();
        if actual != sha256 {
            // `tmp` is removed on drop; the staged parts stay, so the upload can still be
            // completed with the right receipts or aborted.
            return Err(BackendError::ChecksumMismatch {
                key: key.to_string(),
                expected: hex::encode(sha256),
                actual: hex::encode(actual),
            });
        }
        let rel = key.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        self.ensure_dirs(rel)?;
        self.finish(tmp, &dir, &name, Some(sha256))?;
        // The object is committed; failing to tidy the staging folder must not undo that.
        if fs::remove_dir_all(&staging).is_ok() {
            let _ = fsync_dir(&self.root.join(UPLOADS));
        }
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
        match fs::remove_dir_all(&dir) {
            Ok(()) => fsync_dir(&self.root.join(UPLOADS)),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(BackendError::from_io(&dir.display().to_string(), e)),
        }
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

fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TMP_MARK)
}

fn is_valid_upload_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn part_name(n: u32) -> String {
    format!("part-{n:05}")
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
