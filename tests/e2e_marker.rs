//! Remotes are initialized, and their absence is noticed (issue 17): the first push
//! writes a marker at the remote and records that it did; a later push to a file://
//! remote whose marker has gone (an unmounted NAS: an empty mount point on the local
//! disk) refuses before writing anything, `backup --push` too; the remounted remote
//! works again; a remote emptied on purpose is started afresh with `push --init-remote`;
//! a brand-new remote needs no step.

mod support;

use std::path::Path;

use support::{text, Env};

const MARKER: &str = ".pronto-offsite-remote";

/// Every entry of `dir`, hidden ones included.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn archives(dir: &Path) -> usize {
    entries(dir)
        .iter()
        .filter(|n| n.starts_with("pronto-app-backup-") && n.ends_with(".tar.gz"))
        .count()
}

fn backup(env: &Env) {
    let o = env.run(&["backup"]);
    assert_eq!(o.status.code(), Some(0), "backup: {}", text(&o));
    // Archive names have one-second resolution.
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

/// A config with one file:// remote, `nas`, and one archive pushed to it: the first push
/// to a brand-new remote needs no extra step, and writes the marker and this host's record.
fn pushed_once() -> (Env, std::path::PathBuf) {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/index.html"), "<h1>pronto</h1>\n").unwrap();
    env.write_config("\n[retention]\nlast = 10\n");
    let remote = env.remote();
    backup(&env);
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(remote.join(MARKER).is_file(), "{:?}", entries(&remote));
    assert!(env.backups().join(".remotes/nas.json").is_file());
    (env, remote)
}

#[test]
fn a_remote_whose_marker_is_gone_is_refused_until_remounted_or_initialized_afresh() {
    let (env, remote) = pushed_once();

    // The NAS is not mounted: its mount point is an empty folder on the local disk.
    std::fs::rename(&remote, env.path("nas-disk")).unwrap();
    std::fs::create_dir(&remote).unwrap();
    backup(&env);
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(&format!(
            "remote nas at file://{} has no marker ({MARKER})",
            remote.display()
        )) && t.contains("not mounted? Nothing was written there")
            && t.contains("pronto-offsite push --remote nas --init-remote"),
        "{t}"
    );
    assert_eq!(
        entries(&remote),
        Vec::<String>::new(),
        "written to the mount point"
    );
    // backup --push: the archive is made, nothing goes to the mount point.
    let o = env.run(&["backup", "--push"]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("has no marker"), "{}", text(&o));
    assert_eq!(
        entries(&remote),
        Vec::<String>::new(),
        "written to the mount point"
    );

    // Mounted again: the push sends what it missed.
    std::fs::remove_dir(&remote).unwrap();
    std::fs::rename(env.path("nas-disk"), &remote).unwrap();
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(archives(&remote), 3, "{:?}", entries(&remote));

    // Emptied on purpose: refused until started afresh with --init-remote.
    std::fs::remove_dir_all(&remote).unwrap();
    std::fs::create_dir(&remote).unwrap();
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(entries(&remote), Vec::<String>::new());
    let o = env.run(&["push", "--dry-run", "--init-remote"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("nas: would write its marker {MARKER}")),
        "{}",
        text(&o)
    );
    assert_eq!(
        entries(&remote),
        Vec::<String>::new(),
        "a dry run wrote something"
    );
    let o = env.run(&["push", "--init-remote"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(archives(&remote), 3, "{:?}", entries(&remote));
    assert!(remote.join(MARKER).is_file());

    // A remote pointed at another place is a new remote: no flag needed there.
    let other = env.path("other-nas");
    std::fs::create_dir(&other).unwrap();
    let cfg = std::fs::read_to_string(env.config())
        .unwrap()
        .replace(&remote.display().to_string(), &other.display().to_string());
    std::fs::write(env.config(), cfg).unwrap();
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(archives(&other), 3);
    assert!(other.join(MARKER).is_file());
}

/// The remote's folder itself is gone (a NAS mounted at a folder that does not exist
/// while unmounted): push, `backup --push` and prune refuse without creating it — that
/// would put the backups on the disk underneath — and say how to start it afresh, which
/// `--init-remote` then does.
#[test]
fn a_known_remote_whose_folder_is_gone_is_not_created_again() {
    let (env, remote) = pushed_once();

    std::fs::rename(&remote, env.path("nas-disk")).unwrap();
    backup(&env);
    for args in [&["push"][..], &["backup", "--push"], &["prune"]] {
        let o = env.run(args);
        assert_ne!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        let t = text(&o);
        for want in [
            "this host initialized it on",
            "not mounted?",
            "nothing was created",
            "pronto-offsite push --remote nas --init-remote",
        ] {
            assert!(t.contains(want), "{args:?} lacks {want:?}: {t}");
        }
        assert!(!remote.exists(), "{args:?} created {}", remote.display());
    }

    // The three archives (`backup --push` made one) go to the remote started afresh.
    let o = env.run(&["push", "--init-remote"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(archives(&remote), 3, "{:?}", entries(&remote));
    assert!(remote.join(MARKER).is_file());
}

/// With several remotes, `--init-remote` must name the one to start afresh: applied to
/// all, a sibling that is merely not mounted would get a folder and a marker on the disk
/// underneath.
#[test]
fn init_remote_with_several_remotes_needs_the_remote_named() {
    let (env, remote) = pushed_once();
    let cold = env.path("cold");
    env.write_config(&format!(
        "\n[[remotes]]\nname = \"cold\"\nurl = \"file://{}\"\n\n[retention]\nlast = 10\n",
        cold.display()
    ));
    let o = env.run(&["push", "--init-remote"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("name it with --remote NAME (configured: nas, cold)"),
        "{}",
        text(&o)
    );
    assert!(!cold.exists(), "created {}", cold.display());

    let o = env.run(&["push", "--remote", "nas", "--init-remote"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(remote.join(MARKER).is_file());
    assert!(!cold.exists(), "created {}", cold.display());
}
