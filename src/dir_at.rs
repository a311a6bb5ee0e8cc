//! Entries reached relative to an open folder (`openat` and friends, `O_NOFOLLOW`).
//!
//! The backup walk and the extraction both work this way: a name is looked up in the
//! folder already open, never through a symlink, and no absolute path is ever built
//! for the kernel to resolve, so a tree deeper than `PATH_MAX` (4,096 bytes) is walked
//! and restored like any other (as GNU tar does). Paths are still kept beside the open
//! folders, for messages and exclude patterns only.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// `name` as a C string; a name holding a NUL byte cannot exist on disk.
pub fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: a name with a NUL byte", Path::new(name).display()),
        )
    })
}

/// `openat(dir, name, flags | O_CLOEXEC | O_NOFOLLOW)`: a symlink named `name` is never
/// followed (`ELOOP`, or with `O_PATH` the link itself).
pub fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<File> {
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Creates the new file `name` in `dir` for writing, mode 0600 until its metadata is
/// applied: `O_EXCL` and `O_NOFOLLOW`, so nothing already there (a symlink above all) is
/// ever opened or written through.
pub fn create_at(dir: RawFd, name: &CStr) -> io::Result<File> {
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens the folder `name` in `dir` for reading its entries, without following a symlink.
pub fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<File> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY)
}

/// The metadata of `name` in `dir` itself (a symlink's own, never its target's), read
/// through an `O_PATH` handle: no data is opened, so a fifo never blocks.
pub fn metadata_at(dir: RawFd, name: &CStr) -> io::Result<Metadata> {
    open_at(dir, name, libc::O_PATH)?.metadata()
}

/// The target of the symlink `name` in `dir`, byte for byte.
pub fn read_link_at(dir: RawFd, name: &CStr) -> io::Result<PathBuf> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(PathBuf::from(OsString::from_vec(buf)));
        }
        // Possibly cut short: try again with room to spare.
        let more = buf.len() * 2;
        buf.resize(more, 0);
    }
}

/// The extended attributes of the open file or folder `fd`, as (name, value) pairs; none
/// when the file system has none or does not support them.
pub fn xattrs(fd: RawFd) -> Vec<(String, Vec<u8>)> {
    let list = |buf: &mut [u8]| unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) };
    let get = |name: &CStr, buf: &mut [u8]| unsafe {
        libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    // The common case: no attributes, one syscall.
    let n = list(&mut []);
    if n <= 0 {
        return Vec::new();
    }
    let mut names = vec![0u8; n as usize];
    let n = list(&mut names);
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let (Ok(key), Ok(c)) = (std::str::from_utf8(raw), CString::new(raw)) else {
            continue;
        };
        let size = get(&c, &mut []);
        if size < 0 {
            continue;
        }
        let mut value = vec![0u8; size as usize];
        let got = get(&c, &mut value);
        if got < 0 {
            continue;
        }
        value.truncate(got as usize);
        out.push((key.to_string(), value));
    }
    out
}

/// Sets extended attributes on the open file or folder `fd`, exactly: a POSIX ACL that is
/// not among them but that the file inherited from its folder's default ACL when it was
/// created is removed (the original had none; else the copy would grant more than it).
/// One the kernel refuses (a `security.*` one without the privilege, a file system
/// without them) is warned about, as GNU tar does, and the others are still set: a
/// restore does not fail on it.
pub fn set_xattrs<'a>(fd: RawFd, attrs: impl IntoIterator<Item = (&'a CStr, &'a [u8])>) {
    let mut acls_set = Vec::new();
    for (k, v) in attrs {
        let r = unsafe { libc::fsetxattr(fd, k.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            tracing::warn!(
                "cannot restore the extended attribute {}: {e}",
                k.to_string_lossy()
            );
        } else {
            acls_set.push(k.to_bytes().to_vec());
        }
    }
    for (acl, _) in crate::posix_acl::KINDS {
        if acls_set.iter().any(|k| k == acl.as_bytes()) {
            continue;
        }
        let Ok(c) = CString::new(acl) else { continue };
        if unsafe { libc::fremovexattr(fd, c.as_ptr()) } != 0 {
            let e = io::Error::last_os_error();
            // None there, or no ACLs on this file system: nothing was inherited.
            if !matches!(
                e.raw_os_error(),
                Some(libc::ENODATA) | Some(libc::EOPNOTSUPP)
            ) {
                tracing::warn!("cannot remove the inherited ACL {acl}: {e}");
            }
        }
    }
}

