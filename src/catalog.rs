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

    // ---- added for the mutation check (issue 21) ----

    const P: &str = "pronto-app-backup";

    fn cfg_at(dir: &Path) -> crate::config::Config {
        crate::config::parse(
            &format!("[local]\ndir = \"{}\"\n", dir.display()),
            Path::new("/etc/pronto-offsite/test.toml"),
        )
        .unwrap()
    }

    fn file_of(id: &str) -> String {
        format!("{P}-{id}.tar.gz")
    }

    /// The manifest of `file` as a backup writes it: its true size and SHA-256.
    fn manifest_json(file: &str, content: &[u8], safety: bool) -> String {
        use sha2::Digest;
        let id = parse_name(P, file).unwrap().id;
        format!(
            r#"{{"format":1,"id":"{id}","file":"{file}","created":"2026-01-01T00:00:00Z",
            "size":{},"sha256":"{}","compression":"gzip","encryption":"none","host":"h",
            "tool_version":"0","sources":[],"safety":{safety}}}"#,
            content.len(),
            hex::encode(&sha2::Sha256::digest(content)[..]),
        )
    }

    /// An archive with `content` in `folder`, and its manifest beside it when `manifest`.
    fn put(folder: &Path, id: &str, content: &[u8], manifest: bool) -> PathBuf {
        std::fs::create_dir_all(folder).unwrap();
        let file = file_of(id);
        let path = folder.join(&file);
        std::fs::write(&path, content).unwrap();
        if manifest {
            put_manifest(folder, &file, content, false);
        }
        path
    }

    fn put_manifest(folder: &Path, file: &str, content: &[u8], safety: bool) {
        std::fs::create_dir_all(folder).unwrap();
        std::fs::write(
            folder.join(Manifest::file_name_for(file)),
            manifest_json(file, content, safety),
        )
        .unwrap();
    }

    #[test]
    fn tiers_name_their_folders() {
        let base = Path::new("/b");
        let got: Vec<(&str, &str, PathBuf)> =
            [Tier::Top, Tier::Weekly, Tier::Monthly, Tier::Yearly]
                .iter()
                .map(|t| (t.label(), t.folder(), t.dir(base)))
                .collect();
        assert_eq!(
            got,
            vec![
                ("-", "the top folder", PathBuf::from("/b")),
                (
                    "weekly",
                    "archive/weekly",
                    PathBuf::from("/b/archive/weekly")
                ),
                (
                    "monthly",
                    "archive/monthly",
                    PathBuf::from("/b/archive/monthly")
                ),
                (
                    "yearly",
                    "archive/yearly",
                    PathBuf::from("/b/archive/yearly")
                ),
            ]
        );
    }

    #[test]
    fn ids_must_be_exactly_date_dash_time() {
        assert!(parse_id("20260201-170521").is_some());
        // chrono alone would read these (a one-digit second, a space) as times.
        for bad in [
            "20260201-17052",
            "20260201-1705211",
            "20260201x170521",
            "2026020-1170521",
            "20260201-17 521",
            "2026",
            "",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_future_starts_after_the_tolerance() {
        let now = Utc::now();
        let edge = now + chrono::TimeDelta::seconds(FUTURE_TOLERANCE_SECS);
        assert!(!named_in_future(now, now));
        assert!(!named_in_future(now - chrono::TimeDelta::days(1), now));
        assert!(!named_in_future(edge, now));
        assert!(named_in_future(edge + chrono::TimeDelta::seconds(1), now));
        let w = future_warning("p-20990101-000000.tar.gz", now + chrono::TimeDelta::days(9));
        assert!(
            w.starts_with("p-20990101-000000.tar.gz is named in the future"),
            "{w}"
        );
    }

    #[test]
    fn scan_pairs_archives_and_manifests_across_tiers_and_skips_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg_at(&tmp.path().join("backups"));
        let base = &cfg.local.dir;
        // A missing backup folder is an empty catalog.
        assert!(scan(&cfg.local).unwrap().is_empty());
        let weekly = Tier::Weekly.dir(base);
        let yearly = Tier::Yearly.dir(base);
        put(base, "20260101-000000", b"a", true);
        put(&weekly, "20260102-000000", b"bb", true);
        // Moved to yearly, its manifest not yet: still complete.
        put(&yearly, "20260103-000000", b"ccc", false);
        put_manifest(base, &file_of("20260103-000000"), b"ccc", false);
        // In two folders, the manifest beside only one: the other copy is not paired
        // with a manifest whose own folder has its archive.
        put(base, "20260104-000000", b"d", true);
        put(&weekly, "20260104-000000", b"d", false);
        // No manifest; an unreadable one.
        put(base, "20260105-000000", b"e", false);
        put(base, "20260106-000000", b"f", false);
        std::fs::write(
            base.join(Manifest::file_name_for(&file_of("20260106-000000"))),
            "{",
        )
        .unwrap();
        // Not ours, or not a file.
        std::fs::write(base.join("notes.txt"), "x").unwrap();
        std::fs::write(
            base.join(format!("{}.partial", file_of("20260107-000000"))),
            "x",
        )
        .unwrap();
        std::fs::create_dir(base.join(file_of("20260108-000000"))).unwrap();

        let all = scan(&cfg.local).unwrap();
        // id, tier, manifest's size, where the manifest was found when elsewhere, problem.
        type Row = (String, Tier, Option<u64>, Option<PathBuf>, bool);
        let got: Vec<Row> = all
            .iter()
            .map(|a| {
                (
                    a.name.id.clone(),
                    a.tier,
                    a.manifest.as_ref().map(|m| m.size),
                    a.manifest_elsewhere.clone(),
                    a.problem.is_some(),
                )
            })
            .collect();
        let m3 = base.join(Manifest::file_name_for(&file_of("20260103-000000")));
        assert_eq!(
            got,
            vec![
                ("20260101-000000".into(), Tier::Top, Some(1), None, false),
                ("20260102-000000".into(), Tier::Weekly, Some(2), None, false),
                (
                    "20260103-000000".into(),
                    Tier::Yearly,
                    Some(3),
                    Some(m3.clone()),
                    false
                ),
                ("20260104-000000".into(), Tier::Top, Some(1), None, false),
                ("20260104-000000".into(), Tier::Weekly, None, None, false),
                ("20260105-000000".into(), Tier::Top, None, None, false),
                ("20260106-000000".into(), Tier::Top, None, None, true),
            ]
        );
        assert_eq!(all[0].path, base.join(file_of("20260101-000000")));
        assert_eq!(
            all[0].manifest_path(),
            base.join(Manifest::file_name_for(&file_of("20260101-000000")))
        );
        assert_eq!(all[2].manifest_path(), m3);
        let found = find_complete(&all, "20260104-000000").map(|a| (a.name.id.as_str(), a.tier));
        assert_eq!(found, Some(("20260104-000000", Tier::Top)));
        assert!(find_complete(&all, "20260105-000000").is_none());
        assert!(find_complete(&all, "20260109-000000").is_none());
        let hint = adoption_hint(&all).unwrap();
        assert!(
            hint.starts_with("3 archive(s) without a manifest"),
            "{hint}"
        );
        assert_eq!(adoption_hint(&all[..1]), None);
        // A backup folder that cannot be read is an error, not an empty catalog.
        let mut file_not_dir = cfg.local.clone();
        file_not_dir.dir = base.join("notes.txt");
        assert!(scan(&file_not_dir).is_err());
    }

    #[test]
    fn filing_moves_the_archive_then_its_manifest_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg_at(&tmp.path().join("backups"));
        let base = cfg.local.dir.clone();
        put(&base, "20260101-000000", b"a", true);
        let first = scan(&cfg.local).unwrap();
        let a = &first[0];
        let to = move_to_tier(&cfg.local, a, Tier::Monthly).unwrap();
        let monthly = Tier::Monthly.dir(&base);
        let file = file_of("20260101-000000");
        assert_eq!(to, monthly.join(&file));
        assert!(to.exists() && monthly.join(Manifest::file_name_for(&file)).exists());
        assert!(!base.join(&file).exists());
        assert!(!base.join(Manifest::file_name_for(&file)).exists());

        // Repair: the archive is in place, its manifest elsewhere: only the manifest moves.
        put(&Tier::Yearly.dir(&base), "20260102-000000", b"b", false);
        put_manifest(&base, &file_of("20260102-000000"), b"b", false);
        let all = scan(&cfg.local).unwrap();
        let b = all.iter().find(|a| a.name.id == "20260102-000000").unwrap();
        let to = move_to_tier(&cfg.local, b, Tier::Yearly).unwrap();
        assert_eq!(to, Tier::Yearly.dir(&base).join(file_of("20260102-000000")));
        let all = scan(&cfg.local).unwrap();
        let b = all.iter().find(|a| a.name.id == "20260102-000000").unwrap();
        assert_eq!((b.tier, b.manifest_elsewhere.clone()), (Tier::Yearly, None));
        assert!(b.manifest.is_some());
        // Already filed there, manifest beside it: nothing to do, and no error.
        let to = move_to_tier(&cfg.local, b, Tier::Yearly).unwrap();
        assert_eq!(to, Tier::Yearly.dir(&base).join(file_of("20260102-000000")));
        assert!(to.exists());

        // A file of that name already in the target folder: refused, nothing moved.
        put(&base, "20260103-000000", b"c", true);
        put(&Tier::Weekly.dir(&base), "20260103-000000", b"other", false);
        let all = scan(&cfg.local).unwrap();
        let c = all
            .iter()
            .find(|a| a.name.id == "20260103-000000" && a.tier == Tier::Top)
            .unwrap();
        let e = move_to_tier(&cfg.local, c, Tier::Weekly).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(
            std::fs::read(base.join(file_of("20260103-000000"))).unwrap(),
            b"c"
        );
        // The manifest's new place taken: refused, the manifest stays.
        put(&base, "20260104-000000", b"d", true);
        put_manifest(
            &Tier::Weekly.dir(&base),
            &file_of("20260104-000000"),
            b"x",
            false,
        );
        let all = scan(&cfg.local).unwrap();
        let d = all
            .iter()
            .find(|a| a.name.id == "20260104-000000" && a.tier == Tier::Top)
            .unwrap();
        let e = move_to_tier(&cfg.local, d, Tier::Weekly).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert!(base
            .join(Manifest::file_name_for(&file_of("20260104-000000")))
            .exists());
    }

    #[test]
    fn the_local_copy_is_used_only_when_intact() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg_at(&tmp.path().join("backups"));
        let base = cfg.local.dir.clone();
        let good = put(&base, "20260101-000000", b"archive bytes", true);
        // Same length, other bytes; and another length.
        put(&base, "20260102-000000", b"archive bytes", true);
        std::fs::write(base.join(file_of("20260102-000000")), b"archive bytez").unwrap();
        put(&base, "20260103-000000", b"archive bytes", true);
        std::fs::write(base.join(file_of("20260103-000000")), b"archive").unwrap();
        let mut out = Vec::new();
        let got = local_intact(&cfg, "20260101-000000", false, &mut out).unwrap();
        assert_eq!(got, Some(good.clone()));
        assert!(String::from_utf8_lossy(&out).starts_with("using the local copy"));
        for (what, remote) in [
            ("latest", false),
            ("20260101-000000", true),
            ("yesterday", false),
            ("20260109-000000", false),
        ] {
            assert_eq!(
                local_intact(&cfg, what, remote, &mut out).unwrap(),
                None,
                "{what}"
            );
        }
        for id in ["20260102-000000", "20260103-000000"] {
            let mut out = Vec::new();
            assert_eq!(
                local_intact(&cfg, id, false, &mut out).unwrap(),
                None,
                "{id}"
            );
            assert!(
                String::from_utf8_lossy(&out).contains("does not match its manifest"),
                "{id}"
            );
        }
    }

    #[test]
    fn the_next_archive_needs_the_recent_median_plus_a_tenth() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg_at(&tmp.path().join("backups"));
        let base = cfg.local.dir.clone();
        assert_eq!(next_archive_estimate(&cfg), None);
        put(&base, "20260101-000000", &[1; 100], true);
        put(&base, "20260102-000000", &[1; 300], true);
        put(&base, "20260103-000000", &[1; 200], true);
        // A safety backup and an incomplete archive do not count.
        let safety = file_of("20260104-000000");
        std::fs::write(base.join(&safety), [1; 5000]).unwrap();
        put_manifest(&base, &safety, &[1; 5000], true);
        put(&base, "20260105-000000", &[1; 9000], false);
        assert_eq!(next_archive_estimate(&cfg), Some(220));
        let all = scan(&cfg.local).unwrap();
        assert!(all[3].is_safety() && !all[0].is_safety() && !all[4].is_safety());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [7]), Some(7));
        assert_eq!(median(&mut [9, 1, 5]), Some(5));
        assert_eq!(median(&mut [10, 2, 8, 4]), Some(6));
        assert_eq!(median(&mut [1, 2]), Some(1));
    }

    #[test]
    fn the_top_folder_inside_an_archive_is_its_name_without_extension() {
        assert_eq!(
            top_folder(P, "pronto-app-backup-20260201-170521.tar.zst.age"),
            "pronto-app-backup-20260201-170521"
        );
        assert_eq!(top_folder(P, "other-1.tar.gz"), "other-1");
        assert_eq!(pins_file_name("p"), "p.pins.json");
    }
}
