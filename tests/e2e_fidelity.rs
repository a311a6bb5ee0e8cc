//! Trees full of honest links (absolute, above the tree, dangling) and hard links go
//! through backup → push → `pull --to`, `verify` and `pull --restore` unchanged; a
//! restore never replaces a folder that holds our own archives; a file that changes while
//! it is read is stored as read and reported, not a failed backup.

mod support;

use std::os::unix::fs::{symlink, MetadataExt};

use support::{snapshot, stderr, text, Env};

fn build_tree(root: &std::path::Path) {
    std::fs::create_dir_all(root.join("conf/deep")).unwrap();
    std::fs::write(root.join("conf/app.conf"), "port = 80\n").unwrap();
    std::fs::write(root.join("conf/deep/data.txt"), "data\n").unwrap();
    symlink("/etc/hostname", root.join("conf/hostname")).unwrap();
    symlink("../../outside", root.join("conf/deep/up")).unwrap();
    symlink("no/such/file", root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("conf/app.conf"), root.join("app-hardlink.conf")).unwrap();
}

fn run_ok(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    assert!(o.status.success(), "{args:?} failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn honest_links_survive_pull_verify_and_restore() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    env.write_config("");
    let before = snapshot(&src);
    let id = run_ok(&env, &["backup"]).trim().to_string();
    run_ok(&env, &["push"]);
    run_ok(&env, &["verify"]);

    // pull --to: links identical, the hard link one inode.
    let out = env.path("out");
    run_ok(&env, &["pull", &id, "--to", out.to_str().unwrap()]);
    let top = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let site = top.join("static_content/site");
    assert_eq!(snapshot(&site), before);
    assert_eq!(
        std::fs::read_link(site.join("conf/hostname")).unwrap(),
        std::path::Path::new("/etc/hostname")
    );
    let (a, b) = (
        std::fs::metadata(site.join("conf/app.conf")).unwrap(),
        std::fs::metadata(site.join("app-hardlink.conf")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));

    // pull --restore of the folder source: the live tree comes back exactly.
    std::fs::remove_file(src.join("conf/hostname")).unwrap();
    std::fs::remove_file(src.join("dangling")).unwrap();
    std::fs::write(src.join("conf/app.conf"), "changed\n").unwrap();
    run_ok(&env, &["pull", &id, "--restore"]);
    assert_eq!(snapshot(&src), before);
    let (a, b) = (
        std::fs::metadata(src.join("conf/app.conf")).unwrap(),
        std::fs::metadata(src.join("app-hardlink.conf")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "the restored hard link is one inode");
    // Nothing was written outside the restored folder through its links.
    assert!(!env.path("outside").exists());
}

#[test]
fn restore_refuses_to_replace_a_folder_holding_the_backup_folder() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    let text_cfg = format!(
        "[local]\ndir = \"src/backups\"\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n\n[[remotes]]\nname = \"nas\"\nurl = \"file://{}\"\n",
        env.remote().display()
    );
    std::fs::write(env.config(), text_cfg).unwrap();
    let id = run_ok(&env, &["backup"]).trim().to_string();
    let listed = || {
        let mut v = support::files_under(&src.join("backups"));
        v.sort();
        v
    };
    let archives_before = listed();
    assert!(!archives_before.is_empty());
    let o = env.run(&["pull", &id, "--restore"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("holds the backup folder"),
        "{}",
        stderr(&o)
    );
    assert!(!text(&o).contains("restore complete"), "{}", text(&o));
    assert_eq!(listed(), archives_before);
}

#[test]
fn a_file_that_grows_while_read_is_stored_reported_and_warned_about() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/a.txt"), "a\n").unwrap();
    // /proc/version: its stat says 0 bytes, reading it gives more.
    env.write_config(
        "\n[[sources]]\nname = \"kernel\"\nkind = \"configs\"\npath = \"/proc/version\"\n",
    );
    let o = env.run(&["backup"]);
    assert!(
        o.status.success(),
        "a changing file fails no backup by default: {}",
        text(&o)
    );
    let err = stderr(&o);
    assert!(
        err.contains("changed while read") && err.contains("/proc/version") && err.contains("grew"),
        "{err}"
    );
    assert!(!err.contains("no archive was written"), "{err}");
    let manifest = support::files_under(&env.backups())
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .unwrap();
    let m = std::fs::read_to_string(manifest).unwrap();
    assert!(
        m.contains("\"changed\"") && m.contains("/proc/version"),
        "{m}"
    );
}

#[test]
fn pull_to_and_restore_use_the_verified_local_copy_with_no_remote_reachable() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    // The only remote is unreachable: its folder is a plain file.
    std::fs::write(env.path("not-a-folder"), "x").unwrap();
    let cfg = format!(
        "[local]\ndir = \"backups\"\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n\n[[remotes]]\nname = \"nas\"\nurl = \"file://{}/remote\"\n",
        env.path("not-a-folder").display()
    );
    std::fs::write(env.config(), cfg).unwrap();
    let before = snapshot(&src);
    let id = run_ok(&env, &["backup"]).trim().to_string();
    let out = env.path("out");
    let said = run_ok(&env, &["pull", &id, "--to", out.to_str().unwrap()]);
    assert!(said.contains("using the local copy"), "{said}");
    let top = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(snapshot(&top.join("static_content/site")), before);
    std::fs::remove_file(src.join("dangling")).unwrap();
    run_ok(&env, &["pull", &id, "--restore", "--no-safety-backup"]);
    assert_eq!(snapshot(&src), before);
    // --remote forces the remote: here it fails, naming it.
    let o = env.run(&[
        "pull",
        &id,
        "--remote",
        "nas",
        "--to",
        env.path("out2").to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(stderr(&o).contains("nas"), "{}", text(&o));
}

#[test]
fn a_restore_cleans_up_what_an_interrupted_one_left() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    env.write_config("");
    let before = snapshot(&src);
    let id = run_ok(&env, &["backup"]).trim().to_string();
    // A killed restore: a half-made copy and the moved-aside old folder, src missing.
    std::fs::create_dir_all(env.path(".src.pronto-restore-99999/half")).unwrap();
    std::fs::rename(&src, env.path(".src.pronto-old-99998")).unwrap();
    run_ok(&env, &["pull", &id, "--restore", "--no-safety-backup"]);
    assert_eq!(snapshot(&src), before);
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".pronto-restore-") || n.contains(".pronto-old-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A live folder on another file system than the backup folder (here tmpfs): the restored
/// tree cannot be renamed into place, so it is copied, and the copy keeps what the
/// extraction made: hard links as one inode, holes, extended attributes, links verbatim,
/// modes and mtimes.
#[test]
fn a_folder_on_another_file_system_is_restored_whole() {
    use std::os::unix::fs::FileExt;
    let env = Env::new();
    build_tree(&env.path("src"));
    let Ok(shm) = tempfile::Builder::new()
        .prefix("pronto-xfs-")
        .tempdir_in("/dev/shm")
    else {
        eprintln!("SKIPPED: no /dev/shm here, so no second file system for this test");
        return;
    };
    let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
    if dev(shm.path()) == dev(&env.path("src")) {
        eprintln!("SKIPPED: /dev/shm is on the test folder's file system");
        return;
    }
    let live = shm.path().join("live");
    build_tree(&live);
    let sparse = std::fs::File::create(live.join("disk.img")).unwrap();
    sparse.set_len(16 << 20).unwrap();
    sparse.write_all_at(b"middle", 8 << 20).unwrap();
    drop(sparse);
    let c = std::ffi::CString::new(live.join("conf/app.conf").to_str().unwrap()).unwrap();
    let xattr = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            c"user.origin".as_ptr(),
            b"ops\n".as_ptr().cast(),
            4,
            0,
        )
    } == 0;
    env.write_config(&format!(
        "[[sources]]\nname = \"shm\"\nkind = \"configs\"\npath = \"{}\"\n",
        live.display()
    ));
    let before = snapshot(&live);
    run_ok(&env, &["backup"]);

    std::fs::write(live.join("conf/app.conf"), "changed\n").unwrap();
    std::fs::remove_file(live.join("disk.img")).unwrap();
    // A default ACL on the folder the copy is made in: what the copy's files would
    // inherit, and the originals never had.
    let inherited = std::process::Command::new("setfacl")
        .args(["-d", "-m", "u:65534:rwx"])
        .arg(shm.path())
        .status()
        .is_ok_and(|s| s.success());
    run_ok(&env, &["pull", "latest", "--restore", "--only", "configs"]);
    if inherited {
        for p in ["conf/app.conf", "conf", "disk.img"] {
            let o = std::process::Command::new("getfacl")
                .args(["-n", "-p"])
                .arg(live.join(p))
                .output()
                .unwrap();
            let acl = String::from_utf8_lossy(&o.stdout);
            assert!(
                !acl.contains("user:65534"),
                "{p} got an ACL the original did not have:\n{acl}"
            );
        }
    } else {
        eprintln!("SKIPPED: inherited ACLs (setfacl -d failed on tmpfs here)");
    }
    assert_eq!(snapshot(&live), before);
    let (a, b) = (
        std::fs::metadata(live.join("conf/app.conf")).unwrap(),
        std::fs::metadata(live.join("app-hardlink.conf")).unwrap(),
    );
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "the hard link is one inode"
    );
    let img = std::fs::metadata(live.join("disk.img")).unwrap();
    assert!(
        img.blocks() < 1024,
        "disk.img came back fully allocated: {} blocks",
        img.blocks()
    );
    if xattr {
        let mut v = [0u8; 16];
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                c"user.origin".as_ptr(),
                v.as_mut_ptr().cast(),
                v.len(),
            )
        };
        assert_eq!(&v[..n.max(0) as usize], b"ops\n", "the extended attribute");
    } else {
        eprintln!("SKIPPED: extended attributes (tmpfs here has no user.* attributes)");
    }
    // Nothing of the copy is left beside the live folder.
    let left: Vec<_> = std::fs::read_dir(shm.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("live")]);
}
