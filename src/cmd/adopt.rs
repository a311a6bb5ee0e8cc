//! `adopt [PATH...]`: take in archives made outside pronto-offsite (the seed's
//! `backup.sh`: same names, same layout, no manifest), so they join retention, push,
//! verify and restore like our own.
//!
//! Each archive is read whole first (the gzip or zstd stream to its end and every tar
//! entry, as `verify` does); a truncated or corrupted one, or one with an entry outside
//! its top folder `PREFIX-YYYYMMDD-HHMMSS/` (absolute, `..`, a hard link pointing out),
//! is refused with the reason and left as it is. Then a manifest marked `"adopted": true`
//! is written beside it (sha256, size, what each `<section>/<source>/` folder holds, the
//! time from its name), atomically and under the folder lock. Encrypted (`.age`)
//! archives made elsewhere are refused: their contents cannot be summarised here.

use crate::error::Exit;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::archive::{Codec, SECTIONS};
use crate::catalog::{self, LocalArchive};
use crate::config::Config;
use crate::manifest::{Manifest, SourceSummary};

/// Run `adopt`; exit 0 when every archive was adopted (or there was none), 4 when one
/// was refused.
pub fn run(cfg: &Config, paths: &[PathBuf], out: &mut dyn Write) -> Result<Exit> {
    let _lock = crate::lock::acquire(&cfg.local.dir, "adopt", crate::lock::DEFAULT_WAIT)?;
    let all = catalog::scan(&cfg.local)?;
    let picked: Vec<Result<&LocalArchive, String>> = if paths.is_empty() {
        all.iter()
            .filter(|a| a.manifest.is_none())
            .map(Ok)
            .collect()
    } else {
        paths.iter().map(|p| pick(&all, p)).collect()
    };
    if picked.is_empty() {
        writeln!(
            out,
            "nothing to adopt: every archive in {} has its manifest",
            cfg.local.dir.display()
        )?;
        return Ok(Exit::Ok);
    }
    let mut refused = 0;
    for p in picked {
        let res = p.map_err(anyhow::Error::msg).and_then(adopt_one);
        match res {
            Ok(m) => writeln!(
                out,
                "adopted {} ({}, {} source folder(s)): it now takes part in retention, push, verify and restore",
                m.file,
                crate::fsutil::human_bytes(m.size),
                m.sources.len()
            )?,
            Err(e) => {
                refused += 1;
                tracing::error!("adopt: {e:#}");
                writeln!(out, "refused {e:#}")?;
            }
        }
    }
    Ok(if refused == 0 {
        Exit::Ok
    } else {
        Exit::VerifyFailed
    })
}

/// The manifest-less archive of ours at `path`, or why it cannot be adopted.
fn pick<'a>(all: &'a [LocalArchive], path: &Path) -> std::result::Result<&'a LocalArchive, String> {
    let want = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let a = all
        .iter()
        .find(|a| std::fs::canonicalize(&a.path).is_ok_and(|p| p == want))
        .ok_or_else(|| {
            format!(
                "{}: not a PREFIX-YYYYMMDD-HHMMSS archive in the backup folder or its tiers; move it there first",
                path.display()
            )
        })?;
    if a.manifest.is_some() {
        return Err(format!("{}: it already has its manifest", path.display()));
    }
    Ok(a)
}

