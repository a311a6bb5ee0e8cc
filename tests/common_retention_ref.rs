//! An independent reference implementation of restic's `forget` algorithm
//! (`ApplyPolicy` in restic's `internal/restic/snapshot_policy.go`), written from its
//! description and kept deliberately close to its shape: integer bucket ids per rule,
//! a `last` id per rule starting at -1, a stable newest-first sort. It shares no code with
//! `pronto_offsite::retention` (no chrono either: calendar arithmetic is done by hand on
//! Unix seconds), so the two can check each other.
//!
//! Reason strings use pronto-offsite's wording (`daily#3`, `oldest yearly`, `within 7d`,
//! `pinned`) instead of restic's (`daily snapshot`).
#![allow(dead_code)]

/// A policy in restic's own encoding: a count per rule (`0` off, `-1` forever), in the
/// order last, hourly, daily, weekly, monthly, yearly; `within` as (y, m, d, h) with the
/// text it was written as.
#[derive(Debug, Clone, PartialEq)]
pub struct RefPolicy {
    pub counts: [i64; 6],
    pub within: Option<((i64, i64, i64, i64), String)>,
}

pub const RULE_NAMES: [&str; 6] = ["last", "hourly", "daily", "weekly", "monthly", "yearly"];

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// (year, month, day) of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Broken-down UTC time of Unix seconds: (year, month, day, hour, seconds into the day).
pub fn civil(secs: i64) -> (i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    (y, m, d, tod / 3600, tod)
}

/// Unix seconds of a UTC date and time.
pub fn unix(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> i64 {
    days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss
}

/// ISO 8601 (year, week) of a day number: the week belongs to the year of its Thursday.
pub fn iso_week(days: i64) -> (i64, i64) {
    // 1970-01-01 was a Thursday; Monday = 0.
    let weekday = (days + 3).rem_euclid(7);
    let thursday = days - weekday + 3;
    let (year, _, _) = civil_from_days(thursday);
    let jan1 = days_from_civil(year, 1, 1);
    (year, (thursday - jan1) / 7 + 1)
}

/// Go's `t.AddDate(-y, -m, -d).Add(-h * time.Hour)` on Unix seconds (UTC): out-of-range
/// months and days are normalised by carrying, never clamped.
pub fn go_sub(secs: i64, (y, m, d, h): (i64, i64, i64, i64)) -> i64 {
    let (cy, cm, cd, _, tod) = civil(secs);
    let mut year = cy - y;
    let mut month = cm - m; // 1-based, may be out of range
    year += (month - 1).div_euclid(12);
    month = (month - 1).rem_euclid(12) + 1;
    let days = days_from_civil(year, month, 1) + (cd - d - 1);
    days * 86400 + tod - h * 3600
}

fn bucket(rule: usize, secs: i64, nr: i64) -> i64 {
    let (y, m, d, hh, _) = civil(secs);
    match rule {
        0 => nr,
        1 => y * 1_000_000 + m * 10_000 + d * 100 + hh,
        2 => y * 10_000 + m * 100 + d,
        3 => {
            let (wy, w) = iso_week(secs.div_euclid(86400));
            wy * 100 + w
        }
        4 => y * 100 + m,
        5 => y,
        _ => unreachable!(),
    }
}

/// restic's `ApplyPolicy`, with pins as tags. Returns (keep, reasons) in input order.
pub fn ref_forget(p: &RefPolicy, secs: &[i64], pinned: &[bool]) -> Vec<(bool, Vec<String>)> {
    let mut out: Vec<(bool, Vec<String>)> = vec![(false, vec![]); secs.len()];
    // sort.Stable(list), Less = newer
    let mut list: Vec<usize> = (0..secs.len()).collect();
    list.sort_by_key(|&i| std::cmp::Reverse(secs[i]));

    let within = p
        .within
        .as_ref()
        .filter(|((y, m, d, h), _)| *y != 0 || *m != 0 || *d != 0 || *h != 0);
    let empty = within.is_none() && p.counts.iter().all(|&c| c == 0);
    if empty {
        for (i, o) in out.iter_mut().enumerate() {
            o.0 = true;
            if pinned[i] {
                o.1.push("pinned".into());
            }
            o.1.push("policy is empty".into());
        }
        return out;
    }
    if list.is_empty() {
        return out;
    }
    let latest = secs.iter().copied().max().unwrap();

    let mut count = p.counts;
    let mut last = [-1i64; 6];
    let mut used = [0i64; 6];

    for (nr, &cur) in list.iter().enumerate() {
        let mut keep = false;
        let mut reasons = Vec::new();
        if pinned[cur] {
            keep = true;
            reasons.push("pinned".to_string());
        }
        if let Some((span, text)) = within {
            let t = go_sub(latest, *span);
            if secs[cur] > t {
                keep = true;
                reasons.push(format!("within {text}"));
            }
        }
        for i in 0..6 {
            if count[i] > 0 || count[i] == -1 {
                let val = bucket(i, secs[cur], nr as i64);
                if val != last[i] || nr == list.len() - 1 {
                    keep = true;
                    if val != last[i] {
                        used[i] += 1;
                        reasons.push(format!("{}#{}", RULE_NAMES[i], used[i]));
                    } else {
                        reasons.push(format!("oldest {}", RULE_NAMES[i]));
                    }
                    last[i] = val;
                    if count[i] > 0 {
                        count[i] -= 1;
                    }
                }
            }
        }
        out[cur] = (keep, reasons);
    }
    out
}

#[test]
fn reference_calendar_helpers() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    assert_eq!(iso_week(days_from_civil(2024, 12, 30)), (2025, 1));
    assert_eq!(iso_week(days_from_civil(2027, 1, 3)), (2026, 53));
    assert_eq!(iso_week(days_from_civil(2027, 1, 4)), (2027, 1));
    assert_eq!(iso_week(days_from_civil(2021, 1, 3)), (2020, 53));
    assert_eq!(iso_week(days_from_civil(2025, 12, 29)), (2026, 1));
    assert_eq!(
        go_sub(unix(2024, 3, 31, 12, 0, 0), (0, 1, 0, 0)),
        unix(2024, 3, 2, 12, 0, 0)
    );
    assert_eq!(
        go_sub(unix(2025, 1, 15, 0, 0, 0), (0, 13, 40, 0)),
        unix(2023, 11, 5, 0, 0, 0)
    );
}
