//! `hook`: the entry point for cron or a systemd timer. Backup (unless `--no-backup`),
//! push to every remote (each remote is pruned right after its uploads succeed), prune
//! the local folder, then report: stdout, the state file and metrics textfile, and the
//! `[notify]` channels. With `[hook] stream_upload` (the default) the new archive goes to
//! the remotes while it is written ([`crate::backup_and_push`]), and the push follows.
//!
//! A hook holds the one local lock ([`crate::lock`], `.pronto-offsite.lock` in the
//! backup folder) for its whole run, so it never overlaps another hook, backup, push,
//! prune or pin; a run that finds it held waits up to `[hook] lock_wait` (default 10m),
//! then exits 6 with a message naming the run it waited for.
//!
//! Exit codes: 0 everything succeeded; 3 partial (the archive was made but a remote or
//! the prune failed); 1 failure (the backup failed, or nothing succeeded); 2 config;
//! 6 busy. A failed metrics write is logged at ERROR and changes nothing; a failed
//! notification is logged at ERROR and turns a good run's 0 into 1 (never another code).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{SubsecRound, Utc};

pub use crate::config::hook::{HookConfig, DEFAULT_LOCK_WAIT};
use crate::config::Config;
use crate::error::Exit;
use crate::fsutil::human_bytes;
use crate::notify::Notifier;
pub use crate::report::{ArchiveInfo, BackupStep, Outcome, PruneStep, RemoteStep, Report};

/// `hook`'s flags.
#[derive(Debug, Clone, Default)]
pub struct HookOptions {
    /// Skip the backup (an external script made the archive).
    pub no_backup: bool,
    /// Overrides `[hook] lock_wait`.
    pub lock_wait: Option<Duration>,
    /// Print the report as JSON.
    pub json: bool,
}

// ---- the run ----

/// Run the hook; returns the exit code. Failures of steps are in the report, not errors.
///
/// Every run that gets past the config reports, whatever stops it: a step that cannot
/// even start (the backup folder cannot be created or locked, a full disk) is an error in
/// the report like a failed step, and the state file, the metrics textfile and the
/// notifications are written and sent before the exit. Writing them may fail in turn (a
/// read-only folder): that is logged at ERROR and never replaces the run's own error.
pub fn run(cfg: &Config, opts: &HookOptions, out: &mut dyn Write) -> Result<Exit> {
    let t0 = Instant::now();
    let started = Utc::now().trunc_subsecs(0);
    let rt = crate::remotes::runtime()?;
    let notifier = Notifier::new(&cfg.notify);
    let mut report = Report::new(cfg, started);
    tracing::info!(
        "hook started (pronto-offsite {}, pid {}, config {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        cfg.file.display()
    );
    // The hook's lock, held until the report is out (a second run must not start before).
    let mut lock: Option<Box<dyn std::any::Any>> = None;
    let busy = match run_steps(cfg, opts, &rt, &notifier, &mut report, &mut lock, out) {
        Ok(busy) => busy,
        // Nothing could start (the backup folder cannot be created or locked): the
        // backup failed, and says why.
        Err(e) => {
            report.backup = Some(backup_step(Err(e), &mut report));
            false
        }
    };

    // The report: state and metrics files, stdout, notifications.
    report.finish(t0, busy);
    record_state(cfg, &report);
    match report.status {
        Outcome::Success => tracing::info!("{}", report.summary),
        _ => tracing::error!("{}", report.summary),
    }
    let printed = print_report(&report, opts.json, out);
    let unsent = rt.block_on(notifier.finish(&report));
    if let Err(e) = printed {
        tracing::error!("printing the report: {e:#}");
    }
    drop(lock);
    Ok(final_exit_code(report.exit_code, &unsent))
}

/// The hook's exit code: the run's own, except that a good run whose notification failed
/// exits 1, so that a broken alert channel shows (in cron's mail, in `systemctl
/// --failed`) before the night it is needed. A failed run keeps its code: a failed
/// notification never hides the original error.
fn final_exit_code(run: Exit, unsent: &[&str]) -> Exit {
    if run != Exit::Ok || unsent.is_empty() {
        return run;
    }
    tracing::error!(
        "the run itself succeeded, but its notification failed ({}): fix [notify] (see the errors above), or failures will reach nobody",
        unsent.join(", ")
    );
    Exit::Error
}

