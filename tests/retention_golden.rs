//! Golden timelines for the retention policy, with expectations worked out by hand
//! (see the comments) and cross-checked against an independent reference implementation
//! of restic's `forget` algorithm (`common_retention_ref.rs`).

#[path = "common_retention_ref.rs"]
mod reference;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use pronto_offsite::cmd::policy;
use pronto_offsite::retention::{self, Count, Decision, Policy, Span, Tier};
use reference::{ref_forget, RefPolicy};

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

/// Every `step` from `first` to `last` inclusive.
fn every(first: &str, last: &str, step: Duration) -> Vec<DateTime<Utc>> {
    let (mut t, end) = (ts(first), ts(last));
    let mut out = Vec::new();
    while t <= end {
        out.push(t);
        t += step;
    }
    out
}

fn count(c: Option<Count>) -> i64 {
    match c {
        None | Some(Count::N(0)) => 0,
        Some(Count::N(n)) => i64::from(n),
        Some(Count::Forever) => -1,
    }
}

fn to_ref(p: &Policy) -> RefPolicy {
    RefPolicy {
        counts: [
            count(p.last),
            count(p.hourly),
            count(p.daily),
            count(p.weekly),
            count(p.monthly),
            count(p.yearly),
        ],
        within: p.within.as_ref().map(|s| {
            (
                (
                    i64::from(s.years),
                    i64::from(s.months),
                    i64::from(s.days),
                    i64::from(s.hours),
                ),
                s.as_str().to_string(),
            )
        }),
    }
}

fn policy(f: impl FnOnce(&mut Policy)) -> Policy {
    let mut p = Policy::none();
    f(&mut p);
    p
}

fn span(s: &str) -> Option<Span> {
    Some(s.parse().unwrap())
}

/// Applies `p` (with `pins`) with both implementations, checks they agree, returns ours.
fn decide(p: &Policy, times: &[DateTime<Utc>], pins: &[bool]) -> Vec<Decision> {
    let ours = retention::apply_with_pins(p, times, pins);
    let secs: Vec<i64> = times.iter().map(|t| t.timestamp()).collect();
    let theirs = ref_forget(&to_ref(p), &secs, pins);
    for (i, (o, r)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            (o.keep, &o.reasons),
            (r.0, &r.1),
            "archive {i} ({}): production vs reference",
            times[i]
        );
    }
    ours
}

/// Checks that exactly the archives in `expected` (by timestamp) are kept, with those
/// reasons; every other archive is forgotten. Timelines here have distinct timestamps.
fn check_pinned(p: &Policy, times: &[DateTime<Utc>], pins: &[bool], expected: &[(&str, &[&str])]) {
    let decisions = decide(p, times, pins);
    let mut want: Vec<(DateTime<Utc>, Vec<String>)> = expected
        .iter()
        .map(|(t, r)| (ts(t), r.iter().map(|s| s.to_string()).collect()))
        .collect();
    want.sort();
    let mut got: Vec<(DateTime<Utc>, Vec<String>)> = times
        .iter()
        .zip(&decisions)
        .filter(|(_, d)| d.keep)
        .map(|(t, d)| (*t, d.reasons.clone()))
        .collect();
    got.sort();
    assert_eq!(got, want, "policy {p}");
    for d in &decisions {
        assert_eq!(d.keep, !d.reasons.is_empty());
    }
}

fn check(p: &Policy, times: &[DateTime<Utc>], expected: &[(&str, &[&str])]) {
    check_pinned(p, times, &vec![false; times.len()], expected);
}

// ---------------------------------------------------------------------------------------

