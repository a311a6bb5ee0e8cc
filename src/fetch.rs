//! Fetching an archive (`pull <id|latest>`, and the restore and the drill before they
//! extract): from the local folder when its copy is intact, else from a remote, verified
//! against its manifest before anything is extracted, then extracted safely.
//!
//! An age-encrypted archive is checked against the identity (`--identity FILE` or
//! `[encryption] identity_file`) from its first bytes on the remote before anything is
//! downloaded: a missing identity (when the archive is to be extracted) or a wrong one
//! fails with exit 2 and nothing written. Without `--to`, an encrypted archive may be
//! pulled without an identity (it stays encrypted on disk).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::catalog::{self, PARTIAL};
use crate::config::Config;
use crate::error::{usage, verification};
use crate::fsutil;
use crate::manifest::Manifest;
use crate::plan;
use crate::remotes;
use crate::replicate::{self, RemoteHandle};
use crate::retry::retry;

/// What a pull did (`pull --json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pulled {
    pub id: String,
    pub file: String,
    pub remote: String,
    /// The local archive.
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// Always true: a copy that does not match its manifest is an error.
    pub verified: bool,
    /// False when an intact local copy was used.
    pub downloaded: bool,
    /// `--to`: where it was extracted, and what.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extracted_to: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extracted: Option<ExtractedCounts>,
}

/// Entries extracted by `pull --to`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtractedCounts {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Pull and optionally extract into `to`. Returns the local archive path.
pub async fn run(
    cfg: &Config,
    what: &str,
    only: Option<&str>,
    to: Option<&Path>,
    out: &mut dyn Write,
) -> Result<PathBuf> {
    Ok(run_report(cfg, what, only, to, out).await?.path)
}

/// [`run`], returning what was done (for `--json`).
pub async fn run_report(
    cfg: &Config,
    what: &str,
    only: Option<&str>,
    to: Option<&Path>,
    out: &mut dyn Write,
) -> Result<Pulled> {
    run_inner(cfg, what, only, to, to.is_some(), out).await
}

/// Pull an archive that the caller will extract (restore, verify): an encrypted one
/// needs an identity, checked before anything is downloaded. Returns the local path.
pub async fn run_for_extract(
    cfg: &Config,
    what: &str,
    only: Option<&str>,
    out: &mut dyn Write,
) -> Result<PathBuf> {
    Ok(run_inner(cfg, what, only, None, true, out).await?.path)
}

/// What to say when the selected remotes were listed and hold no archive at all: for
/// another host (`pull --host H`), that H has none there, and where to see which hosts do.
fn no_archives_message(selected: &[&crate::config::Remote]) -> String {
    let host = selected
        .first()
        .and_then(|r| r.host_id.clone())
        .unwrap_or_else(|| crate::host_namespace::FLAT.to_string());
    format!(
        "host '{host}' has no archives on {} (`pronto-offsite list --all-hosts` shows every host's archives; {} is the flat layout)",
        names(selected),
        crate::host_namespace::FLAT
    )
}

