//! `push`: replicate local archives to every remote (or one).

use std::io::Write;

use anyhow::{Context, Result};

use crate::catalog;
use crate::config::Config;
use crate::error::{EXIT_ERROR, EXIT_OK, EXIT_PARTIAL};
use crate::fsutil::human_bytes;
use crate::plan;
use crate::remotes;
use crate::replicate::{self, RemoteHandle};
use crate::retry::retry;

/// What happened on one remote.
#[derive(Debug, Default)]
pub struct RemoteReport {
    pub name: String,
    pub uploaded: Vec<String>,
    pub skipped: usize,
    pub bytes_sent: u64,
    pub error: Option<String>,
}

/// Push; returns the exit code (0 ok, 3 some remotes failed, 1 all failed).
pub async fn run(cfg: &Config, only: Option<&str>, dry_run: bool, out: &mut dyn Write) -> Result<i32> {
    let selected = remotes::selected(cfg, only)?;
    if selected.is_empty() {
        return Err(crate::error::usage(format!(
            "{}: no [[remotes]] configured: nowhere to push",
            cfg.file.display()
        )));
    }
    let local = catalog::scan(&cfg.local)?;
    let incomplete = local.iter().filter(|a| a.manifest.is_none()).count();
    if incomplete > 0 {
        tracing::warn!(
            "{incomplete} local archive(s) have no manifest (interrupted or foreign) and are not pushed"
        );
    }
    let mut reports = Vec::new();
    for remote in selected {
        let mut rep = RemoteReport {
            name: remote.name.clone(),
            ..Default::default()
        };
        let res = async {
            let r = remotes::open(remote)?;
            push_one(cfg, &r, &local, dry_run, &mut rep, out).await
        }
        .await;
        if let Err(e) = res {
            tracing::error!("remote {}: {e:#}", remote.name);
            rep.error = Some(format!("{e:#}"));
        }
        reports.push(rep);
    }

    writeln!(out)?;
    for r in &reports {
        match &r.error {
            None => writeln!(
                out,
                "{}: {} {} ({}), {} already there",
                r.name,
                if dry_run { "would upload" } else { "uploaded" },
                r.uploaded.len(),
                human_bytes(r.bytes_sent),
                r.skipped
            )?,
            Some(e) => writeln!(out, "{}: FAILED: {e}", r.name)?,
        }
    }
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    Ok(match failed {
        0 => EXIT_OK,
        n if n == reports.len() => EXIT_ERROR,
        _ => EXIT_PARTIAL,
    })
}

async fn push_one(
    cfg: &Config,
    r: &RemoteHandle,
    local: &[catalog::LocalArchive],
    dry_run: bool,
    rep: &mut RemoteReport,
    out: &mut dyn Write,
) -> Result<()> {
    let listing = retry(r.retry, &format!("listing of {}", r.name), || r.backend.list(""))
        .await
        .with_context(|| format!("listing {}", r.backend.describe()))?;
    let state = plan::remote_state(&cfg.local.prefix, &listing);
    let uploads = plan::uploads(local, &state);
    rep.skipped = local.iter().filter(|a| a.manifest.is_some()).count() - uploads.len();
    if uploads.is_empty() {
        writeln!(out, "{}: up to date ({})", r.name, r.backend.describe())?;
    }
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
        let stats = replicate::upload_archive(r, &cfg.local.dir, up).await?;
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
    Ok(())
}
