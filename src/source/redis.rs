//! Redis: an RDB snapshot fetched over the protocol (`redis-cli --rdb`), validated and
//! counted ([`super::rdb`]); restore by stop → replace `dump.rdb` in `data_dir` → start.
//!
//! The password (AUTH, or an ACL user's) comes from `password_file` or the inherited
//! `REDISCLI_AUTH`, and reaches redis-cli only through `REDISCLI_AUTH` in its
//! environment. An ACL user is the URL's user part (`redis://backup@host:6379`) and needs
//! `sync`, `replconf`, `info`, `ping` and `config|get`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::rdb::{self, ScanErrorKind};
use super::{run, spawn, tail, CommandLine};
pub use crate::config::redis::{parse_url, Endpoint, RedisSource, DEFAULT_URL};
use crate::manifest::{RedisDb, RedisSummary};

/// File name of the snapshot inside a source's folder in the archive.
pub const RDB_FILE: &str = "dump.rdb";

impl RedisSource {
    /// A plain TCP endpoint (throwaway servers).
    pub fn local(port: u16) -> RedisSource {
        RedisSource {
            endpoint: Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port,
            },
            tls: false,
            user: None,
            password_file: None,
            data_dir: None,
            stop_command: CommandLine::Argv(vec!["true".into()]),
            start_command: CommandLine::Argv(vec!["true".into()]),
            throwaway: true,
        }
    }

    /// `redis://user@host:port`, never a password.
    pub fn describe(&self) -> String {
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        match &self.endpoint {
            Endpoint::Tcp { host, port } => {
                format!(
                    "{}://{user}{host}:{port}",
                    if self.tls { "rediss" } else { "redis" }
                )
            }
            Endpoint::Unix(p) => format!("unix://{user}{}", p.display()),
        }
    }
}

/// A redis-cli runner for one source.
pub struct RedisClient<'a> {
    pub src: &'a RedisSource,
    password: Option<String>,
    secrets: Vec<String>,
}

impl<'a> RedisClient<'a> {
    pub fn new(src: &'a RedisSource) -> Result<RedisClient<'a>> {
        let password = match &src.password_file {
            Some(p) => Some(super::read_password_file(p)?),
            None => None,
        };
        let mut secrets: Vec<String> = password.iter().cloned().collect();
        if let Ok(p) = std::env::var("REDISCLI_AUTH") {
            secrets.push(p);
        }
        Ok(RedisClient {
            src,
            password,
            secrets,
        })
    }

    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    fn cli(&self) -> Command {
        let mut c = Command::new("redis-cli");
        match &self.src.endpoint {
            Endpoint::Tcp { host, port } => {
                c.arg("-h").arg(host).arg("-p").arg(port.to_string());
            }
            Endpoint::Unix(p) => {
                c.arg("-s").arg(p);
            }
        }
        if self.src.tls {
            c.arg("--tls");
        }
        if let Some(u) = &self.src.user {
            c.arg("--user").arg(u);
        }
        if self.src.throwaway {
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REDISCLI_") {
                    c.env_remove(k);
                }
            }
        }
        if let Some(p) = &self.password {
            c.env("REDISCLI_AUTH", p);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Run a command; its raw reply. Error replies (and connection failures) are errors.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let mut c = self.cli();
        c.args(args);
        let f = run(&mut c, "redis-cli", true)?;
        let first = f.stdout.lines().next().unwrap_or("").trim();
        let is_error = first.split(' ').next().is_some_and(|w| {
            w.len() >= 3
                && w.chars().all(|c| c.is_ascii_uppercase())
                && !matches!(w, "PONG" | "OK" | "QUEUED")
        });
        if !f.status.success() || is_error || f.stderr.contains("AUTH failed") {
            let said = tail(
                &format!("{}\n{}", f.stderr, if is_error { first } else { "" }),
                &self.secrets,
                6,
            );
            let hint = match &self.src.password_file {
                Some(pf) if said.contains("WRONGPASS") || said.contains("AUTH failed") => format!(
                    " (the password comes from password_file {}: check it holds the server's current password)",
                    pf.display()
                ),
                _ => String::new(),
            };
            bail!(
                "redis-cli {} on {} failed: {said}{hint}",
                args.first().copied().unwrap_or(""),
                self.src.describe(),
            );
        }
        Ok(f.stdout)
    }

    /// The server answers PING.
    pub fn ping(&self) -> bool {
        self.command(&["PING"])
            .map(|r| r.trim() == "PONG")
            .unwrap_or(false)
    }

