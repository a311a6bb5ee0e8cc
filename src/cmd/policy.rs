//! `pronto-offsite policy`: shows what a retention policy keeps of a list of archives.
//!
//! Reads archive names (`pronto-app-backup-20260201-170521.tar.gz`, with or without the
//! extension) or RFC 3339 timestamps from stdin, one per line, and prints for each whether
//! the policy keeps it and why: a readable table, or with `--json` one JSON object per
//! input line, in input order.

use std::io::{BufRead, Write};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::retention::{self, Count, Policy, Span};

/// Flags of `pronto-offsite policy`. Any `--keep-*` flag replaces the configured policy
/// as a whole (then no config file is needed).
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyArgs {
    /// Keep the N newest archives (or `forever`)
    #[arg(long, value_name = "N")]
    pub keep_last: Option<Count>,
    /// Keep the newest archive of each of the last N hours that have one (or `forever`)
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<Count>,
    /// Keep the newest archive of each of the last N days that have one (or `forever`)
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<Count>,
    /// Keep the newest archive of each of the last N ISO weeks that have one (or `forever`)
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<Count>,
    /// Keep the newest archive of each of the last N months that have one (or `forever`)
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<Count>,
    /// Keep the newest archive of each of the last N years that have one (or `forever`)
    #[arg(long, value_name = "N|forever")]
    pub keep_yearly: Option<Count>,
    /// Keep every archive newer than the newest archive minus DURATION (e.g. 7d, 1y2m3d4h)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<Span>,
    /// Apply this remote's policy (its `[remotes.retention]`, else `[retention]`)
    #[arg(long, value_name = "NAME")]
    pub remote: Option<String>,
    /// Print one JSON object per input line instead of a table
    #[arg(long)]
    pub json: bool,
}

impl PolicyArgs {
    /// The policy given by the `--keep-*` flags, when any is given (it replaces the
    /// configured policy as a whole); `None` when none is.
    pub fn explicit_policy(&self) -> Option<Policy> {
        let policy = Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within.clone(),
        };
        (policy != Policy::none()).then_some(policy)
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    archive: &'a str,
    keep: bool,
    reasons: &'a [String],
}

/// Reads one archive name or timestamp per line from `input`, applies `policy` and writes
/// the decisions to `out` (a table, or JSON lines when `json`), in input order.
///
/// Empty lines are skipped; a line that is neither an archive name nor an RFC 3339
/// timestamp is an error naming its (1-based) line number. An empty policy is an error.
pub fn run(policy: &Policy, input: impl BufRead, json: bool, out: &mut impl Write) -> Result<()> {
    policy.validate().map_err(|e| anyhow!(e))?;

    let mut names = Vec::new();
    let mut times = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("reading line {number} of the input"))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let time =
            retention::parse_time_line(text, "").map_err(|e| anyhow!("line {number}: {e}"))?;
        names.push(text.to_string());
        times.push(time);
    }

    let decisions = retention::apply(policy, &times);

    if json {
        for (name, d) in names.iter().zip(&decisions) {
            let line = JsonLine {
                archive: name,
                keep: d.keep,
                reasons: &d.reasons,
            };
            serde_json::to_writer(&mut *out, &line)?;
            writeln!(out)?;
        }
    } else {
        let width = names
            .iter()
            .map(|n| n.chars().count())
            .chain([7])
            .max()
            .unwrap_or(7);
        writeln!(out, "{:<width$}  {:<6}  REASONS", "ARCHIVE", "ACTION")?;
        for (name, d) in names.iter().zip(&decisions) {
            let action = if d.keep { "keep" } else { "forget" };
            let line = format!("{name:<width$}  {action:<6}  {}", d.reasons.join(", "));
            writeln!(out, "{}", line.trim_end())?;
        }
        let kept = decisions.iter().filter(|d| d.keep).count();
        writeln!(out, "{kept} kept, {} forgotten", decisions.len() - kept)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PolicyArgs,
    }

    #[test]
    fn retention_policy_args() {
        let cli = Cli::try_parse_from([
            "x",
            "--keep-daily",
            "3",
            "--keep-yearly",
            "forever",
            "--keep-within",
            "1y2m",
            "--json",
        ])
        .unwrap();
        let p = cli.args.explicit_policy().unwrap();
        assert_eq!(p.daily, Some(Count::N(3)));
        assert_eq!(p.yearly, Some(Count::Forever));
        assert_eq!(p.within.unwrap().as_str(), "1y2m");
        assert!(cli.args.json);

        let cli = Cli::try_parse_from(["x", "--json"]).unwrap();
        assert_eq!(cli.args.explicit_policy(), None);
        let cli = Cli::try_parse_from(["x", "--keep-last", "0"]).unwrap();
        assert!(cli.args.explicit_policy().unwrap().validate().is_err());
        assert!(Cli::try_parse_from(["x", "--keep-last", "-1"]).is_err());
        assert!(Cli::try_parse_from(["x", "--keep-within", "7 days"]).is_err());
        assert!(Cli::try_parse_from(["x", "--keep-hourly", "forever"]).is_ok());
    }

    #[test]
    fn retention_policy_run_table() {
        let p = Policy {
            last: Some(Count::N(1)),
            ..Policy::none()
        };
        let input = "a-20260201-170521.tar.gz\n\n2026-02-02T00:00:00Z\n";
        let mut out = Vec::new();
        run(&p, input.as_bytes(), false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "ARCHIVE                   ACTION  REASONS\n\
             a-20260201-170521.tar.gz  forget\n\
             2026-02-02T00:00:00Z      keep    last#1\n\
             1 kept, 1 forgotten\n"
        );
    }
}
