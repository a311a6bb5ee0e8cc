//! Pruning (`prune`, `hook`, and each remote after its push): apply the retention
//! policy to each location over what that location
//! actually holds, delete what it forgets, and file the local keepers into tiers.
//!
//! The plan of each location is pure ([`crate::plan::plan_prune`]); this module lists,
//! prints and carries it out. Order of a run:
//!
//! 1. every remote in scope is listed and its pins object read — with `--local` too,
//!    because a local prune never deletes an archive that no remote holds complete
//!    (unless `--force`, or no remotes are configured). A remote whose listing or pins
//!    failed is skipped with an error and counts as holding nothing;
//! 2. the one local lock is taken ([`crate::lock`]; not with `--dry-run`) and held to
//!    the end, then the local pins are read (a pins file that cannot be read stops
//!    everything): a `pin` that finished while the remotes were listed is honoured, one
//!    issued later waits for the prune (a remote is pruned over a listing taken again
//!    under its lease, so nothing deleted relies on the listing of step 1 alone);
//! 3. each listed remote is pruned over its complete archives (manifest first, then the
//!    archive), keeping the union of the local pins and its own;
//! 4. the local folder is pruned, then keepers are filed by their
//!    strongest reason under `archive/{yearly,monthly,weekly}` or the top folder.
//!
//! # "On no remote" and remote prunes
//! A local archive counts as off-site when a remote holds an identical complete copy,
//! *or* when a prune of a remote (this one, or `push`'s) deleted it there by the policy:
//! such deletions are recorded as empty marker files `<dir>/.offsite-pruned/<archive
//! file>` (only while the local folder still holds that archive; removed when the local
//! copy goes). Without that record every archive the remote's prune removes first would
//! be "on no remote" forever and the local folder could never be pruned without
//! `--force`. An archive that never reached a remote (push failing for weeks), or whose
//! remote copy vanished some other way, has no marker and stays until `--force`.
//!
//! `--dry-run` prints the same plans and changes nothing. A location whose plan would
//! delete more than `[retention] max_delete_fraction` of its archives is refused (nothing
//! changes there) unless `--force`. Exit code: 0, 3 when some locations failed or were
//! refused and others succeeded, 1 when all failed.

use crate::error::Exit;
use std::collections::BTreeSet;
use std::io::Write;

use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{self, LocalArchive};
use crate::config::{Config, Remote};
use crate::fsutil;
use crate::manifest::Manifest;
use crate::pins;
use crate::plan::{self, Fate, PrunePlan, PruneRules, RemoteState};
use crate::remotes;
use crate::replicate::RemoteHandle;
use crate::retry::retry;
use crate::tiers::{file_keepers, find, split_safety};

/// Which locations a prune works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The local folder and every remote (the default).
    All,
    /// `--local`: the local folder only (remotes are still listed, read-only).
    Local,
    /// `--remote NAME`: that remote only.
    Remote(String),
}

/// Flags of `prune`.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub scope: Scope,
    pub dry_run: bool,
    pub force: bool,
}

/// What a prune did (or, with `--dry-run`, would do) at one location.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LocationReport {
    /// `local`, or the remote's name.
    pub location: String,
    /// Archive files deleted (would be, with `--dry-run`).
    pub deleted: Vec<String>,
    /// Archives kept (by the policy or a safety rail).
    pub kept: usize,
    /// Keepers filed under another tier (local only).
    pub moved: usize,
    /// Incomplete or duplicate archives, left alone.
    pub left_alone: usize,
    /// Archives named in the future (kept).
    pub future: usize,
    /// Why this location failed, was skipped or refused.
    pub error: Option<String>,
}

/// Ok when every location succeeded, partial when some did, an error when none did.
pub fn exit(reports: &[LocationReport]) -> Exit {
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    Exit::for_locations(failed, reports.len())
}

/// A remote as this run sees it.
struct RemoteView {
    name: String,
    loaded: std::result::Result<(RemoteHandle, RemoteState, BTreeSet<String>), String>,
}

