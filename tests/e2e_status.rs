//! `status` through the binary: exit 0 on fresh archives, 5 on stale ones, a lagging
//! or unreachable remote, or no archive at all; `--json`.

mod support;

use std::time::Duration;

use support::{text, Env};

fn source(env: &Env) {
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/index.html"), "<h1>pronto</h1>\n".repeat(50)).unwrap();
}

fn status_json(env: &Env, args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["status", "--json"];
    a.extend_from_slice(args);
    let o = env.run(&a);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    (o.status.code().unwrap(), v)
}

#[test]
fn fresh_archives_exit_0_and_stale_ones_exit_5() {
    let env = Env::new();
    source(&env);
    env.write_config("");
    let o = env.run(&["hook"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let o = env.run(&["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("OK: the newest archive is less than 1d 2h old"),
        "{out}"
    );
    assert!(
        out.contains("remote   nas (") && out.contains("ago"),
        "{out}"
    );
    assert!(
        out.contains("policy   daily=7, weekly=4, monthly=12, yearly=forever"),
        "{out}"
    );

    let (code, v) = status_json(&env, &[]);
    assert_eq!(code, 0);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["max_age_seconds"], 26 * 3600);
    assert_eq!(v["local"]["archives"], 1);
    let size = v["local"]["newest"]["size"].as_u64().unwrap();
    assert!(size > 0);
    let tiers: Vec<(&str, u64)> = v["local"]["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["tier"].as_str().unwrap(), t["count"].as_u64().unwrap()))
        .collect();
    // The only archive is filed by its strongest reason (yearly#1).
    assert_eq!(
        tiers,
        [("top", 0), ("weekly", 0), ("monthly", 0), ("yearly", 1)]
    );
    assert_eq!(v["remotes"][0]["name"], "nas");
    assert_eq!(v["remotes"][0]["archives"], 1);
    assert_eq!(v["remotes"][0]["lag_seconds"], 0);
    assert_eq!(v["remotes"][0]["newest"]["id"], v["local"]["newest"]["id"]);
    assert!(v["disk"]["free_bytes"].as_u64().unwrap() > 0);
    let steady = &v["steady_state"];
    assert_eq!(steady["median_archive_size"].as_u64(), Some(size));
    let n = steady["archives"].as_u64().unwrap();
    assert!((20..=30).contains(&n), "{steady}");
    assert_eq!(steady["bytes"].as_u64(), Some(n * size));
    assert_eq!(steady["fits_on_disk"], true);
    assert_eq!(v["last_run"]["status"], "success");

    // Stale: the same archive, judged against a max age it has outgrown.
    std::thread::sleep(Duration::from_millis(2100));
    let o = env.run(&["status", "--max-age", "1s"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("STALE: the newest local archive"),
        "{}",
        text(&o)
    );

    // The default comes from [status] max_age.
    env.write_config("\n[status]\nmax_age = \"1s\"\n");
    let (code, v) = status_json(&env, &[]);
    assert_eq!(code, 5);
    assert_eq!(v["status"], "stale");
    assert_eq!(v["max_age_seconds"], 1);
}

#[test]
fn a_lagging_remote_exits_5() {
    let env = Env::new();
    source(&env);
    env.write_config("");
    assert!(env.run(&["hook"]).status.success());
    std::thread::sleep(Duration::from_millis(4100));
    // A new local archive that was never pushed: the remote is 4s behind.
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "{}", text(&o));
    let (code, v) = status_json(&env, &["--max-age", "3s"]);
    assert_eq!(code, 5, "{v}");
    let problems: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("remote nas lags"), "{problems:?}");
    assert!(v["remotes"][0]["lag_seconds"].as_i64().unwrap() >= 4);
    // With a wider max age it is fine again.
    let (code, _) = status_json(&env, &["--max-age", "1h"]);
    assert_eq!(code, 0);
}

#[test]
fn no_archive_or_an_unreachable_remote_exits_5() {
    let env = Env::new();
    env.write_config("");
    let (code, v) = status_json(&env, &[]);
    assert_eq!(code, 5);
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("no complete archive"),
        "{v}"
    );
    assert!(v["local"]["newest"].is_null());
    // Sizes are unknown without archives; the keeper count is not.
    assert!(v["steady_state"]["bytes"].is_null());
    assert!(v["steady_state"]["archives"].as_u64().unwrap() > 0);

    source(&env);
    assert!(env.run(&["backup"]).status.success());
    let _ = std::fs::remove_dir_all(env.remote());
    std::fs::write(env.remote(), "a file where the remote folder should be").unwrap();
    let o = env.run(&["status"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("remote   nas: ERROR: could not be listed"),
        "{out}"
    );
    assert!(
        out.contains("STALE: remote nas could not be listed"),
        "{out}"
    );
}
