//! Exit codes match the table in docs/commands.md for every command, code by code: the
//! codes are what users' scripts and monitoring branch on, so each one a command
//! documents is produced here through the binary, the way a script would meet it.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok | 1 | error | 2 | usage or config | 3 | partial | 4 | verification failed |
//! | 5 | `status`: stale | 6 | `hook`: busy |

mod support;

use std::path::{Path, PathBuf};

use support::{files_under, text, Env};

/// A remote that can never be written or listed: a folder below a file.
const BROKEN_REMOTE: &str = "file:///dev/null/pronto-offsite-remote";

/// A workspace with one source file and the file:// remote `nas`; `extra` is appended
/// to the config (more remotes, settings).
fn env(extra: &str) -> Env {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src/sub")).unwrap();
    std::fs::write(env.path("src/index.html"), b"<h1>hello</h1>\n").unwrap();
    std::fs::write(env.path("src/sub/data.bin"), support::noise(50_000, 7)).unwrap();
    env.write_config(extra);
    env
}

/// A second remote that always fails.
fn broken_remote() -> String {
    format!("\n[[remotes]]\nname = \"broken\"\nurl = \"{BROKEN_REMOTE}\"\n")
}

/// Run and return the exit code, with the output for the failure message.
fn code(env: &Env, args: &[&str]) -> (i32, String) {
    let o = env.run(args);
    (o.status.code().unwrap_or(-1), text(&o))
}

/// Assert that `args` exit with `want`.
#[track_caller]
fn expect(env: &Env, args: &[&str], want: i32) -> String {
    let (got, out) = code(env, args);
    assert_eq!(
        got,
        want,
        "`pronto-offsite {}` exit code\n{out}",
        args.join(" ")
    );
    out
}

/// The local archives (not manifests) of the backup folder, oldest first.
fn local_archives(env: &Env) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = files_under(&env.backups())
        .into_iter()
        .filter(|p| is_archive(p))
        .collect();
    v.sort();
    v
}

fn is_archive(p: &Path) -> bool {
    let n = p.file_name().unwrap().to_string_lossy();
    n.starts_with("pronto-app-backup-") && (n.ends_with(".tar.gz") || n.ends_with(".tar.zst"))
}

/// Flip one byte in the middle of `path`.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn every_command_exits_0_when_it_succeeds() {
    let env = env("");
    expect(&env, &["backup"], 0);
    expect(&env, &["push"], 0);
    expect(&env, &["list"], 0);
    expect(&env, &["verify"], 0);
    expect(&env, &["status"], 0);
    expect(&env, &["pin", "latest"], 0);
    expect(&env, &["unpin", "latest"], 0);
    expect(&env, &["prune"], 0);
    expect(
        &env,
        &["pull", "latest", "--to", env.path("out").to_str().unwrap()],
        0,
    );
    expect(&env, &["hook"], 0);
    expect(&env, &["adopt"], 0);
    expect(&env, &["completions", "bash"], 0);
    expect(&env, &["man"], 0);
    expect(
        &env,
        &["keygen", "--output", env.path("id.key").to_str().unwrap()],
        0,
    );
    let o = env
        .cmd()
        .arg("policy")
        .write_stdin("pronto-app-backup-20261201-030000.tar.gz\n")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "policy\n{}", text(&o));
}

#[test]
fn every_command_exits_2_on_a_bad_flag_and_on_a_broken_config() {
    let env = env("");
    for cmd in [
        "backup", "push", "list", "pull", "verify", "prune", "pin", "unpin", "hook", "status",
        "doctor", "adopt", "policy", "keygen",
    ] {
        expect(&env, &[cmd, "--no-such-flag"], 2);
    }
    // A numeric setting out of range is a config error for every command that reads it.
    let config = std::fs::read_to_string(env.config()).unwrap();
    std::fs::write(
        env.config(),
        config.replace("dir = \"backups\"", "dir = \"backups\"\nthreads = 100000"),
    )
    .unwrap();
    for args in [
        &["backup"][..],
        &["push"],
        &["list"],
        &["verify"],
        &["prune"],
        &["status"],
        &["hook"],
        &["doctor"],
    ] {
        let out = expect(&env, args, 2);
        assert!(
            out.contains("local.threads"),
            "the message names the setting:\n{out}"
        );
    }
}

#[test]
fn push_prune_pin_and_hook_exit_3_when_one_remote_fails_and_1_when_all_do() {
    let env = env(&broken_remote());
    expect(&env, &["backup"], 0);
    let out = expect(&env, &["push"], 3);
    assert!(out.contains("broken"), "the failed remote is named:\n{out}");
    expect(&env, &["push", "--remote", "broken"], 1);
    expect(&env, &["prune"], 3);
    expect(&env, &["pin", "latest"], 3);
    expect(&env, &["hook"], 3);
    // `backup --push`: the archive was made, a remote failed.
    expect(&env, &["backup", "--push"], 3);
}

#[test]
fn hook_exits_1_when_the_backup_fails() {
    let env = env("");
    std::fs::remove_dir_all(env.path("src")).unwrap();
    let out = expect(&env, &["hook"], 1);
    assert!(out.contains("src"), "the missing source is named:\n{out}");
}

#[test]
fn verify_and_pull_exit_4_on_a_corrupted_archive_and_verify_1_on_an_unreachable_remote() {
    let env = env("");
    expect(&env, &["backup"], 0);
    expect(&env, &["push"], 0);
    let archive = local_archives(&env).pop().expect("an archive");
    let name = archive.file_name().unwrap().to_owned();
    corrupt(&archive);
    let out = expect(&env, &["verify", "--local"], 4);
    assert!(
        out.contains(&*name.to_string_lossy()),
        "the archive is named:\n{out}"
    );

    // The remote copy corrupted too: pull refuses it before extracting anything.
    let remote_copy = files_under(&env.remote())
        .into_iter()
        .find(|p| p.file_name() == Some(&name))
        .expect("the remote copy");
    corrupt(&remote_copy);
    std::fs::remove_file(&archive).unwrap();
    let to = env.path("out");
    expect(&env, &["pull", "latest", "--to", to.to_str().unwrap()], 4);
    assert!(
        !to.join("site").exists(),
        "nothing extracted from a corrupted archive"
    );

    // A remote that cannot be checked at all.
    let env = env_with_broken_only();
    expect(&env, &["backup"], 0);
    expect(&env, &["verify", "--remote", "broken"], 1);
}

fn env_with_broken_only() -> Env {
    env(&broken_remote())
}

#[test]
fn adopt_exits_4_when_it_refuses_an_archive() {
    let env = env("");
    std::fs::create_dir_all(env.backups()).unwrap();
    std::fs::write(
        env.backups()
            .join("pronto-app-backup-20261201-030000.tar.gz"),
        b"not a gzip stream at all",
    )
    .unwrap();
    let out = expect(&env, &["adopt"], 4);
    assert!(
        out.contains("pronto-app-backup-20261201-030000.tar.gz"),
        "{out}"
    );
}

#[test]
fn status_exits_5_when_stale() {
    let env = env("");
    // No archive at all: stale.
    expect(&env, &["status"], 5);
    expect(&env, &["backup"], 0);
    expect(&env, &["push"], 0);
    expect(&env, &["status"], 0);
    // The newest archive is older than the max age.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = expect(&env, &["status", "--max-age", "1s"], 5);
    assert!(out.contains("STALE: the newest local archive"), "{out}");
}

// Exit 6 (`hook`: busy) is produced by `e2e_hook::a_hook_that_finds_the_lock_held_reports_it` and
// `e2e_locks`, which hold the lock with a real hook run.
