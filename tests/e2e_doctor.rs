//! `doctor` through the binary: all green on a good setup, one FAIL line with a fix for a
//! broken config, an unreachable remote and a missing source.

mod support;

use support::{text, Env};

#[test]
fn doctor_passes_on_a_good_setup_and_leaves_no_probe() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/a"), "a").unwrap();
    env.write_config("\n[log]\nfile = \"log/p.log\"\n[metrics]\ntextfile = \"m/p.prom\"\n");
    let o = env.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for check in [
        "config",
        "backup folder",
        "disk space",
        "source site",
        "remote nas",
        "remote nas write",
        "remote nas clock",
        "schedule",
        "log file",
        "metrics",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("ok    {check}:"))),
            "{check}: {out}"
        );
    }
    assert!(out.contains("checks passed"));
    assert!(
        out.contains(&format!(
            "ok    schedule: pronto-offsite is run from {}",
            env.schedule().display()
        )),
        "{out}"
    );

    // No schedule (a commented-out line does not count): that check fails, with the fix.
    std::fs::write(
        env.schedule(),
        "# 0 3 * * * root pronto-offsite -q hook
",
    )
    .unwrap();
    let o = env.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("FAIL  schedule: no cron table or systemd unit runs pronto-offsite")
            && out.contains("fix: schedule `pronto-offsite -q hook` nightly"),
        "{out}"
    );
    assert!(out.contains("1 of "), "{out}");
    // The cron table and the systemd units the docs ship are found as schedules.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for place in [examples.join("cron"), examples.join("systemd")] {
        let o = env
            .cmd()
            .env("PRONTO_OFFSITE_SCHEDULE_PATHS", &place)
            .arg("doctor")
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}: {}",
            place.display(),
            text(&o)
        );
    }
    // The write probe was deleted again.
    assert!(
        support::names_in(&env.remote())
            .iter()
            .all(|n| n.starts_with('.')),
        "{:?}",
        support::names_in(&env.remote())
    );
}

#[test]
fn doctor_on_a_broken_config_exits_2_with_a_fix() {
    let env = Env::new();
    std::fs::write(env.config(), "[local]\ndir = \"b\"\nlevel = 12\n").unwrap();
    let o = env.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("FAIL  config:") && out.contains("local.level"),
        "{out}"
    );
    assert!(out.contains("      fix: "), "{out}");
}

#[test]
fn doctor_names_an_unreachable_remote_and_a_missing_source() {
    let env = Env::new();
    env.write_config("");
    std::fs::write(env.remote(), "a file where the remote folder should be").unwrap();
    let o = env.run(&["doctor", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let checks = v["checks"].as_array().unwrap();
    let get = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {v}"))
    };
    assert_eq!(get("config")["ok"], true);
    assert_eq!(get("remote nas")["ok"], false);
    assert!(
        get("remote nas")["detail"]
            .as_str()
            .unwrap()
            .contains("not a folder"),
        "{v}"
    );
    assert!(get("remote nas")["fix"].is_string());
    assert_eq!(get("source site")["ok"], false);
    assert!(get("source site")["fix"].as_str().unwrap().contains("path"));
    assert_eq!(v["failed"], 2);
}

/// With `command_prefix`, pg_dump runs inside the container: doctor checks the prefix's
/// program on the host, not pg_dump.
#[test]
fn doctor_checks_the_command_prefix_program_not_host_pg_dump() {
    let env = Env::new();
    env.write_config(
        "\n[[sources]]\nname = \"db\"\nkind = \"postgres\"\ndatabases = [\"app\"]\n\
         command_prefix = [\"/nonexistent/docker\", \"compose\", \"exec\", \"-T\", \"postgres\"]\n",
    );
    let o = env.run(&["doctor", "--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(!names.contains(&"tool pg_dump"), "{v}");
    let prefix = checks
        .iter()
        .find(|c| c["name"] == "tool /nonexistent/docker")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(prefix["ok"], false, "{v}");
    assert!(
        prefix["detail"]
            .as_str()
            .unwrap()
            .contains("command_prefix"),
        "{v}"
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// A restore killed in the middle of replacing a live folder leaves a copy beside it:
/// doctor names it, and the next restore of that folder clears it; a restore that
/// finishes leaves none.
#[test]
fn doctor_lists_what_an_interrupted_restore_left_beside_a_source() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/a"), "a").unwrap();
    env.write_config("");
    let o = env.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // A full restore replaces the live folder and leaves nothing beside it.
    let o = env.run(&["backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    std::fs::write(env.path("src/a"), "changed").unwrap();
    let o = env.run(&["pull", "latest", "--restore", "--only", "static_content"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(env.path("src/a")).unwrap(), "a");
    let beside: Vec<String> = support::names_in(env.dir.path())
        .into_iter()
        .filter(|n| n.contains(".pronto-"))
        .collect();
    assert!(beside.is_empty(), "left beside the live folder: {beside:?}");

    // What a kill between the steps of a two-rename swap leaves.
    let left = env.path(".src.pronto-old-4242");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("a"), "old").unwrap();
    let o = env.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("source site restore leftovers")
            && out.contains(&left.display().to_string())
            && out.contains("pull --restore"),
        "{out}"
    );
    let o = env.run(&["pull", "latest", "--restore", "--only", "static_content"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!left.exists(), "the next restore cleared the leftover");
    let o = env.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