async fn run_inner(
    cfg: &Config,
    what: &str,
    only: Option<&str>,
    to: Option<&Path>,
    need_key: bool,
    out: &mut dyn Write,
) -> Result<Pulled> {
    let wanted = wanted_id(cfg, what)?;
    if let Some(to) = to {
        check_destination(to)?;
    }
    // A complete local copy whose hash matches its manifest is the source: no remote is
    // asked (none need be reachable). `--remote NAME` forces one.
    if only.is_none() {
        if let Some(path) = crate::catalog::local_intact(cfg, what, false, out)? {
            return from_local(cfg, path, to, out);
        }
    }
    // `latest` is the newest archive anywhere: the newest complete local one (not a safety
    // backup, not named in the future) unless a remote holds a newer one. So a restore of
    // `latest` works with no remote reachable, and before the first push.
    let local_newest = match (&wanted, only) {
        (None, None) => newest_local(cfg)?,
        _ => None,
    };
    let selected = remotes::selected(cfg, only)?;
    if selected.is_empty() {
        if let Some((id, _)) = &local_newest {
            if let Some(path) = crate::catalog::local_intact(cfg, id, false, out)? {
                return from_local(cfg, path, to, out);
            }
        }
        return Err(usage(format!(
            "{}: no [[remotes]] configured: nowhere to pull from",
            cfg.file.display()
        )));
    }

    let search = find_on_remotes(cfg, &selected, wanted.as_deref()).await;
    if let Some((id, time)) = &local_newest {
        let remote_newer = search
            .found
            .as_ref()
            .is_some_and(|(_, a)| a.name.time > *time);
        if !remote_newer {
            if !search.errors.is_empty() {
                writeln!(
                    out,
                    "not every remote could be listed ({}); the newest local archive is {id}",
                    search.errors.join("; ")
                )?;
            }
            if let Some(path) = crate::catalog::local_intact(cfg, id, false, out)? {
                return from_local(cfg, path, to, out);
            }
        }
    }
    let Some((r, archive)) = search.found else {
        bail!(not_found_message(
            cfg,
            &selected,
            wanted.as_deref(),
            search.any_archive,
            &search.errors
        ));
    };
    let file = archive.name.file.clone();
    writeln!(
        out,
        "pulling {file} from {} ({})",
        r.name,
        r.backend.describe()
    )?;
    let (manifest, identities) = fetch_manifest(cfg, &r, &archive, need_key).await?;

    let _lock = crate::lock::acquire(&cfg.local.dir, "pull", crate::lock::DEFAULT_WAIT)?;
    let extract = to.map(|to| {
        let mut opts = crate::extract::ExtractOptions {
            identities,
            expected_recipients: manifest.recipient_fingerprints.clone(),
            ..Default::default()
        };
        opts.limit(Some(&manifest), cfg.max_extract_size);
        (to, opts)
    });
    let placed = place_locally(cfg, &r, &archive, only, &manifest, extract, out).await?;
    let (path, downloaded, extracted) = (placed.path, placed.downloaded, placed.extracted);
    writeln!(out, "{}", path.display())?;
    Ok(Pulled {
        id: manifest.id.clone(),
        file,
        remote: r.name.clone(),
        path,
        sha256: manifest.sha256.clone(),
        size: manifest.size,
        verified: true,
        downloaded,
        extracted_to: to.map(Path::to_path_buf),
        extracted,
    })
}

/// The archive id the user asked for; `None` for `latest`.
fn wanted_id(cfg: &Config, what: &str) -> Result<Option<String>> {
    if what == "latest" {
        return Ok(None);
    }
    let id = catalog::id_from_user(&cfg.local.prefix, what).ok_or_else(|| {
        usage(format!(
            "'{what}' is not an archive id: give `latest`, an id like 20260201-170521, or a name like {}-20260201-170521.tar.gz",
            cfg.local.prefix
        ))
    })?;
    Ok(Some(id))
}

/// Where the archive was found on the remotes, and what went wrong on the way.
struct Search {
    /// The remote and its complete copy of the archive.
    found: Option<(RemoteHandle, plan::RemoteArchive)>,
    /// Whether any selected remote held any archive at all.
    any_archive: bool,
    /// One line per remote that could not be opened or listed.
    errors: Vec<String>,
}

/// Find `wanted` on the first remote (in config order) that holds it complete; for
/// `latest` (`None`), the newest complete archive over all selected remotes, never one
/// named in the future (a wrong clock).
async fn find_on_remotes(
    cfg: &Config,
    selected: &[&crate::config::Remote],
    wanted: Option<&str>,
) -> Search {
    let mut search = Search {
        found: None,
        any_archive: false,
        errors: Vec::new(),
    };
    for remote in selected {
        let r = match remotes::open_read_only(remote) {
            Ok(r) => r,
            Err(e) => {
                search.errors.push(format!("{}: {e:#}", remote.name));
                continue;
            }
        };
        let state = match remotes::read_state(&r, &cfg.local.prefix).await {
            Ok(s) => s,
            Err(e) => {
                search.errors.push(format!("{}: {e:#}", remote.name));
                continue;
            }
        };
        search.any_archive |= !state.archives.is_empty();
        let candidate = match wanted {
            Some(id) => state.archives.get(id).filter(|a| a.complete()).cloned(),
            None => state
                .archives
                .values()
                .rev()
                .find(|a| {
                    a.complete() && !catalog::named_in_future(a.name.time, chrono::Utc::now())
                })
                .cloned(),
        };
        let Some(a) = candidate else { continue };
        let newer = match &search.found {
            None => true,
            Some((_, f)) => wanted.is_none() && a.name.time > f.name.time,
        };
        if newer {
            search.found = Some((r, a));
        }
        if wanted.is_some() {
            break;
        }
    }
    search
}

