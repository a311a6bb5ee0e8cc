//! Argument parsing and dispatch. Each command's work lives in its own module.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::error::Exit;
use crate::remotes::runtime;

#[derive(Parser, Debug)]
#[command(
    name = "pronto-offsite",
    version,
    about = "Back up a self-hosted platform and keep its backups safe off-site",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage or config error, 3 partial (some remotes failed), 4 verification failed, 5 stale (status), 6 busy (hook: another run held the lock)."
)]
pub struct Cli {
    /// Config file (default: $PRONTO_OFFSITE_CONFIG, ./pronto-offsite.toml, /etc/pronto-offsite/config.toml)
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Only warnings and errors on stderr; hook, push and prune print nothing on success and a short summary on failure
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// More detail on stderr
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
    /// Log line format on stderr and in the log file
    #[arg(long, global = true, value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Archive the configured sources into the local backup folder; prints the new id
    #[command(
        after_help = "Examples (a progress bar on a terminal; the new id on stdout):\n  pronto-offsite backup\n  \
pronto-offsite backup --push    # upload to every remote while archiving, then push and prune as `push` does"
    )]
    Backup {
        /// Upload the new archive to every remote while it is being written (manifests
        /// only once it is complete and verified), then push as `push` does; the push's
        /// lines go to stderr. Exit 3 when the archive was made but a remote failed
        #[arg(long)]
        push: bool,
        /// Leave out paths matching this gitignore-style pattern, in every folder source
        /// (repeatable; added to each source's `exclude`)
        #[arg(long, value_name = "PATTERN")]
        exclude: Vec<String>,
        /// List what would be archived (each file with its size, a total per source) and write nothing
        #[arg(long, conflicts_with = "push")]
        dry_run: bool,
        /// Write a one-off archive (with its manifest) into DIR, outside the backup folder:
        /// never pruned, pushed or listed
        #[arg(long, value_name = "DIR", conflicts_with_all = ["push", "dry_run"])]
        output: Option<PathBuf>,
    },
    /// Take in archives made outside pronto-offsite (same names, no manifest): read each
    /// whole, refuse damaged or hostile ones, write a manifest marked adopted
    Adopt {
        /// Archives to adopt (default: every manifest-less archive in the backup folder and its tiers)
        paths: Vec<PathBuf>,
    },
    /// Upload local archives that a remote lacks, verified end to end; then prune each
    /// remote whose uploads all succeeded (unless its `prune = false`, or --no-prune)
    #[command(
        after_help = "Examples:\n  pronto-offsite push                          # every remote, a progress bar per upload on a terminal\n  \
pronto-offsite push --remote b2 --dry-run    # what would be uploaded and pruned\n  \
pronto-offsite push --bwlimit 10MiB --json"
    )]
    Push {
        /// Only this remote
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        /// Print the plan (uploads, then each remote's prune) and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Upload only: prune no remote afterwards
        #[arg(long)]
        no_prune: bool,
        /// Print what happened per remote as JSON (and no progress lines)
        #[arg(long)]
        json: bool,
        /// Afterwards, abort journaled uploads that are no longer needed (their archive
        /// left the local folder, or the remote holds it complete)
        #[arg(long)]
        cleanup: bool,
        /// Limit each remote's transfers: a rate (10MiB, 512KiB, off) or a timetable
        /// ("08:00-18:00 2MiB, 18:00-08:00 off"); replaces the remotes' `bwlimit`
        #[arg(long, value_name = "RATE", value_parser = crate::bwlimit::Schedule::parse)]
        bwlimit: Option<crate::bwlimit::Schedule>,
        /// Start a remote afresh whose marker is gone (a remote emptied on purpose):
        /// without it, push refuses a file:// or sftp remote this host initialized
        /// before and that has no marker now (not mounted?)
        #[arg(long)]
        init_remote: bool,
    },
    /// Apply the retention policy to the local folder and every remote, each over what it
    /// holds; file local keepers under archive/{yearly,monthly,weekly}
    #[command(
        after_help = "Safety rails: the newest archive of a location is never deleted; a location whose listing failed is skipped; a local archive that no remote holds complete is kept (unless --force, or no remotes are configured); a run that would delete more than [retention] max_delete_fraction (default 0.5) of a location's archives is refused (unless --force); archives named in the future are kept; pinned archives are kept; only files named PREFIX-YYYYMMDD-HHMMSS.tar.gz (and their manifests) are ever touched.\n\n\
Exit codes: 0 ok, 1 every location failed, 3 some locations failed or were refused.\n\n\
Example (the plan first, then for real):\n  pronto-offsite prune --dry-run && pronto-offsite prune"
    )]
    Prune {
        /// Print the plan per location (what goes, and why everything else stays) and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Only the local folder (remotes are still listed: their copies count)
        #[arg(long, conflicts_with = "remote")]
        local: bool,
        /// Only this remote
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        /// Lift the deletion cap (max_delete_fraction) and delete local archives no remote holds
        #[arg(long)]
        force: bool,
    },
    /// Keep an archive regardless of the policy, on every location
    #[command(after_help = "Example:\n  pronto-offsite pin 20260201-170521")]
    Pin {
        /// Archive id (20260201-170521), name, or `latest` (the newest local archive)
        id: String,
    },
    /// Let the policy decide about a pinned archive again
    #[command(after_help = "Example:\n  pronto-offsite unpin 20260201-170521")]
    Unpin {
        /// Archive id (20260201-170521), name, or `latest` (the newest local archive)
        id: String,
    },
    /// Local and remote archives side by side
    #[command(
        after_help = "Examples:\n  pronto-offsite list\n  pronto-offsite list --remote b2 --json"
    )]
    List {
        /// Only this remote
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
        /// Every host's archives on the remotes (each `host_id` namespace, and the flat layout)
        #[arg(long)]
        all_hosts: bool,
    },
    /// Fetch an archive from a remote, verify it, and optionally extract it
    #[command(
        after_help = "Examples:\n  pronto-offsite pull latest --to /tmp/inspect\n  \
pronto-offsite pull latest --json                             # one JSON object on stdout\n  \
pronto-offsite pull 20260201-170521 --restore                 # everything, after a safety backup\n  \
pronto-offsite pull latest --restore --only postgres          # the databases only\n  \
pronto-offsite pull latest --restore --target-db pronto_copy  # beside the live database"
    )]
    Pull(PullArgs),
    /// Check archives against their manifests, locally and on every remote; or restore one: `verify <id> --restore-test`
    #[command(
        after_help = "Without --restore-test: each local archive's size and sha256 against its manifest, then every tar\n\
entry decompressed and read; on each remote every manifest against its archive object's size, the checksum the\n\
store computed from its bytes (else the sha256 recorded beside it) and the local manifest; incomplete uploads,\n\
manifests without archives and orphans are reported. --deep downloads and re-hashes remote archives; --sample 10%\n\
limits the expensive checks to a random tenth (at least one archive).\n\
Example (cron, Saturdays at 3 AM; over a few weeks every archive is read back):\n  \
0 3 * * 6 /usr/local/bin/pronto-offsite -q verify --deep --sample 25%\n\n\
With --restore-test: restores the PostgreSQL dumps into throwaway databases (on [drill] postgres_url, or a private\n\
instance started for the drill) and compares every table's row count with the manifest, loads each\n\
Redis snapshot into a throwaway redis-server and compares key counts, and counts each folder's files.\n\n\
Example (cron, Sundays at 4 AM):\n  0 4 * * 0 /usr/local/bin/pronto-offsite -q verify latest --restore-test\n\n\
Exit codes: 0 passed, 4 a mismatch or a dump that does not restore, 1 the drill could not run."
    )]
    Verify(VerifyArgs),
    /// Write a new age identity (secret key, mode 0600) and print its public key (recipient)
    #[command(
        after_help = "Example:\n  pronto-offsite keygen --output /etc/pronto-offsite/age-key.txt\n  \
# then, in the config:\n  [encryption]\n  recipients = [\"age1...\"]   # the printed public key\n\n\
Keep a copy of the key file off this host: without it no encrypted archive can be restored.\n\
The file is the `age-keygen` format: `age -d -i KEY NAME.tar.gz.age | tar -xz` works without pronto-offsite."
    )]
    Keygen {
        /// Where to write the identity (never overwritten; `-` = stdout). Default: [encryption] identity_file
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Apply a retention policy to archive names or timestamps read from stdin
    #[command(
        after_help = "Example (which of these the configured policy keeps):\n  ls /var/backups/pronto | pronto-offsite policy --json"
    )]
    Policy(crate::cmd::policy::PolicyArgs),
    /// For cron or a systemd timer: backup, push to every remote, prune, report and notify
    #[command(
        after_help = "Example (cron, daily at 2 AM):\n  0 2 * * * /usr/local/bin/pronto-offsite -q hook\n\n\
Exit codes: 0 ok, 1 failed, 3 partial (archive made, a remote or the prune failed), 6 another hook held the lock past lock_wait."
    )]
    Hook {
        /// Skip the backup (an external script made the archive); push, prune and report only
        #[arg(long)]
        no_backup: bool,
        /// Wait this long for another hook run to finish (default: [hook] lock_wait, 10m)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        lock_wait: Option<std::time::Duration>,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// For monitoring: newest archive's age locally and per remote, tiers, disk, storage needed
    #[command(
        after_help = "Example (exit 5 when the newest archive is older than 26 hours or a remote lags):\n  pronto-offsite status --max-age 26h --json"
    )]
    Status {
        /// The newest archive may be this old (default: [status] max_age, 26h)
        #[arg(long, value_name = "DURATION", value_parser = parse_max_age)]
        max_age: Option<std::time::Duration>,
        /// Only this remote
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        /// JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Check the config, the backup folder, disk space, each remote (reachable, credentials, write) and needed tools
    #[command(
        after_help = "Example (one line per check, with a fix for each failure; exit 1 when one fails, 2 on a broken config):\n  pronto-offsite doctor"
    )]
    Doctor {
        /// JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script
    #[command(
        after_help = "Example:\n  pronto-offsite completions bash > /etc/bash_completion.d/pronto-offsite"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    #[command(
        after_help = "Example:\n  pronto-offsite man > /usr/local/share/man/man1/pronto-offsite.1"
    )]
    Man,
}

