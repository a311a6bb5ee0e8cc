//! `verify [<id>] [--local | --remote NAME] [--sample 10%] [--deep]`: check archives
//! against their manifests, locally and on every remote, without restoring anything
//! (`verify <id> --restore-test` is the restore drill, in [`crate::cmd::restore_drill`]).
//!
//! - Local: each archive's size and SHA-256 against its manifest, then decompress it and
//!   read every tar entry ([`crate::extract::check_readable_with`]). An encrypted archive
//!   is read with the configured identity (or `--identity`); without one its hash is
//!   checked and its contents are reported as not checked.
//! - Remote: every manifest against the archive object's size and the SHA-256 the backend
//!   recorded (listing or `head`), and against the local manifest of the same id; archives
//!   without a manifest (incomplete uploads), manifests without an archive, and objects
//!   that are not archives (orphans) are reported.
//! - `--deep`: download every remote archive and re-hash it.
//! - `--sample P`: the expensive checks (local hash and read, remote download) cover a
//!   random P of the archives (at least one), so that a weekly job covers everything over
//!   time; the cheap checks always cover all.
//!
//! Exit 4 when anything does not match (each mismatch names the archive and where it is),
//! 1 when a location could not be checked, else 0.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::catalog::{self, LocalArchive};
use crate::config::Config;
use crate::error::{usage, Exit};
use crate::manifest::Manifest;
use crate::plan::RemoteArchive;
use crate::remotes;
use crate::replicate::{self, RemoteHandle};
use crate::retry::retry;

/// What `verify` checks.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// One archive (id, name or `latest`: the newest at each location); `None`: all.
    pub id: Option<String>,
    /// Only the local folder.
    pub local: bool,
    /// Only this remote (and not the local folder).
    pub remote: Option<String>,
    /// Share of archives the expensive checks cover (0 < s <= 1); `None`: all.
    pub sample: Option<f64>,
    /// Download remote archives and re-hash them.
    pub deep: bool,
    pub json: bool,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Worth knowing, not a failure (incomplete upload, orphans, not checked).
    Warning,
    /// Does not match its manifest: exit 4.
    Mismatch,
    /// Could not be checked: exit 1.
    Error,
}

/// One archive at one location.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `local` or the remote's name.
    pub location: String,
    /// The archive's file name (or `-` for the location itself).
    pub file: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// `--sample 10%` or `--sample 0.1` → 0.1.
pub fn parse_sample(s: &str) -> std::result::Result<f64, String> {
    let s = s.trim();
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("'{s}': expected a share like 10% or 0.1"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "'{s}': the share must be above 0% and at most 100%"
        ))
    }
}

