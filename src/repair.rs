//! Self-recovery of the backup folder: an archive renamed into place whose manifest
//! write was killed gets its manifest back, once the archive was hashed and read whole.
//! Called by `backup` and `push` under the folder lock.

use anyhow::Result;

use crate::catalog;
use crate::config::Config;
use crate::fsutil::{self, hostname};
use crate::manifest::{Manifest, FORMAT};

/// Give back its manifest to every local archive that has none (a run killed between
/// renaming the archive into place and writing its manifest), once the archive was
/// hashed and read whole (every entry, as `verify` does): only a complete, readable
/// archive under our name gets one. Its list of sources is unknown (empty); everything
/// else comes from its name and bytes. Returns what it repaired, one line each; an
/// archive that cannot be read is left alone with a warning. Call under the lock.
pub fn repair_orphans(cfg: &Config) -> Vec<String> {
    let Ok(all) = catalog::scan(&cfg.local) else {
        return Vec::new();
    };
    let mut repaired = Vec::new();
    for a in all
        .iter()
        .filter(|a| a.manifest.is_none() && a.problem.is_none())
    {
        match rebuild_manifest(cfg, a) {
            Ok(m) => {
                let line = format!(
                    "repaired: rebuilt the manifest of {} (hashed and read whole: {} bytes, sha256 {}; its source list is unknown)",
                    a.name.file, m.size, m.sha256
                );
                tracing::warn!("{line}");
                repaired.push(line);
            }
            Err(e) => tracing::warn!(
                "{} has no manifest and was not repaired: {e:#}; it is left alone",
                a.path.display()
            ),
        }
    }
    repaired
}

fn rebuild_manifest(cfg: &Config, a: &catalog::LocalArchive) -> Result<Manifest> {
    let xopts = crate::extract::ExtractOptions::for_archive(cfg, &a.path)?;
    crate::extract::check_readable_with(&a.path, &xopts)?;
    let (sha, size) = crate::archive::sha256_file(&a.path)?;
    let encrypted = a.name.file.ends_with(".age");
    let m = Manifest {
        format: FORMAT,
        id: a.name.id.clone(),
        file: a.name.file.clone(),
        created: a.name.time,
        size,
        sha256: hex::encode(sha),
        compression: if a.name.file.contains(".tar.zst") {
            "zstd"
        } else {
            "gzip"
        }
        .into(),
        encryption: if encrypted {
            crate::crypto::SCHEME_AGE.into()
        } else {
            crate::crypto::SCHEME_NONE.into()
        },
        recipient_fingerprints: Vec::new(),
        host: hostname(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        sources: Vec::new(),
        postgres: Vec::new(),
        redis: Vec::new(),
        safety: false,
        adopted: false,
        sealed: None,
    };
    fsutil::write_atomic(&a.manifest_path(), &m.to_json())?;
    Ok(m)
}
