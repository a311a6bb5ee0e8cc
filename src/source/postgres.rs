//! PostgreSQL: `pg_dump -Fc` per database and `pg_dumpall --globals-only`, with
//! per-table row counts taken in the very snapshot the dump is made from; restore
//! with `psql` (globals) and `pg_restore`.
//!
//! Consistency: a `psql` session is kept open with its stdin piped; it runs
//! `BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY` and `SELECT pg_export_snapshot()`,
//! then `pg_dump --snapshot=ID` starts while that transaction stays open, and the
//! session counts every table meanwhile. Dump and counts see the same data however
//! much the application writes, so a restore can be checked exactly.
//!
//! Connection: a `url` (`postgresql://user@host:port/db?sslmode=…`) or `host`/`port`/`user`,
//! turned into a libpq keyword/value string given with `--dbname=`. It never holds
//! a password: that comes from `PGPASSWORD`, `.pgpass`, or `password_file` (handed to
//! the tools as a 0600 pgpass file named by `PGPASSFILE`, or as `PGPASSWORD` in the
//! environment of a `command_prefix` such as `docker compose exec -T -e PGPASSWORD postgres`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::{collect, describe_status, run, spawn, tail, EnvVar};
pub use crate::config::postgres::{
    parse_url, ConnParams, PgSource, DEFAULT_LOCK_TIMEOUT, DEFAULT_MAINTENANCE_DB,
};
use crate::manifest::{PgDatabase, PgSummary, TableRows};

/// File name of the globals dump inside a source's folder.
pub const GLOBALS_FILE: &str = "globals.sql";
/// Tables counted per query.
const COUNT_BATCH: usize = 200;

/// The major version in a PostgreSQL version string: `15` from `15.10 (Debian …)` or
/// from `pg_dump (PostgreSQL) 15.10`, `9` from `9.6.24`. `None` when there is no number.
pub fn major_version(v: &str) -> Option<u32> {
    let word = v
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    word.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `"name"` with inner quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A SQL string literal, safe whatever `standard_conforming_strings` says.
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn conn_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The file name a database's dump gets: the name with anything but letters, digits,
/// `_`, `-` and inner `.` percent-encoded, plus `.dump`.
pub fn dump_file_name(db: &str) -> String {
    let mut s = String::new();
    for (i, b) in db.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{s}.dump")
}

impl PgSource {
    /// `postgresql://user@host:port/db` for messages; never a password (there is none).
    pub fn describe(&self) -> String {
        let get = |k: &str| {
            self.params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.as_str())
        };
        let mut s = "postgresql://".to_string();
        if let Some(u) = get("user") {
            s.push_str(u);
            s.push('@');
        }
        s.push_str(get("host").unwrap_or("(default host)"));
        if let Some(p) = get("port") {
            s.push(':');
            s.push_str(p);
        }
        s.push('/');
        s.push_str(&self.maintenance_db);
        if !self.command_prefix.is_empty() {
            s.push_str(&format!(" via `{}`", self.command_prefix.join(" ")));
        }
        s
    }

    /// The libpq keyword/value connection string for database `db`.
    pub fn conninfo(&self, db: &str) -> String {
        self.conninfo_as(db, None)
    }

    /// [`Self::conninfo`] with `application_name` set to `app` (how our own sessions are
    /// found in `pg_stat_activity`).
    pub fn conninfo_as(&self, db: &str, app: Option<&str>) -> String {
        let mut parts = Vec::new();
        for (k, v) in &self.params {
            if app.is_some() && k == "application_name" {
                continue;
            }
            parts.push(format!("{k}={}", conn_value(v)));
        }
        parts.push(format!("dbname={}", conn_value(db)));
        if let Some(app) = app {
            parts.push(format!("application_name={}", conn_value(app)));
        } else if !self.params.iter().any(|(k, _)| k == "application_name") {
            parts.push("application_name='pronto-offsite'".into());
        }
        if !self.params.iter().any(|(k, _)| k == "connect_timeout") {
            parts.push("connect_timeout='15'".into());
        }
        parts.join(" ")
    }
}

/// A ready-to-use client for one [`PgSource`]: knows the password (if any) and how to
/// run each tool.
pub struct PgClient<'a> {
    pub src: &'a PgSource,
    env: Vec<EnvVar>,
    secrets: Vec<String>,
    bin_dir: Option<PathBuf>,
    /// `application_name` of every session we open: how the lock watchdog finds them.
    app_name: String,
    /// A throwaway server of the drill: no inherited `PG*` variables, no tablespaces.
    throwaway: bool,
}

impl<'a> PgClient<'a> {
    /// `private_dir` is a 0700 folder that lives as long as the client is used: a
    /// pgpass file is written there when the source has a `password_file`.
    pub fn new(src: &'a PgSource, private_dir: &Path) -> Result<PgClient<'a>> {
        let mut env: Vec<EnvVar> = vec![("PGCLIENTENCODING".into(), "UTF8".into())];
        let mut secrets = Vec::new();
        if let Some(pf) = &src.password_file {
            let pw = super::read_password_file(pf)?;
            if src.command_prefix.is_empty() {
                let esc = pw.replace('\\', "\\\\").replace(':', "\\:");
                let pgpass = private_dir.join(format!(
                    ".pgpass-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos())
                ));
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&pgpass)
                    .with_context(|| format!("creating {}", pgpass.display()))?;
                writeln!(f, "*:*:*:*:{esc}")
                    .with_context(|| format!("writing {}", pgpass.display()))?;
                env.push(("PGPASSFILE".into(), pgpass.into_os_string()));
            } else {
                env.push(("PGPASSWORD".into(), pw.clone().into()));
            }
            secrets.push(pw);
        }
        if let Ok(pw) = std::env::var("PGPASSWORD") {
            secrets.push(pw);
        }
        Ok(PgClient {
            src,
            env,
            secrets,
            bin_dir: None,
            app_name: format!("pronto-offsite {}", std::process::id()),
            throwaway: false,
        })
    }

    /// A throwaway server (the drill's private instance): the tools get none of this
    /// process's `PG*` variables (a `PGPASSWORD`, `PGHOST` or `PGOPTIONS` meant for the
    /// live server), and restores leave tablespaces out (they name the live server's
    /// folders).
    pub fn throwaway(mut self) -> Self {
        self.throwaway = true;
        self
    }

