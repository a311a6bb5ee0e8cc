//! End to end: the one local lock (issue 15). Every command that changes the backup
//! folder or a remote serializes on `.pronto-offsite.lock`; a pin issued during a prune
//! is honoured; concurrent pushes never strand a remote copy.
//!
//! A "stalled" remote is an s3:// endpoint served by this test: it accepts the first
//! connection and answers nothing until the test says so, so a command can be held at a
//! known step without any timing; every later connection gets `403 AccessDenied` at once
//! (never retried).

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{fabricate, names_in, text, Env};

const P: &str = "pronto-app-backup";

fn file_of(id: &str) -> String {
    format!("{P}-{id}.tar.gz")
}

fn manifest_of(id: &str) -> String {
    format!("{P}-{id}.tar.gz.manifest.json")
}

/// An S3 endpoint that holds its first connection unanswered until [`Stalled::release`].
struct Stalled {
    port: u16,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

const DENIED_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>test</Message></Error>";

impl Stalled {
    fn start() -> Stalled {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let h = held.clone();
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { continue };
                if n == 0 {
                    h.lock().unwrap().push(s);
                } else {
                    std::thread::spawn(move || answer_denied(&mut s));
                }
            }
        });
        Stalled { port, held }
    }

    /// Wait until the first connection came in (a command is now held by it).
    fn wait_for_first(&self) {
        for _ in 0..600 {
            if !self.held.lock().unwrap().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nothing connected to the stalled remote within 60s");
    }

    /// Answer the held connection (`403`): the command it held goes on.
    fn release(&self) {
        for mut s in self.held.lock().unwrap().drain(..) {
            answer_denied(&mut s);
        }
    }

    fn remote_table(&self) -> String {
        format!(
            "\n[[remotes]]\nname = \"stalled\"\nurl = \"s3://bucket/prod\"\nregion = \"us-east-1\"\n\
             endpoint = \"http://127.0.0.1:{}\"\nallow_http = true\nretry_budget = \"0s\"\n",
            self.port
        )
    }
}

/// Read the request's head, then answer `403 AccessDenied` and close.
fn answer_denied(s: &mut TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        DENIED_BODY.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(DENIED_BODY.as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Both);
}

fn spawn(env: &Env, args: &[&str]) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("pronto-offsite"))
        .arg("--config")
        .arg(env.config())
        .args(args)
        .env_remove("PRONTO_OFFSITE_CONFIG")
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret-test")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run_keys(env: &Env, args: &[&str]) -> std::process::Output {
    spawn(env, args).wait_with_output().unwrap()
}

/// A pin that runs while a prune is listing its remotes is honoured by that prune: the
/// archive it pins survives a forced prune whose policy would delete it. (Before, the
/// prune had read the pins at its start and deleted the archive.)
#[test]
fn a_pin_issued_during_a_prune_is_honoured_by_it() {
    let env = Env::new();
    let stalled = Stalled::start();
    std::fs::write(
        env.config(),
        format!(
            "[local]\ndir = \"backups\"\n[retention]\nlast = 1\nmax_delete_fraction = 1\n{}",
            stalled.remote_table()
        ),
    )
    .unwrap();
    let (old, new) = ("20250101-020000", "20250102-020000");
    fabricate(&env.backups(), old, "test");
    fabricate(&env.backups(), new, "test");

    // The prune is held listing the stalled remote.
    let prune = spawn(&env, &["prune", "--local", "--force"]);
    stalled.wait_for_first();
    // The pin finishes meanwhile (locally; the stalled remote refuses it: exit 1/3).
    let pin = run_keys(&env, &["pin", old]);
    assert!(
        String::from_utf8_lossy(&pin.stdout).contains(&format!("local: pinned {old}")),
        "{}",
        text(&pin)
    );
    stalled.release();
    let o = prune.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        names_in(&env.backups()).contains(&file_of(old)),
        "the pinned archive was deleted by the prune that was running:\n{}",
        text(&o)
    );
    assert!(
        names_in(&env.backups()).contains(&manifest_of(old)),
        "{out}"
    );
    assert!(out.contains("pinned"), "{out}");
}

