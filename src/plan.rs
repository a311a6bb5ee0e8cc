//! The sync plan, as pure functions: what a remote holds (from its listing), what
//! must be uploaded to it, and what a prune deletes at one location and why everything
//! else stays ([`plan_prune`]). `push --dry-run` and `prune --dry-run` print exactly
//! these plans.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use pronto_backends::ObjectMeta;

use crate::catalog::{self, ArchiveName, LocalArchive, Tier};
use crate::manifest::Manifest;
use crate::retention::{self, Policy};

/// One archive as a remote holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteArchive {
    pub name: ArchiveName,
    /// Size of the archive object, when present.
    pub size: Option<u64>,
    /// The SHA-256 the backend recorded for the archive object, when it keeps one.
    pub sha256: Option<[u8; 32]>,
    /// Whether its manifest object is present (the commit marker).
    pub has_manifest: bool,
}

impl RemoteArchive {
    /// Archive and manifest both there: a restore candidate.
    pub fn complete(&self) -> bool {
        self.size.is_some() && self.has_manifest
    }
}

/// What a remote's listing says, keyed by archive id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteState {
    pub archives: BTreeMap<String, RemoteArchive>,
    /// Objects that are not ours (other names) — never touched.
    pub foreign: usize,
}

/// Read a listing into a [`RemoteState`]. Only names of our prefix and format count.
pub fn remote_state(prefix: &str, objects: &[ObjectMeta]) -> RemoteState {
    let mut st = RemoteState::default();
    let pins_key = crate::catalog::pins_file_name(prefix);
    for o in objects {
        // Our own pins object and remote marker: neither an archive nor foreign.
        if o.key == pins_key || o.key == crate::catalog::MARKER {
            continue;
        }
        let (file, is_manifest) = match o.key.strip_suffix(".manifest.json") {
            Some(f) => (f, true),
            None => (o.key.as_str(), false),
        };
        let Some(name) = catalog::parse_name(prefix, file) else {
            st.foreign += 1;
            continue;
        };
        let e = st
            .archives
            .entry(name.id.clone())
            .or_insert_with(|| RemoteArchive {
                name: name.clone(),
                size: None,
                sha256: None,
                has_manifest: false,
            });
        if is_manifest {
            e.has_manifest = true;
        } else {
            e.size = Some(o.size);
            e.sha256 = o.sha256;
        }
    }
    st
}

/// Why an archive goes to a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadReason {
    Missing,
    /// The remote has the archive but no manifest: an interrupted upload.
    Incomplete,
    /// The remote's object has another size than ours.
    SizeDiffers {
        remote: u64,
    },
    /// The SHA-256 the remote records for its copy is not the manifest's: that copy is
    /// damaged or was changed since it was written (a copy with no recorded hash is not
    /// judged here: `verify --deep` reads it).
    HashDiffers,
}

impl std::fmt::Display for UploadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadReason::Missing => f.write_str("missing on the remote"),
            UploadReason::Incomplete => f.write_str("incomplete on the remote (no manifest)"),
            UploadReason::SizeDiffers { remote } => {
                write!(f, "remote copy has another size ({remote} bytes)")
            }
            UploadReason::HashDiffers => f.write_str(
                "the remote records another SHA-256 for its copy than the manifest's (damaged or changed there): replacing it",
            ),
        }
    }
}

/// One planned upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub archive: LocalArchive,
    pub manifest: Manifest,
    pub reason: UploadReason,
}

/// Which complete local archives a remote lacks, oldest first.
pub fn uploads(local: &[LocalArchive], remote: &RemoteState) -> Vec<Upload> {
    let mut out = Vec::new();
    for a in local {
        let Some(m) = &a.manifest else { continue };
        let reason = match remote.archives.get(&a.name.id) {
            None => Some(UploadReason::Missing),
            Some(r) => match r.size {
                None => Some(UploadReason::Missing),
                Some(s) if s != m.size => Some(UploadReason::SizeDiffers { remote: s }),
                Some(_) if !r.has_manifest => Some(UploadReason::Incomplete),
                Some(_) if r.sha256.is_some() && r.sha256 != m.sha256_bytes().ok() => {
                    Some(UploadReason::HashDiffers)
                }
                Some(_) => None,
            },
        };
        if let Some(reason) = reason {
            out.push(Upload {
                archive: a.clone(),
                manifest: m.clone(),
                reason,
            });
        }
    }
    out
}

/// Memory of remote pruning: split `uploads` into those the remote keeps and those its
/// own prune (same policy, pins, clock) would delete as soon as they arrived: the plan
/// is made over what the remote holds *plus* every planned upload, so an old archive
/// that a prune of this remote already removed is not sent again on every push only to
/// be deleted again. The deletion cap plays no part here (it guards against deleting
/// too much, not against uploading too little); `rules.force` is ignored.
pub fn uploads_kept_by_policy(
    uploads: Vec<Upload>,
    remote: &RemoteState,
    rules: &PruneRules<'_>,
) -> (Vec<Upload>, Vec<Upload>) {
    let after = remote.with_uploads(&uploads);
    let rules = PruneRules {
        force: true,
        require_on_remote: false,
        ..rules.clone()
    };
    let plan = plan_prune(&rules, &held_remote(&after));
    let dropped: BTreeSet<&str> = plan.deletions().map(|e| e.held.id.as_str()).collect();
    uploads
        .into_iter()
        .partition(|u| !dropped.contains(u.archive.name.id.as_str()))
}

