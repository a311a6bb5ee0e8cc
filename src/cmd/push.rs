//! `push`: every local archive a remote lacks, then that remote's prune (`--no-prune`:
//! not); `--cleanup`: then abort the uploads no push will finish; `--json`: one report.

use std::io::Write;

use anyhow::Result;

use crate::config::Config;
use crate::error::Exit;

/// `push`'s flags, after the config is read (`--bwlimit` and `--init-remote` are already
/// in the remotes).
pub struct Options {
    pub remote: Option<String>,
    pub dry_run: bool,
    pub no_prune: bool,
    pub json: bool,
    pub cleanup: bool,
    /// Progress bars are allowed (not `-q`, not JSON logs).
    pub bars: bool,
}

/// Run `push`.
pub fn run(cfg: &Config, opts: &Options, out: &mut dyn Write) -> Result<Exit> {
    let rt = crate::remotes::runtime()?;
    // The push and its cleanup both under the one local lock (not a dry run).
    let _lock = (!opts.dry_run)
        .then(|| crate::lock::acquire(&cfg.local.dir, "push", crate::lock::DEFAULT_WAIT))
        .transpose()?;
    crate::progress::enable(opts.bars && !opts.json && !opts.dry_run);
    // With --json, stdout carries only the JSON report: no progress lines, and
    // the cleanup's lines go to stderr. On a terminal, lines never garble the bars.
    let mut quiet = std::io::sink();
    let mut lines = crate::progress::Suspending(&mut *out);
    let progress: &mut dyn Write = if opts.json { &mut quiet } else { &mut lines };
    let reports = rt.block_on(crate::push_remotes::run_with(
        cfg,
        opts.remote.as_deref(),
        opts.dry_run,
        !opts.no_prune,
        progress,
    ))?;
    if opts.cleanup {
        let mut stderr = std::io::stderr();
        let notes: &mut dyn Write = if opts.json { &mut stderr } else { progress };
        rt.block_on(crate::abandoned_uploads::run(
            cfg,
            opts.remote.as_deref(),
            opts.dry_run,
            notes,
        ))?;
    }
    if opts.json {
        print_json(&reports, opts.dry_run, out)
    } else {
        Ok(crate::push_remotes::exit(&reports))
    }
}

/// `push --json`: what happened per remote; returns push's exit code (0, 3 some remotes
/// failed, 1 all failed).
fn print_json(
    reports: &[crate::push_remotes::RemoteReport],
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<Exit> {
    let remotes: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "ok": r.error.is_none(),
                "uploaded": r.uploaded,
                "bytes_uploaded": r.bytes_sent,
                "already_there": r.skipped,
                "not_sent_retention": r.not_kept,
                "pruned": r.pruned,
                "pruned_files": r.pruned_files,
                "failed": r.failed,
                "error": r.error,
            })
        })
        .collect();
    let code = crate::push_remotes::exit(reports);
    let v = serde_json::json!({ "dry_run": dry_run, "exit_code": code, "remotes": remotes });
    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    Ok(code)
}
