//! Secrets never leak: every command runs with secrets configured (S3 keys and a session
//! token in the config, a webhook URL with a token in its path and query, a ping URL with
//! a token, an age identity, PostgreSQL and Redis passwords in password files), and every
//! stdout, stderr, log file, metrics file and every file written in the backup folder, the
//! remote and the extraction folders is scanned for them; so are the command lines of the
//! child processes (through shims on PATH) and, for the S3 secret key, the bytes sent on
//! the wire (SigV4 signs with it and never sends it).
//!
//! Also here: files and folders are created private (0600 / 0700), and a config file
//! that others can read and that holds a secret is warned about.
//!
//! The remotes and webhooks point at a fake HTTP server on 127.0.0.1 that answers S3
//! requests with 403 AccessDenied (not retried: the commands fail fast) and webhooks and
//! pings with 200.

#[path = "../backends/tests/support/localstack.rs"]
mod localstack;
#[path = "support/pg.rs"]
mod pg;
#[path = "../backends/tests/support/proxy.rs"]
mod proxy;
#[path = "support/redis.rs"]
mod redis;
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{text, Env};

const S3_KEY_ID: &str = "AKIAPRONTOSCANTEST01";
const S3_SECRET: &str = "s3SecretKeyNeverPrinted0123456789abcd";
const S3_TOKEN: &str = "s3SessionTokenNeverPrinted42";
const HOOK_TOKEN: &str = "hookTokenNeverPrinted9d1e";
const QUERY_TOKEN: &str = "queryTokenNeverPrinted55";
const PING_TOKEN: &str = "pingTokenNeverPrinted77";
const PG_PASSWORD: &str = "pgPasswordNeverPrinted31";
const REDIS_PASSWORD: &str = "redisPasswordNeverPrinted47";

// ---- a fake HTTP server: S3 says 403, webhooks and pings say 200 -----------------------

struct FakeHttp {
    port: u16,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FakeHttp {
    fn start() -> FakeHttp {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let reqs = reqs.clone();
                std::thread::spawn(move || serve(s, &reqs));
            }
        });
        FakeHttp { port, requests }
    }

    fn seen(&self, needle: &str) -> bool {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| find(r, needle.as_bytes()).is_some())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn serve(mut s: TcpStream, reqs: &Mutex<Vec<Vec<u8>>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 << 10];
    // One request per connection (the answer says Connection: close).
    let end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < end + len {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    reqs.lock().unwrap().push(buf);
    let (status, body) = if path.starts_with("/hooks") || path.starts_with("/ping") {
        ("200 OK", "ok".to_string())
    } else {
        (
            "403 Forbidden",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>1</RequestId></Error>".to_string(),
        )
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

// ---- scanning ---------------------------------------------------------------------------

/// Every secret, in the spellings a leak could take.
fn needles(secrets: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    for s in secrets {
        v.push(s.clone());
        v.push(s.to_ascii_lowercase());
        // An age key's body, without its prefix, in either case.
        if let Some(body) = s.strip_prefix("AGE-SECRET-KEY-") {
            v.push(body.to_string());
            v.push(body.to_ascii_lowercase());
        }
    }
    v.sort();
    v.dedup();
    v
}

fn scan_bytes(what: &str, bytes: &[u8], secrets: &[String], leaks: &mut Vec<String>) {
    for n in needles(secrets) {
        if let Some(i) = find(bytes, n.as_bytes()) {
            let from = i.saturating_sub(120);
            let to = (i + n.len() + 40).min(bytes.len());
            leaks.push(format!(
                "{what}: {:?}",
                String::from_utf8_lossy(&bytes[from..to])
            ));
        }
    }
}

/// Every regular file under `root`, except those in `skip` (where the secrets live on purpose).
fn files_under(root: &Path, skip: &[PathBuf], out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if skip.iter().any(|s| p.starts_with(s)) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            files_under(&p, skip, out);
        } else if m.is_file() {
            out.push(p);
        }
    }
}