/// Daily at 02:00 from 2024-01-01 to 2025-12-31 (731 archives) with the seed's policy.
/// 2025-12-31 is a Wednesday in ISO week 2026-W01 (Mon 2025-12-29 .. Sun 2026-01-04).
#[test]
fn golden_two_years_daily_seed_policy() {
    let times = every(
        "2024-01-01T02:00:00Z",
        "2025-12-31T02:00:00Z",
        Duration::days(1),
    );
    assert_eq!(times.len(), 731);
    let seed = Policy::seed_default();
    let expected: &[(&str, &[&str])] = &[
        (
            "2025-12-31T02:00:00Z",
            &["daily#1", "weekly#1", "monthly#1", "yearly#1"],
        ),
        ("2025-12-30T02:00:00Z", &["daily#2"]),
        ("2025-12-29T02:00:00Z", &["daily#3"]),
        // Sunday: the newest of 2025-W52.
        ("2025-12-28T02:00:00Z", &["daily#4", "weekly#2"]),
        ("2025-12-27T02:00:00Z", &["daily#5"]),
        ("2025-12-26T02:00:00Z", &["daily#6"]),
        ("2025-12-25T02:00:00Z", &["daily#7"]),
        ("2025-12-21T02:00:00Z", &["weekly#3"]),
        ("2025-12-14T02:00:00Z", &["weekly#4"]),
        ("2025-11-30T02:00:00Z", &["monthly#2"]),
        ("2025-10-31T02:00:00Z", &["monthly#3"]),
        ("2025-09-30T02:00:00Z", &["monthly#4"]),
        ("2025-08-31T02:00:00Z", &["monthly#5"]),
        ("2025-07-31T02:00:00Z", &["monthly#6"]),
        ("2025-06-30T02:00:00Z", &["monthly#7"]),
        ("2025-05-31T02:00:00Z", &["monthly#8"]),
        ("2025-04-30T02:00:00Z", &["monthly#9"]),
        ("2025-03-31T02:00:00Z", &["monthly#10"]),
        ("2025-02-28T02:00:00Z", &["monthly#11"]),
        ("2025-01-31T02:00:00Z", &["monthly#12"]),
        ("2024-12-31T02:00:00Z", &["yearly#2"]),
        // yearly = forever still has count left at the oldest archive, which shares its
        // year with 2024-12-31: restic keeps it too.
        ("2024-01-01T02:00:00Z", &["oldest yearly"]),
    ];
    check(&seed, &times, expected);

    // With yearly 2 the count is spent by 2024-12-31: the oldest goes.
    let yearly2 = Policy {
        yearly: Some(Count::N(2)),
        ..seed.clone()
    };
    check(&yearly2, &times, &expected[..expected.len() - 1]);
    // With yearly 3 it is not: the oldest stays.
    let yearly3 = Policy {
        yearly: Some(Count::N(3)),
        ..seed
    };
    check(&yearly3, &times, expected);

    // Tiers: the strongest reason files the keeper.
    let d = retention::apply(&Policy::seed_default(), &times);
    let tier_of = |s: &str| {
        let i = times.iter().position(|t| *t == ts(s)).unwrap();
        retention::strongest_tier(&d[i].reasons)
    };
    assert_eq!(tier_of("2025-12-31T02:00:00Z"), Tier::Yearly);
    assert_eq!(tier_of("2025-12-28T02:00:00Z"), Tier::Weekly);
    assert_eq!(tier_of("2025-12-27T02:00:00Z"), Tier::Top);
    assert_eq!(tier_of("2025-11-30T02:00:00Z"), Tier::Monthly);
    assert_eq!(tier_of("2024-01-01T02:00:00Z"), Tier::Yearly);
}

/// ISO week 2025-W01 runs Mon 2024-12-30 .. Sun 2025-01-05 and belongs to ISO year 2025.
/// Daily at 12:00 from Mon 2024-12-16 to Sun 2025-01-05.
#[test]
fn golden_iso_week_new_year_2025() {
    let times = every(
        "2024-12-16T12:00:00Z",
        "2025-01-05T12:00:00Z",
        Duration::days(1),
    );
    // One bucket for the whole week: keying by the calendar year would split it in two
    // and keep 2024-12-31 as a second "week" instead of 2024-12-29.
    check(
        &policy(|p| p.weekly = Some(Count::N(2))),
        &times,
        &[
            ("2025-01-05T12:00:00Z", &["weekly#1"]),
            ("2024-12-29T12:00:00Z", &["weekly#2"]),
        ],
    );
    // Three weeks have archives; the fourth count is left at the oldest (Mon 2024-12-16,
    // same week as 2024-12-22), which is kept.
    check(
        &policy(|p| p.weekly = Some(Count::N(10))),
        &times,
        &[
            ("2025-01-05T12:00:00Z", &["weekly#1"]),
            ("2024-12-29T12:00:00Z", &["weekly#2"]),
            ("2024-12-22T12:00:00Z", &["weekly#3"]),
            ("2024-12-16T12:00:00Z", &["oldest weekly"]),
        ],
    );
    // Week, month and year keys never collide (week 2025-01 vs month 2025-01): the
    // weekly keepers in January survive next to the monthly and yearly ones.
    check(
        &policy(|p| {
            p.weekly = Some(Count::N(3));
            p.monthly = Some(Count::N(3));
            p.yearly = Some(Count::N(3));
        }),
        &times,
        &[
            (
                "2025-01-05T12:00:00Z",
                &["weekly#1", "monthly#1", "yearly#1"],
            ),
            // Same ISO week as 2025-01-05, so not a weekly keeper.
            ("2024-12-31T12:00:00Z", &["monthly#2", "yearly#2"]),
            ("2024-12-29T12:00:00Z", &["weekly#2"]),
            ("2024-12-22T12:00:00Z", &["weekly#3"]),
            ("2024-12-16T12:00:00Z", &["oldest monthly", "oldest yearly"]),
        ],
    );
}

