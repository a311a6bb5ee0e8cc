//! Small filesystem helpers: atomic writes, directory fsync, the data segments of a sparse file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Create a folder (and its parents) with mode 0700 for the ones it creates.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating folder {}", dir.display()))
}

/// fsync a folder so that renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing folder {}", dir.display()))
}

/// Write `bytes` to `path` atomically: a temp name in the same folder (mode 0600),
/// fsync, rename, fsync the folder. A reader sees the old file or the new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// [`write_atomic`] with another mode for the new file (a metrics textfile others read).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_name(path);
    let res = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // Exactly `mode`, whatever the umask.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// A hidden temp name beside `path`, unique to this process and moment.
pub fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    path.with_file_name(format!(".{name}.tmp-{}-{nanos}", std::process::id()))
}

/// Human-readable byte count (`1.5 GiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// This host's name.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// `name` on `$PATH` (or as given, when it has a slash).
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exe(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_exe(p))
}

/// An age in human units: `45s`, `12m 5s`, `3h 12m`, `2d 4h`.
pub fn human_age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    let two = |a: u64, ua: &str, b: u64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua} {b}{ub}")
        }
    };
    if days > 0 {
        two(days, "d", hours, "h")
    } else if hours > 0 {
        two(hours, "h", mins, "m")
    } else if mins > 0 {
        two(mins, "m", secs, "s")
    } else {
        format!("{secs}s")
    }
}

/// Free and total bytes of one filesystem.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Disk {
    pub path: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// Free and total bytes of the filesystem holding `dir` (or its nearest existing parent).
pub fn free_space(dir: &Path) -> Option<Disk> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = dir;
    while !p.exists() {
        p = p.parent()?;
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    Some(Disk {
        path: p.display().to_string(),
        free_bytes: (s.f_bavail as u64).saturating_mul(frsize),
        total_bytes: (s.f_blocks as u64).saturating_mul(frsize),
    })
}

/// The data segments of a file with holes, as (offset, length), found with
/// `SEEK_DATA`/`SEEK_HOLE`; `None` when the file system cannot tell (then the file is read
/// whole). Used by the backup walk (GNU sparse entries) and the cross-filesystem copy.
pub fn data_segments(file: &File, size: u64) -> Option<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let seek = |off: u64, whence| unsafe { libc::lseek(fd, off as libc::off_t, whence) };
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < size {
        let data = seek(off, libc::SEEK_DATA);
        if data < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole up to the end
            }
            return None;
        }
        let data = data as u64;
        if data >= size {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE);
        if hole < 0 || (hole as u64) <= data {
            return None;
        }
        let end = (hole as u64).min(size);
        out.push((data, end - data));
        off = end;
    }
    let _ = seek(0, libc::SEEK_SET);
    // GNU tar's convention: a file ending in a hole ends with an empty segment at its size.
    if out.last().is_none_or(|&(o, l)| o + l < size) {
        out.push((size, 0));
    }
    Some(out)
}
