//! `doctor`'s checks of what the night's backup (and a restore) needs from the services:
//! each PostgreSQL source reachable with the configured credentials, each Redis source
//! answering PING with its `data_dir` readable (and the one the server uses), and every
//! configured stop/start command's program present. Each failure says how to fix it.

use super::check::Check;
use crate::config::Config;
use crate::fsutil::which;
use crate::source::CommandLine;

fn check(name: String, res: Result<String, (String, &str)>) -> Check {
    match res {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
            fix: None,
        },
        Err((detail, fix)) => Check {
            name,
            ok: false,
            detail,
            fix: Some(fix.into()),
        },
    }
}

/// Every service check, in source order.
pub fn checks(cfg: &Config) -> Vec<Check> {
    let mut v = Vec::new();
    for s in &cfg.sources {
        if let Some(pg) = &s.postgres {
            v.push(check(format!("postgres {}", s.name), postgres(pg)));
        }
        if let Some(r) = &s.redis {
            v.push(check(format!("redis {}", s.name), redis_ping(r)));
            if let Some(c) = redis_data_dir(r) {
                v.push(check(format!("redis {} data_dir", s.name), c));
            }
            for (what, cl) in [
                ("stop_command", &r.stop_command),
                ("start_command", &r.start_command),
            ] {
                v.push(check(format!("redis {} {what}", s.name), program(cl)));
            }
        }
    }
    v
}

/// Connect with the configured credentials and ask the server's version.
fn postgres(pg: &crate::source::PgSource) -> Result<String, (String, &'static str)> {
    const FIX: &str = "check url/host/port/user and password_file (or PGPASSWORD, ~/.pgpass), and that the server is running and accepts this user";
    let dir = std::env::temp_dir().join(format!("pronto-doctor-{}", std::process::id()));
    let work = crate::source::WorkDir::create(dir).map_err(|e| (format!("{e:#}"), FIX))?;
    let client = crate::source::postgres::PgClient::new(pg, work.path())
        .map_err(|e| (format!("{e:#}"), FIX))?;
    match client.server_version() {
        Ok(v) => Ok(format!(
            "{}: reachable with the configured credentials (PostgreSQL {})",
            pg.describe(),
            v.trim()
        )),
        Err(e) => Err((format!("{}: {e:#}", pg.describe()), FIX)),
    }
}

fn redis_ping(r: &crate::source::RedisSource) -> Result<String, (String, &'static str)> {
    const FIX: &str = "start the server, or correct url and password_file (or REDISCLI_AUTH)";
    let client = crate::source::redis::RedisClient::new(r).map_err(|e| (format!("{e:#}"), FIX))?;
    if client.ping() {
        Ok(format!("{}: answers PING", r.describe()))
    } else {
        Err((format!("{}: does not answer PING", r.describe()), FIX))
    }
}

/// `data_dir` readable, and the folder the server reports (`CONFIG GET dir`) when it
/// answers; `None` without a `data_dir`.
fn redis_data_dir(
    r: &crate::source::RedisSource,
) -> Option<Result<String, (String, &'static str)>> {
    const FIX: &str = "set data_dir to what `redis-cli CONFIG GET dir` prints, readable by the user running pronto-offsite";
    let dir = r.data_dir.as_ref()?;
    if let Err(e) = std::fs::read_dir(dir) {
        return Some(Err((
            format!("data_dir {} cannot be read: {e}", dir.display()),
            FIX,
        )));
    }
    let served = crate::source::redis::RedisClient::new(r)
        .ok()
        .and_then(|c| c.config_get("dir"));
    Some(match served {
        Some(d) if std::path::Path::new(&d) != dir.as_path() => Err((
            format!(
                "data_dir is {} but the server keeps its RDB file in {d}",
                dir.display()
            ),
            FIX,
        )),
        _ => Ok(format!("data_dir {} is readable", dir.display())),
    })
}

/// The program a stop/start command runs is present.
fn program(cl: &CommandLine) -> Result<String, (String, &'static str)> {
    const FIX: &str = "install it, give its full path, or correct stop_command/start_command";
    let first = match cl {
        CommandLine::Argv(v) => v.first().cloned().unwrap_or_default(),
        CommandLine::Shell(s) => s.split_whitespace().next().unwrap_or_default().to_string(),
    };
    match which(&first) {
        Some(p) => Ok(format!("`{}`: {} is present", cl.shown(), p.display())),
        None => Err((
            format!("`{}`: {first} is not found on PATH", cl.shown()),
            FIX,
        )),
    }
}
