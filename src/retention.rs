//! Retention: which archives a policy keeps, and why.
//!
//! [`apply`] is a pure function with restic's `forget --keep-*` semantics
//! (`internal/restic/snapshot_policy.go`, `ApplyPolicy`), which users already know:
//!
//! * archives are sorted newest first (a *stable* sort: archives with identical
//!   timestamps keep their input order, the earlier one counting as the newer);
//! * each rule (`last`, `hourly`, `daily`, `weekly` = ISO 8601 week, `monthly`,
//!   `yearly`) walks that list and keeps the first (newest) archive of every calendar
//!   bucket it has not seen yet, until its count is spent (`forever` never is). Rules are
//!   independent and ORed. Buckets without archives do not count, so an outage never
//!   shortens the history kept;
//! * a rule that still has count left when it reaches the oldest archive keeps the oldest
//!   too (reason `oldest daily` etc. when the oldest shares its bucket with a newer keeper;
//!   when it opens a new bucket it is an ordinary `daily#N` keeper);
//! * `within` keeps every archive strictly newer than *newest archive − span*, the span
//!   being subtracted the way restic does: calendar years, months and days first (with
//!   Go's `AddDate` normalisation, so 31 March − 1 month = 2 March, not 29 February),
//!   then hours. It counts back from the newest archive, never from the clock.
//!
//! Every decision carries its reasons, in restic's order: `pinned`, `within 7d`,
//! `last#1`, `hourly#2`, `daily#3`, `weekly#1`, `monthly#1`, `yearly#1` (the number is
//! the keeper's rank within its rule), `oldest yearly`.
//!
//! Time is the UTC timestamp taken from the archive name ([`parse_time_line`]), never an
//! mtime. Bucket keys are typed ([`BucketKey`]): a week key can never equal a month key,
//! and the week belongs to its ISO year (2024-12-30 is in 2025-W01).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeDelta, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How many buckets a rule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Count {
    /// Keep the newest archive of this many buckets. `N(0)` turns the rule off.
    N(u32),
    /// No limit: keep the newest archive of every bucket.
    Forever,
}

impl Count {
    /// Whether the rule keeps anything at all.
    pub fn is_on(self) -> bool {
        !matches!(self, Count::N(0))
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::N(n) => write!(f, "{n}"),
            Count::Forever => f.write_str("forever"),
        }
    }
}

