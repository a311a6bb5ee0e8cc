//! `[[health_checks]]`: what a restore checks before it calls the platform back up.

use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::{Locator, Source};

/// Default `timeout` of a health check.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

// ---- [[health_checks]] ----

/// One `[[health_checks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `name`, or a description made from the check.
    pub name: String,
    pub kind: CheckKind,
    /// Retried until this much time has passed (services may still be starting).
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// GET this URL; any 2xx passes.
    Http { url: String },
    /// Run this SQL in `database` of postgres source `source`; success passes (its
    /// first row is reported).
    Sql {
        sql: String,
        source: String,
        database: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    name: Option<Spanned<String>>,
    http: Option<Spanned<String>>,
    sql: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
    database: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

pub(crate) fn health_checks_from_raw(
    raw: &[RawHealthCheck],
    sources: &[Source],
    at: &Locator,
) -> Result<Vec<HealthCheck>> {
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("health_checks[{i}]");
        let timeout = match &r.timeout {
            Some(t) => humantime::parse_duration(t.get_ref().trim()).map_err(|_| {
                at.err(
                    t.span().start,
                    &format!("{key}.timeout"),
                    "a duration like \"30s\" or \"2m\"",
                )
            })?,
            None => DEFAULT_CHECK_TIMEOUT,
        };
        let kind = match (&r.http, &r.sql) {
            (Some(h), None) => {
                if let Some(x) = r.source.as_ref().or(r.database.as_ref()) {
                    return Err(at.err(
                        x.span().start,
                        &key,
                        "`source` and `database` only with `sql`",
                    ));
                }
                let u = h.get_ref();
                let ok = url::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https"));
                if !ok {
                    return Err(at.err(
                        h.span().start,
                        &format!("{key}.http"),
                        "an http:// or https:// URL",
                    ));
                }
                CheckKind::Http { url: u.clone() }
            }
            (None, Some(q)) => {
                let sql = at.nonempty(
                    q,
                    &format!("{key}.sql"),
                    "a SQL query like \"SELECT COUNT(*) FROM orders\"",
                )?;
                let pg: Vec<&Source> = sources.iter().filter(|s| s.postgres.is_some()).collect();
                let src = match &r.source {
                    Some(s) => match pg.iter().find(|p| &p.name == s.get_ref()) {
                        Some(p) => *p,
                        None => {
                            return Err(at.err(
                                s.span().start,
                                &format!("{key}.source"),
                                "the name of a postgres source in [[sources]]",
                            ))
                        }
                    },
                    None if pg.len() == 1 => pg[0],
                    None => {
                        return Err(at.err(
                            q.span().start,
                            &format!("{key}.source"),
                            "`source = \"NAME\"`: which postgres source to run the query on",
                        ))
                    }
                };
                let p = src.postgres.as_ref().expect("filtered");
                let database = match &r.database {
                    Some(d) => at
                        .nonempty(d, &format!("{key}.database"), "a database name")?
                        .to_string(),
                    None => p
                        .databases
                        .as_ref()
                        .and_then(|d| d.first().cloned())
                        .unwrap_or_else(|| p.maintenance_db.clone()),
                };
                CheckKind::Sql {
                    sql: sql.to_string(),
                    source: src.name.clone(),
                    database,
                }
            }
            (Some(h), Some(_)) => {
                return Err(at.err(h.span().start, &key, "either `http` or `sql`, not both"));
            }
            (None, None) => {
                let off = r.name.as_ref().map_or(0, |n| n.span().start);
                return Err(at.err(off, &key, "`http = \"http://…\"` or `sql = \"SELECT …\"`"));
            }
        };
        let name = match &r.name {
            Some(n) => at
                .nonempty(n, &format!("{key}.name"), "a name")?
                .to_string(),
            None => match &kind {
                CheckKind::Http { url } => format!("GET {url}"),
                CheckKind::Sql {
                    sql,
                    source,
                    database,
                } => format!("{source}/{database}: {sql}"),
            },
        };
        out.push(HealthCheck {
            name,
            kind,
            timeout,
        });
    }
    Ok(out)
}
