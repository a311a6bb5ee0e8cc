//! Hostile archives: extract must refuse them, name the entry, and leave
//! nothing behind, neither in the destination nor beside it.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use pronto_offsite::error::Exit;
use pronto_offsite::extract::{check_readable, extract, ExtractStats};
use tar::{EntryType, Header};

const MTIME: u64 = 1_000_000_000;

/// Builds tar archives entry by entry, writing raw header bytes so that the
/// tar crate's own path checks cannot stop a hostile name.
struct Ar(tar::Builder<Vec<u8>>);

impl Ar {
    fn new() -> Ar {
        Ar(tar::Builder::new(Vec::new()))
    }

    fn raw(&mut self, kind: EntryType, path: &[u8], link: Option<&[u8]>, data: &[u8]) -> &mut Ar {
        let mut h = Header::new_gnu();
        assert!(path.len() < 100, "use long_name for long paths");
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(MTIME);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Ar {
        self.raw(EntryType::Regular, path.as_bytes(), None, data)
    }

    fn dir(&mut self, path: &str) -> &mut Ar {
        self.raw(EntryType::Directory, path.as_bytes(), None, b"")
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Ar {
        self.raw(
            EntryType::Symlink,
            path.as_bytes(),
            Some(target.as_bytes()),
            b"",
        )
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Ar {
        self.raw(
            EntryType::Link,
            path.as_bytes(),
            Some(target.as_bytes()),
            b"",
        )
    }

    /// A file whose name comes from a GNU long-name ('L') record.
    fn long_name_file(&mut self, path: &str, data: &[u8]) -> &mut Ar {
        let mut name = path.as_bytes().to_vec();
        name.push(0);
        self.raw(EntryType::GNULongName, b"././@LongLink", None, &name);
        self.raw(EntryType::Regular, b"placeholder", None, data)
    }

    /// A file whose name comes from a pax extended header.
    fn pax_path_file(&mut self, path: &str, data: &[u8]) -> &mut Ar {
        let body = format!(" path={path}\n");
        let mut len = body.len() + 2;
        if (len.to_string() + &body).len() != len {
            len += 1;
        }
        let record = format!("{len}{body}");
        assert_eq!(record.len(), len);
        self.raw(EntryType::XHeader, b"PaxHeaders/x", None, record.as_bytes());
        self.raw(EntryType::Regular, b"placeholder", None, data)
    }

    fn tar(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }

    fn gz(&mut self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Every path under `root` (not following symlinks).
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path());
        }
    }
    out
}

/// Extracts the archive built by `build` (given the scratch folder, for
/// absolute paths) into a new and into an existing empty destination; both must
/// fail with a message containing `needle`, and the scratch folder must hold
/// exactly what it held before.
fn assert_refused(needle: &str, build: impl Fn(&Path) -> Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let archive = root.join("in.tar.gz");
    fs::write(&archive, build(root)).unwrap();
    let area = root.join("area/inner");
    fs::create_dir_all(&area).unwrap();
    let existing = area.join("existing");
    fs::create_dir(&existing).unwrap();
    let before = tree(root);

    // Verify means restorable: what extract refuses, check_readable (verify) refuses too.
    let err = check_readable(&archive).expect_err("check_readable passed a hostile archive");
    assert_eq!(Exit::of(&err).code(), 4, "{err:#}");
    assert!(format!("{err:#}").contains(needle), "{err:#}");
    for dest in [area.join("new"), existing.clone()] {
        let err = extract(&archive, &dest).expect_err("hostile archive was extracted");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(needle),
            "error does not name '{needle}': {msg}"
        );
        assert_eq!(Exit::of(&err).code(), 4, "a refused archive exits 4: {msg}");
        assert_eq!(
            tree(root),
            before,
            "something was left behind (dest {})",
            dest.display()
        );
    }
    assert!(!area.join("new").exists());
    assert_eq!(fs::read_dir(&existing).unwrap().count(), 0);
}

#[test]
fn refuses_dotdot_path() {
    assert_refused("refusing entry '../escape.txt'", |_| {
        Ar::new()
            .dir("d/")
            .file("d/ok.txt", b"fine")
            .file("../escape.txt", b"evil")
            .gz()
    });
}

#[test]
fn refuses_dotdot_in_the_middle() {
    assert_refused("d/../../../escape.txt", |_| {
        Ar::new()
            .file("ok", b"x")
            .file("d/../../../escape.txt", b"evil")
            .gz()
    });
}

#[test]
fn refuses_absolute_path() {
    assert_refused("abs-victim.txt", |root| {
        let abs = format!("{}/abs-victim.txt", root.display());
        Ar::new().file("ok", b"x").file(&abs, b"evil").gz()
    });
}

#[test]
fn refuses_symlink_to_etc_then_write_through_it() {
    assert_refused(
        "refusing entry 'evil/passwd': its parent 'evil' is a symlink",
        |_| {
            Ar::new()
                .file("ok", b"x")
                .symlink("evil", "/etc")
                .file("evil/passwd", b"root::0:0::/:/bin/sh\n")
                .gz()
        },
    );
}