/// `pull`'s arguments.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Archive id (20260201-170521), name, or `latest`
    id: String,
    /// Download from this remote even when the local archive is intact (default: the
    /// local copy when it verifies, else the first remote that has it)
    #[arg(long, visible_alias = "from", value_name = "NAME")]
    remote: Option<String>,
    /// Extract into this folder (must be empty or absent)
    #[arg(long, value_name = "DIR", conflicts_with = "restore")]
    to: Option<PathBuf>,
    /// Restore into the running services and configured folders (after a safety backup)
    #[arg(long)]
    restore: bool,
    /// With --restore: only these kinds (postgres,redis,static_content,configs,docker_volumes)
    #[arg(
        long,
        value_name = "KINDS",
        value_delimiter = ',',
        requires = "restore"
    )]
    only: Option<Vec<String>>,
    /// With --restore: skip the backup of the current state taken before anything is overwritten
    #[arg(long, requires = "restore")]
    no_safety_backup: bool,
    /// With --restore: restore the PostgreSQL database into this database, beside the live one
    #[arg(long, value_name = "NAME", requires = "restore")]
    target_db: Option<String>,
    /// With --target-db: which database of the archive (when it holds several)
    #[arg(long, value_name = "NAME", requires = "target_db")]
    database: Option<String>,
    /// With --target-db: replace that database even when it exists and holds tables (it goes into the safety backup first)
    #[arg(long, requires = "target_db")]
    replace_target_db: bool,
    /// With --restore: set roles that exist to the backup's state (password, LOGIN, memberships); by default they are left as they are
    #[arg(long, requires = "restore")]
    reset_roles: bool,
    /// age identity (secret key file) for an encrypted archive (default: [encryption] identity_file)
    #[arg(long, short = 'i', value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Another host's archive: read the remotes under this `host_id` (see `list --all-hosts`)
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// With --to or --restore: write at most this much file content, e.g. 200GiB
    /// (a decompression-bomb guard; default: [restore] max_extract_size)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_extract_size: Option<u64>,
    /// Print one JSON object (id, file, remote, path, sha256, size, verified, extracted_to)
    /// instead of the text lines (and no progress bar)
    #[arg(long, conflicts_with = "restore")]
    json: bool,
}

