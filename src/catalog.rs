//! Archive names and the local catalog (the backup folder and its tiers).
//!
//! An archive's identity is its id (the UTC timestamp in its name) plus its
//! SHA-256 — never its path or mtime — so moving it between tiers never causes a
//! re-upload. Only files that match our prefix and name format are ever
//! considered; anything else in the folder is never touched.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};

use crate::config::Local;
use crate::manifest::Manifest;

/// Archive file extensions this version understands, longest first.
pub const EXTENSIONS: [&str; 4] = [".tar.gz.age", ".tar.zst.age", ".tar.gz", ".tar.zst"];
/// The suffix of a file being written.
pub const PARTIAL: &str = ".partial";
/// Tier folders under the backup folder, weakest first.
pub const TIER_DIRS: [(Tier, &str); 3] = [
    (Tier::Weekly, "archive/weekly"),
    (Tier::Monthly, "archive/monthly"),
    (Tier::Yearly, "archive/yearly"),
];

/// Where a local archive is filed: one type for the catalog and the retention engine
/// ([`crate::retention::strongest_tier`] says where a keeper belongs).
pub use crate::retention::Tier;

impl Tier {
    pub fn label(self) -> &'static str {
        match self {
            Tier::Top => "-",
            Tier::Weekly => "weekly",
            Tier::Monthly => "monthly",
            Tier::Yearly => "yearly",
        }
    }

    /// The folder of this tier under the backup folder.
    pub fn dir(self, base: &Path) -> PathBuf {
        match TIER_DIRS.iter().find(|(t, _)| *t == self) {
            Some((_, d)) => base.join(d),
            None => base.to_path_buf(),
        }
    }

    /// The folder relative to the backup folder, for messages (`archive/yearly`, or
    /// `the top folder`).
    pub fn folder(self) -> &'static str {
        match TIER_DIRS.iter().find(|(t, _)| *t == self) {
            Some((_, d)) => d,
            None => "the top folder",
        }
    }
}

/// A parsed archive file name: `PREFIX-YYYYMMDD-HHMMSS.EXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveName {
    /// The whole file name.
    pub file: String,
    /// `YYYYMMDD-HHMMSS`.
    pub id: String,
    /// The time in the name (UTC).
    pub time: DateTime<Utc>,
}

impl ArchiveName {
    /// The folder name inside the archive and the name without extension.
    pub fn stem(&self) -> &str {
        let ext = EXTENSIONS
            .iter()
            .find(|e| self.file.ends_with(*e))
            .expect("parsed names have a known extension");
        &self.file[..self.file.len() - ext.len()]
    }
}

/// The id (`YYYYMMDD-HHMMSS`) for a time.
pub fn id_for(time: DateTime<Utc>) -> String {
    time.format("%Y%m%d-%H%M%S").to_string()
}

/// The archive file name for a prefix, time and extension (`.tar.gz`).
pub fn file_name(prefix: &str, time: DateTime<Utc>, ext: &str) -> String {
    format!("{prefix}-{}{ext}", id_for(time))
}

/// Parse `file` as one of our archive names with the given prefix.
pub fn parse_name(prefix: &str, file: &str) -> Option<ArchiveName> {
    let ext = EXTENSIONS.iter().find(|e| file.ends_with(*e))?;
    let stem = &file[..file.len() - ext.len()];
    let id = stem.strip_prefix(prefix)?.strip_prefix('-')?;
    let time = parse_id(id)?;
    Some(ArchiveName {
        file: file.to_string(),
        id: id.to_string(),
        time,
    })
}

/// Parse an id `YYYYMMDD-HHMMSS`.
pub fn parse_id(id: &str) -> Option<DateTime<Utc>> {
    if id.len() != 15 || id.as_bytes()[8] != b'-' {
        return None;
    }
    if !id
        .bytes()
        .enumerate()
        .all(|(i, b)| i == 8 || b.is_ascii_digit())
    {
        return None;
    }
    NaiveDateTime::parse_from_str(id, "%Y%m%d-%H%M%S")
        .ok()
        .map(|n| n.and_utc())
}

/// Normalise what a user typed for an archive (`20260201-170521`,
/// `pronto-app-backup-20260201-170521`, or the file name) to its id.
pub fn id_from_user(prefix: &str, s: &str) -> Option<String> {
    if parse_id(s).is_some() {
        return Some(s.to_string());
    }
    if let Some(n) = parse_name(prefix, s) {
        return Some(n.id);
    }
    let id = s.strip_prefix(prefix)?.strip_prefix('-')?;
    parse_id(id).map(|_| id.to_string())
}