#[test]
fn refuses_write_through_an_inside_symlink() {
    // `inner -> sub` is harmless in itself; writing through it is refused.
    assert_refused(
        "refusing entry 'inner/x.txt': its parent 'inner' is a symlink",
        |_| {
            Ar::new()
                .dir("sub/")
                .symlink("inner", "sub")
                .file("inner/x.txt", b"x")
                .gz()
        },
    );
}

#[test]
fn refuses_symlink_up_and_out() {
    assert_refused(
        "refusing entry 'up/x': its parent 'up' is a symlink",
        |_| {
            Ar::new()
                .file("ok", b"x")
                .symlink("up", "../../")
                .file("up/x", b"x")
                .gz()
        },
    );
}

#[test]
fn refuses_a_folder_entry_over_a_symlink_then_writing_into_it() {
    // `d -> /tmp`, then `d/` as a folder entry, then `d/x`: the folder entry is refused
    // (it would otherwise be "there" and the write would follow the link).
    assert_refused("refusing entry 'd/'", |_| {
        Ar::new()
            .symlink("d", "/tmp")
            .dir("d/")
            .file("d/x", b"evil")
            .gz()
    });
}

#[test]
fn refuses_a_hardlink_through_a_symlinked_folder() {
    assert_refused("'hl => evil/passwd'", |_| {
        Ar::new()
            .symlink("evil", "/etc")
            .hardlink("hl", "evil/passwd")
            .gz()
    });
}

#[test]
fn refuses_a_write_through_a_symlink_replaced_deeper() {
    // `a/` real, `a/b -> ../../..`, then `a/b/c/x`: the parent `a/b` is a link.
    assert_refused(
        "refusing entry 'a/b/c/x': its parent 'a/b' is a symlink",
        |_| {
            Ar::new()
                .dir("a/")
                .symlink("a/b", "../../..")
                .file("a/b/c/x", b"evil")
                .gz()
        },
    );
}

/// Honest links are restored verbatim, whatever they point to: absolute, above the
/// destination, through `..` after a name, dangling. (These archives used to be refused.)
#[test]
fn honest_symlinks_anywhere_are_restored_verbatim() {
    let links = [
        ("abs", "/etc/hostname"),
        ("a/b/up", "../../../x"),
        ("a/l", "s/../../x"),
        ("a/s", "."),
        ("dangling", "no/such/file"),
        ("far", "../../../../../../outside"),
    ];
    let mut ar = Ar::new();
    ar.dir("a/").dir("a/b/");
    for (at, to) in links {
        ar.symlink(at, to);
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("a.tar.gz");
    fs::write(&p, ar.gz()).unwrap();
    let dest = tmp.path().join("out");
    let st = extract(&p, &dest).unwrap();
    assert_eq!(st.symlinks, links.len() as u64);
    assert_eq!(check_readable(&p).unwrap(), st);
    for (at, to) in links {
        assert_eq!(
            fs::read_link(dest.join(at)).unwrap(),
            PathBuf::from(to),
            "{at}"
        );
    }
    let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(names.len(), 2, "only the archive and out/");
}

#[test]
fn refuses_hardlink_to_absolute_path() {
    assert_refused("'hl => /etc/passwd'", |_| {
        Ar::new()
            .file("ok", b"x")
            .hardlink("hl", "/etc/passwd")
            .gz()
    });
}

#[test]
fn refuses_hardlink_outside() {
    assert_refused("'hl2 => ../outside'", |_| {
        Ar::new()
            .file("ok", b"x")
            .hardlink("hl2", "../outside")
            .gz()
    });
}

#[test]
fn refuses_hardlink_to_a_file_not_in_the_archive() {
    assert_refused("'hl3 => nothing-here'", |_| {
        Ar::new()
            .file("ok", b"x")
            .hardlink("hl3", "nothing-here")
            .gz()
    });
}

/// Fifos and device nodes are made inside the destination, as GNU tar makes them
/// (device nodes only as root); one behind a symlink is refused like any entry.
#[test]
fn fifos_and_device_nodes_are_made_inside_the_destination() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.tar.gz");
    let mut dev = tar::Header::new_gnu();
    dev.set_entry_type(EntryType::Block);
    dev.set_mode(0o600);
    dev.set_size(0);
    dev.set_device_major(7).unwrap();
    dev.set_device_minor(42).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(&archive).unwrap(),
        flate2::Compression::fast(),
    ));
    let mut fifo = tar::Header::new_gnu();
    fifo.set_entry_type(EntryType::Fifo);
    fifo.set_mode(0o640);
    fifo.set_size(0);
    b.append_data(&mut fifo, "run/queue", std::io::empty())
        .unwrap();
    b.append_data(&mut dev, "run/loop", std::io::empty())
        .unwrap();
    b.into_inner().unwrap().finish().unwrap();
    let dest = tmp.path().join("dest");
    let st = extract(&archive, &dest).unwrap();
    assert_eq!(st.specials, 2);
    let q = std::fs::symlink_metadata(dest.join("run/queue")).unwrap();
    assert!(q.file_type().is_fifo());
    assert_eq!(q.mode() & 0o7777, 0o640);
    if unsafe { libc::geteuid() } == 0 {
        let d = std::fs::symlink_metadata(dest.join("run/loop")).unwrap();
        assert!(d.file_type().is_block_device());
        assert_eq!((libc::major(d.rdev()), libc::minor(d.rdev())), (7, 42));
    } else {
        assert!(
            !dest.join("run/loop").exists(),
            "only root makes a device node"
        );
    }
    // Behind a symlink: refused, nothing made outside.
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    assert_refused("'l/pipe'", |_| {
        Ar::new()
            .symlink("l", outside.to_str().unwrap())
            .raw(EntryType::Fifo, b"l/pipe", None, b"")
            .gz()
    });
    assert!(!outside.join("pipe").exists());
}

