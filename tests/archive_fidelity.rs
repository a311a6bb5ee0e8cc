//! Fidelity of a backup and restore, compared with what GNU tar keeps: a listing of type,
//! mode, owner, size, allocated blocks, link count, link target, mtime and extended
//! attributes of every path is taken before the backup and after our extract, and must
//! be identical. The same archive must stay readable by plain `tar -xzf`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use pronto_offsite::archive::{write_archive, ArchiveInput, WriteOptions};
use pronto_offsite::extract::{check_readable, extract};
use pronto_offsite::manifest::Section;

const TOP: &str = "pronto-app-backup-20260201-170521";

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_mtime(path: &Path, secs: i64) {
    let t = [
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        },
    ];
    let c = cpath(path);
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let (c, n) = (cpath(path), CString::new(name).unwrap());
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setting {name} on {}: {} (this test needs a file system with user xattrs for TMPDIR)",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let c = cpath(path);
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if n <= 0 {
        return Vec::new();
    }
    let mut names = vec![0u8; n as usize];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    names.truncate(n.max(0) as usize);
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let name = CString::new(raw).unwrap();
        let mut v = vec![0u8; 65536];
        let k =
            unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(k.max(0) as usize);
        out.push((String::from_utf8_lossy(raw).into_owned(), v));
    }
    out.sort();
    out
}

