//! The sync engine with several remotes: one broken remote never stops the others,
//! and the run says so with exit 3 and a per-remote report.

mod support;

use support::{text, Env};

fn backup_id(env: &Env) -> String {
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn source(env: &Env) {
    std::fs::create_dir_all(env.path("src/sub")).unwrap();
    std::fs::write(env.path("src/a.txt"), "alpha\n").unwrap();
    std::fs::write(env.path("src/sub/b.txt"), "beta\n".repeat(1000)).unwrap();
}

/// Two more file:// remotes beside `nas`: `broken` (its root is a plain file) and `usb`.
fn three_remotes(env: &Env) {
    std::fs::write(env.path("not-a-folder"), "x").unwrap();
    env.write_config(&format!(
        r#"
[[remotes]]
name = "broken"
url = "file://{}"

[[remotes]]
name = "usb"
url = "file://{}"
"#,
        env.path("not-a-folder").display(),
        env.path("usb").display()
    ));
}

#[test]
fn one_broken_remote_others_complete_exit_3() {
    let env = Env::new();
    source(&env);
    three_remotes(&env);
    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");

    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    for dir in [env.remote(), env.path("usb")] {
        assert!(dir.join(&file).exists(), "{}: {}", dir.display(), text(&o));
        assert!(dir.join(format!("{file}.manifest.json")).exists());
    }
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("nas: uploaded 1"), "{}", text(&o));
    assert!(out.contains("usb: uploaded 1"), "{}", text(&o));
    assert!(out.contains("broken: FAILED:"), "{}", text(&o));
    assert!(out.contains("is not a folder"), "the reason is named: {}", text(&o));
    // The report lists remotes in config order, whatever order they finished in.
    let nas = out.find("nas: uploaded").unwrap();
    let broken = out.find("broken: FAILED").unwrap();
    let usb = out.find("usb: uploaded").unwrap();
    assert!(nas < broken && broken < usb, "{out}");

    // JSON: one entry per remote, the broken one with its error.
    let o = env.run(&["push", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = v.to_string();
    assert!(s.contains("broken") && s.contains("is not a folder"), "{s}");

    // Fix the broken remote: the next push completes it and exits 0.
    std::fs::remove_file(env.path("not-a-folder")).unwrap();
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(env.path("not-a-folder").join(&file).exists());
}

#[test]
fn every_remote_failing_is_exit_1() {
    let env = Env::new();
    source(&env);
    std::fs::write(env.remote(), "x").unwrap();
    env.write_config("");
    backup_id(&env);
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nas: FAILED:"));
}

#[test]
fn many_remotes_all_complete() {
    let env = Env::new();
    source(&env);
    let mut extra = String::new();
    for i in 0..6 {
        extra.push_str(&format!(
            "\n[[remotes]]\nname = \"r{i}\"\nurl = \"file://{}\"\npart_concurrency = {}\n",
            env.path(&format!("r{i}")).display(),
            i + 1
        ));
    }
    env.write_config(&extra);
    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for i in 0..6 {
        let dir = env.path(&format!("r{i}"));
        assert!(dir.join(format!("{file}.manifest.json")).exists(), "r{i}");
    }
    assert!(env.remote().join(format!("{file}.manifest.json")).exists());
}