/// 2026 has 53 ISO weeks: 2026-W53 runs Mon 2026-12-28 .. Sun 2027-01-03.
/// Daily at 12:00 from Mon 2026-12-14 to Sun 2027-01-10.
#[test]
fn golden_iso_week_53_new_year_2027() {
    let times = every(
        "2026-12-14T12:00:00Z",
        "2027-01-10T12:00:00Z",
        Duration::days(1),
    );
    check(
        &policy(|p| p.weekly = Some(Count::N(3))),
        &times,
        &[
            ("2027-01-10T12:00:00Z", &["weekly#1"]), // 2027-W01
            ("2027-01-03T12:00:00Z", &["weekly#2"]), // 2026-W53
            ("2026-12-27T12:00:00Z", &["weekly#3"]), // 2026-W52
        ],
    );
    check(
        &policy(|p| {
            p.weekly = Some(Count::N(3));
            p.yearly = Some(Count::N(2));
        }),
        &times,
        &[
            ("2027-01-10T12:00:00Z", &["weekly#1", "yearly#1"]),
            ("2027-01-03T12:00:00Z", &["weekly#2"]),
            ("2026-12-31T12:00:00Z", &["yearly#2"]),
            ("2026-12-27T12:00:00Z", &["weekly#3"]),
        ],
    );
    // Only the days of 2026-W53: one week, whatever the calendar year says.
    let w53 = every(
        "2026-12-28T12:00:00Z",
        "2027-01-03T12:00:00Z",
        Duration::days(1),
    );
    check(
        &policy(|p| p.weekly = Some(Count::N(1))),
        &w53,
        &[("2027-01-03T12:00:00Z", &["weekly#1"])],
    );
}

#[test]
fn golden_leap_day() {
    // Daily at 09:00 across 2024-02-29.
    let times = every(
        "2024-02-25T09:00:00Z",
        "2024-03-03T09:00:00Z",
        Duration::days(1),
    );
    check(
        &policy(|p| {
            p.daily = Some(Count::N(2));
            p.monthly = Some(Count::N(2));
        }),
        &times,
        &[
            ("2024-03-03T09:00:00Z", &["daily#1", "monthly#1"]),
            ("2024-03-02T09:00:00Z", &["daily#2"]),
            ("2024-02-29T09:00:00Z", &["monthly#2"]),
        ],
    );

    // within 1m from 2024-03-31T12:00: Go's AddDate(0,-1,0) gives "2024-02-31", which is
    // normalised to 2024-03-02T12:00 (not clamped to 02-29). Kept: strictly newer.
    let times = every(
        "2024-02-20T12:00:00Z",
        "2024-03-31T12:00:00Z",
        Duration::days(1),
    );
    let p = policy(|p| p.within = span("1m"));
    let decisions = decide(&p, &times, &vec![false; times.len()]);
    for (t, d) in times.iter().zip(&decisions) {
        let want = *t > ts("2024-03-02T12:00:00Z");
        assert_eq!(d.keep, want, "{t}");
        if want {
            assert_eq!(d.reasons, vec!["within 1m"]);
        }
    }
    assert_eq!(decisions.iter().filter(|d| d.keep).count(), 29);

    // within 1y from 2024-02-29T00:00: "2023-02-29" is 2023-03-01.
    let times = every(
        "2023-02-25T00:00:00Z",
        "2024-02-29T00:00:00Z",
        Duration::days(1),
    );
    let p = policy(|p| p.within = span("1y"));
    let decisions = decide(&p, &times, &vec![false; times.len()]);
    let kept: Vec<_> = times
        .iter()
        .zip(&decisions)
        .filter(|(_, d)| d.keep)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(kept.first(), Some(&ts("2023-03-02T00:00:00Z")));
    assert_eq!(kept.last(), Some(&ts("2024-02-29T00:00:00Z")));
    assert_eq!(kept.len(), 365);
}

