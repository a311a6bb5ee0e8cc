//! Argument parsing and dispatch. Each command's work lives in its own module.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::error::{exit_code, EXIT_OK, EXIT_USAGE};

#[derive(Parser, Debug)]
#[command(
    name = "pronto-offsite",
    version,
    about = "Back up a self-hosted platform and keep its backups safe off-site",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage or config error, 3 partial (some remotes failed), 4 verification failed."
)]
pub struct Cli {
    /// Config file (default: $PRONTO_OFFSITE_CONFIG, ./pronto-offsite.toml, /etc/pronto-offsite/config.toml)
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Only warnings and errors on stderr
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// More detail on stderr
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Archive the configured sources into the local backup folder; prints the new id
    Backup,
    /// Upload local archives that a remote lacks, verified end to end
    Push {
        /// Only this remote
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        /// Print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Local and remote archives side by side
    List {
        /// Only this remote
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Fetch an archive from a remote, verify it, and optionally extract it
    Pull {
        /// Archive id (20260201-170521), name, or `latest`
        id: String,
        /// Only this remote
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        /// Extract into this folder (must be empty or absent)
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
    },
    /// Apply a retention policy to archive names or timestamps read from stdin
    Policy(crate::policy_cmd::PolicyArgs),
}

/// Run the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    init_logging(cli.quiet, cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            exit_code(&e)
        }
    }
}

fn init_logging(quiet: bool, verbose: bool) {
    let level = if quiet {
        "warn"
    } else if verbose {
        "debug"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PRONTO_OFFSITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    let file = config::locate(path)?;
    config::load(&file)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(cli: Cli) -> Result<i32> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Backup => {
            let cfg = load_config(cli.config.as_deref())?;
            let started = std::time::Instant::now();
            let (m, path) = crate::backup::run(&cfg)?;
            tracing::info!(
                "wrote {} ({}, sha256 {}) in {:.1}s",
                path.display(),
                crate::fsutil::human_bytes(m.size),
                m.sha256,
                started.elapsed().as_secs_f64()
            );
            writeln!(out, "{}", m.id)?;
            Ok(EXIT_OK)
        }
        Command::Push { remote, dry_run } => {
            let cfg = load_config(cli.config.as_deref())?;
            runtime()?.block_on(crate::push::run(&cfg, remote.as_deref(), dry_run, &mut out))
        }
        Command::List { remote, json } => {
            let cfg = load_config(cli.config.as_deref())?;
            runtime()?.block_on(crate::list::run(&cfg, remote.as_deref(), json, &mut out))
        }
        Command::Pull { id, remote, to } => {
            let cfg = load_config(cli.config.as_deref())?;
            runtime()?.block_on(crate::pull::run(
                &cfg,
                &id,
                remote.as_deref(),
                to.as_deref(),
                &mut out,
            ))?;
            Ok(EXIT_OK)
        }
        Command::Policy(args) => {
            let policy = match args.explicit_policy() {
                Some(p) => p,
                None => load_config(cli.config.as_deref())?.retention,
            };
            let stdin = std::io::stdin();
            crate::policy_cmd::run(&policy, stdin.lock(), args.json, &mut out)?;
            Ok(EXIT_OK)
        }
    }
}
