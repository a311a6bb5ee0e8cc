//! Property tests for the retention policy, and agreement with an independent reference
//! implementation of restic's `forget` algorithm on random timelines and policies.

#[path = "common_retention_ref.rs"]
mod reference;

use chrono::{DateTime, Utc};
use pronto_offsite::retention::{self, Count, Decision, Policy, Span};
use proptest::prelude::*;
use reference::{ref_forget, RefPolicy};

/// A generated policy: a count per rule (last, hourly, daily, weekly, monthly, yearly) and
/// an optional within span (y, m, d, h).
#[derive(Debug, Clone)]
struct Gen {
    counts: [Option<Count>; 6],
    within: Option<[u32; 4]>,
}

impl Gen {
    fn span_text(w: &[u32; 4]) -> String {
        let mut s = String::new();
        for (n, unit) in w.iter().zip(["y", "m", "d", "h"]) {
            if *n != 0 {
                s += &format!("{n}{unit}");
            }
        }
        if s.is_empty() {
            s = "0d".into();
        }
        s
    }

    fn policy(&self) -> Policy {
        let c = self.counts;
        Policy {
            last: c[0],
            hourly: c[1],
            daily: c[2],
            weekly: c[3],
            monthly: c[4],
            yearly: c[5],
            within: self
                .within
                .map(|w| Gen::span_text(&w).parse::<Span>().unwrap()),
        }
    }

    fn reference(&self) -> RefPolicy {
        let mut counts = [0i64; 6];
        for (dst, c) in counts.iter_mut().zip(self.counts) {
            *dst = match c {
                None => 0,
                Some(Count::N(n)) => i64::from(n),
                Some(Count::Forever) => -1,
            };
        }
        RefPolicy {
            counts,
            within: self.within.map(|w| {
                (
                    (
                        i64::from(w[0]),
                        i64::from(w[1]),
                        i64::from(w[2]),
                        i64::from(w[3]),
                    ),
                    Gen::span_text(&w),
                )
            }),
        }
    }
}

fn count_strategy() -> impl Strategy<Value = Option<Count>> {
    prop_oneof![
        4 => Just(None),
        1 => Just(Some(Count::N(0))),
        4 => (1u32..6).prop_map(|n| Some(Count::N(n))),
        1 => (6u32..40).prop_map(|n| Some(Count::N(n))),
        1 => Just(Some(Count::Forever)),
    ]
}

fn within_strategy() -> impl Strategy<Value = Option<[u32; 4]>> {
    prop_oneof![
        3 => Just(None),
        2 => (0u32..3, 0u32..15, 0u32..45, 0u32..60).prop_map(|(y, m, d, h)| Some([y, m, d, h])),
    ]
}

fn policy_strategy() -> impl Strategy<Value = Gen> {
    (prop::array::uniform6(count_strategy()), within_strategy())
        .prop_map(|(counts, within)| Gen { counts, within })
}

/// Non-empty policies only.
fn valid_policy_strategy() -> impl Strategy<Value = Gen> {
    policy_strategy().prop_filter("empty policy", |g| !g.policy().is_empty())
}

/// Starting points near interesting dates (New Years with ISO weeks 53, leap days,
/// month ends), or anywhere in 1999..2031.
fn start_strategy() -> impl Strategy<Value = i64> {
    let at = |y, m, d| reference::unix(y, m, d, 0, 0, 0);
    prop_oneof![
        Just(at(2024, 12, 20)),
        Just(at(2026, 12, 20)),
        Just(at(2020, 12, 25)),
        Just(at(2024, 2, 20)),
        Just(at(2023, 12, 31)),
        Just(at(2025, 1, 28)),
        at(1999, 1, 1)..at(2031, 1, 1),
    ]
}

fn gap_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        1 => Just(0i64),
        2 => 1i64..3_600,
        3 => 1i64..86_400,
        3 => 1i64..(7 * 86_400),
        1 => 1i64..(70 * 86_400),
        1 => 1i64..(400 * 86_400),
    ]
}

/// Unix seconds in some order (shuffled): a walk forward from a start, either with gaps
/// from a mix of scales in seconds, or with gaps in whole hours or days (so that archives
/// land exactly on `within` cutoffs and month ends). Duplicates included.
fn timeline_strategy(max: usize) -> impl Strategy<Value = Vec<i64>> {
    let seconds = (
        start_strategy(),
        prop::collection::vec(gap_strategy(), 0..max),
    );
    let whole = (
        start_strategy(),
        prop_oneof![Just(3_600i64), Just(86_400i64)],
        prop::collection::vec(
            prop_oneof![1 => Just(0i64), 3 => 1i64..4, 2 => 1i64..40, 1 => 1i64..400],
            0..max,
        ),
    )
        .prop_map(|(start, unit, gaps)| (start, gaps.iter().map(|g| g * unit).collect()));
    prop_oneof![seconds, whole]
        .prop_map(|(start, gaps): (i64, Vec<i64>)| {
            let mut t = start;
            gaps.iter()
                .map(|g| {
                    t += g;
                    t
                })
                .collect::<Vec<i64>>()
        })
        .prop_shuffle()
}

fn to_times(secs: &[i64]) -> Vec<DateTime<Utc>> {
    secs.iter()
        .map(|s| DateTime::from_timestamp(*s, 0).unwrap())
        .collect()
}