/// Daily at 03:00 on 2025-01-01..10, nothing for three weeks, then 2025-02-01..03.
/// Empty buckets do not count: the history kept is not shortened by the outage.
#[test]
fn golden_three_week_outage() {
    let mut times = every(
        "2025-01-01T03:00:00Z",
        "2025-01-10T03:00:00Z",
        Duration::days(1),
    );
    times.extend(every(
        "2025-02-01T03:00:00Z",
        "2025-02-03T03:00:00Z",
        Duration::days(1),
    ));
    check(
        &policy(|p| {
            p.daily = Some(Count::N(7));
            p.weekly = Some(Count::N(4));
        }),
        &times,
        &[
            ("2025-02-03T03:00:00Z", &["daily#1", "weekly#1"]), // Mon, W06
            ("2025-02-02T03:00:00Z", &["daily#2", "weekly#2"]), // Sun, W05
            ("2025-02-01T03:00:00Z", &["daily#3"]),
            ("2025-01-10T03:00:00Z", &["daily#4", "weekly#3"]), // Fri, W02
            ("2025-01-09T03:00:00Z", &["daily#5"]),
            ("2025-01-08T03:00:00Z", &["daily#6"]),
            ("2025-01-07T03:00:00Z", &["daily#7"]),
            ("2025-01-05T03:00:00Z", &["weekly#4"]), // Sun, 2025-W01
        ],
    );
    // An age-only rule would keep just the three newest.
    check(
        &policy(|p| p.within = span("7d")),
        &times,
        &[
            ("2025-02-03T03:00:00Z", &["within 7d"]),
            ("2025-02-02T03:00:00Z", &["within 7d"]),
            ("2025-02-01T03:00:00Z", &["within 7d"]),
        ],
    );
}

/// Four backups a day (00, 06, 12, 18 h) on 2025-06-01..03.
#[test]
fn golden_several_backups_a_day() {
    let times = every(
        "2025-06-01T00:00:00Z",
        "2025-06-03T18:00:00Z",
        Duration::hours(6),
    );
    assert_eq!(times.len(), 12);
    check(
        &policy(|p| {
            p.last = Some(Count::N(3));
            p.daily = Some(Count::N(2));
        }),
        &times,
        &[
            ("2025-06-03T18:00:00Z", &["last#1", "daily#1"]),
            ("2025-06-03T12:00:00Z", &["last#2"]),
            ("2025-06-03T06:00:00Z", &["last#3"]),
            ("2025-06-02T18:00:00Z", &["daily#2"]),
        ],
    );
    // More days asked for than exist: the newest of each day, and the oldest.
    check(
        &policy(|p| p.daily = Some(Count::N(5))),
        &times,
        &[
            ("2025-06-03T18:00:00Z", &["daily#1"]),
            ("2025-06-02T18:00:00Z", &["daily#2"]),
            ("2025-06-01T18:00:00Z", &["daily#3"]),
            ("2025-06-01T00:00:00Z", &["oldest daily"]),
        ],
    );
}

#[test]
fn golden_hourly() {
    // Every 20 minutes, 10:00 .. 12:40.
    let times = every(
        "2025-03-09T10:00:00Z",
        "2025-03-09T12:40:00Z",
        Duration::minutes(20),
    );
    assert_eq!(times.len(), 9);
    check(
        &policy(|p| p.hourly = Some(Count::N(2))),
        &times,
        &[
            ("2025-03-09T12:40:00Z", &["hourly#1"]),
            ("2025-03-09T11:40:00Z", &["hourly#2"]),
        ],
    );
    check(
        &policy(|p| p.hourly = Some(Count::N(5))),
        &times,
        &[
            ("2025-03-09T12:40:00Z", &["hourly#1"]),
            ("2025-03-09T11:40:00Z", &["hourly#2"]),
            ("2025-03-09T10:40:00Z", &["hourly#3"]),
            ("2025-03-09T10:00:00Z", &["oldest hourly"]),
        ],
    );
    // Every 30 minutes across New Year's midnight.
    let times = every(
        "2024-12-31T22:00:00Z",
        "2025-01-01T00:30:00Z",
        Duration::minutes(30),
    );
    check(
        &policy(|p| {
            p.hourly = Some(Count::N(3));
            p.daily = Some(Count::N(1));
            p.yearly = Some(Count::N(2));
        }),
        &times,
        &[
            ("2025-01-01T00:30:00Z", &["hourly#1", "daily#1", "yearly#1"]),
            ("2024-12-31T23:30:00Z", &["hourly#2", "yearly#2"]),
            ("2024-12-31T22:30:00Z", &["hourly#3"]),
        ],
    );
}

