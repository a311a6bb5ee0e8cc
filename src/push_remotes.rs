//! Pushing (`push`, `hook`): replicate local archives to every remote (or one), then prune each remote
//! whose uploads all succeeded (its `prune = false` or `--no-prune` turns that off).

use std::io::Write;

use anyhow::Result;
use futures::StreamExt;

use crate::catalog;
use crate::config::Config;
use crate::error::Exit;
use crate::fsutil::human_bytes;
use crate::plan;
use crate::remotes;
use crate::replicate::{self, RemoteHandle};

/// How many remotes one push works on at once.
pub const REMOTE_CONCURRENCY: usize = 4;

/// One remote's share of the output: whole lines only, so that remotes pushed at
/// once interleave by line and never mid-line.
struct LineOut<'a, 'w> {
    shared: &'a std::cell::RefCell<&'w mut dyn Write>,
    buf: Vec<u8>,
}

impl Write for LineOut<'_, '_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if let Some(end) = self.buf.iter().rposition(|&b| b == b'\n') {
            let mut out = self.shared.borrow_mut();
            out.write_all(&self.buf[..=end])?;
            self.buf.drain(..=end);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let mut out = self.shared.borrow_mut();
        out.write_all(&self.buf)?;
        self.buf.clear();
        out.flush()
    }
}

/// What happened on one remote.
#[derive(Debug, Default, Clone)]
pub struct RemoteReport {
    pub name: String,
    pub uploaded: Vec<String>,
    /// Archives the remote holds already (complete, with their manifest).
    pub skipped: usize,
    /// Archives not sent because this remote's retention would delete them at once.
    pub not_kept: usize,
    pub bytes_sent: u64,
    /// Whether the remote was pruned after its uploads (with `--dry-run`: planned).
    pub pruned: bool,
    /// Archive files the prune deleted (would delete, with `--dry-run`).
    pub pruned_files: Vec<String>,
    /// Archives that were not uploaded, each `FILE: why` (a local archive that no longer
    /// matches its manifest, an unreadable manifest, an upload that failed): reported by
    /// name and skipped, the others still go. The run then exits 3.
    pub failed: Vec<String>,
    pub error: Option<String>,
}

/// Push; returns the exit code (0 ok, 3 some remotes failed, 1 all failed).
/// `prune`: prune each remote (whose `prune` key is not false) after its uploads.
pub async fn run(
    cfg: &Config,
    only: Option<&str>,
    dry_run: bool,
    prune: bool,
    out: &mut dyn Write,
) -> Result<Exit> {
    let reports = run_with(cfg, only, dry_run, prune, out).await?;
    Ok(exit(&reports))
}

/// Ok when every remote succeeded, an error when all failed, partial when some did or
/// some archives were skipped ([`RemoteReport::failed`]).
pub fn exit(reports: &[RemoteReport]) -> Exit {
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    let skipped_some = reports.iter().any(|r| !r.failed.is_empty());
    match Exit::for_locations(failed, reports.len()) {
        Exit::Ok if skipped_some => Exit::Partial,
        code => code,
    }
}

