//! The sync engine with several remotes: one broken remote never stops the others,
//! and the run says so with exit 3 and a per-remote report.

mod support;

use support::{fabricate, text, Env};

fn backup_id(env: &Env) -> String {
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn source(env: &Env) {
    std::fs::create_dir_all(env.path("src/sub")).unwrap();
    std::fs::write(env.path("src/a.txt"), "alpha\n").unwrap();
    std::fs::write(env.path("src/sub/b.txt"), "beta\n".repeat(1000)).unwrap();
}

/// Two more file:// remotes beside `nas`: `broken` (its root is a plain file) and `usb`.
fn three_remotes(env: &Env) {
    std::fs::write(env.path("not-a-folder"), "x").unwrap();
    env.write_config(&format!(
        r#"
[[remotes]]
name = "broken"
url = "file://{}"

[[remotes]]
name = "usb"
url = "file://{}"
"#,
        env.path("not-a-folder").display(),
        env.path("usb").display()
    ));
}

#[test]
fn one_broken_remote_others_complete_exit_3() {
    let env = Env::new();
    source(&env);
    three_remotes(&env);
    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");

    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    for dir in [env.remote(), env.path("usb")] {
        assert!(dir.join(&file).exists(), "{}: {}", dir.display(), text(&o));
        assert!(dir.join(format!("{file}.manifest.json")).exists());
    }
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("nas: uploaded 1"), "{}", text(&o));
    assert!(out.contains("usb: uploaded 1"), "{}", text(&o));
    assert!(out.contains("broken: FAILED:"), "{}", text(&o));
    assert!(
        out.contains("is not a folder"),
        "the reason is named: {}",
        text(&o)
    );
    // The report lists remotes in config order, whatever order they finished in.
    let nas = out.find("nas: uploaded").unwrap();
    let broken = out.find("broken: FAILED").unwrap();
    let usb = out.find("usb: uploaded").unwrap();
    assert!(nas < broken && broken < usb, "{out}");

    // JSON: one entry per remote, the broken one with its error.
    let o = env.run(&["push", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = v.to_string();
    assert!(s.contains("broken") && s.contains("is not a folder"), "{s}");

    // Fix the broken remote: the next push completes it and exits 0.
    std::fs::remove_file(env.path("not-a-folder")).unwrap();
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(env.path("not-a-folder").join(&file).exists());
}

#[test]
fn every_remote_failing_is_exit_1() {
    let env = Env::new();
    source(&env);
    std::fs::write(env.remote(), "x").unwrap();
    env.write_config("");
    backup_id(&env);
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nas: FAILED:"));
}

#[test]
fn many_remotes_all_complete() {
    let env = Env::new();
    source(&env);
    let mut extra = String::new();
    for i in 0..6 {
        extra.push_str(&format!(
            "\n[[remotes]]\nname = \"r{i}\"\nurl = \"file://{}\"\npart_concurrency = {}\n",
            env.path(&format!("r{i}")).display(),
            i + 1
        ));
    }
    env.write_config(&extra);
    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for i in 0..6 {
        let dir = env.path(&format!("r{i}"));
        assert!(dir.join(format!("{file}.manifest.json")).exists(), "r{i}");
    }
    assert!(env.remote().join(format!("{file}.manifest.json")).exists());
}

// ---- many hosts, one bucket ---------------------------------------------------------

const P: &str = "pronto-app-backup";
const IDS: [&str; 4] = [
    "20260101-010000",
    "20260102-010000",
    "20260103-010000",
    "20260104-010000",
];

/// `<tmp>/<host>.toml`: backups in `<tmp>/backups-<host>`, keep the last 2, one remote
/// `shared` at `<tmp>/bucket` under `host_id = <host>`.
fn host_config(env: &Env, host: &str) -> std::path::PathBuf {
    let p = env.path(&format!("{host}.toml"));
    std::fs::write(
        &p,
        format!(
            "[local]\ndir = \"backups-{host}\"\n\n[retention]\nlast = 2\nmax_delete_fraction = 1\n\n\
             [[remotes]]\nname = \"shared\"\nurl = \"file://{}\"\nhost_id = \"{host}\"\nretry_budget = \"1m\"\n",
            env.path("bucket").display()
        ),
    )
    .unwrap();
    p
}

fn as_host(cfg: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("pronto-offsite"));
    c.arg("--config").arg(cfg).args(args);
    c.env_remove("PRONTO_OFFSITE_CONFIG");
    c
}

fn archives_in(dir: &std::path::Path) -> Vec<String> {
    support::names_in(dir)
        .into_iter()
        .filter(|n| n.starts_with(P) && n.ends_with(".tar.gz"))
        .collect()
}

#[test]
fn two_hosts_push_and_prune_one_bucket_at_once_and_keep_to_their_namespaces() {
    let env = Env::new();
    let cfg1 = host_config(&env, "web1");
    let cfg2 = host_config(&env, "web2");
    // Same names on both hosts, different contents.
    for id in IDS {
        fabricate(&env.path("backups-web1"), id, "web1");
        fabricate(&env.path("backups-web2"), id, "web2");
    }
    // A legacy flat-layout archive at the bucket's root: no host's namespace holds it.
    fabricate(&env.path("bucket"), "20250101-000000", "old");

    // Both push (and prune their namespace) at the same time.
    let mut a = as_host(&cfg1, &["push"]);
    let b = as_host(&cfg2, &["push"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let a = a.output().unwrap();
    let b = b.wait_with_output().unwrap();
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert_eq!(b.status.code(), Some(0));

    let newest2: Vec<String> = IDS[2..]
        .iter()
        .map(|id| format!("{P}-{id}.tar.gz"))
        .collect();
    for h in ["web1", "web2"] {
        assert_eq!(
            archives_in(&env.path(&format!("bucket/{h}"))),
            newest2,
            "{h}"
        );
        // The right host's bytes: the copy matches this host's local archive.
        let f = &newest2[1];
        assert_eq!(
            std::fs::read(env.path(&format!("bucket/{h}/{f}"))).unwrap(),
            std::fs::read(env.path(&format!("backups-{h}/archive/yearly/{f}")))
                .or_else(|_| std::fs::read(env.path(&format!("backups-{h}/{f}"))))
                .unwrap()
        );
    }
    assert_eq!(
        archives_in(&env.path("bucket")),
        [format!("{P}-20250101-000000.tar.gz")]
    );

    // A prune of one host (forced) never touches the other's or the flat archive.
    let o = as_host(&cfg1, &["prune", "--force"]).output().unwrap();
    assert!(o.status.code() == Some(0), "{}", text(&o));
    assert_eq!(archives_in(&env.path("bucket/web2")), newest2);
    assert_eq!(archives_in(&env.path("bucket")).len(), 1);

    // `list` shows this host's archives only; `list --all-hosts` everyone's.
    let o = as_host(&cfg1, &["list", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let remote_ids: Vec<&str> = v["archives"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["remotes"]["shared"] == "complete")
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(remote_ids, IDS[2..], "{v}");

    let o = as_host(&cfg1, &["list", "--all-hosts", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut hosts: Vec<(String, String)> = v["archives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap().into(),
                r["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    hosts.sort();
    let want: Vec<(String, String)> =
        std::iter::once(("-".to_string(), "20250101-000000".to_string()))
            .chain(["web1", "web2"].iter().flat_map(|h| {
                IDS[2..]
                    .iter()
                    .map(move |id| (h.to_string(), id.to_string()))
            }))
            .collect();
    assert_eq!(hosts, want);
    let o = as_host(&cfg1, &["list", "--all-hosts"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("web2"),
        "{}",
        text(&o)
    );

    // Disaster recovery: a new machine (web3) restores web2's newest archive.
    let cfg3 = host_config(&env, "web3");
    let dest = env.path("restored");
    let o = as_host(
        &cfg3,
        &[
            "pull",
            "--host",
            "web2",
            "latest",
            "--to",
            dest.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let info =
        std::fs::read_to_string(dest.join(format!("{P}-{}/backup_info.txt", IDS[3]))).unwrap();
    assert!(info.contains("of web2"), "{info}");
    // Without --host, web3's own (empty) namespace has nothing.
    let o = as_host(
        &cfg3,
        &["pull", "latest", "--to", env.path("r2").to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let o = as_host(&cfg3, &["pull", "--host", "../etc", "latest"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `host_id = "-"` (how the flat layout is shown) and ids that read as options are
/// refused; `pull --host -` reaches the flat-layout archive `list --all-hosts` shows as
/// host `-`; a host without archives is said to have none, plainly.
#[test]
fn host_dash_is_the_flat_layout_never_a_host_id() {
    let env = Env::new();
    for bad in ["-", "-web1", "--"] {
        let cfg = host_config(&env, "web1");
        let text_cfg = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("host_id = \"web1\"", &format!("host_id = \"{bad}\""));
        std::fs::write(&cfg, text_cfg).unwrap();
        let o = as_host(&cfg, &["list"]).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("remotes[0].host_id"),
            "{bad}: {}",
            text(&o)
        );
    }

    let cfg = host_config(&env, "web1");
    fabricate(&env.path("bucket"), "20250101-000000", "old");
    fabricate(&env.path("bucket/web2"), IDS[0], "web2");
    let o = as_host(&cfg, &["list", "--all-hosts", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["archives"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["host"] == "-" && r["id"] == "20250101-000000"),
        "{v}"
    );

    // What list shows as host `-`, pull --host - fetches, into hosts/-/.
    let o = as_host(&cfg, &["pull", "--host", "-", "20250101-000000"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let got = env.path(&format!("backups-web1/hosts/-/{P}-20250101-000000.tar.gz"));
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(env.path(&format!("bucket/{P}-20250101-000000.tar.gz"))).unwrap()
    );

    // A host with no archives: said so, with where to look.
    let o = as_host(&cfg, &["pull", "--host", "web9", "latest"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("host 'web9' has no archives on shared") && err.contains("list --all-hosts"),
        "{}",
        text(&o)
    );
}

#[test]
fn host_id_and_retry_budget_are_validated() {
    let env = Env::new();
    source(&env);
    env.write_config("host_id = \"a/b\"\n");
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("host_id"),
        "{}",
        text(&o)
    );
    env.write_config("retry_budget = \"soon\"\n");
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("retry_budget"),
        "{}",
        text(&o)
    );
}

// ---- bandwidth limits ---------------------------------------------------------------

/// 400 KiB that gzip cannot shrink.
fn incompressible(env: &Env) {
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/noise.bin"), support::noise(400 * 1024, 3)).unwrap();
}

/// What the limiter recorded for the remote at `dir` (its debug lines, `-v`): the size of
/// every body it metered and the rate it metered it at.
fn metered(o: &std::process::Output, dir: &std::path::Path) -> Vec<(u64, u64)> {
    let err = String::from_utf8_lossy(&o.stderr);
    let tag = format!("bwlimit file://{}: ", dir.display());
    err.lines()
        .filter_map(|l| l.split_once(&tag).map(|(_, rest)| rest))
        .map(|rest| {
            let w: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!((w[1], w[2], w[4]), ("bytes", "at", "B/s"), "{rest}");
            (w[0].parse().unwrap(), w[3].parse().unwrap())
        })
        .collect()
}

/// Bytes of the archive `id` and its manifest in `dir`: what a push sends there.
/// What a first push to the remote folder `dir` sent: the archive, its manifest and the
/// remote's marker (src/marker.rs).
fn pushed_bytes(dir: &std::path::Path, id: &str) -> u64 {
    let file = format!("pronto-app-backup-{id}.tar.gz");
    [
        file.clone(),
        format!("{file}.manifest.json"),
        ".pronto-offsite-remote".into(),
    ]
    .iter()
    .map(|n| std::fs::metadata(dir.join(n)).unwrap().len())
    .sum()
}

/// The evidence is the limiter's own record, not a stopwatch: every byte sent to a limited
/// remote is metered at its rate (the flag's, else the key's), an unlimited one is not
/// metered at all. That the limiter then spaces the bytes at that rate is its unit test, on
/// tokio's paused clock (`bwlimit::tests`).
#[test]
fn bwlimit_flag_and_key_meter_every_byte_at_their_rate() {
    let env = Env::new();
    incompressible(&env);
    // `nas` has a timetable that is off all day: no limit of its own.
    env.write_config("bwlimit = \"00:00-24:00 off\"\n");
    let id = backup_id(&env);

    // The flag replaces it: 100 KiB/s, for all of the archive and its manifest.
    let o = env.run(&["-v", "push", "--bwlimit", "100KiB", "--no-prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let nas = metered(&o, &env.remote());
    assert!(nas.iter().all(|&(_, rate)| rate == 100 * 1024), "{nas:?}");
    let sent: u64 = nas.iter().map(|&(n, _)| n).sum();
    assert_eq!(sent, pushed_bytes(&env.remote(), &id), "{}", text(&o));

    // The key, a rate, on a second remote; a third without one is not metered, and
    // neither is `nas` (off all day, nothing left to send anyway).
    env.write_config(&format!(
        "bwlimit = \"00:00-24:00 off\"\n\n[[remotes]]\nname = \"slow\"\nurl = \"file://{}\"\nbwlimit = \"200KiB\"\n\n[[remotes]]\nname = \"usb\"\nurl = \"file://{}\"\n",
        env.path("slow").display(),
        env.path("usb").display()
    ));
    let o = env.run(&["-v", "push", "--no-prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let slow = metered(&o, &env.path("slow"));
    assert!(slow.iter().all(|&(_, rate)| rate == 200 * 1024), "{slow:?}");
    let sent: u64 = slow.iter().map(|&(n, _)| n).sum();
    assert_eq!(sent, pushed_bytes(&env.path("slow"), &id), "{}", text(&o));
    assert_eq!(metered(&o, &env.path("usb")), [], "{}", text(&o));
    assert_eq!(metered(&o, &env.remote()), [], "{}", text(&o));
    assert!(env
        .path("usb")
        .join(format!("pronto-app-backup-{id}.tar.gz"))
        .exists());

    env.write_config("bwlimit = \"fast\"\n");
    let o = env.run(&["push"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = env.run(&["push", "--bwlimit", "08:00-18:00"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// Evidence by order of events, not by a clock: when `usb` (unlimited) has its manifest,
/// the push is still running and `nas` (1 KiB/s, first in the config) has none.
#[test]
fn a_slow_remote_does_not_hold_up_the_others() {
    let env = Env::new();
    incompressible(&env);
    // `nas` (first in the config) crawls at 1 KiB/s; `usb` after it is unlimited.
    env.write_config(&format!(
        "bwlimit = \"1KiB\"\n\n[[remotes]]\nname = \"usb\"\nurl = \"file://{}\"\n",
        env.path("usb").display()
    ));
    let id = backup_id(&env);
    let manifest = format!("pronto-app-backup-{id}.tar.gz.manifest.json");
    let mut child = as_host(&env.config(), &["push"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until usb has its manifest or the push ends (at 1 KiB/s, ~7 minutes: usb waited).
    let ended = loop {
        if env.path("usb").join(&manifest).exists() {
            break None;
        }
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(ended, None, "the push ended before usb had its manifest");
    let nas_done = env.remote().join(&manifest).exists();
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!nas_done, "usb waited for nas");
    assert!(still_running, "nas is still going");
}

// ---- the prune lease ----------------------------------------------------------------

#[test]
fn a_held_prune_lease_stops_a_second_prune_and_a_stale_one_is_taken_over() {
    let env = Env::new();
    env.write_config("\n[retention]\nlast = 2\nmax_delete_fraction = 1\n");
    for id in IDS {
        fabricate(&env.backups(), id, "h");
        fabricate(&env.remote(), id, "h");
    }
    let lease = env.remote().join("pronto-app-backup.prune-lease.json");
    let now = chrono::Utc::now();
    let held = |expires: chrono::DateTime<chrono::Utc>| {
        serde_json::json!({"host": "web9", "pid": 4242, "started": now.to_rfc3339(), "expires": expires.to_rfc3339()})
            .to_string()
    };
    std::fs::write(&lease, held(now + chrono::TimeDelta::minutes(10))).unwrap();

    let o = env.run(&["prune", "--remote", "nas"]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let all = text(&o);
    assert!(all.contains("another prune holds the lease"), "{all}");
    assert!(all.contains("web9") && all.contains("4242"), "{all}");
    assert_eq!(archives_in(&env.remote()).len(), 4, "nothing deleted");
    assert!(lease.exists(), "someone else's lease is left alone");
    // Uploads never take it.
    let o = env.run(&["push", "--no-prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Expired (that prune was killed): taken over, the prune runs, the lease is gone.
    std::fs::write(&lease, held(now - chrono::TimeDelta::minutes(1))).unwrap();
    let o = env.run(&["prune", "--remote", "nas"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("stale prune lease"), "{}", text(&o));
    assert_eq!(archives_in(&env.remote()).len(), 2);
    assert!(!lease.exists());
}