struct Scan {
    secrets: Vec<String>,
    outputs: Vec<(String, Vec<u8>)>,
    /// Set in the commands' environment (after the AWS and database variables are cleared).
    vars: Vec<(&'static str, &'static str)>,
}

impl Scan {
    fn run(&mut self, env: &Env, args: &[&str]) -> Output {
        self.run_with(env, args, None)
    }

    fn run_with(&mut self, env: &Env, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = env.cmd();
        for v in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "PGPASSWORD",
            "REDISCLI_AUTH",
        ] {
            c.env_remove(v);
        }
        c.env("AWS_EC2_METADATA_DISABLED", "true");
        c.envs(self.vars.iter().copied());
        c.env("PATH", shim_path(env));
        c.timeout(Duration::from_secs(240));
        if let Some(s) = stdin {
            c.write_stdin(s.to_string());
        }
        let o = c.args(args).output().unwrap();
        self.outputs
            .push((format!("{args:?}: stdout"), o.stdout.clone()));
        self.outputs
            .push((format!("{args:?}: stderr"), o.stderr.clone()));
        o
    }

    /// [`Scan::run`], and assert its exit code.
    fn expect(&mut self, env: &Env, args: &[&str], code: i32) -> Output {
        let o = self.run(env, args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        o
    }

    /// Every output so far and every file under the test folder but `skip`.
    fn check(&self, env: &Env, skip: &[PathBuf]) {
        let mut leaks = Vec::new();
        if std::env::var_os("SECRETS_SCAN_DUMP").is_some() {
            for (what, bytes) in &self.outputs {
                eprintln!("==== {what}\n{}", String::from_utf8_lossy(bytes));
            }
        }
        for (what, bytes) in &self.outputs {
            scan_bytes(what, bytes, &self.secrets, &mut leaks);
        }
        let mut files = Vec::new();
        files_under(env.dir.path(), skip, &mut files);
        assert!(
            files.len() > 10,
            "the scan must see the written files: {files:?}"
        );
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            scan_bytes(&f.display().to_string(), &bytes, &self.secrets, &mut leaks);
        }
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}