impl RemoteState {
    /// Whether this remote holds a proven copy of a local archive: archive and manifest
    /// present, the same size, and the same SHA-256 as recorded by the backend (or proved
    /// by reading the copy back: [`record_sha256`](Self::record_sha256)). A copy whose
    /// backend records no hash (a file:// folder without xattrs, a copy edited in place)
    /// is not one until proved: the local prune may make it the only copy.
    pub fn holds_copy(&self, id: &str, m: &Manifest) -> bool {
        self.archives.get(id).is_some_and(|r| {
            r.complete()
                && r.size == Some(m.size)
                && r.sha256.is_some()
                && r.sha256 == m.sha256_bytes().ok()
        })
    }

    /// Whether this remote holds a complete copy of the right size whose backend records
    /// no hash: a copy only once read back and proved.
    pub fn holds_unproved_copy(&self, id: &str, m: &Manifest) -> bool {
        self.archives
            .get(id)
            .is_some_and(|r| r.complete() && r.size == Some(m.size) && r.sha256.is_none())
    }

    /// Record the SHA-256 of archive `id` as read back from the remote.
    pub fn record_sha256(&mut self, id: &str, sha256: [u8; 32]) {
        if let Some(r) = self.archives.get_mut(id) {
            r.sha256 = Some(sha256);
        }
    }

    /// The state after the archives with these ids were deleted.
    pub fn without<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> RemoteState {
        let mut st = self.clone();
        for id in ids {
            st.archives.remove(id);
        }
        st
    }

    /// The state after `uploads` succeeded: what `push --dry-run` plans the prune over.
    pub fn with_uploads(&self, uploads: &[Upload]) -> RemoteState {
        let mut st = self.clone();
        for up in uploads {
            st.archives.insert(
                up.archive.name.id.clone(),
                RemoteArchive {
                    name: up.archive.name.clone(),
                    size: Some(up.manifest.size),
                    sha256: up.manifest.sha256_bytes().ok(),
                    has_manifest: true,
                },
            );
        }
        st
    }
}

// ---- prune ----

pub use crate::catalog::FUTURE_TOLERANCE_SECS;

/// One archive a location holds, as prune sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: String,
    pub file: String,
    /// The time in its name (UTC).
    pub time: DateTime<Utc>,
    /// Archive and manifest both there.
    pub complete: bool,
    /// Local archives: the tier folder it is in (`None` on remotes).
    pub tier: Option<Tier>,
    /// Local archives: some remote holds an identical complete copy, or held one until
    /// a prune deleted it there by the policy.
    pub on_remote: bool,
}

/// What a local folder holds, for prune. `remotes` are the listings that could be read;
/// an archive counts as off-site when one of them holds an identical complete copy, or
/// when its id is in `pruned_offsite` (a remote held it and a prune of that remote
/// deleted it by the policy: it was off-site, and the policy removed it there).
pub fn held_local(
    local: &[LocalArchive],
    remotes: &[&RemoteState],
    pruned_offsite: &BTreeSet<String>,
) -> Vec<Held> {
    local
        .iter()
        .map(|a| Held {
            id: a.name.id.clone(),
            file: a.name.file.clone(),
            time: a.name.time,
            complete: a.manifest.is_some(),
            tier: Some(a.tier),
            on_remote: pruned_offsite.contains(&a.name.id)
                || a.manifest
                    .as_ref()
                    .is_some_and(|m| remotes.iter().any(|st| st.holds_copy(&a.name.id, m))),
        })
        .collect()
}

/// What a remote holds, for prune.
pub fn held_remote(state: &RemoteState) -> Vec<Held> {
    state
        .archives
        .values()
        .map(|r| Held {
            id: r.name.id.clone(),
            file: r.name.file.clone(),
            time: r.name.time,
            complete: r.complete(),
            tier: None,
            on_remote: false,
        })
        .collect()
}

/// The rules of one prune.
#[derive(Debug, Clone)]
pub struct PruneRules<'a> {
    pub policy: &'a Policy,
    /// Pinned ids: kept regardless of the policy.
    pub pins: &'a BTreeSet<String>,
    pub now: DateTime<Utc>,
    /// `[retention] max_delete_fraction`: refuse to delete more than this share of a
    /// location's archives in one run.
    pub max_delete_fraction: f64,
    /// `--force`: lifts the deletion cap and the "on no remote yet" rail.
    pub force: bool,
    /// Local prune with remotes configured: keep archives no remote holds.
    pub require_on_remote: bool,
}

/// Why the policy's verdict was overridden to keep an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rail {
    /// The newest archive of a location is never deleted.
    Newest,
    /// Named in the future (clock skew): kept, and not shown to the policy.
    Future,
    /// Local only: no remote holds a complete copy yet (`--force` deletes it).
    NotOnRemote,
}

