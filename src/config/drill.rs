//! `[drill]`: where `verify --restore-test` restores databases to.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::postgres::PgSource;
use super::{resolve, Locator};

/// `[drill]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrillConfig {
    /// A scratch server to restore into (`postgres_url`, with `password_file`); None: a
    /// private instance started for the drill.
    pub postgres: Option<PgSource>,
    /// Server binaries for the private instance (default: found).
    pub postgres_bin_dir: Option<PathBuf>,
    /// The redis-server binary for the throwaway Redis (default `redis-server`).
    pub redis_server: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDrill {
    postgres_url: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    postgres_bin_dir: Option<Spanned<String>>,
    redis_server: Option<Spanned<String>>,
}

impl DrillConfig {
    pub(crate) fn from_raw(
        raw: Option<&RawDrill>,
        at: &Locator,
        base: &Path,
    ) -> Result<DrillConfig> {
        let Some(r) = raw else {
            return Ok(DrillConfig::default());
        };
        let mut c = DrillConfig::default();
        if let Some(u) = &r.postgres_url {
            let mut src = PgSource::from_url(u.get_ref())
                .map_err(|m| at.err(u.span().start, "drill.postgres_url", &m))?;
            if let Some(p) = &r.password_file {
                src.password_file = Some(resolve(
                    base,
                    at.nonempty(p, "drill.password_file", "a file holding the password")?,
                ));
            }
            c.postgres = Some(src);
        } else if let Some(p) = &r.password_file {
            return Err(at.err(
                p.span().start,
                "drill.password_file",
                "a postgres_url for it to go with",
            ));
        }
        if let Some(d) = &r.postgres_bin_dir {
            c.postgres_bin_dir = Some(resolve(
                base,
                at.nonempty(
                    d,
                    "drill.postgres_bin_dir",
                    "a folder with initdb and postgres",
                )?,
            ));
        }
        if let Some(s) = &r.redis_server {
            c.redis_server = Some(
                at.nonempty(s, "drill.redis_server", "a redis-server binary")?
                    .to_string(),
            );
        }
        Ok(c)
    }
}
