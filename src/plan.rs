//! The sync plan, as pure functions: what a remote holds (from its listing) and
//! what must be uploaded to it. `push --dry-run` prints exactly this plan.

use std::collections::BTreeMap;

use pronto_backends::ObjectMeta;

use crate::catalog::{self, ArchiveName, LocalArchive};
use crate::manifest::Manifest;

/// One archive as a remote holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteArchive {
    pub name: ArchiveName,
    /// Size of the archive object, when present.
    pub size: Option<u64>,
    /// Whether its manifest object is present (the commit marker).
    pub has_manifest: bool,
}

impl RemoteArchive {
    /// Archive and manifest both there: a restore candidate.
    pub fn complete(&self) -> bool {
        self.size.is_some() && self.has_manifest
    }
}

/// What a remote's listing says, keyed by archive id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteState {
    pub archives: BTreeMap<String, RemoteArchive>,
    /// Objects that are not ours (other names) — never touched.
    pub foreign: usize,
}

/// Read a listing into a [`RemoteState`]. Only names of our prefix and format count.
pub fn remote_state(prefix: &str, objects: &[ObjectMeta]) -> RemoteState {
    let mut st = RemoteState::default();
    for o in objects {
        let (file, is_manifest) = match o.key.strip_suffix(".manifest.json") {
            Some(f) => (f, true),
            None => (o.key.as_str(), false),
        };
        let Some(name) = catalog::parse_name(prefix, file) else {
            st.foreign += 1;
            continue;
        };
        let e = st
            .archives
            .entry(name.id.clone())
            .or_insert_with(|| RemoteArchive {
                name: name.clone(),
                size: None,
                has_manifest: false,
            });
        if is_manifest {
            e.has_manifest = true;
        } else {
            e.size = Some(o.size);
        }
    }
    st
}

/// Why an archive goes to a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadReason {
    Missing,
    /// The remote has the archive but no manifest: an interrupted upload.
    Incomplete,
    /// The remote's object has another size than ours.
    SizeDiffers { remote: u64 },
}

impl std::fmt::Display for UploadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadReason::Missing => f.write_str("missing on the remote"),
            UploadReason::Incomplete => f.write_str("incomplete on the remote (no manifest)"),
            UploadReason::SizeDiffers { remote } => {
                write!(f, "remote copy has another size ({remote} bytes)")
            }
        }
    }
}

/// One planned upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub archive: LocalArchive,
    pub manifest: Manifest,
    pub reason: UploadReason,
}

/// Which complete local archives a remote lacks, oldest first.
pub fn uploads(local: &[LocalArchive], remote: &RemoteState) -> Vec<Upload> {
    let mut out = Vec::new();
    for a in local {
        let Some(m) = &a.manifest else { continue };
        let reason = match remote.archives.get(&a.name.id) {
            None => Some(UploadReason::Missing),
            Some(r) => match r.size {
                None => Some(UploadReason::Missing),
                Some(s) if s != m.size => Some(UploadReason::SizeDiffers { remote: s }),
                Some(_) if !r.has_manifest => Some(UploadReason::Incomplete),
                Some(_) => None,
            },
        };
        if let Some(reason) = reason {
            out.push(Upload {
                archive: a.clone(),
                manifest: m.clone(),
                reason,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            sha256: None,
        }
    }

    #[test]
    fn listing_groups_archives_and_manifests_and_ignores_foreign() {
        let st = remote_state(
            "p",
            &[
                obj("p-20260101-000000.tar.gz", 10),
                obj("p-20260101-000000.tar.gz.manifest.json", 1),
                obj("p-20260102-000000.tar.gz", 7),
                obj("q-20260102-000000.tar.gz", 7),
                obj("README", 7),
            ],
        );
        assert_eq!(st.foreign, 2);
        assert!(st.archives["20260101-000000"].complete());
        assert!(!st.archives["20260102-000000"].complete());
    }
}