impl FromStr for Count {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("forever") {
            return Ok(Count::Forever);
        }
        t.parse::<u32>().map(Count::N).map_err(|_| {
            format!("invalid count {s:?}: expected a non-negative whole number or \"forever\"")
        })
    }
}

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Count::N(n) => serializer.serialize_u32(*n),
            Count::Forever => serializer.serialize_str("forever"),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Count;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative whole number or the string \"forever\"")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Count, E> {
                u32::try_from(v)
                    .map(Count::N)
                    .map_err(|_| E::custom(format!("count {v} is too large")))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Count, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "count {v} is negative: expected a non-negative whole number or \"forever\""
                    )));
                }
                self.visit_u64(v as u64)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Count, E> {
                if v.trim().eq_ignore_ascii_case("forever") {
                    Ok(Count::Forever)
                } else {
                    Err(E::custom(format!(
                        "invalid count {v:?}: expected a non-negative whole number or \"forever\""
                    )))
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A calendar duration like `1y2m3d4h` (restic's `Duration`): years, months, days, hours.
///
/// Units may come in any order, each at most once; every number is a non-negative whole
/// number. The text as written is kept for reasons (`within 7d`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
    text: String,
}

impl Span {
    /// The span as written in the policy (trimmed), e.g. `7d`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A zero span (`0d`) turns the `within` rule off, like restic.
    pub fn is_zero(&self) -> bool {
        self.years == 0 && self.months == 0 && self.days == 0 && self.hours == 0
    }

    /// `t` minus this span, restic's way: Go's `t.AddDate(-y, -m, -d)` (month and day
    /// overflow normalised, not clamped: 2024-03-31 − 1m = 2024-03-02), then minus the
    /// hours. `None` when the result is before the earliest representable time (then
    /// every archive is within the span).
    pub fn before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let months0 = i64::from(t.year()) * 12 + i64::from(t.month0())
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i32::try_from(months0.div_euclid(12)).ok()?;
        let month = u32::try_from(months0.rem_euclid(12)).ok()? + 1;
        let first = NaiveDate::from_ymd_opt(year, month, 1)?;
        let day_offset = i64::from(t.day()) - 1 - i64::from(self.days);
        let date = first.checked_add_signed(TimeDelta::try_days(day_offset)?)?;
        let shifted = NaiveDateTime::new(date, t.time()).and_utc();
        shifted.checked_sub_signed(TimeDelta::try_hours(i64::from(self.hours))?)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let expected =
            "expected numbers followed by y (years), m (months), d (days) or h (hours), \
                        like 7d, 12h or 1y2m3d4h";
        if text.is_empty() {
            return Err(format!("empty duration: {expected}"));
        }
        let mut parts: [Option<u32>; 4] = [None; 4];
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(format!("invalid duration {text:?}: {expected}"));
            }
            let number: u32 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
            let unit = rest[digits..].chars().next().ok_or_else(|| {
                format!("invalid duration {text:?}: no unit after {number}; {expected}")
            })?;
            let slot = match unit {
                'y' => 0,
                'm' => 1,
                'd' => 2,
                'h' => 3,
                other => {
                    return Err(format!(
                        "invalid duration {text:?}: unknown unit {other:?}; {expected}"
                    ))
                }
            };
            if parts[slot].replace(number).is_some() {
                return Err(format!(
                    "invalid duration {text:?}: unit {unit:?} given twice; {expected}"
                ));
            }
            rest = &rest[digits + unit.len_utf8()..];
        }
        Ok(Span {
            years: parts[0].unwrap_or(0),
            months: parts[1].unwrap_or(0),
            days: parts[2].unwrap_or(0),
            hours: parts[3].unwrap_or(0),
            text: text.to_string(),
        })
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A retention policy: the config's `[retention]` table, or the `--keep-*` flags.
///
/// Absent keys and `0` turn a rule off. When the `[retention]` table is absent the
/// seed's policy applies ([`Policy::seed_default`], also [`Default`]); a table that is
/// present replaces it as a whole (it is not merged with the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yearly: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Span>,
}

/// The message of [`Policy::validate`] for a policy that keeps nothing.
pub const EMPTY_POLICY_ERROR: &str = "the retention policy keeps nothing; set at least one of \
     last, hourly, daily, weekly, monthly, yearly, within";

impl Policy {
    /// A policy with every rule off (invalid on its own; a base for building one).
    pub fn none() -> Policy {
        Policy {
            last: None,
            hourly: None,
            daily: None,
            weekly: None,
            monthly: None,
            yearly: None,
            within: None,
        }
    }

    /// The seed's policy: 7 daily, 4 weekly, 12 monthly, yearly forever.
    pub fn seed_default() -> Policy {
        Policy {
            daily: Some(Count::N(7)),
            weekly: Some(Count::N(4)),
            monthly: Some(Count::N(12)),
            yearly: Some(Count::Forever),
            ..Policy::none()
        }
    }

    /// The count rules in restic's order, with their names.
    fn rules(&self) -> [(Rule, Option<Count>); 6] {
        [
            (Rule::Last, self.last),
            (Rule::Hourly, self.hourly),
            (Rule::Daily, self.daily),
            (Rule::Weekly, self.weekly),
            (Rule::Monthly, self.monthly),
            (Rule::Yearly, self.yearly),
        ]
    }

    /// The `within` span, if it is set and not zero.
    fn active_within(&self) -> Option<&Span> {
        self.within.as_ref().filter(|s| !s.is_zero())
    }

    /// True when every rule is absent or off and there is no (non-zero) `within`.
    pub fn is_empty(&self) -> bool {
        self.active_within().is_none()
            && self
                .rules()
                .iter()
                .all(|(_, c)| !c.is_some_and(Count::is_on))
    }

