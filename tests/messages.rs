//! The wording of the ten messages users meet most (issue 19): each read as plain
//! English, naming the archive, remote, file or step and what to do, pinned here word for
//! word so that a change to one is a decision, not an accident. Driven through the
//! binary as a user's shell or cron would.

mod support;

use support::{stderr, stdout, text, Env};

/// The one line of `s` that starts with `start` (panics, showing `s`, when none does).
fn line<'a>(s: &'a str, start: &str) -> &'a str {
    s.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{s}"))
}

#[test]
fn the_ten_most_common_messages_read_as_pinned() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/index.html"), "<h1>pronto</h1>\n").unwrap();
    env.write_config("\n[retention]\nlast = 1\n");
    let remote = env.remote();
    std::fs::create_dir_all(&remote).unwrap();

    // 1. No config file anywhere.
    let o = assert_cmd::Command::cargo_bin("pronto-offsite")
        .unwrap()
        .current_dir(env.path("src"))
        .env_remove("PRONTO_OFFSITE_CONFIG")
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    if !std::path::Path::new("/etc/pronto-offsite/config.toml").exists() {
        assert_eq!(
            stderr(&o).trim_end(),
            "ERROR: no config file: give --config FILE, set $PRONTO_OFFSITE_CONFIG, or create \
             ./pronto-offsite.toml or /etc/pronto-offsite/config.toml (see examples/ for a starting point)"
        );
    }

    // 2. A misspelt key: the file, the line, what is expected.
    let bad = env.path("bad.toml");
    std::fs::write(&bad, "[local]\ndir = \"b\"\ncompresion = \"gzip\"\n").unwrap();
    let o = assert_cmd::Command::cargo_bin("pronto-offsite")
        .unwrap()
        .arg("--config")
        .arg(&bad)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "ERROR: {}:3: unknown field `compresion`, expected one of `dir`, `prefix`, `compression`, `level`, `threads`",
            bad.display()
        )
    );

    // 3. A remote name that is not configured.
    let o = env.run(&["push", "--remote", "attic"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "ERROR: no remote named 'attic' in {}; configured remotes: nas",
            env.config().display()
        )
    );

    // 4. A backup: the archive's id on stdout (what scripts read).
    let o = env.run(&["backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let id = stdout(&o).trim().to_string();
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let size = std::fs::metadata(env.backups().join(&file)).unwrap().len();

    // 5, 6. A push: what it uploads and why, then one summary line per remote.
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert_eq!(
        line(&out, "nas: upload "),
        format!("nas: upload {file} ({size} B): missing on the remote")
    );
    assert_eq!(
        line(&out, "nas: uploaded"),
        format!("nas: uploaded 1 ({size} B), 0 already there; pruned 0")
    );

    // 7. A pull of an id no location holds.
    let o = env.run(&["pull", "20200101-000000"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        stderr(&o).trim_end(),
        "ERROR: no complete archive 20200101-000000 on nas (`pronto-offsite list` shows what each location holds)"
    );

    // 8. status when all is well, and when the newest archive is too old.
    let o = env.run(&["status", "--max-age", "26h"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        line(&stdout(&o), "OK:"),
        "OK: the newest archive is less than 1d 2h old, locally and on every remote"
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let o = env.run(&["status", "--max-age", "1s"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let out = stdout(&o);
    let stale = line(&out, "STALE: the newest local archive");
    assert!(
        stale.starts_with(&format!("STALE: the newest local archive ({id}) is "))
            && stale.ends_with(" old, more than 1s"),
        "{stale}"
    );

    // 9. verify of a damaged local archive: the summary counts what it found.
    let path = env.backups().join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let o = env.run(&["verify", "--local"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert_eq!(
        line(&stdout(&o), "verify:"),
        "verify: 1 checked: 0 ok, 1 mismatch(es), 0 warning(s), 0 not checked"
    );

    // 10. A remote folder that is not there (an unmounted NAS), said once, with the cause.
    std::fs::rename(&remote, env.path("remote-unmounted")).unwrap();
    let o = env.run(&["list"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let r = remote.display();
    assert_eq!(
        line(&stdout(&o), "ERROR:"),
        format!(
            "ERROR: remote nas could not be listed: opening {r}: the remote folder {r} does not exist \
             (a typo in the URL, or the disk or NAS not mounted?); nothing was created"
        )
    );

    // And a source that is gone: the step, the source and the path, no archive.
    std::fs::rename(env.path("remote-unmounted"), &remote).unwrap();
    std::fs::rename(env.path("src"), env.path("src-moved")).unwrap();
    let o = env.run(&["backup"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let errs = stderr(&o);
    let err = line(&errs, "ERROR:");
    assert!(
        err.starts_with("ERROR: backup failed; no archive was written (pronto-app-backup-")
            && err.ends_with(&format!(
                ".tar.gz): source 'site': {} does not exist",
                env.path("src").display()
            )),
        "{err}"
    );
}