/// Archives prune does not consider at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftover {
    /// Archive without manifest (or manifest without archive): an upload or backup in
    /// progress, or an interrupted one. Never deleted.
    Incomplete,
    /// Two files with one id at this location (another extension, or in two tier
    /// folders): which one is the archive is not ours to guess.
    Duplicate,
}

/// What happens to one archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The policy keeps it; its reasons say why.
    Keep,
    /// The policy forgets it and no rail keeps it: it goes.
    Delete,
    /// The policy forgets it (or never saw it), but a safety rail keeps it.
    Spared(Rail),
    /// Not a candidate: left alone.
    LeftAlone(Leftover),
}

impl Rail {
    pub fn reason(self) -> &'static str {
        match self {
            Rail::Newest => "newest archive here: never deleted",
            Rail::Future => "named in the future (clock skew?): kept, not counted by the policy",
            Rail::NotOnRemote => "on no remote yet: kept (--force deletes it)",
        }
    }
}

impl Leftover {
    pub fn reason(self) -> &'static str {
        match self {
            Leftover::Incomplete => {
                "incomplete (archive or manifest missing; maybe in progress): left alone"
            }
            Leftover::Duplicate => "another file here has the same id: left alone",
        }
    }
}

/// One line of a prune plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneEntry {
    pub held: Held,
    pub fate: Fate,
    /// Why it stays: the policy's reasons (`pinned`, `daily#1`), or the rail's.
    pub reasons: Vec<String>,
    /// Local keepers: the tier their strongest reason files them under, when they are
    /// somewhere else now.
    pub move_to: Option<Tier>,
}

/// A prune that would delete too much of a location.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusal {
    pub deletions: usize,
    pub archives: usize,
    pub max_fraction: f64,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refused: would delete {} of {} archives ({:.0}%), more than max_delete_fraction = {} allows; \
             check the plan with --dry-run, then run again with --force",
            self.deletions,
            self.archives,
            100.0 * self.deletions as f64 / self.archives.max(1) as f64,
            self.max_fraction
        )
    }
}

/// What a prune does at one location.
#[derive(Debug, Clone, PartialEq)]
pub struct PrunePlan {
    /// Every archive of ours at the location, oldest first.
    pub entries: Vec<PruneEntry>,
    /// Set when the run would delete more than the cap allows (and no `--force`): then
    /// nothing at all is changed at this location.
    pub refused: Option<Refusal>,
}

impl PrunePlan {
    /// The archives that go.
    pub fn deletions(&self) -> impl Iterator<Item = &PruneEntry> {
        self.entries.iter().filter(|e| e.fate == Fate::Delete)
    }

    /// Keepers to file under another tier.
    pub fn moves(&self) -> impl Iterator<Item = (&PruneEntry, Tier)> {
        self.entries
            .iter()
            .filter_map(|e| e.move_to.map(|t| (e, t)))
    }

    /// Archives named in the future.
    pub fn future(&self) -> impl Iterator<Item = &PruneEntry> {
        self.entries
            .iter()
            .filter(|e| e.fate == Fate::Spared(Rail::Future))
    }
}

/// Plans a prune of one location over what it actually holds (`held`).
///
/// 1. Only complete archives are candidates; incomplete ones and ids held twice are
///    left alone.
/// 2. Archives named more than [`FUTURE_TOLERANCE_SECS`] after `now` are kept and not
///    shown to the policy, so they never become the newest that `within` counts back
///    from or that `last` spends its count on.
/// 3. The policy ([`retention::apply_with_pins`]) decides for the rest, pins included.
/// 4. Rails: the newest candidate is never deleted; with `require_on_remote` (and no
///    `force`) an archive no remote holds is kept.
/// 5. Keepers with a tier get `move_to` when their strongest reason files them elsewhere.
/// 6. More deletions than `max_delete_fraction` of the location's complete archives
///    (and no `force`): the plan is refused.
pub fn plan_prune(rules: &PruneRules<'_>, held: &[Held]) -> PrunePlan {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for h in held {
        *ids.entry(h.id.as_str()).or_default() += 1;
    }
    let limit = rules.now + TimeDelta::seconds(FUTURE_TOLERANCE_SECS);
    let mut entries: Vec<PruneEntry> = held
        .iter()
        .map(|h| PruneEntry {
            held: h.clone(),
            fate: Fate::Keep,
            reasons: Vec::new(),
            move_to: None,
        })
        .collect();
    entries.sort_by(|a, b| {
        a.held
            .time
            .cmp(&b.held.time)
            .then_with(|| a.held.file.cmp(&b.held.file))
    });

    let mut candidates = Vec::new();
    for (i, e) in entries.iter_mut().enumerate() {
        let fate = if !e.held.complete {
            Fate::LeftAlone(Leftover::Incomplete)
        } else if ids[e.held.id.as_str()] > 1 {
            Fate::LeftAlone(Leftover::Duplicate)
        } else if e.held.time > limit {
            Fate::Spared(Rail::Future)
        } else {
            candidates.push(i);
            continue;
        };
        e.fate = fate;
        e.reasons.push(fate_reason(fate).to_string());
    }

    let times: Vec<DateTime<Utc>> = candidates.iter().map(|&i| entries[i].held.time).collect();
    let pinned: Vec<bool> = candidates
        .iter()
        .map(|&i| rules.pins.contains(&entries[i].held.id))
        .collect();
    let decisions = retention::apply_with_pins(rules.policy, &times, &pinned);
    for (&i, d) in candidates.iter().zip(decisions) {
        entries[i].fate = if d.keep { Fate::Keep } else { Fate::Delete };
        entries[i].reasons = d.reasons;
    }

    spare_newest(&mut entries, &candidates);
    if rules.require_on_remote && !rules.force {
        for &i in &candidates {
            let e = &mut entries[i];
            if e.fate == Fate::Delete && !e.held.on_remote {
                spare(e, Rail::NotOnRemote);
            }
        }
    }

    for e in &mut entries {
        if e.fate == Fate::Keep {
            if let Some(now_in) = e.held.tier {
                let want = retention::strongest_tier(&e.reasons);
                if want != now_in {
                    e.move_to = Some(want);
                }
            }
        }
    }

    let archives = entries
        .iter()
        .filter(|e| e.held.complete && e.fate != Fate::LeftAlone(Leftover::Duplicate))
        .count();
    let deletions = entries.iter().filter(|e| e.fate == Fate::Delete).count();
    let refused = (!rules.force
        && deletions > 0
        && deletions as f64 > rules.max_delete_fraction * archives as f64)
        .then_some(Refusal {
            deletions,
            archives,
            max_fraction: rules.max_delete_fraction,
        });
    PrunePlan { entries, refused }
}

