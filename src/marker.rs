//! The marker that says a remote is the one this host pushes to (restic's repository
//! config plays this role).
//!
//! The first push to a remote writes [`MARKER`] at its root (its host namespace, with
//! `host_id`) and records in `<backup folder>/.remotes/<name>.json` that it did. Later
//! pushes check for it first: a file:// or sftp remote whose marker has gone is most
//! likely not mounted (an empty mount point on the local disk, or another server), so
//! the push refuses before writing anything, instead of filling the wrong disk. A
//! brand-new remote (no record) needs no step: the marker is written on the way. A remote
//! emptied on purpose is started afresh with `push --init-remote`. On S3 and GCS a
//! missing marker cannot mean an unmounted disk: it is written again, with a warning.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Remote, RemoteLocation};
use crate::replicate::RemoteHandle;
use crate::retry::retry;
use pronto_backends::BackendError;

pub use crate::catalog::MARKER;

/// What the marker holds (for a human who finds it; the tool only checks it exists).
#[derive(Serialize, Deserialize)]
struct Marker {
    format: u32,
    created: DateTime<Utc>,
    host: String,
    tool_version: String,
}

/// This host's record that it initialized a remote.
#[derive(Serialize, Deserialize)]
struct Record {
    /// The remote's URL then: a remote pointed elsewhere since is a new remote.
    url: String,
    initialized: DateTime<Utc>,
}

fn record_path(cfg: &Config, remote: &str) -> PathBuf {
    cfg.local
        .dir
        .join(".remotes")
        .join(format!("{remote}.json"))
}

/// When this host initialized `remote` (wrote its marker), if it did: its folder must
/// then exist already.
pub fn initialized_on(cfg: &Config, remote: &Remote) -> Option<String> {
    read_record(cfg, remote).map(|r| r.initialized.format("%Y-%m-%d %H:%M UTC").to_string())
}

/// What to say when the folder of a remote this host initialized on `on` is not there.
pub fn gone_hint(remote: &Remote, on: &str) -> String {
    format!(
        "remote {name}: this host initialized it on {on}, and its folder is not there: not mounted? \
         Mount it and push again; if it was removed on purpose, \
         `pronto-offsite push --remote {name} --init-remote` starts it afresh",
        name = remote.name
    )
}

fn read_record(cfg: &Config, remote: &Remote) -> Option<Record> {
    let bytes = std::fs::read(record_path(cfg, &remote.name)).ok()?;
    serde_json::from_slice::<Record>(&bytes)
        .ok()
        .filter(|r| r.url == remote.url)
}

/// Check remote `remote` (opened as `r`) before a push writes to it, writing its marker
/// when it has none and may have one (see the module doc). `init`: `push --init-remote`,
/// a remote emptied on purpose. A dry run writes nothing but refuses all the same.
pub async fn ensure(
    cfg: &Config,
    remote: &Remote,
    r: &RemoteHandle,
    init: bool,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let present = match retry(r.retry, &format!("head of {MARKER} on {}", r.name), || {
        r.backend.head(MARKER)
    })
    .await
    {
        Ok(_) => true,
        Err(BackendError::NotFound(_)) => false,
        Err(e) => {
            // sftp finds its folder missing only now, on connecting; any other error
            // (credentials, a host key, the network) is said as it is.
            let folder_missing = matches!(remote.location, RemoteLocation::Sftp(_))
                && matches!(&e, BackendError::Permanent(m) if m.contains("does not exist"));
            let on = initialized_on(cfg, remote).filter(|_| !init && folder_missing);
            let e = anyhow::Error::from(e)
                .context(format!("{}: looking for its marker {MARKER}", r.name));
            return Err(match on {
                Some(on) => e.context(gone_hint(remote, &on)),
                None => e,
            });
        }
    };
    let record = read_record(cfg, remote);
    if present {
        if record.is_none() && !dry_run {
            write_record(cfg, remote)?;
        }
        return Ok(());
    }
    let mountable = matches!(
        remote.location,
        RemoteLocation::File(_) | RemoteLocation::Sftp(_)
    );
    if let (Some(rec), true, false) = (&record, mountable, init) {
        return Err(crate::error::usage(format!(
            "remote {name} at {desc} has no marker ({MARKER}), although this host initialized it on {date}: \
             not mounted? Nothing was written there. Mount it and push again; if it was emptied on purpose, \
             `pronto-offsite push --remote {name} --init-remote` starts it afresh",
            name = remote.name,
            desc = r.backend.describe(),
            date = rec.initialized.format("%Y-%m-%d %H:%M UTC"),
        )));
    }
    if record.is_some() && !mountable {
        tracing::warn!(
            "{}: its marker {MARKER} was gone (deleted by hand or a lifecycle rule?); writing it again",
            r.name
        );
    }
    if dry_run {
        writeln!(out, "{}: would write its marker {MARKER}", r.name)?;
        return Ok(());
    }
    let marker = Marker {
        format: 1,
        created: Utc::now(),
        host: crate::fsutil::hostname(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
    };
    let body = Bytes::from(serde_json::to_vec_pretty(&marker)?);
    let sha = pronto_backends::sha256_of(&body);
    retry(
        r.retry,
        &format!("upload of {MARKER} to {}", r.name),
        || r.backend.put(MARKER, body.clone(), sha),
    )
    .await
    .with_context(|| format!("{}: writing its marker {MARKER}", r.name))?;
    tracing::info!("{}: wrote its marker {MARKER}", r.name);
    write_record(cfg, remote)
}

fn write_record(cfg: &Config, remote: &Remote) -> Result<()> {
    let path = record_path(cfg, &remote.name);
    if let Some(dir) = path.parent() {
        crate::fsutil::create_private_dir(dir)?;
    }
    let rec = Record {
        url: remote.url.clone(),
        initialized: Utc::now(),
    };
    crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&rec)?)
        .with_context(|| format!("recording that remote {} was initialized", remote.name))
}