/// Open and list a remote and read its pins: everything a prune needs to know first.
pub async fn load_remote(
    cfg: &Config,
    remote: &Remote,
) -> Result<(RemoteHandle, RemoteState, BTreeSet<String>)> {
    let r = remotes::open(cfg, remote)?;
    let state = list_state(cfg, &r).await?;
    let remote_pins = pins::read_remote(&r, &cfg.local.prefix).await?;
    Ok((r, state, remote_pins))
}

/// A remote's listing, read into its state. An error for a failed listing: never an
/// empty (or partial) one.
pub async fn list_state(cfg: &Config, r: &RemoteHandle) -> Result<RemoteState> {
    remotes::read_state(r, &cfg.local.prefix).await
}

/// Prune and return what happened at each location (remotes first, then local).
pub async fn run_reports(
    cfg: &Config,
    opts: &PruneOptions,
    out: &mut dyn Write,
) -> Result<Vec<LocationReport>> {
    let now = Utc::now();
    let selected: Vec<&Remote> = match &opts.scope {
        Scope::All | Scope::Local => cfg.remotes.iter().collect(),
        Scope::Remote(name) => remotes::selected(cfg, Some(name))?,
    };
    if opts.dry_run {
        writeln!(out, "dry run: nothing is changed")?;
    }

    let mut views = Vec::new();
    for remote in selected {
        let loaded = load_remote(cfg, remote).await.map_err(|e| format!("{e:#}"));
        if let Err(e) = &loaded {
            tracing::error!("remote {}: {e}", remote.name);
        }
        views.push(RemoteView {
            name: remote.name.clone(),
            loaded,
        });
    }

    // From here to the end under the one lock (not a dry run: that changes nothing),
    // and the pins are read under it: a `pin` that ran while the remotes were listed is
    // honoured, and one issued from now on waits for this prune to finish.
    let _lock = if opts.dry_run {
        None
    } else {
        Some(crate::lock::acquire(
            &cfg.local.dir,
            "prune",
            crate::lock::DEFAULT_WAIT,
        )?)
    };
    let local_pins = pins::read_local(&cfg.local)?;
    let mut pruned_offsite = read_offsite_pruned(&cfg.local)?;

    let mut reports = Vec::new();
    if opts.scope != Scope::Local {
        for v in &mut views {
            let rep = match &v.loaded {
                Err(e) => {
                    writeln!(out, "\nremote {}: not pruned: its listing failed", v.name)?;
                    LocationReport {
                        location: v.name.clone(),
                        error: Some(format!("not pruned: {e}")),
                        ..Default::default()
                    }
                }
                Ok((r, state, remote_pins)) => {
                    let all_pins: BTreeSet<String> =
                        local_pins.union(remote_pins).cloned().collect();
                    let rep =
                        prune_remote(cfg, r, state, &all_pins, now, opts.force, opts.dry_run, out)
                            .await;
                    // What this run deleted there is no longer a copy, but it was off-site
                    // and the policy removed it (recorded on disk too, unless a dry run).
                    let gone: Vec<String> = rep
                        .deleted
                        .iter()
                        .filter_map(|f| catalog::parse_name(&cfg.local.prefix, f).map(|n| n.id))
                        .collect();
                    pruned_offsite.extend(gone.iter().cloned());
                    let after = state.without(gone.iter().map(String::as_str));
                    v.loaded = Ok((r.clone(), after, remote_pins.clone()));
                    rep
                }
            };
            reports.push(rep);
        }
    }

    // With --remote NAME the local folder is not touched.
    if matches!(opts.scope, Scope::All | Scope::Local) {
        let mut all_pins = local_pins.clone();
        for v in &views {
            if let Ok((_, _, p)) = &v.loaded {
                all_pins.extend(p.iter().cloned());
            }
        }
        if !opts.force && !cfg.remotes.is_empty() {
            prove_unhashed_copies(
                cfg,
                &mut views,
                &pruned_offsite,
                &all_pins,
                now,
                opts.dry_run,
                out,
            )
            .await;
        }
        let listed: Vec<&RemoteState> = views
            .iter()
            .filter_map(|v| v.loaded.as_ref().ok().map(|(_, st, _)| st))
            .collect();
        let unlisted: Vec<&str> = views
            .iter()
            .filter(|v| v.loaded.is_err())
            .map(|v| v.name.as_str())
            .collect();
        reports.push(prune_local(
            cfg,
            &listed,
            &pruned_offsite,
            &unlisted,
            &all_pins,
            now,
            opts.force,
            opts.dry_run,
            out,
        ));
    }

    writeln!(out)?;
    for r in &reports {
        writeln!(out, "{}", summary(r, opts.dry_run))?;
    }
    out.flush()?;
    Ok(reports)
}