/// Run `verify`; returns the exit code.
pub async fn run(cfg: &Config, opts: &VerifyOptions, out: &mut dyn Write) -> Result<Exit> {
    let wanted = match opts.id.as_deref() {
        None | Some("latest") => None,
        Some(s) => Some(catalog::id_from_user(&cfg.local.prefix, s).ok_or_else(|| {
            usage(format!(
                "'{s}' is not an archive id: give `latest`, an id like 20260201-170521, or a name like {}-20260201-170521.tar.gz",
                cfg.local.prefix
            ))
        })?),
    };
    let latest = opts.id.as_deref() == Some("latest");
    let remotes = if opts.local {
        Vec::new()
    } else {
        remotes::selected(cfg, opts.remote.as_deref())?
    };
    let mut checks = Vec::new();
    let local_all = catalog::scan(&cfg.local)?;
    let local_manifests: LocalIndex = local_all
        .iter()
        .filter_map(|a| {
            a.manifest
                .clone()
                .map(|m| (a.name.id.clone(), (m, a.path.clone())))
        })
        .collect();

    if opts.remote.is_none() {
        let mut mine: Vec<&LocalArchive> = local_all
            .iter()
            .filter(|a| wanted.as_ref().is_none_or(|id| &a.name.id == id))
            .collect();
        if latest {
            mine = mine
                .into_iter()
                .rfind(|a| {
                    a.manifest.is_some()
                        && !a.is_safety()
                        && !catalog::named_in_future(a.name.time, chrono::Utc::now())
                })
                .into_iter()
                .collect();
        }
        let picked = sample(mine.len(), opts.sample);
        for (i, a) in mine.into_iter().enumerate() {
            let c = check_local(cfg, a, picked.contains(&i)).await;
            print_check(&c, opts.json, out)?;
            checks.push(c);
        }
    }

    for remote in remotes {
        let found = match remotes::open_read_only(remote) {
            Ok(r) => {
                check_remote(
                    cfg,
                    &r,
                    wanted.as_deref(),
                    latest,
                    opts,
                    &local_manifests,
                    out,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match found {
            Ok(v) => checks.extend(v),
            Err(e) => {
                let c = Check {
                    location: remote.name.clone(),
                    file: "-".into(),
                    outcome: Outcome::Error,
                    detail: format!("not checked: {e:#}"),
                };
                print_check(&c, opts.json, out)?;
                checks.push(c);
            }
        }
    }

    if let Some(id) = &wanted {
        if checks.iter().all(|c| c.file == "-") {
            return Err(usage(format!(
                "archive {id} was found nowhere verify looked"
            )));
        }
    }
    let count = |o: Outcome| checks.iter().filter(|c| c.outcome == o).count();
    let code = if count(Outcome::Mismatch) > 0 {
        Exit::VerifyFailed
    } else if count(Outcome::Error) > 0 {
        Exit::Error
    } else {
        Exit::Ok
    };
    if opts.json {
        let v = serde_json::json!({ "exit_code": code, "checks": checks });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out,
            "\nverify: {} checked: {} ok, {} mismatch(es), {} warning(s), {} not checked",
            checks.len(),
            count(Outcome::Ok),
            count(Outcome::Mismatch),
            count(Outcome::Warning),
            count(Outcome::Error)
        )?;
        for c in checks.iter().filter(|c| c.outcome == Outcome::Mismatch) {
            writeln!(out, "MISMATCH {}: {}: {}", c.location, c.file, c.detail)?;
        }
    }
    Ok(code)
}

fn print_check(c: &Check, json: bool, out: &mut dyn Write) -> Result<()> {
    if !json {
        let tag = match c.outcome {
            Outcome::Ok => "ok",
            Outcome::Warning => "WARNING",
            Outcome::Mismatch => "MISMATCH",
            Outcome::Error => "ERROR",
        };
        writeln!(out, "{}: {}: {tag}: {}", c.location, c.file, c.detail)?;
        out.flush()?;
    }
    Ok(())
}

/// Indices of a random `share` of `n` items (at least one); all of them without a share.
fn sample(n: usize, share: Option<f64>) -> HashSet<usize> {
    let Some(share) = share else {
        return (0..n).collect();
    };
    let k = ((n as f64 * share).ceil() as usize).clamp(n.min(1), n);
    let mut idx: Vec<usize> = (0..n).collect();
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx.into_iter().collect()
}

fn check(location: &str, file: &str, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check {
        location: location.to_string(),
        file: file.to_string(),
        outcome,
        detail: detail.into(),
    }
}

/// One local archive: size, then (when `full`) hash and contents.
async fn check_local(cfg: &Config, a: &LocalArchive, full: bool) -> Check {
    let file = a.name.file.clone();
    let shown = a.path.display().to_string();
    let Some(m) = a.manifest.clone() else {
        return check(
            "local",
            &file,
            Outcome::Warning,
            format!("{shown}: incomplete: no manifest (an interrupted backup, or not ours); never pushed or restored; if another script made it, `pronto-offsite adopt` takes it in"),
        );
    };
    let size = match std::fs::metadata(&a.path) {
        Ok(md) => md.len(),
        Err(e) => return check("local", &file, Outcome::Error, format!("{shown}: {e}")),
    };
    if size != m.size {
        return check(
            "local",
            &file,
            Outcome::Mismatch,
            format!("{shown}: {size} bytes, its manifest says {}", m.size),
        );
    }
    if !full {
        return check(
            "local",
            &file,
            Outcome::Ok,
            "size ok (not in this sample: hash and contents not checked)",
        );
    }
    let path = a.path.clone();
    let cfg2 = cfg.clone();
    let res = tokio::task::spawn_blocking(move || local_contents(&cfg2, &path, &m)).await;
    match res {
        Ok(Ok((outcome, detail))) => check("local", &file, outcome, format!("{shown}: {detail}")),
        Ok(Err(e)) => check("local", &file, Outcome::Error, format!("{shown}: {e:#}")),
        Err(e) => check("local", &file, Outcome::Error, format!("{shown}: {e}")),
    }
}

/// Hash the archive, then read every entry (decrypting with the configured identity).
fn local_contents(cfg: &Config, path: &Path, m: &Manifest) -> Result<(Outcome, String)> {
    let (sha, _) = crate::archive::sha256_file(path)?;
    if hex::encode(sha) != m.sha256 {
        return Ok((
            Outcome::Mismatch,
            format!(
                "sha256 {}, its manifest says {}",
                hex::encode(sha),
                m.sha256
            ),
        ));
    }
    let head = crate::crypto::read_head(path, crate::crypto::HEADER_PROBE as usize)?;
    if crate::crypto::is_age(&head) && cfg.encryption.identity_file.is_none() {
        return Ok((
            Outcome::Ok,
            "size and sha256 ok; contents not checked: encrypted, give --identity (or set [encryption] identity_file)".into(),
        ));
    }
    let opts = crate::extract::ExtractOptions::for_archive(cfg, path)?;
    match crate::extract::check_readable_with(path, &opts) {
        Ok(s) => Ok((
            Outcome::Ok,
            format!(
                "size and sha256 ok; every entry read ({} files, {} folders, {} symlinks)",
                s.files, s.dirs, s.symlinks
            ),
        )),
        Err(e) => Ok((
            Outcome::Mismatch,
            format!("sha256 matches its manifest but the contents do not read: {e:#}"),
        )),
    }
}

/// One remote: every manifest against its archive object, and what is incomplete or foreign.
/// The local archives with a manifest, by id: their manifest and path (the path rebuilds
/// a store's composite checksum).
type LocalIndex = BTreeMap<String, (Manifest, std::path::PathBuf)>;

async fn check_remote(
    cfg: &Config,
    r: &RemoteHandle,
    wanted: Option<&str>,
    latest: bool,
    opts: &VerifyOptions,
    local: &LocalIndex,
    out: &mut dyn Write,
) -> Result<Vec<Check>> {
    let state = remotes::read_state(r, &cfg.local.prefix).await?;
    let mut archives: Vec<&RemoteArchive> = state
        .archives
        .values()
        .filter(|a| wanted.is_none_or(|id| a.name.id == id))
        .collect();
    if latest {
        archives = archives
            .into_iter()
            .rfind(|a| a.complete() && !catalog::named_in_future(a.name.time, chrono::Utc::now()))
            .into_iter()
            .collect();
    }
    let complete: Vec<usize> = (0..archives.len())
        .filter(|&i| archives[i].complete())
        .collect();
    let picked: HashSet<usize> = if opts.deep {
        sample(complete.len(), opts.sample)
            .into_iter()
            .map(|i| complete[i])
            .collect()
    } else {
        HashSet::new()
    };
    let mut checks = Vec::new();
    for (i, a) in archives.iter().enumerate() {
        let c = check_remote_archive(r, a, picked.contains(&i), opts.deep, local).await;
        print_check(&c, opts.json, out)?;
        checks.push(c);
    }
    if wanted.is_none() && !latest && state.foreign > 0 {
        let c = check(
            &r.name,
            "-",
            Outcome::Warning,
            format!(
                "{} object(s) that are not {}-* archives or their manifests (orphans, other hosts' or other tools' files): left alone",
                state.foreign, cfg.local.prefix
            ),
        );
        print_check(&c, opts.json, out)?;
        checks.push(c);
    }
    Ok(checks)
}

async fn check_remote_archive(
    r: &RemoteHandle,
    a: &RemoteArchive,
    deep: bool,
    deep_asked: bool,
    local: &LocalIndex,
) -> Check {
    let loc = r.name.as_str();
    let file = a.name.file.as_str();
    let Some(size) = a.size else {
        return check(
            loc,
            file,
            Outcome::Mismatch,
            "manifest without its archive: the archive object is missing",
        );
    };
    if !a.has_manifest {
        return check(
            loc,
            file,
            Outcome::Warning,
            "incomplete upload: archive without its manifest (never restored; the next push completes or replaces it)",
        );
    }
    let mkey = Manifest::file_name_for(file);
    let m = match retry(r.retry, &format!("download of {mkey}"), || async {
        pronto_backends::collect(r.backend.get(&mkey, None).await?).await
    })
    .await
    {
        Ok(bytes) => match Manifest::from_json(&bytes, &format!("{loc}:{mkey}")) {
            Ok(m) => m,
            Err(e) => {
                return check(
                    loc,
                    file,
                    Outcome::Mismatch,
                    format!("unreadable manifest: {e:#}"),
                )
            }
        },
        Err(e) => return check(loc, file, Outcome::Error, format!("reading {mkey}: {e}")),
    };
    if m.file != file || m.id != a.name.id {
        return check(
            loc,
            file,
            Outcome::Mismatch,
            format!("its manifest describes {} instead", m.file),
        );
    }
    if size != m.size {
        return check(
            loc,
            file,
            Outcome::Mismatch,
            format!("{size} bytes, its manifest says {}", m.size),
        );
    }
    let local_copy = local.get(&a.name.id);
    if let Some((lm, _)) = local_copy {
        if lm.sha256 != m.sha256 {
            return check(
                loc,
                file,
                Outcome::Mismatch,
                format!(
                    "its manifest says sha256 {}, the local manifest {}",
                    m.sha256, lm.sha256
                ),
            );
        }
    }
    let proven = match proven_by_store(r, file, size, &m, local_copy).await {
        Ok(p) => p,
        Err(c) => return c,
    };
    let recorded = match a.sha256 {
        Some(h) => Some(h),
        None => match retry(r.retry, &format!("head of {file}"), || r.backend.head(file)).await {
            Ok(meta) => meta.sha256,
            Err(e) => return check(loc, file, Outcome::Error, format!("head: {e}")),
        },
    };
    if let Some(h) = recorded {
        if hex::encode(h) != m.sha256 {
            return check(
                loc,
                file,
                Outcome::Mismatch,
                format!(
                    "the backend recorded sha256 {}, its manifest says {}",
                    hex::encode(h),
                    m.sha256
                ),
            );
        }
    }
    let mut detail = match recorded {
        _ if proven => {
            "size and the checksum the store computed from its bytes match the manifest".to_string()
        }
        Some(_) => "size and recorded sha256 match the manifest".to_string(),
        None => {
            "size matches the manifest (the backend records no hash: --deep reads it)".to_string()
        }
    };
    if deep {
        match replicate::hash_remote(r, file).await {
            Ok((_, n)) if n != m.size => {
                return check(
                    loc,
                    file,
                    Outcome::Mismatch,
                    format!("downloaded {n} bytes, its manifest says {}", m.size),
                )
            }
            Ok((sha, _)) if hex::encode(sha) != m.sha256 => {
                return check(
                    loc,
                    file,
                    Outcome::Mismatch,
                    format!(
                        "downloaded copy has sha256 {}, its manifest says {}",
                        hex::encode(sha),
                        m.sha256
                    ),
                )
            }
            Ok(_) => detail.push_str("; downloaded and re-hashed: ok"),
            Err(e) => return check(loc, file, Outcome::Error, format!("downloading: {e:#}")),
        }
    } else if deep_asked {
        detail.push_str("; not in this --deep sample");
    }
    check(loc, file, Outcome::Ok, detail)
}

/// Whether the checksum the store computed from the bytes it holds proves them (S3's
/// ChecksumSHA256; the hash recorded beside the object is only what we wrote there).
/// `Err` is the check to report: a mismatch, or the checksum could not be read.
async fn proven_by_store(
    r: &RemoteHandle,
    file: &str,
    size: u64,
    m: &Manifest,
    local_copy: Option<&(Manifest, std::path::PathBuf)>,
) -> std::result::Result<bool, Check> {
    let loc = r.name.as_str();
    let sha = m.sha256_bytes().map_err(|e| {
        check(
            loc,
            file,
            Outcome::Mismatch,
            format!("unreadable manifest: {e:#}"),
        )
    })?;
    let path = local_copy.map(|(_, p)| p.as_path());
    match replicate::store_checksum_proves(r, file, size, sha, path).await {
        Ok(proven) => Ok(proven),
        Err(e) if crate::error::is_verification(&e) => {
            Err(check(loc, file, Outcome::Mismatch, format!("{e:#}")))
        }
        Err(e) => Err(check(
            loc,
            file,
            Outcome::Error,
            format!("reading the store's checksum: {e:#}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_shares() {
        assert_eq!(parse_sample("10%").unwrap(), 0.1);
        assert_eq!(parse_sample("0.25").unwrap(), 0.25);
        assert_eq!(parse_sample("100%").unwrap(), 1.0);
        for bad in ["0%", "0", "150%", "x", "-5%"] {
            assert!(parse_sample(bad).is_err(), "{bad}");
        }
        assert_eq!(sample(10, None).len(), 10);
        assert_eq!(sample(10, Some(0.1)).len(), 1);
        assert_eq!(sample(10, Some(0.25)).len(), 3);
        assert_eq!(sample(3, Some(0.01)).len(), 1, "at least one");
        assert_eq!(sample(0, Some(0.5)).len(), 0);
        assert!(sample(100, Some(0.3)).iter().all(|&i| i < 100));
        // Over many runs every index gets picked: a weekly job covers everything.
        let mut seen = HashSet::new();
        for _ in 0..200 {
            seen.extend(sample(20, Some(0.1)));
        }
        assert_eq!(seen.len(), 20);
    }
}
