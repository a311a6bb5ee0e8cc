//! Swapping a live folder for a restored one: the staged copy goes beside the target
//! (same filesystem), then one atomic exchange (`renameat2(RENAME_EXCHANGE)`, two renames
//! where that is missing) puts it under the live name; a kill at any point leaves the old
//! or the new content there. The swap's names are its journal: the next restore finishes
//! or rolls back what a killed one left, and `doctor` lists it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

/// Replace folder `target` by a copy of `staged`: copied to a temp sibling first, then
/// swapped in by two renames, the old one removed last. When `target` cannot be renamed
/// (a mount point), its content is replaced in place instead.
pub(crate) fn replace_dir(staged: &Path, target: &Path) -> Result<(u64, u64)> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let name = target
        .file_name()
        .ok_or_else(|| anyhow!("{} has no folder name", target.display()))?
        .to_string_lossy()
        .into_owned();
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.pronto-restore-{pid}"));
    let old = parent.join(format!(".{name}.pronto-old-{pid}"));
    finish_interrupted_swaps(parent, &name, target);
    let _ = std::fs::remove_dir_all(&tmp);
    let mut counts = (0u64, 0u64);
    // On the same file system the extracted tree moves as it is (hard links, sparse files
    // and extended attributes intact); across file systems it is copied.
    let moved = std::fs::rename(staged, &tmp).is_ok();
    if moved {
        count_tree(&tmp, &mut counts);
    } else if let Err(e) = copy_tree(staged, &tmp, &mut counts) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "copying the restored files beside {}",
            target.display()
        )));
    }
    let exists = std::fs::symlink_metadata(target).is_ok();
    if exists {
        // One atomic exchange where the filesystem has it: at every instant the live
        // name holds the old content or the new, never nothing. `tmp` then holds the old
        // content, removed last (a kill meanwhile leaves it for the next restore's
        // `finish_interrupted_swaps`, or for `doctor` to point at).
        match exchange(&tmp, target) {
            Ok(()) => {
                let _ = crate::fsutil::sync_dir(parent);
                std::fs::remove_dir_all(&tmp)
                    .with_context(|| format!("removing the replaced {}", tmp.display()))?;
                return Ok(counts);
            }
            Err(e) => tracing::debug!(
                "no atomic exchange of {} ({e}); two renames instead",
                target.display()
            ),
        }
        if let Err(e) = std::fs::rename(target, &old) {
            // A mount point (EBUSY) or a parent we may not change: replace the content.
            tracing::debug!(
                "cannot move {} aside ({e}); replacing its content in place",
                target.display()
            );
            let res = replace_content(&tmp, target);
            let _ = std::fs::remove_dir_all(&tmp);
            res?;
            return Ok(counts);
        }
    }
    if let Err(e) = std::fs::rename(&tmp, target) {
        if exists {
            let _ = std::fs::rename(&old, target);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(anyhow!(e).context(format!(
            "moving the restored folder to {}",
            target.display()
        )));
    }
    let _ = crate::fsutil::sync_dir(parent);
    if exists {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("removing the replaced {}", old.display()))?;
    }
    Ok(counts)
}

/// Swap the two names `a` and `b` in one step (`renameat2(RENAME_EXCHANGE)`, Linux 3.15+
/// on ext4, XFS, btrfs, tmpfs…); an error where the filesystem or kernel cannot.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths that outlive the call; AT_FDCWD resolves them as given.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What an interrupted restore left beside a live folder: the `.NAME.pronto-restore-PID`
/// and `.NAME.pronto-old-PID` copies in its parent (listed by `doctor`).
pub fn interrupted_restore_leftovers(target: &Path) -> Vec<PathBuf> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let prefixes = [
        format!(".{name}.pronto-restore-"),
        format!(".{name}.pronto-old-"),
    ];
    let Ok(rd) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            prefixes.iter().any(|p| {
                n.strip_prefix(p.as_str())
                    .is_some_and(|pid| pid.parse::<u32>().is_ok())
            })
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// What a killed restore left beside `target` (the swap's names are its journal): a
/// half-made `.NAME.pronto-restore-PID` copy is removed; a `.NAME.pronto-old-PID` is put
/// back when `target` is missing (the kill fell between the two renames), else removed.
fn finish_interrupted_swaps(parent: &Path, name: &str, target: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    let (new_prefix, old_prefix) = (
        format!(".{name}.pronto-restore-"),
        format!(".{name}.pronto-old-"),
    );
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if n.strip_prefix(&new_prefix)
            .is_some_and(|p| p.parse::<u32>().is_ok())
        {
            tracing::info!(
                "removing {}, left by an interrupted restore",
                path.display()
            );
            let _ = std::fs::remove_dir_all(&path);
        } else if n
            .strip_prefix(&old_prefix)
            .is_some_and(|p| p.parse::<u32>().is_ok())
        {
            if std::fs::symlink_metadata(target).is_err() {
                tracing::warn!(
                    "{} was missing after an interrupted restore: putting the previous content back from {}",
                    target.display(),
                    path.display()
                );
                let _ = std::fs::rename(&path, target);
            } else {
                tracing::info!(
                    "removing {}, left by an interrupted restore",
                    path.display()
                );
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

/// Empty `target` and move `from`'s entries into it (same filesystem as `target`'s parent).
fn replace_content(from: &Path, target: &Path) -> Result<()> {
    for e in std::fs::read_dir(target)?.flatten() {
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        }
        .with_context(|| format!("removing {}", p.display()))?;
    }
    for e in std::fs::read_dir(from)?.flatten() {
        let to = target.join(e.file_name());
        if std::fs::rename(e.path(), &to).is_err() {
            let mut c = (0, 0);
            copy_tree(&e.path(), &to, &mut c)?;
        }
    }
    let m = std::fs::metadata(from)?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    Ok(())
}

/// Counts the (files, bytes) of a tree without following links.
fn count_tree(root: &Path, counts: &mut (u64, u64)) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => count_tree(&e.path(), counts),
            Ok(t) if t.is_file() => {
                counts.0 += 1;
                counts.1 += e.metadata().map_or(0, |m| m.len());
            }
            _ => {}
        }
    }
}

/// Copy a tree to another file system keeping everything the extraction made
/// ([`crate::tree_copy`]). Counts (files, bytes) into `counts`.
fn copy_tree(from: &Path, to: &Path, counts: &mut (u64, u64)) -> Result<()> {
    let c = crate::tree_copy::copy_tree(from, to)?;
    counts.0 += c.files;
    counts.1 += c.bytes;
    Ok(())
}

#[cfg(test)]
pub(crate) fn set_mtime(path: &Path, secs: i64, nsec: i64) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let times = crate::dir_at::mtime_only((secs, nsec));
    // SAFETY: valid C string and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setting the mtime of {}", path.display()));
    }
    Ok(())
}
