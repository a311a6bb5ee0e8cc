//! `backup`: one archive of the configured sources into the local folder, or with
//! `--output DIR` into another folder; `--push` uploads it to every remote while it is
//! written; `--dry-run` lists what it would hold. Prints the archive's id on stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::config::Config;
use crate::error::Exit;

/// `backup`'s flags, after the config is read (`--exclude` is already in the sources).
pub struct Options {
    pub push: bool,
    pub dry_run: bool,
    pub output: Option<PathBuf>,
    /// `-q`: the push's lines are not printed.
    pub quiet: bool,
}

/// Run `backup`.
pub fn run(cfg: &Config, opts: &Options, out: &mut dyn Write) -> Result<Exit> {
    if opts.dry_run {
        return crate::local_backup::dry_run_cmd(cfg, out);
    }
    let started = std::time::Instant::now();
    let (m, path, code) = if let Some(dir) = &opts.output {
        let (m, path) = crate::local_backup::run_to(cfg, dir)?;
        (m, path, Exit::Ok)
    } else if opts.push {
        // The backup and its push under the one lock, taken once.
        let _lock = crate::lock::acquire(&cfg.local.dir, "backup", crate::lock::DEFAULT_WAIT)?;
        // The push's lines go to stderr (stdout carries the id), not with -q.
        let (mut lines, mut quiet) = (crate::progress::stderr(), std::io::sink());
        let lines: &mut dyn Write = if opts.quiet { &mut quiet } else { &mut lines };
        crate::backup_and_push::run_backup_push(cfg, lines)?
    } else {
        let (m, path) = crate::local_backup::run(cfg)?;
        (m, path, Exit::Ok)
    };
    tracing::info!(
        "wrote {} ({}, sha256 {}) in {:.1}s",
        path.display(),
        crate::fsutil::human_bytes(m.size),
        m.sha256,
        started.elapsed().as_secs_f64()
    );
    writeln!(out, "{}", m.id)?;
    Ok(code)
}