/// One line per location: what went, what stayed.
pub fn summary(r: &LocationReport, dry_run: bool) -> String {
    let mut s = format!(
        "{}: {} {}, kept {}",
        r.location,
        if dry_run { "would delete" } else { "deleted" },
        r.deleted.len(),
        r.kept
    );
    if r.moved > 0 {
        s.push_str(&format!(
            ", {} {} to another tier",
            if dry_run { "would move" } else { "moved" },
            r.moved
        ));
    }
    if r.future > 0 {
        s.push_str(&format!(", {} named in the future", r.future));
    }
    if r.left_alone > 0 {
        s.push_str(&format!(", left {} incomplete alone", r.left_alone));
    }
    if let Some(e) = &r.error {
        s = format!("{}: FAILED: {e}", r.location);
    }
    s
}

/// Print a location's plan: every archive, what happens to it and why.
fn print_plan(out: &mut dyn Write, header: &str, plan: &PrunePlan) -> std::io::Result<()> {
    writeln!(out, "\n{header}")?;
    if plan.entries.is_empty() {
        writeln!(out, "  (no archives)")?;
        return Ok(());
    }
    let width = plan
        .entries
        .iter()
        .map(|e| e.held.file.len())
        .max()
        .unwrap_or(0);
    for e in &plan.entries {
        let action = match e.fate {
            Fate::Keep | Fate::Spared(_) => "keep",
            Fate::Delete => "delete",
            Fate::LeftAlone(_) => "leave",
        };
        let mut why = e.reasons.join(", ");
        if let Some(t) = e.move_to {
            why.push_str(&format!(" -> {}", t.folder()));
        }
        let line = format!("  {action:<6}  {:<width$}  {why}", e.held.file);
        writeln!(out, "{}", line.trim_end())?;
    }
    if let Some(r) = &plan.refused {
        writeln!(out, "  {r}")?;
    }
    Ok(())
}

fn fill_counts(rep: &mut LocationReport, plan: &PrunePlan) {
    rep.kept = plan
        .entries
        .iter()
        .filter(|e| matches!(e.fate, Fate::Keep | Fate::Spared(_)))
        .count();
    rep.left_alone = plan
        .entries
        .iter()
        .filter(|e| matches!(e.fate, Fate::LeftAlone(_)))
        .count();
    rep.future = plan.future().count();
}

fn warn_future(location: &str, plan: &PrunePlan) {
    for e in plan.future() {
        tracing::warn!(
            "{location}: {} is named in the future ({}): kept; is a clock wrong?",
            e.held.file,
            e.held.time.to_rfc3339()
        );
    }
}

