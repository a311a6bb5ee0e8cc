//! The run state kept in the backup folder (`.pronto-offsite.state.json`) and the
//! Prometheus textfile (`[metrics] textfile`, for node_exporter's textfile collector)
//! written atomically from it after each `hook` run.
//!
//! The state remembers each remote's last success, so a remote that fails this run keeps
//! its previous `pronto_offsite_remote_last_success_timestamp_seconds` (and alerts on
//! `time() - that > …` fire when it keeps failing).

use crate::error::Exit;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{self, Tier};
pub use crate::config::metrics::MetricsConfig;
use crate::config::Config;
use crate::report::Report;

/// The state file's name in the backup folder.
pub const STATE_FILE: &str = ".pronto-offsite.state.json";

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
    /// End of the last run in which it failed; kept through later successes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<DateTime<Utc>>,
    /// [`reason`] of that failure (a metric label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,
}

impl TargetState {
    /// Fold in one attempt that ended at `end`: `error` is `None` on success. Only a
    /// success moves `last_success`; only a failure moves `last_failure`.
    pub fn attempt(&mut self, end: DateTime<Utc>, error: Option<&str>) {
        self.last_attempt = Some(end);
        match error {
            None => {
                self.last_success = Some(end);
                self.last_error = None;
            }
            Some(e) => {
                self.last_error = Some(e.to_string());
                self.last_failure = Some(end);
                self.last_failure_reason = Some(reason(e).to_string());
            }
        }
    }
}

/// A failure's kind, from its message: a small fixed set, fit for a metric label.
pub fn reason(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| e.contains(w));
    if has(&["no space left", "disk full", "quota", "file too large"]) {
        "disk_full"
    } else if has(&["another hook run", "holds the lock"]) {
        "busy"
    } else if has(&["ssh host key"]) {
        // Before "checksum": the message quotes the key's SHA256 fingerprint.
        "auth"
    } else if has(&["checksum", "sha256", "mismatch", "baddigest"]) {
        "checksum"
    } else if has(&[
        "credential",
        "unauthorized",
        "forbidden",
        "access denied",
        "auth",
    ]) {
        "auth"
    } else if has(&["permission denied", "read-only", "operation not permitted"]) {
        "permission"
    } else if has(&["timed out", "timeout"]) {
        "timeout"
    } else if has(&["connection", "connect", "dns", "network", "unreachable"]) {
        "network"
    } else if has(&["pg_dump", "postgres"]) {
        "postgres"
    } else if has(&["redis"]) {
        "redis"
    } else if has(&[
        "no such file",
        "not found",
        "not a directory",
        "does not exist",
    ]) {
        "not_found"
    } else {
        "error"
    }
}

/// The last run, in short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub duration_seconds: f64,
    pub status: crate::report::Outcome,
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
    /// The local prune of hook runs.
    #[serde(default)]
    pub prune: TargetState,
    /// `verify` runs.
    #[serde(default)]
    pub verify: TargetState,
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
        if let Some(b) = r.backup.as_ref().filter(|b| !b.skipped) {
            self.local.attempt(end, b.error.as_deref());
        }
        for rr in &r.remotes {
            let st = self.remotes.entry(rr.name.clone()).or_default();
            st.attempt(end, rr.error.as_deref());
            st.bytes_uploaded = rr.bytes_uploaded;
        }
        if let Some(p) = r.prune.as_ref().filter(|p| !p.skipped) {
            self.prune.attempt(end, p.error.as_deref());
        }
        self.remotes
            .retain(|name, _| cfg.remotes.iter().any(|x| &x.name == name));
        let archive = r.backup.as_ref().and_then(|b| b.archive.as_ref());
        self.last_run = Some(LastRun {
            started: r.started,
            finished: r.finished,
            duration_seconds: r.duration_seconds,
            status: r.status,
            exit_code: r.exit_code.code(),
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
    render_steps(&mut p, state);
    Ok(p.0)
}

/// `pronto_offsite_last_success_timestamp_seconds{step[,remote]}` (0 = never) and
/// `pronto_offsite_last_failure_timestamp_seconds{step[,remote],reason}` for backup,
/// push (per remote), prune and verify: what the README's alert rules compare.
fn render_steps(p: &mut Prom, state: &State) {
    let mut steps: Vec<(Vec<(&str, &str)>, &TargetState)> = vec![
        (vec![("step", "backup")], &state.local),
        (vec![("step", "prune")], &state.prune),
        (vec![("step", "verify")], &state.verify),
    ];
    for (name, st) in &state.remotes {
        steps.push((vec![("step", "push"), ("remote", name.as_str())], st));
    }
    // Steps never tried (verify on a host that never ran it) stay out.
    steps.retain(|(_, st)| st.last_attempt.is_some());
    p.family(
        "pronto_offsite_last_success_timestamp_seconds",
        "When this step last succeeded (Unix time; 0 = never). Only a success moves it.",
    );
    for (labels, st) in &steps {
        let t = st.last_success.map(ts).unwrap_or_else(|| "0".into());
        p.sample("pronto_offsite_last_success_timestamp_seconds", labels, t);
    }
    p.family(
        "pronto_offsite_last_failure_timestamp_seconds",
        "When this step last failed (Unix time), with the kind of failure as `reason`.",
    );
    for (labels, st) in &steps {
        if let Some(t) = st.last_failure {
            let mut l = labels.clone();
            l.push((
                "reason",
                st.last_failure_reason.as_deref().unwrap_or("error"),
            ));
            p.sample("pronto_offsite_last_failure_timestamp_seconds", &l, ts(t));
        }
    }
}

/// After a `verify` run (exit code or error): fold its outcome into the state and
/// rewrite the textfile. Only with `[metrics]` set (verify is otherwise read-only);
/// failures here are logged and never change the command's exit code.
pub fn record_verify(cfg: &Config, res: &Result<Exit>) {
    let Some(m) = &cfg.metrics else { return };
    let error = match res {
        Ok(Exit::Ok) => None,
        Ok(code) => Some(format!(
            "verification failed (exit {code}): a checksum or size did not match"
        )),
        Err(e) => Some(format!("{e:#}")),
    };
    let mut state = State::load(&cfg.local.dir);
    state
        .verify
        .attempt(Utc::now().trunc_subsecs(0), error.as_deref());
    if let Err(e) = state.save(&cfg.local.dir) {
        tracing::error!("saving the run state: {e:#}");
        return;
    }
    if let Err(e) = render(cfg, &state).and_then(|t| write_textfile(m, &t)) {
        tracing::error!("metrics: {e:#}");
    }
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

    #[test]
    fn only_a_success_moves_last_success() {
        let t1 = Utc::now();
        let t2 = t1 + chrono::Duration::hours(24);
        let mut st = TargetState::default();
        st.attempt(t1, None);
        st.attempt(t2, Some("reading /srv/x: Permission denied (os error 13)"));
        assert_eq!(st.last_success, Some(t1));
        assert_eq!(st.last_failure, Some(t2));
        assert_eq!(st.last_failure_reason.as_deref(), Some("permission"));
        assert_eq!(reason("write: No space left on device"), "disk_full");
        assert_eq!(reason("something odd"), "error");
        assert_eq!(
            reason("sftp://b@h/x: the SSH host key of h is unknown (not in ~/.ssh/known_hosts); the server offers ssh-ed25519 SHA256:abc"),
            "auth",
            "a host key is not a checksum"
        );
    }
}