/// Why nothing could be pulled: no archive at all for another host, or not this one.
fn not_found_message(
    cfg: &Config,
    selected: &[&crate::config::Remote],
    wanted: Option<&str>,
    any_archive: bool,
    errors: &[String],
) -> String {
    // (`local.home` is set for another host's pull: `pull --host H`.)
    if !any_archive && errors.is_empty() && cfg.local.home.is_some() {
        return no_archives_message(selected);
    }
    let mut msg = match wanted {
        Some(id) => format!(
            "no complete archive {id} on {} (`pronto-offsite list` shows what each location holds)",
            names(selected)
        ),
        None => format!(
            "no complete archive on {}: nothing to pull yet (push one first)",
            names(selected)
        ),
    };
    if !errors.is_empty() {
        msg.push_str(&format!(" (errors: {})", errors.join("; ")));
    }
    msg
}

/// Download the archive's manifest from `r` and check it names the archive. For an
/// encrypted archive, also check (from its first bytes on the remote, before anything
/// is written) that the identity opens it, and unseal what the manifest holds. Returns
/// the manifest and the identities to extract with.
async fn fetch_manifest(
    cfg: &Config,
    r: &RemoteHandle,
    archive: &plan::RemoteArchive,
    need_key: bool,
) -> Result<(Manifest, Option<crate::crypto::Identities>)> {
    let file = &archive.name.file;
    let mkey = Manifest::file_name_for(file);
    let mbytes = retry(r.retry, &format!("download of {mkey}"), || async {
        pronto_backends::collect(r.backend.get(&mkey, None).await?).await
    })
    .await
    .with_context(|| format!("{}: downloading {mkey}", r.name))?;
    let mut manifest = Manifest::from_json(&mbytes, &format!("{}:{mkey}", r.name))?;
    if manifest.file != *file {
        return Err(verification(format!(
            "{}: manifest {mkey} describes {}, not {file}",
            r.name, manifest.file
        )));
    }
    let encrypted = manifest.encryption == crate::crypto::SCHEME_AGE || file.ends_with(".age");
    if !encrypted {
        return Ok((manifest, None));
    }
    let identities = cfg.encryption.identities()?;
    let fps = &manifest.recipient_fingerprints;
    let Some(ids) = &identities else {
        if need_key {
            return Err(crate::crypto::missing_identity(file, fps));
        }
        return Ok((manifest, None));
    };
    check_identity_early(r, archive, ids, fps, need_key).await?;
    // What a sealed (encrypted) archive holds comes back into the local manifest.
    match manifest.unseal(ids) {
        Ok(()) => {}
        Err(e) if need_key => return Err(e),
        Err(e) => tracing::warn!("{e:#}"),
    }
    Ok((manifest, identities))
}

/// Read the start of an encrypted archive on `r` and check that `ids` open its header:
/// a wrong identity fails here, before anything is downloaded (a warning only when the
/// caller will not extract). A failed read is no verdict: extraction checks again.
async fn check_identity_early(
    r: &RemoteHandle,
    archive: &plan::RemoteArchive,
    ids: &crate::crypto::Identities,
    fps: &[String],
    need_key: bool,
) -> Result<()> {
    let file = &archive.name.file;
    let n = archive
        .size
        .unwrap_or(crate::crypto::HEADER_PROBE)
        .min(crate::crypto::HEADER_PROBE);
    let head = retry(
        r.retry,
        &format!("download of the start of {file}"),
        || async { pronto_backends::collect(r.backend.get(file, Some(0..n)).await?).await },
    )
    .await;
    match head {
        Ok(head) => match ids.check_header(&head, file, fps) {
            Ok(_) => {}
            Err(e) if need_key => return Err(e),
            Err(e) => tracing::warn!("{e:#}"),
        },
        Err(e) => tracing::debug!(
            "could not read the start of {file} to check the identity early ({e:#}); it is checked before extraction"
        ),
    }
    Ok(())
}

/// Make the archive a complete, verified local archive: an intact local copy is used
/// (with `--remote NAME`, the remote's copy is still downloaded and checked, then set
/// aside), otherwise it is downloaded under a partial name, checked against the manifest
/// and renamed into place. Returns its path and whether anything was downloaded. The
/// caller holds the folder lock.
/// Where [`place_locally`] left the archive, and what it extracted (`--to`).
struct Placed {
    path: PathBuf,
    /// False when an intact local copy was used.
    downloaded: bool,
    extracted: Option<ExtractedCounts>,
}