/// The steps of a run, into `report`: lock (kept in `lock`), backup, push, prune. Returns
/// whether another run held the lock (busy). An error is a step that could not start.
fn run_steps(
    cfg: &Config,
    opts: &HookOptions,
    rt: &tokio::runtime::Runtime,
    notifier: &Notifier,
    report: &mut Report,
    lock: &mut Option<Box<dyn std::any::Any>>,
    out: &mut dyn Write,
) -> Result<bool> {
    let wait = opts.lock_wait.unwrap_or(cfg.hook.lock_wait);
    // The one local lock for the whole run; the backup, push and prune inside take it
    // again at once (it is held by this process, see `crate::lock`).
    let _lock = match crate::lock::acquire(&cfg.local.dir, "hook", wait) {
        Ok(l) => l,
        Err(e) if crate::lock::busy(&e).is_some() => {
            let msg = format!(
                "{e:#}. If runs overlap regularly, space them further apart or raise [hook] lock_wait"
            );
            tracing::error!("{msg}");
            report.errors.push(msg);
            return Ok(true);
        }
        Err(e) => return Err(e),
    };
    *lock = Some(Box::new(_lock));
    rt.block_on(notifier.start());

    // 0. Room for tonight's archive: a full disk is pruned by retention first.
    if !opts.no_backup {
        let mut sink = std::io::sink();
        let prune_out: &mut dyn Write = if opts.json { &mut sink } else { &mut *out };
        if let Some(note) = make_room(cfg, rt, prune_out) {
            report.warnings.push(note);
        }
    }

    // 1. backup, and 2. push (every remote; even after a failed backup, older archives
    // still go off-site). With `[hook] stream_upload` (the default) the new archive goes
    // to the remotes while it is written, and the push then finds it there.
    let mut sink = std::io::sink();
    let push_out: &mut dyn Write = if opts.json { &mut sink } else { &mut *out };
    let mut pushed = false;
    if opts.no_backup {
        report.backup = Some(BackupStep {
            skipped: true,
            archive: None,
            error: None,
        });
        no_backup_warning(cfg, report);
    } else if cfg.hook.stream_upload && !cfg.remotes.is_empty() {
        let streamed = crate::backup_and_push::backup_and_push(
            cfg,
            rt,
            &crate::backup_and_push::Options {
                prune: true,
                push_after_failed_backup: true,
            },
            push_out,
        );
        report.backup = Some(backup_step(streamed.backup, report));
        add_remote_steps(report, streamed.remotes);
        pushed = true;
    } else {
        report.backup = Some(backup_step(crate::local_backup::run(cfg), report));
    }

    if cfg.remotes.is_empty() {
        report
            .warnings
            .push("no [[remotes]] configured: nothing was pushed off-site".into());
    } else if !pushed {
        match rt.block_on(crate::push_remotes::run_reports(cfg, None, false, push_out)) {
            Ok(reps) => add_remote_steps(report, reps),
            Err(e) => {
                tracing::error!("push failed: {e:#}");
                for r in &cfg.remotes {
                    report.remotes.push(RemoteStep {
                        name: r.name.clone(),
                        uploaded: Vec::new(),
                        bytes_uploaded: 0,
                        already_there: 0,
                        pruned: Vec::new(),
                        error: Some(format!("{e:#}")),
                    });
                }
                report.errors.push(format!("push: {e:#}"));
            }
        }
    }
    let backup_failed = report.backup.as_ref().is_some_and(|b| b.error.is_some());

    // 3. prune
    report.prune = Some(if backup_failed {
        PruneStep {
            skipped: true,
            message: Some("skipped: the backup failed".into()),
            error: None,
        }
    } else {
        let mut sink = std::io::sink();
        let prune_out: &mut dyn Write = if opts.json { &mut sink } else { &mut *out };
        prune_step(cfg, rt, prune_out)
    });
    if let Some(e) = report.prune.as_ref().and_then(|p| p.error.clone()) {
        report.errors.push(format!("prune: {e}"));
    }
    Ok(false)
}

/// The state file and the metrics textfile after a run; failures are logged only.
fn record_state(cfg: &Config, report: &Report) {
    let mut state = crate::metrics::State::load(&cfg.local.dir);
    state.record(cfg, report);
    if let Err(e) = state.save(&cfg.local.dir) {
        tracing::error!("saving the run state: {}", crate::error::describe(&e));
    }
    if let Some(m) = &cfg.metrics {
        match crate::metrics::render(cfg, &state)
            .and_then(|t| crate::metrics::write_textfile(m, &t))
        {
            Ok(()) => tracing::debug!("metrics written to {}", m.textfile.display()),
            Err(e) => tracing::error!("metrics: {}", crate::error::describe(&e)),
        }
    }
}

/// The backup step of the report from the backup's result.
fn backup_step(
    res: Result<(crate::manifest::Manifest, PathBuf)>,
    report: &mut Report,
) -> BackupStep {
    match res {
        Ok((m, path)) => {
            tracing::info!("backup: wrote {} ({})", path.display(), human_bytes(m.size));
            BackupStep {
                skipped: false,
                archive: Some(ArchiveInfo {
                    id: m.id.clone(),
                    file: m.file.clone(),
                    size: m.size,
                    sha256: m.sha256.clone(),
                }),
                error: None,
            }
        }
        Err(e) => {
            let msg = crate::error::describe(&e);
            tracing::error!("backup failed: {msg}");
            report.errors.push(format!("backup: {msg}"));
            report.exit_code = Exit::of(&e);
            BackupStep {
                skipped: false,
                archive: None,
                error: Some(msg),
            }
        }
    }
}

