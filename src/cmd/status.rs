//! `status`: for monitoring systems. The newest archive's age locally and on each remote,
//! counts and sizes per tier, disk space left, and the storage the retention policy
//! needs at steady state (the seed's "Storage Planning", computed).
//!
//! Exit 0 when all is current; exit 5 (stale) when there is no complete local archive,
//! the newest is older than `--max-age` (default `[status] max_age`, 26h), a remote lags
//! (its newest complete archive is older than the local newest by more than the max age,
//! or it has none), a remote cannot be listed, or the disk has no room for another
//! archive of the newest one's size.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use serde::Serialize;

use crate::catalog::{self, Tier};
pub use crate::config::status::{parse_max_age, StatusConfig, DEFAULT_MAX_AGE};
use crate::config::Config;
use crate::error::Exit;
use crate::fsutil::human_bytes;
pub use crate::fsutil::{free_space, human_age, Disk};
use crate::metrics::{LastRun, State};
use crate::retention::{self, Policy};

/// How far the steady-state estimate looks ahead.
pub const HORIZON_DAYS: i64 = 3 * 365;

/// `status`'s flags.
#[derive(Debug, Clone, Default)]
pub struct StatusOptions {
    pub max_age: Option<Duration>,
    pub remote: Option<String>,
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveRef {
    pub id: String,
    pub file: String,
    pub time: DateTime<Utc>,
    pub age_seconds: i64,
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TierStatus {
    pub tier: String,
    pub count: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LocalStatus {
    pub dir: String,
    pub newest: Option<ArchiveRef>,
    pub archives: usize,
    pub bytes: u64,
    /// Archives without a manifest (interrupted or foreign).
    pub incomplete: usize,
    pub tiers: Vec<TierStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoteStatus {
    pub name: String,
    pub location: String,
    pub newest: Option<ArchiveRef>,
    pub archives: usize,
    pub bytes: u64,
    pub incomplete: usize,
    /// How far its newest archive is behind the local newest.
    pub lag_seconds: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SteadyState {
    /// The policy, as `daily=7, weekly=4, ...`.
    pub policy: String,
    pub horizon_days: i64,
    /// Time between archives assumed (the median gap between recent ones, else a day).
    pub interval_seconds: u64,
    /// Archives kept at the horizon, by the tier they are filed in.
    pub tiers: Vec<TierStatus>,
    pub archives: usize,
    /// Median size of the most recent complete archives.
    pub median_archive_size: Option<u64>,
    pub sample: usize,
    pub bytes: Option<u64>,
    /// Whether it fits: bytes ≤ what local archives use now + free space.
    pub fits_on_disk: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub now: DateTime<Utc>,
    pub max_age_seconds: u64,
    /// `ok` or `stale`.
    pub status: String,
    pub problems: Vec<String>,
    pub local: LocalStatus,
    pub remotes: Vec<RemoteStatus>,
    pub disk: Option<Disk>,
    pub steady_state: SteadyState,
    pub last_run: Option<LastRun>,
}

fn tier_name(t: Tier) -> &'static str {
    match t {
        Tier::Top => "top",
        other => other.label(),
    }
}

fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (now - t).to_std().unwrap_or_default()
}

/// Run `status`; returns ok or stale (exit 0 or 5).
pub async fn run(cfg: &Config, opts: &StatusOptions, out: &mut dyn Write) -> Result<Exit> {
    let now = Utc::now().trunc_subsecs(0);
    let max_age = opts.max_age.unwrap_or(cfg.status.max_age);
    let mut problems = Vec::new();

    let all = catalog::scan(&cfg.local)?;
    // Safety backups (taken before a restore) are not scheduled backups: left out.
    let complete: Vec<&catalog::LocalArchive> = all
        .iter()
        .filter(|a| a.manifest.is_some() && !a.is_safety())
        .collect();
    let local = local_status(cfg, &all, &complete, now, max_age, &mut problems);

    let mut remotes = Vec::new();
    for remote in crate::remotes::selected(cfg, opts.remote.as_deref())? {
        remotes.push(remote_status(cfg, remote, &local, now, max_age, &mut problems).await);
    }

    let disk = free_space(&cfg.local.dir);
    if let (Some(d), Some(n)) = (&disk, &local.newest) {
        if let Some(size) = n.size.filter(|size| d.free_bytes < *size) {
            problems.push(format!(
                "only {} free on {}: the next archive (about {}) will not fit",
                human_bytes(d.free_bytes),
                d.path,
                human_bytes(size)
            ));
        }
    }

    let recent: Vec<(DateTime<Utc>, u64)> =
        complete.iter().map(|a| (a.name.time, size_of(a))).collect();
    let mut steady = steady_state(&cfg.retention, &recent, now);
    if let (Some(b), Some(d)) = (steady.bytes, &disk) {
        steady.fits_on_disk = Some(b <= local.bytes + d.free_bytes);
    }

    let report = StatusReport {
        now,
        max_age_seconds: max_age.as_secs(),
        status: if problems.is_empty() { "ok" } else { "stale" }.into(),
        problems,
        local,
        remotes,
        disk,
        steady_state: steady,
        last_run: State::load(&cfg.local.dir).last_run,
    };
    if opts.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_text(&report, max_age, out)?;
    }
    Ok(if report.problems.is_empty() {
        Exit::Ok
    } else {
        Exit::Stale
    })
}

/// An archive's size from its manifest (0 when it has none).
fn size_of(a: &catalog::LocalArchive) -> u64 {
    a.manifest.as_ref().map(|m| m.size).unwrap_or(0)
}

/// The local folder: its newest archive, counts per tier, and into `problems` every
/// damaged entry, every archive named in the future and a newest archive that is too old
/// or missing. `complete` holds the scheduled archives of `all` with a manifest.
fn local_status(
    cfg: &Config,
    all: &[catalog::LocalArchive],
    complete: &[&catalog::LocalArchive],
    now: DateTime<Utc>,
    max_age: Duration,
    problems: &mut Vec<String>,
) -> LocalStatus {
    // Named in the future (a wrong clock): flagged, and never the fresh newest.
    for a in complete
        .iter()
        .filter(|a| catalog::named_in_future(a.name.time, now))
    {
        problems.push(format!(
            "local archive {}",
            catalog::future_warning(&a.name.file, a.name.time)
        ));
    }
    let newest = complete
        .iter()
        .rfind(|a| !catalog::named_in_future(a.name.time, now))
        .map(|a| ArchiveRef {
            id: a.name.id.clone(),
            file: a.name.file.clone(),
            time: a.name.time,
            age_seconds: (now - a.name.time).num_seconds(),
            size: Some(size_of(a)),
        });
    let tiers = [Tier::Top, Tier::Weekly, Tier::Monthly, Tier::Yearly]
        .into_iter()
        .map(|t| TierStatus {
            tier: tier_name(t).into(),
            count: complete.iter().filter(|a| a.tier == t).count(),
            bytes: complete
                .iter()
                .filter(|a| a.tier == t)
                .map(|a| size_of(a))
                .sum(),
        })
        .collect();
    for a in all.iter().filter(|a| a.problem.is_some()) {
        problems.push(format!(
            "local archive {}: {}",
            a.name.file,
            a.problem.as_deref().unwrap_or_default()
        ));
    }
    match &newest {
        None => problems.push(format!(
            "there is no complete archive in {}",
            cfg.local.dir.display()
        )),
        Some(n) if age(now, n.time) > max_age => problems.push(format!(
            "the newest local archive ({}) is {} old, more than {}",
            n.id,
            human_age(age(now, n.time)),
            human_age(max_age)
        )),
        _ => {}
    }
    LocalStatus {
        dir: cfg.local.dir.display().to_string(),
        newest,
        archives: complete.len(),
        bytes: complete.iter().map(|a| size_of(a)).sum(),
        incomplete: all.iter().filter(|a| a.manifest.is_none()).count(),
        tiers,
    }
}

/// One remote: what it holds complete, and how far its newest archive lags the newest
/// local one; into `problems`, a listing that failed, archives named in the future, no
/// archive at all, or a lag beyond `max_age`.
async fn remote_status(
    cfg: &Config,
    remote: &crate::config::Remote,
    local: &LocalStatus,
    now: DateTime<Utc>,
    max_age: Duration,
    problems: &mut Vec<String>,
) -> RemoteStatus {
    let mut st = RemoteStatus {
        name: remote.name.clone(),
        location: String::new(),
        newest: None,
        archives: 0,
        bytes: 0,
        incomplete: 0,
        lag_seconds: None,
        error: None,
    };
    let listed = async {
        let r = crate::remotes::open_read_only(remote)?;
        st.location = r.backend.describe();
        crate::remotes::read_state(&r, &cfg.local.prefix).await
    }
    .await;
    let state = match listed {
        Ok(state) => state,
        Err(e) => {
            problems.push(format!("remote {} could not be listed: {e:#}", remote.name));
            st.error = Some(format!("{e:#}"));
            return st;
        }
    };
    let done: Vec<_> = state.archives.values().filter(|a| a.complete()).collect();
    for a in done
        .iter()
        .filter(|a| catalog::named_in_future(a.name.time, now))
    {
        problems.push(format!(
            "remote {}: {}",
            remote.name,
            catalog::future_warning(&a.name.file, a.name.time)
        ));
    }
    st.archives = done.len();
    st.incomplete = state.archives.len() - done.len();
    st.bytes = done.iter().filter_map(|a| a.size).sum();
    st.newest = done
        .iter()
        .filter(|a| !catalog::named_in_future(a.name.time, now))
        .max_by_key(|a| a.name.time)
        .map(|a| ArchiveRef {
            id: a.name.id.clone(),
            file: a.name.file.clone(),
            time: a.name.time,
            age_seconds: (now - a.name.time).num_seconds(),
            size: a.size,
        });
    let Some(l) = &local.newest else {
        return st;
    };
    match &st.newest {
        None => problems.push(format!(
            "remote {} has no complete archive; the newest local one is {}",
            remote.name, l.id
        )),
        Some(r) => {
            let lag = l.time - r.time;
            st.lag_seconds = Some(lag.num_seconds().max(0));
            if lag > TimeDelta::from_std(max_age).unwrap_or(TimeDelta::MAX) {
                problems.push(format!(
                    "remote {} lags: its newest archive ({}) is {} older than the newest local one ({})",
                    remote.name,
                    r.id,
                    human_age(lag.to_std().unwrap_or_default()),
                    l.id
                ));
            }
        }
    }
    st
}

fn newest_line(n: &Option<ArchiveRef>) -> String {
    match n {
        None => "no complete archive".into(),
        Some(a) => format!(
            "newest {} ({} ago)",
            a.id,
            human_age(Duration::from_secs(a.age_seconds.max(0) as u64))
        ),
    }
}

fn print_text(r: &StatusReport, max_age: Duration, out: &mut dyn Write) -> Result<()> {
    let l = &r.local;
    writeln!(
        out,
        "local    {}: {}; {} archive(s), {}{}",
        l.dir,
        newest_line(&l.newest),
        l.archives,
        human_bytes(l.bytes),
        if l.incomplete > 0 {
            format!(" (+{} incomplete)", l.incomplete)
        } else {
            String::new()
        }
    )?;
    let tiers: Vec<String> = l
        .tiers
        .iter()
        .map(|t| format!("{} {} ({})", t.tier, t.count, human_bytes(t.bytes)))
        .collect();
    writeln!(out, "         tiers: {}", tiers.join(", "))?;
    for rm in &r.remotes {
        match &rm.error {
            Some(e) => writeln!(out, "remote   {}: ERROR: could not be listed: {e}", rm.name)?,
            None => writeln!(
                out,
                "remote   {} ({}): {}; {} archive(s), {}{}",
                rm.name,
                rm.location,
                newest_line(&rm.newest),
                rm.archives,
                human_bytes(rm.bytes),
                match rm.lag_seconds {
                    Some(s) if s > 0 => format!(
                        "; {} behind local",
                        human_age(Duration::from_secs(s as u64))
                    ),
                    _ => String::new(),
                }
            )?,
        }
    }
    if let Some(d) = &r.disk {
        writeln!(
            out,
            "disk     {} free of {} ({})",
            human_bytes(d.free_bytes),
            human_bytes(d.total_bytes),
            d.path
        )?;
    }
    let s = &r.steady_state;
    writeln!(out, "policy   {}", s.policy)?;
    let per: Vec<String> = s
        .tiers
        .iter()
        .map(|t| format!("{} {}", t.tier, t.count))
        .collect();
    match (s.median_archive_size, s.bytes) {
        (Some(m), Some(b)) => writeln!(
            out,
            "         at steady state ({} years of an archive every {}): {} archives ({}) x {} (median of the last {}) = {}{}",
            s.horizon_days / 365,
            human_age(Duration::from_secs(s.interval_seconds)),
            s.archives,
            per.join(", "),
            human_bytes(m),
            s.sample,
            human_bytes(b),
            match s.fits_on_disk {
                Some(true) => ", fits on this disk",
                Some(false) => ", MORE than this disk has room for",
                None => "",
            }
        )?,
        _ => writeln!(
            out,
            "         at steady state: {} archives ({}); sizes unknown until there is an archive",
            s.archives,
            per.join(", ")
        )?,
    }
    if let Some(run) = &r.last_run {
        writeln!(
            out,
            "last run {}: {} (exit {}) in {:.1}s",
            run.finished.to_rfc3339(),
            run.status.label(),
            run.exit_code,
            run.duration_seconds
        )?;
    }
    if r.problems.is_empty() {
        writeln!(
            out,
            "OK: the newest archive is less than {} old, locally and on every remote",
            human_age(max_age)
        )?;
    } else {
        for p in &r.problems {
            writeln!(out, "STALE: {p}")?;
        }
    }
    Ok(())
}

/// The policy in one line: `daily=7, weekly=4, monthly=12, yearly=forever`.
pub fn policy_line(p: &Policy) -> String {
    let mut v = Vec::new();
    for (name, c) in [
        ("last", p.last),
        ("hourly", p.hourly),
        ("daily", p.daily),
        ("weekly", p.weekly),
        ("monthly", p.monthly),
        ("yearly", p.yearly),
    ] {
        if let Some(c) = c.filter(|c| c.is_on()) {
            v.push(format!("{name}={c}"));
        }
    }
    if let Some(w) = p.within.as_ref().filter(|w| !w.is_zero()) {
        v.push(format!("within={w}"));
    }
    v.join(", ")
}

/// Storage at steady state: apply the policy to a synthetic timeline of
/// [`HORIZON_DAYS`] with one archive per interval (the median gap between recent
/// archives, clamped to 1 hour … 7 days; a day without history), count the keepers by
/// the tier they are filed in, and multiply by the median size of the last
/// [`crate::catalog::RECENT`] archives. `recent` is (time, size) of complete archives, oldest first.
pub fn steady_state(
    policy: &Policy,
    recent: &[(DateTime<Utc>, u64)],
    now: DateTime<Utc>,
) -> SteadyState {
    let tail = &recent[recent.len().saturating_sub(crate::catalog::RECENT + 1)..];
    let mut gaps: Vec<u64> = tail
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).num_seconds().max(0) as u64)
        .collect();
    let interval = crate::catalog::median(&mut gaps)
        .unwrap_or(86_400)
        .clamp(3_600, 7 * 86_400);
    let n = (HORIZON_DAYS as u64 * 86_400 / interval) as usize + 1;
    let times: Vec<DateTime<Utc>> = (0..n)
        .map(|k| now - TimeDelta::seconds((k as u64 * interval) as i64))
        .collect();
    let decisions = retention::apply(policy, &times);
    let mut counts = [0usize; 4];
    for d in decisions.iter().filter(|d| d.keep) {
        let i = match retention::strongest_tier(&d.reasons) {
            retention::Tier::Top => 0,
            retention::Tier::Weekly => 1,
            retention::Tier::Monthly => 2,
            retention::Tier::Yearly => 3,
        };
        counts[i] += 1;
    }
    let mut sizes: Vec<u64> = recent[recent.len().saturating_sub(crate::catalog::RECENT)..]
        .iter()
        .map(|(_, s)| *s)
        .collect();
    let sample = sizes.len();
    let med = crate::catalog::median(&mut sizes);
    let archives: usize = counts.iter().sum();
    SteadyState {
        policy: policy_line(policy),
        horizon_days: HORIZON_DAYS,
        interval_seconds: interval,
        tiers: ["top", "weekly", "monthly", "yearly"]
            .iter()
            .zip(counts)
            .map(|(t, c)| TierStatus {
                tier: (*t).into(),
                count: c,
                bytes: med.map(|m| m * c as u64).unwrap_or(0),
            })
            .collect(),
        archives,
        median_archive_size: med,
        sample,
        bytes: med.map(|m| m * archives as u64),
        fits_on_disk: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(human_age(Duration::from_secs(45)), "45s");
        assert_eq!(human_age(Duration::from_secs(725)), "12m 5s");
        assert_eq!(human_age(Duration::from_secs(3 * 3600 + 720)), "3h 12m");
        assert_eq!(
            human_age(Duration::from_secs(2 * 86400 + 4 * 3600 + 5)),
            "2d 4h"
        );
        assert_eq!(human_age(Duration::from_secs(86400)), "1d");
        assert_eq!(human_age(Duration::from_secs(26 * 3600)), "1d 2h");
    }

