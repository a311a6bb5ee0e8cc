//! `prune`: apply retention to the local folder (`--local`), one remote (`--remote
//! NAME`) or every location; `--dry-run` prints the plan; `--force` lifts the deletion
//! cap. The work is [`crate::prune_locations`].

use std::io::Write;

use anyhow::Result;

use crate::config::Config;
use crate::error::Exit;
use crate::prune_locations::{PruneOptions, Scope};

/// Run `prune`.
pub fn run(
    cfg: &Config,
    dry_run: bool,
    local: bool,
    remote: Option<String>,
    force: bool,
    out: &mut dyn Write,
) -> Result<Exit> {
    let scope = match (local, remote) {
        (true, _) => Scope::Local,
        (false, Some(name)) => Scope::Remote(name),
        (false, None) => Scope::All,
    };
    let opts = PruneOptions {
        scope,
        dry_run,
        force,
    };
    let reports = crate::remotes::runtime()?
        .block_on(crate::prune_locations::run_reports(cfg, &opts, out))?;
    Ok(crate::prune_locations::exit(&reports))
}