/// `verify`'s arguments.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Archive id (20260201-170521), name, or `latest` (default: every archive; required with --restore-test)
    id: Option<String>,
    /// Only this remote
    #[arg(long, value_name = "NAME")]
    remote: Option<String>,
    /// Only the local folder
    #[arg(long, conflicts_with_all = ["remote", "restore_test"])]
    local: bool,
    /// Download remote archives and re-hash them
    #[arg(long, conflicts_with = "restore_test")]
    deep: bool,
    /// Hash, read and (--deep) download only a random share of the archives, e.g. 10%
    #[arg(long, value_name = "SHARE", value_parser = crate::cmd::verify::parse_sample, conflicts_with = "restore_test")]
    sample: Option<f64>,
    /// Restore into throwaway servers and compare with the manifest (required: the only mode so far)
    #[arg(long)]
    restore_test: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// age identity (secret key file) for an encrypted archive (default: [encryption] identity_file)
    #[arg(long, short = 'i', value_name = "FILE")]
    identity: Option<PathBuf>,
}

/// Run the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let code = code.code();
            let _ = e.print();
            return code;
        }
    };
    crate::logging::init(cli.quiet, cli.verbose, cli.log_format);
    // -q on what cron runs: nothing on success, a short summary on failure.
    let res = if cli.quiet && quiet_applies(&cli.command) {
        crate::quiet::run(|| run(cli))
    } else {
        run(cli)
    };
    match res {
        Ok(exit) => exit.code(),
        Err(e) => {
            crate::logging::final_error(&crate::error::describe(&e));
            Exit::of(&e).code()
        }
    }
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    match crate::logging::parse_size(s) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a size like 200GiB, 500GB or 1TiB (more than 0)".into()),
    }
}

fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e}: expected e.g. 10m, 1h or 0s"))
}

fn parse_max_age(s: &str) -> std::result::Result<std::time::Duration, String> {
    crate::cmd::status::parse_max_age(s)
}

/// Load the config, and from then on log to its `[log] file` too.
fn load_config(path: Option<&Path>) -> Result<Config> {
    let file = config::locate(path)?;
    let cfg = config::load(&file)?;
    crate::logging::attach_file(cfg.log.as_ref());
    Ok(cfg)
}

/// `--identity FILE` replaces `[encryption] identity_file`.
fn override_identity(cfg: &mut Config, identity: Option<PathBuf>) {
    if let Some(i) = identity {
        cfg.encryption.identity_file = Some(std::path::absolute(&i).unwrap_or(i));
    }
}

/// `keygen` without `--output`: the config's `[encryption] identity_file`, if it names one.
fn keygen_default_output(config: Option<&Path>) -> Result<PathBuf> {
    let cfg = config::locate(config).and_then(|f| config::load(&f)).ok();
    cfg.and_then(|c| c.encryption.identity_file).ok_or_else(|| {
        crate::error::usage(
            "keygen: give --output FILE (or `--output -` for stdout), or set [encryption] identity_file in the config",
        )
    })
}

/// Standard output that a reader gone away (`| head`, a closed pipe) never turns into a
/// failed command: after the first EPIPE the rest of the output is dropped, and the
/// command (a push, a backup) finishes and exits as it would have.
struct Stdout<W: Write> {
    inner: W,
    closed: bool,
}