/// One archive in the local backup folder.
#[derive(Debug, Clone)]
pub struct LocalArchive {
    pub name: ArchiveName,
    /// Full path of the archive file.
    pub path: PathBuf,
    pub tier: Tier,
    /// The manifest beside it; `None` means the archive is incomplete or foreign.
    pub manifest: Option<Manifest>,
    /// Where its manifest was found, when it was found in another tier folder than the
    /// archive (a tier move interrupted between its two renames; see [`move_to_tier`]).
    pub manifest_elsewhere: Option<PathBuf>,
    /// Why this archive is unusable although it has a manifest file: the manifest could
    /// not be read or is not valid (then `manifest` is `None`). Such an archive is
    /// flagged by `list` and `status`, skipped by `push` (reported by name), never
    /// deleted and never repaired automatically.
    pub problem: Option<String>,
}

impl LocalArchive {
    /// Where the manifest is (when it was found elsewhere), else where it belongs: beside
    /// the archive.
    pub fn manifest_path(&self) -> PathBuf {
        self.manifest_elsewhere.clone().unwrap_or_else(|| {
            self.path
                .with_file_name(Manifest::file_name_for(&self.name.file))
        })
    }
}

/// Every archive in the backup folder and its tiers, oldest first.
/// A missing backup folder is an empty catalog. Only a folder that cannot be read is an
/// error: an entry or a manifest that cannot be read is skipped or flagged
/// ([`LocalArchive::problem`]), never a reason to fail the whole scan.
///
/// Only files named `PREFIX-YYYYMMDD-HHMMSS.EXT` (and their `.manifest.json`) count.
/// An archive's manifest is looked for beside it first, then in the other tier folders:
/// a tier move renames the archive first and its manifest second, so a crash between
/// the two leaves them in different folders, and the archive must still count as
/// complete (the next filing pass puts the manifest back beside it).
pub fn scan(local: &Local) -> Result<Vec<LocalArchive>> {
    let mut archives: Vec<(ArchiveName, PathBuf, Tier)> = Vec::new();
    // Manifests of our archive names: (archive file name, path, tier).
    let mut manifests: Vec<(String, PathBuf, Tier)> = Vec::new();
    let mut dirs = vec![(Tier::Top, local.dir.clone())];
    dirs.extend(TIER_DIRS.iter().map(|(t, _)| (*t, t.dir(&local.dir))));
    for (tier, dir) in dirs {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in rd {
            // One unreadable entry never hides the others.
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("reading {}: {e}; entry skipped", dir.display());
                    continue;
                }
            };
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            let (base, is_manifest) = match file.strip_suffix(".manifest.json") {
                Some(b) => (b, true),
                None => (file, false),
            };
            let Some(name) = parse_name(&local.prefix, base) else {
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if is_manifest {
                manifests.push((name.file, entry.path(), tier));
            } else {
                archives.push((name, entry.path(), tier));
            }
        }
    }
    let mut out = Vec::new();
    for (name, path, tier) in &archives {
        let beside = manifests
            .iter()
            .find(|(f, _, t)| f == &name.file && t == tier);
        // Elsewhere: only a manifest whose own folder has no archive of that name.
        let elsewhere = || {
            manifests.iter().find(|(f, _, t)| {
                f == &name.file && !archives.iter().any(|(n, _, at)| n.file == *f && at == t)
            })
        };
        let (mpath, manifest_elsewhere) = match beside {
            Some((_, mpath, _)) => (Some(mpath), None),
            None => match elsewhere() {
                Some((_, mpath, _)) => (Some(mpath), Some(mpath.clone())),
                None => (None, None),
            },
        };
        // A manifest that cannot be read flags its archive; the scan goes on.
        let (manifest, problem) = match mpath.map(|p| Manifest::read(p)) {
            None => (None, None),
            Some(Ok(m)) => (Some(m), None),
            Some(Err(e)) => {
                let why = format!("manifest unreadable: {e:#}");
                tracing::warn!("{}: {why}", name.file);
                (None, Some(why))
            }
        };
        out.push(LocalArchive {
            name: name.clone(),
            path: path.clone(),
            tier: *tier,
            manifest,
            manifest_elsewhere,
            problem,
        });
    }
    out.sort_by(|a, b| {
        a.name
            .time
            .cmp(&b.name.time)
            .then(a.name.file.cmp(&b.name.file))
    });
    Ok(out)
}