    /// An empty policy is a configuration error, never "delete everything".
    pub fn validate(&self) -> Result<(), String> {
        if self.is_empty() {
            Err(EMPTY_POLICY_ERROR.to_string())
        } else {
            Ok(())
        }
    }
}

impl Default for Policy {
    /// The seed's policy ([`Policy::seed_default`]).
    fn default() -> Self {
        Policy::seed_default()
    }
}

impl fmt::Display for Policy {
    /// E.g. `7 daily, 4 weekly, 12 monthly, all yearly, within 7d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (rule, count) in self.rules() {
            match count {
                Some(Count::N(0)) | None => {}
                Some(Count::N(n)) => parts.push(format!("{n} {}", rule.name())),
                Some(Count::Forever) => parts.push(format!("all {}", rule.name())),
            }
        }
        if let Some(span) = self.active_within() {
            parts.push(format!("within {span}"));
        }
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    fn key(self, t: &DateTime<Utc>, position: usize) -> BucketKey {
        match self {
            Rule::Last => BucketKey::Position(position),
            Rule::Hourly => BucketKey::Hour(t.year(), t.month(), t.day(), t.hour()),
            Rule::Daily => BucketKey::Day(t.year(), t.month(), t.day()),
            Rule::Weekly => {
                let w = t.iso_week();
                BucketKey::Week(IsoYear(w.year()), IsoWeek(w.week()))
            }
            Rule::Monthly => BucketKey::Month(t.year(), t.month()),
            Rule::Yearly => BucketKey::Year(t.year()),
        }
    }
}

/// The year an ISO 8601 week belongs to (not always the calendar year).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IsoYear(pub i32);

/// An ISO 8601 week number, 1..=53.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IsoWeek(pub u32);

/// The calendar bucket an archive falls in for one rule (UTC). Typed, so keys of
/// different rules can never be confused with one another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BucketKey {
    /// `last`: every archive is its own bucket (its position, newest first).
    Position(usize),
    /// `hourly`: year, month, day, hour.
    Hour(i32, u32, u32, u32),
    /// `daily`: year, month, day.
    Day(i32, u32, u32),
    /// `weekly`: ISO year and ISO week.
    Week(IsoYear, IsoWeek),
    /// `monthly`: year, month.
    Month(i32, u32),
    /// `yearly`: year.
    Year(i32),
}

/// What the policy decides for one archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub keep: bool,
    /// Why it is kept (empty when it is forgotten).
    pub reasons: Vec<String>,
}

/// Applies `policy` to archives with timestamps `times`; decisions come back in input order.
///
/// An empty policy keeps everything (reason `policy is empty`, as restic does); callers
/// should reject it beforehand with [`Policy::validate`].
pub fn apply(policy: &Policy, times: &[DateTime<Utc>]) -> Vec<Decision> {
    apply_with_pins(policy, times, &vec![false; times.len()])
}