/// `push` takes the one lock (it took none): a hook that finds a push running waits,
/// then gives up with exit 6 and a message naming the push (pid, command, since).
#[test]
fn a_hook_waits_for_a_running_push_and_names_it_when_it_gives_up() {
    let env = Env::new();
    let stalled = Stalled::start();
    std::fs::write(
        env.config(),
        format!("[local]\ndir = \"backups\"\n{}", stalled.remote_table()),
    )
    .unwrap();
    fabricate(&env.backups(), "20250101-020000", "test");

    let push = spawn(&env, &["push"]);
    stalled.wait_for_first();
    let pid = push.id();
    let o = run_keys(&env, &["hook", "--no-backup", "--lock-wait", "1s"]);
    stalled.release();
    let _ = push.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("another pronto-offsite push (pid {pid}, since "))
            && stderr.contains("waiting 1s"),
        "{stderr}"
    );
}

/// Read-only commands take no lock and create nothing: `list` and `status` over a backup
/// folder that does not exist leave it absent.
#[test]
fn read_only_commands_create_nothing() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    env.write_config("");
    for args in [&["list"][..], &["status"], &["prune", "--dry-run"]] {
        let o = env.run(args);
        assert!(o.status.code().is_some(), "{}", text(&o));
        assert!(
            !env.backups().exists(),
            "{args:?} created the backup folder"
        );
    }
}

/// The invariant under two pushes at once and a prune: afterwards every archive the
/// local retention keeps has a complete copy on the remote whose bytes match its
/// manifest, and no remote archive is left without its manifest.
#[test]
fn two_pushes_at_once_and_a_prune_leave_every_kept_archive_complete() {
    let env = Env::new();
    std::fs::write(
        env.config(),
        format!(
            "[local]\ndir = \"backups\"\n[retention]\nlast = 3\nmax_delete_fraction = 1\n\
             [[remotes]]\nname = \"nas\"\nurl = \"file://{}\"\nprune = false\n",
            env.remote().display()
        ),
    )
    .unwrap();
    let ids: Vec<String> = (1..=6).map(|d| format!("202501{d:02}-020000")).collect();
    for round in 0..3 {
        for id in &ids[round * 2..round * 2 + 2] {
            fabricate(&env.backups(), id, "test");
        }
        let a = spawn(&env, &["push"]);
        let b = spawn(&env, &["push"]);
        let c = spawn(&env, &["prune", "--local"]);
        for ch in [a, b, c] {
            let o = ch.wait_with_output().unwrap();
            assert!(matches!(o.status.code(), Some(0) | Some(3)), "{}", text(&o));
        }
        check_remote_complete(&env.backups(), &env.remote());
    }
}

/// Every local archive (what the local retention keeps) has a complete, matching copy
/// on the remote; every archive on the remote has its manifest.
fn check_remote_complete(local: &Path, remote: &Path) {
    let remote_names = names_in(remote);
    for f in support::files_under(local) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".tar.gz") {
            continue;
        }
        assert!(
            remote_names.contains(&format!("{name}.manifest.json")),
            "{name}: no manifest on the remote: {remote_names:?}"
        );
        assert_eq!(
            support::file_digest(&remote.join(&name)),
            support::file_digest(&f),
            "{name}: the remote copy differs"
        );
    }
    for name in &remote_names {
        if name.ends_with(".tar.gz") {
            assert!(
                remote_names.contains(&format!("{name}.manifest.json")),
                "{name} stranded on the remote without its manifest"
            );
        }
    }
}

/// A re-upload planned over a listing taken before another push completed the copy
/// never takes the complete remote copy away: the remote's manifest (same bytes) stays
/// in place, untouched (before, it was deleted first, unconditionally, and written again
/// after the upload: a window with no restorable copy there, forever if the run died).
#[test]
fn a_reupload_keeps_a_complete_remote_copy_whose_manifest_matches() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    std::fs::write(
        env.config(),
        format!(
            "[local]\ndir = \"backups\"\n[[remotes]]\nname = \"nas\"\nurl = \"file://{}\"\n",
            env.remote().display()
        ),
    )
    .unwrap();
    let id = "20250101-020000";
    fabricate(&env.backups(), id, "test");
    fabricate(&env.remote(), id, "test");
    let mpath = env.remote().join(manifest_of(id));
    let before = std::fs::metadata(&mpath).unwrap();

    let cfg = pronto_offsite::config::load(&env.config()).unwrap();
    let r = pronto_offsite::remotes::open(&cfg, &cfg.remotes[0]).unwrap();
    let local = pronto_offsite::catalog::scan(&cfg.local).unwrap();
    // The plan of a push that listed the remote before the copy was complete.
    let up = pronto_offsite::plan::Upload {
        archive: local[0].clone(),
        manifest: local[0].manifest.clone().unwrap(),
        reason: pronto_offsite::plan::UploadReason::Incomplete,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(pronto_offsite::replicate::upload_archive(
        &r,
        &cfg.local.dir,
        &up,
    ))
    .unwrap();
    let after = std::fs::metadata(&mpath).expect("the remote manifest is still there");
    assert_eq!(
        (after.ino(), after.mtime_nsec()),
        (before.ino(), before.mtime_nsec()),
        "the complete remote copy's manifest was replaced"
    );
}

