//! End to end: `prune`, `pin`/`unpin`, local tiers and push's prune, through the binary
//! with file:// remotes. Archives are small but real tar.gz files with valid manifests,
//! named at chosen timestamps (the policy only ever looks at the name).

mod support;

use std::path::Path;

use support::{names_in, snapshot, text, Env};

const P: &str = "pronto-app-backup";

/// Write `[local]`, then `extra` (e.g. a `[retention]` table), then one file:// remote
/// per `(name, extra lines)`; a remote's folder is `<tmp>/<name>`.
fn config(env: &Env, remotes: &[(&str, &str)], extra: &str) {
    let mut t = format!("[local]\ndir = \"backups\"\n\n{extra}\n");
    for (name, more) in remotes {
        t.push_str(&format!(
            "\n[[remotes]]\nname = \"{name}\"\nurl = \"file://{}\"\n{more}\n",
            env.path(name).display()
        ));
    }
    std::fs::write(env.config(), t).unwrap();
}

fn file_of(id: &str) -> String {
    format!("{P}-{id}.tar.gz")
}

fn manifest_of(id: &str) -> String {
    format!("{P}-{id}.tar.gz.manifest.json")
}

/// A small real archive named `P-<id>.tar.gz` (top folder of the same name, with a
/// backup_info.txt) and its manifest, in `dir`.
fn fabricate(dir: &Path, id: &str) {
    use sha2::Digest;
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let stem = format!("{P}-{id}");
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let info = format!("Pronto backup {id}\n");
    let mut h = tar::Header::new_gnu();
    h.set_size(info.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    tar.append_data(&mut h, format!("{stem}/backup_info.txt"), info.as_bytes())
        .unwrap();
    let mut gz = tar.into_inner().unwrap();
    gz.flush().unwrap();
    let bytes = gz.finish().unwrap();
    std::fs::write(dir.join(file_of(id)), &bytes).unwrap();
    let created = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &id[0..4],
        &id[4..6],
        &id[6..8],
        &id[9..11],
        &id[11..13],
        &id[13..15]
    );
    let manifest = serde_json::json!({
        "format": 1,
        "id": id,
        "file": file_of(id),
        "created": created,
        "size": bytes.len(),
        "sha256": hex::encode(sha2::Sha256::digest(&bytes)),
        "compression": "gzip",
        "encryption": "none",
        "host": "test",
        "tool_version": "test",
        "sources": [],
    });
    std::fs::write(
        dir.join(manifest_of(id)),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

/// Copy an archive and its manifest from one folder to another (a remote's layout is
/// plain files at its root).
fn copy(from: &Path, to: &Path, id: &str) {
    std::fs::create_dir_all(to).unwrap();
    for f in [file_of(id), manifest_of(id)] {
        std::fs::copy(from.join(&f), to.join(&f)).unwrap();
    }
}

/// Our archive files in a folder (not manifests), sorted.
fn archives_in(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.starts_with(P) && n.ends_with(".tar.gz"))
        .collect()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The plan line of one archive in a location's section of prune's output.
fn plan_line<'a>(out: &'a str, section: &str, file: &str) -> &'a str {
    let start = out
        .find(section)
        .unwrap_or_else(|| panic!("no section {section:?} in:\n{out}"));
    out[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .find(|l| l.contains(file))
        .unwrap_or_else(|| panic!("no line for {file} under {section:?} in:\n{out}"))
}

const IDS4: [&str; 4] = [
    "20250101-020000",
    "20250102-020000",
    "20250103-020000",
    "20250104-020000",
];

/// Four archives locally and on remote `nas`.
fn four_everywhere(env: &Env) {
    for id in IDS4 {
        fabricate(&env.backups(), id);
        copy(&env.backups(), &env.path("nas"), id);
    }
}

type Tree = std::collections::BTreeMap<String, String>;

/// What the backup folder and remote `nas` hold (the lock file left out).
fn tree(env: &Env) -> (Tree, Tree) {
    let mut local = snapshot(&env.backups());
    local.remove(".pronto-offsite.lock");
    (local, snapshot(&env.path("nas")))
}

#[test]
fn prune_dry_run_prints_the_plan_per_location_and_changes_nothing_then_prune_does_it() {
    let env = Env::new();
    config(
        &env,
        &[("nas", "")],
        "[retention]\nlast = 2\nmax_delete_fraction = 1\n",
    );
    four_everywhere(&env);
    let before = tree(&env);

    let o = env.run(&["prune", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert!(out.contains("dry run: nothing is changed"), "{out}");
    for section in ["remote nas", "local "] {
        for id in &IDS4[..2] {
            let line = plan_line(&out, section, &file_of(id));
            assert!(line.trim_start().starts_with("delete"), "{line}\n{out}");
        }
        assert!(plan_line(&out, section, &file_of(IDS4[3])).contains("keep    "));
        assert!(plan_line(&out, section, &file_of(IDS4[3])).ends_with("last#1"));
        assert!(plan_line(&out, section, &file_of(IDS4[2])).ends_with("last#2"));
    }
    assert!(out.contains("nas: would delete 2, kept 2"), "{out}");
    assert!(out.contains("local: would delete 2, kept 2"), "{out}");
    assert_eq!(tree(&env), before, "a dry run changes nothing");

    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let real = stdout(&o);
    // The real run carried out exactly the plan the dry run printed.
    let plan_lines = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("  "))
            .map(String::from)
            .collect()
    };
    assert_eq!(plan_lines(&real), plan_lines(&out));
    assert!(real.contains("nas: deleted 2, kept 2"), "{real}");
    for dir in [env.backups(), env.path("nas")] {
        assert_eq!(archives_in(&dir), vec![file_of(IDS4[2]), file_of(IDS4[3])]);
        assert!(
            !names_in(&dir).contains(&manifest_of(IDS4[0])),
            "manifest went too"
        );
        assert!(names_in(&dir).contains(&manifest_of(IDS4[3])));
    }
}

#[test]
fn prune_skips_a_location_whose_listing_failed_exit_3_and_1() {
    let env = Env::new();
    config(
        &env,
        &[("nas", ""), ("broken", "")],
        "[retention]\nlast = 1\nmax_delete_fraction = 1\n",
    );
    four_everywhere(&env);
    for id in IDS4 {
        copy(&env.backups(), &env.path("broken"), id);
    }
    // A symlink loop: listing `broken` fails half-way (ELOOP), after it has seen some files.
    std::os::unix::fs::symlink("zz-loop", env.path("broken/zz-loop")).unwrap();
    let broken_before = snapshot(&env.path("broken"));

    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(3), "others succeeded: {}", text(&o));
    let out = stdout(&o);
    assert!(out.contains("broken: FAILED: not pruned"), "{out}");
    assert_eq!(
        snapshot(&env.path("broken")),
        broken_before,
        "nothing deleted there"
    );
    assert_eq!(
        archives_in(&env.path("nas")),
        vec![file_of(IDS4[3])],
        "{out}"
    );
    // Local: `nas` held copies of everything (its prune removed the forgotten ones by the
    // policy), so the local folder is pruned too.
    assert_eq!(archives_in(&env.backups()), vec![file_of(IDS4[3])], "{out}");
    assert!(out.contains("note: broken could not be listed"), "{out}");

    // Only the broken one: everything failed, exit 1.
    let o = env.run(&["prune", "--remote", "broken"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(snapshot(&env.path("broken")), broken_before);
}

#[test]
fn local_prune_keeps_archives_no_remote_holds_unless_forced_or_no_remotes() {
    let env = Env::new();
    config(
        &env,
        &[("nas", "")],
        "[retention]\nlast = 1\nmax_delete_fraction = 1\n",
    );
    for id in &IDS4[..3] {
        fabricate(&env.backups(), id);
    }
    // The remote holds only the newest, and a *different* (truncated) copy of the oldest.
    copy(&env.backups(), &env.path("nas"), IDS4[2]);
    copy(&env.backups(), &env.path("nas"), IDS4[0]);
    let f = env.path("nas").join(file_of(IDS4[0]));
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 1)
        .unwrap();

    let o = env.run(&["prune", "--local"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    for id in &IDS4[..2] {
        assert!(
            plan_line(&out, "local ", &file_of(id)).contains("on no remote yet"),
            "{out}"
        );
    }
    assert_eq!(archives_in(&env.backups()).len(), 3, "nothing deleted");
    assert_eq!(
        archives_in(&env.path("nas")).len(),
        2,
        "--local leaves remotes alone"
    );

    let o = env.run(&["prune", "--local", "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(archives_in(&env.backups()), vec![file_of(IDS4[2])]);

    // No remotes configured: nothing to wait for.
    let env = Env::new();
    config(
        &env,
        &[],
        "[retention]\nlast = 1\nmax_delete_fraction = 1\n",
    );
    for id in &IDS4[..3] {
        fabricate(&env.backups(), id);
    }
    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(archives_in(&env.backups()), vec![file_of(IDS4[2])]);
}

#[test]
fn prune_refuses_to_delete_more_than_max_delete_fraction_unless_forced() {
    let env = Env::new();
    config(&env, &[("nas", "")], "[retention]\nlast = 1\n");
    four_everywhere(&env);
    let before = tree(&env);

    // 3 of 4 is more than the default 0.5: both locations refuse, nothing changes.
    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        out.contains("  refused: would delete 3 of 4 archives (75%)"),
        "{out}"
    );
    assert!(out.contains("max_delete_fraction = 0.5"), "{out}");
    assert!(out.contains("--force"), "{out}");
    assert_eq!(tree(&env), before);

    // A higher cap in the config lets it through.
    config(
        &env,
        &[("nas", "")],
        "[retention]\nlast = 1\nmax_delete_fraction = 0.75\n",
    );
    let o = env.run(&["prune", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    config(&env, &[("nas", "")], "[retention]\nlast = 1\n");
    let o = env.run(&["prune", "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(archives_in(&env.backups()), vec![file_of(IDS4[3])]);
    assert_eq!(archives_in(&env.path("nas")), vec![file_of(IDS4[3])]);
}

#[test]
fn archives_named_in_the_future_are_kept_warned_about_and_not_the_newest() {
    let env = Env::new();
    config(
        &env,
        &[("nas", "")],
        "[retention]\nlast = 1\nmax_delete_fraction = 1\n",
    );
    let future = "20990101-000000";
    for id in [IDS4[0], IDS4[1], future] {
        fabricate(&env.backups(), id);
        copy(&env.backups(), &env.path("nas"), id);
    }
    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!("{} is named in the future", file_of(future))),
        "{}",
        text(&o)
    );
    let out = stdout(&o);
    assert!(plan_line(&out, "remote nas", &file_of(future)).contains("named in the future"));
    assert!(plan_line(&out, "remote nas", &file_of(IDS4[1])).ends_with("last#1"));
    for dir in [env.backups(), env.path("nas")] {
        // The real newest stays (last#1); the future one is not what `last` counts.
        assert_eq!(archives_in(&dir), vec![file_of(IDS4[1]), file_of(future)]);
    }
}

#[test]
fn prune_never_touches_files_that_are_not_ours() {
    let env = Env::new();
    config(
        &env,
        &[("nas", "")],
        "[retention]\nlast = 1\nmax_delete_fraction = 1\n",
    );
    four_everywhere(&env);
    let foreign = [
        "other-host-20250101-020000.tar.gz",
        "other-host-20250101-020000.tar.gz.manifest.json",
        "pronto-app-backup-x-20250101-020000.tar.gz",
        "pronto-app-backup-20250101-020000.tar.gz.partial",
        "pronto-app-backup-20250101-020000.tar.gz.bak",
        "pronto-app-backup-20250100-020000.tar.gz",
        "pronto-app-backup-20250105-020000.zip",
        "notes.txt",
    ];
    for dir in [env.backups(), env.path("nas")] {
        for f in foreign {
            std::fs::write(dir.join(f), "not ours").unwrap();
        }
    }
    // Another host's archives in a subfolder of the remote.
    std::fs::create_dir_all(env.path("nas/host2")).unwrap();
    fabricate(&env.path("nas/host2"), IDS4[0]);

    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for dir in [env.backups(), env.path("nas")] {
        for id in &IDS4[..3] {
            assert!(
                !dir.join(file_of(id)).exists(),
                "{id} was not pruned\n{}",
                text(&o)
            );
        }
        assert!(dir.join(file_of(IDS4[3])).exists());
        for f in foreign {
            assert!(dir.join(f).exists(), "{f} in {} was touched", dir.display());
        }
    }
    assert!(env.path("nas/host2").join(file_of(IDS4[0])).exists());
    assert!(env.path("nas/host2").join(manifest_of(IDS4[0])).exists());
}

#[test]
fn remote_incomplete_uploads_are_left_alone() {
    let env = Env::new();
    config(
        &env,
        &[("nas", "")],
        "[retention]\nlast = 1\nmax_delete_fraction = 1\n",
    );
    four_everywhere(&env);
    // The oldest on the remote has no manifest (an upload in progress, or interrupted).
    std::fs::remove_file(env.path("nas").join(manifest_of(IDS4[0]))).unwrap();
    let o = env.run(&["prune", "--remote", "nas"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        plan_line(&out, "remote nas", &file_of(IDS4[0])).contains("leave"),
        "{out}"
    );
    assert_eq!(
        archives_in(&env.path("nas")),
        vec![file_of(IDS4[0]), file_of(IDS4[3])]
    );
    assert_eq!(
        archives_in(&env.backups()).len(),
        4,
        "--remote leaves local alone"
    );
}

#[test]
fn pin_keeps_an_archive_on_every_location_and_unpin_releases_it() {
    let env = Env::new();
    config(
        &env,
        &[("nas", "")],
        "[retention]\nlast = 1\nmax_delete_fraction = 1\n",
    );
    four_everywhere(&env);
    let o = env.run(&["pin", &file_of(IDS4[0])]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains(&format!("local: pinned {}", IDS4[0])),
        "{}",
        text(&o)
    );
    assert!(
        stdout(&o).contains(&format!("nas: pinned {}", IDS4[0])),
        "{}",
        text(&o)
    );
    let local_pins = env.backups().join(format!("{P}.pins.json"));
    let remote_pins = env.path("nas").join(format!("{P}.pins.json"));
    assert!(local_pins.exists() && remote_pins.exists());

    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(plan_line(&stdout(&o), "remote nas", &file_of(IDS4[0])).ends_with("pinned"));
    for dir in [env.backups(), env.path("nas")] {
        assert_eq!(archives_in(&dir), vec![file_of(IDS4[0]), file_of(IDS4[3])]);
    }

    // The remote's pin alone still protects it, on the remote and locally.
    std::fs::remove_file(&local_pins).unwrap();
    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for dir in [env.backups(), env.path("nas")] {
        assert_eq!(archives_in(&dir), vec![file_of(IDS4[0]), file_of(IDS4[3])]);
    }

    // And the local pin alone protects it on the remote too.
    env.run(&["pin", IDS4[0]]);
    std::fs::remove_file(&remote_pins).unwrap();
    let o = env.run(&["prune", "--remote", "nas"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        archives_in(&env.path("nas")),
        vec![file_of(IDS4[0]), file_of(IDS4[3])]
    );

    let o = env.run(&["unpin", IDS4[0]]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains(&format!("local: unpinned {}", IDS4[0])),
        "{}",
        text(&o)
    );
    assert!(!local_pins.exists() && !remote_pins.exists());
    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for dir in [env.backups(), env.path("nas")] {
        assert_eq!(archives_in(&dir), vec![file_of(IDS4[3])]);
    }

    let o = env.run(&["pin", "yesterday"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn prune_files_local_keepers_into_tiers_by_their_strongest_reason() {
    let env = Env::new();
    config(&env, &[], "[retention]\ndaily = 7\nweekly = 4\nmonthly = 12\nyearly = \"forever\"\nmax_delete_fraction = 1\n");
    let ids = [
        "20240601-020000", // yearly#3
        "20251215-020000", // yearly#2
        "20260131-020000", // monthly#2
        "20260222-020000", // weekly#2
        "20260227-020000", // daily#2
        "20260228-020000", // yearly#1 (the newest is every rule's first keeper)
    ];
    for id in ids {
        fabricate(&env.backups(), id);
    }
    let o = env.run(&["prune", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        plan_line(&stdout(&o), "local ", &file_of(ids[2])).ends_with("-> archive/monthly"),
        "{}",
        text(&o)
    );
    assert_eq!(
        archives_in(&env.backups()).len(),
        6,
        "dry run moves nothing"
    );

    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let at = |tier: &str| archives_in(&env.backups().join(tier));
    assert_eq!(
        at("archive/yearly"),
        vec![file_of(ids[0]), file_of(ids[1]), file_of(ids[5])]
    );
    assert_eq!(at("archive/monthly"), vec![file_of(ids[2])]);
    assert_eq!(at("archive/weekly"), vec![file_of(ids[3])]);
    assert_eq!(archives_in(&env.backups()), vec![file_of(ids[4])]);
    for (tier, id) in [
        ("archive/yearly", ids[0]),
        ("archive/monthly", ids[2]),
        ("", ids[4]),
    ] {
        assert!(
            env.backups().join(tier).join(manifest_of(id)).exists(),
            "{id}'s manifest moved with it"
        );
    }
    let o = env.run(&["list"]);
    assert!(stdout(&o).contains("complete (monthly)"), "{}", text(&o));
}

#[test]
fn an_interrupted_tier_move_still_counts_as_complete_and_is_finished_later() {
    let env = Env::new();
    config(
        &env,
        &[("nas", "")],
        "[retention]\nlast = 3\nmax_delete_fraction = 1\n",
    );
    let id = IDS4[0];
    fabricate(&env.backups(), id);
    // The state a crash between the two renames leaves: archive moved, manifest not yet.
    std::fs::create_dir_all(env.backups().join("archive/yearly")).unwrap();
    std::fs::rename(
        env.backups().join(file_of(id)),
        env.backups().join("archive/yearly").join(file_of(id)),
    )
    .unwrap();

    let o = env.run(&["list"]);
    let line = stdout(&o)
        .lines()
        .find(|l| l.starts_with(id))
        .map(String::from)
        .unwrap_or_else(|| panic!("{}", text(&o)));
    assert!(line.contains("complete"), "{line}");
    assert!(!line.contains("incomplete"), "{line}");
    let o = env.run(&["push", "--no-prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        env.path("nas").join(manifest_of(id)).exists(),
        "pushed as complete"
    );

    // The next prune files it (last#1 → top folder) with its manifest beside it.
    let o = env.run(&["prune", "--local"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(env.backups().join(file_of(id)).exists());
    assert!(env.backups().join(manifest_of(id)).exists());
    assert!(names_in(&env.backups().join("archive/yearly")).is_empty());
}

#[test]
fn backup_files_archives_into_tiers_and_a_tier_move_never_causes_a_reupload() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/a.txt"), "hello").unwrap();
    config(
        &env,
        &[("nas", "")],
        "[retention]\nlast = 2\nweekly = 1\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n",
    );
    let backup = || {
        let o = env.run(&["backup"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        stdout(&o).trim().to_string()
    };
    let first = backup();
    // The newest is last#1 and weekly#1: filed under archive/weekly, with its manifest.
    let weekly = env.backups().join("archive/weekly");
    assert_eq!(archives_in(&weekly), vec![file_of(&first)]);
    assert!(weekly.join(manifest_of(&first)).exists());

    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("uploaded 1"), "{}", text(&o));

    let second = backup();
    assert_ne!(first, second);
    // Now the first is only last#2: back to the top folder; the second is the weekly one.
    assert_eq!(archives_in(&weekly), vec![file_of(&second)]);
    assert_eq!(archives_in(&env.backups()), vec![file_of(&first)]);

    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        out.contains("uploaded 1") && out.contains("1 already there"),
        "{out}"
    );
    assert!(
        !out.contains(&format!("upload {}", file_of(&first))),
        "{out}"
    );
}

#[test]
fn push_prunes_each_remote_after_its_uploads_unless_told_not_to() {
    let env = Env::new();
    let policy = "[retention]\nlast = 1\nmax_delete_fraction = 1\n";
    config(&env, &[("nas", ""), ("keep", "prune = false")], policy);
    for id in &IDS4[..3] {
        fabricate(&env.backups(), id);
    }
    for remote in ["nas", "keep"] {
        for id in &IDS4[..2] {
            copy(&env.backups(), &env.path(remote), id);
        }
    }
    let before = (snapshot(&env.path("nas")), snapshot(&env.path("keep")));

    let o = env.run(&["push", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    // The plan prunes over what the remote will hold after the uploads.
    assert!(
        plan_line(&out, "remote nas", &file_of(IDS4[2])).ends_with("last#1"),
        "{out}"
    );
    assert!(plan_line(&out, "remote nas", &file_of(IDS4[0]))
        .trim_start()
        .starts_with("delete"));
    assert!(
        !out.contains("remote keep"),
        "prune = false: no plan for keep\n{out}"
    );
    assert!(out.contains("prune would delete 2"), "{out}");
    assert_eq!(
        (snapshot(&env.path("nas")), snapshot(&env.path("keep"))),
        before
    );

    let o = env.run(&["push", "--no-prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(archives_in(&env.path("nas")).len(), 3, "--no-prune");

    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("nas: uploaded 0"), "{}", text(&o));
    assert!(stdout(&o).contains("pruned 2"), "{}", text(&o));
    assert_eq!(archives_in(&env.path("nas")), vec![file_of(IDS4[2])]);
    assert_eq!(archives_in(&env.path("keep")).len(), 3, "prune = false");
    assert_eq!(
        archives_in(&env.backups()).len(),
        3,
        "push never prunes local"
    );

    // The archives nas's prune removed were off-site until the policy removed them there:
    // a later local prune may delete them (no --force needed; `keep` is left alone).
    let o = env.run(&["prune", "--local"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        archives_in(&env.backups()),
        vec![file_of(IDS4[2])],
        "{}",
        text(&o)
    );
    assert!(
        names_in(&env.backups().join(".offsite-pruned")).is_empty(),
        "markers cleaned up"
    );
}

/// Per-remote retention (issue 19): dailies on the NAS, monthlies forever in a cold
/// bucket. Each remote's own policy decides what push sends there and what prune keeps
/// there; `policy --remote` shows it; a remote table with max_delete_fraction is refused.
#[test]
fn each_remote_keeps_what_its_own_retention_says() {
    let env = Env::new();
    config(
        &env,
        &[
            ("nas", ""),
            ("cold", "[remotes.retention]\nmonthly = \"forever\"\n"),
        ],
        "[retention]\nlast = 2\nmax_delete_fraction = 1\n",
    );
    let ids = [
        "20260105-010000",
        "20260115-010000",
        "20260205-010000",
        "20260215-010000",
        "20260301-010000",
    ];
    for id in ids {
        fabricate(&env.backups(), id);
    }
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The NAS: the two newest ([retention] last = 2); cold: the newest of each month
    // (and, as restic does for a count not reached, the oldest).
    assert_eq!(
        archives_in(&env.path("nas")),
        vec![file_of(ids[3]), file_of(ids[4])],
        "{}",
        text(&o)
    );
    assert_eq!(
        archives_in(&env.path("cold")),
        vec![
            file_of(ids[0]),
            file_of(ids[1]),
            file_of(ids[3]),
            file_of(ids[4])
        ],
        "{}",
        text(&o)
    );
    assert!(
        stdout(&o).contains(&format!(
            "cold: not uploading {}: this remote's retention (all monthly) would delete it at once",
            file_of(ids[2])
        )),
        "{}",
        text(&o)
    );

    // A newer archive: each remote's prune applies its own policy.
    fabricate(&env.backups(), "20260302-010000");
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // What the summary counts: an archive the policy keeps off the remote is not one
    // the remote holds.
    let summary = |remote: &str| {
        stdout(&o)
            .lines()
            .find(|l| l.starts_with(&format!("{remote}: uploaded ")))
            .unwrap_or_else(|| panic!("no summary of {remote}: {}", text(&o)))
            .to_string()
    };
    assert!(
        summary("cold").contains(
            ", 4 already there, 1 not sent (this remote's retention would delete them at once)"
        ),
        "{}",
        summary("cold")
    );
    assert!(
        summary("nas").contains(", 2 already there, 3 not sent"),
        "{}",
        summary("nas")
    );
    assert_eq!(
        archives_in(&env.path("nas")),
        vec![file_of(ids[4]), file_of("20260302-010000")],
        "{}",
        text(&o)
    );
    assert_eq!(
        archives_in(&env.path("cold")),
        vec![
            file_of(ids[0]),
            file_of(ids[1]),
            file_of(ids[3]),
            file_of("20260302-010000")
        ],
        "{}",
        text(&o)
    );
    let o = env.run(&["prune", "--dry-run"]);
    assert!(
        stdout(&o).contains("remote cold (") && stdout(&o).contains("policy all monthly"),
        "{}",
        text(&o)
    );

    // `policy --remote`: that remote's policy over names given on stdin.
    let names: String = ids.iter().map(|id| format!("{}\n", file_of(id))).collect();
    let run_policy = |args: &[&str]| {
        env.cmd()
            .arg("policy")
            .args(args)
            .write_stdin(names.clone())
            .output()
            .unwrap()
    };
    let o = run_policy(&["--remote", "cold"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("4 kept, 1 forgotten"), "{}", text(&o));
    let o = run_policy(&["--remote", "nas"]);
    assert!(stdout(&o).contains("2 kept, 3 forgotten"), "{}", text(&o));
    let o = run_policy(&["--remote", "attic"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no remote named 'attic'")
            && text(&o).contains("configured remotes: nas, cold"),
        "{}",
        text(&o)
    );

    // The deletion cap is one setting, in [retention].
    config(
        &env,
        &[(
            "cold",
            "[remotes.retention]\nmonthly = 3\nmax_delete_fraction = 1\n",
        )],
        "",
    );
    let o = env.run(&["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("remotes[0].retention.max_delete_fraction"),
        "{}",
        text(&o)
    );
}

/// Flip one byte of `path` in place (bit rot, or a stray write).
fn flip_byte(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
}

/// The local prune never makes a remote copy the only one unless that copy is proven: a
/// copy whose backend records no hash any more (file://: its recorded hash went stale when
/// the file changed) is read back first. A damaged one is said and the local copy kept;
/// an intact one (only its mtime changed) is proved and the local copy goes.
#[test]
fn the_local_prune_reads_back_a_remote_copy_with_no_recorded_hash_before_relying_on_it() {
    let env = Env::new();
    config(
        &env,
        &[("nas", "[remotes.retention]\nlast = 5\n")],
        "[retention]\nlast = 1\nmax_delete_fraction = 1\n",
    );
    let (a, b, c) = ("20260101-000000", "20260102-000000", "20260103-000000");
    for id in [a, b, c] {
        fabricate(&env.backups(), id);
    }
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let nas = env.path("nas");
    assert_eq!(archives_in(&nas), vec![file_of(a), file_of(b), file_of(c)]);

    // a: damaged on the NAS. b: only its mtime changed (the recorded hash is stale, the
    // bytes are intact).
    flip_byte(&nas.join(file_of(a)), 100);
    let bf = std::fs::File::options()
        .write(true)
        .open(nas.join(file_of(b)))
        .unwrap();
    bf.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    drop(bf);

    let o = env.run(&["prune", "--local"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "WARNING nas: {}: its copy there does not match its manifest",
            file_of(a)
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "nas: {}: read back to prove its copy before the local one goes",
            file_of(b)
        )),
        "{out}"
    );
    let local = names_in(&env.backups());
    assert!(
        local.iter().any(|n| n == &file_of(a)),
        "the only good copy of {a} was deleted: {local:?}\n{out}"
    );
    assert!(
        !local.iter().any(|n| n == &file_of(b)),
        "{b} has a proven copy on the NAS: {local:?}\n{out}"
    );
}

/// A local manifest that names other bytes than its archive (damaged, or edited by hand)
/// makes push plan a replacement of the remote copy (the remote records the archive's
/// real hash); the remote copy keeps its manifest: the local bytes are checked against
/// their manifest before anything there is taken away.
#[test]
fn a_local_manifest_naming_other_bytes_never_costs_the_remote_its_copy() {
    let env = Env::new();
    config(&env, &[("nas", "")], "[retention]\nlast = 5\n");
    let id = "20260101-000000";
    fabricate(&env.backups(), id);
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let nas = env.path("nas");
    let remote_manifest = nas.join(manifest_of(id));
    let before = std::fs::read(&remote_manifest).unwrap();

    let local_manifest = env.backups().join(manifest_of(id));
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&local_manifest).unwrap()).unwrap();
    m["sha256"] = serde_json::Value::String("ab".repeat(32));
    std::fs::write(&local_manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();

    let o = env.run(&["push"]);
    let out = text(&o);
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("no longer matches its manifest") && out.contains("was left as it is"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&remote_manifest).unwrap(),
        before,
        "the remote copy lost its manifest"
    );
}
