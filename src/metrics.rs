//! The run state kept in the backup folder (`.pronto-offsite.state.json`) and the
//! Prometheus textfile (`[metrics] textfile`, for node_exporter's textfile collector)
//! written atomically from it after each `hook` run.
//!
//! The state remembers each remote's last success, so a remote that fails this run keeps
//! its previous `pronto_offsite_remote_last_success_timestamp_seconds` (and alerts on
//! `time() - that > …` fire when it keeps failing).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::catalog::{self, Tier};
use crate::config::{Config, Locator};
use crate::hook::Report;

/// The state file's name in the backup folder.
pub const STATE_FILE: &str = ".pronto-offsite.state.json";

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
            textfile: crate::config::resolve(base, f),
        }))
    }
}

/// What one target (the local folder or a remote) last did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetState {
    /// End of the last run in which it succeeded.
    pub last_success: Option<DateTime<Utc>>,
    /// End of the last run that tried it.
    pub last_attempt: Option<DateTime<Utc>>,
    /// The error of the last attempt, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Bytes uploaded in the last attempt (remotes).
    #[serde(default)]
    pub bytes_uploaded: u64,
}

/// The last run, in short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub duration_seconds: f64,
    pub status: crate::notify::Outcome,
    pub exit_code: i32,
    /// Size of the archive the run made, if it made one.
    #[serde(default)]
    pub archive_size: Option<u64>,
    #[serde(default)]
    pub archive_id: Option<String>,
}

/// `.pronto-offsite.state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub local: TargetState,
    #[serde(default)]
    pub remotes: BTreeMap<String, TargetState>,
    #[serde(default)]
    pub last_run: Option<LastRun>,
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Read the state; a missing file is an empty state, an unreadable one is logged and
    /// treated as empty (it only feeds metrics).
    pub fn load(dir: &Path) -> State {
        let p = Self::path(dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!("{}: unreadable ({e}); starting a new one", p.display());
                State::default()
            }),
            Err(_) => State::default(),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut v = serde_json::to_vec_pretty(self).expect("state serializes");
        v.push(b'\n');
        crate::fsutil::write_atomic(&Self::path(dir), &v)
    }

    /// Fold a finished hook run in. Remotes no longer configured are dropped.
    pub fn record(&mut self, cfg: &Config, r: &Report) {
        let end = r.finished;
        if let Some(b) = &r.backup {
            if !b.skipped {
                self.local.last_attempt = Some(end);
                if b.error.is_none() {
                    self.local.last_success = Some(end);
                    self.local.last_error = None;
                } else {
                    self.local.last_error = b.error.clone();
                }
            }
        }
        for rr in &r.remotes {
            let st = self.remotes.entry(rr.name.clone()).or_default();
            st.last_attempt = Some(end);
            st.bytes_uploaded = rr.bytes_uploaded;
            if rr.error.is_none() {
                st.last_success = Some(end);
                st.last_error = None;
            } else {
                st.last_error = rr.error.clone();
            }
        }
        self.remotes
            .retain(|name, _| cfg.remotes.iter().any(|x| &x.name == name));
        let archive = r.backup.as_ref().and_then(|b| b.archive.as_ref());
        self.last_run = Some(LastRun {
            started: r.started,
            finished: r.finished,
            duration_seconds: r.duration_seconds,
            status: r.status,
            exit_code: r.exit_code,
            archive_size: archive.map(|a| a.size),
            archive_id: archive.map(|a| a.id.clone()),
        });
    }
}

fn ts(t: DateTime<Utc>) -> String {
    format!("{}", t.timestamp())
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn tier_label(t: Tier) -> &'static str {
    match t {
        Tier::Top => "top",
        other => other.label(),
    }
}

struct Prom(String);

impl Prom {
    fn family(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} gauge");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let l = if labels.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            format!("{{{}}}", parts.join(","))
        };
        let _ = writeln!(self.0, "{name}{l} {value}");
    }
}

