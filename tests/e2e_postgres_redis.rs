//! End to end against real PostgreSQL and Redis servers started per test
//! (tests/support/pg.rs, tests/support/redis.rs): backup of live databases and a
//! live Redis, push to a file:// remote, disaster, `pull --restore`, and the drill
//! `verify --restore-test` catching tampered archives. Missing server binaries fail
//! these tests (scripts/test installs them); they are never skipped.

#[path = "support/pg.rs"]
mod pg;
#[path = "support/redis.rs"]
mod redis;
#[path = "../backends/tests/support/sshd.rs"]
mod sshd;
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg::Pg;
use redis::Redis;
use support::{names_in, snapshot, text, Env};

const PG_PASSWORD: &str = "pg-Secret-7f3a9c";
const REDIS_PASSWORD: &str = "redis-Secret-41d8e2";

/// The platform's data: two databases with awkward content, a role in globals.
fn fill_postgres(pg: &Pg) {
    pg.script(
        "postgres",
        &format!(
            "CREATE ROLE pronto LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}';\n\
             CREATE ROLE reporting LOGIN PASSWORD 'reporting-pass';\n\
             CREATE DATABASE pronto;\n\
             CREATE DATABASE analytics;\n"
        ),
    );
    pg.script(
        "pronto",
        r#"
        CREATE SEQUENCE invoice_no START 1000;
        CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, note text, avatar bytea, prefs jsonb);
        INSERT INTO customers (name, note, avatar, prefs)
          SELECT 'Kunde ' || g, 'Grüße aus Köln — 東京 ' || g || ' 🚀 ''quoted'' \backslash',
                 decode(md5(g::text), 'hex') || '\x00ff00'::bytea,
                 jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'ü', g % 3), 'nested', jsonb_build_object('x', g % 7))
          FROM generate_series(1, 3000) g;
        UPDATE customers SET note = NULL WHERE id % 100 = 0;
        CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers(id), total numeric(12,2),
                             invoice bigint DEFAULT nextval('invoice_no'), created timestamptz);
        INSERT INTO orders (customer_id, total, created)
          SELECT 1 + g % 3000, (g % 1000) / 7.0, '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 minute'
          FROM generate_series(1, 120000) g;
        CREATE VIEW big_orders AS SELECT id, customer_id, total FROM orders WHERE total > 100;
        GRANT SELECT ON big_orders TO reporting;
        CREATE SCHEMA "Ünïcode schema";
        CREATE TABLE "Ünïcode schema"."Tabelle mit Leerzeichen" (k text PRIMARY KEY, v jsonb);
        INSERT INTO "Ünïcode schema"."Tabelle mit Leerzeichen" VALUES ('ключ', '{"a": [1, 2, {"b": null}]}'), ('κλειδί', '"x"');
        CREATE TABLE empty_table (x int);
        "#,
    );
    pg.script(
        "analytics",
        "CREATE TABLE metrics (day date PRIMARY KEY, hits int, raw bytea);\n\
         INSERT INTO metrics SELECT '2025-01-01'::date + g, g * 17, decode(repeat('ab', g % 50), 'hex') FROM generate_series(0, 364) g;\n",
    );
}

/// Redis data of every kind in several databases, with TTLs.
fn fill_redis(r: &Redis) {
    let lua = |db: &str, script: &str| {
        r.cli(&["-n", db, "EVAL", script, "0"]);
    };
    lua(
        "0",
        "for i = 1, 500 do redis.call('SET', 'str:' .. i, 'value ' .. i .. ' ü') end \
         redis.call('SET', 'big', string.rep('0123456789', 20000)) \
         redis.call('SET', 'counter', 12345) \
         for i = 1, 10 do redis.call('HSET', 'hash:small', 'f' .. i, 'v' .. i) end \
         for i = 1, 2000 do redis.call('HSET', 'hash:big', 'field' .. i, string.rep('x', i % 100)) end \
         redis.call('RPUSH', 'list:small', 'a', 'b', 'c') \
         for i = 1, 10000 do redis.call('RPUSH', 'list:big', 'item' .. i) end \
         redis.call('SADD', 'set:ints', 1, 2, 3, 42) \
         redis.call('SADD', 'set:strs', 'x', 'y', 'ключ') \
         for i = 1, 1000 do redis.call('SADD', 'set:big', 'member' .. i) end \
         redis.call('ZADD', 'zset:small', 1, 'one', 2.5, 'two and a half') \
         for i = 1, 1000 do redis.call('ZADD', 'zset:big', i * 1.5, 'm' .. i) end \
         for i = 1, 50 do redis.call('SET', 'session:' .. i, 'tok' .. i, 'EX', 7200) end \
         redis.call('HSET', 'cart:ttl', 'sku', 3) redis.call('EXPIRE', 'cart:ttl', 7200) \
         redis.call('XADD', 'stream', '1-1', 'event', 'created') \
         redis.call('XADD', 'stream', '1-2', 'event', 'paid') \
         redis.call('XGROUP', 'CREATE', 'stream', 'workers', '0') \
         redis.call('XREADGROUP', 'GROUP', 'workers', 'w1', 'COUNT', 1, 'STREAMS', 'stream', '>') \
         return 1",
    );
    lua(
        "1",
        "for i = 1, 200 do redis.call('SET', 'db1:' .. i, i) end redis.call('LPUSH', 'queue', 'job1', 'job2') return 1",
    );
    lua(
        "5",
        "for i = 1, 30 do redis.call('SET', 'tmp:' .. i, i, 'EX', 3600 + i) end redis.call('SET', 'persist', 'yes') return 1",
    );
}

