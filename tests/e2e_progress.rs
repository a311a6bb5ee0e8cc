//! Progress bars: drawn on stderr for `backup`, `push`, `pull` and restores on a terminal (checked
//! under a pseudo-terminal with util-linux `script`), and never when stderr is a pipe,
//! nor with `-q` / `--json`. Also `pull --json`.

mod support;

use std::process::Command;

use support::{text, write_noise, Env};

/// Marks only a drawn bar has: escape codes, carriage returns, the bar, its ETA, and the
/// backup spinner's "read," (log lines mention rates like "MiB/s" too, so not that).
fn assert_no_bar(what: &str, stderr: &[u8]) {
    let s = String::from_utf8_lossy(stderr);
    for mark in ["\x1b[", "\r", "ETA", " read, ", "[=", "=>"] {
        assert!(!s.contains(mark), "{what}: {mark:?} in stderr:\n{s}");
    }
}

fn env_with_data() -> Env {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    // Incompressible, several 8 MiB parts: the transfers take long enough to draw.
    write_noise(&env.path("src/data.bin"), 40 << 20, 7);
    std::fs::write(env.path("src/small.txt"), "hello\n").unwrap();
    env.write_config("");
    env
}

#[test]
fn no_bars_when_stderr_is_not_a_terminal() {
    let env = env_with_data();
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup: {}", text(&o));
    let id = String::from_utf8(o.stdout.clone())
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(id.len(), 15, "{}", text(&o));
    assert_no_bar("backup", &o.stderr);

    let o = env.run(&["push"]);
    assert!(o.status.success(), "push: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nas: upload"));
    assert_no_bar("push", &o.stderr);
    assert!(
        support::names_in(&env.remote())
            .iter()
            .any(|n| n.contains(&id) && n.ends_with(".tar.gz")),
        "{:?}",
        support::names_in(&env.remote())
    );

    // A fresh folder, so the pull really downloads.
    std::fs::remove_dir_all(env.backups()).unwrap();
    let o = env.run(&["pull", "latest", "--to", env.path("out").to_str().unwrap()]);
    assert!(o.status.success(), "pull: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verified sha256"));
    assert_no_bar("pull", &o.stderr);
    assert_eq!(
        support::file_digest(&env.path("src/data.bin")),
        support::file_digest(&find(&env.path("out"), "data.bin")),
    );
}