#[test]
fn golden_within() {
    // Every 6 hours; newest 2025-05-10T12:00. 1d12h back: 05-09T12:00 − 12h = 05-09T00:00,
    // and only archives strictly newer are within.
    let times = every(
        "2025-05-07T00:00:00Z",
        "2025-05-10T12:00:00Z",
        Duration::hours(6),
    );
    let w: &[&str] = &["within 1d12h"];
    check(
        &policy(|p| p.within = span("1d12h")),
        &times,
        &[
            ("2025-05-09T06:00:00Z", w),
            ("2025-05-09T12:00:00Z", w),
            ("2025-05-09T18:00:00Z", w),
            ("2025-05-10T00:00:00Z", w),
            ("2025-05-10T06:00:00Z", w),
            ("2025-05-10T12:00:00Z", w),
        ],
    );
    // within counts from the newest archive, not from now, and combines with the rules
    // (reasons in restic's order: within first). 12h back from 12:00 is 00:00 the same
    // day, and the archive at exactly 00:00 is not strictly newer: it goes.
    check(
        &policy(|p| {
            p.within = span("12h");
            p.daily = Some(Count::N(2));
        }),
        &times,
        &[
            ("2025-05-10T12:00:00Z", &["within 12h", "daily#1"]),
            ("2025-05-10T06:00:00Z", &["within 12h"]),
            ("2025-05-09T18:00:00Z", &["daily#2"]),
        ],
    );
    // A zero span is off, like restic: this policy keeps nothing and is rejected.
    let zero = policy(|p| p.within = span("0d"));
    assert!(zero.validate().is_err());
}

#[test]
fn golden_oldest_archive_rule() {
    let times = [
        ts("2025-03-15T00:00:00Z"),
        ts("2025-03-01T00:00:00Z"),
        ts("2025-02-20T00:00:00Z"),
        ts("2025-02-10T00:00:00Z"),
    ];
    // forever always has count left at the oldest.
    check(
        &policy(|p| p.monthly = Some(Count::Forever)),
        &times,
        &[
            ("2025-03-15T00:00:00Z", &["monthly#1"]),
            ("2025-02-20T00:00:00Z", &["monthly#2"]),
            ("2025-02-10T00:00:00Z", &["oldest monthly"]),
        ],
    );
    // Count spent exactly at the last new bucket: the oldest goes.
    check(
        &policy(|p| p.monthly = Some(Count::N(2))),
        &times,
        &[
            ("2025-03-15T00:00:00Z", &["monthly#1"]),
            ("2025-02-20T00:00:00Z", &["monthly#2"]),
        ],
    );
    check(
        &policy(|p| p.monthly = Some(Count::N(3))),
        &times,
        &[
            ("2025-03-15T00:00:00Z", &["monthly#1"]),
            ("2025-02-20T00:00:00Z", &["monthly#2"]),
            ("2025-02-10T00:00:00Z", &["oldest monthly"]),
        ],
    );
    // When the oldest opens a bucket of its own it is an ordinary keeper.
    let days = [
        ts("2025-01-05T00:00:00Z"),
        ts("2025-01-04T00:00:00Z"),
        ts("2025-01-01T00:00:00Z"),
    ];
    check(
        &policy(|p| p.daily = Some(Count::N(3))),
        &days,
        &[
            ("2025-01-05T00:00:00Z", &["daily#1"]),
            ("2025-01-04T00:00:00Z", &["daily#2"]),
            ("2025-01-01T00:00:00Z", &["daily#3"]),
        ],
    );
    // last = forever keeps everything; a single archive is last#1, not "oldest".
    check(
        &policy(|p| p.last = Some(Count::Forever)),
        &times,
        &[
            ("2025-03-15T00:00:00Z", &["last#1"]),
            ("2025-03-01T00:00:00Z", &["last#2"]),
            ("2025-02-20T00:00:00Z", &["last#3"]),
            ("2025-02-10T00:00:00Z", &["last#4"]),
        ],
    );
    check(
        &policy(|p| p.yearly = Some(Count::N(1))),
        &times[..1],
        &[("2025-03-15T00:00:00Z", &["yearly#1"])],
    );
    // The counts of the other rules are not touched by one rule's oldest keep.
    check(
        &policy(|p| {
            p.last = Some(Count::N(1));
            p.monthly = Some(Count::N(5));
            p.yearly = Some(Count::N(1));
        }),
        &times,
        &[
            ("2025-03-15T00:00:00Z", &["last#1", "monthly#1", "yearly#1"]),
            ("2025-02-20T00:00:00Z", &["monthly#2"]),
            ("2025-02-10T00:00:00Z", &["oldest monthly"]),
        ],
    );
}

