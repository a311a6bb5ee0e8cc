//! Upload while archiving (`backup --push`, and `hook` by default), end to end through the
//! binary: to file://, to S3 on LocalStack (started by the shared support code, a bucket
//! per test) and to SFTP on a private sshd. Each remote gets a byte-identical archive and
//! its manifest, `verify --remote` passes and `pull` brings back the same bytes; parts
//! reach a remote while the archive is still being written; a remote that fails is
//! reported (exit 3) with no manifest and no upload left there while the others
//! complete; a backup that fails half-way, or a run killed with SIGKILL, leaves no
//! manifest on any remote and nothing under an archive's final name; a later `push`
//! completes an upload a kill interrupted after the archive was finished.

mod support;

#[path = "../backends/tests/support/localstack.rs"]
mod localstack;
#[path = "../backends/tests/support/proxy.rs"]
mod proxy;
#[path = "../backends/tests/support/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::remotes::{file_remote, sftp_remote, Keys};
use support::{
    assert_empty, file_digest, files_under, find_file, names_in, stderr, stdout, text, Env,
};

const KEYS: Keys = Keys {
    id: "AKIAPRONTOSTREAM0042",
    secret: "stream-secret-must-never-be-printed-0123",
};
const PREFIX: &str = "prod/host-1";

/// The binary, with a clean AWS environment (keys for LocalStack, no machine config).
fn bin(env: &Env) -> Command {
    KEYS.bin(env)
}

fn run(env: &Env, args: &[&str]) -> Output {
    KEYS.run(env, args)
}

fn spawn(env: &Env, args: &[&str]) -> Child {
    bin(env)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `[local]` (gzip level 1, `threads` compression threads) and one static_content source
/// `src` holding a few small files and `mib` MiB of noise.
fn local_part(env: &Env, mib: usize, threads: usize) -> String {
    let src = env.path("src");
    std::fs::create_dir_all(src.join("css")).unwrap();
    std::fs::write(src.join("index.html"), "<h1>pronto</h1>\n").unwrap();
    std::fs::write(src.join("css/app.css"), "body { color: #333 }\n").unwrap();
    if mib > 0 {
        support::write_noise(&src.join("media.bin"), mib << 20, 42);
    }
    format!(
        "[local]\ndir = \"backups\"\nlevel = 1\nthreads = {threads}\n\n\
         [[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n"
    )
}

fn s3_remote(name: &str, endpoint: &str, bucket: &str) -> String {
    support::remotes::s3_remote(name, endpoint, &format!("{bucket}/{PREFIX}"), "")
}

/// Where the local copy of `file` is (the backup folder or a tier folder).
fn find_local(env: &Env, file: &str) -> Option<PathBuf> {
    find_file(&env.backups(), file)
}

/// Archive files (complete names, not `.partial`) in the backup folder and its tiers.
fn local_archives(env: &Env) -> Vec<String> {
    files_under(&env.backups())
        .into_iter()
        .filter(|p| !p.components().any(|c| c.as_os_str() == ".journal"))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("pronto-app-backup-") && !n.ends_with(".partial"))
        .collect()
}

/// Journal files left in the backup folder (not the hidden temp files they are written
/// through).
fn journals(env: &Env) -> Vec<PathBuf> {
    files_under(&env.backups().join(".journal"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
                && p.extension().is_some_and(|x| x == "json")
        })
        .collect()
}

/// Names in a file:// remote's folder, and what its unfinished uploads hold.
/// What a remote folder holds besides its staging folder and its marker.
fn remote_names(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n != ".uploads" && n != MARKER)
        .collect()
}

/// The remote's marker, written by the first push (see src/marker.rs).
const MARKER: &str = ".pronto-offsite-remote";

fn remote_staging(dir: &Path) -> Vec<PathBuf> {
    let mut v = files_under(&dir.join(".uploads"));
    // Upload folders without files count too.
    if let Ok(rd) = std::fs::read_dir(dir.join(".uploads")) {
        v.extend(rd.flatten().map(|e| e.path()));
    }
    v
}

/// The archive is being written: a `.tar.gz.partial` in the backup folder.
fn writing(env: &Env) -> bool {
    names_in(&env.backups())
        .iter()
        .any(|n| n.ends_with(".tar.gz.partial"))
}

/// A `.partial` file in the backup folder.
fn any_partial(env: &Env) -> bool {
    names_in(&env.backups())
        .iter()
        .any(|n| n.ends_with(".partial"))
}