/// Push and return what happened on each remote (`hook` builds its report from these).
/// Remotes are pruned after their uploads, as configured (their `prune` key).
pub async fn run_reports(
    cfg: &Config,
    only: Option<&str>,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<Vec<RemoteReport>> {
    run_with(cfg, only, dry_run, true, out).await
}

/// [`run_reports`], with `prune = false` for `--no-prune`.
pub async fn run_with(
    cfg: &Config,
    only: Option<&str>,
    dry_run: bool,
    prune: bool,
    out: &mut dyn Write,
) -> Result<Vec<RemoteReport>> {
    let selected = remotes::selected(cfg, only)?;
    if selected.is_empty() {
        return Err(crate::error::usage(format!(
            "{}: no [[remotes]] configured: nowhere to push",
            cfg.file.display()
        )));
    }
    // Uploads and the prunes after them under the one local lock (a dry run changes
    // nothing and takes none): two pushes, or a push and a prune, never overlap.
    let _lock = if dry_run {
        None
    } else {
        Some(crate::lock::acquire(
            &cfg.local.dir,
            "push",
            crate::lock::DEFAULT_WAIT,
        )?)
    };
    // An archive whose manifest write was killed gets it back first (reported).
    if !dry_run {
        for line in crate::repair::repair_orphans(cfg) {
            writeln!(out, "{line}")?;
        }
    }
    // Safety backups (taken before a restore) stay local: not scheduled backups.
    let local: Vec<catalog::LocalArchive> = catalog::scan(&cfg.local)?
        .into_iter()
        .filter(|a| !a.is_safety())
        .collect();
    // Archives whose manifest cannot be read: named, skipped, and the run exits 3.
    let unreadable: Vec<String> = local
        .iter()
        .filter_map(|a| {
            a.problem
                .as_ref()
                .map(|p| format!("{}: {p}; not pushed", a.name.file))
        })
        .collect();
    for u in &unreadable {
        tracing::error!("local archive {u}");
    }
    let incomplete = local
        .iter()
        .filter(|a| a.manifest.is_none() && a.problem.is_none())
        .count();
    if incomplete > 0 {
        tracing::warn!(
            "{incomplete} local archive(s) have no manifest (interrupted or foreign) and are not pushed"
        );
    }
    // Read once; an unreadable pins file fails only the prunes, never the uploads.
    let local_pins = crate::pins::read_local(&cfg.local).map_err(|e| format!("{e:#}"));
    // Every remote at once (at most REMOTE_CONCURRENCY), each with its own part
    // concurrency: a slow or failing remote never holds up the others. Each remote's
    // progress lines go to `out` whole, so they interleave but never mix.
    let cell: std::cell::RefCell<&mut dyn Write> = std::cell::RefCell::new(&mut *out);
    let shared = &cell;
    let local = &local;
    let local_pins = &local_pins;
    let unreadable = &unreadable;
    let jobs = selected
        .into_iter()
        .enumerate()
        .map(|(i, remote)| async move {
            let mut rout = LineOut {
                shared,
                buf: Vec::new(),
            };
            let mut rep = RemoteReport {
                name: remote.name.clone(),
                failed: unreadable.clone(),
                ..Default::default()
            };
            let res = async {
                let r = remotes::open(cfg, remote)?;
                // Before anything is written: is this still the remote we pushed to?
                crate::marker::ensure(cfg, remote, &r, remote.init_marker, dry_run, &mut rout)
                    .await?;
                // A remote that push prunes keeps what the policy keeps: plan by it.
                let pins = remote.prune.then_some(local_pins);
                let uploads = push_one(cfg, &r, local, pins, dry_run, &mut rep, &mut rout).await?;
                let uploads_failed = rep.failed.len() > unreadable.len();
                if prune && remote.prune && uploads_failed {
                    writeln!(
                        rout,
                        "{}: not pruned: some uploads failed (see above)",
                        remote.name
                    )?;
                } else if prune && remote.prune {
                    // Every upload of this run to this remote succeeded: prune it.
                    let local_pins = local_pins
                        .as_ref()
                        .map_err(|e| anyhow::anyhow!("not pruned: {e}"))?;
                    prune_after_push(cfg, &r, &uploads, local_pins, dry_run, &mut rep, &mut rout)
                        .await?;
                }
                anyhow::Ok(())
            }
            .await;
            let _ = rout.flush();
            if let Err(e) = res {
                let msg = format!("{e:#}{}", hint(&e, &remote.name));
                tracing::error!("remote {}: {msg}", remote.name);
                rep.error = Some(msg);
            }
            (i, rep)
        });
    let mut indexed: Vec<(usize, RemoteReport)> = futures::stream::iter(jobs)
        .buffer_unordered(REMOTE_CONCURRENCY)
        .collect()
        .await;
    indexed.sort_by_key(|(i, _)| *i);
    let reports: Vec<RemoteReport> = indexed.into_iter().map(|(_, r)| r).collect();

    writeln!(out)?;
    for r in &reports {
        match &r.error {
            None => writeln!(out, "{}", r.summary(dry_run))?,
            Some(e) => writeln!(out, "{}: FAILED: {e}", r.name)?,
        }
        for f in &r.failed {
            writeln!(out, "{}: FAILED: {f}", r.name)?;
        }
    }
    Ok(reports)
}

/// What a user can do about a remote's failure, when the error says: credentials or
/// permissions (never retried), or a server that stayed unreachable for all the retries.
fn hint(e: &anyhow::Error, remote: &str) -> String {
    let backend = e
        .chain()
        .find_map(|c| c.downcast_ref::<pronto_backends::BackendError>());
    match backend {
        Some(pronto_backends::BackendError::Auth(_)) => format!(
            " — check the credentials of remote `{remote}` and what they may do there \
             (list, read, write and delete objects); `pronto-offsite doctor` tests them"
        ),
        Some(pronto_backends::BackendError::Transient { .. }) => format!(
            " — remote `{remote}` kept failing until its retries were spent; check that it is \
             up and reachable (`pronto-offsite doctor`); the next push resumes where this one \
             stopped"
        ),
        _ => String::new(),
    }
}

/// Prune a remote after its uploads: over a fresh listing, or with `--dry-run` over the
/// listing plus the planned uploads (what the remote would then hold).
async fn prune_after_push(
    cfg: &Config,
    r: &RemoteHandle,
    uploads: &[plan::Upload],
    local_pins: &std::collections::BTreeSet<String>,
    dry_run: bool,
    rep: &mut RemoteReport,
    out: &mut dyn Write,
) -> Result<()> {
    let state = if dry_run {
        crate::prune_locations::list_state(cfg, r)
            .await?
            .with_uploads(uploads)
    } else if r.backend.supports_put_if_absent() {
        // A real prune takes the lease and lists the remote again under it
        // (`prune_remote`): a listing here would be thrown away. (Were it ever used, an
        // empty state plans no deletion.)
        plan::RemoteState::default()
    } else {
        crate::prune_locations::list_state(cfg, r).await?
    };
    let remote_pins = crate::pins::read_remote(r, &cfg.local.prefix).await?;
    let pins = local_pins.union(&remote_pins).cloned().collect();
    let prep = crate::prune_locations::prune_remote(
        cfg,
        r,
        &state,
        &pins,
        chrono::Utc::now(),
        false,
        dry_run,
        out,
    )
    .await;
    rep.pruned = true;
    rep.pruned_files = prep.deleted;
    match prep.error {
        Some(e) => Err(anyhow::anyhow!("prune: {e}")),
        None => Ok(()),
    }
}

/// Find an archive again after a backup or prune filed it under another tier while it
/// was being uploaded (same id and sha256, new path).
fn relocate(cfg: &Config, up: &plan::Upload) -> Result<Option<plan::Upload>> {
    let now = catalog::scan(&cfg.local)?;
    Ok(now
        .into_iter()
        .find(|a| {
            a.name.id == up.archive.name.id
                && a.path != up.archive.path
                && a.manifest
                    .as_ref()
                    .is_some_and(|m| m.sha256 == up.manifest.sha256)
        })
        .map(|a| plan::Upload {
            archive: a,
            ..up.clone()
        }))
}

/// Memory of remote pruning: leave out of `uploads` the archives this remote's own
/// prune would delete as soon as they arrived ([`plan::uploads_kept_by_policy`], over
/// the local and the remote's pins): otherwise every push re-sends the old archives the
/// last prune removed. Each is said, and recorded as pruned off-site (so the local
/// prune does not keep it forever as "on no remote"). When the pins cannot be read,
/// nothing is left out.
async fn without_policy_drops(
    cfg: &Config,
    r: &RemoteHandle,
    uploads: Vec<plan::Upload>,
    state: &plan::RemoteState,
    local_pins: &std::result::Result<std::collections::BTreeSet<String>, String>,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<Vec<plan::Upload>> {
    if uploads.is_empty() {
        return Ok(uploads);
    }
    let Ok(local_pins) = local_pins else {
        return Ok(uploads);
    };
    let remote_pins = match crate::pins::read_remote(r, &cfg.local.prefix).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                "{}: pins not readable ({e:#}): uploading every archive it lacks",
                r.name
            );
            return Ok(uploads);
        }
    };
    let pins = local_pins.union(&remote_pins).cloned().collect();
    let policy = cfg.policy_for(&r.name);
    let rules = plan::PruneRules {
        policy,
        pins: &pins,
        now: chrono::Utc::now(),
        max_delete_fraction: cfg.max_delete_fraction,
        force: false,
        require_on_remote: false,
    };
    let (keep, dropped) = plan::uploads_kept_by_policy(uploads, state, &rules);
    for d in &dropped {
        writeln!(
            out,
            "{}: not uploading {}: this remote's retention ({}) would delete it at once",
            r.name, d.archive.name.file, policy
        )?;
        if !dry_run {
            crate::prune_locations::record_offsite_pruned(&cfg.local, &d.archive.name.file);
        }
    }
    Ok(keep)
}