/// Like [`apply`], with pins: `pinned[i]` keeps archive `i` regardless of the policy
/// (reason `pinned`, listed first).
///
/// Pins behave like restic's `--keep-tag`: a pinned archive is kept *and* still goes
/// through the bucket rules exactly as if it were not pinned (it may take its bucket and
/// spend a count). So pinning never changes the decisions for the other archives.
///
/// # Panics
/// When `pinned` and `times` differ in length.
pub fn apply_with_pins(policy: &Policy, times: &[DateTime<Utc>], pinned: &[bool]) -> Vec<Decision> {
    assert_eq!(
        times.len(),
        pinned.len(),
        "apply_with_pins: one pin flag per archive"
    );
    let mut decisions: Vec<Decision> = pinned
        .iter()
        .map(|&p| Decision {
            keep: p,
            reasons: if p {
                vec!["pinned".to_string()]
            } else {
                Vec::new()
            },
        })
        .collect();
    if times.is_empty() {
        return decisions;
    }
    if policy.is_empty() {
        for d in &mut decisions {
            d.keep = true;
            d.reasons.push("policy is empty".to_string());
        }
        return decisions;
    }

    // Newest first; `sort_by` is stable, so equal timestamps keep their input order.
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].cmp(&times[a]));

    let newest = times[order[0]];
    let within = policy
        .active_within()
        .map(|span| (span, span.before(newest)));

    struct State {
        rule: Rule,
        /// Remaining count; `None` = forever.
        left: Option<u32>,
        kept: u32,
        last: Option<BucketKey>,
    }
    let mut states: Vec<State> = policy
        .rules()
        .into_iter()
        .filter_map(|(rule, count)| match count? {
            Count::N(0) => None,
            Count::N(n) => Some(State {
                rule,
                left: Some(n),
                kept: 0,
                last: None,
            }),
            Count::Forever => Some(State {
                rule,
                left: None,
                kept: 0,
                last: None,
            }),
        })
        .collect();

    let oldest = order.len() - 1;
    for (position, &i) in order.iter().enumerate() {
        let t = &times[i];
        let decision = &mut decisions[i];

        if let Some((span, cutoff)) = &within {
            // Strictly newer than the cutoff; no cutoff = before all representable time.
            if cutoff.is_none_or(|c| *t > c) {
                decision.keep = true;
                decision.reasons.push(format!("within {span}"));
            }
        }

        for state in &mut states {
            if state.left == Some(0) {
                continue;
            }
            let key = state.rule.key(t, position);
            let new_bucket = state.last != Some(key);
            if new_bucket || position == oldest {
                decision.keep = true;
                state.last = Some(key);
                if let Some(left) = &mut state.left {
                    *left -= 1;
                }
                if new_bucket {
                    state.kept += 1;
                    decision
                        .reasons
                        .push(format!("{}#{}", state.rule.name(), state.kept));
                } else {
                    decision
                        .reasons
                        .push(format!("oldest {}", state.rule.name()));
                }
            }
        }
    }
    decisions
}

/// Where a keeper is filed locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// `archive/yearly`
    Yearly,
    /// `archive/monthly`
    Monthly,
    /// `archive/weekly`
    Weekly,
    /// The top folder (daily, hourly, last, within, pinned).
    Top,
}

/// The strongest tier among a keeper's reasons: yearly (including `oldest yearly`), else
/// monthly, else weekly, else the top folder.
pub fn strongest_tier(reasons: &[String]) -> Tier {
    let has = |rule: &str| {
        reasons.iter().any(|r| {
            r.strip_prefix(rule)
                .is_some_and(|rest| rest.starts_with('#'))
                || r.strip_prefix("oldest ") == Some(rule)
        })
    };
    if has("yearly") {
        Tier::Yearly
    } else if has("monthly") {
        Tier::Monthly
    } else if has("weekly") {
        Tier::Weekly
    } else {
        Tier::Top
    }
}

/// The archive extensions recognised after the timestamp.
pub const ARCHIVE_EXTENSIONS: [&str; 4] = [".tar.gz.age", ".tar.zst.age", ".tar.gz", ".tar.zst"];