    /// `INFO section` as key → value.
    pub fn info(&self, section: &str) -> Result<Vec<(String, String)>> {
        let out = self.command(&["INFO", section])?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim_end().split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Keys per database from `INFO keyspace`.
    pub fn keyspace(&self) -> Result<Vec<RedisDb>> {
        let mut v = Vec::new();
        for (k, val) in self.info("keyspace")? {
            let Some(n) = k.strip_prefix("db").and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let field = |name: &str| {
                val.split(',')
                    .find_map(|p| p.strip_prefix(&format!("{name}=")))
                    .and_then(|x| x.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            v.push(RedisDb {
                db: n,
                keys: field("keys"),
                expires: field("expires"),
            });
        }
        v.sort_by_key(|d| d.db);
        Ok(v)
    }

    /// `CONFIG GET name`, or None when the server does not allow it.
    pub fn config_get(&self, name: &str) -> Option<String> {
        let out = self.command(&["CONFIG", "GET", name]).ok()?;
        let mut lines = out.lines();
        match (lines.next(), lines.next()) {
            (Some(k), Some(v)) if k == name => Some(v.to_string()),
            _ => None,
        }
    }

    /// Wait until the server answers and has finished loading its data.
    pub fn wait_ready(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.ping() {
                let loading = self
                    .info("persistence")
                    .ok()
                    .and_then(|i| i.into_iter().find(|(k, _)| k == "loading").map(|(_, v)| v));
                if loading.as_deref() != Some("1") {
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                bail!(
                    "{} did not answer PING within {}s",
                    self.src.describe(),
                    limit.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the server no longer answers.
    pub fn wait_down(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        while self.ping() {
            if start.elapsed() > limit {
                bail!(
                    "{} still answers {}s after its stop_command",
                    self.src.describe(),
                    limit.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Fetch an RDB snapshot into `dir/dump.rdb`, validate and count it.
    pub fn dump(&self, name: &str, dir: &Path) -> Result<RedisSummary> {
        let path = dir.join(RDB_FILE);
        let mut c = self.cli();
        c.arg("--rdb").arg(&path);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = spawn(&mut c, "redis-cli")?;
        let out = super::collect(child.stdout.take());
        let err = super::collect(child.stderr.take());
        let status = child.wait().context("waiting for redis-cli")?;
        let text = format!(
            "{}\n{}",
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default()
        );
        if !status.success() || text.contains("AUTH failed") {
            bail!(
                "redis source '{name}': redis-cli --rdb from {} failed ({}): {}",
                self.src.describe(),
                super::describe_status(status),
                tail(&text, &self.secrets, 8)
            );
        }
        // Keep the file private whatever the umask.
        let _ =
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
        let bytes = std::fs::metadata(&path)
            .with_context(|| {
                format!(
                    "redis source '{name}': redis-cli wrote no {}",
                    path.display()
                )
            })?
            .len();
        let mut magic = [0u8; 5];
        let ok = bytes > 0
            && std::io::Read::read_exact(&mut std::fs::File::open(&path)?, &mut magic).is_ok()
            && &magic == b"REDIS";
        if !ok {
            bail!("redis source '{name}': the snapshot from {} is not an RDB file ({bytes} bytes, no REDIS magic)", self.src.describe());
        }
        let summary = match rdb::scan(&path) {
            Ok(s) => RedisSummary {
                source: name.to_string(),
                file: RDB_FILE.to_string(),
                bytes,
                rdb_version: s.version,
                redis_version: s.redis_version,
                counted_from: "rdb".into(),
                dbs: s
                    .dbs
                    .iter()
                    .map(|(db, d)| RedisDb {
                        db: *db,
                        keys: d.keys,
                        expires: d.expire_at_ms.len() as u64,
                    })
                    .collect(),
            },
            Err(e) if e.kind == ScanErrorKind::Unsupported => {
                tracing::warn!(
                    "redis source '{name}': cannot count keys in the snapshot itself ({e}); recording INFO keyspace instead"
                );
                let version = std::fs::read(&path)
                    .ok()
                    .and_then(|b| std::str::from_utf8(b.get(5..9)?).ok()?.parse().ok())
                    .unwrap_or(0);
                RedisSummary {
                    source: name.to_string(),
                    file: RDB_FILE.to_string(),
                    bytes,
                    rdb_version: version,
                    redis_version: None,
                    counted_from: "info".into(),
                    dbs: self.keyspace()?,
                }
            }
            Err(e) => {
                return Err(
                    anyhow!(e).context(format!("redis source '{name}': the snapshot is damaged"))
                )
            }
        };
        tracing::info!(
            "redis source '{name}': fetched {} ({} keys in {} databases)",
            crate::fsutil::human_bytes(bytes),
            summary.total_keys(),
            summary.dbs.len()
        );
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (e, tls, user) = parse_url("redis://backup@10.0.0.5:6380/2").unwrap();
        assert_eq!(
            e,
            Endpoint::Tcp {
                host: "10.0.0.5".into(),
                port: 6380
            }
        );
        assert!(!tls);
        assert_eq!(user.as_deref(), Some("backup"));
        assert!(parse_url("rediss://h").unwrap().1);
        assert_eq!(
            parse_url("unix:///run/redis.sock").unwrap().0,
            Endpoint::Unix("/run/redis.sock".into())
        );
        assert!(parse_url("redis://:secret@h:6379")
            .unwrap_err()
            .contains("without a password"));
        assert!(parse_url("http://h").is_err());
    }
}