/// Prune one remote over `state` (its listing). The pins are already the union of the
/// local ones and the remote's. Deletes each archive's manifest first, then the
/// archive; stops at the first failure. Errors end up in the report.
///
/// Unless a dry run, under the remote's prune lease ([`crate::lease`]) and over a listing
/// taken under it (another prune may have changed the remote since `state` was read).
#[allow(clippy::too_many_arguments)]
pub async fn prune_remote(
    cfg: &Config,
    r: &RemoteHandle,
    state: &RemoteState,
    pins: &BTreeSet<String>,
    now: DateTime<Utc>,
    force: bool,
    dry_run: bool,
    out: &mut dyn Write,
) -> LocationReport {
    if dry_run {
        let rep = prune_remote_over(cfg, r, state, pins, now, force, dry_run, out).await;
        note_versioning(r, &rep, out).await;
        return rep;
    }
    let failed = |e: anyhow::Error| LocationReport {
        location: r.name.clone(),
        error: Some(format!("not pruned: {e:#}")),
        ..Default::default()
    };
    let lease = match crate::lease::acquire(r, &cfg.local.prefix).await {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    let rep = match &lease {
        None => prune_remote_over(cfg, r, state, pins, now, force, dry_run, out).await,
        Some(_) => match list_state(cfg, r).await {
            Ok(fresh) => prune_remote_over(cfg, r, &fresh, pins, now, force, dry_run, out).await,
            Err(e) => failed(e),
        },
    };
    if let Some(l) = lease {
        l.release().await;
    }
    note_versioning(r, &rep, out).await;
    rep
}

/// After deleting (or planning to delete) archives on `r`: if its bucket keeps old
/// versions and no lifecycle rule expires them, say that the deleted archives keep
/// costing (on the report and at WARN). Quiet when nothing was deleted or the store has
/// no versioning; a failure to tell is logged at debug (doctor reports it).
async fn note_versioning(r: &RemoteHandle, rep: &LocationReport, out: &mut dyn Write) {
    if rep.deleted.is_empty() {
        return;
    }
    match r.backend.versioning().await {
        Ok(Some(v)) if !v.noncurrent_expiration => {
            let msg = crate::remotes::versioning_warning(&v, &r.backend.describe());
            tracing::warn!("remote {}: {msg}", r.name);
            let _ = writeln!(
                out,
                "  NOTE: {msg} (docs/backends/s3-gcs.md, \"Versioned buckets\", gives the rule)"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::debug!("remote {}: bucket versioning unknown: {e}", r.name),
    }
}

#[allow(clippy::too_many_arguments)]
async fn prune_remote_over(
    cfg: &Config,
    r: &RemoteHandle,
    state: &RemoteState,
    pins: &BTreeSet<String>,
    now: DateTime<Utc>,
    force: bool,
    dry_run: bool,
    out: &mut dyn Write,
) -> LocationReport {
    let mut rep = LocationReport {
        location: r.name.clone(),
        ..Default::default()
    };
    let policy = cfg.policy_for(&r.name);
    let rules = PruneRules {
        policy,
        pins,
        now,
        max_delete_fraction: cfg.max_delete_fraction,
        force,
        require_on_remote: false,
    };
    let plan = plan::plan_prune(&rules, &plan::held_remote(state));
    fill_counts(&mut rep, &plan);
    warn_future(&format!("remote {}", r.name), &plan);
    let header = format!(
        "remote {} ({}): policy {policy}",
        r.name,
        r.backend.describe(),
    );
    if let Err(e) = print_plan(out, &header, &plan) {
        rep.error = Some(format!("writing the plan: {e}"));
        return rep;
    }
    if let Some(refusal) = &plan.refused {
        rep.error = Some(refusal.to_string());
        return rep;
    }
    for e in plan.deletions() {
        if dry_run {
            rep.deleted.push(e.held.file.clone());
            continue;
        }
        let mkey = Manifest::file_name_for(&e.held.file);
        let res = async {
            // The manifest first: from then on the archive is an incomplete leftover
            // that nobody restores, even if deleting the archive itself fails.
            retry(r.retry, &format!("delete of {mkey} on {}", r.name), || {
                r.backend.delete(&mkey)
            })
            .await
            .with_context(|| format!("deleting {mkey}"))?;
            retry(
                r.retry,
                &format!("delete of {} on {}", e.held.file, r.name),
                || r.backend.delete(&e.held.file),
            )
            .await
            .with_context(|| format!("deleting {}", e.held.file))?;
            anyhow::Ok(())
        }
        .await;
        match res {
            Ok(()) => {
                tracing::info!("{}: deleted {}", r.name, e.held.file);
                record_offsite_pruned(&cfg.local, &e.held.file);
                rep.deleted.push(e.held.file.clone());
            }
            Err(err) => {
                rep.error = Some(format!(
                    "{err:#} (deleted {} before this failure; the rest were not touched)",
                    rep.deleted.len()
                ));
                // The failed one still counts as there.
                return rep;
            }
        }
    }
    rep
}

/// Prove the remote copies the local prune would lean on. A local archive the policy
/// would delete counts as off-site only when a remote holds a proven copy
/// ([`RemoteState::holds_copy`]). Most listings carry no hash (S3, GCS, sftp; file://
/// does), so for the archives this prune would delete — only those few — each copy is
/// proved the cheapest way that decides ([`prove_copy`]). A copy that fails its
/// manifest's SHA-256 is said, and the local copy is kept. Never fatal: a copy that
/// could not be proved simply does not count.
#[allow(clippy::too_many_arguments)]
async fn prove_unhashed_copies(
    cfg: &Config,
    views: &mut [RemoteView],
    pruned_offsite: &BTreeSet<String>,
    pins: &BTreeSet<String>,
    now: DateTime<Utc>,
    dry_run: bool,
    out: &mut dyn Write,
) {
    if let Err(e) = prove_each(cfg, views, pruned_offsite, pins, now, dry_run, out).await {
        tracing::warn!(
            "local: proving the remote copies stopped ({e:#}); copies not proved do not count"
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn prove_each(
    cfg: &Config,
    views: &mut [RemoteView],
    pruned_offsite: &BTreeSet<String>,
    pins: &BTreeSet<String>,
    now: DateTime<Utc>,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let (local, _) = split_safety(catalog::scan(&cfg.local)?);
    fn states(views: &[RemoteView]) -> impl Iterator<Item = &RemoteState> {
        views
            .iter()
            .filter_map(|v| v.loaded.as_ref().ok().map(|(_, st, _)| st))
    }
    // The plan as if every unproved copy were good: which of them would the prune need?
    let assumed: Vec<RemoteState> = states(views)
        .map(|st| {
            let mut st = st.clone();
            for a in &local {
                if let Some(m) = a
                    .manifest
                    .as_ref()
                    .filter(|m| st.holds_unproved_copy(&a.name.id, m))
                {
                    if let Ok(h) = m.sha256_bytes() {
                        st.record_sha256(&a.name.id, h);
                    }
                }
            }
            st
        })
        .collect();
    let rules = PruneRules {
        policy: &cfg.retention,
        pins,
        now,
        max_delete_fraction: cfg.max_delete_fraction,
        force: false,
        require_on_remote: true,
    };
    let assumed_refs: Vec<&RemoteState> = assumed.iter().collect();
    let plan = plan::plan_prune(
        &rules,
        &plan::held_local(&local, &assumed_refs, pruned_offsite),
    );
    let mut refused_us: BTreeSet<String> = BTreeSet::new();
    for e in plan.deletions() {
        let a = find(&local, e)?;
        let Some(m) = &a.manifest else { continue };
        let id = &a.name.id;
        if pruned_offsite.contains(id) || states(views).any(|st| st.holds_copy(id, m)) {
            continue;
        }
        for v in views.iter_mut() {
            let Ok((r, st, _)) = &mut v.loaded else {
                continue;
            };
            if refused_us.contains(&v.name) || !st.holds_unproved_copy(id, m) {
                continue;
            }
            let file = &a.name.file;
            match prove_copy(r, file, m, &a.path, dry_run).await {
                Proof::Proved(sha, said) => {
                    if let Some(said) = said {
                        writeln!(out, "{}: {file}: {said}", v.name)?;
                    }
                    st.record_sha256(id, sha);
                    break;
                }
                Proof::Contradicted(why) => writeln!(
                    out,
                    "WARNING {}: {file}: its copy there does not match its manifest ({why}): not counted as \
                     off-site, the local copy is kept; `pronto-offsite verify --deep` checks every copy",
                    v.name
                )?,
                Proof::Undecided(why, refused) => {
                    writeln!(
                        out,
                        "{}: {file}: {why}: not counted as off-site, the local copy is kept",
                        v.name
                    )?;
                    if refused {
                        refused_us.insert(v.name.clone());
                    }
                }
            }
        }
    }
    Ok(())
}

/// What proving one remote copy found.
enum Proof {
    /// Its bytes are the manifest's; with a line to say when it took reading them.
    Proved([u8; 32], Option<String>),
    /// Its recorded hash, the store's checksum or its bytes say otherwise.
    Contradicted(String),
    /// Could not tell (`true`: the remote refused us: try it for no other archive).
    Undecided(String, bool),
}

/// Prove the copy `file` of an archive with manifest `m` (local copy at `local`) with the
/// one check uploads use ([`crate::replicate::prove_remote_copy`]): the checksum the store
/// or the backend computed from the stored bytes, else reading the copy back — not in a
/// dry run, which says so instead. A hash the writer put in object metadata proves nothing.
async fn prove_copy(
    r: &RemoteHandle,
    file: &str,
    m: &Manifest,
    local: &std::path::Path,
    dry_run: bool,
) -> Proof {
    use crate::replicate::Proven;
    let Ok(want) = m.sha256_bytes() else {
        return Proof::Undecided("its manifest's sha256 is unreadable".into(), false);
    };
    match crate::replicate::prove_remote_copy(r, file, m.size, want, local, !dry_run).await {
        Ok(Proven::ByStoredChecksum) => Proof::Proved(want, None),
        Ok(Proven::ByReadingBack) => Proof::Proved(
            want,
            Some(
                "read back to prove its copy before the local one goes (the remote records no hash): ok"
                    .into(),
            ),
        ),
        Ok(Proven::SizeOnly) => Proof::Undecided(
            "the remote records no hash for its copy; a prune (not a dry run) reads it back first"
                .into(),
            false,
        ),
        Err(e) => {
            let contradicted = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<crate::error::AppError>(),
                    Some(crate::error::AppError::Verification(_))
                )
            });
            let refused = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<pronto_backends::BackendError>(),
                    Some(
                        pronto_backends::BackendError::Auth(_)
                            | pronto_backends::BackendError::HostKey(_)
                    )
                )
            });
            if contradicted {
                Proof::Contradicted(format!("{e:#}"))
            } else {
                Proof::Undecided(format!("could not prove its copy ({e:#})"), refused)
            }
        }
    }
}

