//! Failing loudly and cleanly (issue 17): writes that fail (a file size limit set with
//! RLIMIT_FSIZE in the spawned binary stands for a full disk: every write past it fails
//! with EFBIG) during `backup`, `push` to a file:// remote and `pull`; a standard output
//! that is closed; numeric settings out of range. Each case: no panic, the documented
//! exit code, a message that names the file, and nothing partial under a final name.

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{files_under, names_in, stderr, text, Env};

/// Largest file the limited binary may write: smaller than the archive, larger than a
/// manifest, a lock file or the state files.
const LIMIT: u64 = 1 << 20;

/// A source of 3 MiB that does not compress (the archive is about 3 MiB).
fn source(env: &Env) {
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/index.html"), "<h1>pronto</h1>\n").unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(env.path("src/photo.jpg"), noise).unwrap();
}

/// The binary with `args`, where no file may grow past `limit` bytes (SIGXFSZ ignored,
/// so a write past it fails with EFBIG as on a full disk, instead of killing the process).
fn run_limited(env: &Env, args: &[&str], limit: u64) -> Output {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("pronto-offsite"));
    c.arg("--config").arg(env.config()).args(args);
    c.env_remove("PRONTO_OFFSITE_CONFIG");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().unwrap()
}

/// No panic, exit 1, and the message names `file` and says what to do.
#[track_caller]
fn assert_clean_failure(o: &Output, file: &str) {
    let all = text(o);
    assert!(!all.contains("panicked"), "{all}");
    assert_eq!(o.status.code(), Some(1), "{all}");
    let err = stderr(o);
    assert!(err.contains(file), "the message names {file}: {all}");
    assert!(
        err.contains("ulimit -f"),
        "the message says what to do: {all}"
    );
}

/// Archive files (complete names, no temp or partial file) under `dir`.
fn archives_under(dir: &Path) -> Vec<String> {
    files_under(dir)
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .filter(|n| n.ends_with(".tar.gz"))
        .collect()
}

#[test]
fn a_backup_that_cannot_write_fails_with_a_message_and_leaves_no_archive() {
    let env = Env::new();
    source(&env);
    env.write_config("");
    let o = run_limited(&env, &["backup"], LIMIT);
    assert_clean_failure(&o, ".tar.gz.partial");
    assert!(stderr(&o).contains("backup failed; no archive was written"));
    let left: Vec<String> = names_in(&env.backups())
        .into_iter()
        .filter(|n| n.contains(".tar.gz"))
        .collect();
    assert!(left.is_empty(), "nothing of the archive is left: {left:?}");
}

#[test]
fn a_push_to_a_file_remote_that_cannot_write_fails_with_a_message_and_leaves_nothing_final() {
    let env = Env::new();
    source(&env);
    env.write_config("");
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "{}", text(&o));
    let archive = archives_under(&env.backups()).remove(0);

    let o = run_limited(&env, &["push"], LIMIT);
    assert_clean_failure(&o, &archive);
    assert!(stderr(&o).contains("nas"), "names the remote: {}", text(&o));
    assert!(
        archives_under(&env.remote()).is_empty(),
        "no archive under a final name on the remote: {:?}",
        files_under(&env.remote())
    );
    // Once the limit is gone, the same push completes.
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(archives_under(&env.remote()), [archive]);
}

#[test]
fn a_pull_that_cannot_write_fails_with_a_message_and_leaves_no_archive() {
    let env = Env::new();
    source(&env);
    env.write_config("");
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let archive = archives_under(&env.backups()).remove(0);
    std::fs::remove_dir_all(env.backups()).unwrap();

    let o = run_limited(&env, &["pull", "latest"], LIMIT);
    assert_clean_failure(&o, &archive);
    assert!(
        archives_under(&env.backups()).is_empty(),
        "no archive under a final name: {:?}",
        files_under(&env.backups())
    );
    assert!(
        !files_under(&env.backups())
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".partial")),
        "no partial file left: {:?}",
        files_under(&env.backups())
    );
}