    #[test]
    fn seed_policy_steady_state_matches_the_seed_table() {
        // The seed's policy on daily archives keeps 7 daily, 4 weekly, 12 monthly and one
        // per year (plus the oldest, restic's rule for a count not spent): over 3 years
        // about 7 + 4 + 12 + 5 keepers, some of them counted by several rules.
        let now = DateTime::parse_from_rfc3339("2026-02-01T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let recent: Vec<(DateTime<Utc>, u64)> = (0..10)
            .map(|k| (now - TimeDelta::days(9 - k), 350 << 20))
            .collect();
        let s = steady_state(&Policy::seed_default(), &recent, now);
        assert_eq!(s.interval_seconds, 86_400);
        assert_eq!(s.median_archive_size, Some(350 << 20));
        assert!((22..=27).contains(&s.archives), "{s:?}");
        assert_eq!(s.bytes, Some((350u64 << 20) * s.archives as u64));
        let yearly = s.tiers.iter().find(|t| t.tier == "yearly").unwrap().count;
        // 2026, 2025, 2024, 2023 and the oldest archive (February 2023).
        assert_eq!(yearly, 5, "{s:?}");
    }

    #[test]
    fn interval_follows_recent_archives() {
        let now = Utc::now();
        let recent: Vec<(DateTime<Utc>, u64)> = (0..5)
            .map(|k| (now - TimeDelta::hours(6 * (4 - k)), 10))
            .collect();
        let p = Policy {
            hourly: Some(retention::Count::N(24)),
            ..Policy::none()
        };
        let s = steady_state(&p, &recent, now);
        assert_eq!(s.interval_seconds, 6 * 3600);
        assert_eq!(s.archives, 24);
    }
}
