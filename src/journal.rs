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

#[cfg(test)]
mod tests {
    use super::*;
    use pronto_backends::{PartReceipt, UploadId};

    fn journal() -> Journal {
        Journal {
            key: "host/app-2024-01-01T000000Z.tar.gz".into(),
            size: 3 << 20,
            sha256: "ab".repeat(32),
            upload_id: UploadId("up-1".into()),
            part_size: 1 << 20,
            parts: vec![
                PartReceipt {
                    number: 2,
                    size: 1 << 20,
                    token: "etag-2".into(),
                },
                PartReceipt {
                    number: 1,
                    size: 1 << 20,
                    token: "etag-1".into(),
                },
            ],
            failures: 2,
        }
    }

    #[test]
    fn a_saved_journal_is_read_back_by_a_new_push() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path(dir.path(), "nas", "app.tar.gz");
        assert_eq!(path, dir.path().join(".journal/nas/app.tar.gz.json"));
        // Not there yet: nothing to resume.
        assert_eq!(Journal::load(&path), None);
        // Its folders are created on the first save; a later save replaces it.
        let mut j = journal();
        j.save(&path).unwrap();
        assert_eq!(Journal::load(&path), Some(j.clone()));
        j.parts.push(PartReceipt {
            number: 3,
            size: 1 << 20,
            token: "etag-3".into(),
        });
        j.save(&path).unwrap();
        assert_eq!(Journal::load(&path), Some(j));
        // Older journals without `failures` are still read (no failures yet).
        let mut old: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("failures");
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(Journal::load(&path).unwrap().failures, 0);
    }

    #[test]
    fn a_damaged_journal_is_ignored_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path(dir.path(), "nas", "app.tar.gz");
        journal().save(&path).unwrap();
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        assert_eq!(Journal::load(&path), None);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(Journal::load(&path), None);
    }

    #[test]
    fn removing_a_journal_tolerates_only_its_absence() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path(dir.path(), "nas", "app.tar.gz");
        journal().save(&path).unwrap();
        Journal::remove(&path).unwrap();
        assert!(!path.exists());
        // Already gone: fine.
        Journal::remove(&path).unwrap();
        // Something that cannot be removed as a file (a folder) is an error, not "gone".
        std::fs::create_dir_all(&path).unwrap();
        let err = Journal::remove(&path).unwrap_err().to_string();
        assert!(err.contains("removing journal"), "{err}");
        assert!(path.exists());
    }

    fn intent_of(pid: u32) -> Vec<u8> {
        serde_json::to_vec(&Intent {
            key: "app.tar.gz".into(),
            started_unix: 1,
            pid,
        })
        .unwrap()
    }

    #[test]
    fn an_intent_is_recorded_and_removed_when_the_push_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Intent::record(dir.path(), "nas", "app.tar.gz").unwrap();
        assert_eq!(rec.path, dir.path().join(".journal/nas/app.tar.gz.intent"));
        assert_eq!(rec.path, Intent::path(dir.path(), "nas", "app.tar.gz"));
        assert!(!rec.after_a_stopped_push);
        let i: Intent = serde_json::from_slice(&std::fs::read(&rec.path).unwrap()).unwrap();
        assert_eq!(i.key, "app.tar.gz");
        assert_eq!(i.pid, std::process::id());
        assert!(i.started_unix > 1_700_000_000, "{}", i.started_unix);
        let path = rec.path.clone();
        rec.done().unwrap();
        assert!(!path.exists());
        // This process's own earlier intent (a retry in the same push) is no stopped push.
        let rec = Intent::record(dir.path(), "nas", "app.tar.gz").unwrap();
        let again = Intent::record(dir.path(), "nas", "app.tar.gz").unwrap();
        assert!(!again.after_a_stopped_push);
        again.done().unwrap();
        assert!(!rec.path.exists());
    }

    #[test]
    fn the_intent_of_a_stopped_push_stays_until_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let path = Intent::path(dir.path(), "nas", "app.tar.gz");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for left in [
            intent_of(std::process::id().wrapping_add(1)),
            b"{half".to_vec(),
        ] {
            std::fs::write(&path, &left).unwrap();
            let rec = Intent::record(dir.path(), "nas", "app.tar.gz").unwrap();
            assert!(rec.after_a_stopped_push);
            rec.done().unwrap();
            // Still there: only `push --cleanup` may remove it.
            let i: Intent = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(i.pid, std::process::id());
            Intent::remove(&path).unwrap();
            assert!(!path.exists());
            Intent::remove(&path).unwrap();
        }
    }

    #[test]
    fn all_intents_lists_readable_intents_and_no_journals() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join(".journal/nas");
        assert!(Intent::all(&jdir).is_empty());
        journal()
            .save(&Journal::path(dir.path(), "nas", "a.tar.gz"))
            .unwrap();
        let a = Intent::record(dir.path(), "nas", "a.tar.gz").unwrap();
        std::fs::write(jdir.join("b.tar.gz.intent"), intent_of(7)).unwrap();
        std::fs::write(jdir.join("c.tar.gz.intent"), b"garbage").unwrap();
        let mut all = Intent::all(&jdir);
        all.sort_by(|x, y| x.0.cmp(&y.0));
        let keys: Vec<_> = all
            .iter()
            .map(|(p, i)| (p.clone(), i.key.clone(), i.pid))
            .collect();
        assert_eq!(
            keys,
            vec![
                (a.path.clone(), "a.tar.gz".to_string(), std::process::id()),
                (jdir.join("b.tar.gz.intent"), "app.tar.gz".to_string(), 7),
            ]
        );
        a.done().unwrap();
    }
}
