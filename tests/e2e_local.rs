//! End to end with a file:// remote: backup → push → pull → extract, and the
//! failure paths a user relies on (corrupt remote copy, kill -9, bad config).

mod support;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::time::Duration;

use support::{names_in, snapshot, text, Env};

/// A source tree with the awkward cases: 10,000 files, symlinks, empty folders,
/// non-ASCII names, spaces, modes, and a 1 GiB file (sparse, with data at a few offsets).
fn build_tree(root: &std::path::Path, big: bool) {
    use std::io::{Seek, SeekFrom, Write};
    std::fs::create_dir_all(root).unwrap();
    for d in 0..100 {
        let dir = root.join(format!("d{d:03}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(
                dir.join(format!("f{f:03}.txt")),
                format!("file {d}/{f}\n").repeat(f % 7 + 1),
            )
            .unwrap();
        }
    }
    std::fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    std::fs::create_dir_all(root.join("café/日本")).unwrap();
    std::fs::write(root.join("café/日本/データ.txt"), "non-ascii ✓\n").unwrap();
    std::fs::write(root.join("a file with spaces.txt"), "spaces\n").unwrap();
    let exe = root.join("run.sh");
    std::fs::write(&exe, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = root.join("private.key");
    std::fs::write(&secret, "not really\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    symlink("d000/f001.txt", root.join("link-to-file")).unwrap();
    symlink("café", root.join("link-to-dir")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    if big {
        let mut f = std::fs::File::create(root.join("big.bin")).unwrap();
        f.set_len(1 << 30).unwrap();
        for i in 0..8u64 {
            f.seek(SeekFrom::Start(i * (128 << 20) + 12345)).unwrap();
            f.write_all(&[i as u8 + 1; 4096]).unwrap();
        }
    }
}

/// Where a local archive (or its manifest) is now: the top folder or a tier folder
/// (`backup` files every keeper under archive/{weekly,monthly,yearly} by its strongest
/// reason; with the seed's policy the newest archive is yearly#1).
fn find_local(env: &Env, file: &str) -> std::path::PathBuf {
    ["", "archive/weekly", "archive/monthly", "archive/yearly"]
        .iter()
        .map(|d| env.backups().join(d).join(file))
        .find(|p| p.exists())
        .unwrap_or_else(|| env.backups().join(file))
}

/// Every name in the backup folder and its tier folders.
fn names_in_tiers(env: &Env) -> Vec<String> {
    ["", "archive/weekly", "archive/monthly", "archive/yearly"]
        .iter()
        .flat_map(|d| names_in(&env.backups().join(d)))
        .collect()
}

fn backup_id(env: &Env) -> String {
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn round_trip_10000_files_symlinks_and_a_1gib_file() {
    let env = Env::new();
    build_tree(&env.path("src"), true);
    env.write_config("");
    let before = snapshot(&env.path("src"));
    assert!(before.len() > 10_000);

    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let archive = find_local(&env, &file);
    let mode = std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "archives are created 0600");
    assert!(archive
        .with_file_name(format!("{file}.manifest.json"))
        .exists());

    // Plain tools can read it: gunzip -t and tar -tzf.
    assert!(std::process::Command::new("gunzip")
        .arg("-t")
        .arg(&archive)
        .status()
        .unwrap()
        .success());
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    let top = format!("pronto-app-backup-{id}/");
    for section in [
        "postgres_data/",
        "redis_data/",
        "static_content/",
        "configs/",
        "docker_volumes/",
        "backup_info.txt",
    ] {
        assert!(
            listing.contains(&format!("{top}{section}")),
            "missing {section} in tar listing"
        );
    }

    let o = env.run(&["push"]);
    assert!(o.status.success(), "push: {}", text(&o));
    assert!(env.remote().join(&file).exists());
    assert!(env.remote().join(format!("{file}.manifest.json")).exists());

    // A second push uploads nothing.
    let o = env.run(&["push"]);
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("uploaded 0"),
        "{}",
        text(&o)
    );

    // Lose the local copy, pull it back, extract.
    std::fs::remove_file(&archive).unwrap();
    std::fs::remove_file(archive.with_file_name(format!("{file}.manifest.json"))).unwrap();
    let dest = env.path("restored");
    let o = env.run(&["pull", &id, "--to", dest.to_str().unwrap()]);
    assert!(o.status.success(), "pull: {}", text(&o));
    assert!(find_local(&env, &file).exists());
    let after = snapshot(&dest.join(format!("pronto-app-backup-{id}/static_content/site")));
    assert_eq!(before.len(), after.len());
    for (k, v) in &before {
        assert_eq!(after.get(k), Some(v), "{k} differs after the round trip");
    }
}

#[test]
fn corrupt_remote_copy_makes_pull_exit_4_and_write_nothing() {
    let env = Env::new();
    build_tree(&env.path("src"), false);
    env.write_config("");
    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    assert!(env.run(&["push"]).status.success());
    std::fs::remove_file(find_local(&env, &file)).unwrap();
    std::fs::remove_file(find_local(&env, &format!("{file}.manifest.json"))).unwrap();

    // Flip one byte in the middle of the remote copy.
    let remote_file = env.remote().join(&file);
    let mut bytes = std::fs::read(&remote_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&remote_file, bytes).unwrap();

    let before = names_in(&env.backups());
    let dest = env.path("restored");
    let o = env.run(&["pull", &id, "--to", dest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("corrupt"),
        "{}",
        text(&o)
    );
    assert!(!dest.exists(), "nothing extracted");
    let after: Vec<String> = names_in(&env.backups())
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    let before: Vec<String> = before.into_iter().filter(|n| !n.starts_with('.')).collect();
    assert_eq!(before, after, "no archive left in the backup folder");
}

#[test]
fn dry_run_changes_nothing_and_list_shows_both_sides() {
    let env = Env::new();
    build_tree(&env.path("src"), false);
    env.write_config("");
    let id = backup_id(&env);
    let o = env.run(&["push", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("would upload"),
        "{}",
        text(&o)
    );
    assert!(
        names_in(&env.remote()).iter().all(|n| n.starts_with('.')),
        "dry run wrote {:?}",
        names_in(&env.remote())
    );

    let o = env.run(&["list"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let line = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("complete") && line.contains("absent"),
        "{line}"
    );

    assert!(env.run(&["push"]).status.success());
    let o = env.run(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["archives"][0]["id"], id.as_str());
    assert_eq!(v["archives"][0]["remotes"]["nas"], "complete");
}

#[test]
fn two_backups_in_one_second_get_distinct_names() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/a"), "a").unwrap();
    env.write_config("");
    let a = env.cmd().arg("backup").output().unwrap();
    let b = env.cmd().arg("backup").output().unwrap();
    assert!(a.status.success() && b.status.success());
    assert_ne!(a.stdout, b.stdout);
    let archives = names_in_tiers(&env)
        .into_iter()
        .filter(|n| n.ends_with(".tar.gz"))
        .count();
    assert_eq!(archives, 2);
}

/// Start `pronto-offsite ARGS`, wait (polling) until `at` holds while it still runs, then
/// SIGKILL it and check that it died of that kill: the kill landed where `what` says.
fn kill_when(env: &Env, args: &[&str], what: &str, at: impl Fn() -> bool) {
    use std::os::unix::process::ExitStatusExt;
    let bin = assert_cmd::cargo::cargo_bin("pronto-offsite");
    let mut child = std::process::Command::new(&bin)
        .arg("--config")
        .arg(env.config())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !at() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{args:?} ended ({status}) before {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL sent");
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{args:?} was killed {what}: {status}"
    );
}

/// Every archive under a final name in the backup folder has its manifest (beside it, or
/// in another tier folder if a kill came between the two renames of a tier move).
fn assert_no_final_name_without_manifest(env: &Env, when: &str) {
    let names = names_in_tiers(env);
    for n in names.iter().filter(|n| n.ends_with(".tar.gz")) {
        assert!(
            names.contains(&format!("{n}.manifest.json")),
            "{n} under a final name without its manifest after a kill {when}"
        );
    }
}

#[test]
fn kill_9_during_backup_or_push_leaves_no_final_name_and_next_run_succeeds() {
    let env = Env::new();
    build_tree(&env.path("src"), false);
    // Make the run long enough to be killed in the middle: a 256 MiB file of noise.
    support::write_noise(&env.path("src/noise.bin"), 256 << 20, 1);
    env.write_config("");
    let partial_over = |bytes: u64| {
        let dir = env.backups();
        move || {
            names_in(&dir).iter().any(|n| {
                n.ends_with(".partial")
                    && std::fs::metadata(dir.join(n)).is_ok_and(|m| m.len() > bytes)
            })
        }
    };
    // Killed while the archive is being written: just started, and half way.
    for (what, bytes) in [("as the archive starts", 0), ("half way", 100 << 20)] {
        kill_when(&env, &["backup"], what, partial_over(bytes));
        assert_no_final_name_without_manifest(&env, what);
        assert!(
            !names_in_tiers(&env).iter().any(|n| n.ends_with(".tar.gz")),
            "no archive under a final name after a kill {what}: {:?}",
            names_in_tiers(&env)
        );
    }
    let id = backup_id(&env);
    assert_no_final_name_without_manifest(&env, "(after the next backup)");
    assert!(
        !names_in(&env.backups())
            .iter()
            .any(|n| n.ends_with(".partial")),
        "stale partials removed"
    );

    // Killed while the archive is being uploaded (slowed to 32 MiB/s: ~8 s): as the
    // upload starts on the remote, and once the journal has two parts.
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let uploads = env.remote().join(".uploads");
    let journal = env
        .backups()
        .join(".journal/nas")
        .join(format!("{file}.json"));
    let journaled_parts = || {
        std::fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|j| j["parts"].as_array().map(|a| a.len()))
            .unwrap_or(0)
    };
    let push = ["push", "--bwlimit", "32MiB"];
    type Point<'a> = (&'a str, Box<dyn Fn() -> bool + 'a>);
    let points: [Point; 2] = [
        (
            "as the upload starts",
            Box::new(|| !names_in(&uploads).is_empty()),
        ),
        ("after two parts", Box::new(|| journaled_parts() >= 2)),
    ];
    for (what, at) in points {
        kill_when(&env, &push, what, at);
        let remote = names_in(&env.remote());
        assert!(
            !remote
                .iter()
                .any(|n| n.ends_with(".tar.gz") || n.ends_with(".manifest.json")),
            "nothing under a final name on the remote after a kill {what}: {remote:?}"
        );
    }
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        support::file_digest(&env.remote().join(&file)),
        support::file_digest(&find_local(&env, &file))
    );
    assert!(env.remote().join(format!("{file}.manifest.json")).exists());
}

#[test]
fn config_errors_name_file_line_key_and_exit_2() {
    let env = Env::new();
    let cases: [(&str, &str); 5] = [
        ("[local]\ndir = \"b\"\ncolour = \"red\"\n", "colour"),
        ("[local]\ndir = \"b\"\n[[remotes]]\nname = \"a\"\nurl = \"file:///x\"\n[[remotes]]\nname = \"a\"\nurl = \"file:///y\"\n", "remotes[1].name"),
        ("[local]\ndir = \"b\"\n[[remotes]]\nname = \"a\"\nurl = \"ftp://x\"\n", "remotes[0].url"),
        ("[local]\ndir = \"b\"\nlevel = 12\n", "local.level"),
        ("[local]\ndir = \"b\"\n[[sources]]\nname = \"s\"\nkind = \"photos\"\npath = \"x\"\n", "photos"),
    ];
    for (cfg, key) in cases {
        std::fs::write(env.config(), cfg).unwrap();
        let o = env.run(&["list"]);
        assert_eq!(o.status.code(), Some(2), "{cfg}\n{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("pronto-offsite.toml:"),
            "names the file: {err}"
        );
        assert!(err.contains(key), "names {key}: {err}");
    }
    // Duplicate remote names: the message points at the second one's line.
    std::fs::write(env.config(), cases[1].0).unwrap();
    let err = String::from_utf8_lossy(&env.run(&["list"]).stderr).to_string();
    assert!(err.contains("toml:7:"), "{err}");
}

#[test]
fn a_missing_source_fails_and_leaves_no_archive() {
    let env = Env::new();
    env.write_config("");
    let o = env.run(&["backup"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("src"),
        "{}",
        text(&o)
    );
    assert!(!names_in(&env.backups())
        .iter()
        .any(|n| n.contains(".tar.gz")));
}

#[test]
fn push_cleanup_aborts_uploads_no_longer_needed() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    support::write_noise(&env.path("src/noise.bin"), 40 << 20, 2);
    env.write_config("");
    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let journal = env
        .backups()
        .join(".journal/nas")
        .join(format!("{file}.json"));

    // A push slowed to 4 MiB/s, killed once its journal records a part.
    let bin = assert_cmd::cargo::cargo_bin("pronto-offsite");
    let mut child = std::process::Command::new(&bin)
        .arg("--config")
        .arg(env.config())
        .args(["push", "--bwlimit", "4MiB"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let parts = std::fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|j| j["parts"].as_array().map(|a| a.len()).unwrap_or(0))
            .unwrap_or(0);
        if parts >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no journaled part within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let staged = |env: &Env| names_in(&env.remote().join(".uploads")).len();
    assert!(journal.exists());
    assert_eq!(
        staged(&env),
        1,
        "the killed push left its upload on the remote"
    );

    // Still needed (the archive is here and not on the remote): cleanup keeps it.
    let o = env.run(&["push", "--cleanup", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(journal.exists());

    // The archive leaves the local folder (whichever tier it is filed in): the upload is
    // no longer needed.
    for dir in ["", "archive/weekly", "archive/monthly", "archive/yearly"] {
        for n in names_in(&env.backups().join(dir)) {
            if n.starts_with(&file) {
                std::fs::remove_file(env.backups().join(dir).join(n)).unwrap();
            }
        }
    }
    let o = env.run(&["push", "--cleanup", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("would abort"),
        "{}",
        text(&o)
    );
    assert!(journal.exists(), "a dry run changes nothing");
    assert_eq!(staged(&env), 1);

    let o = env.run(&["push", "--cleanup"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("abort the unfinished upload"),
        "{}",
        text(&o)
    );
    assert!(!journal.exists(), "journal removed");
    assert_eq!(staged(&env), 0, "no incomplete upload left on the remote");
}

/// A restore reads the local archive when it is intact (no remote needed), and
/// `--from REMOTE` (the old spelling `--remote` too) downloads from that remote anyway.
#[test]
fn pull_uses_the_intact_local_archive_and_from_forces_the_remote() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/a.txt"), "hello\n").unwrap();
    env.write_config("");
    let id = backup_id(&env);
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let pulled = |args: &[&str], to: &str| -> serde_json::Value {
        let dir = env.path(to);
        let mut all = vec!["pull", id.as_str(), "--json", "--to", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        let o = env.run(&all);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(
            std::fs::read_to_string(dir.join("static_content/site/a.txt"))
                .or_else(|_| std::fs::read_to_string(
                    support::find_file(&dir, "a.txt").expect("a.txt restored")
                ))
                .unwrap(),
            "hello\n"
        );
        serde_json::from_slice(&o.stdout).expect("one JSON object")
    };
    let local = pulled(&[], "out-local");
    assert_eq!(local["downloaded"], false, "{local}");
    let forced = pulled(&["--from", "nas"], "out-from");
    assert_eq!(forced["downloaded"], true, "{forced}");
    assert_eq!(forced["remote"], "nas", "{forced}");
    let old = pulled(&["--remote", "nas"], "out-remote");
    assert_eq!(old["downloaded"], true, "{old}");

    // A damaged remote copy: `--from nas` proves it bad (exit 4, nothing extracted),
    // though the local copy is intact; without it the local copy restores.
    let file = local["file"].as_str().unwrap().to_string();
    let remote_copy = support::find_file(&env.remote(), &file).expect("the remote copy");
    let mut bytes = std::fs::read(&remote_copy).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&remote_copy, bytes).unwrap();
    let to = env.path("out-bad");
    let o = env.run(&["pull", &id, "--from", "nas", "--to", to.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        text(&o).contains("nas: ") && text(&o).contains("is corrupt"),
        "{}",
        text(&o)
    );
    assert!(
        !to.exists() || names_in(&to).is_empty(),
        "nothing extracted"
    );
    assert!(
        std::fs::read_dir(env.backups())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains(".from-nas")),
        "the checked download was removed"
    );
    pulled(&[], "out-local-again");
}

/// `pull --to` of an archive only a remote holds extracts while it downloads (the
/// extraction follows the ranges as they land), but nothing appears in the destination
/// before the downloaded bytes match the manifest. An archive swapped on the remote for
/// another complete, valid archive — which extracts without a single error — is refused
/// at the end (exit 4): its extraction is removed, the destination stays empty, and no
/// partial download is left.
#[test]
fn pull_to_extracts_while_downloading_but_shows_nothing_before_the_hash_matches() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    env.write_config("");
    // Bigger than two download ranges (16 MiB each) and incompressible.
    let bigs = [support::noise(40 << 20, 1), support::noise(36 << 20, 2)];
    let mut ids = Vec::new();
    for (i, big) in bigs.iter().enumerate() {
        if i > 0 {
            // Archive names have a one-second resolution.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        std::fs::write(env.path("src/a.txt"), format!("archive {i}\n")).unwrap();
        std::fs::write(env.path("src/big.bin"), big).unwrap();
        ids.push(backup_id(&env));
    }
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Only the remote copies are left (the local ones may be filed in tier folders).
    for p in support::files_under(&env.backups()) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if ids.iter().any(|id| name.contains(id.as_str())) {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let remote_copy = |id: &str| {
        std::fs::read_dir(env.remote())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.contains(id) && n.ends_with(".tar.gz")
            })
            .expect("the remote copy")
    };

    // An intact one: downloaded, extracted as it came, byte-identical.
    let ok = env.path("out-ok");
    let o = env.run(&["pull", &ids[1], "--to", ok.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let big = support::find_file(&ok, "big.bin").expect("big.bin restored");
    assert!(std::fs::read(&big).unwrap() == bigs[1], "big.bin differs");
    let a = support::find_file(&ok, "a.txt").expect("a.txt restored");
    assert_eq!(std::fs::read_to_string(a).unwrap(), "archive 1\n");

    // The first archive's remote copy replaced by the second's bytes.
    std::fs::copy(remote_copy(&ids[1]), remote_copy(&ids[0])).unwrap();
    let bad = env.path("out-bad");
    let o = env.run(&["pull", &ids[0], "--to", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("is corrupt"), "{}", text(&o));
    assert!(
        names_in(&bad).is_empty(),
        "nothing extracted: {:?}",
        names_in(&bad)
    );
    let stray: Vec<String> = names_in(&env.path(""))
        .into_iter()
        .chain(
            support::files_under(&env.backups())
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned()),
        )
        .filter(|n| n.starts_with(".pronto-extract-") || n.contains(ids[0].as_str()))
        .collect();
    assert!(stray.is_empty(), "left behind: {stray:?}");
}