impl RemoteReport {
    /// The line that says what a push did on this remote (it did not fail as a whole).
    pub fn summary(&self, dry_run: bool) -> String {
        let mut s = format!(
            "{}: {} {} ({}), {} already there",
            self.name,
            if dry_run { "would upload" } else { "uploaded" },
            self.uploaded.len(),
            human_bytes(self.bytes_sent),
            self.skipped,
        );
        if self.not_kept > 0 {
            s += &format!(
                ", {} not sent (this remote's retention would delete them at once)",
                self.not_kept
            );
        }
        match (self.pruned, dry_run) {
            (false, _) => {}
            (true, true) => s += &format!("; prune would delete {}", self.pruned_files.len()),
            (true, false) => s += &format!("; pruned {}", self.pruned_files.len()),
        }
        s
    }
}

/// Upload what the remote lacks; returns the uploads (planned ones with `--dry-run`).
async fn push_one(
    cfg: &Config,
    r: &RemoteHandle,
    local: &[catalog::LocalArchive],
    pruned_with: Option<&std::result::Result<std::collections::BTreeSet<String>, String>>,
    dry_run: bool,
    rep: &mut RemoteReport,
    out: &mut dyn Write,
) -> Result<Vec<plan::Upload>> {
    let state = remotes::read_state(r, &cfg.local.prefix).await?;
    let uploads = plan::uploads(local, &state);
    rep.skipped = local.iter().filter(|a| a.manifest.is_some()).count() - uploads.len();
    let planned = uploads.len();
    let uploads = match pruned_with {
        Some(local_pins) => {
            without_policy_drops(cfg, r, uploads, &state, local_pins, dry_run, out).await?
        }
        None => uploads,
    };
    rep.not_kept = planned - uploads.len();
    if uploads.is_empty() {
        writeln!(out, "{}: up to date ({})", r.name, r.backend.describe())?;
    }
    let mut attempted_failed = 0usize;
    for up in &uploads {
        let size = up.manifest.size;
        writeln!(
            out,
            "{}: {} {} ({}): {}",
            r.name,
            if dry_run { "would upload" } else { "upload" },
            up.archive.name.file,
            human_bytes(size),
            up.reason
        )?;
        out.flush()?;
        if dry_run {
            rep.uploaded.push(up.archive.name.file.clone());
            rep.bytes_sent += size;
            continue;
        }
        let started = std::time::Instant::now();
        let bar = crate::progress::Progress::bytes(
            format!("{}: {}", r.name, up.archive.name.id),
            Some(size),
        );
        let res = match replicate::upload_archive_with(r, &cfg.local.dir, up, Some(&bar)).await {
            // Moved to another tier meanwhile: upload it from where it is now (a multipart
            // upload resumes from its journal, which is keyed by name, not path).
            Err(e) if !up.archive.path.exists() => match relocate(cfg, up)? {
                Some(moved) => replicate::upload_archive(r, &cfg.local.dir, &moved).await,
                None => Err(e),
            },
            other => other,
        };
        bar.finish();
        let stats = match res {
            Ok(s) => s,
            // Credentials refused: every other upload would be refused too.
            Err(e) if is_auth(&e) => return Err(e),
            // One archive failed (say a local archive that no longer matches its
            // manifest): named, skipped; the others still go.
            Err(e) => {
                tracing::error!("{}: {} not uploaded: {e:#}", r.name, up.archive.name.file);
                writeln!(out, "{}: FAILED: {}: {e:#}", r.name, up.archive.name.file)?;
                rep.failed.push(format!("{}: {e:#}", up.archive.name.file));
                attempted_failed += 1;
                continue;
            }
        };
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        tracing::info!(
            "{}: {} uploaded and verified: {} sent in {:.1}s ({}/s){}",
            r.name,
            up.archive.name.file,
            human_bytes(stats.bytes_sent),
            secs,
            human_bytes((stats.bytes_sent as f64 / secs) as u64),
            if stats.parts_resumed > 0 {
                format!(", {} parts resumed", stats.parts_resumed)
            } else {
                String::new()
            }
        );
        rep.uploaded.push(up.archive.name.file.clone());
        rep.bytes_sent += stats.bytes_sent;
    }
    if attempted_failed > 0 && attempted_failed == uploads.len() {
        // Nothing reached this remote: the remote failed, not just some archives.
        let these = rep.failed.split_off(rep.failed.len() - attempted_failed);
        return Err(anyhow::anyhow!(
            "{attempted_failed} upload(s) failed: {}",
            these.join("; ")
        ));
    }
    Ok(uploads)
}

/// Whether the remote refused the credentials, or we refused its host key (never worth
/// trying the next archive).
fn is_auth(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<pronto_backends::BackendError>(),
            Some(
                pronto_backends::BackendError::Auth(_) | pronto_backends::BackendError::HostKey(_)
            )
        )
    })
}