/// Each remote's step of the report from what the push did there.
fn add_remote_steps(report: &mut Report, reps: Vec<crate::push_remotes::RemoteReport>) {
    for r in reps {
        if let Some(e) = &r.error {
            report.errors.push(format!("remote {}: {e}", r.name));
        }
        for f in &r.failed {
            report.errors.push(format!("remote {}: {f}", r.name));
        }
        report.remotes.push(RemoteStep {
            name: r.name,
            uploaded: r.uploaded,
            bytes_uploaded: r.bytes_sent,
            already_there: r.skipped,
            pruned: r.pruned_files,
            error: r.error,
        });
    }
}

fn print_report(report: &Report, json: bool, out: &mut dyn Write) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
    } else {
        writeln!(out)?;
        write!(out, "{}", report.text)?;
    }
    out.flush()?;
    Ok(())
}

/// With `--no-backup` an external script made the archive: say so when the newest one is
/// older than `[status] max_age` (the script may have failed).
fn no_backup_warning(cfg: &Config, report: &mut Report) {
    let newest = crate::catalog::scan(&cfg.local).ok().and_then(|all| {
        all.into_iter()
            .filter(|a| a.manifest.is_some())
            .map(|a| a.name.time)
            .filter(|t| !crate::catalog::named_in_future(*t, Utc::now()))
            .max()
    });
    let max_age = cfg.status.max_age;
    let msg = match newest {
        None => Some(format!(
            "--no-backup: there is no complete archive in {}; did the external backup run?",
            cfg.local.dir.display()
        )),
        Some(t) => {
            let age = (Utc::now() - t).to_std().unwrap_or_default();
            (age > max_age).then(|| {
                format!(
                    "--no-backup: the newest archive is {} old (more than [status] max_age = {}); did the external backup run?",
                    crate::fsutil::human_age(age),
                    humantime::format_duration(max_age)
                )
            })
        }
    };
    if let Some(m) = msg {
        tracing::warn!("{m}");
        report.warnings.push(m);
    }
}

/// Disk-full recovery, before the backup: when the backup folder's disk cannot hold the
/// next archive (estimated from the last ones, [`crate::catalog::next_archive_estimate`]),
/// prune the local folder by retention first — the same local prune as step 3, so never
/// an archive that no remote holds complete and never the newest one. Returns what it
/// did, for the report's warnings; `None` when there is room (or nothing to go by).
fn make_room(cfg: &Config, rt: &tokio::runtime::Runtime, out: &mut dyn Write) -> Option<String> {
    use crate::fsutil::human_bytes;
    let need = crate::catalog::next_archive_estimate(cfg)?;
    let disk = crate::fsutil::free_space(&cfg.local.dir)?;
    if disk.free_bytes >= need {
        return None;
    }
    tracing::warn!(
        "{} free on {}, the next archive needs about {}: pruning the local folder by retention first",
        human_bytes(disk.free_bytes),
        disk.path,
        human_bytes(need)
    );
    let step = prune_step(cfg, rt, out);
    let after = crate::fsutil::free_space(&cfg.local.dir).map_or(0, |d| d.free_bytes);
    let mut note = format!(
        "disk-full recovery: {} free on {}, the next archive needs about {}; pruned the local folder by retention first ({}); now {} free",
        human_bytes(disk.free_bytes),
        disk.path,
        human_bytes(need),
        step.error
            .as_deref()
            .or(step.message.as_deref())
            .unwrap_or("nothing done"),
        human_bytes(after)
    );
    if after < need {
        note.push_str(": still not enough; archives not yet on a remote and the newest one are never pruned to make room");
    }
    tracing::warn!("{note}");
    Some(note)
}

/// The prune step: each remote was already pruned by the push, right after its own
/// uploads succeeded (its `prune` key); this prunes the local folder and files its
/// keepers into tiers (`prune --local`: remotes are listed read-only, and a local archive
/// no remote holds complete is never deleted). An error makes the run partial (exit 3).
fn prune_step(cfg: &Config, rt: &tokio::runtime::Runtime, out: &mut dyn Write) -> PruneStep {
    let opts = crate::prune_locations::PruneOptions {
        scope: crate::prune_locations::Scope::Local,
        dry_run: false,
        force: false,
    };
    match rt.block_on(crate::prune_locations::run_reports(cfg, &opts, out)) {
        Ok(reports) => {
            let errors: Vec<String> = reports
                .iter()
                .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.location)))
                .collect();
            let done: Vec<String> = reports
                .iter()
                .map(|r| crate::prune_locations::summary(r, false))
                .collect();
            for e in &errors {
                tracing::error!("prune: {e}");
            }
            PruneStep {
                skipped: false,
                message: Some(done.join("; ")),
                error: (!errors.is_empty()).then(|| errors.join("; ")),
            }
        }
        Err(e) => {
            tracing::error!("prune failed: {e:#}");
            PruneStep {
                skipped: false,
                message: None,
                error: Some(format!("{e:#}")),
            }
        }
    }
}
