//! A backup into the local folder (`backup`, `hook`, and the safety backup before a
//! restore): archive the configured sources into the local backup folder.
//!
//! One streaming pass into `NAME.tar.gz.partial` (`.tar.zst` with `[local] compression =
//! "zstd"`; 0600), fsync, rename to the final
//! name, then the manifest beside it (written last: it marks the archive complete).
//! With `[encryption] recipients`, the same pass encrypts with age: `NAME.tar.gz.age`.

use crate::error::Exit;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{SubsecRound, Utc};

use crate::archive::{write_archive_tapped, ArchiveInput, WriteOptions, WriteTap};
use crate::catalog::{self, PARTIAL};
use crate::config::Config;
use crate::fsutil::{self, hostname};
use crate::manifest::{Manifest, SourceSummary, FORMAT};

/// Run a backup; returns the manifest of the new archive and its path.
pub fn run(cfg: &Config) -> Result<(Manifest, PathBuf)> {
    run_with(cfg, &BackupOptions::default())
}

/// What [`run_with`] backs up.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Only these sources (by name); `None`: every configured source.
    pub only_sources: Option<Vec<String>>,
    /// A safety backup before a restore: a configured PostgreSQL database that no longer
    /// exists is left out (with a warning) instead of failing the backup.
    pub safety: bool,
    /// `backup --output`: the archive stays where it was written, never filed into tiers.
    pub one_off: bool,
}

/// Run a backup of some sources; returns the manifest of the new archive and its path.
///
/// PostgreSQL and Redis sources are dumped first into `<dir>/.spool-<id>/` (0700),
/// which is removed afterwards whatever happens; a failing dump leaves no archive.
pub fn run_with(cfg: &Config, bopts: &BackupOptions) -> Result<(Manifest, PathBuf)> {
    run_watched(cfg, bopts, &Watch::default())
}

/// The archive a backup is about to write, told to [`Watch::on_start`].
#[derive(Debug, Clone)]
pub struct Started {
    /// The archive's file name (`PREFIX-YYYYMMDD-HHMMSS.tar.gz[.age]`): its key on a remote.
    pub file: String,
    /// Where it is being written (`<dir>/<file>.partial`, 0600) until it is complete.
    pub partial: PathBuf,
}

/// How another part of the program follows a backup while it runs (`backup --push`
/// uploads the archive as it grows).
#[derive(Default)]
pub struct Watch<'a> {
    /// Called once, just before the archive's `.partial` file is created.
    pub on_start: Option<&'a (dyn Fn(&Started) + Sync)>,
    /// Told how many bytes of the `.partial` file are written, as it grows.
    pub tap: Option<WriteTap>,
}