/// File a complete archive under `tier`: rename the archive first, then its manifest,
/// then fsync both folders. Returns the archive's new path.
///
/// Why this order: the manifest is the commit marker and moves last, like a backup
/// writes it last. A crash between the two renames leaves the archive in the new
/// folder and the manifest in the old one; [`scan`] pairs them across tier folders, so
/// nothing ever looks incomplete, and the next filing pass (after a backup or prune)
/// finishes the move. Also used for that repair: an archive already in `tier` whose
/// manifest is elsewhere only gets its manifest moved. Never overwrites a file.
/// Call under the [`crate::lock`].
pub fn move_to_tier(local: &Local, a: &LocalArchive, tier: Tier) -> Result<PathBuf> {
    let to_dir = tier.dir(&local.dir);
    let from_dir = a.path.parent().unwrap_or(&local.dir).to_path_buf();
    let new_path = to_dir.join(&a.name.file);
    let mname = Manifest::file_name_for(&a.name.file);
    let new_manifest = to_dir.join(&mname);
    let old_manifest = a.manifest_path();
    if a.tier != tier {
        crate::fsutil::create_private_dir(&to_dir)?;
        if new_path.exists() {
            anyhow::bail!(
                "cannot file {} under {}: {} already exists",
                a.name.file,
                tier.folder(),
                new_path.display()
            );
        }
        std::fs::rename(&a.path, &new_path)
            .with_context(|| format!("moving {} to {}", a.path.display(), to_dir.display()))?;
    }
    if old_manifest != new_manifest && old_manifest.exists() {
        if new_manifest.exists() {
            anyhow::bail!(
                "cannot move the manifest of {} to {}: {} already exists",
                a.name.file,
                tier.folder(),
                new_manifest.display()
            );
        }
        std::fs::rename(&old_manifest, &new_manifest).with_context(|| {
            format!("moving {} to {}", old_manifest.display(), to_dir.display())
        })?;
    }
    crate::fsutil::sync_dir(&to_dir)?;
    crate::fsutil::sync_dir(&from_dir)?;
    if let Some(mdir) = old_manifest.parent() {
        if mdir != from_dir && mdir != to_dir {
            crate::fsutil::sync_dir(mdir)?;
        }
    }
    Ok(new_path)
}

/// Whether an archive named at `time` is in the future at `now` by more than the
/// clock-skew tolerance ([`FUTURE_TOLERANCE_SECS`]): a clock was wrong when
/// it was made (or is now). Such an archive is flagged by `backup`, `list`, `status` and
/// `doctor`, kept by prune but never the newest it counts back from, never `latest`,
/// and never counted as a fresh backup.
pub fn named_in_future(time: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    time > now + chrono::TimeDelta::seconds(FUTURE_TOLERANCE_SECS)
}

/// A warning for an archive named in the future (see [`named_in_future`]).
pub fn future_warning(file: &str, time: DateTime<Utc>) -> String {
    format!(
        "{file} is named in the future ({}, this host's clock says {}): not counted as the newest or as fresh, never `latest`; is a clock wrong?",
        time.to_rfc3339(),
        Utc::now().format("%Y-%m-%dT%H:%M:%S%:z")
    )
}

impl LocalArchive {
    /// A safety backup taken before a restore ([`Manifest::safety`]).
    pub fn is_safety(&self) -> bool {
        self.manifest.as_ref().is_some_and(|m| m.safety)
    }
}

/// Find one complete local archive by id.
pub fn find_complete<'a>(all: &'a [LocalArchive], id: &str) -> Option<&'a LocalArchive> {
    all.iter().find(|a| a.name.id == id && a.manifest.is_some())
}