/// A part of an unfinished upload is in a file:// remote's staging folder.
/// A part is on the remote: an upload's parts file (parts at their offsets) holds bytes.
fn part_staged(remote: &Path) -> bool {
    remote_staging(remote).iter().any(|p| {
        p.file_name().is_some_and(|n| n == "parts")
            && std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
    })
}

fn archive_name(id: &str) -> String {
    format!("pronto-app-backup-{id}.tar.gz")
}

/// `backup --push`: the new id on stdout, exit 0.
fn backup_push(env: &Env) -> (String, Output) {
    let o = run(env, &["backup", "--push"]);
    assert_eq!(o.status.code(), Some(0), "backup --push: {}", text(&o));
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 15, "the id on stdout: {}", text(&o));
    (id, o)
}

/// Lose the local copy, `pull` it from `remote`, and check it has the same bytes.
fn pull_back_identical(env: &Env, remote: &str, file: &str, digest: &str) {
    let local = find_local(env, file).expect("local archive");
    let manifest = local.with_file_name(format!("{file}.manifest.json"));
    std::fs::remove_file(&local).unwrap();
    std::fs::remove_file(&manifest).unwrap();
    let id = &file["pronto-app-backup-".len()..file.len() - ".tar.gz".len()];
    let o = run(env, &["pull", id, "--remote", remote]);
    assert!(o.status.success(), "pull from {remote}: {}", text(&o));
    let back = find_local(env, file).expect("pulled archive");
    assert_eq!(file_digest(&back), digest, "pulled bytes differ");
}