/// The textfile's content: from the state (after [`State::record`]) and the local catalog.
pub fn render(cfg: &Config, state: &State) -> Result<String> {
    let local = catalog::scan(&cfg.local)?;
    let mut p = Prom(String::new());
    if let Some(run) = &state.last_run {
        p.family(
            "pronto_offsite_last_run_timestamp_seconds",
            "When the last hook run finished (Unix time).",
        );
        p.sample(
            "pronto_offsite_last_run_timestamp_seconds",
            &[],
            ts(run.finished),
        );
        p.family(
            "pronto_offsite_last_run_success",
            "1 when the last hook run succeeded everywhere, else 0.",
        );
        p.sample(
            "pronto_offsite_last_run_success",
            &[],
            u8::from(run.status.is_success()),
        );
        p.family(
            "pronto_offsite_last_run_exit_code",
            "Exit code of the last hook run (0 ok, 1 error, 3 partial, ...).",
        );
        p.sample("pronto_offsite_last_run_exit_code", &[], run.exit_code);
        p.family(
            "pronto_offsite_last_run_duration_seconds",
            "How long the last hook run took.",
        );
        p.sample(
            "pronto_offsite_last_run_duration_seconds",
            &[],
            format!("{:.3}", run.duration_seconds),
        );
        if let Some(size) = run.archive_size {
            p.family(
                "pronto_offsite_archive_size_bytes",
                "Size of the archive the last hook run made.",
            );
            p.sample("pronto_offsite_archive_size_bytes", &[], size);
        }
    }
    if let Some(t) = state.local.last_success {
        p.family(
            "pronto_offsite_local_last_success_timestamp_seconds",
            "When a hook run last made a local archive successfully (Unix time).",
        );
        p.sample(
            "pronto_offsite_local_last_success_timestamp_seconds",
            &[],
            ts(t),
        );
    }
    let complete: Vec<&catalog::LocalArchive> =
        local.iter().filter(|a| a.manifest.is_some()).collect();
    if let Some(newest) = complete.last() {
        p.family(
            "pronto_offsite_newest_archive_timestamp_seconds",
            "Time in the name of the newest complete local archive (Unix time).",
        );
        p.sample(
            "pronto_offsite_newest_archive_timestamp_seconds",
            &[],
            ts(newest.name.time),
        );
    }
    p.family(
        "pronto_offsite_archives",
        "Complete local archives per tier.",
    );
    let tiers = [Tier::Top, Tier::Weekly, Tier::Monthly, Tier::Yearly];
    for t in tiers {
        let n = complete.iter().filter(|a| a.tier == t).count();
        p.sample("pronto_offsite_archives", &[("tier", tier_label(t))], n);
    }
    p.family(
        "pronto_offsite_archives_size_bytes",
        "Bytes of complete local archives per tier.",
    );
    for t in tiers {
        let n: u64 = complete
            .iter()
            .filter(|a| a.tier == t)
            .filter_map(|a| a.manifest.as_ref().map(|m| m.size))
            .sum();
        p.sample(
            "pronto_offsite_archives_size_bytes",
            &[("tier", tier_label(t))],
            n,
        );
    }
    let remotes: Vec<(&String, &TargetState)> = state.remotes.iter().collect();
    if !remotes.is_empty() {
        p.family(
            "pronto_offsite_remote_last_success_timestamp_seconds",
            "When a push to this remote last succeeded (Unix time); kept while it fails.",
        );
        for (name, st) in &remotes {
            if let Some(t) = st.last_success {
                p.sample(
                    "pronto_offsite_remote_last_success_timestamp_seconds",
                    &[("remote", name)],
                    ts(t),
                );
            }
        }
        p.family(
            "pronto_offsite_remote_last_run_success",
            "1 when the last push to this remote succeeded, else 0.",
        );
        for (name, st) in &remotes {
            p.sample(
                "pronto_offsite_remote_last_run_success",
                &[("remote", name)],
                u8::from(st.last_error.is_none()),
            );
        }
        p.family(
            "pronto_offsite_remote_uploaded_bytes",
            "Bytes uploaded to this remote by the last hook run.",
        );
        for (name, st) in &remotes {
            p.sample(
                "pronto_offsite_remote_uploaded_bytes",
                &[("remote", name)],
                st.bytes_uploaded,
            );
        }
    }
    Ok(p.0)
}

/// Write the textfile atomically (mode 0644: node_exporter runs as another user).
pub fn write_textfile(m: &MetricsConfig, text: &str) -> Result<()> {
    if let Some(dir) = m.textfile.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::fsutil::write_atomic_mode(&m.textfile, text.as_bytes(), 0o644)
        .with_context(|| format!("writing metrics textfile {}", m.textfile.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
