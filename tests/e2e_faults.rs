//! Faults injected between the real binary and real servers (issue 7, item 6): a small
//! HTTP/1.1 proxy (`backends/tests/support/proxy.rs`) sits between `pronto-offsite push`
//! and LocalStack and resets a connection in the middle of a part, answers 503 SlowDown
//! with `Retry-After`, or 403 AccessDenied; a remote whose port nobody listens on stands
//! for a server that is down; and `push` is killed with SIGKILL at random moments while it
//! works on a file://, an s3:// (LocalStack) and an sftp:// (private sshd) remote at once.
//!
//! Servers: LocalStack (one per test binary, a bucket per test) and sshd (one per test),
//! started by the test support code; a test whose server cannot start fails.

mod support;

#[path = "../backends/tests/support/localstack.rs"]
mod localstack;
#[path = "../backends/tests/support/proxy.rs"]
mod proxy;
#[path = "../backends/tests/support/sshd.rs"]
mod sshd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::remotes::{file_remote, s3_object_size, Keys};
use support::{file_digest, files_under, find_file, stderr, stdout, text, Env};

const KEYS: Keys = Keys {
    id: "AKIAPRONTOFAULTS0042",
    secret: "faults-secret-must-never-be-printed-0123456789",
};
const PREFIX: &str = "prod/host-1";

// ---- helpers ------------------------------------------------------------------------

/// The binary with only the AWS settings the test gives (keys in the environment).
fn bin(env: &Env) -> Command {
    KEYS.bin(env)
}

fn run(env: &Env, args: &[&str]) -> Output {
    KEYS.run(env, args)
}

/// `[local]` and one static_content source `src` holding `mib` MiB of noise.
fn local_part(env: &Env, mib: usize, seed: u64) -> String {
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/hello.txt"), "hello from the fault tests\n").unwrap();
    if mib > 0 {
        support::write_noise(&env.path("src/data.bin"), mib << 20, seed);
    }
    "[local]\ndir = \"backups\"\nlevel = 1\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n".to_string()
}

fn s3_remote(name: &str, endpoint: &str, bucket: &str, extra: &str) -> String {
    support::remotes::s3_remote(name, endpoint, &format!("{bucket}/{PREFIX}"), extra)
}

fn sftp_remote(name: &str, sshd: &sshd::Sshd, dir: &Path, extra: &str) -> String {
    let (key, known_hosts) = (&sshd.client_key, &sshd.known_hosts);
    support::remotes::sftp_remote(name, &sshd.url(dir), key, known_hosts, extra)
}

/// Make a backup; returns the archive's file name.
fn backup(env: &Env) -> String {
    let o = run(env, &["backup"]);
    assert!(o.status.success(), "backup: {}", text(&o));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    format!("pronto-app-backup-{id}.tar.gz")
}

/// Where the local copy of `file` is (the backup folder or a tier under it).
fn local_archive(env: &Env, file: &str) -> PathBuf {
    find_file(&env.backups(), file)
        .unwrap_or_else(|| panic!("{file} not found under {}", env.backups().display()))
}

/// A port on 127.0.0.1 that nothing listens on.
fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn is_part(r: &proxy::Seen) -> bool {
    r.part_number().is_some()
}

/// The archive on S3 is whole: its size, and `verify --remote NAME --deep` (which
/// downloads it and compares its SHA-256 with the manifest) passes.
fn assert_complete_on_s3(env: &Env, ls: &localstack::LocalStack, bucket: &str, file: &str) {
    let local = local_archive(env, file);
    let size = std::fs::metadata(&local).unwrap().len();
    assert_eq!(
        s3_object_size(ls.port, &format!("/{bucket}/{PREFIX}/{file}")),
        Some(size),
        "size of {file} on S3"
    );
    let keys = ls.keys(bucket);
    assert!(
        keys.contains(&format!("{PREFIX}/{file}.manifest.json")),
        "{keys:?}"
    );
    assert!(ls.uploads(bucket).is_empty(), "no upload left in progress");
    let o = run(env, &["verify", "--remote", "s3", "--deep"]);
    assert_eq!(o.status.code(), Some(0), "verify --deep: {}", text(&o));
}

// ---- 1. a connection reset in the middle of a part ------------------------------------