fn pg_source(pg: &Pg, extra: &str) -> String {
    format!(
        "[[sources]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"{}\"\npassword_file = \"pg.pass\"\n{extra}\n",
        pg.url("pronto")
    )
}

fn redis_source(r: &Redis) -> String {
    format!(
        "[[sources]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\npassword_file = \"redis.pass\"\n\
         data_dir = \"{}\"\nstop_command = \"{}\"\nstart_command = \"{}\"\n",
        r.port,
        r.data_dir().display(),
        r.stop_command().replace('"', "\\\""),
        r.start_command().replace('"', "\\\"")
    )
}

fn write_config(env: &Env, body: &str) {
    let remote = format!(
        "[[remotes]]\nname = \"nas\"\nurl = \"file://{}\"\n",
        env.remote().display()
    );
    write_config_with(env, &remote, body);
}

/// The config with `remote` (a `[[remotes]]` table) and `body`, and the password files.
fn write_config_with(env: &Env, remote: &str, body: &str) {
    let text = format!("[local]\ndir = \"backups\"\n\n{remote}\n{body}");
    std::fs::write(env.config(), text).unwrap();
    std::fs::write(env.path("pg.pass"), format!("{PG_PASSWORD}\n")).unwrap();
    std::fs::write(env.path("redis.pass"), format!("{REDIS_PASSWORD}\n")).unwrap();
    for f in ["pg.pass", "redis.pass"] {
        std::fs::set_permissions(
            env.path(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
}

fn run_ok(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    assert!(o.status.success(), "{args:?} failed: {}", text(&o));
    let t = text(&o);
    for secret in [PG_PASSWORD, REDIS_PASSWORD] {
        if let Some(i) = t.find(secret) {
            panic!(
                "{args:?} printed a password at {i}: {:?}",
                &t[i.saturating_sub(300)..(i + 100).min(t.len())]
            );
        }
    }
    t
}

fn backup(env: &Env) -> String {
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Where the archive of `id` is in the backup folder (the top, or a tier folder).
fn local_archive(env: &Env, id: &str) -> PathBuf {
    let file = format!("pronto-app-backup-{id}.tar.gz");
    for dir in ["", "archive/weekly", "archive/monthly", "archive/yearly"] {
        let p = env.backups().join(dir).join(&file);
        if p.exists() {
            return p;
        }
    }
    panic!("{file} is not in {}", env.backups().display());
}

fn manifest_path(env: &Env, id: &str) -> PathBuf {
    let a = local_archive(env, id);
    a.with_file_name(format!(
        "{}.manifest.json",
        a.file_name().unwrap().to_string_lossy()
    ))
}

fn manifest(env: &Env, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(manifest_path(env, id)).unwrap()).unwrap()
}

/// Archive ids in the backup folder, tiers included.
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

fn table_rows(m: &serde_json::Value, db: &str, table: &str) -> u64 {
    let dbs = m["postgres"][0]["databases"].as_array().unwrap();
    let d = dbs
        .iter()
        .find(|d| d["name"] == db)
        .unwrap_or_else(|| panic!("no {db} in {m}"));
    let t = d["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .unwrap();
    t["rows"].as_u64().unwrap()
}

/// The decompressed bytes of an archive (to look for secrets).
fn archive_bytes(path: &Path) -> Vec<u8> {
    let mut d = flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap());
    let mut v = Vec::new();
    d.read_to_end(&mut v).unwrap();
    v
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A tiny HTTP server answering 200 to every request (a health endpoint).
fn health_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    port
}

fn pg_state(pg: &Pg) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for db in ["pronto", "analytics"] {
        for (k, v) in pg.fingerprint(db) {
            all.insert(format!("{db}: {k}"), v);
        }
    }
    all.insert(
        "roles".into(),
        pg.psql("postgres", "SELECT string_agg(rolname || ':' || rolcanlogin || ':' || rolsuper, ',' ORDER BY rolname) FROM pg_roles WHERE rolname IN ('pronto','reporting')"),
    );
    all.insert(
        "grant".into(),
        pg.psql(
            "pronto",
            "SELECT has_table_privilege('reporting', 'big_orders', 'SELECT')",
        ),
    );
    all
}

fn assert_same(what: &str, before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    assert_eq!(
        before.len(),
        after.len(),
        "{what}: {} entries before, {} after",
        before.len(),
        after.len()
    );
    for (k, v) in before {
        assert_eq!(
            after.get(k),
            Some(v),
            "{what}: {k} differs after the restore"
        );
    }
}

#[test]
fn backup_push_disaster_then_pull_restore_brings_everything_back_identical() {
    let pg = Pg::start();
    fill_postgres(&pg);
    let r = Redis::start(Some(REDIS_PASSWORD));
    fill_redis(&r);
    let env = Env::new();
    let site = env.path("site");
    std::fs::create_dir_all(site.join("img")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>Pronto</h1>\n").unwrap();
    std::fs::write(site.join("img/logo.svg"), "<svg/>\n").unwrap();
    std::os::unix::fs::symlink("index.html", site.join("home.html")).unwrap();
    let http = health_server();
    write_config(
        &env,
        &format!(
            "{}{}\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"site\"\n\n\
             [[health_checks]]\nhttp = \"http://127.0.0.1:{http}/health\"\n\n\
             [[health_checks]]\nname = \"orders\"\nsql = \"SELECT COUNT(*) FROM orders\"\nsource = \"db\"\ndatabase = \"pronto\"\n",
            pg_source(&pg, ""),
            redis_source(&r)
        ),
    );
    let pg_before = pg_state(&pg);
    let pronto_before = pg.fingerprint("pronto");
    let redis_before = r.fingerprint(3000);
    assert_eq!(redis_before.len(), 795);
    let site_before = snapshot(&site);

    let id = backup(&env);
    let m = manifest(&env, &id);
    assert_eq!(table_rows(&m, "pronto", "orders"), 120_000);
    assert_eq!(table_rows(&m, "pronto", "customers"), 3_000);
    assert_eq!(table_rows(&m, "analytics", "metrics"), 365);
    assert_eq!(m["postgres"][0]["globals"], "globals.sql");
    let keys: BTreeMap<u64, u64> = m["redis"][0]["dbs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["db"].as_u64().unwrap(), d["keys"].as_u64().unwrap()))
        .collect();
    let want: BTreeMap<u64, u64> = [0u64, 1, 5]
        .iter()
        .map(|&db| {
            (
                db,
                redis_before
                    .keys()
                    .filter(|k| k.starts_with(&format!("db{db} ")))
                    .count() as u64,
            )
        })
        .collect();
    assert_eq!(keys, want, "key counts per database");
    assert_eq!(m["redis"][0]["counted_from"], "rdb");
    // No secret in the manifest or the archive; no spool left; the seed's layout.
    let mtext = serde_json::to_string(&m).unwrap();
    let archive = local_archive(&env, &id);
    let bytes = archive_bytes(&archive);
    for secret in [PG_PASSWORD, REDIS_PASSWORD] {
        assert!(!mtext.contains(secret));
        assert!(
            !contains(&bytes, secret),
            "a password is inside the archive"
        );
    }
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let top = format!("pronto-app-backup-{id}/");
    for p in [
        "postgres_data/db/globals.sql",
        "postgres_data/db/pronto.dump",
        "postgres_data/db/analytics.dump",
        "redis_data/cache/dump.rdb",
    ] {
        assert!(
            listing.contains(&format!("{top}{p}")),
            "{p} missing from\n{listing}"
        );
    }
    assert!(!listing.contains(".pgpass"), "{listing}");
    assert!(
        !names_in(&env.backups())
            .iter()
            .any(|n| n.starts_with(".spool")),
        "{:?}",
        names_in(&env.backups())
    );

    run_ok(&env, &["push"]);
    // Lose the local copy: the restore must pull it from the remote.
    std::fs::remove_file(manifest_path(&env, &id)).unwrap();
    std::fs::remove_file(&archive).unwrap();

    // Disaster: databases and a role gone, Redis flushed, static files damaged.
    pg.psql("postgres", "DROP DATABASE pronto");
    pg.psql("postgres", "DROP DATABASE analytics");
    pg.psql("postgres", "DROP ROLE reporting");
    r.cli(&["FLUSHALL"]);
    std::fs::remove_file(site.join("img/logo.svg")).unwrap();
    std::fs::write(site.join("index.html"), "defaced\n").unwrap();
    std::fs::write(site.join("junk.txt"), "junk\n").unwrap();

    let out = run_ok(&env, &["pull", &id, "--restore"]);
    assert!(out.contains("safety backup"), "{out}");
    assert!(out.contains("restore complete"), "{out}");
    assert!(out.contains("pass  GET http://127.0.0.1"), "{out}");
    assert!(out.contains("pass  orders: ok: 120000"), "{out}");
    assert!(out.contains("matches the snapshot"), "{out}");
    let safety = out
        .lines()
        .find_map(|l| l.strip_prefix("safety backup: "))
        .unwrap_or_else(|| panic!("no safety backup id in\n{out}"))
        .trim()
        .to_string();
    assert!(local_ids(&env).contains(&safety), "{:?}", local_ids(&env));
    assert!(!names_in(&env.backups())
        .iter()
        .any(|n| n.starts_with(".restore-") || n.starts_with(".spool")));

    assert_same("postgres", &pg_before, &pg_state(&pg));
    assert_same("redis", &redis_before, &r.fingerprint(3000));
    assert_same("static_content", &site_before, &snapshot(&site));
    // The sequence goes on where it was.
    assert_eq!(
        pg.psql("pronto", "SELECT nextval('invoice_no')").trim(),
        "121000"
    );

    // A database beside the live one.
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
            "--no-safety-backup",
        ],
    );
    assert!(out.contains("into pronto_copy"), "{out}");
    assert!(!out.contains("safety backup"), "{out}");
    assert_same(
        "pronto_copy",
        &pronto_before,
        &pg.fingerprint("pronto_copy"),
    );

    // --only: just the databases, into existing ones (pg_restore --clean).
    pg.psql("pronto", "DELETE FROM orders WHERE id > 1000");
    let out = run_ok(
        &env,
        &[
            "pull",
            &id,
            "--restore",
            "--only",
            "postgres",
            "--no-safety-backup",
        ],
    );
    assert!(out.contains("--clean --if-exists"), "{out}");
    assert!(!out.contains("redis cache"), "{out}");
    assert_same("postgres after --only postgres", &pg_before, &pg_state(&pg));
    assert_same(
        "redis untouched by --only postgres",
        &redis_before,
        &r.fingerprint(3000),
    );
}

/// Inserts pairs of rows (events + event_log, one transaction each) until stopped.
fn writer(pg: &Pg, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut c = pg.psql_cmd("shop");
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    std::thread::spawn(move || {
        let mut stdin = child.stdin.take().unwrap();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let sql = "BEGIN; INSERT INTO events (payload) SELECT 'e' FROM generate_series(1, 20); \
                       INSERT INTO event_log (note) SELECT 'l' FROM generate_series(1, 20); COMMIT;\n";
            if stdin.write_all(sql.as_bytes()).is_err() {
                break;
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(stdin);
        assert!(child.wait().unwrap().success());
        n
    })
}

fn rewrite_json(paths: &[PathBuf], f: impl Fn(&mut serde_json::Value)) {
    for p in paths {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
}

#[test]
fn counts_come_from_the_dumps_snapshot_while_writes_run_and_the_drill_catches_tampering() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.script(
        "shop",
        "CREATE TABLE events (id bigserial PRIMARY KEY, payload text);\n\
         CREATE TABLE event_log (id bigserial PRIMARY KEY, note text);\n\
         CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 150000) g;\n",
    );
    let r = Redis::start(None);
    r.cli(&["EVAL", "for i = 1, 300 do redis.call('SET', 'k' .. i, i) end for i = 1, 20 do redis.call('SET', 't' .. i, i, 'EX', 5000) end return 1", "0"]);
    r.cli(&["-n", "2", "HSET", "h", "a", "1", "b", "2"]);
    let env = Env::new();
    // command_prefix runs the client tools through another command, as `docker compose exec -T postgres` would.
    write_config(
        &env,
        &format!(
            "[[sources]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"{}\"\ndatabases = [\"shop\"]\ncommand_prefix = [\"env\", \"PGAPPNAME=pronto-test\"]\n\n\
             [[sources]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\n",
            pg.url("postgres"),
            r.port
        ),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&pg, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let before: u64 = pg
        .psql("shop", "SELECT count(*) FROM events")
        .trim()
        .parse()
        .unwrap();
    let id = backup(&env);
    let after: u64 = pg
        .psql("shop", "SELECT count(*) FROM events")
        .trim()
        .parse()
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let batches = w.join().unwrap();
    assert!(batches > 10, "the writer ran {batches} transactions");
    assert!(
        after > before,
        "writes went on during the backup ({before} → {after})"
    );

    let m = manifest(&env, &id);
    let events = table_rows(&m, "shop", "events");
    assert_eq!(
        events,
        table_rows(&m, "shop", "event_log"),
        "both tables counted in one snapshot"
    );
    assert!(
        events >= before && events <= after,
        "{before} <= {events} <= {after}"
    );
    assert_eq!(events % 20, 0, "a snapshot never sees half a transaction");
    assert_eq!(table_rows(&m, "shop", "orders"), 150_000);
    run_ok(&env, &["push"]);

    // The drill on a private instance: passes, with the numbers; leaves nothing behind.
    let out = run_ok(&env, &["verify", &id, "--restore-test"]);
    assert!(out.contains("private PostgreSQL"), "{out}");
    assert!(
        out.contains(&format!(
            "(manifest: {} rows): PASS",
            events + events + 150_000
        )),
        "{out}"
    );
    assert!(out.contains("redis cache: snapshot 321 keys"), "{out}");
    assert!(out.contains("restore test PASSED"), "{out}");
    assert!(
        !names_in(&env.backups())
            .iter()
            .any(|n| n.starts_with(".drill-")),
        "{:?}",
        names_in(&env.backups())
    );
    let json = run_ok(&env, &["verify", &id, "--restore-test", "--json"]);
    let rep: serde_json::Value = serde_json::from_str(
        json.split("stderr:")
            .next()
            .unwrap()
            .trim_start_matches("stdout:\n"),
    )
    .unwrap();
    assert_eq!(rep["passed"], true);
    assert_eq!(rep["postgres"][0]["rows_restored"], events * 2 + 150_000);

    // Tamper with the manifest's row count (local and remote copies agree): exit 4 with the numbers,
    // here on a scratch server ([drill] postgres_url), whose throwaway database is dropped afterwards.
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let mpaths = [
        manifest_path(&env, &id),
        env.remote().join(format!("{file}.manifest.json")),
    ];
    let original: Vec<Vec<u8>> = mpaths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    rewrite_json(&mpaths, |v| {
        for t in v["postgres"][0]["databases"][0]["tables"]
            .as_array_mut()
            .unwrap()
        {
            if t["table"] == "events" {
                t["rows"] = serde_json::json!(events + 1);
            }
        }
    });
    let cfg = std::fs::read_to_string(env.config()).unwrap();
    std::fs::write(
        env.config(),
        format!(
            "{cfg}\n[drill]\npostgres_url = \"{}\"\n",
            pg.url("postgres")
        ),
    )
    .unwrap();
    let o = env.run(&["verify", &id, "--restore-test"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("scratch server"), "{t}");
    assert!(
        t.contains(&format!(
            "public.events: manifest {} rows, restored {events} rows",
            events + 1
        )),
        "{t}"
    );
    assert!(t.contains("restore test FAILED"), "{t}");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pronto_drill_%'"
        )
        .trim(),
        "0"
    );
    std::fs::write(env.config(), cfg).unwrap();
    for (p, b) in mpaths.iter().zip(&original) {
        std::fs::write(p, b).unwrap();
    }

    // Tamper with the archive itself, consistently with its manifest: a valid dump of a
    // different state, and a damaged RDB. The drill restores what is there and sees it.
    let work = env.path("tamper");
    std::fs::create_dir(&work).unwrap();
    let archive = local_archive(&env, &id);
    assert!(std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&work)
        .status()
        .unwrap()
        .success());
    let top = work.join(format!("pronto-app-backup-{id}"));
    pg.psql("shop", "DELETE FROM orders WHERE id <= 10");
    let dump = std::process::Command::new(pg.bin.join("pg_dump"))
        .args([
            "-Fc",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &pg.port.to_string(),
            "shop",
        ])
        .output()
        .unwrap();
    assert!(dump.status.success());
    std::fs::write(top.join("postgres_data/db/shop.dump"), &dump.stdout).unwrap();
    let rdb = top.join("redis_data/cache/dump.rdb");
    let mut bytes = std::fs::read(&rdb).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&rdb, bytes).unwrap();
    std::fs::remove_file(&archive).unwrap();
    assert!(std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&work)
        .arg(format!("pronto-app-backup-{id}"))
        .status()
        .unwrap()
        .success());
    std::fs::copy(&archive, env.remote().join(&file)).unwrap();
    let sha = support::file_digest(&archive);
    let size = std::fs::metadata(&archive).unwrap().len();
    let dump_len = dump.stdout.len() as u64;
    rewrite_json(&mpaths, |v| {
        v["sha256"] = serde_json::json!(sha);
        v["size"] = serde_json::json!(size);
        v["postgres"][0]["databases"][0]["bytes"] = serde_json::json!(dump_len);
    });
    let o = env.run(&["verify", &id, "--restore-test"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("public.orders: manifest 150000 rows, restored 149990 rows"),
        "{t}"
    );
    assert!(t.contains("redis cache") && t.contains("FAIL"), "{t}");
    assert!(
        t.contains("the snapshot does not load") && t.contains("CRC-64 mismatch"),
        "{t}"
    );
    assert!(t.contains("restore test FAILED (2 of"), "{t}");
}

#[test]
fn a_failing_dump_leaves_no_archive_and_says_why() {
    let mut pg = Pg::start();
    pg.psql(
        "postgres",
        &format!("CREATE ROLE pronto LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}'"),
    );
    let r = Redis::start(Some(REDIS_PASSWORD));
    let env = Env::new();
    let only_lock = |env: &Env| {
        let left: Vec<String> = names_in(&env.backups())
            .into_iter()
            .filter(|n| n != ".pronto-offsite.lock")
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    };
    let fail = |env: &Env, want: &str| {
        let o = env.run(&["backup"]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{t}");
        assert!(t.contains("no archive was written"), "{t}");
        assert!(t.contains(want), "expected {want:?} in {t}");
        for secret in [PG_PASSWORD, REDIS_PASSWORD, "wrong-password-123"] {
            assert!(!t.contains(secret), "a password in the output: {t}");
        }
    };

    // Wrong password.
    write_config(&env, &pg_source(&pg, ""));
    std::fs::write(env.path("pg.pass"), "wrong-password-123\n").unwrap();
    fail(&env, "password authentication failed for user \"pronto\"");
    only_lock(&env);

    // A database that is not there.
    write_config(&env, &pg_source(&pg, "databases = [\"nope\"]"));
    fail(&env, "database \"nope\" does not exist");
    only_lock(&env);

    // Redis: wrong password, then nobody listening.
    write_config(&env, &redis_source(&r));
    std::fs::write(env.path("redis.pass"), "wrong-password-123\n").unwrap();
    fail(&env, "WRONGPASS");
    only_lock(&env);
    write_config(
        &env,
        &redis_source(&r).replace(
            &format!(":{}\"", r.port),
            &format!(":{}\"", pg::free_port()),
        ),
    );
    fail(&env, "Connection refused");
    only_lock(&env);

    // The server is down.
    write_config(&env, &pg_source(&pg, ""));
    backup(&env); // works while it is up
    pg.stop();
    let before = local_ids(&env);
    fail(&env, "Connection refused");
    assert_eq!(local_ids(&env), before);
    assert!(!names_in(&env.backups())
        .iter()
        .any(|n| n.starts_with(".spool") || n.ends_with(".partial")));

    // A restore whose safety backup fails changes nothing and says how to go on.
    let id = before[0].clone();
    run_ok(&env, &["push"]);
    let o = env.run(&["pull", &id, "--restore"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("not reachable") || t.contains("--no-safety-backup"),
        "{t}"
    );
}

#[test]
fn config_keys_of_service_sources_are_checked() {
    use pronto_offsite::config::parse;
    let f = Path::new("/etc/pronto-offsite/config.toml");
    let base = "[local]\ndir = \"/tmp/x\"\n\n[[sources]]\nname = \"db\"\n";
    let err = |body: &str| format!("{:#}", parse(&format!("{base}{body}"), f).unwrap_err());
    assert!(
        err("kind = \"postgres\"\nurl = \"postgresql://u:pw@h/db\"\n")
            .contains("without a password")
    );
    assert!(
        err("kind = \"postgres\"\nurl = \"postgresql://u@h/db\"\nhost = \"h\"\n")
            .contains("either `url` or")
    );
    assert!(err("kind = \"postgres\"\npath = \"/srv\"\n").contains("no `path`"));
    assert!(err("kind = \"redis\"\ndatabases = [\"x\"]\n").contains("postgres source"));
    assert!(
        err("kind = \"static_content\"\npath = \"/srv\"\nurl = \"redis://h\"\n")
            .contains("postgres or redis")
    );
    assert!(err("kind = \"postgres\"\ndatabases = []\n").contains("list of database names"));
    assert!(err(
        "kind = \"postgres\"\n\n[[health_checks]]\nsql = \"SELECT 1\"\nsource = \"nope\"\n"
    )
    .contains("health_checks[0].source"));
    assert!(
        err("kind = \"postgres\"\n\n[[health_checks]]\nhttp = \"ftp://x\"\n")
            .contains("http:// or https://")
    );
    assert!(
        err("kind = \"postgres\"\n\n[drill]\npassword_file = \"x\"\n").contains("postgres_url")
    );

    let cfg = parse(
        &format!(
            "{base}kind = \"postgres\"\nhost = \"/var/run/postgresql\"\nport = 5433\nuser = \"pronto\"\ndatabases = [\"pronto\"]\n\
             command_prefix = [\"docker\", \"compose\", \"exec\", \"-T\", \"postgres\"]\n\n\
             [[sources]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"redis://backup@127.0.0.1:6379\"\ndata_dir = \"/var/lib/redis\"\n\
             stop_command = [\"docker\", \"compose\", \"stop\", \"redis\"]\nstart_command = \"docker compose start redis\"\n\n\
             [[health_checks]]\nsql = \"SELECT COUNT(*) FROM orders\"\n\n[drill]\npostgres_url = \"postgresql://postgres@127.0.0.1:5499/postgres\"\n"
        ),
        f,
    )
    .unwrap();
    let pgs = cfg.sources[0].postgres.as_ref().unwrap();
    assert_eq!(pgs.describe(), "postgresql://pronto@/var/run/postgresql:5433/postgres via `docker compose exec -T postgres`");
    assert_eq!(pgs.databases.as_deref(), Some(&["pronto".to_string()][..]));
    let rs = cfg.sources[1].redis.as_ref().unwrap();
    assert_eq!(rs.user.as_deref(), Some("backup"));
    assert_eq!(rs.start_command.shown(), "docker compose start redis");
    assert_eq!(
        cfg.health_checks[0].name,
        "db/pronto: SELECT COUNT(*) FROM orders"
    );
    assert!(cfg.drill.postgres.is_some());
}

#[test]
fn a_failing_restore_step_is_named_with_the_safety_backup_that_undoes_it() {
    let r = Redis::start(Some(REDIS_PASSWORD));
    r.cli(&["MSET", "a", "1", "b", "2"]);
    r.cli(&["-n", "3", "RPUSH", "l", "x", "y"]);
    let env = Env::new();
    write_config(&env, &redis_source(&r));
    let id = backup(&env);
    run_ok(&env, &["push"]);
    let at_backup = r.fingerprint(0);
    r.cli(&["SET", "c", "3"]);
    let before_restore = r.fingerprint(0);

    // AOF on: refused before anything happens.
    r.cli(&["CONFIG", "SET", "appendonly", "yes"]);
    let o = env.run(&["pull", &id, "--restore"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("appendonly is on"), "{t}");
    assert_eq!(
        local_ids(&env),
        vec![id.clone()],
        "no safety backup was needed yet"
    );
    r.cli(&["CONFIG", "SET", "appendonly", "no"]);

    // The start fails after the snapshot was put in place: the step is named, with the way back.
    let good = std::fs::read_to_string(env.config()).unwrap();
    let start = format!(
        "start_command = \"{}\"",
        r.start_command().replace('"', "\\\"")
    );
    assert!(good.contains(&start));
    std::fs::write(
        env.config(),
        good.replace(&start, "start_command = \"echo cannot start >&2; exit 3\""),
    )
    .unwrap();
    let o = env.run(&["pull", &id, "--restore"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("restore stopped at step 2/2 (redis cache): start: start_command"),
        "{t}"
    );
    assert!(t.contains("cannot start"), "{t}");
    let safety = local_ids(&env)
        .into_iter()
        .find(|i| *i != id)
        .expect("a safety backup");
    assert!(t.contains(&format!("safety backup {safety}")), "{t}");
    assert!(!t.contains(REDIS_PASSWORD), "{t}");
    assert!(r.try_cli(&["PING"]).is_err(), "redis stays stopped");

    // Back to the state before the restore with the safety backup, as the message says.
    std::fs::write(env.config(), &good).unwrap();
    let out = run_ok(&env, &["pull", &safety, "--restore", "--no-safety-backup"]);
    assert!(out.contains("was not running; not stopped"), "{out}");
    assert_same("redis after undo", &before_restore, &r.fingerprint(0));
    // And the archive itself restores.
    run_ok(&env, &["pull", &id, "--restore", "--no-safety-backup"]);
    assert_same("redis", &at_backup, &r.fingerprint(0));
}

/// The commands of docs/restore.md's "Disaster recovery on a new machine" block, as
/// written: each line's words, comment removed, without the leading `pronto-offsite`.
fn runbook_commands() -> Vec<Vec<String>> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/restore.md"))
            .unwrap();
    let section = doc
        .split("## Disaster recovery on a new machine")
        .nth(1)
        .expect("docs/restore.md has the runbook section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the runbook has a sh block");
    let cmds: Vec<Vec<String>> = block
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut w = l.split_whitespace().map(str::to_string);
            assert_eq!(w.next().as_deref(), Some("pronto-offsite"), "{l}");
            w.collect()
        })
        .collect();
    assert!(cmds.len() >= 2, "{block}");
    cmds
}

/// The runbook, end to end: the lost host pushed to an sftp remote; the new host has
/// empty PostgreSQL and Redis servers, no folders and an empty backup folder, and runs
/// the documented commands with no extra flag. Everything comes back identical, the
/// restore says why it took no safety backup, and the first backup reaches the remote.
#[test]
fn the_disaster_recovery_runbook_restores_a_new_host_from_sftp() {
    let sshd = sshd::Sshd::start();
    let remote_dir = sshd.dir.path().join("srv/backups/pronto");
    let remote = format!(
        "[[remotes]]\nname = \"offsite\"\nurl = \"{}\"\nidentity_file = \"{}\"\nknown_hosts_file = \"{}\"\nssh_config_file = \"/dev/null\"\n",
        sshd.url(&remote_dir),
        sshd.client_key.display(),
        sshd.known_hosts.display()
    );
    let folders = "[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"site\"\n\n\
                   [[sources]]\nname = \"etc\"\nkind = \"configs\"\npath = \"etc/pronto\"\n\n\
                   [[health_checks]]\nname = \"orders\"\nsql = \"SELECT COUNT(*) FROM orders\"\nsource = \"db\"\ndatabase = \"pronto\"\n";

    // The lost host.
    let (pg_before, redis_before, site_before, etc_before, lost_id) = {
        let pg = Pg::start();
        fill_postgres(&pg);
        let r = Redis::start(Some(REDIS_PASSWORD));
        fill_redis(&r);
        let env = Env::new();
        let site = env.path("site");
        std::fs::create_dir_all(site.join("img")).unwrap();
        std::fs::write(site.join("index.html"), "<h1>Pronto</h1>\n").unwrap();
        std::fs::write(site.join("img/logo.svg"), "<svg/>\n").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", site.join("host")).unwrap();
        let etc = env.path("etc/pronto");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("app.env"), "MODE=production\n").unwrap();
        write_config_with(
            &env,
            &remote,
            &format!("{}{}\n{folders}", pg_source(&pg, ""), redis_source(&r)),
        );
        run_ok(&env, &["backup", "--push"]);
        let id = local_ids(&env).pop().expect("one archive");
        (
            pg_state(&pg),
            r.fingerprint(3000),
            snapshot(&site),
            snapshot(&etc),
            id,
        )
    };

    // The new host: empty servers (with the role the config connects as), no folders.
    let pg = Pg::start();
    pg.script(
        "postgres",
        &format!("CREATE ROLE pronto LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}';\n"),
    );
    let r = Redis::start(Some(REDIS_PASSWORD));
    let env = Env::new();
    write_config_with(
        &env,
        &remote,
        &format!("{}{}\n{folders}", pg_source(&pg, ""), redis_source(&r)),
    );
    assert!(!env.path("site").exists() && !env.path("etc").exists());
    std::fs::create_dir_all(env.path("etc")).unwrap(); // the parent of etc/pronto

    let mut outputs = Vec::new();
    for cmd in runbook_commands() {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        outputs.push((cmd.join(" "), run_ok(&env, &args)));
    }
    let all: String = outputs
        .iter()
        .map(|(c, o)| format!("$ {c}\n{o}\n"))
        .collect();
    assert!(
        all.contains(&lost_id),
        "the runbook names the lost host's archive:\n{all}"
    );
    assert!(
        all.contains("no safety backup: the sources hold nothing to save"),
        "{all}"
    );
    assert!(all.contains("restore complete"), "{all}");
    assert!(all.contains("pass  orders: ok: 120000"), "{all}");

    assert_same("postgres", &pg_before, &pg_state(&pg));
    assert_same("redis", &redis_before, &r.fingerprint(3000));
    assert_same("site", &site_before, &snapshot(&env.path("site")));
    assert_same("etc", &etc_before, &snapshot(&env.path("etc/pronto")));
    assert_eq!(
        std::fs::read_link(env.path("site/host")).unwrap(),
        Path::new("/etc/hostname"),
        "an absolute symlink comes back verbatim"
    );
    // The new host's own first backup is off-site too: two archives on the remote now.
    let on_remote: Vec<String> = names_in(&remote_dir)
        .into_iter()
        .filter(|n| n.ends_with(".tar.gz"))
        .collect();
    assert_eq!(on_remote.len(), 2, "{on_remote:?}");
    // No safety backup was written: the backup folder holds the pulled archive and the
    // new backup only.
    let local = local_ids(&env);
    assert_eq!(local.len(), 2, "{local:?}");
    assert!(local.contains(&lost_id), "{local:?}");
}
