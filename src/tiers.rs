//! Tiers in the backup folder (`daily/`, `weekly/`, `monthly/`, `yearly/`): each local
//! archive the policy keeps is filed under the tier it is kept for, after a backup and
//! after a prune. Safety backups stay out of the tiers.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use chrono::Utc;

use crate::catalog::{self, LocalArchive};
use crate::config::Config;
use crate::pins;
use crate::plan::{self, PrunePlan, PruneRules};

/// The scheduled archives and, apart, the safety backups taken before restores.
pub fn split_safety(all: Vec<LocalArchive>) -> (Vec<LocalArchive>, Vec<LocalArchive>) {
    all.into_iter().partition(|a| !a.is_safety())
}

/// The local archive a plan entry names.
pub fn find<'a>(local: &'a [LocalArchive], e: &plan::PruneEntry) -> Result<&'a LocalArchive> {
    local
        .iter()
        .find(|a| a.name.file == e.held.file && Some(a.tier) == e.held.tier)
        .ok_or_else(|| anyhow!("{} vanished from the catalog", e.held.file))
}

/// File the keepers of `plan` under their tiers, and put back beside its archive any
/// manifest an interrupted move left in another folder (except for the `deleted`
/// files). Returns the new paths by id. Call under the folder lock.
pub fn file_keepers(
    cfg: &Config,
    local: &[LocalArchive],
    plan: &PrunePlan,
    deleted: &BTreeSet<&str>,
) -> Result<Vec<(String, PathBuf)>> {
    let mut moved = Vec::new();
    for (e, tier) in plan.moves() {
        let a = find(local, e)?;
        let to = catalog::move_to_tier(&cfg.local, a, tier)?;
        tracing::info!("local: filed {} under {}", a.name.file, tier.folder());
        moved.push((a.name.id.clone(), to));
    }
    for a in local {
        let done = moved.iter().any(|(id, _)| *id == a.name.id);
        if a.manifest_elsewhere.is_some() && !done && !deleted.contains(a.name.file.as_str()) {
            catalog::move_to_tier(&cfg.local, a, a.tier)?;
            tracing::info!(
                "local: moved the manifest of {} back beside it ({})",
                a.name.file,
                a.tier.folder()
            );
        }
    }
    Ok(moved)
}

/// After a backup (under its folder lock): file every local keeper under its tier, the
/// new archive included. Returns the new archive's path when it moved.
pub fn file_after_backup(cfg: &Config, id: &str) -> Result<Option<PathBuf>> {
    let (local, _safety) = split_safety(catalog::scan(&cfg.local)?);
    let pins = pins::read_local(&cfg.local)?;
    let rules = PruneRules {
        policy: &cfg.retention,
        pins: &pins,
        now: Utc::now(),
        max_delete_fraction: cfg.max_delete_fraction,
        force: true,
        require_on_remote: false,
    };
    let plan = plan::plan_prune(&rules, &plan::held_local(&local, &[], &BTreeSet::new()));
    let moved = file_keepers(cfg, &local, &plan, &BTreeSet::new())?;
    Ok(moved.into_iter().find(|(i, _)| i == id).map(|(_, p)| p))
}
