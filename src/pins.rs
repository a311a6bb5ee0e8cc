//! Pins: archives kept regardless of the retention policy, on every location.
//!
//! # Where pins live
//! One small JSON document, `PREFIX.pins.json`, stored
//! - locally at `<local.dir>/PREFIX.pins.json` (written atomically under the folder lock), and
//! - on every remote as the object `PREFIX.pins.json` (beside the archives).
//!
//! ```json
//! {"format": 1, "prefix": "pronto-app-backup", "pins": ["20260201-170521"]}
//! ```
//!
//! `pin` and `unpin` update the local file and then every remote's object. A prune of a
//! location keeps the union of the local pins and that location's own pins (a local
//! prune: the local pins and those of every remote it could list), so a pin recorded
//! only locally (a remote was unreachable during `pin`) still protects every remote
//! pruned from this host, and a pin on a remote protects it from a host that lost its
//! local folder. An `unpin` that could not reach a remote leaves the pin there: the
//! safe direction (it keeps more); run `unpin` again. The name is prefix-scoped, like
//! the archives, so hosts sharing a bucket under different prefixes never see each
//! other's pins. The name matches no archive name, so prune never touches it.

use crate::error::Exit;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use pronto_backends::{sha256_of, BackendError};
use serde::{Deserialize, Serialize};

use crate::catalog;
use crate::config::{Config, Local};
use crate::error::usage;
use crate::remotes;
use crate::replicate::RemoteHandle;
use crate::retry::retry;

/// Version of the pins document.
pub const FORMAT: u32 = 1;

pub use crate::catalog::pins_file_name as file_name;

/// The local pins file.
pub fn local_path(local: &Local) -> PathBuf {
    local.dir.join(file_name(&local.prefix))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    format: u32,
    prefix: String,
    pins: Vec<String>,
}

/// Parse a pins document; `what` names it in errors. A document that cannot be read
/// is an error, never "no pins".
pub fn parse(bytes: &[u8], prefix: &str, what: &str) -> Result<BTreeSet<String>> {
    let doc: Doc =
        serde_json::from_slice(bytes).with_context(|| format!("{what}: not a valid pins file"))?;
    if doc.format > FORMAT {
        bail!(
            "{what}: pins format {} is newer than this pronto-offsite understands ({FORMAT}); upgrade pronto-offsite",
            doc.format
        );
    }
    if doc.prefix != prefix {
        bail!(
            "{what}: pins of prefix '{}', expected '{prefix}'",
            doc.prefix
        );
    }
    let mut out = BTreeSet::new();
    for id in doc.pins {
        if catalog::parse_id(&id).is_none() {
            bail!("{what}: '{id}' is not an archive id (YYYYMMDD-HHMMSS)");
        }
        out.insert(id);
    }
    Ok(out)
}

/// The pins document for a set of ids.
pub fn to_json(prefix: &str, pins: &BTreeSet<String>) -> Vec<u8> {
    let doc = Doc {
        format: FORMAT,
        prefix: prefix.to_string(),
        pins: pins.iter().cloned().collect(),
    };
    let mut v = serde_json::to_vec_pretty(&doc).expect("pins serialize");
    v.push(b'\n');
    v
}

