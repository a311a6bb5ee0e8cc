//! Database restores that never destroy without a copy and never claim success they
//! did not have (issue 23), against the real PostgreSQL and Redis servers the suite
//! starts (tests/support/pg.rs, tests/support/redis.rs). Missing server binaries fail
//! these tests; they are never skipped.

#[path = "support/pg.rs"]
mod pg;
#[path = "support/redis.rs"]
mod redis;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use pg::Pg;
use redis::Redis;
use support::{names_in, text, Env};

const PG_PASSWORD: &str = "pg-Secret-5b21d0";
const REDIS_PASSWORD: &str = "redis-Secret-9c3e77";

fn pg_source(pg: &Pg, extra: &str) -> String {
    format!(
        "[[sources]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"{}\"\npassword_file = \"pg.pass\"\n{extra}\n",
        pg.url("pronto")
    )
}

fn redis_source(r: &Redis, data_dir: &std::path::Path, start_command: &str) -> String {
    format!(
        "[[sources]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\npassword_file = \"redis.pass\"\n\
         data_dir = \"{}\"\nstop_command = \"{}\"\nstart_command = \"{}\"\n",
        r.port,
        data_dir.display(),
        r.stop_command().replace('"', "\\\""),
        start_command.replace('"', "\\\"")
    )
}

fn write_config(env: &Env, body: &str) {
    let text = format!(
        "[local]\ndir = \"backups\"\n\n[[remotes]]\nname = \"nas\"\nurl = \"file://{}\"\n\n{body}",
        env.remote().display()
    );
    std::fs::write(env.config(), text).unwrap();
    for (f, pw) in [("pg.pass", PG_PASSWORD), ("redis.pass", REDIS_PASSWORD)] {
        std::fs::write(env.path(f), format!("{pw}\n")).unwrap();
        std::fs::set_permissions(
            env.path(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
}

fn run_ok(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    let t = text(&o);
    assert!(o.status.success(), "{args:?} failed: {t}");
    assert!(
        !t.contains(PG_PASSWORD) && !t.contains(REDIS_PASSWORD),
        "{t}"
    );
    t
}

fn backup(env: &Env) -> String {
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Archive ids in the backup folder (the top and the tier folders), oldest first.
fn local_ids(env: &Env) -> Vec<String> {
    let mut v = Vec::new();
    for dir in ["", "archive/weekly", "archive/monthly", "archive/yearly"] {
        for n in names_in(&env.backups().join(dir)) {
            if let Some(id) = n
                .strip_prefix("pronto-app-backup-")
                .and_then(|n| n.strip_suffix(".tar.gz"))
            {
                v.push(id.to_string());
            }
        }
    }
    v.sort();
    v
}

fn spool_left(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.backups())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".spool-"))
                .collect()
        })
        .unwrap_or_default()
}

fn base_postgres(pg: &Pg) {
    pg.script(
        "postgres",
        &format!(
            "CREATE ROLE pronto LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}';\nCREATE DATABASE pronto;\n"
        ),
    );
    pg.script(
        "pronto",
        "CREATE TABLE customers (id int PRIMARY KEY, name text);\n\
         INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 500) g;\n\
         CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers(id), total numeric);\n\
         INSERT INTO orders SELECT g, 1 + g % 500, g / 3.0 FROM generate_series(1, 2000) g;\n",
    );
}

fn fingerprint(pg: &Pg, db: &str) -> BTreeMap<String, String> {
    pg.fingerprint(db)
}