/// Read `a` whole, summarise it and write its manifest.
fn adopt_one(a: &LocalArchive) -> Result<Manifest> {
    let shown = a.path.display();
    let head = crate::crypto::read_head(&a.path, crate::crypto::HEADER_PROBE as usize)?;
    if crate::crypto::is_age(&head) {
        bail!("{shown}: encrypted (age): an archive encrypted outside pronto-offsite cannot be summarised; left as it is");
    }
    let Some(codec) = Codec::sniff(&head) else {
        bail!("{shown}: neither a gzip nor a zstd stream; left as it is");
    };
    // The whole stream and every entry, exactly as `verify` reads an archive.
    crate::extract::check_readable(&a.path).with_context(|| format!("{shown}: left as it is"))?;
    let sources = summarise(&a.path, codec, a.name.stem())
        .with_context(|| format!("{shown}: left as it is"))?;
    let (sha, size) = crate::archive::sha256_file(&a.path)?;
    let m = Manifest {
        format: crate::manifest::FORMAT,
        id: a.name.id.clone(),
        file: a.name.file.clone(),
        created: a.name.time,
        size,
        sha256: hex::encode(sha),
        compression: codec.name().into(),
        encryption: crate::crypto::SCHEME_NONE.into(),
        recipient_fingerprints: Vec::new(),
        host: crate::fsutil::hostname(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        sources,
        postgres: Vec::new(),
        redis: Vec::new(),
        adopted: true,
        sealed: None,
        safety: false,
    };
    crate::fsutil::write_atomic(&a.manifest_path(), &m.to_json())?;
    Ok(m)
}

/// What each `<section>/<source>/` folder holds; refuses an entry outside `top/`.
fn summarise(path: &Path, codec: Codec, top: &str) -> Result<Vec<SourceSummary>> {
    let file = std::fs::File::open(path)?;
    let reader: Box<dyn Read> = match codec {
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        ))),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
    };
    let mut tar = tar::Archive::new(reader);
    let mut sums: BTreeMap<(usize, String), SourceSummary> = BTreeMap::new();
    for entry in tar.entries()? {
        let entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = inside(&name, top)?;
        if let Some(link) = entry.link_name_bytes() {
            if entry.header().entry_type() == tar::EntryType::Link {
                inside(&String::from_utf8_lossy(&link), top)
                    .with_context(|| format!("hard link '{name}'"))?;
            }
        }
        let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        let (Some(sec), Some(src)) = (parts.first(), parts.get(1)) else {
            continue;
        };
        let Some(si) = SECTIONS.iter().position(|s| s.dir_name() == *sec) else {
            continue;
        };
        let section = SECTIONS[si];
        let s = sums
            .entry((si, src.to_string()))
            .or_insert_with(|| SourceSummary {
                name: src.to_string(),
                section,
                archive_path: format!("{sec}/{src}"),
                origin: "adopted".into(),
                files: 0,
                dirs: 0,
                symlinks: 0,
                bytes: 0,
                specials: 0,
                skipped: Vec::new(),
                changed: Vec::new(),
                exclude: Vec::new(),
            });
        match entry.header().entry_type() {
            tar::EntryType::Directory => s.dirs += 1,
            tar::EntryType::Symlink => s.symlinks += 1,
            tar::EntryType::Link => s.files += 1,
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => s.specials += 1,
            t if t.is_file() => {
                s.files += 1;
                s.bytes += entry.size();
            }
            _ => {}
        }
    }
    Ok(sums.into_values().collect())
}

/// `name` relative to `top/`, or the reason it is hostile.
fn inside<'a>(name: &'a str, top: &str) -> Result<&'a str> {
    let p = Path::new(name);
    if p.components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    }) {
        bail!("hostile: entry '{name}' climbs out of the archive (absolute or '..')");
    }
    let rel = name.strip_prefix("./").unwrap_or(name);
    match rel.strip_prefix(top) {
        Some(r) if r.is_empty() || r.starts_with('/') => Ok(r.trim_start_matches('/')),
        _ => bail!("hostile: entry '{name}' is outside the archive's top folder '{top}/'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_must_stay_in_the_top_folder() {
        let top = "pronto-app-backup-20260101-020000";
        assert_eq!(
            inside(&format!("{top}/configs/x"), top).unwrap(),
            "configs/x"
        );
        assert_eq!(inside(&format!("./{top}/"), top).unwrap(), "");
        for bad in [
            "/etc/passwd",
            "../x",
            "pronto-app-backup-20260101-020000/../../x",
            "other/x",
        ] {
            assert!(inside(bad, top).is_err(), "{bad}");
        }
    }
}