impl<W: Write> Stdout<W> {
    fn closed(&mut self, e: &std::io::Error) -> bool {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            if !self.closed {
                tracing::debug!("standard output is closed; the rest of the output is dropped");
            }
            self.closed = true;
        }
        self.closed
    }
}

impl<W: Write> Write for Stdout<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Err(e) if self.closed(&e) => Ok(buf.len()),
            r => r,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.inner.flush() {
            Err(e) if self.closed(&e) => Ok(()),
            r => r,
        }
    }
}

/// What every command takes from the global flags.
struct Global<'a> {
    /// `--config FILE`.
    config: Option<&'a Path>,
    /// `-q`.
    quiet: bool,
    /// Progress bars are allowed (not `-q`, not JSON logs; drawn only on a terminal).
    bars: bool,
}

fn run(cli: Cli) -> Result<Exit> {
    let stdout = std::io::stdout();
    let mut out = Stdout {
        inner: stdout.lock(),
        closed: false,
    };
    // Progress bars (backup, push, pull): on a terminal, not with -q or JSON logs.
    let bars = !cli.quiet && cli.log_format == crate::logging::LogFormat::Text;
    let g = Global {
        config: cli.config.as_deref(),
        quiet: cli.quiet,
        bars,
    };
    match cli.command {
        Command::Backup {
            push,
            exclude,
            dry_run,
            output,
        } => backup(&g, push, exclude, dry_run, output, &mut out),
        Command::Push {
            remote,
            dry_run,
            no_prune,
            json,
            bwlimit,
            cleanup,
            init_remote,
        } => push(
            &g,
            remote,
            dry_run,
            no_prune,
            json,
            bwlimit,
            cleanup,
            init_remote,
            &mut out,
        ),
        Command::Prune {
            dry_run,
            local,
            remote,
            force,
        } => crate::cmd::prune::run(
            &load_config(g.config)?,
            dry_run,
            local,
            remote,
            force,
            &mut out,
        ),
        Command::Pin { id } => {
            let cfg = load_config(cli.config.as_deref())?;
            runtime()?.block_on(crate::pins::run(&cfg, &id, true, &mut out))
        }
        Command::Unpin { id } => {
            let cfg = load_config(cli.config.as_deref())?;
            runtime()?.block_on(crate::pins::run(&cfg, &id, false, &mut out))
        }
        Command::List {
            remote,
            json,
            all_hosts: true,
        } => {
            let cfg = load_config(cli.config.as_deref())?;
            runtime()?.block_on(crate::cmd::list::list_all_hosts(
                &cfg,
                remote.as_deref(),
                json,
                &mut out,
            ))
        }
        Command::List { remote, json, .. } => {
            let cfg = load_config(cli.config.as_deref())?;
            runtime()?.block_on(crate::cmd::list::run(
                &cfg,
                remote.as_deref(),
                json,
                &mut out,
            ))
        }
        Command::Pull(a) if a.restore => restore(&g, a, &mut out),
        Command::Verify(a) if a.restore_test => restore_drill(&g, a, &mut out),
        Command::Verify(a) => verify(&g, a, &mut out),
        Command::Pull(a) => pull(&g, a, &mut out),
        Command::Policy(args) => policy(&g, args, &mut out),
        Command::Hook {
            no_backup,
            lock_wait,
            json,
        } => {
            let cfg = load_config(cli.config.as_deref())?;
            let opts = crate::cmd::hook::HookOptions {
                no_backup,
                lock_wait,
                json,
            };
            crate::cmd::hook::run(&cfg, &opts, &mut out)
        }
        Command::Status {
            max_age,
            remote,
            json,
        } => {
            let cfg = load_config(cli.config.as_deref())?;
            let opts = crate::cmd::status::StatusOptions {
                max_age,
                remote,
                json,
            };
            runtime()?.block_on(crate::cmd::status::run(&cfg, &opts, &mut out))
        }
        Command::Keygen { output } => {
            let output = match output {
                Some(o) => o,
                None => keygen_default_output(cli.config.as_deref())?,
            };
            crate::crypto::keygen(&output, &mut out)?;
            Ok(Exit::Ok)
        }
        Command::Adopt { paths } => {
            let cfg = load_config(cli.config.as_deref())?;
            crate::cmd::adopt::run(&cfg, &paths, &mut out)
        }
        Command::Doctor { json } => crate::cmd::doctor::run(cli.config.as_deref(), json, &mut out),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "pronto-offsite", &mut out);
            Ok(Exit::Ok)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            Ok(Exit::Ok)
        }
    }
}