#[test]
fn a_closed_standard_output_does_not_abort_a_push() {
    let env = Env::new();
    source(&env);
    env.write_config("");
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "{}", text(&o));
    let archive = archives_under(&env.backups()).remove(0);

    // A pipe whose reading end is closed: every write to stdout fails with EPIPE.
    let mut fds = [0; 2];
    // SAFETY: pipe() fills two descriptors; the reading one is closed at once.
    let stdout = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1])
    };
    let o = Command::new(assert_cmd::cargo::cargo_bin("pronto-offsite"))
        .arg("--config")
        .arg(env.config())
        .arg("push")
        .env_remove("PRONTO_OFFSITE_CONFIG")
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(archives_under(&env.remote()), [archive]);
}

#[test]
fn numeric_settings_out_of_range_are_config_errors_that_name_the_key() {
    for (setting, key) in [
        ("threads = 100000", "local.threads"),
        ("threads = -1", "local.threads"),
    ] {
        let env = Env::new();
        source(&env);
        let text_cfg = format!(
            "[local]\ndir = \"backups\"\n{setting}\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n"
        );
        std::fs::write(env.config(), text_cfg).unwrap();
        let o = env.run(&["backup"]);
        assert_eq!(o.status.code(), Some(2), "{setting}: {}", text(&o));
        let err = stderr(&o);
        assert!(
            err.contains(key) && err.contains(":3:") && !err.contains("panicked"),
            "{setting}: {}",
            text(&o)
        );
        assert!(archives_under(&env.backups()).is_empty());
    }
}

/// A config with `[local] dir = local`, one source `src` named `source_name`, and the
/// given `[[remotes]]` tables.
fn layout(env: &Env, local: &str, source_name: &str, remotes: &[&str]) {
    std::fs::create_dir_all(env.path("src")).unwrap();
    let mut t = format!(
        "[local]\ndir = \"{local}\"\n\n[[sources]]\nname = \"{source_name}\"\nkind = \"static_content\"\npath = \"src\"\n"
    );
    for (i, url) in remotes.iter().enumerate() {
        t.push_str(&format!(
            "\n[[remotes]]\nname = \"r{i}\"\nurl = \"{url}\"\n"
        ));
    }
    std::fs::write(env.config(), t).unwrap();
}