/// The metadata of a restored file or folder, applied to it open, in the one order that
/// keeps all of it: the owner (when given, i.e. as root) before the mode, so that set-id
/// bits apply to the archived owner; the mode; the extended attributes exactly
/// ([`set_xattrs`]) after the mode, since a POSIX ACL's mask follows a chmod; the mtime
/// (seconds, nanoseconds) last, since the others change the ctime only. The extraction and
/// the cross-filesystem copy both use it.
pub fn apply_metadata<'a>(
    f: &File,
    owner: Option<(u32, u32)>,
    mode: u32,
    attrs: impl IntoIterator<Item = (&'a CStr, &'a [u8])>,
    (secs, nanos): (i64, i64),
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some((u, g)) = owner {
        std::os::unix::fs::fchown(f, Some(u), Some(g))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    set_xattrs(f.as_raw_fd(), attrs);
    let times = mtime_only((secs, nanos));
    check(unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) })
}

/// The times for `futimens`/`utimensat` that set the mtime (seconds, nanoseconds) and
/// leave the atime alone.
pub fn mtime_only((secs, nanos): (i64, i64)) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: nanos as _,
        },
    ]
}

/// A libc call's `0` as `Ok`, anything else as the `errno` it left.
pub fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The `lstat` of `name` in `dir`: its type, device and inode without opening it.
pub fn stat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    let r = unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { st.assume_init() })
}

/// Raises this process's soft limit of open files to its hard limit while the returned
/// guard lives (a walk keeps one folder open per level of depth, and a tree 4,096 bytes
/// deep can have 2,000 levels); the old limit comes back when it is dropped, so commands
/// started later (dumps, hooks) inherit the usual one.
pub fn raise_open_file_limit() -> OpenFileLimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return OpenFileLimit(None);
        }
        let old = lim;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return OpenFileLimit(None);
        }
        OpenFileLimit(Some(old))
    }
}

/// See [`raise_open_file_limit`].
pub struct OpenFileLimit(Option<libc::rlimit>);

impl Drop for OpenFileLimit {
    fn drop(&mut self) {
        if let Some(old) = self.0 {
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) };
        }
    }
}

/// The names in the open folder `dir` (without `.` and `..`), sorted by their bytes,
/// last one first (popped from the end while walking).
pub fn read_sorted(dir: &File) -> io::Result<Vec<OsString>> {
    // readdir needs a handle of its own: fdopendir takes over the descriptor it is given.
    let own = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if own < 0 {
        return Err(io::Error::last_os_error());
    }
    let stream = unsafe { libc::fdopendir(own) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        unsafe { libc::close(own) };
        return Err(e);
    }
    // The duplicate shares its offset with `dir`: start from the first entry.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    let result = loop {
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            let errno = io::Error::last_os_error();
            break match errno.raw_os_error() {
                Some(0) | None => Ok(()),
                Some(_) => Err(errno),
            };
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    };
    unsafe { libc::closedir(stream) };
    result?;
    names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    #[test]
    fn a_folder_is_listed_sorted_last_first_twice_alike() {
        let tmp = tempfile::tempdir().unwrap();
        for n in ["b", "a", "c"] {
            std::fs::write(tmp.path().join(n), n).unwrap();
        }
        let dir = File::open(tmp.path()).unwrap();
        let want = vec![OsString::from("c"), "b".into(), "a".into()];
        assert_eq!(read_sorted(&dir).unwrap(), want);
        // The same handle again: the listing starts over, it does not continue.
        assert_eq!(read_sorted(&dir).unwrap(), want);
    }

    #[test]
    fn a_symlink_is_read_and_stat_ed_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        symlink("real", tmp.path().join("link")).unwrap();
        symlink("x".repeat(1000), tmp.path().join("long")).unwrap();
        let dir = File::open(tmp.path()).unwrap();
        let fd = dir.as_raw_fd();
        assert!(metadata_at(fd, &c("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(read_link_at(fd, &c("link")).unwrap(), Path::new("real"));
        assert_eq!(
            read_link_at(fd, &c("long")).unwrap(),
            Path::new(&"x".repeat(1000))
        );
        assert!(
            open_dir_at(fd, &c("link")).is_err(),
            "a link is never opened as a folder"
        );
        assert!(open_dir_at(fd, &c("real")).is_ok());
    }
}