/// One line per path: everything GNU tar keeps that a restore must bring back.
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let m = fs::symlink_metadata(&full).unwrap();
        let ft = m.file_type();
        let (kind, size, blocks, target) = if ft.is_symlink() {
            let t = fs::read_link(&full).unwrap();
            ("link", 0, 0, t.display().to_string())
        } else if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&full)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                stack.push(rel.join(n));
            }
            // A folder's size and blocks depend on the file system's history, not on us.
            ("dir", 0, 0, String::new())
        } else if ft.is_fifo() {
            ("fifo", 0, 0, String::new())
        } else if ft.is_char_device() || ft.is_block_device() {
            let k = if ft.is_char_device() { "char" } else { "block" };
            (
                k,
                0,
                0,
                format!("dev {}:{}", libc::major(m.rdev()), libc::minor(m.rdev())),
            )
        } else {
            ("file", m.len(), m.blocks(), String::new())
        };
        let mtime = if ft.is_symlink() { 0 } else { m.mtime() };
        let line = format!(
            "{kind} mode={:o} owner={}:{} size={size} blocks={blocks} nlink={} mtime={mtime} target={target:?} xattrs={:?}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            if ft.is_dir() { 0 } else { m.nlink() },
            xattrs(&full)
        );
        out.insert(rel.display().to_string(), line);
    }
    out
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A tree with everything GNU tar keeps.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::write(root.join("etc/app.conf"), b"port = 80\n").unwrap();
    fs::set_permissions(root.join("etc/app.conf"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(root.join("etc/conf.d/run.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(
        root.join("etc/conf.d/run.sh"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::set_permissions(root.join("etc/conf.d"), fs::Permissions::from_mode(0o2750)).unwrap();
    // Hard links: three names of one file across folders, and a pair.
    fs::write(root.join("etc/shared.txt"), b"one inode\n").unwrap();
    fs::hard_link(
        root.join("etc/shared.txt"),
        root.join("etc/conf.d/shared-2.txt"),
    )
    .unwrap();
    fs::hard_link(root.join("etc/shared.txt"), root.join("shared-3.txt")).unwrap();
    // A sparse file: 64 MiB with data in three places (one of them at the very end).
    {
        use std::os::unix::fs::FileExt;
        let f = File::create(root.join("disk.img")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[7u8; 8192], 0).unwrap();
        f.write_all_at(b"middle", 20 << 20).unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
    }
    // A sparse file that ends in a hole.
    {
        use std::os::unix::fs::FileExt;
        let f = File::create(root.join("holes-at-end.img")).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"head", 4096).unwrap();
    }
    // Extended attributes on a file and a folder.
    set_xattr(
        &root.join("etc/app.conf"),
        "user.origin",
        b"ops\0binary\xff\nwith a newline\n22 path=smuggled\n",
    );
    set_xattr(&root.join("etc"), "user.policy", b"keep");
    // POSIX ACLs: an access ACL on a file, a default ACL on a folder (`setfacl`, from the
    // `acl` package that the test command installs).
    setfacl(&["-m", "u:65534:r,g:0:rw"], &root.join("etc/app.conf"));
    setfacl(&["-d", "-m", "u:65534:rx"], &root.join("etc/conf.d"));
    // Links verbatim, whatever they point to.
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../outside", root.join("etc/up-link")).unwrap();
    std::os::unix::fs::symlink("no/such/file", root.join("dangling")).unwrap();
    // A deep path, far past tar's 100-byte name field and 255-byte pax-less limits.
    let mut deep = root.join("deep");
    for i in 0..12 {
        deep.push(format!("{i:02}-{}", "d".repeat(200)));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join(format!("{}.txt", "f".repeat(200))), b"deep").unwrap();
    std::os::unix::fs::symlink("x".repeat(300), deep.join("long-target")).unwrap();
    // A fifo, and as root device nodes (GNU tar stores their numbers).
    let mknod = |name: &str, mode: libc::mode_t, dev: libc::dev_t| {
        let c = cpath(&root.join(name));
        assert_eq!(
            unsafe { libc::mknod(c.as_ptr(), mode, dev) },
            0,
            "mknod {name}"
        );
    };
    mknod("etc/queue", libc::S_IFIFO | 0o640, 0);
    fs::set_permissions(root.join("etc/queue"), fs::Permissions::from_mode(0o640)).unwrap();
    if is_root() {
        mknod("null-dev", libc::S_IFCHR | 0o666, libc::makedev(1, 3));
        fs::set_permissions(root.join("null-dev"), fs::Permissions::from_mode(0o666)).unwrap();
        mknod("loop-dev", libc::S_IFBLK | 0o600, libc::makedev(7, 42));
        fs::set_permissions(root.join("loop-dev"), fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Owners: another numeric owner (with a name: nobody) when we can.
    if is_root() {
        std::os::unix::fs::lchown(root.join("etc/app.conf"), Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::lchown(root.join("abs-link"), Some(65534), Some(65534)).unwrap();
    }
    // Times: before 1970, and a usual one; folders last (writing into them moves theirs).
    set_mtime(&root.join("etc/app.conf"), -86_400 * 365 * 10);
    set_mtime(&root.join("disk.img"), 1_000_000_000);
    set_mtime(&root.join("etc/conf.d"), -1);
    set_mtime(&root.join("etc"), 1_500_000_000);
}

fn setfacl(args: &[&str], path: &Path) {
    let o = Command::new("setfacl")
        .args(args)
        .arg(path)
        .output()
        .expect("setfacl is needed for this test (the `acl` package; scripts/test installs it)");
    assert!(
        o.status.success(),
        "setfacl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `getfacl -n` of a path without its `# file:` line: the ACL and owners.
fn getfacl(path: &Path) -> String {
    let o = Command::new("getfacl")
        .args(["-n", "-p"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "getfacl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with("# file:"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn site(path: &Path) -> ArchiveInput {
    ArchiveInput {
        name: "site".into(),
        section: Section::StaticContent,
        path: path.into(),
        allow_skip: false,
        strict: false,
    }
}

#[test]
fn listing_is_identical_after_backup_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    let before = listing(&src);

    let out = tmp.path().join("a.tar.gz");
    let w = write_archive(&out, &WriteOptions::new(TOP), &[site(&src)], &|_| {
        String::new()
    })
    .unwrap();
    assert!(
        w.sources[0].changed.is_empty(),
        "{:?}",
        w.sources[0].changed
    );
    // Sparse files are stored sparse: the archive is far smaller than their holes.
    assert!(w.size < 1 << 20, "archive is {} bytes", w.size);
    let st = check_readable(&out).unwrap();

    let dest = tmp.path().join("restored");
    assert_eq!(extract(&out, &dest).unwrap(), st);
    let after = listing(&dest.join(TOP).join("static_content/site"));
    for (path, line) in &before {
        assert_eq!(Some(line), after.get(path), "{path} differs after restore");
    }
    assert_eq!(before.len(), after.len());
    assert_eq!(
        fs::read(dest.join(TOP).join("static_content/site/disk.img")).unwrap(),
        fs::read(src.join("disk.img")).unwrap()
    );

    // Plain GNU tar reads the same archive: names, hard links, sparse files, xattrs.
    let by_tar = tmp.path().join("by-tar");
    fs::create_dir(&by_tar).unwrap();
    let o = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "--acls", "-xzf"])
        .arg(&out)
        .arg("-C")
        .arg(&by_tar)
        .output()
        .expect("GNU tar is needed for this test");
    assert!(
        o.status.success(),
        "tar -xzf: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let t = by_tar.join(TOP).join("static_content/site");
    assert!(fs::symlink_metadata(t.join("etc/queue"))
        .unwrap()
        .file_type()
        .is_fifo());
    if is_root() {
        let d = fs::symlink_metadata(t.join("loop-dev")).unwrap();
        assert!(d.file_type().is_block_device());
        assert_eq!((libc::major(d.rdev()), libc::minor(d.rdev())), (7, 42));
    }
    let m1 = fs::metadata(t.join("etc/shared.txt")).unwrap();
    let m3 = fs::metadata(t.join("shared-3.txt")).unwrap();
    assert_eq!(
        (m1.ino(), m1.nlink()),
        (m3.ino(), 3),
        "tar restores one inode"
    );
    assert_eq!(
        fs::read(t.join("disk.img")).unwrap(),
        fs::read(src.join("disk.img")).unwrap()
    );
    assert_eq!(
        fs::read_link(t.join("abs-link")).unwrap(),
        Path::new("/etc/hostname")
    );
    assert_eq!(
        xattrs(&t.join("etc/app.conf")),
        xattrs(&src.join("etc/app.conf"))
    );
    assert_eq!(
        fs::metadata(t.join("etc/app.conf")).unwrap().mtime(),
        -86_400 * 365 * 10
    );
    // GNU tar restores the ACLs from their text (`SCHILY.acl.*`), as `tar --acls` wrote it.
    for p in ["etc/app.conf", "etc/conf.d"] {
        let acl = getfacl(&src.join(p));
        assert!(acl.contains(":65534:r"), "{p}: {acl}");
        assert_eq!(getfacl(&t.join(p)), acl, "{p}: the ACL after tar --acls -x");
    }
    // And GNU tar's listing shows owner names.
    let o = Command::new("tar").arg("-tvzf").arg(&out).output().unwrap();
    let list = String::from_utf8_lossy(&o.stdout);
    let me = pronto_offsite::owners::user_name(unsafe { libc::geteuid() }).unwrap();
    assert!(list.contains(&*String::from_utf8_lossy(&me)), "{list}");
}

/// Appends to `path` until `stop` is set: a log that grows during the backup.
fn grow_until(
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            f.write_all(b"GET / 200\n").unwrap();
        }
    })
}

#[test]
fn a_file_growing_during_the_backup_is_stored_as_read_unless_strict() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let log = src.join("access.log");
    // Big enough that reading it takes a while; the appender never stops meanwhile.
    fs::write(&log, vec![b'x'; 32 << 20]).unwrap();
    for strict in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = grow_until(log.clone(), stop.clone());
        let out = tmp.path().join(format!("a-{strict}.tar.gz"));
        let input = ArchiveInput {
            strict,
            ..site(&src)
        };
        let res = write_archive(&out, &WriteOptions::new(TOP), &[input], &|_| String::new());
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        if strict {
            let msg = format!("{:#}", res.unwrap_err());
            assert!(
                msg.contains("access.log") && msg.contains("strict"),
                "{msg}"
            );
            assert!(
                !msg.contains("stored"),
                "a failed backup stores nothing: {msg}"
            );
            assert!(!out.exists());
        } else {
            let w = res.expect("a growing log does not fail the backup by default");
            let changed = &w.sources[0].changed;
            assert_eq!(changed.len(), 1, "{changed:?}");
            assert!(
                changed[0].contains("access.log") && changed[0].contains("grew"),
                "{changed:?}"
            );
            check_readable(&out).unwrap();
        }
    }
}

/// Creates `levels` nested folders named `{i:02}-ddd…` (`width` bytes each) under `root`,
/// relative to open folders (the absolute path soon exceeds `PATH_MAX`), and a file
/// `deep.txt` holding `body` at the bottom.
fn make_deep(root: &Path, levels: usize, width: usize, body: &[u8]) {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut dir = File::open(root).unwrap();
    for i in 0..levels {
        let name = CString::new(format!("{i:02}-{}", "d".repeat(width - 3))).unwrap();
        let fd = dir.as_raw_fd();
        assert_eq!(
            unsafe { libc::mkdirat(fd, name.as_ptr(), 0o755) },
            0,
            "mkdirat {i}"
        );
        let sub = unsafe { libc::openat(fd, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        assert!(sub >= 0, "openat {i}");
        dir = unsafe { File::from_raw_fd(sub) };
    }
    let name = CString::new("deep.txt").unwrap();
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o640,
        )
    };
    assert!(fd >= 0, "creating deep.txt");
    unsafe { File::from_raw_fd(fd) }.write_all(body).unwrap();
}

/// The bytes of `deep.txt` at the bottom of the tree [`make_deep`] made, read relative to
/// open folders.
fn read_deep(root: &Path, levels: usize, width: usize) -> Vec<u8> {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut dir = File::open(root).unwrap();
    for i in 0..levels {
        let name = CString::new(format!("{i:02}-{}", "d".repeat(width - 3))).unwrap();
        let sub = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            )
        };
        assert!(sub >= 0, "level {i} is missing after the restore");
        dir = unsafe { File::from_raw_fd(sub) };
    }
    let name = CString::new("deep.txt").unwrap();
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0, "deep.txt is missing after the restore");
    let mut body = Vec::new();
    unsafe { File::from_raw_fd(fd) }
        .read_to_end(&mut body)
        .unwrap();
    body
}