#[test]
fn pull_json_is_one_object_on_stdout() {
    let env = env_with_data();
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup: {}", text(&o));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let o = env.run(&["push"]);
    assert!(o.status.success(), "push: {}", text(&o));
    std::fs::remove_dir_all(env.backups()).unwrap();

    let out = env.path("out");
    let o = env.run(&["pull", &id, "--json", "--to", out.to_str().unwrap()]);
    assert!(o.status.success(), "pull --json: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", text(&o)));
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["remote"], "nas");
    assert_eq!(v["verified"], true);
    assert_eq!(v["downloaded"], true);
    assert_eq!(v["extracted_to"], out.to_str().unwrap());
    // data.bin, small.txt and backup_info.txt.
    assert_eq!(v["extracted"]["files"], 3);
    let path = std::path::PathBuf::from(v["path"].as_str().unwrap());
    assert!(path.exists(), "{path:?}");
    assert_eq!(v["size"], std::fs::metadata(&path).unwrap().len());
    assert_eq!(v["sha256"].as_str().unwrap(), support::file_digest(&path));
    assert!(v["file"].as_str().unwrap().contains(&id));
    assert_no_bar("pull --json", &o.stderr);

    // Pulled again: the intact local copy is used.
    let o = env.run(&["pull", &id, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["downloaded"], false);
    assert!(v.get("extracted_to").is_none());

    // --json and --restore do not go together.
    let o = env.run(&["pull", &id, "--json", "--restore"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

fn find(root: &std::path::Path, name: &str) -> std::path::PathBuf {
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let p = e.path();
        if p.file_name().unwrap() == name {
            return p;
        }
        if p.is_dir() && !p.is_symlink() {
            let f = find(&p, name);
            if f.exists() {
                return f;
            }
        }
    }
    root.join("missing")
}

/// Run the binary under a pseudo-terminal; returns (success, everything it drew).
fn under_pty(env: &Env, args: &str) -> (bool, String) {
    let bin = assert_cmd::cargo::cargo_bin("pronto-offsite");
    let line = format!(
        "'{}' --config '{}' {args}",
        bin.display(),
        env.config().display()
    );
    let o = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("PRONTO_OFFSITE_CONFIG")
        .output()
        .expect("script (util-linux) runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn bars_render_under_a_pseudo_terminal() {
    // No silent pass: scripts/test installs `script`; without it this test fails.
    if let Err(e) = Command::new("script").arg("--version").output() {
        panic!(
            "this test needs `script` (apt-get install bsdutils; scripts/test installs it): {e}"
        );
    }
    let env = env_with_data();
    let (ok, out) = under_pty(&env, "backup");
    assert!(ok, "backup under a pty:\n{out}");
    assert!(
        out.contains("backup ") && out.contains(" read, "),
        "no backup bar:\n{out}"
    );
    assert!(out.contains("/s"), "no rate:\n{out}");

    let (ok, out) = under_pty(&env, "push");
    assert!(ok, "push under a pty:\n{out}");
    assert!(
        out.contains("nas: ") && out.contains("ETA"),
        "no push bar:\n{out}"
    );
    assert!(out.contains("MiB"), "no byte counts:\n{out}");
    assert!(out.contains("uploaded and verified"), "{out}");

    std::fs::remove_dir_all(env.backups()).unwrap();
    let (ok, out) = under_pty(&env, "pull latest");
    assert!(ok, "pull under a pty:\n{out}");
    assert!(
        out.contains("ETA") && out.contains("MiB"),
        "no pull bar:\n{out}"
    );
    assert!(out.contains("verified sha256"), "{out}");

    // A restore from the local archive just pulled: a bar while it is extracted, named for
    // the archive (no download happens, so that bar is the extraction's).
    let before = support::file_digest(&env.path("src/data.bin"));
    let (ok, out) = under_pty(&env, "pull latest --restore --no-safety-backup");
    assert!(ok, "restore under a pty:\n{out}");
    assert!(
        out.contains("pronto-app-backup-") && out.contains("ETA") && out.contains("MiB"),
        "no restore bar:\n{out}"
    );
    assert!(out.contains("restore complete"), "{out}");
    assert_eq!(
        support::file_digest(&env.path("src/data.bin")),
        before,
        "the restored file"
    );

    // -q: nothing drawn on a terminal either.
    let (ok, out) = under_pty(&env, "-q backup");
    assert!(ok, "{out}");
    assert!(
        !out.contains(" read, ") && !out.contains("ETA"),
        "-q drew a bar:\n{out}"
    );
    // push --json: only the JSON report.
    let (ok, out) = under_pty(&env, "push --json");
    assert!(ok, "{out}");
    assert!(!out.contains("ETA"), "push --json drew a bar:\n{out}");
}

#[test]
fn every_command_help_has_an_example() {
    for cmd in [
        "backup",
        "push",
        "prune",
        "pin",
        "unpin",
        "list",
        "pull",
        "verify",
        "keygen",
        "policy",
        "hook",
        "status",
        "doctor",
        "completions",
        "man",
    ] {
        let o = assert_cmd::Command::cargo_bin("pronto-offsite")
            .unwrap()
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd} --help: {}", text(&o));
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(
            help.contains("Example")
                && (help.contains(&format!("pronto-offsite {cmd}"))
                    || help.contains(&format!("pronto-offsite -q {cmd}"))),
            "{cmd} --help has no example:\n{help}"
        );
    }
}
