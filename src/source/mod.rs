//! Service sources: PostgreSQL ([`postgres`]) and Redis ([`redis`]), dumped with
//! their own client tools into a spool folder inside the backup folder, then
//! archived like any folder (`postgres_data/<name>/`, `redis_data/<name>/`).
//!
//! Secrets (a PostgreSQL or Redis password) are read from a `password_file` or
//! inherited from the environment (`PGPASSWORD`, `.pgpass`, `REDISCLI_AUTH`), and are
//! handed to child processes through the environment or a 0600 pgpass file in a
//! private folder: never in argv, never in a log line, an archive or a manifest.
//! Errors quote the tool's stderr with any known secret masked.

pub mod postgres;
pub mod rdb;
pub mod redis;
pub mod scratch;

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub use crate::config::service_keys::CommandLine;

pub use postgres::PgSource;
pub use redis::RedisSource;

/// Read a password file: the first line, without its line ending.
///
/// Like ssh with a private key, a file that its group or others may read is refused,
/// with the `chmod` that fixes it.
pub(crate) fn read_password_file(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading password_file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "password_file {} can be read by others (mode {:04o}); it must be private to its owner: chmod 600 {}",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading password_file {}", path.display()))?;
    let first = text.lines().next().unwrap_or("").to_string();
    if first.is_empty() {
        bail!("password_file {} is empty", path.display());
    }
    Ok(first)
}

/// Mask every known secret in `text`.
pub(crate) fn mask(text: &str, secrets: &[String]) -> String {
    let mut t = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        t = t.replace(s.as_str(), "***");
    }
    t
}

/// The last `max` non-empty lines of a tool's stderr, secrets masked, on one line each.
pub(crate) fn tail(stderr: &str, secrets: &[String], max: usize) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(max);
    mask(&lines[from..].join("\n"), secrets)
}

/// Spawn `cmd`, naming the tool in the error when it cannot be started.
pub(crate) fn spawn(cmd: &mut Command, tool: &str) -> Result<Child> {
    cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("{tool} was not found: {}", install_hint(tool))
        } else {
            anyhow!("cannot start {tool}: {e}")
        }
    })
}

fn install_hint(tool: &str) -> &'static str {
    match tool {
        "pg_dump" | "pg_dumpall" | "pg_restore" | "psql" => {
            "install the PostgreSQL client tools (Debian: postgresql-client), or set command_prefix to run them in the database's container"
        }
        "redis-cli" => "install the Redis client (Debian: redis-tools)",
        "redis-server" => "install the Redis server (Debian: redis-server)",
        "initdb" | "postgres" | "pg_ctl" => "install the PostgreSQL server (Debian: postgresql), or configure [drill] postgres_url",
        _ => "check that it is installed and on PATH",
    }
}

/// Read a child's pipe to the end in a thread.
pub(crate) fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// What a finished tool left.
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run a command to completion (stdin must be set by the caller, or is null), collecting
/// stdout (unless redirected by the caller) and stderr.
pub(crate) fn run(cmd: &mut Command, tool: &str, capture_stdout: bool) -> Result<Finished> {
    if capture_stdout {
        cmd.stdout(Stdio::piped());
    }
    cmd.stderr(Stdio::piped());
    let mut child = spawn(cmd, tool)?;
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    let status = child
        .wait()
        .with_context(|| format!("waiting for {tool}"))?;
    Ok(Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// `exit 1`, `killed by signal 9`.
pub(crate) fn describe_status(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "failed".into(),
    }
}

/// Run a configured command (stop_command, start_command) with a time limit. What it
/// prints, and the command itself, are shown with `secrets` masked.
pub(crate) fn run_command_line(
    c: &CommandLine,
    what: &str,
    limit: Duration,
    secrets: &[String],
) -> Result<String> {
    let shown = mask(&c.shown(), secrets);
    let mut cmd = c.command();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow!("{what} `{shown}` could not be started: {e}"))?;
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} `{shown}` did not return within {}s (it must return once the service is started or stopped)",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "{what} `{shown}` failed ({}): {}",
            describe_status(status),
            tail(&format!("{stdout}\n{stderr}"), secrets, 8)
        );
    }
    Ok(tail(&format!("{stdout}\n{stderr}"), secrets, 3))
}