/// A tree whose paths are longer than `PATH_MAX` (4,096 bytes) backs up, lists in GNU tar
/// under its full names and restores, as GNU tar handles it: the walk and the extraction
/// work relative to open folders.
#[test]
fn a_tree_deeper_than_path_max_backs_up_and_restores() {
    const LEVELS: usize = 24;
    const WIDTH: usize = 200;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_deep(&src, LEVELS, WIDTH, b"at the bottom\n");
    let depth = src.as_os_str().len() + LEVELS * (WIDTH + 1) + "/deep.txt".len();
    assert!(depth > 4096, "the tree is only {depth} bytes deep");

    let out = tmp.path().join("a.tar.gz");
    let w = write_archive(&out, &WriteOptions::new(TOP), &[site(&src)], &|_| {
        String::new()
    })
    .expect("a tree deeper than PATH_MAX backs up");
    assert_eq!(
        (w.sources[0].files, w.sources[0].dirs),
        (1, LEVELS as u64 + 1)
    );

    // GNU tar lists the file under its whole name.
    let o = Command::new("tar").arg("-tzf").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names = String::from_utf8_lossy(&o.stdout);
    let deepest = names
        .lines()
        .find(|l| l.ends_with("/deep.txt"))
        .expect("deep.txt is in the archive");
    assert!(deepest.len() > LEVELS * (WIDTH + 1), "{deepest}");

    let dest = tmp.path().join("restored");
    extract(&out, &dest).expect("the deep tree restores");
    assert_eq!(
        read_deep(&dest.join(TOP).join("static_content/site"), LEVELS, WIDTH),
        b"at the bottom\n"
    );
}