#[test]
fn unsafe_layouts_are_refused_by_config_load_and_doctor() {
    let cases: [(&str, &str, &[&str], &str); 7] = [
        ("backups", "site", &["file://backups"], "remotes[0].url"),
        ("backups", "site", &["file://./backups/"], "remotes[0].url"),
        (
            "backups",
            "site",
            &["file://backups/offsite"],
            "remotes[0].url",
        ),
        ("nas/backups", "site", &["file://nas"], "remotes[0].url"),
        (
            "backups",
            "site",
            &["file://remote", "file://./remote/../remote"],
            "remotes[1].url",
        ),
        ("backups", ".", &["file://remote"], "sources[0].name"),
        ("backups", "..", &["file://remote"], "sources[0].name"),
    ];
    for (local, name, remotes, key) in cases {
        let env = Env::new();
        layout(&env, local, name, remotes);
        let o = env.run(&["backup"]);
        let what = format!("{local} {name} {remotes:?}");
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
        assert!(stderr(&o).contains(key), "{what}: {}", text(&o));
        assert!(archives_under(env.dir.path()).is_empty(), "{what}");
        let o = env.run(&["doctor"]);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
        assert!(
            support::stdout(&o).contains(key),
            "doctor names {key}: {what}: {}",
            text(&o)
        );
    }
    // Neighbours are fine: a remote beside the backup folder, with a similar name.
    let env = Env::new();
    layout(
        &env,
        "backups",
        "site",
        &["file://backups-offsite", "file://remote"],
    );
    let o = env.run(&["backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_refused_connection_fails_at_once_naming_host_port_and_cause() {
    let port = closed_port();
    let remotes = [
        support::remotes::s3_remote(
            "s3",
            &format!("http://127.0.0.1:{port}"),
            "bucket/prefix",
            "",
        ),
        format!(
            "\n[[remotes]]\nname = \"ssh\"\nurl = \"sftp://root@127.0.0.1:{port}/srv/backups\"\nssh_config_file = \"/dev/null\"\n"
        ),
    ];
    for remote in remotes {
        let env = Env::new();
        std::fs::create_dir_all(env.path("src")).unwrap();
        std::fs::write(
            env.config(),
            format!(
                "[local]\ndir = \"backups\"\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n{remote}"
            ),
        )
        .unwrap();
        let keys = support::remotes::Keys {
            id: "AKIAPRONTOREFUSED001",
            secret: "refused-secret-never-printed",
        };
        let o = keys.run(&env, &["list"]);
        let all = text(&o);
        // The local folder was listed, the remote not: partial.
        assert_eq!(o.status.code(), Some(3), "{all}");
        assert!(
            all.contains(&format!("127.0.0.1:{port}")) && all.contains("connection refused"),
            "host, port and cause: {all}"
        );
        assert!(
            !all.contains("retrying"),
            "a refused connection is not retried: {all}"
        );
    }
}

#[test]
fn read_only_commands_never_create_a_missing_remote_folder() {
    let env = Env::new();
    source(&env);
    env.write_config("");
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "{}", text(&o));
    // A typo, or a NAS that is not mounted: the remote folder does not exist.
    for args in [
        &["list"][..],
        &["verify", "--remote", "nas"][..],
        &["pull", "latest", "--from", "nas"][..],
        &["status"][..],
    ] {
        let o = env.run(args);
        let all = text(&o);
        assert!(
            o.status.code().is_some_and(|c| c != 0) && !all.contains("panicked"),
            "{args:?}: {all}"
        );
        assert!(
            all.contains(&env.remote().display().to_string()) && all.contains("does not exist"),
            "{args:?} names the missing folder: {all}"
        );
        assert!(
            !env.remote().exists(),
            "{args:?} created {}",
            env.remote().display()
        );
    }
    // Without `--from`, `latest` is the intact local archive: the pull works, and still
    // names the remote it could not read (and creates nothing).
    let o = env.run(&["pull", "latest"]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert!(
        all.contains("using the local copy")
            && all.contains(&env.remote().display().to_string())
            && all.contains("does not exist"),
        "{all}"
    );
    assert!(
        !env.remote().exists(),
        "pull latest created the remote folder"
    );
    // A push creates it (a brand-new remote needs no extra step).
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(archives_under(&env.remote()).len(), 1);
}

#[test]
fn pull_to_an_unusable_folder_fails_before_downloading() {
    let env = Env::new();
    source(&env);
    env.write_config("");
    for args in [&["backup"][..], &["push"][..]] {
        let o = env.run(args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    std::fs::remove_dir_all(env.backups()).unwrap();
    // A plain file where the destination folder (or one of its parents) should be.
    std::fs::write(env.path("restore-here"), "a file").unwrap();
    for to in ["restore-here", "restore-here/sub"] {
        let o = env.run(&["pull", "latest", "--to", env.path(to).to_str().unwrap()]);
        let all = text(&o);
        assert_eq!(o.status.code(), Some(1), "{all}");
        assert!(
            all.contains("is not a folder") && all.contains("restore-here"),
            "{all}"
        );
        assert!(
            archives_under(&env.backups()).is_empty(),
            "nothing was downloaded: {:?}",
            files_under(&env.backups())
        );
    }
}

#[test]
fn a_backup_folder_inside_a_source_is_left_out_so_sizes_do_not_double() {
    let env = Env::new();
    source(&env);
    // The backup folder lies inside the source it backs up.
    std::fs::write(
        env.config(),
        "[local]\ndir = \"src/backups\"\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n",
    )
    .unwrap();
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let o = env.run(&["backup"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(stderr(&o).contains("is the backup folder"), "{}", text(&o));
        let id = support::stdout(&o).trim().to_string();
        let archive = files_under(&env.path("src/backups"))
            .into_iter()
            .find(|p| p.to_string_lossy().ends_with(&format!("{id}.tar.gz")))
            .unwrap();
        sizes.push(std::fs::metadata(&archive).unwrap().len());
        let listing = Command::new("tar")
            .arg("-tzf")
            .arg(&archive)
            .output()
            .unwrap();
        assert!(listing.status.success());
        let names = String::from_utf8_lossy(&listing.stdout).into_owned();
        assert!(!names.contains("backups/"), "{names}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // No archive holds the earlier ones: the sizes stay within a few KiB.
    let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
    assert!(max - min < 64 << 10, "{sizes:?}");
}
