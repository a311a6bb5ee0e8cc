//! `push --cleanup` deletes only what this host wrote (issue 15): on a file:// remote it
//! never removes a foreign `.x.tmp-*` file, nor one named like our archives that no push
//! of this host recorded starting; on S3 (LocalStack, started by the shared support code,
//! a bucket per test) it never aborts another key's, another host namespace's or another
//! program's multipart upload in progress. What is provably ours (our archive name, an
//! intent recorded by a push of this host that is gone) is still cleaned up.

mod support;

#[path = "../backends/tests/support/localstack.rs"]
mod localstack;

use std::path::Path;

use support::remotes::{s3_remote, Keys, STATIC_SITE};
use support::{snapshot, stdout, text, Env};

const KEYS: Keys = Keys {
    id: "AKIAPRONTOCLEANUP042",
    secret: "cleanup-secret-must-never-be-printed-0123",
};

/// A pid that no process has (a child that already exited).
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// What a push of this host records before it starts uploading `file` to `remote`
/// (`<backup folder>/.journal/<remote>/<file>.intent`), as left by a killed push.
fn plant_intent(env: &Env, remote: &str, file: &str) {
    let dir = env.backups().join(".journal").join(remote);
    std::fs::create_dir_all(&dir).unwrap();
    let intent = serde_json::json!({"key": file, "started_unix": 1, "pid": dead_pid()});
    std::fs::write(
        dir.join(format!("{file}.intent")),
        serde_json::to_vec(&intent).unwrap(),
    )
    .unwrap();
}

fn write(p: &Path, body: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

#[test]
fn cleanup_on_a_folder_remote_removes_only_our_own_leftovers() {
    let env = Env::new();
    write(&env.path("src/index.html"), "<h1>pronto</h1>\n");
    env.write_config("");
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup: {}", text(&o));
    let o = env.run(&["push"]);
    assert!(o.status.success(), "push: {}", text(&o));

    // Foreign files that look like write-in-progress temp files, at the top and below,
    // in another host's namespace, and one named like our archives that no push of
    // this host started.
    let remote = env.remote();
    let foreign = [
        ".x.tmp-abcdefghijkl",
        "notes/.todo.txt.tmp-abcdefghijkl",
        "other-host/.pronto-app-backup-20200101-000000.tar.gz.tmp-abcdefghijkl",
        ".pronto-app-backup-20200102-000000.tar.gz.tmp-abcdefghijkl",
    ];
    for f in foreign {
        write(&remote.join(f), "not yours\n");
    }
    // Our own leftover: the temp file of a put that a killed push of this host left
    // behind (its intent recorded, its process gone).
    let ours = "pronto-app-backup-20200103-000000.tar.gz";
    let ours_tmp = remote.join(format!(".{ours}.tmp-mnopqrstuvwx"));
    write(&ours_tmp, "half an archive");
    plant_intent(&env, "nas", ours);
    let before: std::collections::BTreeMap<_, _> = snapshot(&remote)
        .into_iter()
        .filter(|(k, _)| !k.contains(ours))
        .collect();

    let o = env.run(&["push", "--cleanup"]);
    assert_eq!(o.status.code(), Some(0), "push --cleanup: {}", text(&o));
    assert_eq!(
        snapshot(&remote),
        before,
        "only our own leftover may go: {}",
        text(&o)
    );
    assert!(
        !ours_tmp.exists(),
        "our own leftover is removed: {}",
        text(&o)
    );
    assert!(
        stdout(&o).contains("leaving the unfinished upload of .pronto-app-backup-20200102")
            || stdout(&o).contains("leaving the unfinished upload of pronto-app-backup-20200102"),
        "the unproven one is reported: {}",
        text(&o)
    );
    assert!(
        !env.backups()
            .join(".journal/nas")
            .join(format!("{ours}.intent"))
            .exists(),
        "a spent intent is dropped"
    );
}

/// Start a multipart upload of `key` in `bucket` without signing (as another program
/// would, with its own credentials).
fn foreign_upload(ls: &localstack::LocalStack, bucket: &str, key: &str) {
    let (status, body) =
        localstack::http("POST", ls.port, &format!("/{bucket}/{key}?uploads"), &[])
            .unwrap_or_else(|e| panic!("create upload {key}: {e}"));
    assert_eq!(status, 200, "create upload {key}: HTTP {status}: {body}");
}

#[test]
fn cleanup_on_s3_never_aborts_another_hosts_or_programs_upload() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("cleanup-foreign");
    let env = Env::new();
    write(&env.path("src/index.html"), "<h1>pronto</h1>\n");
    let cfg = format!(
        "{STATIC_SITE}{}",
        s3_remote(
            "s3",
            &ls.endpoint,
            &format!("{bucket}/prod"),
            "host_id = \"host-1\""
        )
    );
    std::fs::write(env.config(), cfg).unwrap();
    let o = KEYS.run(&env, &["backup"]);
    assert!(o.status.success(), "backup: {}", text(&o));
    let o = KEYS.run(&env, &["push"]);
    assert!(o.status.success(), "push: {}", text(&o));

    let foreign = [
        // Another program, in our namespace.
        "prod/host-1/database.dump".to_string(),
        // Another host, under its own namespace, with our naming.
        "prod/host-2/pronto-app-backup-20200101-000000.tar.gz".to_string(),
        // Named like ours, in our namespace, but no push of this host started it.
        "prod/host-1/pronto-app-backup-20200102-000000.tar.gz".to_string(),
    ];
    for k in &foreign {
        foreign_upload(ls, &bucket, k);
    }
    // A provably ours one: the intent was recorded, the push died before journaling.
    let ours = "pronto-app-backup-20200103-000000.tar.gz";
    foreign_upload(ls, &bucket, &format!("prod/host-1/{ours}"));
    plant_intent(&env, "s3", ours);

    let o = KEYS.run(&env, &["push", "--cleanup"]);
    assert_eq!(o.status.code(), Some(0), "push --cleanup: {}", text(&o));
    let mut left = ls.uploads(&bucket);
    left.sort();
    let mut want = foreign.to_vec();
    want.sort();
    assert_eq!(left, want, "{}", text(&o));
    assert!(
        stdout(&o).contains("leaving the unfinished upload of pronto-app-backup-20200102-000000"),
        "{}",
        text(&o)
    );
}