#[test]
fn a_connection_reset_in_the_middle_of_a_part_is_retried_and_the_push_succeeds() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("faults-reset");
    let proxy = proxy::Proxy::start(ls.port);
    let env = Env::new();
    let cfg = local_part(&env, 20, 11) + &s3_remote("s3", &proxy.endpoint(), &bucket, "");
    std::fs::write(env.config(), cfg).unwrap();
    let file = backup(&env);

    // The first UploadPart loses its connection after 1 MiB of its body, once.
    proxy.reset_after(is_part, 1 << 20, 1);
    let o = run(&env, &["push"]);
    assert_eq!(o.status.code(), Some(0), "push: {}", text(&o));

    let seen = proxy.seen();
    let cut: Vec<_> = seen
        .iter()
        .filter(|r| r.injected == Some("reset"))
        .collect();
    assert_eq!(cut.len(), 1, "one request was cut: {seen:#?}");
    let n = cut[0].part_number().unwrap();
    let resent = seen
        .iter()
        .filter(|r| r.part_number() == Some(n) && r.forwarded && r.id > cut[0].id)
        .count();
    assert_eq!(resent, 1, "part {n} was sent again, once: {seen:#?}");
    let err = stderr(&o);
    assert!(
        err.contains(&format!("retrying part {n} of {file}")),
        "the retry is logged: {err}"
    );
    assert_complete_on_s3(&env, ls, &bucket, &file);
}

// ---- 2. three 503 SlowDown with Retry-After: 1 ----------------------------------------

#[test]
fn three_503_slowdowns_with_retry_after_are_waited_out_and_logged() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("faults-503");
    let proxy = proxy::Proxy::start(ls.port);
    let env = Env::new();
    // One part at a time, so the three 503s land on the same part, one after another.
    let cfg = local_part(&env, 12, 12)
        + &s3_remote("s3", &proxy.endpoint(), &bucket, "part_concurrency = 1");
    std::fs::write(env.config(), cfg).unwrap();
    let file = backup(&env);

    let slowdown = proxy::s3_error(
        503,
        "Slow Down",
        "SlowDown",
        "Please reduce your request rate.",
        &[("Retry-After", "1")],
    );
    proxy.respond_n(is_part, 3, &slowdown);
    let o = run(&env, &["push"]);
    assert_eq!(o.status.code(), Some(0), "push: {}", text(&o));

    // Part 1 arrived four times: three answered 503 by the proxy, then forwarded; no
    // other part went while part 1 waited (one part at a time: the retry is in place).
    let seen = proxy.seen();
    let part1: Vec<&proxy::Seen> = seen.iter().filter(|r| r.part_number() == Some(1)).collect();
    assert_eq!(part1.len(), 4, "{seen:#?}");
    assert!(part1[..3].iter().all(|r| r.injected == Some("respond")));
    assert!(part1[3].forwarded && part1[3].injected.is_none());
    assert!(
        !seen
            .iter()
            .any(|r| r.part_number().is_some_and(|n| n != 1) && r.id < part1[3].id),
        "another part went before part 1's retries were done: {seen:#?}"
    );

    // Each retry is logged at info (the default level) with its reason and the sleep it
    // took: the server's Retry-After (1.0s), not the backoff's own jittered delay. (How
    // long a sleep really lasts is the retry module's unit test, on tokio's paused clock.)
    let err = stderr(&o);
    let retries: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(&format!("retrying part 1 of {file}")))
        .collect();
    assert_eq!(retries.len(), 3, "three retries logged: {err}");
    for l in &retries {
        assert!(l.contains("INFO"), "logged at info: {l}");
        assert!(
            l.contains("SlowDown") && l.contains("503"),
            "with the reason: {l}"
        );
        assert!(l.contains("in 1.0s"), "after the server's Retry-After: {l}");
    }
    assert_complete_on_s3(&env, ls, &bucket, &file);
}

// ---- 3. 403 AccessDenied: fail fast, no retries ---------------------------------------