#[test]
fn golden_pins() {
    // Two a day (06:00, 18:00) on 2025-04-01..05, daily 2.
    let times = every(
        "2025-04-01T06:00:00Z",
        "2025-04-05T18:00:00Z",
        Duration::hours(12),
    );
    let p = policy(|p| p.daily = Some(Count::N(2)));
    let pin = |which: &[&str]| -> Vec<bool> {
        times
            .iter()
            .map(|t| which.iter().any(|w| ts(w) == *t))
            .collect()
    };
    // A pinned old archive is kept for its pin only.
    check_pinned(
        &p,
        &times,
        &pin(&["2025-04-01T18:00:00Z"]),
        &[
            ("2025-04-05T18:00:00Z", &["daily#1"]),
            ("2025-04-04T18:00:00Z", &["daily#2"]),
            ("2025-04-01T18:00:00Z", &["pinned"]),
        ],
    );
    // A pinned archive still goes through the rules: pinning the newest adds a reason.
    check_pinned(
        &p,
        &times,
        &pin(&["2025-04-05T18:00:00Z"]),
        &[
            ("2025-04-05T18:00:00Z", &["pinned", "daily#1"]),
            ("2025-04-04T18:00:00Z", &["daily#2"]),
        ],
    );
    // Pinning the older archive of a day neither takes that day's bucket nor spends a
    // count: the rules decide exactly as without pins.
    check_pinned(
        &p,
        &times,
        &pin(&["2025-04-05T06:00:00Z", "2025-04-03T06:00:00Z"]),
        &[
            ("2025-04-05T18:00:00Z", &["daily#1"]),
            ("2025-04-05T06:00:00Z", &["pinned"]),
            ("2025-04-04T18:00:00Z", &["daily#2"]),
            ("2025-04-03T06:00:00Z", &["pinned"]),
        ],
    );
    // Pinning the oldest.
    let first3 = &times[..3];
    check_pinned(
        &policy(|p| p.daily = Some(Count::N(20))),
        first3,
        &[true, false, false],
        &[
            ("2025-04-02T06:00:00Z", &["daily#1"]),
            ("2025-04-01T18:00:00Z", &["daily#2"]),
            ("2025-04-01T06:00:00Z", &["pinned", "oldest daily"]),
        ],
    );
}

/// Identical timestamps: like restic (a stable newest-first sort), the one that comes
/// first in the input counts as the newer.
#[test]
fn golden_duplicate_timestamps() {
    let a = ts("2025-01-02T10:00:00Z");
    let b = ts("2025-01-01T10:00:00Z");
    let times = [b, a, a];
    let d = decide(
        &policy(|p| p.daily = Some(Count::N(1))),
        &times,
        &[false; 3],
    );
    let reasons: Vec<Vec<String>> = d.iter().map(|d| d.reasons.clone()).collect();
    assert_eq!(reasons, vec![vec![], vec!["daily#1".to_string()], vec![]]);

    let d = decide(&policy(|p| p.last = Some(Count::N(2))), &times, &[false; 3]);
    let reasons: Vec<Vec<String>> = d.iter().map(|d| d.reasons.clone()).collect();
    assert_eq!(
        reasons,
        vec![
            vec![],
            vec!["last#1".to_string()],
            vec!["last#2".to_string()]
        ]
    );

    // The later duplicate is the oldest of its day and, being the oldest overall, is
    // kept by the oldest-archive rule.
    let d = decide(
        &policy(|p| p.daily = Some(Count::N(5))),
        &[a, a],
        &[false; 2],
    );
    assert_eq!(d[0].reasons, vec!["daily#1"]);
    assert_eq!(d[1].reasons, vec!["oldest daily"]);
}