/// The race the kill test found: a push killed after S3 started an upload but before
/// its id reached the journal leaves an orphan; a later push then completes the archive
/// (another upload). Its intent must outlive that success, or `push --cleanup` can no
/// longer prove the orphan ours and it stays in progress (and billed) forever.
#[test]
fn an_upload_left_by_a_stopped_push_is_aborted_after_a_later_push_completes_the_archive() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("cleanup-after-success");
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    let cfg = format!(
        "{STATIC_SITE}{}",
        s3_remote("s3", &ls.endpoint, &bucket, "")
    );
    std::fs::write(env.config(), cfg).unwrap();
    support::fabricate(&env.backups(), "20260101-000000", "host-1");
    let file = "pronto-app-backup-20260101-000000.tar.gz";
    // What the killed push left: its intent, and an upload no journal names.
    plant_intent(&env, "s3", file);
    foreign_upload(ls, &bucket, file);

    let o = KEYS.run(&env, &["push"]);
    assert_eq!(o.status.code(), Some(0), "push: {}", text(&o));
    assert!(stdout(&o).contains("s3: uploaded 1"), "{}", text(&o));
    assert_eq!(
        ls.uploads(&bucket),
        vec![file.to_string()],
        "the orphan is still there"
    );

    let o = KEYS.run(&env, &["push", "--cleanup"]);
    assert_eq!(o.status.code(), Some(0), "push --cleanup: {}", text(&o));
    assert!(
        stdout(&o).contains(&format!(
            "s3: abort the unfinished upload of {file}: no journal knows it"
        )),
        "{}",
        text(&o)
    );
    assert_eq!(ls.uploads(&bucket), Vec::<String>::new(), "{}", text(&o));
    let intent = env
        .backups()
        .join(".journal/s3")
        .join(format!("{file}.intent"));
    assert!(!intent.exists(), "the spent intent is dropped");
    // The archive itself is untouched, complete and verified.
    let o = KEYS.run(&env, &["verify", "--remote", "s3", "--deep"]);
    assert_eq!(o.status.code(), Some(0), "verify: {}", text(&o));
}

/// A file:// `create_upload` killed after it made the staging folder but before its
/// `upload.json` got its final name leaves `.uploads/<id>/.upload.json.tmp-*`: the
/// key in that temp file proves it ours, and `push --cleanup` removes the folder.
#[test]
fn a_staging_folder_whose_creation_was_killed_is_cleaned_up() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    env.write_config("");
    support::fabricate(&env.backups(), "20260101-000000", "host-1");
    let file = "pronto-app-backup-20260101-000000.tar.gz";
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "push: {}", text(&o));

    let staging = env.remote().join(".uploads/abcdefghij0123456789");
    write(
        &staging.join(".upload.json.tmp-klmnopqrstuv"),
        &format!("{{\"key\": \"{file}\", \"created_unix\": 1}}"),
    );
    // Another upload whose creation was killed, of a key no push of this host started.
    let foreign = env.remote().join(".uploads/zyxwvutsrq9876543210");
    write(
        &foreign.join(".upload.json.tmp-klmnopqrstuv"),
        "{\"key\": \"pronto-app-backup-20200101-000000.tar.gz\", \"created_unix\": 1}",
    );
    plant_intent(&env, "nas", file);

    let o = env.run(&["push", "--cleanup"]);
    assert_eq!(o.status.code(), Some(0), "push --cleanup: {}", text(&o));
    assert!(!staging.exists(), "{}", text(&o));
    assert!(foreign.exists(), "not proven ours: {}", text(&o));
    assert!(
        stdout(&o).contains("leaving the unfinished upload of pronto-app-backup-20200101"),
        "{}",
        text(&o)
    );
}