/// [`run_with`], telling `watch` what it writes. The result is told by the return value:
/// `Ok` only once the archive is complete, fsynced, renamed and its manifest written.
pub fn run_watched(
    cfg: &Config,
    bopts: &BackupOptions,
    watch: &Watch<'_>,
) -> Result<(Manifest, PathBuf)> {
    if cfg.sources.is_empty() {
        return Err(crate::error::usage(format!(
            "{}: no [[sources]] configured: nothing to back up",
            cfg.file.display()
        )));
    }
    let sources: Vec<&crate::config::Source> = cfg
        .sources
        .iter()
        .filter(|s| {
            bopts
                .only_sources
                .as_ref()
                .is_none_or(|o| o.contains(&s.name))
        })
        .collect();
    if sources.is_empty() {
        return Err(crate::error::usage(
            "none of the configured sources was selected: nothing to back up",
        ));
    }
    // Encryption: checked before anything is dumped or written.
    let recipients = cfg.encryption.recipients_for_backup()?;
    let codec = cfg.local.compression;
    // `.tar.gz` / `.tar.zst`, then `.age` when encrypted (catalog::EXTENSIONS lists all four).
    let ext = format!(
        "{}{}",
        codec.extension(),
        if recipients.is_some() { ".age" } else { "" }
    );
    let dir = &cfg.local.dir;
    let _lock = crate::lock::acquire(dir, "backup", crate::lock::DEFAULT_WAIT)?;
    remove_stale_partials(cfg)?;
    crate::repair::repair_orphans(cfg);

    // A name no other archive has: two backups in the same second wait for the next one.
    let (created, file) = loop {
        let now = Utc::now().trunc_subsecs(0);
        let file = catalog::file_name(&cfg.local.prefix, now, &ext);
        let taken = catalog::scan(&cfg.local)?
            .iter()
            .any(|a| a.name.id == catalog::id_for(now));
        if !taken {
            break (now, file);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let name = catalog::parse_name(&cfg.local.prefix, &file).expect("we made this name");
    let final_path = dir.join(&file);
    let partial = dir.join(format!("{file}{PARTIAL}"));

    // PostgreSQL and Redis: dump into the spool first (removed when `services` drops).
    let services = crate::source::dump_services(dir, &name.id, &sources, bopts.safety)
        .map_err(|e| e.context(format!("backup failed; no archive was written ({file})")))?;
    let inputs: Vec<ArchiveInput> = sources
        .iter()
        .filter_map(|s| {
            s.path
                .clone()
                .or_else(|| services.folder(&s.name))
                .map(|p| ArchiveInput {
                    name: s.name.clone(),
                    section: s.kind.section(),
                    path: p,
                    allow_skip: s.skip_unreadable,
                    // A database dump that changes while read is torn: always fail.
                    strict: s.strict || s.path.is_none(),
                })
        })
        .collect();
    let host = hostname();
    let opts = WriteOptions {
        top: name.stem().to_string(),
        codec,
        level: cfg.local.level,
        threads: cfg.local.threads,
        exclude: excludes(&sources)?,
    };
    let info = |sources: &[SourceSummary]| {
        let sources = services.patch_origins(sources.to_vec());
        let mut text = backup_info(&name.id, created, &host, &sources);
        services.describe(&mut text);
        text
    };
    let progress = crate::progress::Progress::bytes(format!("backup {}", name.id), None);
    if let Some(f) = watch.on_start {
        f(&Started {
            file: file.clone(),
            partial: partial.clone(),
        });
    }
    let written = match write_archive_tapped(
        &partial,
        &opts,
        recipients.as_ref(),
        &inputs,
        &info,
        Some(&progress),
        watch.tap.clone(),
    ) {
        Ok(w) => {
            progress.finish();
            w
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context(format!("backup failed; no archive was written ({})", file)));
        }
    };
    let written_sources = services.patch_origins(written.sources);
    warn_skipped_and_changed(&written_sources);
    let (postgres, redis) = services.finish();

    let mut manifest = Manifest {
        format: FORMAT,
        id: name.id.clone(),
        file: file.clone(),
        created,
        size: written.size,
        sha256: hex::encode(written.sha256),
        compression: codec.name().into(),
        encryption: match &recipients {
            Some(_) => crate::crypto::SCHEME_AGE.into(),
            None => crate::crypto::SCHEME_NONE.into(),
        },
        recipient_fingerprints: recipients
            .as_ref()
            .map(|r| r.fingerprints())
            .unwrap_or_default(),
        host,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        sources: written_sources,
        postgres,
        redis,
        safety: bopts.safety,
        adopted: false,
        sealed: None,
    };
    // Encrypted: what the archive holds goes to remotes sealed to the same recipients.
    if let Some(r) = &recipients {
        manifest.seal(r)?;
    }
    std::fs::rename(&partial, &final_path)
        .with_context(|| format!("renaming {} to {}", partial.display(), final_path.display()))?;
    fsutil::write_atomic(
        &dir.join(Manifest::file_name_for(&file)),
        &manifest.to_json(),
    )?;
    // Still under the lock: file every keeper (the new archive too) under its tier. The
    // archive is complete either way, so a failure here is a warning, not a failed backup.
    if bopts.one_off {
        return Ok((manifest, final_path));
    }
    let final_path = match crate::tiers::file_after_backup(cfg, &manifest.id) {
        Ok(Some(moved)) => moved,
        Ok(None) => final_path,
        Err(e) => {
            tracing::warn!("filing archives into tiers: {e:#}");
            final_path
        }
    };
    warn_future(cfg);
    Ok((manifest, final_path))
}

/// Flag every local archive named in the future (a clock was wrong): the new archive
/// is then not the newest by name, and prune never counts back from those.
fn warn_future(cfg: &Config) {
    let now = Utc::now();
    if let Ok(all) = catalog::scan(&cfg.local) {
        for a in all
            .iter()
            .filter(|a| catalog::named_in_future(a.name.time, now))
        {
            tracing::warn!("{}", catalog::future_warning(&a.name.file, a.name.time));
        }
    }
}

/// Every skipped and every changed file on stderr too (not only in backup_info.txt and
/// the manifest), so that a person or a cron mail sees them.
fn warn_skipped_and_changed(sources: &[SourceSummary]) {
    for src in sources {
        for s in &src.skipped {
            tracing::warn!("source '{}': skipped {s}", src.name);
        }
        for c in &src.changed {
            tracing::warn!("source '{}': changed while read: {c}", src.name);
        }
    }
}

/// Remove `.partial` files of ours left by a killed run. Called under the folder lock.
fn remove_stale_partials(cfg: &Config) -> Result<()> {
    let rd = match std::fs::read_dir(&cfg.local.dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context(format!("reading {}", cfg.local.dir.display())),
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(crate::source::SPOOL_PREFIX) {
            // Dumps of a killed run (spools are made and removed under this lock).
            tracing::info!("removing {name}, left by an interrupted run");
            let _ = std::fs::remove_dir_all(entry.path());
            continue;
        }
        if let Some(base) = name.strip_suffix(PARTIAL) {
            if catalog::parse_name(&cfg.local.prefix, base).is_some() {
                tracing::info!("removing {name}, left by an interrupted run");
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

/// The text of `backup_info.txt`: when, host, tool version, each source. No secrets.
pub fn backup_info(
    id: &str,
    created: chrono::DateTime<Utc>,
    host: &str,
    sources: &[SourceSummary],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Pronto backup {id}");
    let _ = writeln!(s, "created: {}", created.to_rfc3339());
    let _ = writeln!(s, "host: {host}");
    let _ = writeln!(s, "tool: pronto-offsite {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(s, "sources:");
    for src in sources {
        let _ = writeln!(
            s,
            "  {} ({}) from {}: {} files, {} folders, {} symlinks, {} ({} bytes) -> {}/",
            src.name,
            src.section.dir_name(),
            src.origin,
            src.files,
            src.dirs,
            src.symlinks,
            fsutil::human_bytes(src.bytes),
            src.bytes,
            src.archive_path
        );
        for skipped in &src.skipped {
            let _ = writeln!(s, "    skipped: {skipped}");
        }
        for changed in &src.changed {
            let _ = writeln!(s, "    changed: {changed}");
        }
    }
    s
}

/// The exclude filter of the selected folder sources (their `exclude` patterns, with any
/// `backup --exclude` already appended to each).
fn excludes(sources: &[&crate::config::Source]) -> Result<crate::exclude::Excludes> {
    let mut ex = crate::exclude::Excludes::default();
    for s in sources {
        if let Some(p) = &s.path {
            ex.add(&s.name, p, &s.exclude)?;
        }
    }
    Ok(ex)
}

/// `backup --output DIR`: a one-off archive (and its manifest) written into `DIR`, outside
/// the backup folder and its tiers, so retention, push, prune and `list` never see it.
/// `DIR` is created if missing; the backup folder itself (or a folder inside it) is
/// refused: an archive there would join the rotation.
pub fn run_to(cfg: &Config, dir: &std::path::Path) -> Result<(Manifest, PathBuf)> {
    let local = std::path::absolute(&cfg.local.dir)?;
    let out = std::path::absolute(dir)?;
    if out.starts_with(&local) {
        return Err(crate::error::usage(format!(
            "backup --output {}: that is inside the backup folder {}, where the archive would join retention and push; give a folder outside it, or run `backup` without --output",
            out.display(),
            local.display()
        )));
    }
    std::fs::create_dir_all(&out)
        .with_context(|| format!("backup --output: creating {}", out.display()))?;
    let mut one_off = cfg.clone();
    one_off.local.dir = out;
    run_with(
        &one_off,
        &BackupOptions {
            one_off: true,
            ..Default::default()
        },
    )
}

/// `backup --dry-run`: list what each folder source would put in the archive, one
/// `SIZE  PATH` line per regular file, then a total per source. Reads only; symlinks are
/// listed, never followed; database sources are dumped at backup time and only named.
pub fn dry_run(
    cfg: &Config,
    ex: &crate::exclude::Excludes,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    for s in &cfg.sources {
        let Some(root) = &s.path else {
            writeln!(out, "{}: a {:?} dump, made at backup time", s.name, s.kind)?;
            continue;
        };
        let (mut files, mut bytes, mut left_out) = (0u64, 0u64, 0u64);
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let mut names: Vec<_> = match std::fs::read_dir(&dir) {
                Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
                Err(e) => {
                    writeln!(out, "{}: cannot list {}: {e}", s.name, dir.display())?;
                    continue;
                }
            };
            names.sort();
            // This folder's files first, then its subfolders, all in name order.
            let mut subdirs = Vec::new();
            for p in names {
                let Ok(m) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if ex.skips(&s.name, root, &p, m.is_dir()) {
                    left_out += 1;
                    continue;
                }
                if m.is_dir() {
                    subdirs.push(p);
                } else {
                    if m.is_file() {
                        files += 1;
                        bytes += m.len();
                    }
                    writeln!(
                        out,
                        "{:>10}  {}",
                        crate::fsutil::human_bytes(m.len()),
                        p.display()
                    )?;
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        writeln!(
            out,
            "{}: {files} file(s), {} would be archived; {left_out} path(s) excluded{}",
            s.name,
            crate::fsutil::human_bytes(bytes),
            match ex.patterns(&s.name) {
                p if p.is_empty() => String::new(),
                p => format!(" by {}", p.join(", ")),
            }
        )?;
    }
    Ok(())
}

/// `backup --dry-run`: the filter of every folder source, then [`dry_run`]; exit 0.
pub fn dry_run_cmd(cfg: &Config, out: &mut dyn std::io::Write) -> Result<Exit> {
    let mut ex = crate::exclude::Excludes::default();
    for s in &cfg.sources {
        if let Some(p) = &s.path {
            ex.add(&s.name, p, &s.exclude)?;
        }
    }
    dry_run(cfg, &ex, out)?;
    Ok(Exit::Ok)
}