/// Make the archive a complete local copy in the backup folder (downloaded and checked
/// unless an intact one is there) and, with `extract` (`--to DIR` and its options),
/// extract it there: while it downloads when it is downloaded (see
/// [`download_extracting`]), else from the local copy.
async fn place_locally(
    cfg: &Config,
    r: &RemoteHandle,
    archive: &plan::RemoteArchive,
    only: Option<&str>,
    manifest: &Manifest,
    extract: Option<(&Path, crate::extract::ExtractOptions)>,
    out: &mut dyn Write,
) -> Result<Placed> {
    let dir = &cfg.local.dir;
    let file = &archive.name.file;
    let expected = manifest.sha256_bytes()?;
    let local = catalog::scan(&cfg.local)?;
    let existing = local
        .iter()
        .find(|a| a.name.id == archive.name.id && a.name.file == *file);
    let Some(a) = existing else {
        let partial = dir.join(format!("{file}{PARTIAL}"));
        let _ = std::fs::remove_file(&partial);
        let (downloaded, extracted) = match extract {
            None => (
                download_checked(r, file, &partial, archive.size, manifest, None).await,
                None,
            ),
            Some((to, opts)) => {
                let (d, x) =
                    download_extracting(r, file, &partial, archive.size, manifest, to, opts).await;
                (d, Some((to, x)))
            }
        };
        if let Err(e) = downloaded {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        let final_path = dir.join(file);
        std::fs::rename(&partial, &final_path).with_context(|| {
            format!("renaming {} to {}", partial.display(), final_path.display())
        })?;
        fsutil::write_atomic(
            &dir.join(Manifest::file_name_for(file)),
            &manifest.to_json(),
        )?;
        writeln!(
            out,
            "verified sha256 {} ({} bytes)",
            manifest.sha256, manifest.size
        )?;
        // The archive is kept whatever the extraction did (as when it is extracted after).
        let extracted = match extracted {
            Some((to, x)) => {
                let stats = x.with_context(|| {
                    format!("extracting {} into {}", final_path.display(), to.display())
                })?;
                Some(say_extracted(stats, to, out)?)
            }
            None => None,
        };
        return Ok(Placed {
            path: final_path,
            downloaded: true,
            extracted,
        });
    };
    if crate::archive::sha256_file(&a.path)?.0 != expected {
        bail!(
            "a different {file} already exists at {} (its sha256 differs from {}'s manifest); move it away first",
            a.path.display(),
            r.name
        );
    }
    let downloaded = only.is_some();
    if downloaded {
        // `--from NAME` with an intact local copy: the remote's copy is still downloaded
        // and checked (what a drill of that remote is for), then set aside: its bytes
        // are the local copy's, which is used.
        let check = dir.join(format!(".{file}.from-{}{PARTIAL}", r.name));
        let res = download_checked(r, file, &check, archive.size, manifest, None).await;
        let _ = std::fs::remove_file(&check);
        res?;
        writeln!(
            out,
            "{}'s copy verified (sha256 {}); it is the local copy {}",
            r.name,
            manifest.sha256,
            a.path.display()
        )?;
    } else {
        writeln!(
            out,
            "local copy {} is intact; not downloading",
            a.path.display()
        )?;
    }
    if a.manifest.is_none() {
        fsutil::write_atomic(&a.manifest_path(), &manifest.to_json())?;
    }
    let extracted = match extract {
        Some((to, opts)) => Some(extract_into(&a.path, to, &opts, out)?),
        None => None,
    };
    Ok(Placed {
        path: a.path.clone(),
        downloaded,
        extracted,
    })
}

/// The id and time of the newest complete local archive that `latest` may name: not a
/// safety backup, not named in the future.
fn newest_local(cfg: &Config) -> Result<Option<(String, chrono::DateTime<chrono::Utc>)>> {
    let now = chrono::Utc::now();
    Ok(catalog::scan(&cfg.local)?
        .into_iter()
        .filter(|a| {
            a.manifest.is_some() && !a.is_safety() && !catalog::named_in_future(a.name.time, now)
        })
        .max_by_key(|a| a.name.time)
        .map(|a| (a.name.id, a.name.time)))
}

/// Download `file` from `r` into `dest` (created; the caller removes it on error) with a
/// progress bar, and check its size and SHA-256 against `manifest`: a mismatch is a
/// verification error (exit 4) that names the remote.
async fn download_checked(
    r: &RemoteHandle,
    file: &str,
    dest: &Path,
    listed_size: Option<u64>,
    manifest: &Manifest,
    on_written: Option<replicate::OnWritten<'_>>,
) -> Result<()> {
    // Big archives come in concurrent ranges (the listing gave the size).
    let bar = crate::progress::Progress::bytes(
        format!("{}: {}", r.name, manifest.id),
        listed_size.or(Some(manifest.size)),
    );
    let res =
        replicate::download_sized_with(r, file, dest, listed_size, Some(&bar), on_written).await;
    bar.finish();
    let (got, size) = res?;
    if got != manifest.sha256_bytes()? || size != manifest.size {
        return Err(verification(format!(
            "{}: {file} is corrupt: sha256 {} and {size} bytes, but its manifest says {} and {} bytes; nothing was written. Try another remote with --remote",
            r.name,
            hex::encode(got),
            manifest.sha256,
            manifest.size
        )));
    }
    Ok(())
}

/// `pull` of an intact local copy (see [`crate::catalog::local_intact`]): extracted into
/// `to` when given, with the same checks as a downloaded one.
fn from_local(
    cfg: &Config,
    path: PathBuf,
    to: Option<&Path>,
    out: &mut dyn Write,
) -> Result<Pulled> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = Manifest::read(&path.with_file_name(Manifest::file_name_for(&name)))?;
    let mut extracted = None;
    if let Some(to) = to {
        let opts = crate::extract::ExtractOptions::for_archive(cfg, &path)?;
        extracted = Some(extract_into(&path, to, &opts, out)?);
    }
    writeln!(out, "{}", path.display())?;
    Ok(Pulled {
        id: manifest.id.clone(),
        file: name,
        remote: "local".into(),
        path,
        sha256: manifest.sha256.clone(),
        size: manifest.size,
        verified: true,
        downloaded: false,
        extracted_to: to.map(Path::to_path_buf),
        extracted,
    })
}