/// An archive made by `tar --acls` (the ACL as text only) restores with its ACLs: the text
/// becomes the kernel's attribute again.
#[test]
fn acls_written_by_gnu_tar_are_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("src").join(TOP);
    fs::create_dir_all(top.join("conf")).unwrap();
    fs::write(top.join("conf/app.conf"), b"x\n").unwrap();
    setfacl(&["-m", "u:65534:r,g:0:rw"], &top.join("conf/app.conf"));
    setfacl(&["-d", "-m", "u:65534:rx"], &top.join("conf"));
    let out = tmp.path().join("gnu.tar.gz");
    let o = Command::new("tar")
        .args(["--acls", "-czf"])
        .arg(&out)
        .arg("-C")
        .arg(tmp.path().join("src"))
        .arg(TOP)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dest = tmp.path().join("restored");
    extract(&out, &dest).unwrap();
    for p in ["conf/app.conf", "conf"] {
        let want = getfacl(&top.join(p));
        assert!(want.contains(":65534:r"), "{p}: {want}");
        assert_eq!(
            getfacl(&dest.join(TOP).join(p)),
            want,
            "{p}: the ACL after our restore"
        );
    }
}

/// An archive whose ACL names a user: the name is resolved on the restoring host (as
/// `tar --acls` and as owners are), not the backup host's number in the raw attribute.
/// And a malformed pax header is refused by `verify`'s check as by the restore.
#[test]
fn acl_names_win_over_the_backup_hosts_numbers_and_bad_pax_is_refused_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a.tar.gz");
    // The raw attribute says uid 12345 (the backup host's "nobody"); the text says nobody.
    let mut raw = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 12345),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        raw.extend_from_slice(&tag.to_le_bytes());
        raw.extend_from_slice(&perm.to_le_bytes());
        raw.extend_from_slice(&id.to_le_bytes());
    }
    let text = b"user::rw-\nuser:nobody:r--\ngroup::r--\nmask::r--\nother::r--\n";
    let write = |out: &Path, pax: Vec<(&str, &[u8])>| {
        let f = File::create(out).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, format!("{TOP}/"), std::io::empty())
            .unwrap();
        b.append_pax_extensions(pax).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(2);
        b.append_data(&mut h, format!("{TOP}/f.txt"), &b"x\n"[..])
            .unwrap();
        b.into_inner().unwrap().finish().unwrap();
    };
    write(
        &out,
        vec![
            ("SCHILY.xattr.system.posix_acl_access", &raw[..]),
            ("SCHILY.acl.access", &text[..]),
        ],
    );
    let dest = tmp.path().join("restored");
    extract(&out, &dest).unwrap();
    let acl = getfacl(&dest.join(TOP).join("f.txt"));
    let nobody = pronto_offsite::owners::uid_of_name(b"nobody").expect("a user nobody here");
    assert!(acl.contains(&format!("user:{nobody}:r--")), "{acl}");
    assert!(
        !acl.contains("12345"),
        "the backup host's number was applied: {acl}"
    );

    // A pax record whose length does not frame it: refused by the check verify runs.
    let bad = tmp.path().join("bad.tar.gz");
    write(&bad, vec![("comment", &b"x"[..])]);
    let mut bytes = Vec::new();
    {
        use std::io::Read;
        flate2::read::GzDecoder::new(File::open(&bad).unwrap())
            .read_to_end(&mut bytes)
            .unwrap();
    }
    // "13 comment=x\n": say it is 40 bytes long, past the end of the header.
    let at = bytes
        .windows(11)
        .position(|w| w == b" comment=x\n")
        .expect("the record");
    bytes[at - 2..at].copy_from_slice(b"40");
    let mut gz =
        flate2::write::GzEncoder::new(File::create(&bad).unwrap(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &bytes).unwrap();
    gz.finish().unwrap();
    let e = check_readable(&bad).expect_err("a malformed pax header verifies");
    assert!(format!("{e:#}").contains("malformed pax"), "{e:#}");
    assert!(extract(&bad, &tmp.path().join("bad-out")).is_err());
}