/// `--target-db` into a database that holds tables is refused (exit 2, naming the flag
/// that allows it) and leaves it untouched; with `--replace-target-db` it is saved in the
/// safety backup first, and that backup brings it back. The README's example
/// (`--target-db NAME` with the default database list) works.
#[test]
fn target_db_never_replaces_a_database_without_asking_and_a_copy() {
    let pg = Pg::start();
    base_postgres(&pg);
    let env = Env::new();
    // The default database list: every database (here postgres and pronto).
    write_config(&env, &pg_source(&pg, ""));
    let id = backup(&env);
    let at_backup = fingerprint(&pg, "pronto");
    pg.script("postgres", "CREATE DATABASE pronto_copy;\n");
    pg.script(
        "pronto_copy",
        "CREATE TABLE orders (id int PRIMARY KEY, note text);\n\
         INSERT INTO orders VALUES (1, 'someone else''s work');\n\
         CREATE TABLE notes (n text);\nINSERT INTO notes VALUES ('keep me');\n",
    );
    let copy_before = fingerprint(&pg, "pronto_copy");

    // Into an existing, non-empty database: refused, nothing changed, no safety backup.
    let o = env.run(&["pull", &id, "--restore", "--target-db", "pronto_copy"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("pronto_copy already exists"), "{t}");
    assert!(t.contains("--replace-target-db"), "{t}");
    assert_eq!(fingerprint(&pg, "pronto_copy"), copy_before);
    assert_eq!(local_ids(&env), vec![id.clone()]);

    // The README's example, with the default database list: beside the live one.
    pg.script("pronto", "DELETE FROM orders WHERE id > 1000;");
    let out = run_ok(
        &env,
        &["pull", &id, "--restore", "--target-db", "pronto_restored"],
    );
    assert!(out.contains("restoring database pronto"), "{out}");
    assert_eq!(fingerprint(&pg, "pronto_restored"), at_backup);

    // Only the listed database in the config now: the safety backup must add the target.
    write_config(&env, &pg_source(&pg, "databases = [\"pronto\"]"));
    let out = run_ok(
        &env,
        &[
            "pull",
            &id,
            "--restore",
            "--target-db",
            "pronto_copy",
            "--database",
            "pronto",
            "--replace-target-db",
        ],
    );
    let safety = local_ids(&env).pop().expect("a safety backup");
    assert!(
        out.contains(&format!("what it replaced is in safety backup {safety}")),
        "{out}"
    );
    assert_eq!(fingerprint(&pg, "pronto_copy"), at_backup, "{out}");
    // The safety backup holds pronto_copy as it was, and brings it back.
    let out = run_ok(
        &env,
        &[
            "pull",
            &safety,
            "--restore",
            "--no-safety-backup",
            "--target-db",
            "copy_back",
            "--database",
            "pronto_copy",
        ],
    );
    assert_eq!(fingerprint(&pg, "copy_back"), copy_before, "{out}");
}

fn role_state(pg: &Pg, role: &str) -> String {
    pg.psql(
        "postgres",
        &format!(
            "SELECT rolcanlogin || ' ' || rolcreatedb || ' ' || coalesce(rolpassword, '-') || ' ' || \
             coalesce((SELECT string_agg(r.rolname, ',' ORDER BY r.rolname) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE m.member = a.oid), '') \
             FROM pg_authid a WHERE rolname = '{role}'"
        ),
    )
    .trim()
    .to_string()
}

/// A restore creates missing roles and leaves existing ones exactly as they are: a
/// password rotated and a login disabled after the backup stay so; `--reset-roles`
/// sets them to the backup's state.
#[test]
fn restoring_roles_keeps_a_rotated_password_and_a_disabled_login() {
    let pg = Pg::start();
    base_postgres(&pg);
    pg.script(
        "postgres",
        "CREATE ROLE readers NOLOGIN;\n\
         CREATE ROLE reporting LOGIN PASSWORD 'reporting-old';\n\
         GRANT readers TO reporting;\n\
         CREATE ROLE gone LOGIN CREATEDB PASSWORD 'gone-pass';\n\
         GRANT readers TO gone;\n",
    );
    let env = Env::new();
    write_config(&env, &pg_source(&pg, "databases = [\"pronto\"]"));
    let id = backup(&env);
    let gone_at_backup = role_state(&pg, "gone");
    let reporting_at_backup = role_state(&pg, "reporting");

    // After the backup: the password is rotated, the login disabled, a membership
    // revoked; a role is dropped.
    pg.script(
        "postgres",
        "ALTER ROLE reporting PASSWORD 'reporting-rotated' NOLOGIN;\n\
         REVOKE readers FROM reporting;\nDROP ROLE gone;\n",
    );
    let reporting_now = role_state(&pg, "reporting");
    assert_ne!(reporting_now, reporting_at_backup);

    let out = run_ok(&env, &["pull", &id, "--restore", "--only", "postgres"]);
    assert_eq!(role_state(&pg, "reporting"), reporting_now, "{out}");
    assert_eq!(role_state(&pg, "gone"), gone_at_backup, "{out}");
    assert!(out.contains("created roles gone"), "{out}");
    assert!(out.contains("exactly as they are"), "{out}");
    assert!(out.contains("reporting"), "{out}");

    // Asked for explicitly: back to the backup's state.
    let out = run_ok(
        &env,
        &[
            "pull",
            &id,
            "--restore",
            "--only",
            "postgres",
            "--reset-roles",
        ],
    );
    assert_eq!(role_state(&pg, "reporting"), reporting_at_backup, "{out}");
    assert!(out.contains("reset"), "{out}");
}

/// A Redis restore refuses, before stopping anything, when the server does not read the
/// file it would write; and a load that comes back with fewer keys than the snapshot
/// fails with the safety backup named.
#[test]
fn redis_restore_checks_the_servers_files_and_the_loaded_key_count() {
    let r = Redis::start(Some(REDIS_PASSWORD));
    r.cli(&[
        "EVAL",
        "for i = 1, 500 do redis.call('SET', 'k' .. i, i) end return 1",
        "0",
    ]);
    let env = Env::new();
    let elsewhere = env.path("not-the-redis-dir");
    std::fs::create_dir(&elsewhere).unwrap();
    write_config(&env, &redis_source(&r, &elsewhere, &r.start_command()));
    let id = backup(&env);

    // data_dir is not the server's dir: refused, nothing stopped, no safety backup.
    let o = env.run(&["pull", &id, "--restore"]);
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("CONFIG GET dir"), "{t}");
    assert!(t.contains(&r.data_dir().display().to_string()), "{t}");
    assert_eq!(r.cli(&["PING"]).trim(), "PONG", "{t}");
    assert_eq!(local_ids(&env), vec![id.clone()]);
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());

    // The right dir, but the server comes back reading another file: 0 of 500 keys.
    let other_file = format!("{} --dbfilename other.rdb", r.start_command());
    write_config(&env, &redis_source(&r, &r.data_dir(), &other_file));
    let o = env.run(&["pull", &id, "--restore"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("loaded 0 keys"), "{t}");
    assert!(!t.contains("restore complete"), "{t}");
    let safety = local_ids(&env)
        .into_iter()
        .find(|i| *i != id)
        .expect("a safety backup");
    assert!(t.contains(&format!("safety backup {safety}")), "{t}");
    let _ = Command::new("sh").arg("-c").arg(r.stop_command()).status();
}