/// Memory of remote pruning: an old archive that the remote's retention removed is not
/// uploaded again by every later push (only to be pruned again), and the local prune
/// may still drop it (it was off-site until the policy removed it there).
#[test]
fn an_archive_the_remote_retention_dropped_is_not_uploaded_again() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    env.write_config("\n[retention]\nlast = 2\nmax_delete_fraction = 1\n");
    let ids = ["20260101-000000", "20260102-000000", "20260103-000000"];
    for id in &ids[..2] {
        support::fabricate(&env.backups(), id, "host-1");
    }
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("nas: uploaded 2"), "{}", text(&o));

    // A newer archive: the push uploads it and its prune drops the oldest there.
    support::fabricate(&env.backups(), ids[2], "host-1");
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("nas: uploaded 1"), "{}", text(&o));
    assert!(stdout(&o).contains("pruned 1"), "{}", text(&o));
    let oldest = format!("pronto-app-backup-{}.tar.gz", ids[0]);
    assert!(!env.remote().join(&oldest).exists());

    // The next push sends nothing: the oldest would only be deleted again.
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("nas: uploaded 0"), "{}", text(&o));
    assert!(!env.remote().join(&oldest).exists());

    // The local prune keeps the two the policy keeps, both off-site.
    let o = env.run(&["prune", "--local"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        support::find_file(&env.backups(), &oldest).is_none(),
        "{}",
        text(&o)
    );
}

/// Self-recovery: a resumed upload whose parts on the remote were damaged (what a crash
/// of the server can leave) fails the archive's checksum at completion; the push starts
/// the upload over at once and succeeds, instead of failing on its journal forever.
#[test]
fn a_resumed_upload_with_damaged_parts_is_started_over_and_completes() {
    let (env, file, journal) = a_killed_multipart_push(3);

    // The server damages the part it holds (in the staging folder's parts file).
    let parts: Vec<_> = support::files_under(&env.remote().join(".uploads"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "parts"))
        .collect();
    assert!(!parts.is_empty(), "the killed push left its parts");
    for p in &parts {
        let mut b = std::fs::read(p).unwrap();
        b[100] ^= 0xff;
        std::fs::write(p, b).unwrap();
    }

    // Still rate-limited (a limit far above what is sent): a bwlimit'ed file:// remote
    // resumes the multipart upload; without a limit the push copies in one pass instead
    // (see `a_one_pass_push_clears_a_killed_multipart_upload`).
    let o = env.run(&["push", "--bwlimit", "4GiB"]);
    assert_eq!(o.status.code(), Some(0), "push: {}", text(&o));
    assert!(support::stderr(&o).contains("repaired"), "{}", text(&o));
    assert!(
        std::fs::read(env.remote().join(&file)).unwrap()
            == std::fs::read(support::find_file(&env.backups(), &file).unwrap()).unwrap(),
        "the remote copy is the archive"
    );
    assert!(!journal.exists());
}

/// A push killed in the middle of a multipart upload (rate-limited), then a plain push,
/// which copies a local archive to file:// in one pass: the archive arrives whole, and
/// the killed upload's staging folder and journal are gone (nothing left to resume or
/// to clean up by hand).
#[test]
fn a_one_pass_push_clears_a_killed_multipart_upload() {
    let (env, file, journal) = a_killed_multipart_push(4);
    assert!(journal.exists(), "the killed push left its journal");

    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "push: {}", text(&o));
    assert!(
        std::fs::read(env.remote().join(&file)).unwrap()
            == std::fs::read(support::find_file(&env.backups(), &file).unwrap()).unwrap(),
        "the remote copy is the archive"
    );
    assert!(
        !journal.exists(),
        "the journal of the killed upload is gone"
    );
    let staged = support::files_under(&env.remote().join(".uploads"));
    assert!(staged.is_empty(), "staging left on the remote: {staged:?}");
}

/// A workspace with one 40 MiB archive, and a push to `nas` slowed down by a rate limit
/// and killed once its journal records a part: a multipart upload left half done.
/// Returns the workspace, the archive's file name and its journal.
fn a_killed_multipart_push(seed: u64) -> (Env, String, std::path::PathBuf) {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    support::write_noise(&env.path("src/noise.bin"), 40 << 20, seed);
    env.write_config("");
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup: {}", text(&o));
    let id = stdout(&o).trim().to_string();
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let journal = env
        .backups()
        .join(".journal/nas")
        .join(format!("{file}.json"));

    let bin = assert_cmd::cargo::cargo_bin("pronto-offsite");
    let mut child = std::process::Command::new(&bin)
        .arg("--config")
        .arg(env.config())
        .args(["push", "--bwlimit", "4MiB"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read(&journal)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|j| j["parts"].as_array().map(|a| a.len()))
        .unwrap_or(0)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no journaled part within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    (env, file, journal)
}