#[test]
fn access_denied_fails_fast_without_retries_and_says_so() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("faults-403");
    let proxy = proxy::Proxy::start(ls.port);
    let env = Env::new();
    // 12 MiB: two parts, sent at once.
    let cfg = local_part(&env, 12, 13) + &s3_remote("s3", &proxy.endpoint(), &bucket, "");
    std::fs::write(env.config(), cfg).unwrap();
    let file = backup(&env);

    // Listing works; every part is refused (a key that may list but not write).
    let denied = proxy::s3_error(403, "Forbidden", "AccessDenied", "Access Denied", &[]);
    proxy.respond_n(is_part, 1000, &denied);
    let o = run(&env, &["push"]);
    assert_eq!(o.status.code(), Some(1), "push: {}", text(&o));

    // Failing fast means no waiting: no request was tried twice, no retry was scheduled.
    let seen = proxy.seen();
    let mut per_part: BTreeMap<u32, usize> = BTreeMap::new();
    for r in seen.iter().filter(|r| is_part(r)) {
        *per_part.entry(r.part_number().unwrap()).or_default() += 1;
    }
    assert!(!per_part.is_empty(), "{seen:#?}");
    assert!(
        per_part.values().all(|&n| n == 1),
        "a part was retried after 403: {per_part:?}"
    );
    assert!(
        !stderr(&o).contains("retrying"),
        "nothing retried: {}",
        text(&o)
    );

    // The report names the remote, says access was denied, and what to check.
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("s3: FAILED:"))
        .unwrap_or_else(|| panic!("no failure line for s3: {}", text(&o)));
    assert!(line.to_lowercase().contains("access denied"), "{line}");
    assert!(line.contains(&file), "names the archive: {line}");
    assert!(line.contains(&format!("s3://{bucket}/{PREFIX}")), "{line}");
    assert!(line.contains("credentials"), "says what to check: {line}");
    assert!(
        !ls.keys(&bucket)
            .iter()
            .any(|k| k.ends_with(".manifest.json")),
        "no manifest after a failed upload"
    );
}

// ---- 4. one remote down, two up ------------------------------------------------------

#[test]
fn one_remote_down_the_other_two_complete_exit_3() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("faults-down");
    let sshd = sshd::Sshd::start();
    let sftp_dir = sshd.dir.path().join("srv/pronto");
    let env = Env::new();
    let down = format!("http://127.0.0.1:{}", unused_port());
    let cfg = local_part(&env, 12, 14)
        + &s3_remote("s3", &ls.endpoint, &bucket, "")
        + &s3_remote("down", &down, "down-bucket", "retry_budget = \"3s\"")
        + &sftp_remote("offsite", &sshd, &sftp_dir, "");
    std::fs::write(env.config(), cfg).unwrap();
    let file = backup(&env);
    let digest = file_digest(&local_archive(&env, &file));

    let o = run(&env, &["push"]);
    assert_eq!(o.status.code(), Some(3), "push: {}", text(&o));
    let out = stdout(&o);
    assert!(out.contains("s3: uploaded 1"), "{}", text(&o));
    assert!(out.contains("offsite: uploaded 1"), "{}", text(&o));
    let line = out
        .lines()
        .find(|l| l.starts_with("down: FAILED:"))
        .unwrap_or_else(|| panic!("no failure line for the remote that is down: {}", text(&o)));
    assert!(
        line.contains("cannot connect") || line.contains("onnection refused"),
        "the reason is named: {line}"
    );
    assert!(line.contains("down-bucket"), "names where: {line}");
    eprintln!("remote down: {line}");

    // Both others hold the archive, complete.
    assert_eq!(file_digest(&sftp_dir.join(&file)), digest);
    assert!(sftp_dir.join(format!("{file}.manifest.json")).exists());
    assert_complete_on_s3(&env, ls, &bucket, &file);
    // JSON names it too.
    let o = run(&env, &["push", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = v.to_string();
    assert!(
        s.contains("\"down\"") && s.contains("cannot connect"),
        "{s}"
    );
}

// ---- 5. kill -9 at ten random moments, three remote kinds ---------------------------

/// A remote's manifests, each checked against its archive: there is never a manifest
/// without its complete archive. `archive(file)` gives the archive's (size, sha256) as
/// stored, or None.
fn check_manifests(
    what: &str,
    manifests: Vec<(String, String)>,
    archive: impl Fn(&str) -> Option<(u64, Option<String>)>,
) -> usize {
    let mut n = 0;
    for (file, json) in manifests {
        let m: serde_json::Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("{what}: manifest of {file} unreadable ({e}): {json}"));
        let size = m["size"].as_u64().unwrap();
        let sha = m["sha256"].as_str().unwrap().to_string();
        let got = archive(&file);
        let Some((got_size, got_sha)) = got else {
            panic!("{what}: manifest of {file} without its archive");
        };
        assert_eq!(got_size, size, "{what}: manifest of a partial {file}");
        if let Some(h) = got_sha {
            assert_eq!(h, sha, "{what}: manifest of {file} over other bytes");
        }
        n += 1;
    }
    n
}

