//! `[metrics]`: where the Prometheus textfile goes.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::Locator;

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where the `.prom` file goes (node_exporter's `--collector.textfile.directory`).
    pub textfile: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    textfile: Spanned<String>,
}

impl MetricsConfig {
    pub(crate) fn from_raw(
        raw: Option<&RawMetrics>,
        at: &Locator,
        base: &Path,
    ) -> Result<Option<MetricsConfig>> {
        let Some(raw) = raw else { return Ok(None) };
        let f = at.nonempty(
            &raw.textfile,
            "metrics.textfile",
            "a file path ending in .prom",
        )?;
        if !f.ends_with(".prom") {
            return Err(at.err(
                raw.textfile.span().start,
                "metrics.textfile",
                "a file name ending in .prom (node_exporter only reads those)",
            ));
        }
        Ok(Some(MetricsConfig {
            textfile: super::resolve(base, f),
        }))
    }
}