/// A private working folder (0700) that is removed, with everything in it, when dropped.
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// Create `path` (it must not exist yet) with mode 0700.
    pub fn create(path: PathBuf) -> Result<WorkDir> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating folder {}", path.display()))?;
        Ok(WorkDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leave the folder in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("could not remove {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// Remove leftovers `<dir>/<prefix>*-<pid>` of runs that were killed (their pid is gone).
pub fn remove_stale_work_dirs(dir: &Path, prefix: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!("removing {name}, left by an interrupted run");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// An environment variable for a child, as an owned pair.
pub(crate) type EnvVar = (OsString, OsString);

/// Spool folders in the backup folder start with this (`.spool-<id>`).
pub const SPOOL_PREFIX: &str = ".spool-";

/// The dumps of one backup's PostgreSQL and Redis sources, spooled in
/// `<dir>/.spool-<id>/<source name>/`; the spool is removed when this is dropped.
pub struct Services {
    spool: Option<WorkDir>,
    postgres: Vec<(crate::manifest::PgSummary, String)>,
    redis: Vec<(crate::manifest::RedisSummary, String)>,
}

/// Dump every postgres and redis source among `sources` into a new spool in `dir`.
/// `safety`: configured databases that no longer exist are skipped (a safety backup).
pub fn dump_services(
    dir: &Path,
    id: &str,
    sources: &[&crate::config::Source],
    safety: bool,
) -> Result<Services> {
    let mut s = Services {
        spool: None,
        postgres: Vec::new(),
        redis: Vec::new(),
    };
    if !sources
        .iter()
        .any(|x| x.postgres.is_some() || x.redis.is_some())
    {
        return Ok(s);
    }
    let spool = WorkDir::create(dir.join(format!("{SPOOL_PREFIX}{id}")))?;
    for src in sources {
        let folder = spool.path().join(&src.name);
        if let Some(pg) = &src.postgres {
            crate::fsutil::create_private_dir(&folder)?;
            let client = postgres::PgClient::new(pg, spool.path())
                .with_context(|| format!("postgres source '{}'", src.name))?;
            let sum = client.dump(&src.name, &folder, safety)?;
            s.postgres.push((sum, pg.describe()));
        } else if let Some(r) = &src.redis {
            crate::fsutil::create_private_dir(&folder)?;
            let client = redis::RedisClient::new(r)
                .with_context(|| format!("redis source '{}'", src.name))?;
            let sum = client.dump(&src.name, &folder)?;
            s.redis.push((sum, r.describe()));
        }
    }
    s.spool = Some(spool);
    Ok(s)
}

impl Services {
    /// The spooled folder of service source `name`.
    pub fn folder(&self, name: &str) -> Option<PathBuf> {
        let known = self.postgres.iter().any(|(p, _)| p.source == name)
            || self.redis.iter().any(|(r, _)| r.source == name);
        match &self.spool {
            Some(sp) if known => Some(sp.path().join(name)),
            _ => None,
        }
    }

    /// Summaries with the service's address as origin instead of the spool path.
    pub fn patch_origins(
        &self,
        mut sums: Vec<crate::manifest::SourceSummary>,
    ) -> Vec<crate::manifest::SourceSummary> {
        for s in &mut sums {
            if let Some((_, d)) = self.postgres.iter().find(|(p, _)| p.source == s.name) {
                s.origin = d.clone();
            } else if let Some((_, d)) = self.redis.iter().find(|(r, _)| r.source == s.name) {
                s.origin = d.clone();
            }
        }
        sums
    }

    /// Lines for backup_info.txt: what each dump holds and how to restore it by hand.
    pub fn describe(&self, text: &mut String) {
        use std::fmt::Write as _;
        for (p, _) in &self.postgres {
            let _ = writeln!(
                text,
                "postgres source {} (PostgreSQL {}):",
                p.source, p.server_version
            );
            if let Some(g) = &p.globals {
                let _ = writeln!(
                    text,
                    "  {g}: roles and tablespaces (pg_dumpall --globals-only)"
                );
            }
            for d in &p.databases {
                let _ = writeln!(
                    text,
                    "  {}: database {}, pg_dump -Fc, {} tables, {} rows (counted in the dump's snapshot)",
                    d.file,
                    d.name,
                    d.tables.len(),
                    d.total_rows()
                );
            }
            let _ = writeln!(
                text,
                "  by hand: psql -f globals.sql postgres; pg_restore --create -d postgres DB.dump (or --clean --if-exists -d DB)"
            );
        }
        for (r, _) in &self.redis {
            let _ = writeln!(
                text,
                "redis source {}: {} (RDB version {}), {} keys: {}",
                r.source,
                r.file,
                r.rdb_version,
                r.total_keys(),
                r.dbs
                    .iter()
                    .map(|d| format!("db{}={}", d.db, d.keys))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            let _ = writeln!(
                text,
                "  by hand: stop redis, copy dump.rdb into its dir (CONFIG GET dir), start redis"
            );
        }
    }

    /// The summaries for the manifest; removes the spool.
    pub fn finish(
        self,
    ) -> (
        Vec<crate::manifest::PgSummary>,
        Vec<crate::manifest::RedisSummary>,
    ) {
        (
            self.postgres.into_iter().map(|(p, _)| p).collect(),
            self.redis.into_iter().map(|(r, _)| r).collect(),
        )
    }
}