fn kill9(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

/// Poll `cond` every 10 ms while `child` runs; true once it held. Kills the child and
/// panics after `limit`.
fn wait_while_running(child: &mut Child, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if start.elapsed() > limit {
            kill9(child);
            panic!("condition not reached within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- file:// ------------------------------------------------------------------------

#[test]
fn backup_push_sends_parts_while_archiving_and_leaves_an_identical_verified_copy() {
    let env = Env::new();
    let remote = env.path("remote");
    let cfg = local_part(&env, 48, 1) + &file_remote("nas", &remote, "");
    std::fs::write(env.config(), cfg).unwrap();

    let mut child = spawn(&env, &["backup", "--push"]);
    // Parts are on the remote while the archive is still a `.partial` file.
    let overlapped = wait_while_running(&mut child, Duration::from_secs(120), || {
        writing(&env) && part_staged(&remote)
    });
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "backup --push: {}", text(&o));
    assert!(
        overlapped,
        "no part reached the remote while the archive was written: {}",
        text(&o)
    );
    let id = stdout(&o).trim().to_string();
    let file = archive_name(&id);
    assert!(
        stderr(&o).contains(&format!("nas: uploaded {file}"))
            && stderr(&o).contains("while it was written"),
        "{}",
        text(&o)
    );

    // Byte-identical, with the same manifest as the local one; nothing left over.
    let local = find_local(&env, &file).unwrap();
    let digest = file_digest(&local);
    assert_eq!(file_digest(&remote.join(&file)), digest);
    let manifest = format!("{file}.manifest.json");
    assert_eq!(
        std::fs::read(remote.join(&manifest)).unwrap(),
        std::fs::read(local.with_file_name(&manifest)).unwrap()
    );
    assert_eq!(remote_names(&remote), [file.clone(), manifest]);
    assert_empty(&remote_staging(&remote));
    assert_empty(&journals(&env));

    // A push afterwards has nothing to do; verify passes; pull brings the bytes back.
    let o = run(&env, &["push"]);
    assert!(
        o.status.success() && stdout(&o).contains("uploaded 0"),
        "{}",
        text(&o)
    );
    let o = run(&env, &["verify", "--remote", "nas"]);
    assert_eq!(o.status.code(), Some(0), "verify: {}", text(&o));
    pull_back_identical(&env, "nas", &file, &digest);
}

#[test]
fn a_remote_that_fails_exits_3_and_the_others_complete() {
    let env = Env::new();
    let remote = env.path("remote");
    std::fs::write(env.path("not-a-folder"), "x").unwrap();
    let cfg = local_part(&env, 12, 0)
        + &file_remote("nas", &remote, "")
        + &file_remote("broken", &env.path("not-a-folder/remote"), "");
    std::fs::write(env.config(), cfg).unwrap();

    let o = run(&env, &["backup", "--push"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let id = stdout(&o).trim().to_string();
    let file = archive_name(&id);
    assert!(stderr(&o).contains("broken: FAILED"), "{}", text(&o));
    assert!(stderr(&o).contains("nas: uploaded 1"), "{}", text(&o));
    let digest = file_digest(&find_local(&env, &file).unwrap());
    assert_eq!(file_digest(&remote.join(&file)), digest);
    assert!(remote.join(format!("{file}.manifest.json")).exists());
    assert!(!env.path("not-a-folder/remote").exists());
    let o = run(&env, &["verify", "--remote", "nas"]);
    assert_eq!(o.status.code(), Some(0), "verify: {}", text(&o));
}

#[test]
fn a_backup_that_fails_half_way_aborts_every_upload_and_leaves_no_manifest() {
    let env = Env::new();
    let remote = env.path("remote");
    // /proc/version says it is empty and then has bytes: "grew while being read", which
    // fails the backup of a `strict` source after the 48 MiB source before it was
    // archived (and uploaded).
    let cfg = local_part(&env, 48, 1)
        + "\n[[sources]]\nname = \"kernel\"\nkind = \"configs\"\npath = \"/proc/version\"\nstrict = true\n"
        + &file_remote("nas", &remote, "");
    std::fs::write(env.config(), cfg).unwrap();

    let o = run(&env, &["-v", "backup", "--push"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(err.contains("grew while being read"), "{}", text(&o));
    // The upload had started (parts were on their way), and it was aborted.
    assert!(
        err.contains("nas: aborted the unfinished upload"),
        "{}",
        text(&o)
    );
    assert_empty(&remote_names(&remote));
    assert_empty(&remote_staging(&remote));
    assert_empty(&local_archives(&env));
    assert!(!any_partial(&env), "{:?}", names_in(&env.backups()));
    assert_empty(&journals(&env));
}

#[test]
fn kill_9_while_archiving_leaves_no_manifest_and_cleanup_aborts_the_upload() {
    let env = Env::new();
    let remote = env.path("remote");
    let cfg = local_part(&env, 64, 1) + &file_remote("nas", &remote, "");
    std::fs::write(env.config(), cfg).unwrap();

    let mut child = spawn(&env, &["backup", "--push"]);
    let caught = wait_while_running(&mut child, Duration::from_secs(120), || {
        writing(&env) && part_staged(&remote)
    });
    assert!(caught, "the run ended before a part was uploaded");
    kill9(&mut child);

    // Nothing complete anywhere: no manifest, no archive under its final name.
    assert_empty(&remote_names(&remote));
    assert_empty(&local_archives(&env));
    assert_eq!(
        journals(&env).len(),
        1,
        "the unfinished upload is journaled"
    );

    // `push --cleanup` aborts that upload (its archive never became complete).
    let o = run(&env, &["push", "--cleanup"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains("abort the unfinished upload"),
        "{}",
        text(&o)
    );
    assert_empty(&remote_staging(&remote));
    assert!(journals(&env).is_empty());

    // The next run starts over cleanly.
    let (id, _) = backup_push(&env);
    let file = archive_name(&id);
    assert_eq!(
        remote_names(&remote),
        [file.clone(), format!("{file}.manifest.json")]
    );
    assert!(!any_partial(&env), "the killed run's .partial is gone");
}

#[test]
fn kill_9_after_the_archive_is_finished_is_completed_by_the_next_push() {
    let env = Env::new();
    let remote = env.path("remote");
    // A slow remote: the archive is finished long before its upload.
    let cfg = local_part(&env, 40, 0) + &file_remote("nas", &remote, "bwlimit = \"4MiB\"");
    std::fs::write(env.config(), cfg).unwrap();

    let mut child = spawn(&env, &["backup", "--push"]);
    let mut file = String::new();
    let caught = wait_while_running(&mut child, Duration::from_secs(120), || {
        // The local manifest is written, and the journal already names the archive's hash.
        let Some(m) = files_under(&env.backups())
            .into_iter()
            .find(|p| p.to_string_lossy().ends_with(".tar.gz.manifest.json"))
        else {
            return false;
        };
        let Ok(text) = std::fs::read_to_string(&m) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        let sha = v["sha256"].as_str().unwrap_or_default().to_string();
        file = v["file"].as_str().unwrap_or_default().to_string();
        journals(&env)
            .iter()
            .any(|j| std::fs::read_to_string(j).is_ok_and(|t| t.contains(&sha)))
    });
    assert!(caught, "the upload finished before the test could kill it");
    kill9(&mut child);
    assert!(
        !remote.join(&file).exists() && !remote.join(format!("{file}.manifest.json")).exists(),
        "{:?}",
        remote_names(&remote)
    );

    // A plain push resumes the journaled upload and completes it.
    let o = run(&env, &["push", "--bwlimit", "off"]);
    assert_eq!(o.status.code(), Some(0), "push: {}", text(&o));
    assert!(stderr(&o).contains("resuming upload"), "{}", text(&o));
    let digest = file_digest(&find_local(&env, &file).unwrap());
    assert_eq!(file_digest(&remote.join(&file)), digest);
    assert!(remote.join(format!("{file}.manifest.json")).exists());
    assert!(remote_staging(&remote).is_empty());
    assert!(journals(&env).is_empty());
    let o = run(&env, &["verify", "--remote", "nas"]);
    assert_eq!(o.status.code(), Some(0), "verify: {}", text(&o));
}

#[test]
fn hook_streams_by_default_and_stream_upload_false_backs_up_first() {
    for streaming in [true, false] {
        let env = Env::new();
        let remote = env.path("remote");
        let hook = if streaming {
            ""
        } else {
            "\n[hook]\nstream_upload = false\n"
        };
        let cfg = local_part(&env, 12, 0) + &file_remote("nas", &remote, "") + hook;
        std::fs::write(env.config(), cfg).unwrap();
        let o = run(&env, &["-v", "hook", "--json"]);
        assert_eq!(o.status.code(), Some(0), "hook: {}", text(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let file = report["backup"]["archive"]["file"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            report["remotes"][0]["uploaded"][0],
            file.as_str(),
            "{report:#}"
        );
        assert_eq!(report["remotes"][0]["already_there"], 0, "{report:#}");
        assert_eq!(
            stderr(&o).contains("uploaded while it was written and verified"),
            streaming,
            "uploaded while archiving only when streaming: {}",
            text(&o)
        );
        let digest = file_digest(&find_local(&env, &file).unwrap());
        assert_eq!(file_digest(&remote.join(&file)), digest);
        assert!(remote.join(format!("{file}.manifest.json")).exists());
    }
}

#[test]
fn backup_push_without_remotes_is_a_config_error() {
    let env = Env::new();
    std::fs::write(env.config(), local_part(&env, 0, 0)).unwrap();
    let o = run(&env, &["backup", "--push"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("no [[remotes]]"), "{}", text(&o));
    assert!(local_archives(&env).is_empty());
}

// ---- S3 (LocalStack) ----------------------------------------------------------------

#[test]
fn backup_push_to_s3_and_a_folder_gives_identical_verified_copies() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("stream");
    let env = Env::new();
    let remote = env.path("remote");
    let cfg = local_part(&env, 30, 0)
        + &s3_remote("s3", &ls.endpoint, &bucket)
        + &file_remote("nas", &remote, "");
    std::fs::write(env.config(), cfg).unwrap();

    let (id, o) = backup_push(&env);
    let file = archive_name(&id);
    assert!(
        stderr(&o).contains(&format!("s3: uploaded {file}")),
        "{}",
        text(&o)
    );
    let mut keys = ls.keys(&bucket);
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{PREFIX}/{file}"),
            format!("{PREFIX}/{file}.manifest.json")
        ]
    );
    assert_empty(&ls.uploads(&bucket));
    let digest = file_digest(&find_local(&env, &file).unwrap());
    assert_eq!(file_digest(&remote.join(&file)), digest);
    for r in ["s3", "nas"] {
        let o = run(&env, &["verify", "--remote", r, "--deep"]);
        assert_eq!(o.status.code(), Some(0), "verify {r}: {}", text(&o));
    }
    pull_back_identical(&env, "s3", &file, &digest);
}

#[test]
fn s3_refusing_a_part_exits_3_aborts_its_upload_and_the_next_push_completes_it() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("stream-403");
    let proxy = proxy::Proxy::start(ls.port);
    let env = Env::new();
    let remote = env.path("remote");
    let cfg = local_part(&env, 30, 0)
        + &s3_remote("s3", &proxy.endpoint(), &bucket)
        + &file_remote("nas", &remote, "");
    std::fs::write(env.config(), cfg).unwrap();

    // Part 2 is refused: the remote fails in the middle of the stream.
    let denied = proxy::s3_error(403, "Forbidden", "AccessDenied", "Access Denied", &[]);
    proxy.respond_n(|r| r.part_number() == Some(2), 1000, &denied);
    let o = run(&env, &["backup", "--push"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let id = stdout(&o).trim().to_string();
    let file = archive_name(&id);
    assert!(stderr(&o).contains("s3: FAILED"), "{}", text(&o));
    assert!(
        proxy.seen().iter().any(|r| r.part_number() == Some(1)),
        "part 1 was on its way when part 2 was refused: the remote failed mid-stream"
    );
    // Nothing on S3: no object, no manifest, no upload in progress, no journal.
    assert_empty(&ls.keys(&bucket));
    assert_empty(&ls.uploads(&bucket));
    assert_empty(&journals(&env));
    // The folder remote completed.
    let digest = file_digest(&find_local(&env, &file).unwrap());
    assert_eq!(file_digest(&remote.join(&file)), digest);
    assert!(remote.join(format!("{file}.manifest.json")).exists());

    // Left for the next push, which uploads it.
    proxy.reset();
    let o = run(&env, &["push"]);
    assert_eq!(o.status.code(), Some(0), "push: {}", text(&o));
    assert_eq!(ls.keys(&bucket).len(), 2, "{:?}", ls.keys(&bucket));
    let o = run(&env, &["verify", "--remote", "s3"]);
    assert_eq!(o.status.code(), Some(0), "verify: {}", text(&o));
    pull_back_identical(&env, "s3", &file, &digest);
}

#[test]
fn kill_9_while_streaming_to_s3_leaves_no_object_and_cleanup_aborts_the_upload() {
    let ls = localstack::shared();
    // The kill must land while the archive is still being written and after a part was
    // acknowledged: on a loaded machine the archive may be finished first, so a run that
    // ends too early is tried again with more data (a bigger window), up to three times.
    let mut attempt = None;
    for mib in [64, 160, 400] {
        let bucket = ls.new_bucket("stream-kill");
        let env = Env::new();
        let cfg = local_part(&env, mib, 1) + &s3_remote("s3", &ls.endpoint, &bucket);
        std::fs::write(env.config(), cfg).unwrap();
        let mut child = spawn(&env, &["backup", "--push"]);
        let caught = wait_while_running(&mut child, Duration::from_secs(120), || {
            // A part has been journaled (sent and acknowledged).
            writing(&env)
                && journals(&env)
                    .iter()
                    .any(|j| std::fs::read_to_string(j).is_ok_and(|t| t.contains("\"number\"")))
        });
        if caught {
            kill9(&mut child);
            attempt = Some((bucket, env));
            break;
        }
        let _ = child.wait();
    }
    let (bucket, env) = attempt.expect("every run ended before a part was uploaded");
    assert_empty(&ls.keys(&bucket));
    assert_eq!(
        ls.uploads(&bucket).len(),
        1,
        "the unfinished upload is on S3"
    );
    assert_empty(&local_archives(&env));

    let o = run(&env, &["push", "--cleanup"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_empty(&ls.uploads(&bucket));
    assert!(ls.keys(&bucket).is_empty());
}

// ---- SFTP ---------------------------------------------------------------------------

#[test]
fn backup_push_to_sftp_gives_an_identical_verified_copy() {
    let sshd = sshd::Sshd::start();
    let dir = sshd.dir.path().join("srv/backups/pronto");
    let env = Env::new();
    let cfg = local_part(&env, 20, 0)
        + &sftp_remote(
            "offsite",
            &sshd.url(&dir),
            &sshd.client_key,
            &sshd.known_hosts,
            "",
        );
    std::fs::write(env.config(), cfg).unwrap();

    let (id, o) = backup_push(&env);
    let file = archive_name(&id);
    assert!(
        stderr(&o).contains(&format!("offsite: uploaded {file}")),
        "{}",
        text(&o)
    );
    let digest = file_digest(&find_local(&env, &file).unwrap());
    assert_eq!(file_digest(&dir.join(&file)), digest);
    assert!(dir.join(format!("{file}.manifest.json")).exists());
    assert!(
        !names_in(&dir).iter().any(|n| n.ends_with(".partial")),
        "{:?}",
        names_in(&dir)
    );
    let o = run(&env, &["verify", "--remote", "offsite"]);
    assert_eq!(o.status.code(), Some(0), "verify: {}", text(&o));
    pull_back_identical(&env, "offsite", &file, &digest);
}