/// The local copy of archive `what` when it is complete and its SHA-256 and size match
/// its manifest. Not for `latest` (the pull decides: the newest local archive unless a
/// remote holds a newer one), nor when `--remote` asks for a remote's copy.
pub fn local_intact(
    cfg: &crate::config::Config,
    what: &str,
    remote_given: bool,
    out: &mut dyn std::io::Write,
) -> Result<Option<PathBuf>> {
    if what == "latest" || remote_given {
        return Ok(None);
    }
    let Some(id) = id_from_user(&cfg.local.prefix, what) else {
        return Ok(None);
    };
    let all = scan(&cfg.local)?;
    let Some(a) = find_complete(&all, &id) else {
        return Ok(None);
    };
    let m = a.manifest.as_ref().expect("complete");
    let (sha, size) = crate::archive::sha256_file(&a.path)?;
    if hex::encode(sha) != m.sha256 || size != m.size {
        writeln!(
            out,
            "the local copy {} does not match its manifest; fetching it from a remote",
            a.path.display()
        )?;
        return Ok(None);
    }
    writeln!(
        out,
        "using the local copy {} (sha256 {} verified)",
        a.path.display(),
        m.sha256
    )?;
    Ok(Some(a.path.clone()))
}

/// A line for `list` and `doctor` when manifest-less archives of ours are in the folder.
pub fn adoption_hint(all: &[LocalArchive]) -> Option<String> {
    let n = all.iter().filter(|a| a.manifest.is_none()).count();
    (n > 0).then(|| {
        format!(
            "{n} archive(s) without a manifest (an interrupted backup, or made by another script): if they are finished archives, `pronto-offsite adopt` reads them whole and takes them in"
        )
    })
}

// ---- names of our own files beside the archives ----

/// An archive named more than this many seconds after now is clock skew: it is kept,
/// warned about, and never the newest archive the policy counts back from.
pub const FUTURE_TOLERANCE_SECS: i64 = 5 * 60;

/// The marker's key at the remote's root: a dot name, never one of our archive names.
pub const MARKER: &str = ".pronto-offsite-remote";

/// The pins document's file name and remote key for a prefix: `PREFIX.pins.json`.
pub fn pins_file_name(prefix: &str) -> String {
    format!("{prefix}.pins.json")
}

/// How many recent archives the median size is taken from.
pub const RECENT: usize = 7;

/// The one top folder inside an archive: its name without the extension.
pub fn top_folder(prefix: &str, file: &str) -> String {
    match crate::catalog::parse_name(prefix, file) {
        Some(n) => n.stem().to_string(),
        None => file.split(".tar").next().unwrap_or(file).to_string(),
    }
}

/// The room the next archive needs in the backup folder: the median size of the last
/// [`RECENT`] complete archives (safety backups aside), plus 10%. `None` before the
/// first archive.
pub fn next_archive_estimate(cfg: &crate::config::Config) -> Option<u64> {
    let all = scan(&cfg.local).ok()?;
    let mut sizes: Vec<u64> = all
        .iter()
        .filter(|a| !a.is_safety())
        .filter_map(|a| a.manifest.as_ref().map(|m| (a.name.time, m.size)))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .rev()
        .take(RECENT)
        .collect();
    median(&mut sizes).map(|m| m.saturating_add(m / 10))
}

pub(crate) fn median(v: &mut [u64]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = parse_name(
            "pronto-app-backup",
            "pronto-app-backup-20260201-170521.tar.gz",
        )
        .unwrap();
        assert_eq!(n.id, "20260201-170521");
        assert_eq!(n.stem(), "pronto-app-backup-20260201-170521");
        assert_eq!(file_name("pronto-app-backup", n.time, ".tar.gz"), n.file);
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for f in [
            "pronto-app-backup-20260201-170521.tar.gz.partial",
            "pronto-app-backup-20260201-170521.tar.gz.manifest.json",
            "other-20260201-170521.tar.gz",
            "pronto-app-backup-2026021-170521.tar.gz",
            "pronto-app-backup-20261301-170521.tar.gz",
            "pronto-app-backup-x-20260201-170521.tar.gz",
            "notes.txt",
        ] {
            assert!(parse_name("pronto-app-backup", f).is_none(), "{f}");
        }
    }

    #[test]
    fn ids_from_what_users_type() {
        let p = "pronto-app-backup";
        for s in [
            "20260201-170521",
            "pronto-app-backup-20260201-170521",
            "pronto-app-backup-20260201-170521.tar.gz",
        ] {
            assert_eq!(
                id_from_user(p, s).as_deref(),
                Some("20260201-170521"),
                "{s}"
            );
        }
        assert_eq!(id_from_user(p, "yesterday"), None);
    }
}
