//! `[status]`: how old the newest archive may be before `status` calls it stale.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::Locator;

/// `[status]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    /// The newest archive may be this old (`max_age = "26h"`).
    pub max_age: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStatus {
    max_age: Option<Spanned<String>>,
}

impl StatusConfig {
    pub(crate) fn from_raw(
        raw: Option<&RawStatus>,
        at: &Locator,
        _base: &Path,
    ) -> Result<StatusConfig> {
        let mut c = StatusConfig::default();
        if let Some(m) = raw.and_then(|r| r.max_age.as_ref()) {
            c.max_age = parse_max_age(m.get_ref()).map_err(|_| {
                at.err(
                    m.span().start,
                    "status.max_age",
                    "a duration like \"26h\" or \"8d\"",
                )
            })?;
        }
        Ok(c)
    }
}

/// A max age: a non-zero humantime duration (`26h`, `1d 2h`, `90m`).
pub fn parse_max_age(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("invalid duration {s:?}: expected e.g. 26h, 8d or 90m"))
}

/// Default `[status] max_age`: a daily backup plus two hours of slack.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(26 * 3600);
