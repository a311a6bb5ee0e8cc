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
}

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