/// PATH with a folder of shims first: each logs its command line to `argv.log` and runs the
/// real tool, so that the scan sees every child's argv.
fn shim_path(env: &Env) -> String {
    let dir = env.path("shims");
    if !dir.exists() {
        std::fs::create_dir(&dir).unwrap();
        let log = env.path("argv.log");
        let pg_bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|_| std::panic::catch_unwind(pg::bin_dir).ok());
        for tool in [
            "pg_dump",
            "pg_dumpall",
            "pg_restore",
            "psql",
            "redis-cli",
            "ssh",
        ] {
            let real = match (&pg_bin, tool) {
                (Some(b), t) if t.starts_with("pg_") || t == "psql" => {
                    b.join(t).display().to_string()
                }
                _ => {
                    let o = std::process::Command::new("sh")
                        .arg("-c")
                        .arg(format!("command -v {tool}"))
                        .output()
                        .unwrap();
                    let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
                    if p.is_empty() {
                        continue;
                    }
                    p
                }
            };
            let shim = dir.join(tool);
            std::fs::write(
                &shim,
                format!(
                    "#!/bin/sh\nprintf '%s' '{tool}' >> '{}'\nfor a in \"$@\"; do printf ' %s' \"$a\" >> '{}'; done\necho >> '{}'\nexec '{real}' \"$@\"\n",
                    log.display(),
                    log.display(),
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn keygen(env: &Env, file: &str) -> (String, String) {
    let o = env.run(&["keygen", "--output", env.path(file).to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let recipient = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let secret = std::fs::read_to_string(env.path(file))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    (recipient, secret)
}

fn secrets_config(env: &Env, http: &FakeHttp, recipient: &str, extra: &str) {
    let s3 = format!("http://127.0.0.1:{}", http.port);
    secrets_config_at(env, http, recipient, extra, &s3, "pronto-scan");
}

/// [`secrets_config`] with the S3 remote at `s3_endpoint`, in `bucket`.
fn secrets_config_at(
    env: &Env,
    http: &FakeHttp,
    recipient: &str,
    extra: &str,
    s3_endpoint: &str,
    bucket: &str,
) {
    let port = http.port;
    env.write_config(&format!(
        r#"
[[remotes]]
name = "s3"
url = "s3://{bucket}/prod"
endpoint = "{s3_endpoint}"
allow_http = true
region = "us-east-1"
access_key_id = "{S3_KEY_ID}"
secret_access_key = "{S3_SECRET}"
session_token = "{S3_TOKEN}"

{extra}

[notify]
on = ["failure", "success"]
webhook_url = "http://127.0.0.1:{port}/hooks/{HOOK_TOKEN}?token={QUERY_TOKEN}"
ping_url = "http://127.0.0.1:{port}/ping/{PING_TOKEN}"

[log]
file = "log/pronto.log"

[metrics]
textfile = "metrics/pronto.prom"

[encryption]
recipients = ["{recipient}"]
identity_file = "keys/age.txt"
"#
    ));
    std::fs::set_permissions(env.config(), std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn source_tree(env: &Env) {
    std::fs::create_dir_all(env.path("src/css")).unwrap();
    std::fs::write(env.path("src/css/app.css"), "body {}\n").unwrap();
    std::fs::write(env.path("src/index.html"), "<h1>hi</h1>\n").unwrap();
}

/// Where the secrets are on purpose: the config, the keys, the password files.
fn skip(env: &Env) -> Vec<PathBuf> {
    vec![
        env.config(),
        env.path("keys"),
        env.path("pg.pass"),
        env.path("redis.pass"),
    ]
}

#[test]
fn the_scan_finds_a_planted_secret() {
    let env = Env::new();
    source_tree(&env);
    std::fs::create_dir_all(env.path("backups/deep/er")).unwrap();
    std::fs::write(
        env.path("backups/deep/er/x.json"),
        format!("{{\"t\": \"{S3_TOKEN}\"}}"),
    )
    .unwrap();
    for i in 0..10 {
        std::fs::write(env.path(&format!("src/f{i}")), "x").unwrap();
    }
    let scan = Scan {
        secrets: vec![
            S3_TOKEN.to_string(),
            "AGE-SECRET-KEY-1ABCDEFGHIJ".to_string(),
        ],
        outputs: vec![("stderr".into(), b"key: 1abcdefghij".to_vec())],
        vars: Vec::new(),
    };
    let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scan.check(&env, &[])))
        .expect_err("the planted secrets were not found");
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("x.json") && msg.contains("stderr"), "{msg}");
}

#[test]
fn every_command_with_secrets_configured_leaks_none() {
    let env = Env::new();
    let http = FakeHttp::start();
    source_tree(&env);
    let (recipient, age_secret) = keygen(&env, "keys/age.txt");
    let (_, wrong_secret) = keygen(&env, "keys/wrong.txt");
    secrets_config(&env, &http, &recipient, "");
    let mut scan = Scan {
        secrets: [S3_SECRET, S3_TOKEN, HOOK_TOKEN, QUERY_TOKEN, PING_TOKEN]
            .iter()
            .map(|s| s.to_string())
            .chain([age_secret, wrong_secret])
            .collect(),
        outputs: Vec::new(),
        vars: Vec::new(),
    };

    // Every exit code is asserted: the S3 stand-in refuses everything (403), so what
    // touches it is partial (3) or failed (1); status reports the stale remote (5).
    scan.expect(&env, &["doctor"], 1);
    scan.expect(&env, &["-v", "doctor", "--json"], 1);
    let o = scan.expect(&env, &["-v", "backup"], 0);
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    scan.expect(&env, &["--log-format", "json", "-v", "backup"], 0);
    scan.expect(&env, &["-v", "push"], 3); // nas ok, s3 refused
    scan.expect(&env, &["push", "--json"], 3);
    scan.expect(&env, &["push", "--dry-run"], 3);
    scan.expect(&env, &["-v", "list"], 3);
    scan.expect(&env, &["list", "--json"], 3);
    scan.expect(&env, &["-v", "status"], 5);
    scan.expect(&env, &["status", "--json"], 5);
    scan.expect(&env, &["-v", "hook"], 3);
    scan.expect(&env, &["hook", "--json", "--no-backup"], 3);
    scan.expect(&env, &["-v", "prune", "--dry-run"], 3);
    scan.expect(&env, &["-v", "prune"], 3);
    scan.expect(&env, &["pin", &id], 3);
    scan.expect(&env, &["unpin", &id], 3);
    let o = scan.run(
        &env,
        &[
            "-v",
            "pull",
            "latest",
            "--remote",
            "nas",
            "--to",
            env.path("out1").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = scan.run(
        &env,
        &[
            "-v",
            "pull",
            &id,
            "--remote",
            "nas",
            "--identity",
            env.path("keys/wrong.txt").to_str().unwrap(),
            "--to",
            env.path("out2").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    scan.expect(
        &env,
        &[
            "-v",
            "pull",
            "latest",
            "--remote",
            "s3",
            "--to",
            env.path("out3").to_str().unwrap(),
        ],
        1,
    );
    let o = scan.run(
        &env,
        &[
            "-v",
            "verify",
            "latest",
            "--remote",
            "nas",
            "--restore-test",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = scan.run_with(
        &env,
        &["policy", "--keep-daily", "2"],
        Some("pronto-app-backup-20260201-170521.tar.gz.age\npronto-app-backup-20260202-170521.tar.gz.age\n"),
    );
    assert_eq!(o.status.code(), Some(0), "policy: {}", text(&o));
    scan.expect(&env, &["completions", "bash"], 0);
    let o = scan.run(
        &env,
        &[
            "keygen",
            "--output",
            env.path("keys/third.txt").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "keygen: {}", text(&o));
    let third = std::fs::read_to_string(env.path("keys/third.txt")).unwrap();
    scan.secrets.push(
        third
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap()
            .to_string(),
    );

    // The secrets were used: the S3 remote was asked (and signed with the key), the
    // webhook and the ping were called.
    assert!(
        http.seen(S3_KEY_ID),
        "no signed S3 request reached the fake server"
    );
    assert!(
        http.seen(&format!("/hooks/{HOOK_TOKEN}")),
        "the webhook was not called"
    );
    assert!(
        http.seen(&format!("/ping/{PING_TOKEN}")),
        "the ping was not called"
    );
    // The S3 secret key never goes on the wire (SigV4).
    assert!(!http.seen(S3_SECRET), "the S3 secret key was sent");
    // What the scan covers exists: logs, metrics, the extraction (backup_info.txt), the remote.
    for p in ["log/pronto.log", "metrics/pronto.prom", "remote"] {
        assert!(env.path(p).exists(), "{p} missing");
    }
    let info = std::fs::read_dir(env.path("out1"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
        .join("backup_info.txt");
    assert!(info.exists(), "{}", info.display());
    scan.check(&env, &skip(&env));
}

/// The same scan over a run that works end to end: a real S3 (LocalStack, behind a
/// recording proxy) with the access key, secret and session token in the config and in
/// the environment; backup → push → pull → prune → status, every exit code 0; the outputs,
/// log, metrics, status and journal files and every object in the bucket are scanned.
#[test]
fn a_successful_s3_cycle_with_keys_and_a_session_token_leaks_none() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("scan-ok");
    let s3 = proxy::Proxy::start(ls.port);
    let env = Env::new();
    let http = FakeHttp::start();
    source_tree(&env);
    let (recipient, age_secret) = keygen(&env, "keys/age.txt");
    let retention = "\n[retention]\nlast = 1\nmax_delete_fraction = 1\n";
    secrets_config_at(&env, &http, &recipient, retention, &s3.endpoint(), &bucket);
    let mut scan = Scan {
        secrets: [S3_SECRET, S3_TOKEN, HOOK_TOKEN, QUERY_TOKEN, PING_TOKEN]
            .iter()
            .map(|s| s.to_string())
            .chain([age_secret])
            .collect(),
        outputs: Vec::new(),
        vars: vec![
            ("AWS_ACCESS_KEY_ID", S3_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
            ("AWS_SESSION_TOKEN", S3_TOKEN),
        ],
    };

    let first = scan.expect(&env, &["-v", "backup"], 0);
    let first = String::from_utf8_lossy(&first.stdout).trim().to_string();
    scan.expect(&env, &["-v", "push", "--no-prune"], 0);
    let second = scan.expect(&env, &["--log-format", "json", "-v", "backup"], 0);
    let second = String::from_utf8_lossy(&second.stdout).trim().to_string();
    scan.expect(&env, &["-v", "push", "--json", "--no-prune"], 0);
    let on_s3 = |id: &str| {
        ls.keys(&bucket)
            .iter()
            .any(|k| k.contains(id) && k.ends_with(".manifest.json"))
    };
    assert!(on_s3(&first) && on_s3(&second), "{:?}", ls.keys(&bucket));

    // Pull the newest back from S3 after losing the local copy, and into a folder.
    for a in support::files_under(&env.backups()) {
        if a.to_string_lossy().contains(&second) {
            std::fs::remove_file(a).unwrap();
        }
    }
    scan.expect(&env, &["-v", "pull", &second, "--remote", "s3"], 0);
    let out = env.path("out");
    scan.expect(
        &env,
        &[
            "-v",
            "pull",
            "latest",
            "--remote",
            "s3",
            "--to",
            out.to_str().unwrap(),
        ],
        0,
    );
    scan.expect(&env, &["-v", "verify", "--remote", "s3", "--deep"], 0);

    // Prune keeps the newest: the first goes from S3 (and everywhere).
    scan.expect(&env, &["-v", "prune"], 0);
    assert!(!on_s3(&first) && on_s3(&second), "{:?}", ls.keys(&bucket));
    scan.expect(&env, &["-v", "status"], 0);
    scan.expect(&env, &["status", "--json"], 0);
    scan.expect(&env, &["-v", "hook", "--no-backup"], 0);
    scan.expect(&env, &["-v", "list"], 0);

    // The credentials were used: every request was signed with the key id and carried
    // the session token; the secret key itself never went on the wire.
    let seen = s3.seen();
    assert!(!seen.is_empty());
    for r in &seen {
        let auth = r.header("authorization").unwrap_or("");
        assert!(auth.contains(S3_KEY_ID), "unsigned: {r:?}");
        assert_eq!(r.header("x-amz-security-token"), Some(S3_TOKEN), "{r:?}");
        assert!(!auth.contains(S3_SECRET));
    }
    // What the scan covers exists: logs, metrics, the state file (status), the
    // extraction; and every object in the bucket is scanned too.
    for p in ["log/pronto.log", "metrics/pronto.prom"] {
        assert!(env.path(p).exists(), "{p} missing");
    }
    assert!(env.backups().join(".pronto-offsite.state.json").exists());
    assert!(out.exists());
    for key in ls.keys(&bucket) {
        let (status, body) =
            localstack::http("GET", ls.port, &format!("/{bucket}/{key}"), &[]).unwrap();
        assert_eq!(status, 200, "{key}");
        scan.outputs
            .push((format!("s3://{bucket}/{key}"), body.into_bytes()));
    }
    scan.check(&env, &skip(&env));
}

#[test]
fn database_passwords_reach_no_argv_output_or_file() {
    let pg = pg::Pg::start();
    pg.psql(
        "postgres",
        &format!("CREATE ROLE pronto LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}'"),
    );
    pg.psql("postgres", "CREATE DATABASE shop OWNER pronto");
    pg.psql(
        "shop",
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 100);",
    );
    let r = redis::Redis::start(Some(REDIS_PASSWORD));
    r.cli(&["SET", "k", "v"]);

    let env = Env::new();
    let http = FakeHttp::start();
    source_tree(&env);
    let (recipient, age_secret) = keygen(&env, "keys/age.txt");
    std::fs::write(env.path("pg.pass"), format!("{PG_PASSWORD}\n")).unwrap();
    std::fs::write(env.path("redis.pass"), format!("{REDIS_PASSWORD}\n")).unwrap();
    for f in ["pg.pass", "redis.pass"] {
        std::fs::set_permissions(env.path(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let services = format!(
        "[[sources]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"{}\"\ndatabases = [\"shop\"]\npassword_file = \"pg.pass\"\n\n\
         [[sources]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\npassword_file = \"redis.pass\"\n",
        pg.url("pronto"),
        r.port
    );
    secrets_config(&env, &http, &recipient, &services);
    let mut scan = Scan {
        secrets: [
            PG_PASSWORD,
            REDIS_PASSWORD,
            S3_SECRET,
            S3_TOKEN,
            HOOK_TOKEN,
            QUERY_TOKEN,
            PING_TOKEN,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([age_secret])
        .collect(),
        outputs: Vec::new(),
        vars: Vec::new(),
    };

    scan.expect(&env, &["-v", "doctor"], 1);
    scan.expect(&env, &["-v", "backup"], 0);
    scan.expect(&env, &["-v", "push"], 3);
    scan.expect(&env, &["-v", "hook"], 3);
    let o = scan.run(
        &env,
        &[
            "-v",
            "pull",
            "latest",
            "--remote",
            "nas",
            "--to",
            env.path("out").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // A wrong password: the failure message must not carry it either.
    std::fs::write(env.path("pg.pass"), "wrongPasswordNeverPrinted63\n").unwrap();
    scan.secrets.push("wrongPasswordNeverPrinted63".into());
    let o = scan.run(&env, &["-v", "backup"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // The tools ran (through the shims) and their command lines hold no password.
    let argv = std::fs::read_to_string(env.path("argv.log")).unwrap_or_default();
    assert!(
        argv.contains("pg_dump") && argv.contains("redis-cli"),
        "shims not used: {argv}"
    );
    // The dumps are in the archive (extracted), and backup_info.txt and the manifest are scanned.
    let top = std::fs::read_dir(env.path("out"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert!(top.join("postgres_data/db").exists() && top.join("redis_data/cache").exists());
    scan.check(&env, &skip(&env));
}

#[test]
fn a_config_others_can_read_that_holds_a_secret_is_warned_about() {
    let env = Env::new();
    let http = FakeHttp::start();
    source_tree(&env);
    let (recipient, _) = keygen(&env, "keys/age.txt");
    secrets_config(&env, &http, &recipient, "");
    let cfg = env.config().display().to_string();

    std::fs::set_permissions(env.config(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = env.run(&["list"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let line = err
        .lines()
        .find(|l| l.contains("WARN") && l.contains("can be read by other users"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(
        line.contains(&cfg) && line.contains(&format!("chmod 600 {cfg}")),
        "{line}"
    );
    assert!(
        line.contains("remotes[1].secret_access_key") && line.contains("notify.webhook_url"),
        "{line}"
    );
    for s in [S3_SECRET, S3_TOKEN, HOOK_TOKEN] {
        assert!(!err.contains(s), "{err}");
    }
    // Group-readable counts too; 0600 does not warn; nor does a readable config without secrets.
    std::fs::set_permissions(env.config(), std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(String::from_utf8_lossy(&env.run(&["list"]).stderr).contains("chmod 600"));
    std::fs::set_permissions(env.config(), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(!String::from_utf8_lossy(&env.run(&["list"]).stderr).contains("chmod 600"));
    env.write_config("");
    std::fs::set_permissions(env.config(), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(!String::from_utf8_lossy(&env.run(&["list"]).stderr).contains("chmod 600"));

    // An identity file others can read is flagged by doctor (a failed check, exit 1).
    std::fs::set_permissions(
        env.path("keys/age.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    env.write_config(&format!(
        "\n[encryption]\nrecipients = [\"{recipient}\"]\nidentity_file = \"keys/age.txt\"\n"
    ));
    let o = env.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let key = env.path("keys/age.txt").display().to_string();
    assert!(
        text(&o).contains("identity file") && text(&o).contains(&format!("chmod 600 {key}")),
        "{}",
        text(&o)
    );
}

/// Files that decide who can read the backups are refused, like ssh refuses them, when
/// others could change them (the config, a recipients file) or read them (an identity):
/// exit 2, the file, its mode and the fix, and nothing is written.
#[test]
fn a_config_or_recipients_file_others_can_write_and_an_identity_others_can_read_are_refused() {
    let env = Env::new();
    source_tree(&env);
    let (recipient, _) = keygen(&env, "keys/age.txt");
    std::fs::write(env.path("recipients.txt"), format!("{recipient}\n")).unwrap();
    env.write_config("\n[encryption]\nrecipients_file = \"recipients.txt\"\n");
    let refused = |file: &Path, mode: u32, args: &[&str]| {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
        let o = env.run(args);
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(o.status.code(), Some(2), "{mode:o} {args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            err.contains(&format!("mode {mode:o}"))
                && err.contains(&format!("chmod 600 {}", file.display())),
            "{mode:o}: {err}"
        );
        err
    };
    for mode in [0o620, 0o602, 0o666] {
        let err = refused(&env.config(), mode, &["backup"]);
        assert!(err.contains("config file"), "{err}");
        let err = refused(&env.path("recipients.txt"), mode, &["backup"]);
        assert!(err.contains("recipients file"), "{err}");
    }
    assert!(
        !support::names_in(&env.backups())
            .iter()
            .any(|n| n.contains(".tar.gz")),
        "nothing was backed up with a refused file"
    );
    // Readable by others is fine for the config without secrets and for recipients
    // (public keys); 0644 is the usual umask's mode.
    for f in [env.config(), env.path("recipients.txt")] {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let o = env.run(&["backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // The identity: refused before anything is downloaded or extracted.
    let key = env.path("keys/age.txt");
    let out = env.path("out");
    let pull = [
        "pull",
        "latest",
        "--identity",
        key.to_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
    ];
    for mode in [0o640, 0o604, 0o620] {
        let err = refused(&key, mode, &pull);
        assert!(err.contains("identity file"), "{err}");
        assert!(!out.exists(), "{mode:o}: extracted with a refused identity");
    }
    let o = env.run(&pull);
    assert_eq!(o.status.code(), Some(0), "0600: {}", text(&o));
}

#[test]
fn archives_manifests_journals_and_logs_are_0600_in_0700_folders() {
    let env = Env::new();
    source_tree(&env);
    let (recipient, _) = keygen(&env, "keys/age.txt");
    env.write_config(&format!(
        "\n[log]\nfile = \"log/sub/pronto.log\"\n\n[metrics]\ntextfile = \"metrics/pronto.prom\"\n\n[encryption]\nrecipients = [\"{recipient}\"]\nidentity_file = \"keys/age.txt\"\n"
    ));
    for args in [
        &["backup"][..],
        &["backup"],
        &["push"],
        &["hook"],
        &["pin", "latest"],
    ] {
        let o = env.run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    }
    let o = env.run(&["pull", "latest", "--to", env.path("out").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The pins file (local and on the remote) is among the files checked below.
    let pins = "pronto-app-backup.pins.json";
    assert!(env.backups().join(pins).exists(), "local pins file");
    assert!(env.remote().join(pins).exists(), "remote pins file");

    let mut bad = Vec::new();
    let mut seen = 0;
    for root in [env.backups(), env.remote(), env.path("log")] {
        let mut stack = vec![root.clone()];
        while let Some(p) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.mode() & 0o777;
            if m.is_dir() {
                if mode & 0o077 != 0 {
                    bad.push(format!("folder {} is {mode:o}", p.display()));
                }
                stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
            } else {
                seen += 1;
                if mode & 0o077 != 0 {
                    bad.push(format!("file {} is {mode:o}", p.display()));
                }
            }
        }
    }
    assert!(seen >= 6, "archives, manifests and the log were seen");
    assert!(bad.is_empty(), "not private:\n{}", bad.join("\n"));
    // The one deliberate exception: the metrics textfile, read by node_exporter.
    assert_eq!(
        std::fs::metadata(env.path("metrics/pronto.prom"))
            .unwrap()
            .mode()
            & 0o777,
        0o644
    );
}
