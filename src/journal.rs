//! The push journal: what a multipart upload has sent so far, on disk, so that a
//! killed `push` resumes at the first missing part in a new process.
//!
//! One JSON file per (remote, archive) under `<backup folder>/.journal/<remote>/`,
//! written atomically before the first part and after each part.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pronto_backends::{PartReceipt, UploadId};
use serde::{Deserialize, Serialize};

use crate::fsutil;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The remote key being written.
    pub key: String,
    /// Size and hash of the whole archive: a journal for other bytes is void.
    pub size: u64,
    pub sha256: String,
    pub upload_id: UploadId,
    pub part_size: u64,
    /// Receipts exactly as the backend returned them, in any order.
    pub parts: Vec<PartReceipt>,
    /// Pushes that resumed this upload and failed. At [`MAX_UPLOAD_FAILURES`] the upload
    /// is not resumed again but started over (the server may have lost or damaged it in
    /// a way no error says), so that one broken upload never blocks the remote forever.
    #[serde(default)]
    pub failures: u32,
}

/// Failed pushes after which a journaled upload is started over instead of resumed.
pub const MAX_UPLOAD_FAILURES: u32 = 3;

impl Journal {
    /// The journal file for an archive on a remote.
    pub fn path(backup_dir: &Path, remote: &str, file: &str) -> PathBuf {
        backup_dir
            .join(".journal")
            .join(remote)
            .join(format!("{file}.json"))
    }

    /// Load a journal, if there is a readable one. A damaged journal is ignored
    /// (the upload then starts over), never trusted.
    pub fn load(path: &Path) -> Option<Journal> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::warn!("ignoring damaged journal {}: {e}", path.display());
                None
            }
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fsutil::create_private_dir(dir)?;
        }
        let bytes = serde_json::to_vec(self).context("serializing journal")?;
        fsutil::write_atomic(path, &bytes)
    }

    pub fn remove(path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing journal {}", path.display())),
        }
    }
}

/// What this host is about to upload: recorded *before* an archive's upload starts
/// (before `create_upload`, before a `put`), removed once its manifest is on the remote
/// — unless an earlier push of the same archive was stopped (its intent was still
/// there): that push may have left an upload that no journal names, and only this file
/// proves it ours, so it stays until `push --cleanup` finds no such upload left.
///
/// It is the proof `push --cleanup` needs before it aborts an upload that no journal
/// names (a push killed between starting an upload and journaling its id, or a temp
/// file of a killed `put`): an upload is ours only when its key is one of this host's
/// archive names *and* an intent for that archive exists. Another host's or program's
/// upload in progress, even under a name like ours, has no intent here and is left alone.
///
/// One file `<backup folder>/.journal/<remote>/<archive file>.intent` per archive (it
/// covers the archive's key and its manifest's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The archive's key on the remote (as the remote handle names it).
    pub key: String,
    /// When the upload was about to start (seconds since the epoch).
    pub started_unix: u64,
    /// The process that started it.
    pub pid: u32,
}

/// Extension of intent files (not `.json`: journal scans must not read them as journals).
pub const INTENT_EXT: &str = "intent";

impl Intent {
    /// The intent file for an archive on a remote.
    pub fn path(backup_dir: &Path, remote: &str, file: &str) -> PathBuf {
        backup_dir
            .join(".journal")
            .join(remote)
            .join(format!("{file}.{INTENT_EXT}"))
    }

    /// Record, durably, that this process is about to upload archive `file` to `remote`.
    pub fn record(backup_dir: &Path, remote: &str, file: &str) -> Result<Recorded> {
        let path = Self::path(backup_dir, remote, file);
        // An intent of another process still here: that push was stopped mid-upload.
        let after_a_stopped_push = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice::<Intent>(&b).map_or(true, |i| i.pid != std::process::id())
            }
            Err(_) => false,
        };
        let intent = Intent {
            key: file.to_string(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            pid: std::process::id(),
        };
        if let Some(dir) = path.parent() {
            fsutil::create_private_dir(dir)?;
        }
        let bytes = serde_json::to_vec(&intent).context("serializing upload intent")?;
        fsutil::write_atomic(&path, &bytes)
            .with_context(|| format!("recording the upload of {file} to {remote}"))?;
        Ok(Recorded {
            path,
            after_a_stopped_push,
        })
    }

    /// Every readable intent in a remote's journal folder, with its file.
    pub fn all(journal_dir: &Path) -> Vec<(PathBuf, Intent)> {
        let Ok(rd) = std::fs::read_dir(journal_dir) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == INTENT_EXT))
            .filter_map(|p| {
                let i = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
                Some((p, i))
            })
            .collect()
    }

    /// Remove an intent file (missing is fine).
    pub fn remove(path: &Path) -> Result<()> {
        Journal::remove(path)
    }
}

/// An intent just recorded, for the upload that recorded it to settle when it is done.
#[derive(Debug)]
#[must_use = "settle the intent with `done` once the manifest is on the remote"]
pub struct Recorded {
    pub path: PathBuf,
    /// An earlier push of this archive to this remote was stopped after recording its
    /// intent: what it may have left on the remote is proved ours only by this file.
    pub after_a_stopped_push: bool,
}

impl Recorded {
    /// The archive is complete on the remote: the intent is removed, unless an earlier
    /// push was stopped (then `push --cleanup` removes it once no upload of the archive
    /// is left in progress on the remote).
    pub fn done(self) -> Result<()> {
        if self.after_a_stopped_push {
            return Ok(());
        }
        Intent::remove(&self.path)
    }
}