fn fate_reason(f: Fate) -> &'static str {
    match f {
        Fate::Spared(r) => r.reason(),
        Fate::LeftAlone(l) => l.reason(),
        Fate::Keep | Fate::Delete => "",
    }
}

fn spare(e: &mut PruneEntry, rail: Rail) {
    e.fate = Fate::Spared(rail);
    e.reasons.push(rail.reason().to_string());
}

/// The newest-archive rail: whatever the policy said, the newest candidate stays.
/// (`entries` are oldest first, so among equal times the last one is the newest, as
/// the policy's stable sort would count it.)
fn spare_newest(entries: &mut [PruneEntry], candidates: &[usize]) {
    let newest = candidates
        .iter()
        .copied()
        .max_by(|&a, &b| entries[a].held.time.cmp(&entries[b].held.time));
    if let Some(i) = newest {
        if entries[i].fate == Fate::Delete {
            spare(&mut entries[i], Rail::Newest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            modified: None,
            key: key.into(),
            size,
            sha256: None,
        }
    }

    #[test]
    fn listing_groups_archives_and_manifests_and_ignores_foreign() {
        let st = remote_state(
            "p",
            &[
                obj("p-20260101-000000.tar.gz", 10),
                obj("p-20260101-000000.tar.gz.manifest.json", 1),
                obj("p-20260102-000000.tar.gz", 7),
                obj("q-20260102-000000.tar.gz", 7),
                obj("README", 7),
            ],
        );
        assert_eq!(st.foreign, 2);
        assert!(st.archives["20260101-000000"].complete());
        assert!(!st.archives["20260102-000000"].complete());
    }

    // ---- prune planning ----

    use crate::retention::Count;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn held(ts: &str) -> Held {
        let time = at(ts);
        let id = catalog::id_for(time);
        Held {
            file: format!("p-{id}.tar.gz"),
            id,
            time,
            complete: true,
            tier: None,
            on_remote: true,
        }
    }

    fn last(n: u32) -> Policy {
        Policy {
            last: Some(Count::N(n)),
            ..Policy::none()
        }
    }

    fn rules<'a>(policy: &'a Policy, pins: &'a BTreeSet<String>) -> PruneRules<'a> {
        PruneRules {
            policy,
            pins,
            now: at("2026-03-01T12:00:00Z"),
            max_delete_fraction: 1.0,
            force: false,
            require_on_remote: false,
        }
    }

    fn fates(plan: &PrunePlan) -> Vec<(String, Fate)> {
        plan.entries
            .iter()
            .map(|e| (e.held.id.clone(), e.fate))
            .collect()
    }

    const DAYS: [&str; 4] = [
        "2026-02-25T02:00:00Z",
        "2026-02-26T02:00:00Z",
        "2026-02-27T02:00:00Z",
        "2026-02-28T02:00:00Z",
    ];

    #[test]
    fn prune_plan_applies_the_policy_with_reasons_oldest_first() {
        let pins = BTreeSet::new();
        let p = last(2);
        let input: Vec<Held> = DAYS.iter().rev().map(|d| held(d)).collect();
        let plan = plan_prune(&rules(&p, &pins), &input);
        assert_eq!(
            fates(&plan),
            vec![
                ("20260225-020000".into(), Fate::Delete),
                ("20260226-020000".into(), Fate::Delete),
                ("20260227-020000".into(), Fate::Keep),
                ("20260228-020000".into(), Fate::Keep),
            ]
        );
        assert_eq!(plan.entries[3].reasons, vec!["last#1"]);
        assert_eq!(plan.entries[2].reasons, vec!["last#2"]);
        assert_eq!(plan.deletions().count(), 2);
        assert!(plan.refused.is_none());
    }

    #[test]
    fn prune_rail_newest_is_spared_whatever_the_policy_said() {
        let mut entries: Vec<PruneEntry> = DAYS
            .iter()
            .map(|d| PruneEntry {
                held: held(d),
                fate: Fate::Delete,
                reasons: Vec::new(),
                move_to: None,
            })
            .collect();
        spare_newest(&mut entries, &[0, 1, 2, 3]);
        assert_eq!(entries[3].fate, Fate::Spared(Rail::Newest));
        assert_eq!(entries[3].reasons, vec![Rail::Newest.reason()]);
        assert!(entries[..3].iter().all(|e| e.fate == Fate::Delete));
        // Only candidates count: the newest candidate, not a newer non-candidate.
        let mut entries2 = entries.clone();
        entries2[3].fate = Fate::LeftAlone(Leftover::Incomplete);
        entries2[2].fate = Fate::Delete;
        spare_newest(&mut entries2, &[0, 1, 2]);
        assert_eq!(entries2[2].fate, Fate::Spared(Rail::Newest));
    }

    #[test]
    fn prune_rail_future_archives_are_kept_and_never_the_newest() {
        let pins = BTreeSet::new();
        let mut input: Vec<Held> = DAYS.iter().map(|d| held(d)).collect();
        input.push(held("2099-01-01T00:00:00Z"));
        // last = 1: were the future archive shown to the policy, it would take last#1
        // and the real newest would go.
        let p = last(1);
        let plan = plan_prune(&rules(&p, &pins), &input);
        let f = fates(&plan);
        assert_eq!(f[4], ("20990101-000000".into(), Fate::Spared(Rail::Future)));
        assert_eq!(f[3], ("20260228-020000".into(), Fate::Keep));
        assert_eq!(plan.entries[3].reasons, vec!["last#1"]);
        assert_eq!(plan.future().count(), 1);
        // within counts back from the newest non-future archive, not from 2099.
        let p = Policy {
            within: Some("2d".parse().unwrap()),
            ..Policy::none()
        };
        let plan = plan_prune(&rules(&p, &pins), &input);
        let kept: Vec<&str> = plan
            .entries
            .iter()
            .filter(|e| e.fate == Fate::Keep)
            .map(|e| e.held.id.as_str())
            .collect();
        assert_eq!(kept, vec!["20260227-020000", "20260228-020000"]);
        // A few minutes ahead is tolerated (ordinary clock drift).
        let mut near = input[..4].to_vec();
        near.push(held("2026-03-01T12:04:00Z"));
        let plan = plan_prune(&rules(&last(1), &pins), &near);
        assert_eq!(plan.future().count(), 0);
        assert_eq!(plan.entries[4].fate, Fate::Keep);
    }

    #[test]
    fn prune_rail_local_archives_on_no_remote_are_kept_unless_forced() {
        let pins = BTreeSet::new();
        let p = last(1);
        let mut input: Vec<Held> = DAYS.iter().map(|d| held(d)).collect();
        input[0].on_remote = false;
        let mut r = rules(&p, &pins);
        r.require_on_remote = true;
        let plan = plan_prune(&r, &input);
        assert_eq!(plan.entries[0].fate, Fate::Spared(Rail::NotOnRemote));
        assert_eq!(plan.entries[1].fate, Fate::Delete);
        r.force = true;
        assert_eq!(plan_prune(&r, &input).entries[0].fate, Fate::Delete);
        r.force = false;
        r.require_on_remote = false;
        assert_eq!(plan_prune(&r, &input).entries[0].fate, Fate::Delete);
    }

    #[test]
    fn prune_rail_max_delete_fraction_refuses_unless_forced() {
        let pins = BTreeSet::new();
        let p = last(1);
        let input: Vec<Held> = DAYS.iter().map(|d| held(d)).collect();
        let mut r = rules(&p, &pins);
        r.max_delete_fraction = 0.5;
        let plan = plan_prune(&r, &input);
        let refusal = plan.refused.expect("3 of 4 is more than half");
        assert_eq!((refusal.deletions, refusal.archives), (3, 4));
        assert!(refusal.to_string().contains("--force"), "{refusal}");
        // Exactly at the cap is allowed.
        r.max_delete_fraction = 0.75;
        assert!(plan_prune(&r, &input).refused.is_none());
        r.max_delete_fraction = 0.5;
        r.force = true;
        assert!(plan_prune(&r, &input).refused.is_none());
        // Nothing to delete is never refused, even with a cap of 0.
        r.force = false;
        r.max_delete_fraction = 0.0;
        assert!(plan_prune(&r, &input[3..]).refused.is_none());
    }

    /// The archives of `DAYS`, the first one incomplete, and a second file for the second
    /// day's id.
    fn days_with_an_incomplete_and_a_duplicate() -> Vec<Held> {
        let mut input: Vec<Held> = DAYS.iter().map(|d| held(d)).collect();
        input[0].complete = false;
        let mut dup = held(DAYS[1]);
        dup.file = "p-20260226-020000.tar.zst".into();
        input.push(dup);
        input
    }

    #[test]
    fn prune_leaves_incomplete_and_duplicate_ids_alone() {
        let pins = BTreeSet::new();
        let p = last(1);
        let input = days_with_an_incomplete_and_a_duplicate();
        let plan = plan_prune(&rules(&p, &pins), &input);
        let f = fates(&plan);
        assert_eq!(f[0].1, Fate::LeftAlone(Leftover::Incomplete));
        assert_eq!(f[1].1, Fate::LeftAlone(Leftover::Duplicate));
        assert_eq!(f[2].1, Fate::LeftAlone(Leftover::Duplicate));
        assert_eq!(f[3].1, Fate::Delete);
        assert_eq!(f[4].1, Fate::Keep);
        // An incomplete newest archive is not a candidate: the newest complete one is kept.
        let mut input: Vec<Held> = DAYS.iter().map(|d| held(d)).collect();
        input[3].complete = false;
        let plan = plan_prune(&rules(&p, &pins), &input);
        assert_eq!(plan.entries[2].fate, Fate::Keep);
        assert_eq!(plan.entries[3].fate, Fate::LeftAlone(Leftover::Incomplete));
    }

    #[test]
    fn prune_pins_keep_an_archive_the_policy_forgets() {
        let pins: BTreeSet<String> = ["20260225-020000".to_string()].into();
        let p = last(1);
        let input: Vec<Held> = DAYS.iter().map(|d| held(d)).collect();
        let plan = plan_prune(&rules(&p, &pins), &input);
        assert_eq!(plan.entries[0].fate, Fate::Keep);
        assert_eq!(plan.entries[0].reasons, vec!["pinned"]);
        assert_eq!(plan.deletions().count(), 2);
    }

    #[test]
    fn prune_files_keepers_by_their_strongest_reason() {
        let pins = BTreeSet::new();
        let p = Policy::seed_default();
        let mut input: Vec<Held> = [
            "2024-06-01T02:00:00Z",
            "2025-12-15T02:00:00Z",
            "2026-01-31T02:00:00Z",
            "2026-02-22T02:00:00Z",
            "2026-02-27T02:00:00Z",
            "2026-02-28T02:00:00Z",
        ]
        .iter()
        .map(|d| held(d))
        .collect();
        for h in &mut input {
            h.tier = Some(Tier::Top);
        }
        input[1].tier = Some(Tier::Yearly);
        let plan = plan_prune(&rules(&p, &pins), &input);
        let moves: Vec<(&str, Tier)> = plan.moves().map(|(e, t)| (e.held.id.as_str(), t)).collect();
        assert_eq!(
            moves,
            vec![
                ("20240601-020000", Tier::Yearly),
                // 2025-12-15 is already in archive/yearly: no move.
                ("20260131-020000", Tier::Monthly),
                ("20260222-020000", Tier::Weekly),
                ("20260228-020000", Tier::Yearly),
            ]
        );
        // 2026-02-27 is a daily keeper and stays in the top folder.
        assert_eq!(plan.entries[4].fate, Fate::Keep);
        assert_eq!(plan.entries[4].move_to, None);
    }

    #[test]
    fn remote_copies_count_only_when_complete_and_identical() {
        let mut a = obj("p-20260101-000000.tar.gz", 10);
        a.sha256 = Some([7; 32]);
        let st = remote_state(
            "p",
            &[
                a,
                obj("p-20260101-000000.tar.gz.manifest.json", 1),
                obj("p-20260102-000000.tar.gz", 10),
                obj("p.pins.json", 50),
            ],
        );
        assert_eq!(st.foreign, 0, "the pins object is ours, not foreign");
        let m = manifest;
        assert!(st.holds_copy("20260101-000000", &m("20260101-000000", 10, [7; 32])));
        assert!(!st.holds_copy("20260101-000000", &m("20260101-000000", 11, [7; 32])));
        assert!(!st.holds_copy("20260101-000000", &m("20260101-000000", 10, [8; 32])));
        assert!(!st.holds_copy("20260102-000000", &m("20260102-000000", 10, [7; 32])));
        assert!(!st
            .without(["20260101-000000"])
            .holds_copy("20260101-000000", &m("20260101-000000", 10, [7; 32])));
    }

    // ---- added for the mutation check (issue 21) ----

    fn manifest(id: &str, size: u64, sha: [u8; 32]) -> Manifest {
        let json = format!(
            r#"{{"format":1,"id":"{id}","file":"p-{id}.tar.gz","created":"2026-01-01T00:00:00Z",
            "size":{size},"sha256":"{}","compression":"gzip","encryption":"none","host":"h",
            "tool_version":"0","sources":[]}}"#,
            hex::encode(sha)
        );
        Manifest::from_json(json.as_bytes(), "test").unwrap()
    }

    /// A local archive of 10 bytes with its manifest.
    fn complete(id: &str, sha: [u8; 32], tier: Tier) -> LocalArchive {
        local(id, Some(manifest(id, 10, sha)), tier)
    }

    fn local(id: &str, m: Option<Manifest>, tier: Tier) -> LocalArchive {
        let file = format!("p-{id}.tar.gz");
        LocalArchive {
            name: catalog::parse_name("p", &file).unwrap(),
            path: std::path::PathBuf::from("/backups").join(&file),
            tier,
            manifest: m,
            manifest_elsewhere: None,
            problem: None,
        }
    }

    #[test]
    fn uploads_are_what_the_remote_lacks_with_the_reason_shown() {
        let sha = [3; 32];
        let mut sized = obj("p-20260103-000000.tar.gz", 7);
        sized.sha256 = Some(sha);
        let st = remote_state(
            "p",
            &[
                // 20260101: not there at all. 20260102: archive without manifest.
                obj("p-20260102-000000.tar.gz", 10),
                // 20260103: another size, manifest present.
                sized,
                obj("p-20260103-000000.tar.gz.manifest.json", 1),
                // 20260104: complete and the same size: nothing to send.
                obj("p-20260104-000000.tar.gz", 10),
                obj("p-20260104-000000.tar.gz.manifest.json", 1),
                // 20260105: a manifest without its archive.
                obj("p-20260105-000000.tar.gz.manifest.json", 1),
                // 20260107: complete, but the remote records other bytes for it.
                recorded("p-20260107-000000.tar.gz", 10, [4; 32]),
                obj("p-20260107-000000.tar.gz.manifest.json", 1),
                // 20260108: complete with the manifest's hash recorded: nothing to send.
                recorded("p-20260108-000000.tar.gz", 10, sha),
                obj("p-20260108-000000.tar.gz.manifest.json", 1),
            ],
        );
        let ids = [
            "20260101-000000",
            "20260102-000000",
            "20260103-000000",
            "20260104-000000",
            "20260105-000000",
            "20260107-000000",
            "20260108-000000",
        ];
        let mut all: Vec<LocalArchive> = ids
            .iter()
            .map(|id| local(id, Some(manifest(id, 10, sha)), Tier::Top))
            .collect();
        // A local archive without a manifest is never sent.
        all.push(local("20260106-000000", None, Tier::Top));
        let plan: Vec<(String, String)> = uploads(&all, &st)
            .iter()
            .map(|u| (u.archive.name.id.clone(), u.reason.to_string()))
            .collect();
        assert_eq!(
            plan,
            vec![
                ("20260101-000000".into(), "missing on the remote".into()),
                (
                    "20260102-000000".into(),
                    "incomplete on the remote (no manifest)".into()
                ),
                (
                    "20260103-000000".into(),
                    "remote copy has another size (7 bytes)".into()
                ),
                ("20260105-000000".into(), "missing on the remote".into()),
                (
                    "20260107-000000".into(),
                    "the remote records another SHA-256 for its copy than the manifest's (damaged or changed there): replacing it".into()
                ),
            ]
        );
    }

    fn recorded(key: &str, size: u64, sha: [u8; 32]) -> ObjectMeta {
        let mut o = obj(key, size);
        o.sha256 = Some(sha);
        o
    }

    #[test]
    fn uploads_the_remote_prune_would_delete_at_once_are_not_sent() {
        let sha = [5; 32];
        let st = remote_state(
            "p",
            &[
                obj("p-20260228-020000.tar.gz", 10),
                obj("p-20260228-020000.tar.gz.manifest.json", 1),
            ],
        );
        let all = vec![
            complete("20260225-020000", sha, Tier::Top),
            complete("20260301-020000", sha, Tier::Top),
        ];
        let ups = uploads(&all, &st);
        assert_eq!(ups.len(), 2);
        let pins = BTreeSet::new();
        let p = last(1);
        // The cap and the on-no-remote rail play no part in this plan.
        let mut r = rules(&p, &pins);
        r.max_delete_fraction = 0.0;
        r.require_on_remote = true;
        let (keep, dropped) = uploads_kept_by_policy(ups, &st, &r);
        let ids =
            |v: &[Upload]| -> Vec<String> { v.iter().map(|u| u.archive.name.id.clone()).collect() };
        // last = 1 over the remote plus both uploads: the newer upload is the one kept;
        // the older one would be pruned there as soon as it arrived.
        assert_eq!(ids(&keep), vec!["20260301-020000"]);
        assert_eq!(ids(&dropped), vec!["20260225-020000"]);
    }

    #[test]
    fn a_remote_state_without_some_archives_keeps_the_others() {
        let sha = [7; 32];
        let mut a = obj("p-20260101-000000.tar.gz", 10);
        a.sha256 = Some(sha);
        let mut b = obj("p-20260102-000000.tar.gz", 10);
        b.sha256 = Some(sha);
        let st = remote_state(
            "p",
            &[
                a,
                obj("p-20260101-000000.tar.gz.manifest.json", 1),
                b,
                obj("p-20260102-000000.tar.gz.manifest.json", 1),
            ],
        );
        let after = st.without(["20260101-000000"]);
        assert_eq!(
            after.archives.keys().collect::<Vec<_>>(),
            vec!["20260102-000000"]
        );
        assert!(after.holds_copy("20260102-000000", &manifest("20260102-000000", 10, sha)));
        assert!(!after.holds_copy("20260101-000000", &manifest("20260101-000000", 10, sha)));
    }

    #[test]
    fn local_archives_count_as_offsite_when_a_remote_holds_them_or_pruned_them() {
        let sha = [9; 32];
        let mut a = obj("p-20260101-000000.tar.gz", 10);
        a.sha256 = Some(sha);
        let st = remote_state("p", &[a, obj("p-20260101-000000.tar.gz.manifest.json", 1)]);
        let all = vec![
            // Held by the remote, identical.
            complete("20260101-000000", sha, Tier::Yearly),
            // Pruned there by the policy.
            complete("20260102-000000", sha, Tier::Top),
            // On no remote.
            complete("20260103-000000", sha, Tier::Top),
            // Without a manifest: incomplete, and never off-site.
            local("20260104-000000", None, Tier::Weekly),
        ];
        let pruned: BTreeSet<String> = ["20260102-000000".to_string()].into();
        let h = held_local(&all, &[&st], &pruned);
        let got: Vec<(&str, &str, bool, Option<Tier>, bool)> = h
            .iter()
            .map(|h| {
                (
                    h.id.as_str(),
                    h.file.as_str(),
                    h.complete,
                    h.tier,
                    h.on_remote,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "20260101-000000",
                    "p-20260101-000000.tar.gz",
                    true,
                    Some(Tier::Yearly),
                    true
                ),
                (
                    "20260102-000000",
                    "p-20260102-000000.tar.gz",
                    true,
                    Some(Tier::Top),
                    true
                ),
                (
                    "20260103-000000",
                    "p-20260103-000000.tar.gz",
                    true,
                    Some(Tier::Top),
                    false
                ),
                (
                    "20260104-000000",
                    "p-20260104-000000.tar.gz",
                    false,
                    Some(Tier::Weekly),
                    false
                ),
            ]
        );
        assert_eq!(h[0].time, at("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn prune_plan_says_why_an_archive_is_left_or_spared() {
        // The texts `prune --dry-run` prints beside each archive.
        assert!(Rail::Newest.reason().contains("newest"));
        assert!(Rail::Future.reason().contains("future"));
        assert!(Rail::NotOnRemote.reason().contains("--force"));
        assert!(Leftover::Incomplete.reason().starts_with("incomplete"));
        assert!(Leftover::Duplicate.reason().contains("same id"));
        let pins = BTreeSet::new();
        let p = last(1);
        let mut input = days_with_an_incomplete_and_a_duplicate();
        input.push(held("2099-01-01T00:00:00Z"));
        let plan = plan_prune(&rules(&p, &pins), &input);
        let reasons = |i: usize| plan.entries[i].reasons.clone();
        assert_eq!(reasons(0), vec![Leftover::Incomplete.reason()]);
        assert_eq!(reasons(1), vec![Leftover::Duplicate.reason()]);
        assert_eq!(reasons(2), vec![Leftover::Duplicate.reason()]);
        assert_eq!(reasons(4), vec!["last#1"]);
        assert_eq!(reasons(5), vec![Rail::Future.reason()]);
    }

    #[test]
    fn prune_future_tolerance_is_inclusive() {
        let pins = BTreeSet::new();
        let now = at("2026-03-01T12:00:00Z");
        let mut input: Vec<Held> = DAYS.iter().map(|d| held(d)).collect();
        // Exactly at the tolerance: still a candidate (and, here, the newest).
        let edge = now + TimeDelta::seconds(FUTURE_TOLERANCE_SECS);
        input.push(held(&edge.to_rfc3339()));
        let plan = plan_prune(&rules(&last(1), &pins), &input);
        assert_eq!(plan.future().count(), 0);
        assert_eq!(plan.entries[4].fate, Fate::Keep);
        // One second later: named in the future.
        input[4] = held(&(edge + TimeDelta::seconds(1)).to_rfc3339());
        let plan = plan_prune(&rules(&last(1), &pins), &input);
        assert_eq!(plan.entries[4].fate, Fate::Spared(Rail::Future));
    }

    #[test]
    fn prune_cap_counts_only_complete_archives_and_nothing_to_delete_is_never_refused() {
        let pins = BTreeSet::new();
        let p = last(1);
        let mut input: Vec<Held> = DAYS.iter().map(|d| held(d)).collect();
        for t in ["2026-02-20T02:00:00Z", "2026-02-21T02:00:00Z"] {
            let mut h = held(t);
            h.complete = false;
            input.push(h);
        }
        let mut r = rules(&p, &pins);
        r.max_delete_fraction = 0.5;
        let refusal = plan_prune(&r, &input)
            .refused
            .expect("3 of 4 complete ones");
        assert_eq!((refusal.deletions, refusal.archives), (3, 4));
        // No deletion is never refused, whatever the cap says.
        r.max_delete_fraction = -1.0;
        assert!(plan_prune(&r, &input[3..4]).refused.is_none());
    }
}