#[test]
fn golden_empty_policy_is_an_error_not_delete_everything() {
    let empty = policy(|p| {
        p.daily = Some(Count::N(0));
        p.within = span("0h");
    });
    assert_eq!(
        empty.validate().unwrap_err(),
        "the retention policy keeps nothing; set at least one of last, hourly, daily, weekly, \
         monthly, yearly, within"
    );
    // apply() itself never deletes everything: like restic, it keeps all.
    let times = [ts("2025-01-02T10:00:00Z"), ts("2025-01-01T10:00:00Z")];
    let d = decide(&empty, &times, &[false, true]);
    assert!(d.iter().all(|d| d.keep));
    assert_eq!(d[0].reasons, vec!["policy is empty"]);
    assert_eq!(d[1].reasons, vec!["pinned", "policy is empty"]);

    let err = policy::run(
        &empty,
        "x-20250101-000000\n".as_bytes(),
        true,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("keeps nothing"), "{err}");
}

// --- the `policy` command -------------------------------------------------------------

fn run(p: &Policy, input: &str, json: bool) -> anyhow::Result<String> {
    let mut out = Vec::new();
    policy::run(p, input.as_bytes(), json, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn policy_cmd_json_in_input_order() {
    let input = "\
pronto-app-backup-20260131-170521.tar.gz
  pronto-app-backup-20260201-170521

2026-01-30T09:00:00+01:00
pronto-app-backup-20260201-090000.tar.zst.age
";
    let p = policy(|p| {
        p.daily = Some(Count::N(2));
        p.monthly = Some(Count::N(2));
    });
    let out = run(&p, input, true).unwrap();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"archive": "pronto-app-backup-20260131-170521.tar.gz", "keep": true, "reasons": ["daily#2", "monthly#2"]}),
            serde_json::json!({"archive": "pronto-app-backup-20260201-170521", "keep": true, "reasons": ["daily#1", "monthly#1"]}),
            serde_json::json!({"archive": "2026-01-30T09:00:00+01:00", "keep": false, "reasons": []}),
            serde_json::json!({"archive": "pronto-app-backup-20260201-090000.tar.zst.age", "keep": false, "reasons": []}),
        ]
    );
    // Exactly the documented shape, key order included.
    assert!(out.starts_with(
        "{\"archive\":\"pronto-app-backup-20260131-170521.tar.gz\",\"keep\":true,\"reasons\":[\"daily#2\",\"monthly#2\"]}\n"
    ));
    assert_eq!(run(&p, "", true).unwrap(), "");
}

#[test]
fn policy_cmd_table() {
    let input = "x-20250603-180000\nx-20250603-120000\nx-20250602-180000\n";
    let p = policy(|p| p.daily = Some(Count::N(1)));
    assert_eq!(
        run(&p, input, false).unwrap(),
        "ARCHIVE            ACTION  REASONS\n\
         x-20250603-180000  keep    daily#1\n\
         x-20250603-120000  forget\n\
         x-20250602-180000  forget\n\
         1 kept, 2 forgotten\n"
    );
    assert!(run(&p, "", false)
        .unwrap()
        .ends_with("0 kept, 0 forgotten\n"));
}

#[test]
fn policy_cmd_bad_line_names_its_number() {
    let input = "x-20250603-180000\n\nfoo\n";
    let err = run(&Policy::seed_default(), input, true).unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 3: \"foo\" is neither an archive name (PREFIX-YYYYMMDD-HHMMSS[.tar.gz]) nor an \
         RFC 3339 timestamp"
    );
    let err = run(&Policy::seed_default(), "x-20250230-000000.tar.gz\n", false).unwrap_err();
    assert!(err.to_string().starts_with("line 1: "), "{err}");
}

#[test]
fn policy_cmd_names_parse_to_utc() {
    let want = NaiveDate::from_ymd_opt(2026, 2, 1)
        .unwrap()
        .and_hms_opt(17, 5, 21)
        .unwrap()
        .and_utc();
    for line in [
        "pronto-app-backup-20260201-170521.tar.gz",
        "pronto-app-backup-20260201-170521",
        "2026-02-01T18:05:21+01:00",
    ] {
        assert_eq!(
            retention::parse_time_line(line, "pronto-app-backup"),
            Ok(want)
        );
    }
}