/// Whether `-q` silences this command's stdout on success.
fn quiet_applies(cmd: &Command) -> bool {
    match cmd {
        Command::Hook { json, .. } | Command::Push { json, .. } => !json,
        Command::Prune { dry_run, .. } => !dry_run,
        _ => false,
    }
}

/// `backup`: one archive into the backup folder (`--push`: and to the remotes while it is
/// written; `--output DIR`: a one-off elsewhere; `--dry-run`: only list what it would hold).
fn backup(
    g: &Global,
    push: bool,
    exclude: Vec<String>,
    dry_run: bool,
    output: Option<PathBuf>,
    out: &mut dyn Write,
) -> Result<Exit> {
    crate::progress::enable(g.bars);
    let mut cfg = load_config(g.config)?;
    for s in cfg.sources.iter_mut() {
        s.exclude.extend(exclude.iter().cloned());
    }
    let opts = crate::cmd::backup::Options {
        push,
        dry_run,
        output,
        quiet: g.quiet,
    };
    crate::cmd::backup::run(&cfg, &opts, out)
}

/// `push`: every local archive a remote lacks, then that remote's prune (`--cleanup`: and
/// abort the uploads no push will finish).
#[allow(clippy::too_many_arguments)]
fn push(
    g: &Global,
    remote: Option<String>,
    dry_run: bool,
    no_prune: bool,
    json: bool,
    bwlimit: Option<crate::bwlimit::Schedule>,
    cleanup: bool,
    init_remote: bool,
    out: &mut dyn Write,
) -> Result<Exit> {
    let mut cfg = load_config(g.config)?;
    if init_remote {
        // Starting a remote afresh writes its marker, and creates its folder when missing:
        // with several remotes it must be said which one, or a sibling that is merely not
        // mounted would get a folder and a marker on the disk underneath.
        if remote.is_none() && cfg.remotes.len() > 1 {
            let names: Vec<&str> = cfg.remotes.iter().map(|r| r.name.as_str()).collect();
            return Err(crate::error::usage(format!(
                "--init-remote starts one remote afresh: name it with --remote NAME (configured: {})",
                names.join(", ")
            )));
        }
        cfg.remotes.iter_mut().for_each(|r| r.init_marker = true);
    }
    if let Some(b) = bwlimit {
        cfg.remotes
            .iter_mut()
            .for_each(|r| r.bwlimit = Some(b.clone()));
    }
    let opts = crate::cmd::push::Options {
        remote,
        dry_run,
        no_prune,
        json,
        cleanup,
        bars: g.bars,
    };
    crate::cmd::push::run(&cfg, &opts, out)
}

/// The config a `pull` works with: read through host `--host`'s namespace, with
/// `--identity` and `--max-extract-size` over the config's own.
fn config_for_pull(
    g: &Global,
    host: Option<String>,
    identity: Option<PathBuf>,
    max_extract_size: Option<u64>,
) -> Result<Config> {
    let mut cfg = load_config(g.config)?;
    if let Some(h) = host {
        cfg = crate::host_namespace::as_host(&cfg, &h)?;
    }
    override_identity(&mut cfg, identity);
    if max_extract_size.is_some() {
        cfg.max_extract_size = max_extract_size;
    }
    Ok(cfg)
}

