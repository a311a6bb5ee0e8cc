//! `pull <id|latest>`: a verified archive in the local folder (from its intact local copy,
//! or downloaded from the first remote that holds it), `--to DIR` extracted there;
//! `--json`: one JSON object. The work is [`crate::fetch`].

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::config::Config;
use crate::error::Exit;

/// `pull`'s flags (`pull --restore` is the `restore` command).
pub struct Options {
    pub id: String,
    pub remote: Option<String>,
    pub to: Option<PathBuf>,
    pub json: bool,
}

/// Run `pull`.
pub fn run(cfg: &Config, opts: &Options, out: &mut dyn Write) -> Result<Exit> {
    let mut sink = std::io::sink();
    let mut lines = crate::progress::Suspending(&mut *out);
    let text: &mut dyn Write = if opts.json { &mut sink } else { &mut lines };
    let pulled = crate::remotes::runtime()?.block_on(crate::fetch::run_report(
        cfg,
        &opts.id,
        opts.remote.as_deref(),
        opts.to.as_deref(),
        text,
    ))?;
    if opts.json {
        writeln!(out, "{}", serde_json::to_string(&pulled)?)?;
    }
    Ok(Exit::Ok)
}
