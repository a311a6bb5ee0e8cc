//! `adopt`: archives made by the seed's `backup.sh` (GNU tar, same names and layout, no
//! manifest) are read whole and taken in; truncated and hostile ones are refused with the
//! reason and left alone; `list` and `doctor` point at `adopt`; an adopted archive is
//! then pushed like our own.

mod support;

use std::process::Command;

use support::{files_under, stdout, text, Env};

/// `tar czf` of a seed-layout tree named `stem`, plus `extra` top-level paths.
fn seed_archive(env: &Env, stem: &str, extra: &[&str]) -> std::path::PathBuf {
    let stage = env.path(&format!("stage-{stem}"));
    let site = stage.join(stem).join("static_content/site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "<h1>pronto</h1>").unwrap();
    std::fs::create_dir_all(stage.join(stem).join("configs/nginx")).unwrap();
    std::fs::write(
        stage.join(stem).join("configs/nginx/nginx.conf"),
        "server {}",
    )
    .unwrap();
    std::fs::write(stage.join(stem).join("backup_info.txt"), "seed backup\n").unwrap();
    for e in extra {
        std::fs::create_dir_all(stage.join(e)).unwrap();
        std::fs::write(stage.join(e).join("x"), "outside").unwrap();
    }
    std::fs::create_dir_all(env.backups()).unwrap();
    let out = env.backups().join(format!("{stem}.tar.gz"));
    let st = Command::new("tar")
        .arg("-C")
        .arg(&stage)
        .arg("-czf")
        .arg(&out)
        .arg(stem)
        .args(extra)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

#[test]
fn seed_archives_are_adopted_and_damaged_or_hostile_ones_refused() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    env.write_config("");
    let good = seed_archive(&env, "pronto-app-backup-20260101-020000", &[]);
    let cut = seed_archive(&env, "pronto-app-backup-20260102-020000", &[]);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let hostile = seed_archive(&env, "pronto-app-backup-20260103-020000", &["elsewhere"]);

    // list, doctor and verify point at adopt.
    let o = env.run(&["verify", "--local"]);
    assert!(stdout(&o).contains("pronto-offsite adopt"), "{}", text(&o));
    let o = env.run(&["list"]);
    assert!(stdout(&o).contains("pronto-offsite adopt"), "{}", text(&o));
    let o = env.run(&["doctor"]);
    assert!(stdout(&o).contains("pronto-offsite adopt"), "{}", text(&o));

    let o = env.run(&["adopt"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let said = stdout(&o);
    assert!(
        said.contains("adopted pronto-app-backup-20260101-020000.tar.gz"),
        "{said}"
    );
    let refused = |file: &std::path::Path, why: &str| {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            said.lines()
                .any(|l| l.starts_with("refused") && l.contains(&name) && l.contains(why)),
            "{name} not refused for {why}:\n{said}"
        );
        assert!(!env.backups().join(format!("{name}.manifest.json")).exists());
    };
    refused(&cut, "truncated");
    refused(&hostile, "hostile");

    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            env.backups()
                .join("pronto-app-backup-20260101-020000.tar.gz.manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(m["adopted"], true);
    assert_eq!(m["id"], "20260101-020000");
    assert_eq!(m["created"], "2026-01-01T02:00:00Z");
    assert_eq!(m["size"], std::fs::metadata(&good).unwrap().len());
    assert_eq!(m["sha256"], support::file_digest(&good));
    let sources: Vec<String> = m["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {} {}",
                s["archive_path"].as_str().unwrap(),
                s["files"],
                s["bytes"]
            )
        })
        .collect();
    assert_eq!(sources, ["static_content/site 1 15", "configs/nginx 1 9"]);

    // Now it is ours: push copies it off-site and verifies it.
    let o = env.run(&["push"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        files_under(&env.remote())
            .iter()
            .any(|p| p.ends_with("pronto-app-backup-20260101-020000.tar.gz")),
        "{:?}",
        files_under(&env.remote())
    );
}