#[test]
fn refuses_dotdot_hidden_in_a_gnu_long_name() {
    let long = format!("{}/../../../../../../escape-long.txt", "a".repeat(120));
    let shown = long.clone();
    assert_refused(&shown, move |_| {
        Ar::new()
            .file("ok", b"x")
            .long_name_file(&long, b"evil")
            .gz()
    });
}

#[test]
fn refuses_dotdot_hidden_in_a_pax_path() {
    assert_refused("'../pax-escape.txt'", |_| {
        Ar::new()
            .file("ok", b"x")
            .pax_path_file("../pax-escape.txt", b"evil")
            .gz()
    });
}

#[test]
fn refuses_a_file_and_a_folder_of_the_same_name() {
    assert_refused("refusing entry 'c/'", |_| {
        Ar::new().file("c", b"x").dir("c/").gz()
    });
    assert_refused("refusing entry 'c'", |_| {
        Ar::new().dir("c/").file("c", b"x").gz()
    });
}

#[test]
fn refuses_a_damaged_gzip_trailer_after_writing_everything() {
    // The damage is only found at the very end, after every file was written:
    // they must all go again.
    assert_refused("in.tar.gz", |_| {
        let mut gz = Ar::new()
            .dir("d/")
            .file("d/a.txt", b"hello")
            .file("b.txt", b"world")
            .gz();
        let n = gz.len();
        gz[n - 8] ^= 0x01; // CRC-32
        gz
    });
    assert_refused("in.tar.gz", |_| {
        let gz = Ar::new().dir("d/").file("d/a.txt", &[7u8; 100_000]).gz();
        gz[..gz.len() - 20].to_vec()
    });
}

#[test]
fn check_readable_catches_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("a.tar.gz");
    let mut gz = Ar::new().file("a.txt", b"hello").gz();
    fs::write(&p, &gz).unwrap();
    assert_eq!(
        check_readable(&p).unwrap(),
        ExtractStats {
            files: 1,
            dirs: 0,
            symlinks: 0,
            specials: 0,
            bytes: 5
        }
    );
    let n = gz.len();
    gz[n - 8] ^= 0x01;
    fs::write(&p, &gz).unwrap();
    assert!(check_readable(&p).is_err());
    fs::write(&p, b"not gzip at all").unwrap();
    assert!(check_readable(&p).is_err());
}

/// Positive control: the same builder makes benign archives that extract,
/// including multi-member gzip (two members concatenated, split mid-entry).
#[test]
fn benign_archive_in_two_gzip_members_extracts() {
    let tar = Ar::new()
        .dir("top/")
        .dir("top/sub/")
        .file("top/sub/a.txt", &[b'a'; 3000])
        .symlink("top/link", "sub/a.txt")
        .symlink("top/sub/up", "../link")
        .hardlink("top/hard", "top/sub/a.txt")
        .file("./top/dot.txt", b"dot")
        .tar();
    let mut gz = gzip(&tar[..1536]);
    gz.extend(gzip(&tar[1536..]));
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("a.tar.gz");
    fs::write(&p, &gz).unwrap();
    let dest = tmp.path().join("out");
    let st = extract(&p, &dest).unwrap();
    assert_eq!(
        st,
        ExtractStats {
            files: 3,
            dirs: 2,
            symlinks: 2,
            specials: 0,
            bytes: 3003
        }
    );
    assert_eq!(check_readable(&p).unwrap(), st);
    assert_eq!(fs::read(dest.join("top/sub/up")).unwrap(), vec![b'a'; 3000]);
    assert_eq!(fs::read(dest.join("top/hard")).unwrap(), vec![b'a'; 3000]);
    assert_eq!(fs::read(dest.join("top/dot.txt")).unwrap(), b"dot");
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(names.len(), 2, "only the archive and out/");
}

#[test]
fn destination_that_is_a_file_or_has_no_parent_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("a.tar.gz");
    fs::write(&p, Ar::new().file("a.txt", b"x").gz()).unwrap();
    let err = extract(&p, &p).unwrap_err();
    assert!(format!("{err:#}").contains("not a folder"), "{err:#}");
    let err = extract(&p, &tmp.path().join("x/y")).unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    let err = extract(&tmp.path().join("missing.tar.gz"), &tmp.path().join("z")).unwrap_err();
    assert!(format!("{err:#}").contains("missing.tar.gz"), "{err:#}");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
}
