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