/// (time, decision) pairs sorted: the result as a multiset, independent of input order.
fn as_multiset(times: &[DateTime<Utc>], d: &[Decision]) -> Vec<(DateTime<Utc>, bool, Vec<String>)> {
    let mut v: Vec<_> = times
        .iter()
        .zip(d)
        .map(|(t, d)| (*t, d.keep, d.reasons.clone()))
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    /// Agreement with the reference implementation (pins, within, oldest rule included).
    #[test]
    fn agrees_with_reference(
        gen in policy_strategy(),
        (secs, pins) in timeline_strategy(60).prop_flat_map(|s| {
            let n = s.len();
            (Just(s), prop::collection::vec(prop::bool::weighted(0.1), n))
        }),
    ) {
        let times = to_times(&secs);
        let ours = retention::apply_with_pins(&gen.policy(), &times, &pins);
        let theirs = ref_forget(&gen.reference(), &secs, &pins);
        let ours: Vec<(bool, Vec<String>)> = ours.into_iter().map(|d| (d.keep, d.reasons)).collect();
        prop_assert_eq!(ours, theirs, "policy {}", gen.policy());
    }

    /// The newest archive (the first of the newest ones in input order) is always kept.
    #[test]
    fn newest_is_kept(gen in valid_policy_strategy(), secs in timeline_strategy(60)) {
        prop_assume!(!secs.is_empty());
        let times = to_times(&secs);
        let d = retention::apply(&gen.policy(), &times);
        let newest = *times.iter().max().unwrap();
        let first_newest = times.iter().position(|t| *t == newest).unwrap();
        prop_assert!(d[first_newest].keep);
        prop_assert!(!d[first_newest].reasons.is_empty());
        prop_assert!(d.iter().all(|d| d.reasons.is_empty() != d.keep));
    }

    /// Raising any count (or widening within) never removes a keeper.
    #[test]
    fn raising_a_count_never_removes_a_keeper(
        gen in policy_strategy(),
        secs in timeline_strategy(60),
        rule in 0usize..7,
        by in prop_oneof![(1u32..5).prop_map(Some), Just(None)],
        unit in 0usize..4,
    ) {
        let mut raised = gen.clone();
        if rule < 6 {
            raised.counts[rule] = match (gen.counts[rule], by) {
                (_, None) | (Some(Count::Forever), _) => Some(Count::Forever),
                (None, Some(k)) => Some(Count::N(k)),
                (Some(Count::N(n)), Some(k)) => Some(Count::N(n + k)),
            };
        } else {
            let mut w = gen.within.unwrap_or([0; 4]);
            w[unit] += by.unwrap_or(1);
            raised.within = Some(w);
        }
        // An empty policy keeps everything; raising from it is not the point here.
        prop_assume!(!gen.policy().is_empty());
        let times = to_times(&secs);
        let before = retention::apply(&gen.policy(), &times);
        let after = retention::apply(&raised.policy(), &times);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            prop_assert!(!b.keep || a.keep, "archive {} ({}) lost: {:?} -> {:?}; {} -> {}",
                i, times[i], b.reasons, a.reasons, gen.policy(), raised.policy());
        }
    }

    /// Applying the policy to its own keep set keeps all of it.
    #[test]
    fn keep_set_is_stable(gen in valid_policy_strategy(), secs in timeline_strategy(60)) {
        let times = to_times(&secs);
        let p = gen.policy();
        let d = retention::apply(&p, &times);
        let keep: Vec<DateTime<Utc>> = times.iter().zip(&d).filter(|(_, d)| d.keep).map(|(t, _)| *t).collect();
        let again = retention::apply(&p, &keep);
        prop_assert!(again.iter().all(|d| d.keep), "{:?}", again);
    }

    /// The result does not depend on the input order.
    #[test]
    fn input_order_does_not_matter(
        gen in policy_strategy(),
        (secs, shuffled) in timeline_strategy(60).prop_flat_map(|s| (Just(s.clone()), Just(s).prop_shuffle())),
    ) {
        let p = gen.policy();
        let a = to_times(&secs);
        let b = to_times(&shuffled);
        prop_assert_eq!(
            as_multiset(&a, &retention::apply(&p, &a)),
            as_multiset(&b, &retention::apply(&p, &b))
        );
        // With distinct timestamps, each archive gets the very same decision.
        let mut sorted = secs.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() == secs.len() {
            let da = retention::apply(&p, &a);
            let db = retention::apply(&p, &b);
            for (t, d) in a.iter().zip(&da) {
                let j = b.iter().position(|x| x == t).unwrap();
                prop_assert_eq!(d, &db[j]);
            }
        }
    }

    /// Pins add a `pinned` keep and change nothing else.
    #[test]
    fn pins_only_add(
        gen in policy_strategy(),
        (secs, pins) in timeline_strategy(40).prop_flat_map(|s| {
            let n = s.len();
            (Just(s), prop::collection::vec(any::<bool>(), n))
        }),
    ) {
        let times = to_times(&secs);
        let p = gen.policy();
        let plain = retention::apply(&p, &times);
        let pinned = retention::apply_with_pins(&p, &times, &pins);
        for ((a, b), pin) in plain.iter().zip(&pinned).zip(&pins) {
            let mut want = a.clone();
            if *pin {
                want.keep = true;
                want.reasons.insert(0, "pinned".to_string());
            }
            prop_assert_eq!(&want, b);
        }
    }
}