/// The local pins (empty when there is no pins file).
pub fn read_local(local: &Local) -> Result<BTreeSet<String>> {
    let path = local_path(local);
    match std::fs::read(&path) {
        Ok(bytes) => parse(&bytes, &local.prefix, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replace the local pins (removes the file when `pins` is empty). Call under the
/// folder lock.
pub fn write_local(local: &Local, pins: &BTreeSet<String>) -> Result<()> {
    let path = local_path(local);
    if pins.is_empty() {
        match std::fs::remove_file(&path) {
            Ok(()) => crate::fsutil::sync_dir(&local.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    } else {
        crate::fsutil::create_private_dir(&local.dir)?;
        crate::fsutil::write_atomic(&path, &to_json(&local.prefix, pins))
    }
}

/// A remote's pins (empty when it has no pins object). An error when the object exists
/// but cannot be read: a prune must not run on a location whose pins it does not know.
pub async fn read_remote(r: &RemoteHandle, prefix: &str) -> Result<BTreeSet<String>> {
    let key = file_name(prefix);
    let res = retry(
        r.retry,
        &format!("download of {key} from {}", r.name),
        || async { pronto_backends::collect(r.backend.get(&key, None).await?).await },
    )
    .await;
    match res {
        Ok(bytes) => parse(&bytes, prefix, &format!("{}:{key}", r.name)),
        Err(BackendError::NotFound(_)) => Ok(BTreeSet::new()),
        Err(e) => Err(e).with_context(|| format!("{}: reading {key}", r.name)),
    }
}

/// Replace a remote's pins (deletes the object when `pins` is empty).
pub async fn write_remote(r: &RemoteHandle, prefix: &str, pins: &BTreeSet<String>) -> Result<()> {
    let key = file_name(prefix);
    if pins.is_empty() {
        retry(r.retry, &format!("delete of {key} on {}", r.name), || {
            r.backend.delete(&key)
        })
        .await
        .with_context(|| format!("{}: deleting {key}", r.name))?;
        return Ok(());
    }
    let body = Bytes::from(to_json(prefix, pins));
    let sha = sha256_of(&body);
    retry(r.retry, &format!("upload of {key} to {}", r.name), || {
        r.backend.put(&key, body.clone(), sha)
    })
    .await
    .with_context(|| format!("{}: writing {key}", r.name))?;
    Ok(())
}

/// `pin <id>` (`pin = true`) or `unpin <id>`: update the local pins, then every
/// remote's. Returns the exit code: 0, or 3 when some remote could not be updated
/// (1 when none could; the local pins are always updated first).
/// The archive id that `what` names: an id, an archive's file name, or `latest` (the
/// newest archive in the backup folder, as for `verify latest`).
fn resolve_id(cfg: &Config, what: &str) -> Result<String> {
    if what == "latest" {
        return catalog::scan(&cfg.local)?
            .into_iter()
            .map(|a| a.name.id)
            .max()
            .ok_or_else(|| {
                usage(format!(
                    "no archive in {}: `latest` names the newest local archive; give an id like 20260201-170521",
                    cfg.local.dir.display()
                ))
            });
    }
    catalog::id_from_user(&cfg.local.prefix, what).ok_or_else(|| {
        usage(format!(
            "'{what}' is not an archive id: give `latest`, an id like 20260201-170521, or a name like {}-20260201-170521.tar.gz",
            cfg.local.prefix
        ))
    })
}

pub async fn run(cfg: &Config, what: &str, pin: bool, out: &mut dyn Write) -> Result<Exit> {
    let verb = if pin { "pin" } else { "unpin" };
    let id = resolve_id(cfg, what)?;

    // The whole run (local pins, then every remote's) under the one lock: a prune that
    // runs meanwhile has read its pins already, so this waits for it to finish.
    let _lock = crate::lock::acquire(&cfg.local.dir, verb, crate::lock::DEFAULT_WAIT)?;
    let changed = {
        let mut set = read_local(&cfg.local)?;
        let changed = if pin {
            set.insert(id.clone())
        } else {
            set.remove(&id)
        };
        if changed {
            write_local(&cfg.local, &set)?;
        }
        if pin && !catalog::scan(&cfg.local)?.iter().any(|a| a.name.id == id) {
            tracing::warn!(
                "no local archive has id {id}; pinned anyway: the pin keeps it on every location that holds it"
            );
        }
        changed
    };
    writeln!(
        out,
        "local: {}",
        match (pin, changed) {
            (true, true) => format!("pinned {id}"),
            (true, false) => format!("{id} was already pinned"),
            (false, true) => format!("unpinned {id}"),
            (false, false) => format!("{id} was not pinned"),
        }
    )?;

    let mut failed = 0;
    for remote in &cfg.remotes {
        let res = async {
            let r = remotes::open(cfg, remote)?;
            let mut set = read_remote(&r, &cfg.local.prefix).await?;
            let changed = if pin {
                set.insert(id.clone())
            } else {
                set.remove(&id)
            };
            if changed {
                write_remote(&r, &cfg.local.prefix, &set).await?;
            }
            anyhow::Ok(changed)
        }
        .await;
        match res {
            Ok(true) => writeln!(out, "{}: {verb}ned {id}", remote.name)?,
            Ok(false) => writeln!(out, "{}: unchanged", remote.name)?,
            Err(e) => {
                failed += 1;
                tracing::error!("remote {}: {e:#}", remote.name);
                writeln!(
                    out,
                    "{}: FAILED: {e:#}{}",
                    remote.name,
                    if pin {
                        " (prunes from this host still honour the local pin)"
                    } else {
                        " (the pin stays there; run unpin again)"
                    }
                )?;
            }
        }
    }
    out.flush()?;
    Ok(Exit::for_locations(failed, cfg.remotes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_reject_garbage() {
        let set: BTreeSet<String> = ["20260201-170521".to_string()].into();
        let json = to_json("p", &set);
        assert_eq!(parse(&json, "p", "x").unwrap(), set);
        assert!(parse(&json, "q", "x")
            .unwrap_err()
            .to_string()
            .contains("prefix"));
        assert!(parse(b"{}", "p", "x").is_err());
        assert!(parse(b"not json", "p", "x").is_err());
        let bad = br#"{"format":1,"prefix":"p","pins":["yesterday"]}"#;
        assert!(parse(bad, "p", "x")
            .unwrap_err()
            .to_string()
            .contains("yesterday"));
        let newer = br#"{"format":9,"prefix":"p","pins":[]}"#;
        assert!(parse(newer, "p", "x")
            .unwrap_err()
            .to_string()
            .contains("newer"));
    }

    #[test]
    fn pins_name_is_never_an_archive_name() {
        let f = file_name("pronto-app-backup");
        assert_eq!(f, "pronto-app-backup.pins.json");
        assert!(catalog::parse_name("pronto-app-backup", &f).is_none());
    }
}
