//! The keys of a postgres source: how to reach the server (a URL or host/port/user) and
//! what to dump, validated into a [`PgSource`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use super::service_keys::RawKeys;
use super::Locator;

/// libpq connection keywords and values.
pub type ConnParams = Vec<(String, String)>;

/// Split a `postgresql://` URL into libpq keywords and the database. Refuses a password.
pub fn parse_url(s: &str) -> std::result::Result<(ConnParams, Option<String>), String> {
    let u = url::Url::parse(s)
        .map_err(|e| format!("a URL like postgresql://user@host:5432/postgres ({e})"))?;
    if !matches!(u.scheme(), "postgresql" | "postgres") {
        return Err(format!(
            "a postgresql:// URL, not {}:// (like postgresql://user@host:5432/postgres)",
            u.scheme()
        ));
    }
    if u.password().is_some() {
        return Err("a URL without a password: put it in password_file, PGPASSWORD or ~/.pgpass (a password in the URL would end up in argv)".into());
    }
    let dec = |v: &str| percent_decode(v).ok_or_else(|| format!("valid percent-encoding in {v:?}"));
    let mut params = Vec::new();
    if let Some(h) = u.host_str().filter(|h| !h.is_empty()) {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        params.push(("host".to_string(), dec(h)?));
    }
    if let Some(p) = u.port() {
        params.push(("port".to_string(), p.to_string()));
    }
    if !u.username().is_empty() {
        params.push(("user".to_string(), dec(u.username())?));
    }
    let path = u.path().trim_start_matches('/');
    let db = if path.is_empty() {
        None
    } else {
        Some(dec(path)?)
    };
    for (k, v) in u.query_pairs() {
        if k == "password" {
            return Err(
                "a URL without a password: put it in password_file, PGPASSWORD or ~/.pgpass".into(),
            );
        }
        if k == "dbname" {
            return Err("the database in the URL's path, not as ?dbname=".into());
        }
        params.retain(|(pk, _)| pk != &*k);
        params.push((k.into_owned(), v.into_owned()));
    }
    Ok((params, db))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// How to reach a PostgreSQL server, and what to dump from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSource {
    /// libpq connection keywords other than `dbname` (`host`, `port`, `user`, `sslmode`, ...).
    pub params: ConnParams,
    /// Database used for listing databases, for globals and to create databases.
    pub maintenance_db: String,
    /// Databases to dump; `None`: every database that is not a template and allows connections.
    pub databases: Option<Vec<String>>,
    pub password_file: Option<PathBuf>,
    /// Runs the client tools through this (e.g. `docker compose exec -T postgres`).
    pub command_prefix: Vec<String>,
    /// Dump roles and tablespaces with `pg_dumpall --globals-only` (default true).
    pub globals: bool,
    /// `lock_timeout`: longest any of our sessions (dump, restore) waits for a lock
    /// held by another session before it is cancelled and the blockers are named;
    /// `None` ("0s"): no limit. Default [`DEFAULT_LOCK_TIMEOUT`].
    pub lock_timeout: Option<Duration>,
}

/// The default `lock_timeout` of a postgres source.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn from_raw(
    keys: &RawKeys,
    password_file: Option<PathBuf>,
    at: &Locator,
    key: &str,
) -> Result<PgSource> {
    let mut params: ConnParams = Vec::new();
    let mut maintenance_db = DEFAULT_MAINTENANCE_DB.to_string();
    if let Some(url) = keys.url {
        if let Some((name, off)) = [
            ("host", keys.host.map(|s| s.span().start)),
            ("port", keys.port.map(|s| s.span().start)),
            ("user", keys.user.map(|s| s.span().start)),
        ]
        .into_iter()
        .find_map(|(n, o)| o.map(|o| (n, o)))
        {
            return Err(at.err(
                off,
                &format!("{key}.{name}"),
                "either `url` or `host`/`port`/`user`, not both",
            ));
        }
        let (p, db) = parse_url(url.get_ref())
            .map_err(|msg| at.err(url.span().start, &format!("{key}.url"), &msg))?;
        params = p;
        if let Some(db) = db {
            maintenance_db = db;
        }
    } else {
        if let Some(h) = keys.host {
            params.push((
                "host".into(),
                at.nonempty(h, &format!("{key}.host"), "a host name or socket folder")?
                    .to_string(),
            ));
        }
        if let Some(p) = keys.port {
            if *p.get_ref() == 0 {
                return Err(at.err(
                    p.span().start,
                    &format!("{key}.port"),
                    "a port from 1 to 65535",
                ));
            }
            params.push(("port".into(), p.get_ref().to_string()));
        }
        if let Some(u) = keys.user {
            params.push((
                "user".into(),
                at.nonempty(u, &format!("{key}.user"), "a role name")?
                    .to_string(),
            ));
        }
    }
    let databases = match keys.databases {
        Some(d) => {
            if d.get_ref().is_empty()
                || d.get_ref().iter().any(|n| n.is_empty() || n.contains('\0'))
            {
                return Err(at.err(
                    d.span().start,
                    &format!("{key}.databases"),
                    "a list of database names like [\"pronto\"] (leave it out to dump every database)",
                ));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = d.get_ref().iter().find(|n| !seen.insert(n.as_str())) {
                return Err(at.err(
                    d.span().start,
                    &format!("{key}.databases"),
                    &format!("each database once; '{dup}' is listed twice"),
                ));
            }
            Some(d.get_ref().clone())
        }
        None => None,
    };
    let command_prefix = match keys.command_prefix {
        Some(c) if c.get_ref().is_empty() || c.get_ref()[0].trim().is_empty() => {
            return Err(at.err(
                c.span().start,
                &format!("{key}.command_prefix"),
                "a command to run the client tools through, like [\"docker\", \"compose\", \"exec\", \"-T\", \"postgres\"]",
            ));
        }
        Some(c) => c.get_ref().clone(),
        None => Vec::new(),
    };
    let lock_timeout = match keys.lock_timeout {
        Some(t) => {
            let d = humantime::parse_duration(t.get_ref().trim()).map_err(|_| {
                at.err(
                    t.span().start,
                    &format!("{key}.lock_timeout"),
                    "a duration like \"60s\" or \"5m\" (\"0s\": wait for locks without limit)",
                )
            })?;
            (!d.is_zero()).then_some(d)
        }
        None => Some(DEFAULT_LOCK_TIMEOUT),
    };
    Ok(PgSource {
        params,
        maintenance_db,
        databases,
        password_file,
        command_prefix,
        globals: keys.globals.map(|g| *g.get_ref()).unwrap_or(true),
        lock_timeout,
    })
}

/// The default database to connect to for listing databases and for globals.
pub const DEFAULT_MAINTENANCE_DB: &str = "postgres";

impl PgSource {
    /// A connection to a server given by URL alone (scratch servers, private instances).
    pub fn from_url(url: &str) -> std::result::Result<PgSource, String> {
        let (params, db) = parse_url(url)?;
        Ok(PgSource {
            params,
            maintenance_db: db.unwrap_or_else(|| DEFAULT_MAINTENANCE_DB.to_string()),
            databases: None,
            password_file: None,
            command_prefix: Vec::new(),
            globals: true,
            lock_timeout: Some(DEFAULT_LOCK_TIMEOUT),
        })
    }
}
