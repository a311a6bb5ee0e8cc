//! End to end through the binary with `s3://` remotes on LocalStack (started by
//! `backends/tests/support/localstack.rs`, one server for this test binary, a bucket per
//! test): backup → push → list → pull with credentials from the AWS chain (environment,
//! then a profile), keys in the config file (warned about), a push killed after N parts
//! that resumes sending only the missing parts (counted by a proxy), and no access key or
//! secret in any output, listing, manifest or journal.

mod support;

#[path = "../backends/tests/support/localstack.rs"]
mod localstack;
#[path = "../backends/tests/support/proxy.rs"]
mod proxy;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::remotes::{bin, s3_object_size, s3_remote, Keys, STATIC_SITE};
use support::{file_digest, files_under, find_file, text, Env};

const KEY_ID: &str = "AKIAPRONTOE2EKEY0042";
const SECRET: &str = "e2e-secret-must-never-be-printed-9876543210";
const KEYS: Keys = Keys {
    id: KEY_ID,
    secret: SECRET,
};

/// Incompressible bytes, so the archive is as big as the data.
fn random_file(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, support::noise(len, seed)).unwrap();
}

/// A workspace whose config has one s3:// remote named `s3` at `endpoint`.
fn s3_env(endpoint: &str, bucket: &str, extra: &str, data_mib: usize) -> Env {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("hello.txt"), "hello from s3 e2e\n").unwrap();
    std::fs::write(src.join("sub/notes.md"), "# notes\n").unwrap();
    if data_mib > 0 {
        random_file(&src.join("data.bin"), data_mib << 20, 7);
    }
    let remote = s3_remote("s3", endpoint, &format!("{bucket}/prod/host-1"), extra);
    std::fs::write(env.config(), format!("{STATIC_SITE}{remote}")).unwrap();
    env
}

fn with_env_keys(c: Command) -> Command {
    KEYS.give(c)
}

fn run(mut c: Command, args: &[&str]) -> Output {
    c.args(args).output().unwrap()
}

/// Every output of the tool is checked for the key and secret.
fn no_secrets(o: &Output, what: &str) {
    KEYS.assert_not_in(o, what);
}