/// A psql session as `postgres` that holds a lock until dropped; its backend pid.
struct Holder {
    child: std::process::Child,
    pid: String,
}

impl Holder {
    fn start(pg: &Pg, db: &str, sql: &str) -> Holder {
        let mut c = pg.psql_cmd(db);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "SELECT pg_backend_pid();\n{sql}\n\\echo locked").unwrap();
        stdin.flush().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let pid = lines.next().unwrap().unwrap().trim().to_string();
        for line in lines.by_ref() {
            if line.unwrap().trim() == "locked" {
                break;
            }
        }
        // Keep stdin open (the transaction stays open) by leaking it into the child.
        std::mem::forget(stdin);
        Holder { child, pid }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn our_sessions(pg: &Pg) -> String {
    pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pronto-offsite%'",
    )
    .trim()
    .to_string()
}

/// A session holding an ACCESS EXCLUSIVE lock makes the backup fail after
/// `lock_timeout`, naming the blocker's pid; no spool folder and no session of ours is
/// left behind. An idle transaction holding a table makes the restore fail the same way.
#[test]
fn lock_waits_are_bounded_and_name_the_blocking_session() {
    let pg = Pg::start();
    base_postgres(&pg);
    let env = Env::new();
    write_config(
        &env,
        &pg_source(&pg, "databases = [\"pronto\"]\nlock_timeout = \"1s\""),
    );
    let id = backup(&env);

    let holder = Holder::start(
        &pg,
        "pronto",
        "BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE;",
    );
    let o = env.run(&["backup"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(&format!("pid {}", holder.pid)), "{t}");
    assert!(t.contains("LOCK TABLE orders"), "{t}");
    assert!(t.contains("lock_timeout"), "{t}");
    assert_eq!(spool_left(&env), Vec::<String>::new(), "{t}");
    assert_eq!(local_ids(&env), vec![id.clone()], "{t}");
    let mut left = our_sessions(&pg);
    for _ in 0..100 {
        if left == "0" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = our_sessions(&pg);
    }
    assert_eq!(left, "0", "sessions of ours left behind");
    drop(holder);

    // An idle-in-transaction reader blocks pg_restore --clean: bounded too.
    let holder = Holder::start(&pg, "pronto", "BEGIN; SELECT count(*) FROM customers;");
    let o = env.run(&["pull", &id, "--restore", "--no-safety-backup"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(&format!("pid {}", holder.pid)), "{t}");
    assert!(t.contains("idle in transaction"), "{t}");
}

/// The drill judges only the archive: inherited `REDISCLI_AUTH`/`PG*` variables meant for
/// the live servers do not reach its throwaway servers, and a table in a tablespace
/// restores there without the live server's tablespace folder.
#[test]
fn the_drill_ignores_the_shells_credentials_and_tablespaces() {
    let pg = Pg::start();
    base_postgres(&pg);
    let ts: PathBuf = pg.dir.path().join("tablespace");
    std::fs::create_dir(&ts).unwrap();
    let _ = Command::new("chown")
        .arg("postgres:postgres")
        .arg(&ts)
        .status();
    pg.psql(
        "postgres",
        &format!("CREATE TABLESPACE fast LOCATION '{}'", ts.display()),
    );
    pg.script(
        "pronto",
        "CREATE TABLE hot (x int) TABLESPACE fast;\nINSERT INTO hot SELECT generate_series(1, 77);\n\
         CREATE SEQUENCE ticket START 5;\nSELECT setval('ticket', 42);\nSELECT lo_from_bytea(0, 'hello');\n",
    );
    let r = Redis::start(Some(REDIS_PASSWORD));
    r.cli(&["MSET", "a", "1", "b", "2"]);
    let env = Env::new();
    write_config(
        &env,
        &format!(
            "{}\n{}",
            pg_source(&pg, "databases = [\"pronto\"]"),
            redis_source(&r, &r.data_dir(), &r.start_command())
        ),
    );
    let id = backup(&env);
    run_ok(&env, &["push"]);
    let o = env
        .cmd()
        .args(["verify", &id, "--restore-test"])
        .env("REDISCLI_AUTH", "a-password-for-the-live-server")
        .env("PGPASSWORD", "a-password-for-the-live-server")
        .env("PGOPTIONS", "-c work_mem=not-a-size")
        .env("PGSSLMODE", "require")
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("restore test PASSED"), "{t}");
    assert!(t.contains("1 large objects, as in the dump"), "{t}");
    assert!(t.contains("1 sequence values, as in the dump"), "{t}");
    let _ = Command::new("sh").arg("-c").arg(r.stop_command()).status();
}

fn db_exists(pg: &Pg, db: &str) -> bool {
    pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    )
    .trim()
        == "1"
}

