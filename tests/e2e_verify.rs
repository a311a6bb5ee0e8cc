//! `verify`: local archives against their manifests (hash and every tar entry), remote
//! manifests against their objects, `--deep` downloads; exit 4 names what is wrong.

mod support;

use std::path::PathBuf;

use support::{text, Env};

fn source(env: &Env) {
    std::fs::create_dir_all(env.path("src/sub")).unwrap();
    std::fs::write(env.path("src/a.txt"), "alpha\n").unwrap();
    std::fs::write(env.path("src/sub/b.txt"), "beta\n".repeat(5000)).unwrap();
}

fn backup_id(env: &Env) -> String {
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Where a local archive (or manifest) is now: the top folder or a tier folder.
fn find_local(env: &Env, file: &str) -> PathBuf {
    ["", "archive/weekly", "archive/monthly", "archive/yearly"]
        .iter()
        .map(|d| env.backups().join(d).join(file))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{file} not found locally"))
}

/// One archive, pushed to `nas`; returns its file name.
fn pushed(env: &Env) -> String {
    source(env);
    env.write_config("");
    let id = backup_id(env);
    let o = env.run(&["push"]);
    assert!(o.status.success(), "push: {}", text(&o));
    format!("pronto-app-backup-{id}.tar.gz")
}

fn flip_middle_byte(p: &std::path::Path) {
    let mut b = std::fs::read(p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(p, b).unwrap();
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn all_good_everywhere_exits_0() {
    let env = Env::new();
    let file = pushed(&env);
    let o = env.run(&["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let s = stdout(&o);
    assert!(s.contains(&format!("local: {file}: ok")), "{s}");
    assert!(s.contains("every entry read"), "{s}");
    assert!(s.contains(&format!("nas: {file}: ok")), "{s}");

    let o = env.run(&["verify", "latest", "--deep"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains("downloaded and re-hashed: ok"),
        "{}",
        text(&o)
    );

    let o = env.run(&["verify", "--json", "--deep", "--sample", "50%"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["checks"].as_array().unwrap().len(), 2, "{v}");
}

#[test]
fn corrupt_local_archive_exits_4_naming_it() {
    let env = Env::new();
    let file = pushed(&env);
    flip_middle_byte(&find_local(&env, &file));
    let o = env.run(&["verify", "--local"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let s = stdout(&o);
    assert!(s.contains(&format!("MISMATCH local: {file}: ")), "{s}");
    assert!(s.contains("sha256"), "{s}");
    assert!(!s.contains("nas:"), "--local checks no remote: {s}");
    // The remote copy is still fine.
    let o = env.run(&["verify", "--remote", "nas"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn remote_copy_flipped_is_found_by_deep_and_truncated_by_size() {
    let env = Env::new();
    let file = pushed(&env);
    let remote_file = env.remote().join(&file);
    flip_middle_byte(&remote_file);

    let o = env.run(&["verify", "--remote", "nas", "--deep"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let s = stdout(&o);
    assert!(s.contains(&format!("MISMATCH nas: {file}: ")), "{s}");
    assert!(s.contains("downloaded copy has sha256"), "{s}");

    // Truncated: the size alone gives it away, no download needed.
    let b = std::fs::read(&remote_file).unwrap();
    std::fs::write(&remote_file, &b[..b.len() - 10]).unwrap();
    let o = env.run(&["verify", "--remote", "nas"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(stdout(&o).contains("its manifest says"), "{}", text(&o));
}

#[test]
fn manifest_without_archive_is_a_mismatch_archive_without_manifest_a_warning() {
    let env = Env::new();
    let file = pushed(&env);
    std::fs::rename(
        env.remote().join(format!("{file}.manifest.json")),
        env.path("saved.manifest.json"),
    )
    .unwrap();
    std::fs::write(env.remote().join("stray.bin"), "x").unwrap();
    let o = env.run(&["verify", "--remote", "nas"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let s = stdout(&o);
    assert!(
        s.contains(&format!("nas: {file}: WARNING: incomplete upload")),
        "{s}"
    );
    assert!(
        s.contains("1 object(s) that are not"),
        "orphans reported: {s}"
    );

    std::fs::rename(
        env.path("saved.manifest.json"),
        env.remote().join(format!("{file}.manifest.json")),
    )
    .unwrap();
    std::fs::remove_file(env.remote().join(&file)).unwrap();
    let o = env.run(&["verify", "--remote", "nas"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        stdout(&o).contains("manifest without its archive"),
        "{}",
        text(&o)
    );
}

#[test]
fn usage_errors_and_the_restore_test_flag_still_parses() {
    let env = Env::new();
    pushed(&env);
    let o = env.run(&["verify", "--restore-test"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = env.run(&["verify", "--sample", "0%"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = env.run(&["verify", "--local", "--remote", "nas"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = env.run(&["verify", "20200101-000000"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn encrypted_archive_is_hashed_without_a_key_and_read_with_one() {
    let env = Env::new();
    source(&env);
    let key = env.path("key.txt");
    env.write_config("");
    let o = env.run(&["keygen", "--output", key.to_str().unwrap()]);
    assert!(o.status.success(), "keygen: {}", text(&o));
    let recipient = String::from_utf8(o.stdout).unwrap().trim().to_string();
    env.write_config(&format!("\n[encryption]\nrecipients = [\"{recipient}\"]\n"));
    backup_id(&env);

    let o = env.run(&["verify", "--local"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains("contents not checked: encrypted, give --identity"),
        "{}",
        text(&o)
    );

    let o = env.run(&["verify", "--local", "--identity", key.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("every entry read"), "{}", text(&o));
}