    /// Use the tools in this folder rather than those on PATH.
    pub fn with_bin_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.bin_dir = dir;
        self
    }

    /// Secrets to mask in messages.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// Tool `name` as it runs: through the prefix if any, else from the bin folder or PATH.
    fn program(&self, name: &str) -> Command {
        if let Some((first, rest)) = self.src.command_prefix.split_first() {
            let mut c = Command::new(first);
            c.args(rest).arg(name);
            c
        } else if let Some(dir) = &self.bin_dir {
            Command::new(dir.join(name))
        } else {
            Command::new(name)
        }
    }

    /// What `name --version` prints (e.g. `pg_dump (PostgreSQL) 15.10`), as the backup
    /// would run it.
    pub fn tool_version(&self, name: &str) -> Result<String> {
        let mut c = self.program(name);
        c.arg("--version").stdin(Stdio::null());
        let out = c
            .output()
            .with_context(|| format!("running {name} --version"))?;
        if !out.status.success() {
            anyhow::bail!(
                "{name} --version failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A command for tool `name` (through the prefix if any), with `-w` and `--dbname`.
    fn tool(&self, name: &str, db: &str) -> Command {
        let mut c = self.program(name);
        self.set_env(&mut c);
        c.stdin(Stdio::null());
        c.arg("-w").arg(format!(
            "--dbname={}",
            self.src.conninfo_as(db, Some(&self.app_name))
        ));
        c
    }

    /// Our variables on `c`; for a throwaway server, without any inherited `PG*` one.
    fn set_env(&self, c: &mut Command) {
        if self.throwaway {
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("PG") {
                    c.env_remove(k);
                }
            }
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
    }

    fn psql(&self, db: &str) -> Command {
        let mut c = self.tool("psql", db);
        c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        c
    }

    /// The end of a tool's stderr for a message: secrets masked, our temp pgpass file
    /// called by the name the user knows, and a failed password pointed at its file.
    fn tail(&self, stderr: &str) -> String {
        let mut t = tail(stderr, &self.secrets, 12);
        if let Some(pf) = &self.src.password_file {
            if let Some((_, pgpass)) = self.env.iter().find(|(k, _)| k == "PGPASSFILE") {
                t = t.replace(
                    &*pgpass.to_string_lossy(),
                    &format!("password_file {}", pf.display()),
                );
            }
            if t.contains("password authentication failed") {
                t.push_str(&format!(
                    " (the password comes from password_file {}: check it holds this role's current password)",
                    pf.display()
                ));
            }
        }
        t
    }

    fn err(&self, tool: &str, what: &str, f: &super::Finished) -> anyhow::Error {
        anyhow!(
            "{what}: {tool} failed ({}): {}",
            describe_status(f.status),
            self.tail(&f.stderr)
        )
    }

    /// Run `f` (a dump or a restore of `db`) while a watchdog cancels any of our
    /// sessions that waits longer than `lock_timeout` for a lock; the error then names the
    /// sessions holding it (pid, user, state, query). Without a `lock_timeout`, just `f`.
    fn watch_locks<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let Some(limit) = self.src.lock_timeout else {
            return f();
        };
        let stop = AtomicBool::new(false);
        let blocked: Mutex<Option<String>> = Mutex::new(None);
        let res = std::thread::scope(|sc| {
            sc.spawn(|| self.lock_watchdog(limit, &stop, &blocked));
            let r = f();
            stop.store(true, Ordering::SeqCst);
            r
        });
        if res.is_err() {
            // A tool we killed may leave its backend waiting for the lock (a backend
            // notices its client is gone only when the wait ends): cancel what is left.
            let _ = self.query(
                &self.src.maintenance_db,
                &format!(
                    "SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity \
                     WHERE application_name = {} AND wait_event_type = 'Lock' AND pid <> pg_catalog.pg_backend_pid()",
                    quote_literal(&self.app_name)
                ),
            );
        }
        match (res, blocked.into_inner().unwrap_or(None)) {
            (Err(e), Some(who)) => Err(anyhow!(
                "waited more than {} for a lock, so the session was cancelled; the lock is held by {who}. \
                 End that session (SELECT pg_terminate_backend(PID)) or let it finish, then run again \
                 (the source's `lock_timeout` sets how long to wait): {e:#}",
                humantime::format_duration(limit)
            )),
            (res, _) => res,
        }
    }

    /// Every tenth of `limit` (0.2 s to 5 s, so a long dump costs few polls): our sessions
    /// waiting for a lock, and who blocks them; one seen waiting for `limit` is cancelled
    /// and its blockers are kept in `blocked`.
    fn lock_watchdog(&self, limit: Duration, stop: &AtomicBool, blocked: &Mutex<Option<String>>) {
        let sql = format!(
            "SELECT w.pid::text || E'\\t' || coalesce(string_agg(format('pid %s (user %s, %s): %s', \
             b.pid, b.usename, coalesce(b.state, 'unknown state'), \
             left(regexp_replace(coalesce(b.query, ''), '\\s+', ' ', 'g'), 200)), '; ' ORDER BY b.pid), 'sessions it cannot see') \
             FROM pg_catalog.pg_stat_activity w \
             LEFT JOIN pg_catalog.pg_stat_activity b ON b.pid = ANY(pg_catalog.pg_blocking_pids(w.pid)) \
             WHERE w.application_name = {} AND w.wait_event_type = 'Lock' AND w.pid <> pg_catalog.pg_backend_pid() \
             GROUP BY w.pid",
            quote_literal(&self.app_name)
        );
        let mut waiting: std::collections::HashMap<String, Instant> = Default::default();
        let every = (limit / 10).clamp(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let slept = Instant::now();
            while slept.elapsed() < every {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let Ok(out) = self.query(&self.src.maintenance_db, &sql) else {
                continue;
            };
            let now = Instant::now();
            let mut seen = std::collections::HashMap::new();
            for line in out.lines() {
                let Some((pid, who)) = line.split_once('\t') else {
                    continue;
                };
                let since = waiting.get(pid).copied().unwrap_or(now);
                seen.insert(pid.to_string(), since);
                if now.duration_since(since) >= limit && pid.chars().all(|c| c.is_ascii_digit()) {
                    if let Ok(mut b) = blocked.lock() {
                        b.get_or_insert_with(|| super::mask(who, &self.secrets));
                    }
                    let _ = self.query(
                        &self.src.maintenance_db,
                        &format!("SELECT pg_catalog.pg_cancel_backend({pid})"),
                    );
                }
            }
            waiting = seen;
        }
    }

    /// Run one SQL command in `db`; returns its output (unaligned, tuples only).
    pub fn query(&self, db: &str, sql: &str) -> Result<String> {
        let mut c = self.psql(db);
        c.arg("-c").arg(sql);
        let f = run(&mut c, "psql", true)?;
        if !f.status.success() {
            return Err(self.err(
                "psql",
                &format!("on {} database {db}", self.src.describe()),
                &f,
            ));
        }
        Ok(f.stdout)
    }

    /// `SHOW server_version`.
    pub fn server_version(&self) -> Result<String> {
        Ok(self
            .query(&self.src.maintenance_db, "SHOW server_version")?
            .trim()
            .to_string())
    }

    /// Every database that is not a template and accepts connections, sorted.
    pub fn list_databases(&self) -> Result<Vec<String>> {
        let mut c = self.psql(&self.src.maintenance_db);
        c.arg("-0").arg("-c").arg(
            "SELECT datname FROM pg_catalog.pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname",
        );
        let f = run(&mut c, "psql", true)?;
        if !f.status.success() {
            return Err(self.err(
                "psql",
                &format!("listing the databases of {}", self.src.describe()),
                &f,
            ));
        }
        let mut v: Vec<String> = f
            .stdout
            .split('\0')
            .map(|s| s.trim_matches('\n').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Databases that are not templates and refuse connections (`ALLOW_CONNECTIONS false`).
    pub fn unconnectable_databases(&self) -> Result<Vec<String>> {
        Ok(self
            .query(
                &self.src.maintenance_db,
                "SELECT datname FROM pg_catalog.pg_database WHERE NOT datistemplate AND NOT datallowconn ORDER BY 1",
            )?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Relations that `pg_dump` leaves out because of their schema (`information_schema`,
    /// `pg_catalog`): created there by a superuser, they are in neither dump nor manifest.
    pub fn relations_in_skipped_schemas(&self, db: &str) -> Result<Vec<String>> {
        Ok(self
            .query(
                db,
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid >= 16384 AND c.relkind IN ('r','p','v','m','S','f') \
                 AND n.nspname IN ('information_schema', 'pg_catalog') \
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass \
                   AND d.objid = c.oid AND d.deptype = 'e') ORDER BY 1",
            )?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// What a backup of this source would leave out, one sentence each: databases that
    /// refuse connections (without a `databases` list) and relations in schemas `pg_dump`
    /// skips. For `doctor`; a backup logs the same as warnings.
    pub fn left_out(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        let unconnectable = self.unconnectable_databases()?;
        let dbs = match &self.src.databases {
            Some(list) => list.clone(),
            None => {
                for d in &unconnectable {
                    v.push(format!(
                        "database {d} refuses connections (ALLOW_CONNECTIONS false) and is left out; list it in `databases` to include it"
                    ));
                }
                self.list_databases()?
            }
        };
        for db in dbs.iter().filter(|d| !unconnectable.contains(d)) {
            for rel in self.relations_in_skipped_schemas(db).unwrap_or_default() {
                v.push(format!(
                    "database {db}: {rel} is in a schema pg_dump leaves out; move it to a schema of its own"
                ));
            }
        }
        Ok(v)
    }

    fn set_allow_connections(&self, db: &str, allow: bool) -> Result<()> {
        self.query(
            &self.src.maintenance_db,
            &format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
                quote_ident(db)
            ),
        )
        .map(|_| ())
    }

    pub fn database_exists(&self, db: &str) -> Result<bool> {
        let out = self.query(
            &self.src.maintenance_db,
            &format!(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = {}",
                quote_literal(db)
            ),
        )?;
        Ok(out.trim() == "1")
    }

    /// How many relations (tables, views, sequences, …) `db` holds outside the system
    /// schemas: 0 for a database that is empty or new.
    pub fn relation_count(&self, db: &str) -> Result<u64> {
        let out = self.query(
            db,
            "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'",
        )?;
        out.trim()
            .parse()
            .with_context(|| format!("counting the relations of database {db}: {out:?}"))
    }

    pub fn create_database(&self, db: &str) -> Result<()> {
        self.query(
            &self.src.maintenance_db,
            &format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(db)),
        )?;
        Ok(())
    }

    pub fn drop_database(&self, db: &str) -> Result<()> {
        self.query(
            &self.src.maintenance_db,
            &format!("DROP DATABASE IF EXISTS {}", quote_ident(db)),
        )?;
        Ok(())
    }

    /// Dump the source into `dir`: globals (unless off) and each database.
    /// `skip_missing`: configured databases that do not exist are left out with a warning
    /// (a safety backup before a restore) instead of failing.
    pub fn dump(&self, name: &str, dir: &Path, skip_missing: bool) -> Result<PgSummary> {
        let server_version = self
            .server_version()
            .with_context(|| format!("postgres source '{name}': connecting"))?;
        let unconnectable = self.unconnectable_databases()?;
        let databases = match &self.src.databases {
            Some(list) if skip_missing => {
                let mut existing = self.list_databases()?;
                existing.extend(unconnectable.iter().cloned());
                let mut keep = Vec::new();
                for d in list {
                    if existing.contains(d) {
                        keep.push(d.clone());
                    } else {
                        tracing::warn!("postgres source '{name}': database {d} does not exist now; nothing of it to save");
                    }
                }
                keep
            }
            Some(list) => list.clone(),
            None => {
                for d in &unconnectable {
                    tracing::warn!(
                        "postgres source '{name}': database {d} refuses connections (ALLOW_CONNECTIONS false), so it is NOT in this backup; list it in `databases` to include it"
                    );
                }
                self.list_databases()?
            }
        };
        let globals = if self.src.globals {
            let path = dir.join(GLOBALS_FILE);
            let file = create_private(&path)?;
            let mut c = self.tool("pg_dumpall", &self.src.maintenance_db);
            c.arg("--globals-only").stdout(Stdio::from(file));
            let f = run(&mut c, "pg_dumpall", false)?;
            if !f.status.success() {
                return Err(self.err(
                    "pg_dumpall --globals-only",
                    &format!("postgres source '{name}': dumping roles and tablespaces"),
                    &f,
                ));
            }
            tracing::debug!("postgres source '{name}': globals dumped");
            Some(GLOBALS_FILE.to_string())
        } else {
            None
        };
        let mut dbs = Vec::new();
        for db in &databases {
            let file = dump_file_name(db);
            let path = dir.join(&file);
            let started = std::time::Instant::now();
            let closed = unconnectable.contains(db);
            if closed {
                // Asked for by name: opened for the dump, closed again whatever happens.
                tracing::info!("postgres source '{name}': database {db} refuses connections; allowing them for the dump");
                self.set_allow_connections(db, true)?;
            }
            let dumped = self.dump_one(name, db, &path);
            if closed {
                self.set_allow_connections(db, false).with_context(|| {
                    format!(
                        "postgres source '{name}': setting ALLOW_CONNECTIONS false on {db} again"
                    )
                })?;
            }
            let tables =
                dumped.with_context(|| format!("postgres source '{name}': database {db}"))?;
            let bytes = std::fs::metadata(&path)?.len();
            self.check_dump(&path).with_context(|| {
                format!("postgres source '{name}': database {db}: the dump does not read back")
            })?;
            let d = PgDatabase {
                name: db.clone(),
                file,
                bytes,
                tables,
            };
            tracing::info!(
                "postgres source '{name}': dumped {db}: {} tables, {} rows, {} in {:.1}s",
                d.tables.len(),
                d.total_rows(),
                crate::fsutil::human_bytes(bytes),
                started.elapsed().as_secs_f64()
            );
            dbs.push(d);
        }
        Ok(PgSummary {
            source: name.to_string(),
            server_version,
            globals,
            databases: dbs,
        })
    }

    /// Warn about what the dump of `db` will lack, then dump it under the lock watchdog.
    fn dump_one(&self, name: &str, db: &str, path: &Path) -> Result<Vec<TableRows>> {
        for rel in self.relations_in_skipped_schemas(db)? {
            tracing::warn!(
                "postgres source '{name}': database {db}: {rel} is in a schema pg_dump leaves out, so it is NOT in this backup; move it to a schema of its own"
            );
        }
        self.watch_locks(|| self.dump_database(db, path))
    }

    /// `pg_dump -Fc --snapshot` of `db` into `out`, and the row counts of the same snapshot.
    fn dump_database(&self, db: &str, out: &Path) -> Result<Vec<TableRows>> {
        let mut s = Session::open(self, db)?;
        // The session idles in its transaction while pg_dump works: no server timeout may end it.
        s.exec("SET idle_in_transaction_session_timeout = 0")?;
        s.exec("SET statement_timeout = 0")?;
        s.exec("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        let snapshot = s
            .query("SELECT pg_catalog.pg_export_snapshot()")?
            .trim()
            .to_string();
        if snapshot.is_empty() || !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            bail!("unexpected snapshot id {snapshot:?} from pg_export_snapshot()");
        }
        let file = create_private(out)?;
        let mut c = self.tool("pg_dump", db);
        c.arg("-Fc")
            .arg(format!("--snapshot={snapshot}"))
            .stdout(Stdio::from(file))
            .stderr(Stdio::piped());
        let mut dump = spawn(&mut c, "pg_dump")?;
        let dump_err = collect(dump.stderr.take());
        // Count while pg_dump runs: both read the exported snapshot.
        let counted = s.count_tables();
        if counted.is_err() {
            let _ = dump.kill();
        }
        let status = dump.wait().context("waiting for pg_dump")?;
        let stderr = dump_err.join().unwrap_or_default();
        let tables = counted?;
        if !status.success() {
            bail!(
                "pg_dump failed ({}): {}",
                describe_status(status),
                self.tail(&stderr)
            );
        }
        s.exec("COMMIT")?;
        s.close()?;
        Ok(tables)
    }

    /// `pg_restore --list` reads the dump's table of contents.
    pub fn check_dump(&self, path: &Path) -> Result<()> {
        let mut c = self.restore_tool();
        c.arg("--list").stdin(Stdio::from(open(path)?));
        let f = run(&mut c, "pg_restore", true)?;
        if !f.status.success() || !f.stdout.contains("Format: CUSTOM") {
            bail!(
                "pg_restore --list failed ({}): {}",
                describe_status(f.status),
                self.tail(&f.stderr)
            );
        }
        Ok(())
    }

    /// Compare what a dump's table of contents holds beyond table rows — large objects
    /// and sequence values — with database `db` it was restored into. Returns one line per
    /// check that passed, and one per difference.
    pub fn check_dump_extras(
        &self,
        dump: &Path,
        db: &str,
        work: &Path,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let mut c = self.restore_tool();
        c.arg("--list").stdin(Stdio::from(open(dump)?));
        let toc = run(&mut c, "pg_restore", true)?;
        if !toc.status.success() {
            bail!("pg_restore --list failed: {}", self.tail(&toc.stderr));
        }
        let entries: Vec<&str> = toc.stdout.lines().filter(|l| !l.starts_with(';')).collect();
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        // Large objects: one `BLOB` entry each (PostgreSQL up to 16).
        let blobs = entries.iter().filter(|l| l.contains(" BLOB ")).count() as u64;
        let restored: u64 = self
            .query(
                db,
                "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata",
            )?
            .trim()
            .parse()
            .unwrap_or(0);
        if entries
            .iter()
            .any(|l| l.contains("BLOB METADATA") || l.contains("LARGE OBJECTS"))
        {
            ok.push(format!(
                "{restored} large objects restored (this dump format groups them; not counted)"
            ));
        } else if blobs == restored {
            ok.push(format!("{blobs} large objects, as in the dump"));
        } else {
            bad.push(format!(
                "large objects: the dump holds {blobs}, {restored} restored"
            ));
        }
        // Sequences: the values `SEQUENCE SET` entries give them.
        let seq: Vec<&str> = entries
            .iter()
            .copied()
            .filter(|l| l.contains(" SEQUENCE SET "))
            .collect();
        if !seq.is_empty() {
            let list = work.join(format!("sequences-{}.list", std::process::id()));
            std::fs::write(&list, seq.join("\n") + "\n")
                .with_context(|| format!("writing {}", list.display()))?;
            let mut c = self.restore_tool();
            c.arg("-L")
                .arg(&list)
                .args(["-f", "-"])
                .stdin(Stdio::from(open(dump)?));
            let f = run(&mut c, "pg_restore", true);
            let _ = std::fs::remove_file(&list);
            let f = f?;
            let mut same = 0;
            for line in f.stdout.lines() {
                let Some((name, value, called)) = parse_setval(line) else {
                    continue;
                };
                let now = self.query(
                    db,
                    &format!(
                        "SELECT coalesce(pg_catalog.pg_sequence_last_value({}::regclass)::text, 'not called')",
                        quote_literal(&name)
                    ),
                )?;
                let want = if called {
                    value.clone()
                } else {
                    "not called".to_string()
                };
                if now.trim() == want {
                    same += 1;
                } else {
                    bad.push(format!(
                        "sequence {name}: the dump sets {value} ({}), restored {}",
                        if called { "called" } else { "not called" },
                        now.trim()
                    ));
                }
            }
            ok.push(format!("{same} sequence values, as in the dump"));
        }
        Ok((ok, bad))
    }

    /// `pg_restore` without a connection (for `--list`).
    fn restore_tool(&self) -> Command {
        let mut c = if let Some((first, rest)) = self.src.command_prefix.split_first() {
            let mut c = Command::new(first);
            c.args(rest).arg("pg_restore");
            c
        } else if let Some(dir) = &self.bin_dir {
            Command::new(dir.join("pg_restore"))
        } else {
            Command::new("pg_restore")
        };
        self.set_env(&mut c);
        c
    }

    /// Row counts of every table of `db`, in one repeatable-read snapshot.
    pub fn count_tables(&self, db: &str) -> Result<Vec<TableRows>> {
        let mut s = Session::open(self, db)?;
        s.exec("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        let t = s.count_tables()?;
        s.exec("COMMIT")?;
        s.close()?;
        Ok(t)
    }

    /// Restore `globals.sql` (roles and tablespaces) without touching what is there:
    /// roles that do not exist are created with their attributes, settings and
    /// memberships; roles that exist are left exactly as they are (password, LOGIN,
    /// attributes, settings, memberships) unless `reset_roles`, which sets them to the
    /// backup's state. On a throwaway server tablespaces are left out. An "already
    /// exists" error (a tablespace that is there) is tolerated; any other fails.
    pub fn restore_globals(&self, path: &Path, reset_roles: bool) -> Result<GlobalsReport> {
        let sql =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let existing: std::collections::BTreeSet<String> = self
            .query(
                &self.src.maintenance_db,
                "SELECT rolname FROM pg_catalog.pg_roles ORDER BY 1",
            )?
            .lines()
            .map(str::to_string)
            .collect();
        let plan = plan_globals(&sql, &existing, reset_roles, self.throwaway);
        let filtered = path.with_file_name(format!(
            ".{}.to-run",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let _ = std::fs::remove_file(&filtered);
        create_private(&filtered)?
            .write_all(plan.sql.as_bytes())
            .with_context(|| format!("writing {}", filtered.display()))?;
        let mut c = self.tool("psql", &self.src.maintenance_db);
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=0"])
            .stdin(Stdio::from(open(&filtered)?));
        let f = run(&mut c, "psql", true);
        let _ = std::fs::remove_file(&filtered);
        let f = f?;
        if !f.status.success() {
            return Err(self.err("psql", "restoring roles and tablespaces", &f));
        }
        let errors: Vec<&str> = f.stderr.lines().filter(|l| l.contains("ERROR:")).collect();
        let (tolerated, bad): (Vec<&str>, Vec<&str>) = errors
            .into_iter()
            .partition(|l| l.contains("already exists"));
        if !bad.is_empty() {
            bail!(
                "restoring roles and tablespaces: {}",
                super::mask(&bad.join("\n"), &self.secrets)
            );
        }
        Ok(GlobalsReport {
            created: plan.created,
            left_alone: plan.left_alone,
            reset: plan.reset,
            tolerated: tolerated.len(),
        })
    }

    /// Replace database `target` by the dump, all or nothing: restored into a new
    /// database beside it, then swapped in by two renames, the old one dropped last. A
    /// failure before the swap leaves `target` as it was. Renaming needs `target` to have
    /// no sessions; the error says so.
    pub fn replace_database(&self, dump: &Path, dump_db: &str, target: &str) -> Result<()> {
        let pid = std::process::id();
        let new = format!("pronto_offsite_new_{pid}");
        let old = format!("pronto_offsite_old_{pid}");
        self.drop_database(&new)?;
        self.restore_database(dump, dump_db, &new, false)
            .with_context(|| {
                format!("restoring beside {target} (as {new}); {target} is unchanged")
            })?;
        let rename = |from: &str, to: &str| {
            self.query(
                &self.src.maintenance_db,
                &format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    quote_ident(from),
                    quote_ident(to)
                ),
            )
        };
        if let Err(e) = rename(target, &old) {
            let _ = self.drop_database(&new);
            return Err(e.context(format!(
                "moving {target} aside needs it to have no sessions; {target} is unchanged"
            )));
        }
        if let Err(e) = rename(&new, target) {
            let back = rename(&old, target);
            let _ = self.drop_database(&new);
            return Err(e.context(match back {
                Ok(_) => format!("{target} is unchanged"),
                Err(_) => format!("the old {target} is now named {old}"),
            }));
        }
        self.drop_database(&old)
            .with_context(|| format!("dropping the replaced database (now named {old})"))
    }

    /// Restore a dump into database `target`.
    ///
    /// - `target` exists: `pg_restore --clean --if-exists --single-transaction` into it
    ///   (all or nothing: a failure leaves it as it was).
    /// - `target` is missing and is the dump's own database: `pg_restore --create`
    ///   (the database comes back with its owner, encoding and settings).
    /// - `target` is missing and is another name: created from template0, then restored.
    ///
    /// `plain`: `--no-owner --no-privileges` (a scratch server without the roles).
    pub fn restore_database(
        &self,
        dump: &Path,
        dump_db: &str,
        target: &str,
        plain: bool,
    ) -> Result<RestoreMode> {
        let exists = self.database_exists(target)?;
        let mode = if exists {
            RestoreMode::Clean
        } else if target == dump_db && !plain {
            RestoreMode::Create
        } else {
            self.create_database(target)?;
            RestoreMode::Created
        };
        let mut c = match mode {
            RestoreMode::Create => {
                let mut c = self.tool("pg_restore", &self.src.maintenance_db);
                c.args(["--create", "--exit-on-error"]);
                c
            }
            RestoreMode::Clean => {
                let mut c = self.tool("pg_restore", target);
                c.args([
                    "--clean",
                    "--if-exists",
                    "--single-transaction",
                    "--exit-on-error",
                ]);
                c
            }
            RestoreMode::Created => {
                let mut c = self.tool("pg_restore", target);
                c.args(["--single-transaction", "--exit-on-error"]);
                c
            }
        };
        if plain {
            c.args(["--no-owner", "--no-privileges"]);
        }
        if self.throwaway || plain {
            c.arg("--no-tablespaces");
        }
        c.stdin(Stdio::from(open(dump)?));
        let res = self.watch_locks(|| {
            let f = run(&mut c, "pg_restore", true)?;
            if !f.status.success() {
                return Err(self.err("pg_restore", &format!("restoring database {target}"), &f));
            }
            Ok(())
        });
        if let Err(e) = res {
            // A `--create` restore that failed leaves a half-built database: drop it, so
            // the next attempt starts from nothing, as this one did.
            if matches!(mode, RestoreMode::Create | RestoreMode::Created) {
                if let Err(d) = self.drop_database(target) {
                    return Err(e.context(format!(
                        "and the half-restored database {target} could not be dropped ({d:#}); drop it by hand"
                    )));
                }
                return Err(e.context(format!(
                    "the half-restored database {target} was dropped again"
                )));
            }
            if format!("{e:#}").contains("depend on it") {
                return Err(e.context(format!(
                    "objects made since the backup depend on what the dump replaces in {target} (see the DETAIL above); \
                     nothing was changed. Restore beside it with --target-db NEW_NAME and compare, or drop those objects first"
                )));
            }
            return Err(e);
        }
        Ok(mode)
    }
}

/// `SELECT pg_catalog.setval('public.seq', 1000, true);` → ("public.seq", "1000", true).
fn parse_setval(line: &str) -> Option<(String, String, bool)> {
    let rest = line.trim().strip_prefix("SELECT pg_catalog.setval('")?;
    // The name is a literal: '' stands for '.
    let mut name = String::new();
    let mut chars = rest.char_indices().peekable();
    let mut end = None;
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().map(|(_, c)| *c) == Some('\'') {
                chars.next();
                name.push('\'');
            } else {
                end = Some(i + 1);
                break;
            }
        } else {
            name.push(c);
        }
    }
    let args = rest[end?..].trim_start_matches(',').trim();
    let args = args.strip_suffix(");")?;
    let (value, called) = args.split_once(',')?;
    Some((name, value.trim().to_string(), called.trim() == "true"))
}

/// What [`PgClient::restore_globals`] did with the roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalsReport {
    /// Roles that were missing and were created from the backup.
    pub created: Vec<String>,
    /// Roles that exist and were not touched.
    pub left_alone: Vec<String>,
    /// Roles that exist and were set to the backup's state (`--reset-roles`).
    pub reset: Vec<String>,
    /// "already exists" errors tolerated (tablespaces that are there).
    pub tolerated: usize,
}

impl GlobalsReport {
    /// `created roles a, b; left 3 existing roles as they are (c, d, e)`.
    pub fn describe(&self) -> String {
        let list = |v: &[String]| v.join(", ");
        let mut parts = Vec::new();
        if !self.created.is_empty() {
            parts.push(format!("created roles {}", list(&self.created)));
        }
        if !self.left_alone.is_empty() {
            parts.push(format!(
                "left {} existing roles exactly as they are ({}; --reset-roles sets them to the backup's state)",
                self.left_alone.len(),
                list(&self.left_alone)
            ));
        }
        if !self.reset.is_empty() {
            parts.push(format!(
                "reset {} existing roles to the backup's state ({})",
                self.reset.len(),
                list(&self.reset)
            ));
        }
        if self.tolerated > 0 {
            parts.push(format!("{} tablespaces already existed", self.tolerated));
        }
        if parts.is_empty() {
            "no roles in the backup".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// `globals.sql` cut down to what may run, and what it does to which role.
#[derive(Debug, Default)]
struct GlobalsPlan {
    sql: String,
    created: Vec<String>,
    left_alone: Vec<String>,
    reset: Vec<String>,
}

/// Decide statement by statement what of `pg_dumpall --globals-only` output runs:
/// - `CREATE ROLE r` only for a role that is not in `existing`;
/// - `ALTER ROLE r …`, `COMMENT ON ROLE r`, `SECURITY LABEL … ON ROLE r` and memberships
///   `GRANT x TO r` only for a role created here, or for every role with `reset`;
/// - tablespace statements unless `no_tablespaces`;
/// - anything else (SET, psql meta-commands) as it is.
fn plan_globals(
    sql: &str,
    existing: &std::collections::BTreeSet<String>,
    reset: bool,
    no_tablespaces: bool,
) -> GlobalsPlan {
    let mut plan = GlobalsPlan::default();
    let touches_existing = |r: &str| existing.contains(r) && !reset;
    for stmt in split_sql(sql) {
        let upper = stmt.to_ascii_uppercase();
        let keep = if let Some(rest) = strip_prefix_ci(&stmt, "CREATE ROLE ") {
            let role = parse_ident(rest).map(|(r, _)| r);
            match role {
                Some(r) if existing.contains(&r) => {
                    if reset {
                        plan.reset.push(r);
                    } else {
                        plan.left_alone.push(r);
                    }
                    false
                }
                Some(r) => {
                    plan.created.push(r);
                    true
                }
                None => true,
            }
        } else if let Some(rest) = strip_prefix_ci(&stmt, "ALTER ROLE ")
            .or_else(|| strip_prefix_ci(&stmt, "COMMENT ON ROLE "))
        {
            !parse_ident(rest).is_some_and(|(r, _)| touches_existing(&r))
        } else if upper.starts_with("SECURITY LABEL ") {
            match upper.find(" ON ROLE ") {
                Some(i) => !parse_ident(&stmt[i + 9..]).is_some_and(|(r, _)| touches_existing(&r)),
                None => true,
            }
        } else if upper.contains("TABLESPACE ") && no_tablespaces {
            false
        } else if let Some(rest) = strip_prefix_ci(&stmt, "GRANT ") {
            // A membership: GRANT role TO member …
            match parse_ident(rest)
                .and_then(|(_, after)| strip_prefix_ci(after.trim_start(), "TO "))
                .and_then(parse_ident)
            {
                Some((member, _)) => !touches_existing(&member),
                None => true,
            }
        } else {
            true
        };
        if keep {
            plan.sql.push_str(&stmt);
            plan.sql.push('\n');
        }
    }
    plan
}

fn strip_prefix_ci<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    (s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix))
    .then(|| &s[prefix.len()..])
}

/// An identifier as pg_dump writes it (`name` or `"Na""me"`), and what follows it.
fn parse_ident(s: &str) -> Option<(String, &str)> {
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().map(|(_, c)| *c) == Some('"') {
                    chars.next();
                    out.push('"');
                } else {
                    return Some((out, &rest[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let end = s
            .find(|c: char| c.is_whitespace() || c == ';')
            .unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

/// Split a SQL script into statements (each with its `;`) and psql meta-command lines,
/// leaving out `--` comments; quotes (`'…'`, `"…"`, `$tag$…$tag$`) are respected.
fn split_sql(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if cur.trim().is_empty() {
            // At a statement's start: a comment or a meta-command runs to the line's end.
            if c == b'\\' || (c == b'-' && b.get(i + 1) == Some(&b'-')) {
                let end = sql[i..].find('\n').map_or(b.len(), |n| i + n);
                if c == b'\\' {
                    out.push(sql[i..end].to_string());
                }
                cur.clear();
                i = end + 1;
                continue;
            }
        }
        match c {
            b'\'' | b'"' => {
                let end = sql[i + 1..].find(c as char).map_or(b.len(), |n| i + 1 + n);
                cur.push_str(&sql[i..(end + 1).min(b.len())]);
                i = end + 1;
            }
            b'$' => {
                let tag_end = sql[i + 1..]
                    .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                    .map(|n| i + 1 + n);
                match tag_end.filter(|&e| b[e] == b'$') {
                    Some(e) => {
                        let tag = &sql[i..=e];
                        let close = sql[e + 1..]
                            .find(tag)
                            .map_or(b.len(), |n| e + 1 + n + tag.len());
                        cur.push_str(&sql[i..close.min(b.len())]);
                        i = close;
                    }
                    None => {
                        cur.push('$');
                        i += 1;
                    }
                }
            }
            b';' => {
                cur.push(';');
                out.push(cur.trim().to_string());
                cur.clear();
                i += 1;
            }
            _ => {
                let ch = sql[i..].chars().next().expect("in bounds");
                cur.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// How [`PgClient::restore_database`] went about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMode {
    Clean,
    Create,
    Created,
}

impl RestoreMode {
    pub fn describe(self) -> &'static str {
        match self {
            RestoreMode::Clean => {
                "into the existing database (pg_restore --clean --if-exists --single-transaction)"
            }
            RestoreMode::Create => "created from the dump (pg_restore --create)",
            RestoreMode::Created => "into a new database (pg_restore --single-transaction)",
        }
    }
}

fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("opening {}", path.display()))
}

/// A `psql` child kept open, fed statements on stdin; each answer ends at a marker line.
struct Session<'c> {
    client: &'c PgClient<'c>,
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Option<std::thread::JoinHandle<String>>,
    marker: String,
    what: String,
}

impl<'c> Session<'c> {
    fn open(client: &'c PgClient<'c>, db: &str) -> Result<Session<'c>> {
        let mut c = client.psql(db);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut c, "psql")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let stderr = Some(collect(child.stderr.take()));
        let marker = format!(
            "--pronto-offsite-{}-{}--",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        Ok(Session {
            client,
            child,
            stdin,
            stdout,
            stderr,
            marker,
            what: format!("database {db} on {}", client.src.describe()),
        })
    }

    /// The session ended early: its stderr says why.
    fn failed(&mut self) -> anyhow::Error {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        anyhow!(
            "psql on {} failed ({}): {}",
            self.what,
            status.map_or("failed".into(), describe_status),
            self.client.tail(&stderr)
        )
    }

    /// Send one statement and return the lines it printed.
    fn query(&mut self, sql: &str) -> Result<String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("psql session closed"))?;
        let sent = writeln!(stdin, "{sql};\n\\echo {}", self.marker).and_then(|_| stdin.flush());
        if sent.is_err() {
            return Err(self.failed());
        }
        let mut out = String::new();
        loop {
            let mut line = String::new();
            match self.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => return Err(self.failed()),
                Ok(_) => {}
            }
            if line.trim_end_matches(['\n', '\r']) == self.marker {
                return Ok(out);
            }
            out.push_str(&line);
        }
    }

    fn exec(&mut self, sql: &str) -> Result<()> {
        self.query(sql).map(|_| ())
    }

    /// Every user table and its row count, in this session's snapshot. Tables a
    /// superuser made in a schema `pg_dump` leaves out are listed too: the manifest then
    /// says they existed, and the drill reports them missing from the dump.
    fn count_tables(&mut self) -> Result<Vec<TableRows>> {
        let list = self.query(
            "SELECT coalesce(jsonb_agg(jsonb_build_array(n.nspname::text, c.relname::text)), '[]'::jsonb)::text \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND ((n.nspname <> 'information_schema' AND n.nspname !~ '^pg_') \
               OR (c.oid >= 16384 AND n.nspname IN ('information_schema', 'pg_catalog'))) \
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
               WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')",
        )?;
        let mut names: Vec<(String, String)> = serde_json::from_str(list.trim())
            .with_context(|| format!("reading the table list of {}", self.what))?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(COUNT_BATCH) {
            let parts: Vec<String> = chunk
                .iter()
                .enumerate()
                .map(|(i, (s, t))| {
                    format!(
                        "SELECT {i} AS i, count(*) AS c FROM ONLY {}.{}",
                        quote_ident(s),
                        quote_ident(t)
                    )
                })
                .collect();
            let sql = format!(
                "SELECT coalesce(jsonb_agg(q.c ORDER BY q.i), '[]'::jsonb)::text FROM ({}) q",
                parts.join(" UNION ALL ")
            );
            let counts: Vec<u64> = serde_json::from_str(self.query(&sql)?.trim())
                .with_context(|| format!("reading row counts of {}", self.what))?;
            if counts.len() != chunk.len() {
                bail!(
                    "expected {} row counts from {}, got {}",
                    chunk.len(),
                    self.what,
                    counts.len()
                );
            }
            for ((schema, table), rows) in chunk.iter().zip(counts) {
                out.push(TableRows {
                    schema: schema.clone(),
                    table: table.clone(),
                    rows,
                });
            }
        }
        Ok(out)
    }

    fn close(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait().context("waiting for psql")?;
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        if !status.success() {
            bail!(
                "psql on {} failed ({}): {}",
                self.what,
                describe_status(status),
                self.client.tail(&stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            drop(self.stdin.take());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_versions_are_read_from_server_and_tool_strings() {
        assert_eq!(major_version("15.10 (Debian 15.10-0+deb12u1)"), Some(15));
        assert_eq!(major_version("pg_dump (PostgreSQL) 16.4"), Some(16));
        assert_eq!(major_version("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(major_version("17beta1"), Some(17));
        assert_eq!(major_version("pg_dump (PostgreSQL)"), None);
    }

    #[test]
    fn url_becomes_keywords_without_a_password() {
        let (p, db) =
            parse_url("postgresql://pronto@127.0.0.1:5432/postgres?sslmode=require").unwrap();
        assert_eq!(
            p,
            vec![
                ("host".to_string(), "127.0.0.1".to_string()),
                ("port".to_string(), "5432".to_string()),
                ("user".to_string(), "pronto".to_string()),
                ("sslmode".to_string(), "require".to_string()),
            ]
        );
        assert_eq!(db.as_deref(), Some("postgres"));
        assert!(parse_url("postgresql://pronto:secret@h/db")
            .unwrap_err()
            .contains("without a password"));
        assert!(parse_url("postgresql://h/db?password=x").is_err());
        assert!(parse_url("mysql://h/db").is_err());
        let (p, db) = parse_url("postgresql://%2Fvar%2Frun%2Fpostgresql/my%20db").unwrap();
        assert_eq!(
            p,
            vec![("host".to_string(), "/var/run/postgresql".to_string())]
        );
        assert_eq!(db.as_deref(), Some("my db"));
    }

    #[test]
    fn conninfo_quotes_values() {
        let src = PgSource::from_url("postgresql://o'neil@host/db").unwrap();
        let ci = src.conninfo("we'ird \\ db");
        assert!(ci.contains(r"user='o\'neil'"), "{ci}");
        assert!(ci.contains(r"dbname='we\'ird \\ db'"), "{ci}");
        assert!(!src.describe().contains("password"));
    }

    #[test]
    fn globals_create_missing_roles_and_leave_existing_ones_alone() {
        let sql = "--\n-- Roles\n--\n\nSET client_encoding = 'UTF8';\n\\restrict abc\n\
                   CREATE ROLE app;\nALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:x;y';\n\
                   CREATE ROLE \"Odd \"\"one\";\nALTER ROLE \"Odd \"\"one\" WITH NOLOGIN;\n\
                   COMMENT ON ROLE app IS 'it''s; here';\nALTER ROLE app SET search_path TO a;\n\
                   GRANT readers TO app GRANTED BY postgres;\nGRANT readers TO \"Odd \"\"one\" GRANTED BY postgres;\n\
                   CREATE TABLESPACE fast OWNER app LOCATION '/srv/ts';\nGRANT ALL ON TABLESPACE fast TO app;\n";
        let existing: std::collections::BTreeSet<String> =
            ["app".to_string(), "postgres".to_string()].into();
        let p = plan_globals(sql, &existing, false, false);
        assert_eq!(p.created, vec!["Odd \"one".to_string()]);
        assert_eq!(p.left_alone, vec!["app".to_string()]);
        assert!(!p.sql.contains("ROLE app"), "{}", p.sql);
        assert!(!p.sql.contains("TO app GRANTED"), "{}", p.sql);
        assert!(p.sql.contains("CREATE ROLE \"Odd \"\"one\";"), "{}", p.sql);
        assert!(
            p.sql.contains("GRANT readers TO \"Odd \"\"one\""),
            "{}",
            p.sql
        );
        assert!(p.sql.contains("\\restrict abc\n"), "{}", p.sql);
        assert!(p.sql.contains("CREATE TABLESPACE fast"), "{}", p.sql);
        let reset = plan_globals(sql, &existing, true, true);
        assert_eq!(reset.reset, vec!["app".to_string()]);
        assert!(reset
            .sql
            .contains("ALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:x;y';"));
        assert!(reset.sql.contains("COMMENT ON ROLE app IS 'it''s; here';"));
        assert!(!reset.sql.contains("CREATE ROLE app;"));
        assert!(!reset.sql.contains("TABLESPACE"), "{}", reset.sql);
    }

    #[test]
    fn setval_lines_are_read() {
        assert_eq!(
            parse_setval("SELECT pg_catalog.setval('public.invoice_no', 1000, true);"),
            Some(("public.invoice_no".into(), "1000".into(), true))
        );
        assert_eq!(
            parse_setval("SELECT pg_catalog.setval('\"it''s\".\"s\"', 1, false);"),
            Some(("\"it's\".\"s\"".into(), "1".into(), false))
        );
        assert_eq!(parse_setval("SET search_path = '';"), None);
    }

    #[test]
    fn dump_file_names_are_plain() {
        assert_eq!(dump_file_name("pronto"), "pronto.dump");
        assert_eq!(dump_file_name("a/b c"), "a%2Fb%20c.dump");
        assert_eq!(dump_file_name(".hidden"), "%2Ehidden.dump");
        assert_eq!(dump_file_name("café"), "caf%C3%A9.dump");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }
}