/// Prune the local folder. `listed` are the remote listings that could be read (after
/// this run's remote deletions), `pruned_offsite` the ids remote prunes deleted by the
/// policy; `unlisted` names remotes that could not be listed.
#[allow(clippy::too_many_arguments)]
fn prune_local(
    cfg: &Config,
    listed: &[&RemoteState],
    pruned_offsite: &BTreeSet<String>,
    unlisted: &[&str],
    pins: &BTreeSet<String>,
    now: DateTime<Utc>,
    force: bool,
    dry_run: bool,
    out: &mut dyn Write,
) -> LocationReport {
    let mut rep = LocationReport {
        location: "local".into(),
        ..Default::default()
    };
    let res = (|| -> Result<()> {
        let _lock = if dry_run {
            None
        } else {
            Some(crate::lock::acquire(
                &cfg.local.dir,
                "prune",
                crate::lock::DEFAULT_WAIT,
            )?)
        };
        // Safety backups are not shown to the policy (no slot, no `latest`, not in the
        // deletion cap); their own rule keeps the SAFETY_KEEP newest.
        let (local, safety) = split_safety(catalog::scan(&cfg.local)?);
        let rules = PruneRules {
            policy: &cfg.retention,
            pins,
            now,
            max_delete_fraction: cfg.max_delete_fraction,
            force,
            require_on_remote: !cfg.remotes.is_empty(),
        };
        let plan = plan::plan_prune(&rules, &plan::held_local(&local, listed, pruned_offsite));
        fill_counts(&mut rep, &plan);
        rep.moved = plan.moves().count();
        warn_future("local", &plan);
        let header = format!(
            "local {}: policy {}",
            cfg.local.dir.display(),
            cfg.retention
        );
        print_plan(out, &header, &plan)?;
        if !unlisted.is_empty() && !force {
            writeln!(
                out,
                "  note: {} could not be listed; copies there do not count",
                unlisted.join(", ")
            )?;
        }
        if let Some(refusal) = &plan.refused {
            rep.moved = 0;
            return Err(anyhow!("{refusal}"));
        }
        if dry_run {
            rep.deleted = plan.deletions().map(|e| e.held.file.clone()).collect();
            prune_safety(&safety, true, &mut rep, out)?;
            return Ok(());
        }
        for e in plan.deletions() {
            let a = find(&local, e)?;
            delete_local(a)?;
            tracing::info!("local: deleted {}", a.path.display());
            rep.deleted.push(e.held.file.clone());
        }
        prune_safety(&safety, false, &mut rep, out)?;
        clean_offsite_pruned(&cfg.local)?;
        let deleted: BTreeSet<&str> = plan.deletions().map(|e| e.held.file.as_str()).collect();
        file_keepers(cfg, &local, &plan, &deleted)?;
        Ok(())
    })();
    if let Err(e) = res {
        rep.error = Some(format!("{e:#}"));
    }
    rep
}