/// Manifests in a folder (file://, or the sftp server's folder seen from this machine).
fn dir_manifests(dir: &Path) -> Vec<(String, String)> {
    support::names_in(dir)
        .into_iter()
        .filter_map(|n| {
            let file = n.strip_suffix(".manifest.json")?.to_string();
            Some((file, std::fs::read_to_string(dir.join(&n)).unwrap()))
        })
        .collect()
}

fn dir_archive(dir: &Path, file: &str) -> Option<(u64, Option<String>)> {
    let p = dir.join(file);
    let size = std::fs::metadata(&p).ok()?.len();
    Some((size, Some(file_digest(&p))))
}

/// Leftovers of unfinished writes: file:// temp files and staging folders, sftp partials.
fn leftovers(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .filter(|p| p.contains(".uploads/") || p.contains(".tmp-") || p.ends_with(".partial"))
        .collect()
}

#[test]
fn kill_9_at_ten_random_moments_then_every_remote_ends_complete_and_clean() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("faults-kills");
    let sshd = sshd::Sshd::start();
    let sftp_dir = sshd.dir.path().join("srv/pronto");
    let env = Env::new();
    let nas = env.path("nas");
    // Remotes are not pruned: every archive must end up on every remote.
    let cfg = local_part(&env, 24, 21)
        + &file_remote("nas", &nas, "prune = false")
        + &s3_remote("s3", &ls.endpoint, &bucket, "prune = false")
        + &sftp_remote("offsite", &sshd, &sftp_dir, "prune = false");
    std::fs::write(env.config(), cfg).unwrap();
    // Archives of ~24 MiB (three parts each), each with other bytes: two now, and one
    // more before rounds 4 and 7 (a backup made while pushes keep being interrupted), so
    // that most kills land while there is work to do.
    let new_backup = |env: &Env, seed: u64| {
        support::write_noise(&env.path("src/data.bin"), 24 << 20, seed);
        backup(env)
    };
    let mut files = vec![backup(&env), new_backup(&env, 22)];

    let mut seed: u64 = std::env::var("PRONTO_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        })
        | 1;
    eprintln!("kill test seed: {seed} (PRONTO_FAULTS_SEED to repeat)");
    let s3_manifests = |bucket: &str| -> Vec<(String, String)> {
        ls.keys(bucket)
            .into_iter()
            .filter_map(|k| {
                let file = k
                    .strip_prefix(&format!("{PREFIX}/"))?
                    .strip_suffix(".manifest.json")?
                    .to_string();
                let (status, body) =
                    localstack::http("GET", ls.port, &format!("/{bucket}/{k}"), &[]).unwrap();
                assert_eq!(status, 200, "GET {k}: {body}");
                Some((file, body))
            })
            .collect()
    };
    let s3_archive = |file: &str| -> Option<(u64, Option<String>)> {
        // The size here; the hash by `verify --deep` at the end.
        s3_object_size(ls.port, &format!("/{bucket}/{PREFIX}/{file}")).map(|s| (s, None))
    };

    let mut log = Vec::new();
    for round in 0..10 {
        if round == 4 || round == 7 {
            files.push(new_backup(&env, 20 + round));
        }
        let delay = Duration::from_millis(50 + support::xorshift(&mut seed) % 1200);
        let mut push = bin(&env);
        push.arg("push");
        let finished = support::kill_after(push, delay);
        let counts = (
            check_manifests("nas", dir_manifests(&nas), |f| dir_archive(&nas, f)),
            check_manifests("s3", s3_manifests(&bucket), s3_archive),
            check_manifests("offsite", dir_manifests(&sftp_dir), |f| {
                dir_archive(&sftp_dir, f)
            }),
        );
        log.push(format!(
            "round {round}: killed after {delay:?}{}; manifests nas/s3/offsite: {counts:?}",
            if finished { " (had finished)" } else { "" }
        ));
    }
    eprintln!("{}", log.join("\n"));

    // A push to the end, then the cleanup.
    let o = run(&env, &["push"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "final push: {}\n{log:#?}",
        text(&o)
    );
    // Plus, for certain, one upload on each remote that no journal knows: what a push
    // killed between starting an upload and journaling its id leaves (the kills above
    // may or may not have hit that moment). That push had recorded its intent first:
    // what proves to the cleanup that the upload is ours.
    let orphan = &files[0];
    for remote in ["nas", "s3", "offsite"] {
        let dir = env.backups().join(".journal").join(remote);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{orphan}.intent")),
            format!("{{\"key\": \"{orphan}\", \"started_unix\": 1, \"pid\": 0}}"),
        )
        .unwrap();
    }
    let (status, body) = localstack::http(
        "POST",
        ls.port,
        &format!("/{bucket}/{PREFIX}/{orphan}?uploads"),
        &[],
    )
    .unwrap();
    assert_eq!(status, 200, "CreateMultipartUpload: {body}");
    let staging = nas.join(".uploads/0123456789abcdefabcd");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(
        staging.join("upload.json"),
        format!("{{\"key\": \"{orphan}\", \"created_unix\": 1}}"),
    )
    .unwrap();
    std::fs::write(staging.join("part-00001"), "x").unwrap();
    // A write killed before its rename, on file://.
    std::fs::write(
        nas.join(format!(".{orphan}.manifest.json.tmp-AbCd1234")),
        "{",
    )
    .unwrap();
    std::fs::write(
        sftp_dir.join(format!("{orphan}.0123456789abcdef.partial")),
        "x",
    )
    .unwrap();
    assert!(ls.uploads(&bucket).contains(&format!("{PREFIX}/{orphan}")));
    let o = run(&env, &["push", "--cleanup"]);
    assert_eq!(o.status.code(), Some(0), "push --cleanup: {}", text(&o));
    assert!(stdout(&o).contains("uploaded 0"), "{}", text(&o));
    for (remote, key) in [
        ("nas", orphan.clone()),
        ("nas", format!("{orphan}.manifest.json")),
        ("s3", orphan.clone()),
        ("offsite", orphan.clone()),
    ] {
        assert!(
            stdout(&o).contains(&format!(
                "{remote}: abort the unfinished upload of {key}: no journal knows it"
            )),
            "{}",
            text(&o)
        );
    }

    // Every remote holds every archive, complete and verified.
    assert_eq!(files.len(), 4);
    let locals: BTreeMap<String, (u64, String)> = files
        .iter()
        .map(|f| {
            let p = local_archive(&env, f);
            (
                f.clone(),
                (std::fs::metadata(&p).unwrap().len(), file_digest(&p)),
            )
        })
        .collect();

    for (file, (size, sha)) in &locals {
        for dir in [&nas, &sftp_dir] {
            assert_eq!(
                dir_archive(dir, file),
                Some((*size, Some(sha.clone()))),
                "{file} in {}",
                dir.display()
            );
            assert!(dir.join(format!("{file}.manifest.json")).exists());
        }
        assert_eq!(s3_archive(file).map(|x| x.0), Some(*size), "{file} on s3");
    }
    assert_eq!(s3_manifests(&bucket).len(), files.len());
    for remote in ["nas", "s3", "offsite"] {
        let o = run(&env, &["verify", "--remote", remote, "--deep"]);
        assert_eq!(o.status.code(), Some(0), "verify {remote}: {}", text(&o));
    }

    // Nothing unfinished is left anywhere.
    assert_eq!(
        ls.uploads(&bucket),
        Vec::<String>::new(),
        "S3 uploads in progress"
    );
    assert_eq!(leftovers(&nas), Vec::<String>::new(), "file:// leftovers");
    assert_eq!(leftovers(&sftp_dir), Vec::<String>::new(), "sftp leftovers");
    let journals: Vec<_> = files_under(&env.backups().join(".journal"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(journals.is_empty(), "journals left: {journals:?}");
}