/// A backup says which databases and relations it leaves out, and dumps a database that
/// refuses connections when it is listed by name, closing it again afterwards.
#[test]
fn backups_name_what_they_leave_out_and_include_closed_databases_when_asked() {
    let pg = Pg::start();
    base_postgres(&pg);
    pg.script("postgres", "CREATE DATABASE frozen;");
    pg.script(
        "frozen",
        "CREATE TABLE f (x int);\nINSERT INTO f SELECT generate_series(1, 10);",
    );
    pg.psql("postgres", "ALTER DATABASE frozen ALLOW_CONNECTIONS false");
    pg.psql("pronto", "CREATE TABLE information_schema.hidden (x int)");
    let env = Env::new();
    write_config(&env, &pg_source(&pg, ""));
    let o = env.run(&["backup"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(
        t.contains("database frozen refuses connections (ALLOW_CONNECTIONS false), so it is NOT in this backup"),
        "{t}"
    );
    assert!(
        t.contains("information_schema.hidden is in a schema pg_dump leaves out"),
        "{t}"
    );

    // doctor says the same before any backup runs.
    let o = env.run(&["doctor"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains(
            "FAIL  postgres db: a backup would leave out: database frozen refuses connections"
        ),
        "{t}"
    );
    assert!(
        t.contains("information_schema.hidden is in a schema pg_dump leaves out"),
        "{t}"
    );

    // The drill notices what the archive lacks: the manifest knew the table.
    run_ok(&env, &["push"]);
    let o = env.run(&["verify", &id, "--restore-test"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(4), "{t}");
    assert!(
        t.contains("information_schema.hidden: manifest 0 rows, restored absent"),
        "{t}"
    );

    write_config(
        &env,
        &pg_source(&pg, "databases = [\"pronto\", \"frozen\"]"),
    );
    let o = env.run(&["backup"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("dumped frozen: 1 tables, 10 rows"), "{t}");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT datallowconn FROM pg_database WHERE datname = 'frozen'"
        )
        .trim(),
        "f"
    );
}

/// Failures say what to do: a loose password_file is refused with the chmod, a wrong
/// password names the configured file (not a temp file), a restore blocked by objects
/// made since the backup suggests --target-db, and a failed --create leaves nothing.
#[test]
fn database_failures_say_what_to_do_and_leave_nothing_half_built() {
    let pg = Pg::start();
    base_postgres(&pg);
    pg.script(
        "postgres",
        "CREATE ROLE owner_x NOLOGIN;\nGRANT ALL ON SCHEMA public TO owner_x;",
    );
    pg.script(
        "pronto",
        "CREATE TABLE owned (x int);\nALTER TABLE owned OWNER TO owner_x;",
    );
    let env = Env::new();
    write_config(
        &env,
        &pg_source(&pg, "databases = [\"pronto\"]\nglobals = false"),
    );
    let pass = env.path("pg.pass");

    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let o = env.run(&["backup"]);
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0), "{t}");
    assert!(t.contains(&format!("chmod 600 {}", pass.display())), "{t}");
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    std::fs::write(&pass, "not-the-password\n").unwrap();
    let o = env.run(&["backup"]);
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!("password_file {}", pass.display())),
        "{t}"
    );
    assert!(!t.contains(".pgpass-"), "{t}");
    std::fs::write(&pass, format!("{PG_PASSWORD}\n")).unwrap();

    let id = backup(&env);
    // A view made since the backup depends on a table the restore replaces.
    pg.psql("pronto", "CREATE VIEW recent AS SELECT * FROM customers");
    let o = env.run(&["pull", &id, "--restore", "--no-safety-backup"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("--target-db"), "{t}");
    assert_eq!(
        pg.psql("pronto", "SELECT count(*) FROM recent").trim(),
        "500"
    );

    // The owner role is gone (globals = false): pg_restore --create fails half way.
    pg.psql("postgres", "DROP DATABASE pronto");
    pg.psql("postgres", "DROP OWNED BY owner_x");
    pg.psql("postgres", "DROP ROLE owner_x");
    let o = env.run(&["pull", &id, "--restore", "--no-safety-backup"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("owner_x"), "{t}");
    assert!(t.contains("was dropped again"), "{t}");
    assert!(!db_exists(&pg, "pronto"), "{t}");
}