/// `pull --restore`: bring an archive back into the running platform.
fn restore(g: &Global, a: PullArgs, out: &mut dyn Write) -> Result<Exit> {
    let cfg = config_for_pull(g, a.host, a.identity, a.max_extract_size)?;
    let opts = crate::cmd::restore::RestoreOptions {
        id: a.id,
        remote: a.remote,
        only: a.only,
        safety_backup: !a.no_safety_backup,
        target_db: a.target_db,
        database: a.database,
        replace_target_db: a.replace_target_db,
        reset_roles: a.reset_roles,
    };
    // A bar while the archive is downloaded and extracted (on a terminal only); the
    // command's lines are written with it hidden.
    crate::progress::enable(g.bars && !a.json);
    crate::cmd::restore::run(&cfg, &opts, &mut crate::progress::Suspending(out))
}

/// `pull`: fetch and verify an archive, and `--to` a folder.
fn pull(g: &Global, a: PullArgs, out: &mut dyn Write) -> Result<Exit> {
    crate::progress::enable(g.bars && !a.json);
    let cfg = config_for_pull(g, a.host, a.identity, a.max_extract_size)?;
    let opts = crate::cmd::pull::Options {
        id: a.id,
        remote: a.remote,
        to: a.to,
        json: a.json,
    };
    crate::cmd::pull::run(&cfg, &opts, out)
}

/// `verify`: check archives against their manifests, locally and on the remotes.
fn verify(g: &Global, a: VerifyArgs, out: &mut dyn Write) -> Result<Exit> {
    let mut cfg = load_config(g.config)?;
    override_identity(&mut cfg, a.identity);
    let opts = crate::cmd::verify::VerifyOptions {
        id: a.id,
        local: a.local,
        remote: a.remote,
        sample: a.sample,
        deep: a.deep,
        json: a.json,
    };
    let res = runtime()?.block_on(crate::cmd::verify::run(&cfg, &opts, out));
    crate::metrics::record_verify(&cfg, &res);
    res
}

/// `verify --restore-test`: restore an archive into throwaway servers and compare.
fn restore_drill(g: &Global, a: VerifyArgs, out: &mut dyn Write) -> Result<Exit> {
    let Some(id) = a.id else {
        return Err(crate::error::usage(
            "verify --restore-test: name the archive to restore: an id, a name, or `latest`",
        ));
    };
    let mut cfg = load_config(g.config)?;
    override_identity(&mut cfg, a.identity);
    let opts = crate::cmd::restore_drill::DrillOptions {
        id,
        remote: a.remote,
        json: a.json,
    };
    let res = crate::cmd::restore_drill::run(&cfg, &opts, out);
    crate::metrics::record_verify(&cfg, &res);
    res
}

/// `policy`: which archive ids (from stdin) a retention policy keeps, and why.
fn policy(g: &Global, args: crate::cmd::policy::PolicyArgs, out: &mut dyn Write) -> Result<Exit> {
    let policy = match (args.explicit_policy(), &args.remote) {
        (Some(_), Some(_)) => {
            return Err(crate::error::usage(
                "--remote picks a configured policy and --keep-* give one: use either",
            ))
        }
        (Some(p), None) => p,
        (None, None) => load_config(g.config)?.retention,
        (None, Some(name)) => {
            let cfg = load_config(g.config)?;
            // The one message for an unknown remote name.
            crate::remotes::selected(&cfg, Some(name))?;
            cfg.policy_for(name).clone()
        }
    };
    let stdin = std::io::stdin();
    crate::cmd::policy::run(&policy, stdin.lock(), args.json, &mut &mut *out)?;
    Ok(Exit::Ok)
}
