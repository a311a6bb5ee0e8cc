//! What a `hook` run did, step by step: the report printed on stdout, sent to the
//! `[notify]` channels and summed up in the state file and the metrics textfile.

use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::Exit;
use crate::fsutil::human_bytes;

/// What a run came to, for `on = [...]`: `partial` counts as a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Partial,
    Failure,
}

impl Outcome {
    pub fn is_success(self) -> bool {
        self == Outcome::Success
    }
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Partial => "partial",
            Outcome::Failure => "failure",
        }
    }
}

/// The archive a run made.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveInfo {
    pub id: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupStep {
    /// `--no-backup`.
    pub skipped: bool,
    pub archive: Option<ArchiveInfo>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoteStep {
    pub name: String,
    pub uploaded: Vec<String>,
    pub bytes_uploaded: u64,
    pub already_there: usize,
    /// Archive files the prune after the uploads deleted there.
    pub pruned: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneStep {
    pub skipped: bool,
    /// What it did, or why it was skipped.
    pub message: Option<String>,
    pub error: Option<String>,
}

/// What a hook run did: printed, sent to the webhook (as JSON), to the command (as text).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub host: String,
    pub config: String,
    /// `success`, `partial` or `failure`.
    pub status: Outcome,
    pub exit_code: Exit,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub duration_seconds: f64,
    /// `None` when the run never got to it (the lock).
    pub backup: Option<BackupStep>,
    pub remotes: Vec<RemoteStep>,
    pub prune: Option<PruneStep>,
    /// Every failure, one line each.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// One line: what happened.
    pub summary: String,
    /// The whole report as text (what the command gets on stdin).
    pub text: String,
}

impl Report {
    pub(crate) fn new(cfg: &Config, started: DateTime<Utc>) -> Report {
        Report {
            tool: "pronto-offsite".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            host: crate::fsutil::hostname(),
            config: cfg.file.display().to_string(),
            status: Outcome::Success,
            exit_code: Exit::Ok,
            started,
            finished: started,
            duration_seconds: 0.0,
            backup: None,
            remotes: Vec::new(),
            prune: None,
            errors: Vec::new(),
            warnings: Vec::new(),
            summary: String::new(),
            text: String::new(),
        }
    }

    /// Decide the status and exit code, and write the summary and text.
    pub(crate) fn finish(&mut self, t0: Instant, busy: bool) {
        self.finished = Utc::now().trunc_subsecs(0);
        self.duration_seconds = (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        let backup_failed = self.backup.as_ref().is_some_and(|b| b.error.is_some());
        let made_archive = self.backup.as_ref().is_some_and(|b| b.archive.is_some());
        let remotes_ok = self.remotes.iter().filter(|r| r.error.is_none()).count();
        let remotes_failed = self.remotes.len() - remotes_ok;
        let prune_failed = self.prune.as_ref().is_some_and(|p| p.error.is_some());
        let anything_ok = made_archive || remotes_ok > 0;
        let (status, code) = if busy {
            (Outcome::Failure, Exit::Busy)
        } else if backup_failed {
            let code = match self.exit_code {
                Exit::Ok => Exit::Error,
                code => code,
            };
            (Outcome::Failure, code)
        } else if remotes_failed > 0 || prune_failed || !self.errors.is_empty() {
            if anything_ok {
                (Outcome::Partial, Exit::Partial)
            } else {
                (Outcome::Failure, Exit::Error)
            }
        } else {
            (Outcome::Success, Exit::Ok)
        };
        self.status = status;
        self.exit_code = code;
        self.summary = self.make_summary();
        self.text = self.text();
    }

    fn make_summary(&self) -> String {
        let head = match self.status {
            Outcome::Success => "OK".to_string(),
            Outcome::Partial => format!("PARTIAL FAILURE (exit {})", self.exit_code),
            Outcome::Failure => format!("FAILED (exit {})", self.exit_code),
        };
        let mut parts = Vec::new();
        match &self.backup {
            Some(BackupStep {
                archive: Some(a), ..
            }) => parts.push(format!("archive {} ({})", a.id, human_bytes(a.size))),
            Some(BackupStep { error: Some(_), .. }) => parts.push("backup failed".to_string()),
            Some(BackupStep { skipped: true, .. }) => parts.push("backup skipped".to_string()),
            _ => {}
        }
        let ok: Vec<&str> = self
            .remotes
            .iter()
            .filter(|r| r.error.is_none())
            .map(|r| r.name.as_str())
            .collect();
        let bad: Vec<&str> = self
            .remotes
            .iter()
            .filter(|r| r.error.is_some())
            .map(|r| r.name.as_str())
            .collect();
        if !ok.is_empty() {
            parts.push(format!("pushed to {}", ok.join(", ")));
        }
        if !bad.is_empty() {
            parts.push(format!("push FAILED to {}", bad.join(", ")));
        }
        if self.prune.as_ref().is_some_and(|p| p.error.is_some()) {
            parts.push("prune failed".to_string());
        }
        if self.exit_code == Exit::Busy {
            parts.push("another run holds the lock".to_string());
        }
        format!(
            "pronto-offsite hook on {}: {head}: {}",
            self.host,
            parts.join("; ")
        )
    }

    /// The report as text, for humans and `mail`.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.summary);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "started  {}  ({:.1}s, config {})",
            self.started.to_rfc3339(),
            self.duration_seconds,
            self.config
        );
        match &self.backup {
            None => {}
            Some(b) if b.skipped => {
                let _ = writeln!(s, "backup   skipped (--no-backup)");
            }
            Some(b) => {
                if let Some(a) = &b.archive {
                    let _ = writeln!(
                        s,
                        "backup   {} ({}, sha256 {})",
                        a.file,
                        human_bytes(a.size),
                        a.sha256
                    );
                }
                if let Some(e) = &b.error {
                    let _ = writeln!(s, "backup   FAILED: {e}");
                }
            }
        }
        for r in &self.remotes {
            match &r.error {
                None => {
                    let _ = writeln!(
                        s,
                        "remote   {}: uploaded {} ({}), {} already there, pruned {}",
                        r.name,
                        r.uploaded.len(),
                        human_bytes(r.bytes_uploaded),
                        r.already_there,
                        r.pruned.len()
                    );
                }
                Some(e) => {
                    let _ = writeln!(
                        s,
                        "remote   {}: FAILED after uploading {}: {e}",
                        r.name,
                        r.uploaded.len()
                    );
                }
            }
        }
        if let Some(p) = &self.prune {
            match (&p.error, &p.message) {
                (Some(e), _) => {
                    let _ = writeln!(s, "prune    FAILED: {e}");
                }
                (None, Some(m)) => {
                    let _ = writeln!(s, "prune    {m}");
                }
                (None, None) => {}
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\nerrors:");
            for e in &self.errors {
                let _ = writeln!(s, "  ERROR: {e}");
            }
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(s, "\nwarnings:");
            for w in &self.warnings {
                let _ = writeln!(s, "  {w}");
            }
        }
        s
    }
}
