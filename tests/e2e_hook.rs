//! `hook` end to end through the binary: backup + push + report with a file:// remote,
//! a webhook and ping receiver on 127.0.0.1, a notification command, the metrics
//! textfile, the lock between two runs, a notification that fails, and the log file.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{names_in, text, Env};

/// One HTTP request the receiver got.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    body: String,
}

/// A tiny HTTP server on 127.0.0.1 that records requests and answers `status`.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(status: u16) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                let _ = r.read_exact(&mut body);
                g.lock().unwrap().push(Request {
                    method,
                    path,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let mut conn = r.into_inner();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        Receiver { port, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.got.lock().unwrap().clone()
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn source(env: &Env) {
    std::fs::create_dir_all(env.path("src/sub")).unwrap();
    std::fs::write(env.path("src/index.html"), "<h1>pronto</h1>\n").unwrap();
    std::fs::write(env.path("src/sub/app.js"), "console.log(1)\n".repeat(100)).unwrap();
}

/// Parse a Prometheus text file: `name{labels}` → value. Panics on a malformed line.
fn parse_prom(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut m = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        assert!(
            !line.trim().is_empty() && !line.starts_with('#'),
            "unexpected line {line:?}"
        );
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let name_end = key.find('{').unwrap_or(key.len());
        let name = &key[..name_end];
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name.starts_with("pronto_offsite_"),
            "bad metric name {name:?}"
        );
        if name_end < key.len() {
            assert!(key.ends_with('}'), "bad labels {key:?}");
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        m.insert(key.to_string(), v);
    }
    m
}

/// Archive file names in the backup folder and its tiers, sorted.
fn local_archives(env: &Env) -> Vec<String> {
    let mut v = Vec::new();
    for d in ["", "archive/weekly", "archive/monthly", "archive/yearly"] {
        v.extend(
            names_in(&env.backups().join(d))
                .into_iter()
                .filter(|n| n.ends_with(".tar.gz")),
        );
    }
    v.sort();
    v
}

fn find_archive(env: &Env, name: &str) -> std::path::PathBuf {
    ["", "archive/weekly", "archive/monthly", "archive/yearly"]
        .iter()
        .map(|d| env.backups().join(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not in the backup folder"))
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hook_backs_up_pushes_writes_metrics_pings_and_notifies_on_success() {
    let env = Env::new();
    source(&env);
    let rx = Receiver::start(200);
    env.write_config(&format!(
        r#"
[notify]
webhook_url = "{}"
webhook_on = ["failure", "success"]
ping_url = "{}"
command = ["sh", "-c", "cat > {2}; echo \"$PRONTO_OFFSITE_STATUS $PRONTO_OFFSITE_EXIT_CODE\" >> {2}"]
command_on = ["success"]

[metrics]
textfile = "textfile_collector/pronto_offsite.prom"

[log]
file = "log/pronto-backup.log"
"#,
        rx.url("/hook/secret-webhook-token"),
        rx.url("/ping/uuid-1234"),
        env.path("notified.txt").display()
    ));
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let before = unix_now();
    let o = env.run(&["hook"]);
    let after = unix_now();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(": OK: archive "), "{stdout}");

    // Backup and push happened.
    let archives = local_archives(&env);
    assert_eq!(archives.len(), 1);
    assert!(env.remote().join(&archives[0]).exists());
    assert!(env
        .remote()
        .join(format!("{}.manifest.json", archives[0]))
        .exists());

    // Metrics: parseable, atomic (no temp file left), the expected families.
    let prom_dir = env.path("textfile_collector");
    assert_eq!(names_in(&prom_dir), ["pronto_offsite.prom"]);
    let prom = std::fs::read_to_string(prom_dir.join("pronto_offsite.prom")).unwrap();
    let m = parse_prom(&prom);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(m["pronto_offsite_last_run_success"], 1.0, "{prom}");
    assert_eq!(m["pronto_offsite_last_run_exit_code"], 0.0);
    // The duration is this run's, in seconds: more than nothing (it backed up and pushed),
    // and it fits inside the test's own bracket around the run, ending when the run says
    // it finished (timestamps are whole seconds).
    let duration = m["pronto_offsite_last_run_duration_seconds"];
    let finished = m["pronto_offsite_last_run_timestamp_seconds"];
    assert!(duration > 0.0, "{prom}");
    assert!(
        duration <= after - before,
        "{duration} s, run took {}",
        after - before
    );
    assert!(
        finished - duration >= before.floor() - 1.0 && finished <= after.ceil(),
        "{prom}"
    );
    assert!((now - m["pronto_offsite_local_last_success_timestamp_seconds"]).abs() < 120.0);
    assert!(
        (now - m["pronto_offsite_remote_last_success_timestamp_seconds{remote=\"nas\"}"]).abs()
            < 120.0
    );
    let size = std::fs::metadata(find_archive(&env, &archives[0]))
        .unwrap()
        .len() as f64;
    assert_eq!(m["pronto_offsite_archive_size_bytes"], size);
    assert_eq!(
        m["pronto_offsite_remote_uploaded_bytes{remote=\"nas\"}"],
        size
    );
    // The prune filed the only archive by its strongest reason (yearly#1).
    assert_eq!(m["pronto_offsite_archives{tier=\"yearly\"}"], 1.0);
    assert_eq!(m["pronto_offsite_archives{tier=\"top\"}"], 0.0);
    assert_eq!(
        m["pronto_offsite_archives_size_bytes{tier=\"yearly\"}"],
        size
    );
    assert!(m.contains_key("pronto_offsite_newest_archive_timestamp_seconds"));

    // Webhook (JSON report), pings (start, then success), command (text on stdin).
    let reqs = rx.requests();
    let hooks: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/hook/"))
        .collect();
    assert_eq!(hooks.len(), 1, "{reqs:?}");
    assert_eq!(hooks[0].method, "POST");
    let v: serde_json::Value = serde_json::from_str(&hooks[0].body).unwrap();
    assert_eq!(v["status"], "success");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["remotes"][0]["name"], "nas");
    assert_eq!(v["remotes"][0]["uploaded"][0], archives[0].as_str());
    assert_eq!(v["backup"]["archive"]["file"], archives[0].as_str());
    assert!(v["text"].as_str().unwrap().contains("OK"));
    let pings: Vec<(&str, &str)> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/ping/"))
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        pings,
        [("GET", "/ping/uuid-1234/start"), ("GET", "/ping/uuid-1234")]
    );
    let note = std::fs::read_to_string(env.path("notified.txt")).unwrap();
    assert!(
        note.contains("OK: archive") && note.ends_with("success 0\n"),
        "{note}"
    );

    // The log file has the run, and no URL token appears in it or on stderr.
    let log = std::fs::read_to_string(env.path("log/pronto-backup.log")).unwrap();
    assert!(log.contains("INFO hook started"), "{log}");
    assert!(log.contains("webhook http://127.0.0.1:"), "{log}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    for secret in ["secret-webhook-token", "uuid-1234"] {
        assert!(
            !log.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }

    // --json prints the same report as JSON; a second run uploads nothing.
    let o = env.run(&["hook", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "success");
    assert_eq!(v["remotes"][0]["already_there"], 1);
    assert_eq!(v["remotes"][0]["uploaded"].as_array().unwrap().len(), 1);
}

#[test]
fn a_failing_remote_exits_3_keeps_its_last_success_and_notifies() {
    let env = Env::new();
    source(&env);
    let rx = Receiver::start(200);
    let extra = format!(
        r#"
[[remotes]]
name = "offsite"
url = "file://offsite"

[notify]
webhook_url = "{}"
webhook_format = "slack"
ping_url = "{}"
command = ["sh", "-c", "cat > {}"]
on = ["failure"]

[metrics]
textfile = "pronto_offsite.prom"
"#,
        rx.url("/slack/T0/B0/XYZ"),
        rx.url("/ping/abc"),
        env.path("notified.txt").display()
    );
    env.write_config(&extra);

    // First run: both remotes fine; `on = ["failure"]` sends no webhook and no command,
    // but the ping URL follows its own `on` only when set: here the shared one (failure).
    let o = env.run(&["hook"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(rx.requests().iter().all(|r| !r.path.starts_with("/slack/")));
    assert!(!env.path("notified.txt").exists());
    let first = parse_prom(&std::fs::read_to_string(env.path("pronto_offsite.prom")).unwrap());
    let key = "pronto_offsite_remote_last_success_timestamp_seconds{remote=\"offsite\"}";
    assert!(first.contains_key(key));

    // Timestamps have whole seconds: make sure the next run ends in a later one.
    std::thread::sleep(Duration::from_millis(1100));
    // Break the second remote: a file where its folder should be.
    std::fs::remove_dir_all(env.path("offsite")).unwrap();
    std::fs::write(env.path("offsite"), "not a folder").unwrap();
    let o = env.run(&["hook"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("offsite")),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("PARTIAL FAILURE (exit 3)"),
        "{}",
        text(&o)
    );

    // The good remote got the new archive.
    let archives = local_archives(&env);
    assert_eq!(archives.len(), 2);
    assert!(archives.iter().all(|a| env.remote().join(a).exists()));

    // Webhook: a Slack-style {"text": …} payload naming the failure.
    let reqs = rx.requests();
    let slack: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/slack/"))
        .collect();
    assert_eq!(slack.len(), 1, "{reqs:?}");
    let v: serde_json::Value = serde_json::from_str(&slack[0].body).unwrap();
    let t = v["text"].as_str().unwrap();
    assert!(
        t.contains("PARTIAL FAILURE") && t.contains("offsite") && t.contains("not a folder"),
        "{t}"
    );
    assert_eq!(v.as_object().unwrap().len(), 1, "only `text`: {v}");
    // Ping: /fail (no /start: `on` has no success).
    let pings: Vec<&str> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/ping/"))
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(pings, ["/ping/abc/fail"]);
    // Command: the text report on stdin.
    let note = std::fs::read_to_string(env.path("notified.txt")).unwrap();
    assert!(
        note.contains("remote   offsite: FAILED") && note.contains("ERROR: remote offsite"),
        "{note}"
    );

    // Metrics: the failed remote keeps its previous last success; the good one moved on.
    let second = parse_prom(&std::fs::read_to_string(env.path("pronto_offsite.prom")).unwrap());
    assert_eq!(second[key], first[key]);
    assert_eq!(
        second["pronto_offsite_remote_last_run_success{remote=\"offsite\"}"],
        0.0
    );
    assert_eq!(
        second["pronto_offsite_remote_last_run_success{remote=\"nas\"}"],
        1.0
    );
    let nas = "pronto_offsite_remote_last_success_timestamp_seconds{remote=\"nas\"}";
    assert!(second[nas] > first[nas]);
    assert_eq!(second["pronto_offsite_last_run_exit_code"], 3.0);
    let per_tier: f64 = ["top", "weekly", "monthly", "yearly"]
        .iter()
        .map(|t| second[&format!("pronto_offsite_archives{{tier=\"{t}\"}}")])
        .sum();
    assert_eq!(per_tier, 2.0);
}

#[test]
fn a_failed_backup_exits_1_and_says_so() {
    let env = Env::new();
    // No src folder: the backup fails.
    env.write_config("");
    let o = env.run(&["hook"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("FAILED (exit 1)") && stdout.contains("backup   FAILED"),
        "{}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ERROR"),
        "{}",
        text(&o)
    );
}

#[test]
fn two_hooks_at_once_never_overlap() {
    let env = Env::new();
    source(&env);
    // The first run holds the lock while its (slow) success notification runs.
    env.write_config(
        r#"
[notify]
command = ["sh", "-c", "cat > /dev/null; sleep 5"]
command_on = ["success"]
"#,
    );
    let bin = assert_cmd::cargo::cargo_bin("pronto-offsite");
    let first = std::process::Command::new(&bin)
        .arg("--config")
        .arg(env.config())
        .arg("hook")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = env.backups().join(".pronto-offsite.state.json");
    wait_for(
        "the first hook to reach its report",
        Duration::from_secs(60),
        || state.exists(),
    );

    // A second run that waits 1s gives up with exit 6, a clear message, and does nothing.
    // (That it waited is in its message; how long a wait lasts is the lock's own test.)
    let archives_before = local_archives(&env);
    let o = env.run(&["hook", "--lock-wait", "1s"]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("ERROR")
            && stderr.contains("another pronto-offsite hook (pid ")
            && stderr.contains("waiting 1s"),
        "{stderr}"
    );
    assert_eq!(
        local_archives(&env),
        archives_before,
        "the busy run changed nothing"
    );

    // A third run that waits long enough runs after the first one, never beside it.
    let o = env.run(&["hook", "--lock-wait", "60s"]);
    let mut first = first;
    let status = first.wait().unwrap();
    assert!(status.success());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another hook run (pid "),
        "{}",
        text(&o)
    );
    assert_eq!(local_archives(&env).len(), 2);
}

#[test]
fn a_failing_notification_is_logged_and_a_good_run_exits_1() {
    let env = Env::new();
    source(&env);
    let rx = Receiver::start(500);
    env.write_config(&format!(
        r#"
[notify]
webhook_url = "http://127.0.0.1:{}/hook/token-that-must-not-leak"
ping_url = "{}"
command = ["false"]
on = ["failure", "success"]
timeout = "2s"
"#,
        closed_port(),
        rx.url("/ping/another-secret")
    ));
    let o = env.run(&["hook"]);
    // The backup and push succeeded, but nobody was told: that shows in the exit code.
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(local_archives(&env).len(), 1, "the backup itself was made");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(
            "the run itself succeeded, but its notification failed (webhook, ping, command)"
        ),
        "{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors
            .iter()
            .any(|l| l.contains("webhook http://127.0.0.1:") && l.contains("failed")),
        "{stderr}"
    );
    assert!(
        errors
            .iter()
            .any(|l| l.contains("ping") && l.contains("500")),
        "{stderr}"
    );
    assert!(
        errors.iter().any(|l| l.contains("command false failed")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("token-that-must-not-leak") && !stderr.contains("another-secret"),
        "{stderr}"
    );
    // 500 is retried: three attempts each for /start and for the success ping.
    assert_eq!(rx.requests().len(), 6, "{:?}", rx.requests());
}

#[test]
fn log_file_rotates_by_size_and_failures_carry_error() {
    let env = Env::new();
    source(&env);
    env.write_config(
        r#"
[[remotes]]
name = "broken"
url = "file://broken"

[log]
file = "logs/pronto-backup.log"
max_size = "2KiB"
keep = 2
"#,
    );
    std::fs::write(env.path("broken"), "a file, not a folder").unwrap();
    for _ in 0..8 {
        let o = env.run(&["-q", "hook"]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    }
    assert_eq!(
        names_in(&env.path("logs")),
        [
            "pronto-backup.log",
            "pronto-backup.log.1",
            "pronto-backup.log.2"
        ]
    );
    for n in names_in(&env.path("logs")) {
        let t = std::fs::read_to_string(env.path("logs").join(&n)).unwrap();
        assert!(t.len() <= 2048, "{n}: {} bytes", t.len());
        assert!(t.ends_with('\n'), "{n} ends mid-line");
        for line in t.lines() {
            // Every line: a UTC timestamp, a level, a message.
            assert!(
                line.len() > 21 && line.as_bytes()[4] == b'-' && &line[19..20] == "Z",
                "{line:?}"
            );
        }
        // -q keeps stderr quiet, never the log file; failures say ERROR.
        assert!(t.contains(" INFO "), "{n}: {t}");
        assert!(
            t.lines()
                .any(|l| l.contains(" ERROR ") && l.contains("broken")),
            "{n}: {t}"
        );
    }
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let env = Env::new();
    source(&env);
    env.write_config(
        r#"
[log]
file = "pronto.log"
"#,
    );
    let o = env.run(&["--log-format", "json", "hook"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let file = std::fs::read_to_string(env.path("pronto.log")).unwrap();
    for t in [stderr.as_ref(), file.as_str()] {
        assert!(t.lines().count() >= 3, "{t}");
        for line in t.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(
                v["level"].is_string() && v["timestamp"].is_string(),
                "{line}"
            );
        }
    }
    // A config error is a JSON line too, with level ERROR.
    std::fs::write(
        env.config(),
        "[local]\ndir = \"b\"\n[hook]\nlock_wait = \"soon\"\n",
    )
    .unwrap();
    let o = env.run(&["--log-format", "json", "hook"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("hook.lock_wait"),
        "{v}"
    );
}

#[test]
fn config_errors_in_the_operations_sections_name_the_key() {
    let env = Env::new();
    let cases = [
        (
            "[notify]\nwebhook_url = \"ftp://x\"\n",
            "notify.webhook_url",
        ),
        ("[notify]\ncommand = []\n", "notify.command"),
        (
            "[notify]\nping_url = \"https://hc-ping.com/x\"\non = [\"sometimes\"]\n",
            "notify.on",
        ),
        (
            "[notify]\nwebhook_format = \"slack\"\n",
            "notify.webhook_format",
        ),
        (
            "[log]\nfile = \"x.log\"\nmax_size = \"huge\"\n",
            "log.max_size",
        ),
        (
            "[metrics]\ntextfile = \"metrics.txt\"\n",
            "metrics.textfile",
        ),
        ("[status]\nmax_age = \"0s\"\n", "status.max_age"),
        ("[hook]\nlock_wait = \"later\"\n", "hook.lock_wait"),
        ("[notify]\nemail = \"ops@example.com\"\n", "email"),
    ];
    for (extra, key) in cases {
        std::fs::write(env.config(), format!("[local]\ndir = \"b\"\n{extra}")).unwrap();
        let o = env.run(&["status"]);
        assert_eq!(o.status.code(), Some(2), "{extra}\n{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("pronto-offsite.toml:") && err.contains(key),
            "{key}: {err}"
        );
    }
}

#[test]
fn completions_and_man_page() {
    let env = Env::new();
    let o = env.run(&["completions", "bash"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("pronto-offsite") && s.contains("hook") && s.contains("status"));
    let o = env.run(&["man"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.starts_with(".ie") || s.contains(".TH"), "{s}");
    assert!(s.contains("hook"));
}

#[test]
fn push_json_reports_each_remote() {
    let env = Env::new();
    source(&env);
    env.write_config("\n[[remotes]]\nname = \"broken\"\nurl = \"file://broken\"\n");
    std::fs::write(env.path("broken"), "a file, not a folder").unwrap();
    assert!(env.run(&["backup"]).status.success());
    let o = env.run(&["push", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["remotes"][0]["name"], "nas");
    assert_eq!(v["remotes"][0]["ok"], true);
    assert_eq!(v["remotes"][0]["uploaded"].as_array().unwrap().len(), 1);
    assert_eq!(v["remotes"][1]["name"], "broken");
    assert_eq!(v["remotes"][1]["ok"], false);
    assert!(v["remotes"][1]["error"]
        .as_str()
        .unwrap()
        .contains("not a folder"));
}

// ---- every failure path reports (issue 17) ----------------------------------------------

/// `[notify]` that writes the report to notified.txt on a failure, and a metrics textfile.
fn reporting(env: &Env) -> String {
    format!(
        r#"
[notify]
command = ["sh", "-c", "cat > {}"]
command_on = ["failure"]

[metrics]
textfile = "pronto_offsite.prom"
"#,
        env.path("notified.txt").display()
    )
}

/// The run exited `code` without a panic, the failure notification went out and says
/// `needle`, and the metrics textfile has this run's exit code.
#[track_caller]
fn assert_reported(env: &Env, o: &std::process::Output, code: i32, needle: &str) {
    let all = text(o);
    assert_eq!(o.status.code(), Some(code), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    let note = std::fs::read_to_string(env.path("notified.txt"))
        .unwrap_or_else(|e| panic!("no failure notification ({e}): {all}"));
    assert!(
        note.contains(&format!("(exit {code})")) && note.contains(needle),
        "the notification says what failed ({needle}): {note}"
    );
    let prom = std::fs::read_to_string(env.path("pronto_offsite.prom"))
        .unwrap_or_else(|e| panic!("no metrics textfile ({e}): {all}"));
    assert_eq!(
        parse_prom(&prom)["pronto_offsite_last_run_exit_code"],
        f64::from(code),
        "{prom}"
    );
}

/// A folder made immutable with `chattr +i` (root ignores modes), undone on drop.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(dir: &std::path::Path) -> Immutable {
        let o = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .output()
            .expect("chattr (e2fsprogs) is needed to make a folder read-only as root");
        assert!(o.status.success(), "chattr +i failed: {}", text(&o));
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_hook_that_finds_the_lock_held_reports_it() {
    let env = Env::new();
    source(&env);
    // The first run holds the lock while its (slow) success notification runs; every
    // run writes its report to a file of its own.
    env.write_config(&format!(
        r#"
[notify]
command = ["sh", "-c", "cat > {}/note-$$.txt; sleep 5"]
command_on = ["failure", "success"]

[metrics]
textfile = "pronto_offsite.prom"
"#,
        env.path("").display()
    ));
    let bin = assert_cmd::cargo::cargo_bin("pronto-offsite");
    let mut first = std::process::Command::new(&bin)
        .arg("--config")
        .arg(env.config())
        .arg("hook")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = env.backups().join(".pronto-offsite.state.json");
    wait_for("the first hook's report", Duration::from_secs(60), || {
        state.exists()
    });
    let o = env.run(&["hook", "--lock-wait", "1s"]);
    assert!(first.wait().unwrap().success());
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let notes: Vec<String> = names_in(&env.path(""))
        .into_iter()
        .filter(|n| n.starts_with("note-"))
        .map(|n| std::fs::read_to_string(env.path(&n)).unwrap())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("(exit 6)") && n.contains("holds the lock")),
        "{notes:?}"
    );
    // The busy run is the last one in the state file (the first one saved it before
    // its notification, the busy one after).
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(st["last_run"]["exit_code"], 6, "{st}");
}

#[test]
fn a_hook_with_a_read_only_backup_folder_reports_it() {
    let env = Env::new();
    source(&env);
    env.write_config(&reporting(&env));
    std::fs::create_dir_all(env.backups()).unwrap();
    let _ro = Immutable::new(&env.backups());
    let o = env.run(&["hook"]);
    assert_reported(&env, &o, 1, &env.backups().display().to_string());
    assert!(stdout_of(&o).contains("backup   FAILED"), "{}", text(&o));
}

#[test]
fn a_hook_on_a_full_disk_reports_it() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    source(&env);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let noise: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(env.path("src/video.mp4"), noise).unwrap();
    env.write_config(&reporting(&env));
    // No file may grow past 1 MiB: the archive's writes fail with EFBIG, as on a full disk.
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("pronto-offsite"));
    c.arg("--config").arg(env.config()).arg("hook");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 1 << 20,
                rlim_max: 1 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = c.output().unwrap();
    assert_reported(&env, &o, 1, ".tar.gz.partial");
    assert!(local_archives(&env).is_empty());
}

#[test]
fn a_hook_whose_source_is_missing_reports_it() {
    let env = Env::new();
    env.write_config(&reporting(&env));
    let o = env.run(&["hook"]);
    assert_reported(&env, &o, 1, "does not exist");
}

#[test]
fn a_hook_whose_database_is_down_reports_it() {
    let env = Env::new();
    std::fs::write(
        env.config(),
        format!(
            r#"[local]
dir = "backups"

[[sources]]
name = "db"
kind = "postgres"
url = "postgresql://pronto@127.0.0.1:{}/postgres"

[[remotes]]
name = "nas"
url = "file://{}"
{}"#,
            closed_port(),
            env.remote().display(),
            reporting(&env)
        ),
    )
    .unwrap();
    let o = env.run(&["hook"]);
    assert_reported(&env, &o, 1, "backup   FAILED");
    assert!(local_archives(&env).is_empty());
}

#[test]
fn a_hook_whose_every_remote_is_down_reports_it() {
    let env = Env::new();
    source(&env);
    env.write_config(&reporting(&env));
    // A plain file where the remote folder should be: the remote cannot be written.
    std::fs::write(env.remote(), "not a folder").unwrap();
    let o = env.run(&["hook"]);
    assert_reported(&env, &o, 3, "push FAILED to nas");
}

/// A failed notification never hides the run's own error: the code stays the run's.
#[test]
fn a_failing_notification_keeps_a_failed_runs_exit_code() {
    let env = Env::new();
    source(&env);
    env.write_config(
        r#"
[notify]
command = ["false"]
on = ["failure", "success"]
"#,
    );
    std::fs::write(env.remote(), "not a folder").unwrap();
    let o = env.run(&["hook"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("command false failed"),
        "{}",
        text(&o)
    );
}

fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
