//! `push --cleanup`: abort journaled multipart uploads that are no longer needed.
//!
//! A killed `push` leaves a journal in `<backup folder>/.journal/<remote>/` and an
//! unfinished upload on the remote, so that the next push resumes it. An upload is no
//! longer needed when its archive has left the local catalog (pruned, deleted) or the
//! remote already holds the archive complete; those are aborted on the remote and their
//! journals removed. Uploads that a later push would still resume are left alone.
//!
//! A push killed after the remote started an upload but before its id reached the
//! journal leaves an upload that no journal knows: each remote that can list its uploads
//! in progress (S3, file://, sftp://; not GCS) is asked for them, and those no journal
//! names are aborted too — but only when they are provably ours: the key is one of this
//! config's archive names (or its manifest) directly under this remote's root or host
//! namespace, and this host recorded an [`Intent`] for that archive before it started
//! the upload (and the push that recorded it is gone). Every other upload in progress —
//! another host's, another program's, a foreign `.x.tmp-*` file — is reported and left
//! alone: we delete only what we wrote.

use std::io::Write;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::catalog;
use crate::config::Config;
use crate::journal::{Intent, Journal, MAX_UPLOAD_FAILURES};
use crate::remotes;
use crate::retry::retry;

/// Abort the unneeded uploads of the selected remotes; returns how many were (or, with
/// `dry_run`, would be) aborted.
pub async fn run(
    cfg: &Config,
    only: Option<&str>,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<usize> {
    let local = catalog::scan(&cfg.local)?;
    let mut aborted = 0;
    for remote in remotes::selected(cfg, only)? {
        let dir = cfg.local.dir.join(".journal").join(&remote.name);
        for t in stale_temp_files(&dir) {
            writeln!(out, "{}: removing leftover {}", remote.name, t.display())?;
            if !dry_run {
                let _ = std::fs::remove_file(&t);
            }
        }
        let journals: Vec<_> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        let r = remotes::open(cfg, remote)?;
        // Every upload a journal names, aborted below or kept for the next push.
        let journaled: HashSet<String> = journals
            .iter()
            .filter_map(|p| Journal::load(p))
            .map(|j| j.upload_id.0)
            .collect();
        let intents = Intent::all(&dir);
        let (n, remaining) =
            unjournaled(&r, &cfg.local.prefix, &journaled, &intents, dry_run, out).await?;
        aborted += n;
        if let (Some(remaining), false) = (remaining, dry_run) {
            drop_spent_intents(&dir, &intents, &remaining)?;
        }
        if journals.is_empty() {
            continue;
        }
        let state = remotes::read_state(&r, &cfg.local.prefix).await?;
        for path in journals {
            let Some(j) = Journal::load(&path) else {
                writeln!(
                    out,
                    "{}: removing unreadable journal {}",
                    r.name,
                    path.display()
                )?;
                if !dry_run {
                    Journal::remove(&path)?;
                }
                continue;
            };
            let name = catalog::parse_name(&cfg.local.prefix, &j.key);
            let still_local = local.iter().any(|a| {
                a.name.file == j.key && a.manifest.as_ref().is_some_and(|m| m.sha256 == j.sha256)
            });
            let complete_on_remote = name
                .as_ref()
                .and_then(|n| state.archives.get(&n.id))
                .is_some_and(|a| a.complete() && a.size == Some(j.size));
            let why = if !still_local {
                "its archive is no longer in the local folder"
            } else if complete_on_remote {
                "the remote already holds the archive complete"
            } else if j.failures >= MAX_UPLOAD_FAILURES {
                "it failed every push that resumed it: the next push starts it over"
            } else {
                tracing::info!(
                    "{}: keeping the unfinished upload of {} ({} parts sent): the next push resumes it",
                    r.name,
                    j.key,
                    j.parts.len()
                );
                continue;
            };
            writeln!(
                out,
                "{}: {} the unfinished upload of {} ({} parts sent): {why}",
                r.name,
                if dry_run { "would abort" } else { "abort" },
                j.key,
                j.parts.len()
            )?;
            if !dry_run {
                retry(
                    r.retry,
                    &format!("abort of {} on {}", j.key, r.name),
                    || r.backend.abort_upload(&j.key, &j.upload_id),
                )
                .await
                .with_context(|| format!("{}: aborting the upload of {}", r.name, j.key))?;
                Journal::remove(&path)?;
                Intent::remove(&Intent::path(&cfg.local.dir, &r.name, &j.key))?;
            }
            aborted += 1;
        }
    }
    Ok(aborted)
}

/// Which archive of ours an upload's key belongs to: the archive file itself or its
/// manifest, directly under this remote's root (its host namespace, when it has one),
/// named by this config's archive pattern. `None`: not a name we write.
fn our_archive(prefix: &str, key: &str) -> Option<String> {
    if key.contains('/') {
        return None; // another host's namespace, or a folder that is not ours
    }
    let file = key.strip_suffix(".manifest.json").unwrap_or(key);
    catalog::parse_name(prefix, file).map(|n| n.file)
}

/// Why an upload that no journal names is left alone, or `None` when it is provably ours
/// (our name, an intent this host recorded before starting it, its process gone).
fn not_ours(prefix: &str, key: &str, intents: &[(PathBuf, Intent)]) -> Option<String> {
    let Some(file) = our_archive(prefix, key) else {
        return Some("not named like this host's archives (another program's?)".into());
    };
    let Some((_, intent)) = intents.iter().find(|(_, i)| i.key == file) else {
        return Some(
            "no push of this host recorded starting it (another host's or program's upload?)"
                .into(),
        );
    };
    if intent.pid != std::process::id() && process_runs(intent.pid as i32) {
        return Some(format!(
            "the push that started it (pid {}) still runs",
            intent.pid
        ));
    }
    None
}

/// Abort the uploads in progress on `r` that no journal names but that are provably
/// this host's ([`not_ours`]); the others are reported and left alone. Returns how many
/// were aborted and the keys of the uploads still in progress afterwards. A remote that
/// cannot list them is skipped (said at debug); one whose listing fails is warned about
/// and skipped, so that the journaled cleanup still runs (and `None` is returned for the
/// keys: nothing is known about them).
async fn unjournaled(
    r: &crate::replicate::RemoteHandle,
    prefix: &str,
    journaled: &HashSet<String>,
    intents: &[(PathBuf, Intent)],
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<(usize, Option<HashSet<String>>)> {
    let listed = retry(
        r.retry,
        &format!("listing of uploads in progress on {}", r.name),
        || r.backend.list_uploads(""),
    )
    .await;
    let uploads = match listed {
        Ok(Some(v)) => v,
        Ok(None) => {
            tracing::debug!(
                "{}: cannot list uploads in progress: only journaled ones are cleaned up",
                r.name
            );
            return Ok((0, None));
        }
        Err(e) => {
            tracing::warn!(
                "{}: uploads in progress not cleaned up: listing them failed: {e}",
                r.name
            );
            return Ok((0, None));
        }
    };
    let mut n = 0;
    let mut remaining = HashSet::new();
    for (key, id) in uploads {
        if journaled.contains(&id.0) {
            remaining.insert(key);
            continue;
        }
        if let Some(why) = not_ours(prefix, &key, intents) {
            writeln!(
                out,
                "{}: leaving the unfinished upload of {key} alone: {why}",
                r.name
            )?;
            remaining.insert(key);
            continue;
        }
        writeln!(
            out,
            "{}: {} the unfinished upload of {key}: no journal knows it (a push of this \
             host was stopped before it could record it)",
            r.name,
            if dry_run { "would abort" } else { "abort" },
        )?;
        if !dry_run {
            retry(r.retry, &format!("abort of {key} on {}", r.name), || {
                r.backend.abort_upload(&key, &id)
            })
            .await
            .with_context(|| format!("{}: aborting the upload of {key}", r.name))?;
        } else {
            remaining.insert(key);
        }
        n += 1;
    }
    Ok((n, Some(remaining)))
}

/// Drop the intents that prove nothing any more: their push is gone, no journal
/// continues their upload, and no upload in progress on the remote has their key.
fn drop_spent_intents(
    dir: &Path,
    intents: &[(PathBuf, Intent)],
    remaining: &HashSet<String>,
) -> Result<()> {
    for (path, i) in intents {
        let live = i.pid != std::process::id() && process_runs(i.pid as i32);
        let journaled = dir.join(format!("{}.json", i.key)).exists();
        let in_progress = remaining.contains(&i.key)
            || remaining.contains(&crate::manifest::Manifest::file_name_for(&i.key));
        if !live && !journaled && !in_progress {
            Intent::remove(path)?;
        }
    }
    Ok(())
}

/// Temp files `fsutil::write_atomic` left in `dir` (`.NAME.tmp-PID-NANOS`) when a
/// process was killed between writing and renaming a journal: those of processes that
/// no longer run.
fn stale_temp_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                return false;
            };
            let Some(rest) = name
                .strip_prefix('.')
                .and_then(|n| n.split_once(".tmp-"))
                .map(|(_, r)| r)
            else {
                return false;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                return false;
            };
            !process_runs(pid)
        })
        .collect()
}

/// Whether a process with this id exists (signal 0 checks without sending).
fn process_runs(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for the process; it has no effect.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_of_dead_processes_are_found_live_ones_and_journals_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = dir.path().join(format!(".a.json.tmp-{dead}-123"));
        let live = dir
            .path()
            .join(format!(".b.json.tmp-{}-456", std::process::id()));
        let journal = dir.path().join("c.json");
        for p in [&stale, &live, &journal] {
            std::fs::write(p, b"{}").unwrap();
        }
        assert_eq!(stale_temp_files(dir.path()), vec![stale]);
    }
}