fn backup(env: &Env) -> String {
    let o = run(bin(env), &["backup"]);
    assert!(o.status.success(), "backup: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Where the local copy of `file` is (the backup folder or one of its tiers).
fn find_archive(env: &Env, file: &str) -> PathBuf {
    find_file(&env.backups(), file)
        .unwrap_or_else(|| panic!("{file} not found under {}", env.backups().display()))
}

/// No file under `dir` but archives holds the key id or the secret.
fn no_secrets_in_tree(dir: &Path) {
    for e in files_under(dir) {
        if e.to_string_lossy().ends_with(".tar.gz") {
            continue;
        }
        let bytes = std::fs::read(&e).unwrap_or_default();
        let s = String::from_utf8_lossy(&bytes);
        assert!(
            !s.contains(KEY_ID) && !s.contains(SECRET),
            "secret in {}",
            e.display()
        );
    }
}

#[test]
fn push_list_pull_with_credentials_from_the_environment() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("e2e");
    // 20 MiB of incompressible data: a three-part multipart upload at 8 MiB parts.
    let env = s3_env(&ls.endpoint, &bucket, "", 20);
    let id = backup(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let archive = find_archive(&env, &file);
    let digest = file_digest(&archive);

    let o = run(with_env_keys(bin(&env)), &["push"]);
    no_secrets(&o, "push");
    assert!(o.status.success(), "push: {}", text(&o));
    let keys = ls.keys(&bucket);
    assert!(keys.contains(&format!("prod/host-1/{file}")), "{keys:?}");
    assert!(
        keys.contains(&format!("prod/host-1/{file}.manifest.json")),
        "{keys:?}"
    );
    assert!(ls.uploads(&bucket).is_empty(), "no upload left in progress");

    // The manifest on S3 carries the archive's sha256 and no secret.
    let (status, manifest) = localstack::http(
        "GET",
        ls.port,
        &format!("/{bucket}/prod/host-1/{file}.manifest.json"),
        &[],
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        manifest.contains(&digest),
        "manifest lacks the sha256: {manifest}"
    );
    assert!(!manifest.contains(KEY_ID) && !manifest.contains(SECRET));

    // A second push sends nothing.
    let o = run(with_env_keys(bin(&env)), &["push"]);
    no_secrets(&o, "second push");
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("uploaded 0"),
        "{}",
        text(&o)
    );

    for args in [&["list"][..], &["list", "--json"][..]] {
        let o = run(with_env_keys(bin(&env)), args);
        no_secrets(&o, "list");
        assert!(o.status.success(), "list: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&id),
            "{}",
            text(&o)
        );
    }

    // Lose the local copy; pull it back and extract it.
    std::fs::remove_file(&archive).unwrap();
    std::fs::remove_file(archive.with_file_name(format!("{file}.manifest.json"))).unwrap();
    let dest = env.path("restored");
    let o = run(
        with_env_keys(bin(&env)),
        &["pull", &id, "--to", dest.to_str().unwrap()],
    );
    no_secrets(&o, "pull");
    assert!(o.status.success(), "pull: {}", text(&o));
    assert_eq!(
        file_digest(&find_archive(&env, &file)),
        digest,
        "pulled archive differs"
    );
    let restored = dest.join(format!("pronto-app-backup-{id}/static_content/site"));
    assert_eq!(
        file_digest(&restored.join("data.bin")),
        file_digest(&env.path("src/data.bin"))
    );
    assert_eq!(
        std::fs::read_to_string(restored.join("hello.txt")).unwrap(),
        "hello from s3 e2e\n"
    );
    no_secrets_in_tree(&env.backups());

    // Without credentials anywhere, push fails fast with an access error that says where
    // credentials are looked for.
    let o = run(bin(&env), &["list"]);
    assert!(
        !o.status.success(),
        "list without credentials succeeded: {}",
        text(&o)
    );
    let t = text(&o);
    assert!(t.contains("credentials"), "{t}");
}

#[test]
fn profile_credentials_and_keys_in_the_config_file() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("e2e-profile");

    // A named profile from a shared credentials file.
    let env = s3_env(&ls.endpoint, &bucket, "profile = \"pronto-e2e\"", 0);
    std::fs::write(
        env.path("aws-credentials"),
        format!("[pronto-e2e]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    backup(&env);
    let mut c = bin(&env);
    c.env("AWS_SHARED_CREDENTIALS_FILE", env.path("aws-credentials"));
    let o = run(c, &["push"]);
    no_secrets(&o, "push with a profile");
    assert!(o.status.success(), "push with a profile: {}", text(&o));
    assert_eq!(ls.keys(&bucket).len(), 2, "{:?}", ls.keys(&bucket));

    // Keys in the config file work, with a warning that never shows them.
    let bucket2 = ls.new_bucket("e2e-keys");
    let extra = format!(
        "access_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\nchecksum = \"md5\""
    );
    let env2 = s3_env(&ls.endpoint, &bucket2, &extra, 0);
    backup(&env2);
    let o = run(bin(&env2), &["push"]);
    no_secrets(&o, "push with keys in the config");
    assert!(
        o.status.success(),
        "push with keys in the config: {}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("discouraged"),
        "{}",
        text(&o)
    );
    let o = run(bin(&env2), &["list", "--json"]);
    no_secrets(&o, "list with keys in the config");
    assert!(o.status.success());

    // A plain http endpoint without allow_http is a config error (exit 2) naming the key.
    let env3 = Env::new();
    std::fs::write(
        env3.config(),
        format!("[local]\ndir = \"b\"\n\n[[remotes]]\nname = \"s3\"\nurl = \"s3://{bucket}/p\"\nendpoint = \"{}\"\n", ls.endpoint),
    )
    .unwrap();
    let o = run(bin(&env3), &["list"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("endpoint") && text(&o).contains("allow_http"),
        "{}",
        text(&o)
    );
}

/// Kill `push` once two parts went through (the proxy holds the rest), then push again:
/// the upload resumes with the journaled id and sends exactly the parts the journal lacks.
#[test]
fn killed_push_resumes_sending_only_the_missing_parts() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("e2e-resume");
    let proxy = proxy::Proxy::start(ls.port);
    // ~40 MiB incompressible: six parts of 8 MiB (the last one short).
    let env = s3_env(&proxy.endpoint(), &bucket, "", 40);
    let id = backup(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let size = std::fs::metadata(find_archive(&env, &file)).unwrap().len();
    let part = 8u64 << 20;
    let n_parts = size.div_ceil(part) as u32;
    assert!(
        n_parts >= 5,
        "archive of {size} bytes gives only {n_parts} parts"
    );

    // Run 1: two parts through, the others held; kill once the journal has two.
    proxy.hold_after(2, |r| r.part_number().is_some());
    let mut child = with_env_keys(bin(&env))
        .arg("push")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = env
        .backups()
        .join(".journal/s3")
        .join(format!("{file}.json"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let journaled: Vec<(u32, u64)> = loop {
        if let Ok(bytes) = std::fs::read(&journal) {
            if let Ok(j) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                let parts: Vec<(u32, u64)> = j["parts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p["number"].as_u64().unwrap() as u32,
                            p["size"].as_u64().unwrap(),
                        )
                    })
                    .collect();
                if parts.len() >= 2 {
                    break parts;
                }
            }
        }
        assert!(Instant::now() < deadline, "the journal never got two parts");
        assert!(
            child.try_wait().unwrap().is_none(),
            "push ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let run1 = proxy.seen();
    assert_eq!(journaled.len(), 2, "journal: {journaled:?}");
    let uploads_started = |seen: &[proxy::Seen]| {
        seen.iter()
            .filter(|r| r.method == "POST" && r.target.contains("uploads"))
            .count()
    };
    assert_eq!(uploads_started(&run1), 1);
    // Nothing is visible: no archive, no manifest.
    let keys = ls.keys(&bucket);
    assert!(keys.is_empty(), "a killed push left objects: {keys:?}");
    let journal_text = std::fs::read_to_string(&journal).unwrap();
    assert!(!journal_text.contains(KEY_ID) && !journal_text.contains(SECRET));

    // Run 2, unhindered.
    proxy.reset();
    proxy.clear();
    let o = run(with_env_keys(bin(&env)), &["push"]);
    no_secrets(&o, "resumed push");
    assert!(o.status.success(), "resumed push: {}", text(&o));
    let run2 = proxy.seen();
    assert_eq!(
        uploads_started(&run2),
        0,
        "the resumed push started a new upload"
    );
    let sent: Vec<(u32, u64)> = run2
        .iter()
        .filter_map(|r| r.part_number().map(|n| (n, r.len)))
        .collect();
    let sent_numbers: BTreeSet<u32> = sent.iter().map(|(n, _)| *n).collect();
    let done: BTreeSet<u32> = journaled.iter().map(|(n, _)| *n).collect();
    let missing: BTreeSet<u32> = (1..=n_parts).filter(|n| !done.contains(n)).collect();
    assert_eq!(
        sent.len(),
        missing.len(),
        "each missing part sent once: {sent:?}"
    );
    assert_eq!(
        sent_numbers, missing,
        "the resumed push sent other parts than the missing ones"
    );
    let bytes_sent: u64 = sent.iter().map(|(_, l)| l).sum();
    let bytes_journaled: u64 = journaled.iter().map(|(_, l)| l).sum();
    assert_eq!(
        bytes_sent + bytes_journaled,
        size,
        "part bytes add up to the archive"
    );
    assert!(
        !journal.exists(),
        "the journal is removed after the upload completes"
    );
    assert!(ls.uploads(&bucket).is_empty());

    // The object is whole: pull it back and compare.
    let archive = find_archive(&env, &file);
    let digest = file_digest(&archive);
    std::fs::remove_file(&archive).unwrap();
    std::fs::remove_file(archive.with_file_name(format!("{file}.manifest.json"))).unwrap();
    let o = run(with_env_keys(bin(&env)), &["pull", &id]);
    assert!(o.status.success(), "pull: {}", text(&o));
    assert_eq!(file_digest(&find_archive(&env, &file)), digest);
}

/// examples/s3.toml and examples/gcs.toml parse, with the options they show.
#[test]
fn s3_and_gcs_examples_parse() {
    use pronto_offsite::config::{load, RemoteLocation};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = load(&root.join("examples/s3.toml")).expect("examples/s3.toml");
    let kinds: Vec<String> = cfg
        .remotes
        .iter()
        .map(|r| match &r.location {
            RemoteLocation::S3(c) => format!("{} {:?} {}", c.url(), c.endpoint, c.checksum),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "s3://pronto-backups/prod None sha256".to_string(),
            "s3://pronto/host-1 Some(\"https://minio.example.com:9000\") md5".to_string(),
        ]
    );
    let cfg = load(&root.join("examples/gcs.toml")).expect("examples/gcs.toml");
    match &cfg.remotes[0].location {
        RemoteLocation::Gcs(c) => {
            assert_eq!(c.url(), "gs://pronto-backups/prod");
            assert_eq!(c.storage_class.as_deref(), Some("NEARLINE"));
        }
        other => panic!("{other:?}"),
    }
    // gs:// takes `endpoint` (an emulator); s3-only keys are still refused there.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let remote = "[[remotes]]\nname = \"gcs\"\nurl = \"gs://bkt/p\"\nendpoint = \"http://127.0.0.1:4443\"\nallow_http = true\n";
    let base = format!("[local]\ndir = \"{}\"\n", dir.path().display());
    std::fs::write(&file, format!("{base}{remote}")).unwrap();
    match &load(&file).expect("gs:// with endpoint").remotes[0].location {
        RemoteLocation::Gcs(c) => assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:4443")),
        other => panic!("{other:?}"),
    }
    std::fs::write(&file, format!("{base}{remote}region = \"x\"\n")).unwrap();
    let e = format!("{:#}", load(&file).unwrap_err());
    assert!(e.contains("s3:// remotes only"), "{e}");
}

/// Kill `push` at ten random moments; after each kill no manifest exists for an archive
/// that is not complete on the remote; then one more push finishes the job.
#[test]
fn random_kills_never_leave_a_manifest_for_an_incomplete_archive() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("e2e-kills");
    // ~24 MiB: three parts of 8 MiB.
    let env = s3_env(&ls.endpoint, &bucket, "", 24);
    let id = backup(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let archive = find_archive(&env, &file);
    let size = std::fs::metadata(&archive).unwrap().len();
    let object = format!("/{bucket}/prod/host-1/{file}");
    let manifest = format!("prod/host-1/{file}.manifest.json");

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut delays = Vec::new();
    for round in 0..10 {
        let delay = Duration::from_millis(support::xorshift(&mut seed) % 1500);
        delays.push(delay);
        let mut push = with_env_keys(bin(&env));
        push.arg("push");
        let finished = support::kill_after(push, delay);
        if ls.keys(&bucket).contains(&manifest) {
            // A manifest is there only for the complete archive.
            let got = s3_object_size(ls.port, &object);
            assert_eq!(
                got,
                Some(size),
                "round {round} ({delays:?}): manifest for a partial archive"
            );
            if finished {
                break;
            }
        }
    }
    let o = run(with_env_keys(bin(&env)), &["push"]);
    assert!(
        o.status.success(),
        "final push after kills {delays:?}: {}",
        text(&o)
    );
    assert!(ls.keys(&bucket).contains(&manifest));
    assert_eq!(s3_object_size(ls.port, &object), Some(size));
}

/// Verification proves the bytes (issue 15, Deliver 7): after an upload, push checks
/// the checksum the store computed from the bytes it holds — a whole-object SHA-256 for
/// a single PUT, the composite of the parts' SHA-256s (rebuilt from the local archive)
/// for a multipart upload — not the hash it recorded beside them.
#[test]
fn push_verifies_by_the_checksum_the_store_computed() {
    let ls = localstack::shared();
    for (bucket, mib) in [
        (ls.new_bucket("sum-one"), 0),
        (ls.new_bucket("sum-multi"), 20),
    ] {
        let env = s3_env(&ls.endpoint, &bucket, "", mib);
        backup(&env);
        let o = run(with_env_keys(bin(&env)), &["-v", "push"]);
        assert!(o.status.success(), "push: {}", text(&o));
        let how = if mib == 0 {
            "verified by the sha256 the store computed"
        } else {
            "verified by the composite sha256 of its parts the store computed"
        };
        assert!(text(&o).contains(how), "{}", text(&o));
    }
}

/// `verify` proves the remote bytes the same way (issue 15): by the checksum the store
/// computed from them, not by the hash recorded beside the object. An object replaced
/// behind our back by other bytes of the same size, with the recorded hash forged to the
/// manifest's, passes a check of the recorded hash; `verify` finds it (exit 4) without
/// downloading it.
#[test]
fn verify_trusts_the_stores_checksum_not_the_recorded_hash() {
    use sha2::Digest;
    let ls = localstack::shared();
    let bucket = ls.new_bucket("verify-sum");
    let env = s3_env(&ls.endpoint, &bucket, "", 0);
    let id = backup(&env);
    let o = run(with_env_keys(bin(&env)), &["push"]);
    assert!(o.status.success(), "push: {}", text(&o));
    let o = run(with_env_keys(bin(&env)), &["verify", "--remote", "s3"]);
    assert!(o.status.success(), "verify: {}", text(&o));
    assert!(
        text(&o).contains("the checksum the store computed from its bytes match the manifest"),
        "{}",
        text(&o)
    );

    // Other bytes of the same size under the archive's key: the store's checksum is
    // theirs, the recorded x-amz-meta-sha256 claims the archive's.
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let archive = find_archive(&env, &file);
    let real = std::fs::read(&archive).unwrap();
    let fake: Vec<u8> = real.iter().map(|b| b ^ 0x5a).collect();
    let fake_sum = sha2::Sha256::digest(&fake);
    let object = format!("/{bucket}/prod/host-1/{file}");
    let status = raw_put(
        ls.port,
        &object,
        &fake,
        &[
            ("x-amz-meta-sha256", &support::file_digest(&archive)),
            ("x-amz-checksum-sha256", &base64(&fake_sum)),
        ],
    );
    assert_eq!(status, 200, "the forged PUT");
    assert_eq!(s3_object_size(ls.port, &object), Some(real.len() as u64));

    let o = run(with_env_keys(bin(&env)), &["verify", "--remote", "s3"]);
    assert_eq!(o.status.code(), Some(4), "verify: {}", text(&o));
    assert!(
        text(&o).contains(&file) && text(&o).contains("the store computed sha256"),
        "{}",
        text(&o)
    );
}

/// A raw, unsigned PUT with extra headers (LocalStack accepts unsigned requests).
fn raw_put(port: u16, path: &str, body: &[u8], headers: &[(&str, &str)]) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// gs:// proves an upload by the CRC32C GCS computed from the bytes it holds
/// (`x-goog-hash` on a HEAD of the XML API), rebuilt from the local archive — and a store
/// that sends no such header is read back, never trusted by the sha256 recorded in its
/// metadata (issue 15, Deliver 7). LocalStack stands in for the GCS XML API and sends no
/// `x-goog-hash`; a proxy in front of it answers the archive's HEADs as GCS would, with the
/// right CRC32C, then with a wrong one.
#[test]
fn gs_push_proves_the_upload_by_crc32c_or_reads_it_back() {
    let ls = localstack::shared();
    let proxy = proxy::Proxy::start(ls.port);
    let gs_env = |bucket: &str| {
        let env = s3_env(&ls.endpoint, bucket, "", 0);
        let remote = format!(
            "\n[[remotes]]\nname = \"gcs\"\nurl = \"gs://{bucket}/prod\"\nendpoint = \"{}\"\nallow_http = true\n",
            proxy.endpoint()
        );
        std::fs::write(env.config(), format!("{STATIC_SITE}{remote}")).unwrap();
        env
    };
    // GCS's answer to a HEAD of `file`: its size, and `crc` as x-goog-hash.
    let answer_heads = |file: &str, size: u64, crc: u32| {
        let b64 = base64(&crc.to_be_bytes());
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nETag: \"pronto-proxy\"\r\n\
             Last-Modified: Sun, 06 Dec 2026 05:00:00 GMT\r\nx-goog-hash: crc32c={b64}\r\n\
             x-goog-hash: md5=AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n"
        );
        let file = file.to_string();
        proxy.respond_n(
            move |r| r.method == "HEAD" && unescape(&r.target).ends_with(&file),
            1000,
            &response,
        );
    };

    // 1. No x-goog-hash: the archive is read back after its upload.
    let bucket = ls.new_bucket("gs-readback");
    let env = gs_env(&bucket);
    let id = backup(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    pushed_and_read_back_once(bin(&env), &proxy, &file);
    assert!(ls
        .keys(&bucket)
        .contains(&format!("prod/{file}.manifest.json")));

    // 2. GCS's crc32c of the right bytes: proven without reading anything back.
    let bucket = ls.new_bucket("gs-crc-ok");
    let env = gs_env(&bucket);
    let id = backup(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let bytes = std::fs::read(find_archive(&env, &file)).unwrap();
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &bytes) as u32;
    proxy.clear();
    answer_heads(&file, bytes.len() as u64, crc);
    let o = run(bin(&env), &["-v", "push"]);
    proxy.reset();
    assert!(o.status.success(), "push: {}", text(&o));
    assert!(
        text(&o).contains(&format!("{file} verified by the crc32c the store computed")),
        "{}",
        text(&o)
    );
    assert_eq!(
        proxy
            .seen()
            .iter()
            .filter(|r| r.method == "GET" && unescape(&r.target).ends_with(&file))
            .count(),
        0,
        "nothing is read back"
    );
    assert!(ls
        .keys(&bucket)
        .contains(&format!("prod/{file}.manifest.json")));

    // 3. A crc32c that contradicts the local archive: a verification failure, and no
    // manifest, so the copy never counts.
    let bucket = ls.new_bucket("gs-crc-bad");
    let env = gs_env(&bucket);
    let id = backup(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let size = std::fs::metadata(find_archive(&env, &file)).unwrap().len();
    answer_heads(&file, size, crc ^ 0x0100_0000);
    let o = run(bin(&env), &["push"]);
    proxy.reset();
    // Push's exit code for "every remote failed".
    assert_eq!(o.status.code(), Some(1), "push: {}", text(&o));
    assert!(
        text(&o).contains(&format!("FAILED: {file}"))
            && text(&o).contains("the store computed crc32c"),
        "{}",
        text(&o)
    );
    assert!(
        !ls.keys(&bucket)
            .iter()
            .any(|k| k.ends_with(".manifest.json")),
        "{:?}",
        ls.keys(&bucket)
    );
}

/// `push -v` through `c` succeeds and says `file` was verified by reading it back, and
/// the proxy saw exactly one GET of it.
fn pushed_and_read_back_once(c: Command, proxy: &proxy::Proxy, file: &str) {
    let o = run(c, &["-v", "push"]);
    assert!(o.status.success(), "push: {}", text(&o));
    assert!(
        text(&o).contains(&format!("{file} verified by reading it back")),
        "{}",
        text(&o)
    );
    let gets = proxy
        .seen()
        .iter()
        .filter(|r| r.method == "GET" && unescape(&r.target).ends_with(file))
        .count();
    assert_eq!(gets, 1, "the archive is read back once");
}

/// A request target with its `%XX` escapes decoded (object_store's GCS client escapes
/// every byte but letters and digits, `/` included).
fn unescape(target: &str) -> String {
    let b = target.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                let hex = std::str::from_utf8(hex).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// s3:// with `checksum = "md5"` (B2, R2): the store keeps no checksum of its own to ask,
/// and the SHA-256 in the object's metadata (`x-amz-meta-sha256`) is only what push wrote
/// there, so push reads the archive back before writing its manifest (issue 15,
/// Deliver 7) — seen as one GET of the archive at a proxy.
#[test]
fn s3_without_a_store_checksum_is_read_back_not_trusted_by_its_metadata() {
    let ls = localstack::shared();
    let proxy = proxy::Proxy::start(ls.port);
    let bucket = ls.new_bucket("md5-readback");
    let env = s3_env(&proxy.endpoint(), &bucket, "checksum = \"md5\"\n", 0);
    let id = backup(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    pushed_and_read_back_once(with_env_keys(bin(&env)), &proxy, &file);
    // The metadata was written all the same (`list` and `verify` report it).
    let head = proxy.seen().iter().any(|r| {
        r.method == "PUT"
            && unescape(&r.target).ends_with(&file)
            && r.header("x-amz-meta-sha256").is_some()
    });
    assert!(head, "the archive's PUT records its sha256 in metadata");
    assert!(ls
        .keys(&bucket)
        .contains(&format!("prod/host-1/{file}.manifest.json")));
}