/// Extract a verified archive into `to` (the safe extraction every restore uses) and
/// say what arrived; shared by the downloaded and the local-copy paths.
fn extract_into(
    path: &Path,
    to: &Path,
    opts: &crate::extract::ExtractOptions,
    out: &mut dyn Write,
) -> Result<ExtractedCounts> {
    let stats = crate::extract::extract_with(path, to, opts)
        .with_context(|| format!("extracting {} into {}", path.display(), to.display()))?;
    say_extracted(stats, to, out)
}

/// Say what an extraction into `to` wrote.
fn say_extracted(
    stats: crate::extract::ExtractStats,
    to: &Path,
    out: &mut dyn Write,
) -> Result<ExtractedCounts> {
    writeln!(
        out,
        "extracted {} files, {} folders, {} symlinks into {}",
        stats.files,
        stats.dirs,
        stats.symlinks,
        to.display()
    )?;
    Ok(ExtractedCounts {
        files: stats.files,
        dirs: stats.dirs,
        symlinks: stats.symlinks,
        bytes: stats.bytes,
    })
}

fn names(remotes: &[&crate::config::Remote]) -> String {
    remotes
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--to DIR` can take the extraction — a folder (or a path whose nearest existing
/// ancestor is a folder) we can write in — checked before anything is downloaded.
fn check_destination(to: &Path) -> Result<()> {
    let mut probe_dir = to;
    loop {
        match std::fs::metadata(probe_dir) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => bail!(
                "pull --to {}: {} is not a folder; nothing was downloaded",
                to.display(),
                probe_dir.display()
            ),
            // Missing, or a file on the way (ENOTDIR): look at the parent.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                probe_dir = match probe_dir.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "pull --to {}: cannot use {}",
                        to.display(),
                        probe_dir.display()
                    )
                })
            }
        }
    }
    let probe = fsutil::temp_name(&probe_dir.join(".pronto-offsite-probe"));
    std::fs::File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "pull --to {}: cannot write in {}; nothing was downloaded",
                to.display(),
                probe_dir.display()
            )
        })
}

/// `pull --to` of an archive that must be downloaded: the download (into `partial`,
/// checked against `manifest` as [`download_checked`] does) and the extraction into `to`
/// run at once, the extraction reading the file as far as it is written without a gap
/// (the ranges arrive out of order). The extraction works in a hidden staging folder and
/// moves it into place only after the download's verdict: a copy whose size or SHA-256
/// is not its manifest's never becomes visible, and its staging folder is removed.
/// Returns the download's result and the extraction's.
async fn download_extracting(
    r: &RemoteHandle,
    file: &str,
    partial: &Path,
    listed_size: Option<u64>,
    manifest: &Manifest,
    to: &Path,
    opts: crate::extract::ExtractOptions,
) -> (Result<()>, Result<crate::extract::ExtractStats>) {
    let arrival = std::sync::Arc::new(Arrival::default());
    let extraction = {
        let reader = Growing {
            arrival: arrival.clone(),
            path: partial.to_path_buf(),
            file: None,
            pos: 0,
        };
        let (label, size, to, gate) = (
            partial.with_file_name(file),
            manifest.size,
            to.to_path_buf(),
            arrival.clone(),
        );
        tokio::task::spawn_blocking(move || {
            crate::extract::extract_stream(&label, reader, Some(size), &to, &opts, || {
                gate.verdict()
            })
        })
    };
    // Whatever happens here (an error, a cancelled future), the reader is told the end.
    let ended = EndOnDrop(arrival.clone());
    let written = |n: u64| arrival.written(n);
    let downloaded =
        download_checked(r, file, partial, listed_size, manifest, Some(&written)).await;
    arrival.end(match &downloaded {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("{e:#}")),
    });
    drop(ended);
    let extracted = match extraction.await {
        Ok(x) => x,
        Err(e) => Err(anyhow::anyhow!("the extraction stopped: {e}")),
    };
    (downloaded, extracted)
}

/// How far a download has written its file, and how it ended: shared by the download
/// (which reports) and the extraction reading the file on another thread (which waits).
#[derive(Default)]
struct Arrival {
    /// Bytes written from the start without a gap, and the download's verdict once known.
    state: std::sync::Mutex<(u64, Option<std::result::Result<(), String>>)>,
    changed: std::sync::Condvar,
}

impl Arrival {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Option<std::result::Result<(), String>>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn written(&self, n: u64) {
        let mut s = self.lock();
        s.0 = s.0.max(n);
        self.changed.notify_all();
    }

    /// The download's verdict: `Ok` once the file is complete and its size and SHA-256
    /// are the manifest's. The first verdict stands.
    fn end(&self, verdict: std::result::Result<(), String>) {
        let mut s = self.lock();
        s.1.get_or_insert(verdict);
        self.changed.notify_all();
    }

    /// Wait until more than `pos` bytes are written (`Some(written)`), or the download
    /// ended with them all verified (`None`: the end of the archive), or failed.
    fn wait_beyond(&self, pos: u64) -> std::io::Result<Option<u64>> {
        let mut s = self.lock();
        loop {
            match &s.1 {
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!("the download failed: {e}")))
                }
                _ if s.0 > pos => return Ok(Some(s.0)),
                Some(Ok(())) => return Ok(None),
                None => s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// Wait for the download's verdict (the extraction's gate before its commit).
    fn verdict(&self) -> Result<()> {
        let mut s = self.lock();
        loop {
            match &s.1 {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => bail!("the download failed, nothing was extracted: {e}"),
                None => s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

/// Tells the reader the download ended, if nothing else did (an early return, a panic).
struct EndOnDrop(std::sync::Arc<Arrival>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end(Err("the download stopped".into()));
    }
}

/// The file being downloaded, read in order as far as it is written, and ended only
/// when the download's verdict is in (an error if it failed).
struct Growing {
    arrival: std::sync::Arc<Arrival>,
    path: PathBuf,
    /// Opened at the first read: the download creates the file.
    file: Option<std::fs::File>,
    pos: u64,
}

impl std::io::Read for Growing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if buf.is_empty() {
            return Ok(0);
        }
        let Some(written) = self.arrival.wait_beyond(self.pos)? else {
            return Ok(0);
        };
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(std::fs::File::open(&self.path)?),
        };
        let want = (written - self.pos).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{} ends at {} bytes, but {written} were written",
                    self.path.display(),
                    self.pos
                ),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}
