//! A private PostgreSQL server per test: initdb in a temp folder, on a free port of
//! 127.0.0.1, stopped and removed when dropped (also when the test panics).
//!
//! `initdb` refuses to run as root (TESTING.md): as root, the folder is handed to the
//! `postgres` user and the server runs as that user. Missing binaries fail the test.
//!
//! Authentication: trust for everyone on the socket and on 127.0.0.1, except the role
//! `pronto`, which must give its password (scram-sha-256) over TCP.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Pg {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub bin: PathBuf,
    child: Option<Child>,
}

/// The folder with initdb, postgres and psql (the newest installed major version).
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let d = e.path().join("bin");
                    d.join("initdb").is_file().then_some((v, d))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.pop() {
        Some((_, d)) => d,
        None => panic!(
            "PostgreSQL server binaries (initdb) not found under /usr/lib/postgresql: run scripts/test, which installs them"
        ),
    }
}

fn postgres_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root but there is no 'postgres' user to run initdb as"
    );
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn as_postgres(c: &mut Command) {
    if let Some((uid, gid)) = postgres_user() {
        c.uid(uid).gid(gid);
    }
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pg {
    pub fn start() -> Pg {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("pronto-test-pg-")
            .tempdir()
            .unwrap();
        if let Some((uid, gid)) = postgres_user() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let mut c = Command::new(bin.join("initdb"));
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
        .arg(&data)
        .stdout(Stdio::null());
        as_postgres(&mut c);
        let o = c.output().expect("running initdb");
        assert!(
            o.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all pronto 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let mut pg = Pg {
            dir,
            port: 0,
            bin,
            child: None,
        };
        pg.launch();
        pg
    }

    fn launch(&mut self) {
        self.port = free_port();
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        if let Some((uid, gid)) = postgres_user() {
            std::os::unix::fs::chown(self.dir.path().join("server.log"), Some(uid), Some(gid))
                .unwrap();
        }
        let mut c = Command::new(self.bin.join("postgres"));
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
            ])
            .args(["-c", "full_page_writes=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        as_postgres(&mut c);
        self.child = Some(c.spawn().expect("starting postgres"));
        let start = Instant::now();
        while self.try_psql("postgres", "SELECT 1").is_err() {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited ({s}): {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "postgres did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `postgresql://USER@127.0.0.1:PORT/postgres`.
    pub fn url(&self, user: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/postgres", self.port)
    }

    /// A psql command as the superuser `postgres` over TCP.
    pub fn psql_cmd(&self, db: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .arg("-d")
        .arg(db)
        .env("PGCLIENTENCODING", "UTF8")
        .env_remove("PGPASSWORD");
        c
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let o = self
            .psql_cmd(db)
            .arg("-c")
            .arg(sql)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// Run SQL as `postgres`; panics on failure. Returns the output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        match self.try_psql(db, sql) {
            Ok(s) => s,
            Err(e) => panic!("psql on {db} failed: {e}\nSQL: {sql}"),
        }
    }

    /// Run a script (several statements) from stdin.
    pub fn script(&self, db: &str, sql: &str) {
        use std::io::Write;
        let mut c = self.psql_cmd(db);
        c.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "script on {db} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Every user table of `db`: "schema.table" → md5 of all its rows (in a stable order),
    /// plus sequences' state, views' definitions and the row count.
    pub fn fingerprint(&self, db: &str) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        let tables = self.psql(
            db,
            "SELECT format('%I.%I', n.nspname, c.relname), c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','S','v') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
        );
        for line in tables.lines() {
            let (name, kind) = line.rsplit_once('|').unwrap();
            let v = match kind {
                "r" => self.psql(
                    db,
                    &format!(
                        "SELECT count(*) || ' rows ' || md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {name} t"
                    ),
                ),
                "S" => self.psql(db, &format!("SELECT last_value || ' ' || is_called FROM {name}")),
                _ => self.psql(db, &format!("SELECT pg_get_viewdef('{}'::regclass)", name.replace('\'', "''"))),
            };
            out.insert(format!("{kind} {name}"), v.trim().to_string());
        }
        out
    }

    /// Stop the server (fast shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let start = Instant::now();
            while child.try_wait().unwrap().is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGQUIT);
            }
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none()
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