/// The safety backups' own rule: keep the [`crate::manifest::SAFETY_KEEP`] newest,
/// delete the older ones (manifest first). `safety` is oldest first.
fn prune_safety(
    safety: &[LocalArchive],
    dry_run: bool,
    rep: &mut LocationReport,
    out: &mut dyn Write,
) -> Result<()> {
    let old = safety.len().saturating_sub(crate::manifest::SAFETY_KEEP);
    for (i, a) in safety.iter().enumerate() {
        let action = if i < old { "delete" } else { "keep" };
        writeln!(
            out,
            "  {action:<6}  {}  safety backup ({} newest kept)",
            a.name.file,
            crate::manifest::SAFETY_KEEP
        )?;
        if i < old {
            if !dry_run {
                delete_local(a)?;
                tracing::info!("local: deleted safety backup {}", a.path.display());
            }
            rep.deleted.push(a.name.file.clone());
        }
    }
    Ok(())
}

/// Delete a local archive: its manifest first (from then on it is an incomplete
/// leftover, never restored or pushed), then the archive.
fn delete_local(a: &LocalArchive) -> Result<()> {
    let m = a.manifest_path();
    match std::fs::remove_file(&m) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", m.display())),
    }
    if let Some(d) = m.parent() {
        fsutil::sync_dir(d)?;
    }
    std::fs::remove_file(&a.path).with_context(|| format!("removing {}", a.path.display()))?;
    if let Some(d) = a.path.parent() {
        fsutil::sync_dir(d)?;
    }
    Ok(())
}