/// Isolation: one corrupt local archive and one unreadable manifest are reported by name
/// and skipped; the newer archive is still uploaded, push exits 3 ("some failed"), and
/// `list` and `status` flag the bad entry instead of failing. (Before, push stopped at
/// the corrupt archive, and every command failed on the unreadable manifest.)
#[test]
fn a_corrupt_archive_and_an_unreadable_manifest_are_skipped_by_name() {
    let env = Env::new();
    std::fs::write(
        env.config(),
        format!(
            "[local]\ndir = \"backups\"\n[[remotes]]\nname = \"nas\"\nurl = \"file://{}\"\nprune = false\n",
            env.remote().display()
        ),
    )
    .unwrap();
    let (corrupt, unreadable, good) = ("20250101-020000", "20250102-020000", "20250103-020000");
    for id in [corrupt, unreadable, good] {
        fabricate(&env.backups(), id, "test");
    }
    // Same size, other bytes: no longer what its manifest says.
    let path = env.backups().join(file_of(corrupt));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(env.backups().join(manifest_of(unreadable)), "{ not json").unwrap();

    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("FAILED: {}", file_of(corrupt))),
        "{}",
        text(&o)
    );
    assert!(
        out.contains(&format!(
            "FAILED: {}: manifest unreadable",
            file_of(unreadable)
        )),
        "{}",
        text(&o)
    );
    let remote = names_in(&env.remote());
    assert!(remote.contains(&manifest_of(good)), "{remote:?}");
    assert!(!remote.contains(&manifest_of(corrupt)), "{remote:?}");

    let o = env.run(&["list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "WARNING: local {}: manifest unreadable",
            file_of(unreadable)
        )),
        "{out}"
    );
    assert!(out.contains(good), "{out}");

    let o = env.run(&["status"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&file_of(unreadable)), "{}", text(&o));
    assert!(out.contains(&format!("newest {good}")), "{}", text(&o));
}

/// Clock sanity: an archive named in the future (a clock was wrong once) is flagged by
/// `backup`, `list`, `status` and `doctor`, is never `latest`, and never counts as a
/// fresh backup. (Before, `status` reported it as the fresh newest and `pull latest`
/// picked it.)
#[test]
fn an_archive_named_in_the_future_is_flagged_and_never_latest_or_fresh() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/a.txt"), "a").unwrap();
    env.write_config("");
    let (old, future) = ("20250101-020000", "20990101-000000");
    for id in [old, future] {
        fabricate(&env.backups(), id, "test");
        fabricate(&env.remote(), id, "test");
    }

    let o = env.run(&["status"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("{} is named in the future", file_of(future))),
        "{out}"
    );
    assert!(out.contains(&format!("newest {old}")), "{out}");

    let o = env.run(&["list"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!(
            "WARNING: {} is named in the future",
            file_of(future)
        )),
        "{}",
        text(&o)
    );

    let o = env.run(&["doctor"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("FAIL  clock: {}", file_of(future))),
        "{}",
        text(&o)
    );

    let to = env.path("pulled");
    let o = env.run(&["pull", "latest", "--to", to.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        to.join(format!("{P}-{old}")).exists() && !to.join(format!("{P}-{future}")).exists(),
        "pull latest took the archive named in the future:\n{}",
        text(&o)
    );

    let o = env.run(&["backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains(&format!("{} is named in the future", file_of(future))),
        "{}",
        text(&o)
    );
}

/// Self-recovery: a prune lease left by a killed prune of this host (its pid is gone)
/// is taken over at once, not after its 10-minute expiry, and the run says so.
#[test]
fn a_stale_lease_of_a_dead_local_pid_is_taken_over_at_once() {
    let env = Env::new();
    env.write_config("");
    std::fs::create_dir_all(env.remote()).unwrap();
    // A pid that existed and is gone.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let host = pronto_offsite::host_namespace::default_host_id();
    let now = chrono::Utc::now();
    let lease = serde_json::json!({
        "host": host,
        "pid": dead,
        "started": (now - chrono::TimeDelta::minutes(1)).to_rfc3339(),
        "expires": (now + chrono::TimeDelta::minutes(9)).to_rfc3339(),
    });
    std::fs::write(
        env.remote().join(format!("{P}.prune-lease.json")),
        serde_json::to_vec(&lease).unwrap(),
    )
    .unwrap();
    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "repaired: took over the prune lease {P}.prune-lease.json of pid {dead}"
        )),
        "{}",
        text(&o)
    );
}

