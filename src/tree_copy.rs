//! Copying a restored tree to another file system, keeping everything a restore keeps.
//!
//! A restore extracts into a staging folder inside the backup folder and moves the result
//! beside the live folder with one rename. When the live folder is on another file system
//! (a Docker volume on its own disk, a NAS mount), the rename fails and the tree is copied
//! instead. The copy keeps what the extraction made, as `cp -a` would: hard links as one
//! inode, sparse files sparse (only their data is written), extended attributes (POSIX
//! ACLs included), symlinks verbatim, fifos, device nodes (as root), modes, owners (as
//! root) and mtimes. Like the extraction, it works relative to open folders, so a tree
//! deeper than `PATH_MAX` copies too, and it never follows a symlink.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result};

use crate::dir_at::{self, c_name, check};

/// What a copy made: regular files (each inode once) and their bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
}

/// Copies `from` (a folder and everything in it, or a single entry) to `to`, which must
/// not exist yet; `to`'s parent must.
pub fn copy_tree(from: &Path, to: &Path) -> Result<Copied> {
    let split = |p: &Path| -> Result<(File, CString)> {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = p
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("{} has no name to copy", p.display()))?;
        let dir = File::open(parent).with_context(|| format!("opening {}", parent.display()))?;
        Ok((dir, c_name(name)?))
    };
    let ((src, sn), (dst, dn)) = (split(from)?, split(to)?);
    let mut copy = Copy {
        root_as: unsafe { libc::geteuid() } == 0,
        dst_root: dst.as_raw_fd(),
        links: HashMap::new(),
        copied: Copied::default(),
        buf: vec![0; crate::archive::IO_BUF],
    };
    let rel = Path::new(OsStr::from_bytes(dn.to_bytes())).to_path_buf();
    copy.entry(src.as_raw_fd(), dst.as_raw_fd(), &sn, &dn, from, &rel)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(copy.copied)
}

struct Copy {
    /// Running as root: owners and device nodes are copied.
    root_as: bool,
    /// The folder the copy is made in (`to`'s parent), open.
    dst_root: RawFd,
    /// Files with more than one link, by (device, inode): the path of their first copy
    /// relative to `dst_root`, which later links point to (as the extraction does).
    links: HashMap<(u64, u64), CString>,
    copied: Copied,
    buf: Vec<u8>,
}

impl Copy {
    fn make_dir(&self, parent: RawFd, name: &CStr) -> io::Result<File> {
        if unsafe { libc::mkdirat(parent, name.as_ptr(), 0o700) } != 0 {
            return Err(io::Error::last_os_error());
        }
        dir_at::open_dir_at(parent, name)
    }

    /// Copies the entries of the open folder `src` into the open folder `dst` (`from` is
    /// `src`'s path, for messages only), folders' metadata after their contents.
    fn dir(&mut self, src: &File, dst: &File, from: &Path, rel: &Path) -> Result<()> {
        let names =
            dir_at::read_sorted(src).with_context(|| format!("listing {}", from.display()))?;
        for name in names.iter().rev() {
            let n = c_name(name)?;
            let path = from.join(name);
            self.entry(
                src.as_raw_fd(),
                dst.as_raw_fd(),
                &n,
                &n,
                &path,
                &rel.join(name),
            )
            .with_context(|| format!("copying {}", path.display()))?;
        }
        Ok(())
    }