/// Parses one input line into a UTC timestamp.
///
/// Accepted: an archive name `NAME-YYYYMMDD-HHMMSS` optionally followed by `.tar.gz`,
/// `.tar.zst`, `.tar.gz.age` or `.tar.zst.age` (any non-empty `NAME`; a leading folder
/// path is ignored), the timestamp being UTC; or an RFC 3339 timestamp, converted to UTC.
/// `prefix` is the configured archive prefix, only used to word the error (`PREFIX`
/// when empty): names with other prefixes are accepted too.
pub fn parse_time_line(line: &str, prefix: &str) -> Result<DateTime<Utc>, String> {
    let text = line.trim();
    if let Some(t) = parse_archive_name(text) {
        return Ok(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let prefix = if prefix.is_empty() { "PREFIX" } else { prefix };
    Err(format!(
        "{text:?} is neither an archive name ({prefix}-YYYYMMDD-HHMMSS[.tar.gz]) nor an RFC 3339 timestamp"
    ))
}

fn parse_archive_name(text: &str) -> Option<DateTime<Utc>> {
    let name = text.rsplit('/').next().unwrap_or(text);
    let stem = ARCHIVE_EXTENSIONS
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(name);
    // "-YYYYMMDD-HHMMSS" is 16 bytes, and the name before it must not be empty.
    if stem.len() < 17 || !stem.is_char_boundary(stem.len() - 16) {
        return None;
    }
    let (head, stamp) = stem.split_at(stem.len() - 16);
    let b = stamp.as_bytes();
    let digits_ok = b[1..9].iter().chain(&b[10..16]).all(u8::is_ascii_digit);
    if b[0] != b'-' || b[9] != b'-' || !digits_ok || head.is_empty() {
        return None;
    }
    NaiveDateTime::parse_from_str(&stamp[1..], "%Y%m%d-%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn retention_span_parse() {
        let s: Span = "1y2m3d4h".parse().unwrap();
        assert_eq!((s.years, s.months, s.days, s.hours), (1, 2, 3, 4));
        assert_eq!(s.as_str(), "1y2m3d4h");
        let s: Span = " 4h1y ".parse().unwrap();
        assert_eq!((s.years, s.hours, s.as_str()), (1, 4, "4h1y"));
        for bad in [
            "",
            "7",
            "d",
            "7x",
            "1d2d",
            "-1d",
            "1.5d",
            "7 d",
            "99999999999d",
        ] {
            let err = bad.parse::<Span>().unwrap_err();
            assert!(err.contains("duration"), "{bad}: {err}");
        }
        assert!("0d".parse::<Span>().unwrap().is_zero());
    }

    #[test]
    fn retention_span_before_is_go_add_date() {
        let sp = |s: &str| s.parse::<Span>().unwrap();
        // Normalised like Go, not clamped.
        assert_eq!(
            sp("1m").before(t("2024-03-31T12:00:00Z")),
            Some(t("2024-03-02T12:00:00Z"))
        );
        assert_eq!(
            sp("1y").before(t("2024-02-29T00:00:00Z")),
            Some(t("2023-03-01T00:00:00Z"))
        );
        assert_eq!(
            sp("1y2m3d4h").before(t("2025-05-10T03:00:00Z")),
            Some(t("2024-03-06T23:00:00Z"))
        );
        assert_eq!(
            sp("13m40d").before(t("2025-01-15T00:00:00Z")),
            Some(t("2023-11-05T00:00:00Z"))
        );
        assert_eq!(sp("4000000000y").before(t("2025-01-15T00:00:00Z")), None);
    }

    #[test]
    fn retention_count_parse() {
        assert_eq!("forever".parse::<Count>(), Ok(Count::Forever));
        assert_eq!("7".parse::<Count>(), Ok(Count::N(7)));
        assert!("-1".parse::<Count>().is_err());
        assert!("x".parse::<Count>().is_err());
    }

    #[test]
    fn retention_policy_toml() {
        #[derive(Deserialize)]
        struct Cfg {
            retention: Policy,
        }
        let c: Cfg = toml::from_str(
            "[retention]\nlast = 3\nyearly = \"forever\"\nwithin = \"1y2m\"\ndaily = 0\n",
        )
        .unwrap();
        assert_eq!(c.retention.last, Some(Count::N(3)));
        assert_eq!(c.retention.yearly, Some(Count::Forever));
        assert_eq!(c.retention.daily, Some(Count::N(0)));
        assert_eq!(c.retention.within.as_ref().unwrap().as_str(), "1y2m");
        assert!(c.retention.validate().is_ok());
        assert_eq!(c.retention.to_string(), "3 last, all yearly, within 1y2m");

        for bad in [
            "[retention]\nkeep_daily = 3\n",
            "[retention]\ndaily = -1\n",
            "[retention]\ndaily = \"lots\"\n",
            "[retention]\nwithin = \"7 days\"\n",
        ] {
            assert!(toml::from_str::<Cfg>(bad).is_err(), "{bad}");
        }
        let empty: Cfg = toml::from_str("[retention]\ndaily = 0\nwithin = \"0d\"\n").unwrap();
        assert_eq!(empty.retention.validate().unwrap_err(), EMPTY_POLICY_ERROR);
        assert!(Policy::none().validate().is_err());
        assert!(Policy::seed_default().validate().is_ok());
        assert_eq!(Policy::default(), Policy::seed_default());
    }

    #[test]
    fn retention_parse_time_line() {
        let want = t("2026-02-01T17:05:21Z");
        for ok in [
            "pronto-app-backup-20260201-170521.tar.gz",
            "pronto-app-backup-20260201-170521",
            "  other-host-20260201-170521.tar.zst.age  ",
            "x-20260201-170521.tar.gz.age",
            "x-20260201-170521.tar.zst",
            "archive/yearly/pronto-app-backup-20260201-170521.tar.gz",
            "2026-02-01T17:05:21Z",
            "2026-02-01T18:05:21+01:00",
        ] {
            assert_eq!(parse_time_line(ok, "pronto"), Ok(want), "{ok}");
        }
        for bad in [
            "foo",
            "-20260201-170521",
            "20260201-170521",
            "x-20260230-170521",
            "x-20260201-250000",
            "x-20260201-170521.zip",
            "x-20260201-170521.tar.gz.manifest.json",
            "x_20260201_170521",
            "2026-02-01",
        ] {
            let err = parse_time_line(bad, "").unwrap_err();
            assert!(err.contains("PREFIX-YYYYMMDD-HHMMSS"), "{bad}: {err}");
        }
    }

    #[test]
    fn retention_tiers() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            strongest_tier(&r(&["daily#1", "oldest yearly"])),
            Tier::Yearly
        );
        assert_eq!(
            strongest_tier(&r(&["weekly#2", "monthly#3"])),
            Tier::Monthly
        );
        assert_eq!(strongest_tier(&r(&["oldest weekly"])), Tier::Weekly);
        assert_eq!(
            strongest_tier(&r(&["pinned", "last#1", "within 7d"])),
            Tier::Top
        );
        assert_eq!(strongest_tier(&[]), Tier::Top);
    }

    #[test]
    fn retention_oldest_and_duplicates() {
        let p = Policy {
            daily: Some(Count::N(5)),
            ..Policy::none()
        };
        let times = [
            t("2025-01-02T10:00:00Z"),
            t("2025-01-01T10:00:00Z"),
            t("2025-01-02T10:00:00Z"),
            t("2025-01-01T08:00:00Z"),
        ];
        let d = apply(&p, &times);
        assert_eq!(d[0].reasons, vec!["daily#1"]);
        assert!(
            !d[2].keep,
            "the later duplicate in input order counts as older"
        );
        assert_eq!(d[1].reasons, vec!["daily#2"]);
        assert_eq!(d[3].reasons, vec!["oldest daily"]);
    }

    #[test]
    fn retention_empty_policy_keeps_everything() {
        let d = apply(&Policy::none(), &[t("2025-01-02T10:00:00Z")]);
        assert!(d[0].keep);
        assert!(apply(&Policy::seed_default(), &[]).is_empty());
    }

    #[test]
    fn retention_count_display_and_type_errors() {
        // Shown as written in a config, and read back the same.
        for (c, text) in [(Count::N(7), "7"), (Count::Forever, "forever")] {
            assert_eq!(c.to_string(), text);
            assert_eq!(text.parse::<Count>(), Ok(c));
        }
        // A count of the wrong type says what is expected.
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Cfg {
            retention: Policy,
        }
        let err = toml::from_str::<Cfg>("[retention]\ndaily = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected a non-negative whole number or the string \"forever\""),
            "{err}"
        );
    }

    #[test]
    fn retention_parse_time_line_rejects_near_misses() {
        for bad in [
            // Not a dash before the date (the time part alone would parse).
            "x_20260201-170521",
            // A space chrono reads as a digit's padding (17:52:01): not our format.
            "x-20260201-17 521",
            // The 16 bytes before the end start inside a character: no panic, an error.
            "pronto€20260201-170521",
        ] {
            let err = parse_time_line(bad, "").unwrap_err();
            assert!(err.contains("PREFIX-YYYYMMDD-HHMMSS"), "{bad}: {err}");
        }
    }
}
