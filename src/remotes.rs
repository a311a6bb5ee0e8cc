//! Opening configured remotes as [`RemoteHandle`]s.

use std::sync::Arc;

use anyhow::{Context, Result};
use pronto_backends::local::LocalBackend;
use pronto_backends::ObjectMeta;

use crate::config::{Config, Remote, RemoteLocation};
use crate::error::usage;
use crate::host_namespace::NamespacedBackend;
use crate::plan::RemoteState;
use crate::replicate::RemoteHandle;
use crate::retry::retry;
use crate::retry::RetryPolicy;

/// Open one remote to write to it (push, prune, pin, `push --cleanup`, doctor's probe).
/// Its folder (file://, sftp://) is created when missing only for a remote this host has
/// not initialized (or with `--init-remote`): the folder of one it did initialize that is
/// gone is most likely a disk or NAS not mounted, and creating it would put the backups
/// on the disk underneath. Then the error names the folder, says nothing was created, and
/// how to start the remote afresh if it was removed on purpose.
pub fn open(cfg: &Config, remote: &Remote) -> Result<RemoteHandle> {
    let initialized = crate::marker::initialized_on(cfg, remote).filter(|_| !remote.init_marker);
    let opened = open_with(remote, initialized.is_none());
    match (initialized, &remote.location) {
        // A file:// folder is found missing here; sftp's on connecting (`marker::ensure`).
        (Some(on), RemoteLocation::File(path)) if opened.is_err() && !path.exists() => {
            opened.with_context(|| crate::marker::gone_hint(remote, &on))
        }
        _ => opened,
    }
}

/// Open one remote to read it (`list`, `verify`, `pull`, `status`): a missing file:// or
/// sftp:// folder is an error that names it, and nothing is created.
pub fn open_read_only(remote: &Remote) -> Result<RemoteHandle> {
    open_with(remote, false)
}

fn open_with(remote: &Remote, create: bool) -> Result<RemoteHandle> {
    let backend: Arc<dyn pronto_backends::Backend> = match &remote.location {
        RemoteLocation::File(path) => Arc::new(
            if create {
                LocalBackend::new(path.clone())
            } else {
                LocalBackend::open_existing(path.clone())
            }
            .with_context(|| format!("remote {}: opening {}", remote.name, path.display()))?,
        ),
        RemoteLocation::Sftp(cfg) => Arc::new(
            pronto_backends::sftp::SftpBackend::new(pronto_backends::sftp::SftpConfig {
                create_root: create,
                ..cfg.clone()
            })
            .with_context(|| format!("remote {}: opening {}", remote.name, cfg.url))?,
        ),
        RemoteLocation::S3(cfg) => Arc::new(
            pronto_backends::s3::S3Backend::new(cfg.clone())
                .with_context(|| format!("remote {}: opening {}", remote.name, cfg.url()))?,
        ),
        RemoteLocation::Gcs(cfg) => Arc::new(
            pronto_backends::gcs::GcsBackend::new(cfg.clone())
                .with_context(|| format!("remote {}: opening {}", remote.name, cfg.url()))?,
        ),
    };
    let backend: Arc<dyn pronto_backends::Backend> = match &remote.bwlimit {
        Some(s) => Arc::new(crate::bwlimit::ThrottledBackend::new(backend, s.clone())),
        None => backend,
    };
    // Many hosts, one bucket: this host's keys live under `<host_id>/`.
    let backend: Arc<dyn pronto_backends::Backend> = match &remote.host_id {
        Some(h) => Arc::new(NamespacedBackend::new(backend, h)),
        None => backend,
    };
    Ok(RemoteHandle {
        name: remote.name.clone(),
        backend,
        part_concurrency: remote.part_concurrency,
        retry: RetryPolicy::with_budget(remote.retry_budget),
    })
}

/// The line saying remote `name` could not be listed, without the error's own
/// `remote NAME:` prefix (said once).
pub fn unlisted(name: &str, e: &dyn std::fmt::Display) -> String {
    let e = e.to_string();
    let e = e.strip_prefix(&format!("remote {name}: ")).unwrap_or(&e);
    format!("remote {name} could not be listed: {e}")
}

/// The remotes a command works on: all, or the one `--remote NAME` names.
pub fn selected<'a>(cfg: &'a Config, only: Option<&str>) -> Result<Vec<&'a Remote>> {
    match only {
        None => Ok(cfg.remotes.iter().collect()),
        Some(name) => match cfg.remotes.iter().find(|r| r.name == name) {
            Some(r) => Ok(vec![r]),
            None => {
                let known: Vec<&str> = cfg.remotes.iter().map(|r| r.name.as_str()).collect();
                Err(usage(format!(
                    "no remote named '{name}' in {}; configured remotes: {}",
                    cfg.file.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )))
            }
        },
    }
}

/// What a versioned bucket without a noncurrent-version rule means for prune.
pub fn versioning_warning(v: &pronto_backends::Versioning, desc: &str) -> String {
    format!(
        "bucket versioning is {} on {desc}: a deleted (pruned) archive stays as a noncurrent version and keeps costing until a lifecycle rule expires noncurrent versions; none does",
        v.status
    )
}

/// The async runtime that remote work runs on: the one builder every command uses
/// (multi-threaded, with timers and I/O).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime (threads)")
}

/// Every object a remote holds under its root (this host's namespace), from one whole
/// listing with the remote's retries. A failed listing is an error naming the remote,
/// never an empty or partial list: nothing is ever deleted on the strength of a listing
/// that did not come back whole.
pub async fn list_all(r: &RemoteHandle) -> Result<Vec<ObjectMeta>> {
    retry(r.retry, &format!("listing of {}", r.name), || {
        r.backend.list("")
    })
    .await
    .with_context(|| format!("listing {}", r.backend.describe()))
}

/// What a remote holds of ours (archives, manifests, pins, pruned markers, the marker),
/// read from one whole listing: the one remote-state reader every command uses.
pub async fn read_state(r: &RemoteHandle, prefix: &str) -> Result<RemoteState> {
    Ok(crate::plan::remote_state(prefix, &list_all(r).await?))
}