/// Safety backups (taken before a restore, `"safety": true` in the manifest) are not
/// scheduled backups: they take no retention slot, are not the newest for `status`, do
/// not count toward the deletion cap, are never pushed, and prune keeps only the three
/// newest of them. (Before, four safety backups took both `last = 2` slots and the
/// scheduled archives were deleted.)
#[test]
fn safety_backups_take_no_retention_slot_and_have_their_own_rule() {
    let env = Env::new();
    std::fs::write(
        env.config(),
        "[local]\ndir = \"backups\"\n[retention]\nlast = 2\nmax_delete_fraction = 1\n",
    )
    .unwrap();
    let scheduled = ["20250101-020000", "20250102-020000"];
    let safety = [
        "20250103-120000",
        "20250104-120000",
        "20250105-120000",
        "20250106-120000",
    ];
    for id in scheduled.iter().chain(&safety) {
        fabricate(&env.backups(), id, "test");
    }
    for id in safety {
        let m = env.backups().join(manifest_of(id));
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
        v["safety"] = serde_json::Value::Bool(true);
        std::fs::write(&m, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    let o = env.run(&["status"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("newest {}", scheduled[1])),
        "{}",
        text(&o)
    );

    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let left: Vec<String> = support::files_under(&env.backups())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar.gz"))
        .collect();
    for id in scheduled.iter().chain(&safety[1..]) {
        assert!(
            left.contains(&file_of(id)),
            "{id} was deleted: {left:?}\n{}",
            text(&o)
        );
    }
    assert!(
        !left.contains(&file_of(safety[0])),
        "the oldest safety backup beyond the newest 3 stays: {left:?}"
    );
}

/// Self-recovery: an archive renamed into place whose manifest write was killed gets
/// its manifest back (after being hashed and read whole) on the next push, which says
/// "repaired: ..." and uploads it. (Before, it stayed without a manifest for ever and was
/// never pushed.)
#[test]
fn an_archive_whose_manifest_write_was_killed_is_repaired_and_pushed() {
    let env = Env::new();
    env.write_config("");
    let id = "20250101-020000";
    fabricate(&env.backups(), id, "test");
    let original = std::fs::read(env.backups().join(manifest_of(id))).unwrap();
    std::fs::remove_file(env.backups().join(manifest_of(id))).unwrap();

    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!(
            "repaired: rebuilt the manifest of {}",
            file_of(id)
        )),
        "{}",
        text(&o)
    );
    let rebuilt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.backups().join(manifest_of(id))).unwrap())
            .unwrap();
    let original: serde_json::Value = serde_json::from_slice(&original).unwrap();
    assert_eq!(rebuilt["sha256"], original["sha256"]);
    assert_eq!(rebuilt["size"], original["size"]);
    assert!(names_in(&env.remote()).contains(&manifest_of(id)));

    // A file under our name that is not a readable archive is left alone.
    let junk = "20250102-020000";
    std::fs::write(env.backups().join(file_of(junk)), b"not an archive").unwrap();
    let o = env.run(&["push"]);
    assert!(
        !env.backups().join(manifest_of(junk)).exists(),
        "{}",
        text(&o)
    );
}