    /// Copies the entry `sn` of folder `s` to the new entry `dn` of folder `d` (`from`: the
    /// source's path, for messages; `rel`: the new entry's path under `dst_root`).
    fn entry(
        &mut self,
        s: RawFd,
        d: RawFd,
        sn: &CStr,
        dn: &CStr,
        from: &Path,
        rel: &Path,
    ) -> Result<()> {
        let st = dir_at::stat_at(s, sn)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let sub = dir_at::open_dir_at(s, sn)?;
                let meta = sub.metadata()?;
                let new = self.make_dir(d, dn)?;
                self.dir(&sub, &new, from, rel)?;
                apply(&sub, &new, &meta, self.root_as)?;
            }
            libc::S_IFREG => self.file(s, d, sn, dn, rel)?,
            libc::S_IFLNK => {
                let target = dir_at::read_link_at(s, sn)?;
                let t = CString::new(target.as_os_str().as_bytes())?;
                check(unsafe { libc::symlinkat(t.as_ptr(), d, dn.as_ptr()) })?;
                self.node_meta(d, dn, &st, false)?;
            }
            libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => {
                let fifo = st.st_mode & libc::S_IFMT == libc::S_IFIFO;
                if !fifo && !self.root_as {
                    tracing::warn!(
                        "{}: a device node, not copied (only root can make one)",
                        from.display()
                    );
                    return Ok(());
                }
                check(unsafe { libc::mknodat(d, dn.as_ptr(), st.st_mode, st.st_rdev) })?;
                self.node_meta(d, dn, &st, true)?;
            }
            _ => tracing::warn!("{}: a socket, not copied", from.display()),
        }
        Ok(())
    }

    /// A regular file: a further link to one copied already, or its data (holes left as
    /// holes) and metadata.
    fn file(&mut self, s: RawFd, d: RawFd, sn: &CStr, n: &CStr, rel: &Path) -> Result<()> {
        let input = dir_at::open_at(s, sn, libc::O_RDONLY | libc::O_NONBLOCK)?;
        let meta = input.metadata()?;
        let id = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&id) {
                let linked =
                    unsafe { libc::linkat(self.dst_root, first.as_ptr(), d, n.as_ptr(), 0) };
                match check(linked) {
                    Ok(()) => return Ok(()),
                    // A first copy deeper than PATH_MAX: this one gets its own data.
                    Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => tracing::warn!(
                        "{}: a hard link to a file too deep to link to; copied as a file of its own",
                        rel.display()
                    ),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let out = dir_at::create_at(d, n)?;
        copy_data(&input, &out, &meta, &mut self.buf)?;
        out.set_len(meta.len())?;
        out.sync_all()?;
        apply(&input, &out, &meta, self.root_as)?;
        self.copied.files += 1;
        self.copied.bytes += meta.len();
        if meta.nlink() > 1 {
            self.links
                .entry(id)
                .or_insert(CString::new(rel.as_os_str().as_bytes())?);
        }
        Ok(())
    }

    /// Owner, mode (not a symlink's) and mtime of a symlink or node `n` in folder `d`.
    fn node_meta(&self, d: RawFd, n: &CStr, st: &libc::stat, chmod: bool) -> io::Result<()> {
        if self.root_as {
            check(unsafe {
                libc::fchownat(
                    d,
                    n.as_ptr(),
                    st.st_uid,
                    st.st_gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if chmod {
            check(unsafe { libc::fchmodat(d, n.as_ptr(), st.st_mode & 0o7777, 0) })?;
        }
        let times = dir_at::mtime_only((st.st_mtime, st.st_mtime_nsec));
        check(unsafe { libc::utimensat(d, n.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
    }
}

/// Copies the data of `input` to `out` at the same offsets, segment by segment when it has
/// holes ([`crate::fsutil::data_segments`], as the backup finds them): holes are skipped,
/// so a sparse file stays sparse (the caller sets the length, a trailing hole included).
fn copy_data(input: &File, out: &File, meta: &std::fs::Metadata, buf: &mut [u8]) -> io::Result<()> {
    let size = meta.len();
    let segments = if meta.blocks() * 512 < size {
        crate::fsutil::data_segments(input, size)
    } else {
        None
    };
    for (start, len) in segments.unwrap_or_else(|| vec![(0, size)]) {
        copy_range(input, out, start, start + len, buf)?;
    }
    Ok(())
}

fn copy_range(input: &File, out: &File, mut pos: u64, end: u64, buf: &mut [u8]) -> io::Result<()> {
    while pos < end {
        let want = buf.len().min((end - pos) as usize);
        let n = input.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was copied",
            ));
        }
        out.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// The metadata of `src` onto its copy `f` ([`dir_at::apply_metadata`]): the owner (as
/// root), mode, extended attributes and mtime.
fn apply(src: &File, f: &File, meta: &std::fs::Metadata, root_as: bool) -> io::Result<()> {
    let attrs: Vec<(CString, Vec<u8>)> = dir_at::xattrs(src.as_raw_fd())
        .into_iter()
        .filter_map(|(k, v)| Some((CString::new(k).ok()?, v)))
        .collect();
    dir_at::apply_metadata(
        f,
        root_as.then(|| (meta.uid(), meta.gid())),
        meta.mode(),
        attrs.iter().map(|(k, v)| (k.as_c_str(), v.as_slice())),
        (meta.mtime(), meta.mtime_nsec()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};

    fn set_xattr(p: &Path, k: &str, v: &[u8]) -> bool {
        let (c, k) = (
            CString::new(p.as_os_str().as_encoded_bytes()).unwrap(),
            CString::new(k).unwrap(),
        );
        unsafe { libc::lsetxattr(c.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0) == 0 }
    }

    /// Type, mode, size, allocated blocks, link count, target, mtime and xattrs of `p`.
    fn line(p: &Path) -> String {
        let m = std::fs::symlink_metadata(p).unwrap();
        let ft = m.file_type();
        let target = std::fs::read_link(p).ok();
        let attrs = if ft.is_symlink() || ft.is_fifo() {
            Vec::new()
        } else {
            dir_at::xattrs(File::open(p).unwrap().as_raw_fd())
        };
        let (size, blocks) = if ft.is_file() {
            (m.len(), m.blocks())
        } else {
            (0, 0)
        };
        let mtime = if ft.is_symlink() { 0 } else { m.mtime() };
        format!(
            "{ft:?} {:o} {size} {blocks} {} {target:?} {mtime} {attrs:?}",
            m.mode() & 0o7777,
            if ft.is_dir() { 0 } else { m.nlink() },
        )
    }

    #[test]
    fn a_copy_keeps_links_holes_attributes_nodes_modes_and_times() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::create_dir_all(a.join("sub/deeper")).unwrap();
        std::fs::write(a.join("sub/one.txt"), b"one inode").unwrap();
        std::fs::hard_link(a.join("sub/one.txt"), a.join("two.txt")).unwrap();
        std::fs::hard_link(a.join("sub/one.txt"), a.join("sub/deeper/three.txt")).unwrap();
        let sparse = File::create(a.join("disk.img")).unwrap();
        sparse.set_len(32 << 20).unwrap();
        sparse.write_all_at(b"middle", 16 << 20).unwrap();
        drop(sparse);
        symlink("/etc/hostname", a.join("abs")).unwrap();
        symlink("../../../outside", a.join("sub/up")).unwrap();
        let fifo = CString::new(a.join("queue").as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
        let xattrs = set_xattr(&a.join("two.txt"), "user.origin", b"ops\0\xff")
            && set_xattr(&a.join("sub"), "user.policy", b"keep");
        std::fs::set_permissions(
            a.join("sub/deeper"),
            std::fs::Permissions::from_mode(0o2750),
        )
        .unwrap();
        crate::live_swap::set_mtime(&a.join("disk.img"), -86_400, 0).unwrap();
        crate::live_swap::set_mtime(&a.join("sub"), 1_500_000_000, 250).unwrap();

        let b = tmp.path().join("b");
        let copied = copy_tree(&a, &b).unwrap();
        assert_eq!(
            copied,
            Copied {
                files: 2,
                bytes: 9 + (32 << 20)
            }
        );
        for rel in [
            "",
            "sub",
            "sub/deeper",
            "sub/one.txt",
            "two.txt",
            "sub/deeper/three.txt",
            "disk.img",
            "abs",
            "sub/up",
            "queue",
        ] {
            assert_eq!(
                line(&b.join(rel)),
                line(&a.join(rel)),
                "{rel:?} differs in the copy"
            );
        }
        let (m1, m3) = (
            std::fs::metadata(b.join("two.txt")).unwrap(),
            std::fs::metadata(b.join("sub/deeper/three.txt")).unwrap(),
        );
        assert_eq!((m1.ino(), m1.nlink()), (m3.ino(), 3), "one inode");
        assert!(
            std::fs::metadata(b.join("disk.img")).unwrap().blocks() < 1024,
            "still sparse"
        );
        assert!(std::fs::symlink_metadata(b.join("queue"))
            .unwrap()
            .file_type()
            .is_fifo());
        if xattrs {
            assert_eq!(
                dir_at::xattrs(File::open(b.join("sub")).unwrap().as_raw_fd()).len(),
                1
            );
        } else {
            eprintln!(
                "SKIPPED: extended attributes (the file system of {} has none)",
                tmp.path().display()
            );
        }
        // A single file copies too; nothing is written through a link.
        copy_tree(&a.join("two.txt"), &tmp.path().join("alone.txt")).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("alone.txt")).unwrap(),
            b"one inode"
        );
        assert!(copy_tree(&a, &b).is_err(), "the destination exists");
    }
}
