//! Throwaway servers for the restore drill (`verify --restore-test`): a private
//! PostgreSQL instance (initdb in a temp folder, on a free port of 127.0.0.1, trust
//! auth, fsync off) and a private redis-server loading one RDB file. Each is a child
//! of this process, stopped and removed with its folder when dropped, and told to
//! die with this process (`PR_SET_PDEATHSIG`) should it be killed.
//!
//! `initdb` refuses to run as root: as root the instance runs as the `postgres` user.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::postgres::{PgClient, PgSource};
use super::redis::{RedisClient, RedisSource};
use super::{free_port, spawn};

/// The folder holding PostgreSQL server binaries: `configured`, else `pg_config --bindir`,
/// else the newest `/usr/lib/postgresql/*/bin` or `/usr/pgsql-*/bin`, else `initdb` on PATH.
pub fn find_pg_bin_dir(configured: Option<&Path>) -> Option<PathBuf> {
    let ok = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = configured {
        return ok(d).then(|| d.to_path_buf());
    }
    if let Ok(o) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if o.status.success() && ok(&d) {
            return Some(d);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for (root, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(v) = name.strip_prefix(prefix) else {
                    continue;
                };
                let Some(major) = v.split('.').next().and_then(|m| m.parse::<u32>().ok()) else {
                    continue;
                };
                let d = e.path().join("bin");
                if ok(&d) {
                    found.push((major, d));
                }
            }
        }
    }
    found.sort();
    if let Some((_, d)) = found.pop() {
        return Some(d);
    }
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).find(|d| ok(d)))
}

/// uid and gid of `postgres` when running as root.
fn run_as() -> Result<Option<(u32, u32)>> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer to static storage or NULL; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("initdb refuses to run as root and there is no 'postgres' user to run it as; create one or configure [drill] postgres_url");
    }
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

/// Configure `c` to run as `who` and to be killed when this process dies.
fn child_setup(c: &mut Command, who: Option<(u32, u32)>) {
    if let Some((uid, gid)) = who {
        c.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe; runs after the uid change, so it sticks.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    super::tail(&text, &[], 8)
}

/// A private PostgreSQL instance.
pub struct PrivatePostgres {
    dir: PathBuf,
    child: Option<Child>,
    pub port: u16,
    pub bin_dir: PathBuf,
    source: PgSource,
}

impl PrivatePostgres {
    /// initdb and start an instance with the server binaries in `bin_dir`.
    pub fn start(bin_dir: &Path) -> Result<PrivatePostgres> {
        let who = run_as()?;
        let dir = std::env::temp_dir().join(format!(
            "pronto-offsite-drill-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut me = PrivatePostgres {
            dir: dir.clone(),
            child: None,
            port: 0,
            bin_dir: bin_dir.to_path_buf(),
            source: PgSource::from_url("postgresql://postgres@127.0.0.1/postgres").expect("parses"),
        };
        if let Some((uid, gid)) = who {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .with_context(|| format!("handing {} to the postgres user", dir.display()))?;
        }
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let log = dir.join("server.log");
        let mut c = Command::new(bin_dir.join("initdb"));
        c.args([
            "-A",
            "trust",
            "-N",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "-D",
        ])
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        child_setup(&mut c, who);
        let f = super::run(&mut c, "initdb", true)?;
        if !f.status.success() {
            bail!(
                "initdb of the drill's private instance failed: {}",
                super::tail(&f.stderr, &[], 8)
            );
        }
        let port = free_port()?;
        let logf = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        if let Some((uid, gid)) = who {
            let _ = std::os::unix::fs::chown(&log, Some(uid), Some(gid));
        }
        let mut c = Command::new(bin_dir.join("postgres"));
        c.arg("-D")
            .arg(dir.join("data"))
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "max_locks_per_transaction=1024",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(logf.try_clone()?))
            .stderr(Stdio::from(logf));
        child_setup(&mut c, who);
        me.child = Some(spawn(&mut c, "postgres")?);
        me.port = port;
        me.source = PgSource::from_url(&format!("postgresql://postgres@127.0.0.1:{port}/postgres"))
            .expect("parses");
        // Ready when a query answers.
        let start = Instant::now();
        let work = me.dir.clone();
        loop {
            if let Some(s) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "the drill's private PostgreSQL stopped at start ({}): {}",
                    super::describe_status(s),
                    log_tail(&log)
                );
            }
            let client = PgClient::new(&me.source, &work)?
                .with_bin_dir(Some(bin_dir.to_path_buf()))
                .throwaway();
            if client.query("postgres", "SELECT 1").is_ok() {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the drill's private PostgreSQL did not start within 60s: {}",
                    log_tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(me)
    }

    /// How to connect (as `postgres`, trust auth).
    pub fn source(&self) -> &PgSource {
        &self.source
    }

    /// Its folder (a place for a client's private files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: fast shutdown; then SIGKILL if it lingers.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(15) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private redis-server that loaded one RDB file.
pub struct PrivateRedis {
    dir: PathBuf,
    child: Option<Child>,
    pub port: u16,
    source: RedisSource,
}

impl PrivateRedis {
    /// Start redis-server in a new folder `dir` (removed on drop) with `rdb` as its data.
    pub fn start(dir: PathBuf, rdb: &Path, server: &str) -> Result<PrivateRedis> {
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut me = PrivateRedis {
            dir: dir.clone(),
            child: None,
            port: 0,
            source: RedisSource::local(0),
        };
        std::fs::copy(rdb, dir.join("dump.rdb"))
            .with_context(|| format!("copying {}", rdb.display()))?;
        let port = free_port()?;
        let log = dir.join("redis.log");
        let mut c = Command::new(server);
        c.args(["--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--dir")
            .arg(&dir)
            .args([
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        child_setup(&mut c, None);
        me.child = Some(spawn(&mut c, "redis-server")?);
        me.port = port;
        me.source = RedisSource::local(port);
        let start = Instant::now();
        loop {
            if let Some(s) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(anyhow!(
                    "the drill's redis-server stopped while loading the snapshot ({}): {}",
                    super::describe_status(s),
                    log_tail(&log)
                ));
            }
            let client = RedisClient::new(&me.source)?;
            if client.wait_ready(Duration::from_millis(1)).is_ok() {
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!(
                    "the drill's redis-server did not finish loading within 120s: {}",
                    log_tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(me)
    }

    pub fn source(&self) -> &RedisSource {
        &self.source
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
