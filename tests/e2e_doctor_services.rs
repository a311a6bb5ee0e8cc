//! `doctor` checks what the night needs from the services: a Redis that answers with a
//! readable data_dir (the one the server uses) and present stop/start programs passes;
//! a Redis that is down, a wrong data_dir, a missing stop program and a PostgreSQL that
//! does not answer each fail with a fix, in text and in `--json`.

#[path = "support/pg.rs"]
mod pg;
#[path = "support/redis.rs"]
mod redis;
mod support;

use redis::Redis;
use support::{text, Env};

#[test]
fn doctor_checks_redis_postgres_and_the_stop_start_programs() {
    let r = Redis::start(None);
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    let dead = pg::free_port();
    let elsewhere = env.path("not-the-data-dir");
    std::fs::create_dir_all(&elsewhere).unwrap();
    env.write_config(&format!(
        "\n[[sources]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\n\
         data_dir = \"{data}\"\nstop_command = \"{stop}\"\nstart_command = \"{start}\"\n\
         \n[[sources]]\nname = \"gone\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\n\
         data_dir = \"{elsewhere}\"\nstop_command = [\"no-such-tool-7f3a\", \"stop\"]\n\
         \n[[sources]]\nname = \"down\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{dead}\"\n\
         \n[[sources]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"postgresql://pronto@127.0.0.1:{dead}/postgres\"\n",
        port = r.port,
        data = r.data_dir().display(),
        stop = r.stop_command().replace('"', "\\\""),
        start = r.start_command().replace('"', "\\\""),
        elsewhere = elsewhere.display(),
    ));
    let o = env.run(&["doctor", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let status = |name: &str| -> bool {
        let c = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {}", text(&o)));
        assert!(c["ok"] == true || c["fix"].is_string(), "{c}");
        c["ok"] == true
    };
    assert!(status("redis cache"));
    assert!(status("redis cache data_dir"));
    assert!(status("redis cache stop_command") && status("redis cache start_command"));
    assert!(status("redis gone"));
    assert!(
        !status("redis gone data_dir"),
        "the server keeps its RDB elsewhere"
    );
    assert!(!status("redis gone stop_command"));
    assert!(!status("redis down"));
    assert!(!status("postgres db"));
    // Text output names the failure and the fix.
    let o = env.run(&["doctor"]);
    let out = support::stdout(&o);
    assert!(
        out.contains("FAIL  redis down:") && out.contains("fix: start the server"),
        "{out}"
    );
}

/// pg_dump refuses a server of a newer major version (issue 19): doctor compares the
/// `pg_dump --version` the backup would run with the server's version. The real pg_dump
/// against the real server passes; run through a `command_prefix` wrapper that reports
/// an old client (as an old postgresql-client package would), it fails with the fix.
#[test]
fn doctor_compares_pg_dump_with_the_server_version() {
    let pg = pg::Pg::start();
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    let wrapper = env.path("old-client.sh");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nif [ \"$1\" = pg_dump ] && [ \"$2\" = --version ]; then\n  echo 'pg_dump (PostgreSQL) 9.6.24'\n  exit 0\nfi\nexec \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bin = pg::bin_dir();
    let source = |extra: &str| {
        format!(
            "\n[[sources]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"{}\"\n{extra}\n",
            pg.url("postgres")
        )
    };
    let check = |o: &std::process::Output| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)));
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "postgres db pg_dump")
            .cloned()
            .unwrap_or_else(|| panic!("no pg_dump check: {}", text(o)))
    };
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    env.write_config(&source(""));
    let o = env
        .cmd()
        .env("PATH", &path)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let c = check(&o);
    assert_eq!(c["ok"], true, "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("can dump the server"),
        "{c}"
    );

    env.write_config(&source(&format!(
        "command_prefix = [\"{}\"]",
        wrapper.display()
    )));
    let o = env
        .cmd()
        .env("PATH", &path)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let c = check(&o);
    assert_eq!(c["ok"], false, "{c}");
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains("9.6.24") && detail.contains("older than the server"),
        "{c}"
    );
    assert!(
        c["fix"].as_str().unwrap().contains("postgresql-client-"),
        "{c}"
    );
}