/// Folder of the "pruned off-site" markers under the backup folder.
pub const OFFSITE_PRUNED_DIR: &str = ".offsite-pruned";

/// Ids of local archives whose remote copy a prune deleted by the policy.
pub fn read_offsite_pruned(local: &crate::config::Local) -> Result<BTreeSet<String>> {
    let dir = local.dir.join(OFFSITE_PRUNED_DIR);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = BTreeSet::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|f| catalog::parse_name(&local.prefix, f))
        {
            out.insert(n.id);
        }
    }
    Ok(out)
}

/// Record that a remote prune deleted `file` by the policy, when the local folder still
/// holds it. Best effort: without the marker the local copy is merely kept longer.
pub(crate) fn record_offsite_pruned(local: &crate::config::Local, file: &str) {
    let held_locally = std::iter::once(local.dir.clone())
        .chain(catalog::TIER_DIRS.iter().map(|(t, _)| t.dir(&local.dir)))
        .any(|d| d.join(file).is_file());
    if !held_locally {
        return;
    }
    let dir = local.dir.join(OFFSITE_PRUNED_DIR);
    let res = fsutil::create_private_dir(&dir).and_then(|()| {
        std::fs::write(dir.join(file), b"")
            .with_context(|| format!("writing {}", dir.join(file).display()))
    });
    if let Err(e) = res {
        tracing::warn!(
            "could not record that {file} was pruned off-site ({e:#}); the local prune keeps its local copy until --force"
        );
    }
}

/// Drop markers of archives the local folder no longer holds. Under the folder lock.
fn clean_offsite_pruned(local: &crate::config::Local) -> Result<()> {
    let dir = local.dir.join(OFFSITE_PRUNED_DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let held: BTreeSet<String> = catalog::scan(local)?
        .into_iter()
        .map(|a| a.name.file)
        .collect();
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if catalog::parse_name(&local.prefix, name).is_some() && !held.contains(name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}
