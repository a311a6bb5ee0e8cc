//! `pull <id> --restore`: bring an archive back into the running platform.
//!
//! 1. Pull the archive (downloaded and checked against its manifest, or the intact
//!    local copy) and extract it into `<dir>/.restore-<id>-<pid>/` (0700, removed after).
//! 2. Check what can be checked before anything changes: servers reachable, Redis's
//!    `data_dir` set and its AOF off, folders' parents present.
//! 3. Unless `--no-safety-backup`: a normal backup of the sources about to be
//!    overwritten (the seed's disaster-recovery step 2); its id is printed.
//! 4. PostgreSQL: globals (`psql`; "already exists" is expected for roles), then each
//!    database with `pg_restore --clean --if-exists --single-transaction` (all or
//!    nothing), or `--create` when it is missing, or into `--target-db NAME` beside
//!    the live one. Redis: `stop_command`, replace the RDB file in `data_dir` (temp
//!    name + rename), `start_command`, wait until loaded, compare key counts.
//!    Folders: copied beside their configured path, then swapped in.
//! 5. The `[[health_checks]]`: HTTP URLs that must answer 2xx, SQL that must succeed.
//!
//! Every step prints what it did; a failure stops with the step named and the
//! safety backup's id.

use crate::error::Exit;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub use crate::config::health::{CheckKind, HealthCheck, DEFAULT_CHECK_TIMEOUT};
use crate::config::{Config, Source, SourceKind};
use crate::error::usage;
use crate::manifest::{Manifest, PgSummary, RedisSummary};
use crate::source::postgres::PgClient;
use crate::source::rdb;
use crate::source::redis::RedisClient;
use crate::source::{mask, remove_stale_work_dirs, run_command_line, WorkDir};

/// Restore staging folders in the backup folder start with this.
pub const STAGING_PREFIX: &str = ".restore-";
/// How long a stopped Redis may keep answering, and a started one may take to load.
const REDIS_STOP_WAIT: Duration = Duration::from_secs(60);
const REDIS_START_WAIT: Duration = Duration::from_secs(300);
/// Longest a stop_command or start_command may run.
const COMMAND_LIMIT: Duration = Duration::from_secs(300);
// ---- options ----

/// `pull <id> --restore`'s flags.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Archive id, name or `latest`.
    pub id: String,
    /// `--remote NAME`.
    pub remote: Option<String>,
    /// `--only postgres,redis,…`: None = every kind.
    pub only: Option<Vec<String>>,
    /// `--no-safety-backup` turns this off.
    pub safety_backup: bool,
    /// `--target-db NAME`: restore one database beside the live one.
    pub target_db: Option<String>,
    /// `--database NAME`: which database of the archive (with `--target-db`).
    pub database: Option<String>,
    /// `--replace-target-db`: `--target-db` may replace an existing database that holds
    /// relations (it is saved in the safety backup first); without it that is refused.
    pub replace_target_db: bool,
    /// `--reset-roles`: set roles that exist to the backup's state (password, LOGIN,
    /// attributes, memberships); by default they are left exactly as they are.
    pub reset_roles: bool,
}

/// Parse `--only` values into source kinds.
pub fn parse_only(list: &[String]) -> Result<BTreeSet<SourceKindKey>> {
    let mut out = BTreeSet::new();
    for v in list
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        let k = match v {
            "postgres" => SourceKind::Postgres,
            "redis" => SourceKind::Redis,
            "static_content" => SourceKind::StaticContent,
            "configs" => SourceKind::Configs,
            "docker_volumes" => SourceKind::DockerVolumes,
            other => {
                return Err(usage(format!(
                    "--only {other}: expected a comma-separated list of postgres, redis, static_content, configs, docker_volumes"
                )))
            }
        };
        out.insert(SourceKindKey(k));
    }
    if out.is_empty() {
        return Err(usage(
            "--only: name at least one of postgres, redis, static_content, configs, docker_volumes",
        ));
    }
    Ok(out)
}

/// A kind as written in the config and in `--only`.
pub fn kind_name(k: SourceKind) -> &'static str {
    match k {
        SourceKind::Postgres => "postgres",
        SourceKind::Redis => "redis",
        SourceKind::StaticContent => "static_content",
        SourceKind::Configs => "configs",
        SourceKind::DockerVolumes => "docker_volumes",
    }
}

/// A [`SourceKind`] that sorts (for sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceKindKey(pub SourceKind);

impl PartialOrd for SourceKindKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SourceKindKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.section().cmp(&other.0.section())
    }
}

// ---- the plan ----

enum Step<'a> {
    SafetyBackup(Vec<String>),
    PgGlobals {
        src: &'a Source,
        file: PathBuf,
    },
    PgDatabase {
        src: &'a Source,
        file: PathBuf,
        db: String,
        target: String,
        tables: usize,
        rows: u64,
    },
    Redis {
        src: &'a Source,
        rdb: PathBuf,
        summary: RedisSummary,
        dbfilename: String,
    },
    Folder {
        src: &'a Source,
        staged: PathBuf,
    },
    HealthChecks,
}

impl Step<'_> {
    fn title(&self) -> String {
        match self {
            Step::SafetyBackup(names) => format!("safety backup of {}", names.join(", ")),
            Step::PgGlobals { src, .. } => format!("postgres {}: roles and tablespaces", src.name),
            Step::PgDatabase {
                src, db, target, ..
            } if db == target => format!("postgres {}: database {db}", src.name),
            Step::PgDatabase {
                src, db, target, ..
            } => format!("postgres {}: database {db} into {target}", src.name),
            Step::Redis { src, .. } => format!("redis {}", src.name),
            Step::Folder { src, .. } => format!(
                "{} {}: {}",
                src.kind.section().dir_name(),
                src.name,
                src.path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            Step::HealthChecks => "health checks".to_string(),
        }
    }
}

/// The configured sources a restore covers (`--only`, `--target-db`), refusing what
/// cannot be restored (no source of a kind, a redis source without `data_dir`, a live
/// folder holding our own data, `--target-db` without exactly one postgres source).
fn select_sources<'c>(cfg: &'c Config, opts: &RestoreOptions) -> Result<Vec<&'c Source>> {
    // Which kinds.
    let mut kinds = match &opts.only {
        Some(list) => parse_only(list)?,
        None => [
            SourceKind::Postgres,
            SourceKind::Redis,
            SourceKind::StaticContent,
            SourceKind::Configs,
            SourceKind::DockerVolumes,
        ]
        .into_iter()
        .map(SourceKindKey)
        .collect(),
    };
    if opts.target_db.is_some() {
        if opts.only.is_some() && kinds.iter().any(|k| k.0 != SourceKind::Postgres) {
            return Err(usage("--target-db restores one PostgreSQL database beside the live one: use it with --only postgres (or without --only)"));
        }
        kinds = [SourceKindKey(SourceKind::Postgres)].into_iter().collect();
    } else if opts.database.is_some() {
        return Err(usage(
            "--database picks the database for --target-db; give --target-db NAME too",
        ));
    }
    let selected: Vec<&Source> = cfg
        .sources
        .iter()
        .filter(|s| kinds.contains(&SourceKindKey(s.kind)))
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = kinds.iter().map(|k| kind_name(k.0)).collect();
        return Err(usage(format!(
            "{}: no configured source of kind {} to restore into",
            cfg.file.display(),
            names.join(", ")
        )));
    }
    for s in &selected {
        if let Some(r) = &s.redis {
            if r.data_dir.is_none() {
                return Err(usage(format!(
                    "{}: redis source '{}' has no data_dir: set it to the folder where Redis keeps dump.rdb (CONFIG GET dir), so a restore knows where to put it",
                    cfg.file.display(),
                    s.name
                )));
            }
        }
    }
    refuse_replacing_our_data(cfg, &selected)?;
    let pg_sources: Vec<&&Source> = selected.iter().filter(|s| s.postgres.is_some()).collect();
    if opts.target_db.is_some() && pg_sources.len() != 1 {
        return Err(usage(format!(
            "--target-db needs exactly one postgres source; {} are configured",
            pg_sources.len()
        )));
    }
    Ok(selected)
}

/// Check the archive's identity and manifest, then extract it into a fresh staging
/// folder inside the backup folder. Returns the manifest, the staging folder (removed when
/// dropped) and the archive's top folder inside it.
fn unpack(cfg: &Config, path: &Path, out: &mut dyn Write) -> Result<(Manifest, WorkDir, PathBuf)> {
    // An encrypted archive: its identity is checked here, before anything is written.
    let xopts = crate::extract::ExtractOptions::for_archive(cfg, path)?;
    let manifest_path = path.with_file_name(Manifest::file_name_for(
        &path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    ));
    let manifest = Manifest::read_unsealed(&manifest_path, xopts.identities.as_ref())?;
    remove_stale_work_dirs(&cfg.local.dir, STAGING_PREFIX);
    let staging = WorkDir::create(cfg.local.dir.join(format!(
        "{STAGING_PREFIX}{}-{}",
        manifest.id,
        std::process::id()
    )))?;
    let unpacked = staging.path().join("archive");
    crate::extract::extract_with(path, &unpacked, &xopts)
        .with_context(|| format!("extracting {} into {}", path.display(), unpacked.display()))?;
    let top = unpacked.join(crate::catalog::top_folder(
        &cfg.local.prefix,
        &manifest.file,
    ));
    writeln!(
        out,
        "restoring {} (made {} on {}) into this host",
        manifest.file,
        manifest.created.format("%Y-%m-%d %H:%M:%S UTC"),
        manifest.host
    )?;
    Ok((manifest, staging, top))
}

/// The steps of a restore and what its safety backup must hold.
struct Plan<'a> {
    steps: Vec<Step<'a>>,
    /// Sources the safety backup takes.
    safety_names: Vec<String>,
    /// Sources whose current state holds nothing a restore could lose, with the reason.
    nothing_to_save: Vec<(String, String)>,
    /// `(source, database)`: databases outside a source's `databases` that the safety
    /// backup must hold too (`--replace-target-db` targets that hold relations).
    extra_safety_dbs: Vec<(String, String)>,
}

/// Plan a restore, source by source, with every check that needs no change: what the
/// archive holds for it, what the live side holds now, and whether the safety backup
/// must take it. Nothing is changed here.
fn plan_steps<'a>(
    opts: &RestoreOptions,
    selected: &[&'a Source],
    manifest: &Manifest,
    top: &Path,
    staging: &WorkDir,
    out: &mut dyn Write,
) -> Result<Plan<'a>> {
    let mut plan = Plan {
        steps: Vec::new(),
        safety_names: Vec::new(),
        nothing_to_save: Vec::new(),
        extra_safety_dbs: Vec::new(),
    };
    for s in selected {
        let Some(sum) = manifest
            .sources
            .iter()
            .find(|m| m.name == s.name && m.section == s.kind.section())
        else {
            writeln!(
                out,
                "  {} {}: not in this archive; left as it is",
                s.kind.section().dir_name(),
                s.name
            )?;
            continue;
        };
        let staged = top.join(&sum.archive_path);
        if !staged.is_dir() {
            bail!(
                "the archive has no folder {} for source '{}'",
                sum.archive_path,
                s.name
            );
        }
        if let Some(pg) = &s.postgres {
            plan.add_postgres(opts, s, pg, manifest, &staged, staging, out)?;
        } else if let Some(r) = &s.redis {
            plan.add_redis(s, r, manifest, &staged, out)?;
        } else if let Some(p) = &s.path {
            plan.add_folder(s, p, staged)?;
        }
        if !plan.nothing_to_save.iter().any(|(n, _)| n == &s.name) {
            plan.safety_names.push(s.name.clone());
        }
    }
    Ok(plan)
}

impl<'a> Plan<'a> {
    /// A PostgreSQL source: the server answers; the databases to restore (all, or the one
    /// `--target-db` writes beside the live one); its roles first unless `--target-db`;
    /// nothing to save when none of those databases holds a table yet.
    #[allow(clippy::too_many_arguments)]
    fn add_postgres(
        &mut self,
        opts: &RestoreOptions,
        s: &'a Source,
        pg: &crate::config::postgres::PgSource,
        manifest: &Manifest,
        staged: &Path,
        staging: &WorkDir,
        out: &mut dyn Write,
    ) -> Result<()> {
        let p: &PgSummary = manifest
            .postgres
            .iter()
            .find(|p| p.source == s.name)
            .ok_or_else(|| {
                anyhow!(
                    "the manifest has no PostgreSQL summary for source '{}'",
                    s.name
                )
            })?;
        let client = PgClient::new(pg, staging.path())?;
        let version = client.server_version().with_context(|| {
            format!(
                "before restoring: postgres source '{}' is not reachable",
                s.name
            )
        })?;
        writeln!(
            out,
            "  postgres {}: {} answers (PostgreSQL {version})",
            s.name,
            pg.describe()
        )?;
        let dbs = databases_to_restore(opts, p, pg, s, out)?;
        if opts.target_db.is_none() {
            if let Some(g) = &p.globals {
                self.steps.push(Step::PgGlobals {
                    src: s,
                    file: staged.join(g),
                });
            }
        }
        if let Some(t) = &opts.target_db {
            check_target_db(&client, s, t, opts, &mut self.extra_safety_dbs, out)?;
        } else if !opts.reset_roles {
            // Missing roles are created and existing ones left alone, so only a
            // database the restore goes into holds something to lose.
            let existing: Vec<&str> = dbs
                .iter()
                .map(|d| d.name.as_str())
                .filter(|db| {
                    client.database_exists(db).unwrap_or(true)
                        && client.relation_count(db).map_or(true, |n| n > 0)
                })
                .collect();
            if existing.is_empty() {
                self.nothing_to_save.push((
                    s.name.clone(),
                    format!(
                        "none of {} exists on the server with a table in it",
                        dbs.iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        for d in dbs {
            self.steps.push(Step::PgDatabase {
                src: s,
                file: staged.join(&d.file),
                db: d.name.clone(),
                target: opts.target_db.clone().unwrap_or_else(|| d.name.clone()),
                tables: d.tables.len(),
                rows: d.total_rows(),
            });
        }
        Ok(())
    }

    /// A Redis source: its data folder, AOF off, the dump file name the server uses;
    /// nothing to save when it holds no key and no dump file.
    fn add_redis(
        &mut self,
        s: &'a Source,
        r: &crate::config::redis::RedisSource,
        manifest: &Manifest,
        staged: &Path,
        out: &mut dyn Write,
    ) -> Result<()> {
        let summary = manifest
            .redis
            .iter()
            .find(|x| x.source == s.name)
            .cloned()
            .ok_or_else(|| anyhow!("the manifest has no Redis summary for source '{}'", s.name))?;
        let client = RedisClient::new(r)?;
        let data_dir = r.data_dir.as_ref().expect("checked above");
        if !data_dir.is_dir() {
            bail!(
                "redis source '{}': data_dir {} is not a folder",
                s.name,
                data_dir.display()
            );
        }
        let mut dbfilename = "dump.rdb".to_string();
        let answers = client.ping();
        if answers {
            if client.config_get("appendonly").as_deref() == Some("yes") {
                bail!(
                    "redis source '{}': appendonly is on, so Redis would load its AOF and ignore the restored dump.rdb. \
                     Turn it off for the restore (`CONFIG SET appendonly no`, and in redis.conf), restore, then turn it on \
                     again (`CONFIG SET appendonly yes` writes a new AOF from the restored data)",
                    s.name
                );
            }
            dbfilename = check_redis_files(&client, &s.name, data_dir)?;
            writeln!(
                out,
                "  redis {}: {} answers (dbfilename {dbfilename})",
                s.name,
                r.describe()
            )?;
        } else {
            writeln!(
                out,
                "  redis {}: {} does not answer; it will only be started",
                s.name,
                r.describe()
            )?;
        }
        let keys: Option<u64> = if answers {
            client
                .keyspace()
                .ok()
                .map(|dbs| dbs.iter().map(|d| d.keys).sum())
        } else {
            None
        };
        let on_disk = data_dir.join(&dbfilename).exists();
        if keys == Some(0) && !on_disk {
            self.nothing_to_save.push((
                s.name.clone(),
                format!(
                    "the server holds no key and {} has no {dbfilename}",
                    data_dir.display()
                ),
            ));
        } else if !answers && !on_disk {
            self.nothing_to_save.push((
                s.name.clone(),
                format!(
                    "the server is down and {} has no {dbfilename}",
                    data_dir.display()
                ),
            ));
        }
        self.steps.push(Step::Redis {
            src: s,
            rdb: staged.join(&summary.file),
            summary,
            dbfilename,
        });
        Ok(())
    }

    /// A folder source: its parent exists; nothing to save when the folder is empty or
    /// absent.
    fn add_folder(&mut self, s: &'a Source, p: &Path, staged: PathBuf) -> Result<()> {
        let parent = p.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            bail!(
                "{} {}: the parent folder {} does not exist",
                s.kind.section().dir_name(),
                s.name,
                parent.display()
            );
        }
        if let Some(why) = empty_folder(p) {
            self.nothing_to_save.push((s.name.clone(), why));
        }
        self.steps.push(Step::Folder { src: s, staged });
        Ok(())
    }
}

/// The databases of the archive's PostgreSQL source `p` to restore: every one, or with
/// `--target-db` the one `--database` names (or the only user database).
fn databases_to_restore<'p>(
    opts: &RestoreOptions,
    p: &'p PgSummary,
    pg: &crate::config::postgres::PgSource,
    s: &Source,
    out: &mut dyn Write,
) -> Result<Vec<&'p crate::manifest::PgDatabase>> {
    let dbs: Vec<_> = match (&opts.target_db, &opts.database) {
        (Some(_), Some(want)) => {
            let d = p
                .databases
                .iter()
                .find(|d| &d.name == want)
                .ok_or_else(|| {
                    usage(format!(
                        "--database {want}: the archive holds {}",
                        p.databases
                            .iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            vec![d]
        }
        (Some(_), None) if only_user_database(p, &pg.maintenance_db).is_some() => {
            let d = only_user_database(p, &pg.maintenance_db).expect("checked");
            if p.databases.len() > 1 {
                writeln!(
                    out,
                    "  postgres {}: restoring database {} (the archive's only one besides {}; --database picks another)",
                    s.name, d.name, pg.maintenance_db
                )?;
            }
            vec![d]
        }
        (Some(_), None) => {
            return Err(usage(format!(
                "--target-db: the archive holds {} databases ({}); pick one with --database NAME",
                p.databases.len(),
                p.databases
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        _ => p.databases.iter().collect(),
    };
    Ok(dbs)
}

/// Run a restore; returns the exit code.
pub fn run(cfg: &Config, opts: &RestoreOptions, out: &mut dyn Write) -> Result<Exit> {
    // 0. What to restore: the sources of the kinds asked for, checked.
    let selected = select_sources(cfg, opts)?;

    // A restore that takes a safety backup changes the backup folder: the whole of it
    // under the one local lock, so no prune removes the archive or the safety backup
    // underneath it.
    let _lock = opts
        .safety_backup
        .then(|| crate::lock::acquire(&cfg.local.dir, "restore", crate::lock::DEFAULT_WAIT))
        .transpose()?;
    // 1. Pull (or take the intact local copy of an id: a safety backup lives only here) and extract.
    let rt = crate::remotes::runtime()?;
    let path = match crate::catalog::local_intact(cfg, &opts.id, opts.remote.is_some(), out)? {
        Some(p) => p,
        None => rt.block_on(crate::fetch::run_for_extract(
            cfg,
            &opts.id,
            opts.remote.as_deref(),
            out,
        ))?,
    };
    let (manifest, staging, top) = unpack(cfg, &path, out)?;

    // 2. Plan, with the checks that need no change.
    let plan = plan_steps(opts, &selected, &manifest, &top, &staging, out)?;
    if plan.steps.is_empty() {
        bail!(
            "nothing to restore: none of the selected sources is in {}",
            manifest.file
        );
    }
    let Plan {
        mut steps,
        safety_names,
        nothing_to_save,
        extra_safety_dbs,
    } = plan;
    let safety_skipped = opts.safety_backup && safety_names.is_empty();
    if opts.safety_backup {
        announce_safety_backup(&safety_names, &nothing_to_save, out)?;
        if !safety_names.is_empty() {
            steps.insert(0, Step::SafetyBackup(safety_names));
        }
    }
    if !cfg.health_checks.is_empty() {
        steps.push(Step::HealthChecks);
    }

    // 3.-5. Run the steps.
    let mut home_cfg = cfg.clone();
    if let Some(home) = &cfg.local.home {
        home_cfg.local.dir = home.clone();
        home_cfg.local.home = None;
    }
    add_safety_databases(&mut home_cfg, &extra_safety_dbs);
    let mut runner = StepRunner {
        cfg,
        home_cfg,
        opts,
        // `--replace-target-db` targets that hold relations: replaced whole, not merged into.
        replace_dbs: extra_safety_dbs,
        nothing_to_save,
        staging: staging.path(),
        rt: &rt,
        safety: None,
        failed_checks: 0,
    };
    let total = steps.len();
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        let title = step.title();
        writeln!(out, "[{n}/{total}] {title}")?;
        out.flush()?;
        let started = Instant::now();
        match runner.run(step, out) {
            Ok(detail) => writeln!(
                out,
                "      {detail} ({:.1}s)",
                started.elapsed().as_secs_f64()
            )?,
            Err(e) => {
                let note =
                    stopped_note(runner.safety.as_deref(), opts.safety_backup, safety_skipped);
                return Err(anyhow!(
                    "restore stopped at step {n}/{total} ({title}): {e:#}; {note}"
                ));
            }
        }
    }
    if runner.failed_checks > 0 {
        let note = runner
            .safety
            .as_ref()
            .map(|id| format!("; the state before this restore is in safety backup {id}"))
            .unwrap_or_default();
        return Err(anyhow!(
            "restore done, but {} health check(s) failed (see above){note}",
            runner.failed_checks
        ));
    }
    writeln!(out, "restore complete")?;
    if let Some(id) = runner.safety {
        writeln!(out, "safety backup: {id}")?;
    }
    Ok(Exit::Ok)
}

/// Say which sources the safety backup leaves out (nothing to save), or that there is
/// none at all (a new host).
fn announce_safety_backup(
    safety_names: &[String],
    nothing_to_save: &[(String, String)],
    out: &mut dyn Write,
) -> Result<()> {
    for (name, why) in nothing_to_save {
        writeln!(
            out,
            "  {name}: nothing to save ({why}); not in the safety backup"
        )?;
    }
    if safety_names.is_empty() {
        writeln!(
            out,
            "  no safety backup: the sources hold nothing to save (a new host?)"
        )?;
    }
    Ok(())
}

/// What a failed step leaves behind: where the state before the restore is.
fn stopped_note(safety: Option<&str>, safety_backup: bool, safety_skipped: bool) -> String {
    match (safety, safety_backup) {
        (Some(id), _) => format!(
            "the state before this restore is in safety backup {id}; `pronto-offsite pull {id} --restore --no-safety-backup` brings it back"
        ),
        (None, true) if safety_skipped => {
            "no safety backup was taken: the sources held nothing to save".to_string()
        }
        (None, true) => "nothing was changed".to_string(),
        (None, false) => "no safety backup was taken (--no-safety-backup)".to_string(),
    }
}

/// Runs the steps of a restore in order, remembering the safety backup's id (for the
/// notes of later steps) and how many health checks failed.
struct StepRunner<'a> {
    cfg: &'a Config,
    /// The config of this host's own backup folder (the safety backup goes there, also
    /// when the archive is another host's), with the extra databases it must hold.
    home_cfg: Config,
    opts: &'a RestoreOptions,
    /// `(source, database)` replaced whole (`--replace-target-db`).
    replace_dbs: Vec<(String, String)>,
    nothing_to_save: Vec<(String, String)>,
    staging: &'a Path,
    rt: &'a tokio::runtime::Runtime,
    safety: Option<String>,
    failed_checks: usize,
}

impl StepRunner<'_> {
    /// Run one step; returns the line that says what it did.
    fn run(&mut self, step: &Step, out: &mut dyn Write) -> Result<String> {
        let safety = self.safety.clone();
        let safety = safety.as_deref();
        match step {
            Step::SafetyBackup(names) => self.safety_backup(names),
            Step::PgGlobals { src, file } => {
                restore_globals(src, file, self.opts.reset_roles, safety, self.staging)
            }
            Step::PgDatabase {
                src,
                file,
                db,
                target,
                tables,
                rows,
            } if self
                .replace_dbs
                .contains(&(src.name.clone(), target.clone())) =>
            {
                replace_pg_database(src, file, db, target, *tables, *rows, self.staging)
                    .map(|d| d + &old_state_note(safety))
            }
            Step::PgDatabase {
                src,
                file,
                db,
                target,
                tables,
                rows,
            } => restore_pg_database(src, file, db, target, *tables, *rows, self.staging).map(
                |(d, replaced)| {
                    if replaced {
                        d + &replaced_note(&self.nothing_to_save, &src.name, safety)
                    } else {
                        d
                    }
                },
            ),
            Step::Redis {
                src,
                rdb,
                summary,
                dbfilename,
            } => restore_redis(src, rdb, summary, dbfilename, out)
                .map(|d| d + &replaced_note(&self.nothing_to_save, &src.name, safety)),
            Step::Folder { src, staged } => restore_folder(src, staged),
            Step::HealthChecks => {
                let failed = run_health_checks(self.cfg, self.rt, self.staging, out)?;
                self.failed_checks = failed;
                let all = self.cfg.health_checks.len();
                Ok(if failed == 0 {
                    format!("all {all} passed")
                } else {
                    format!("{failed} of {all} failed")
                })
            }
        }
    }

    /// The safety backup of `names`, into this host's backup folder.
    fn safety_backup(&mut self, names: &[String]) -> Result<String> {
        let (m, p) = crate::local_backup::run_with(
            &self.home_cfg,
            &crate::local_backup::BackupOptions {
                only_sources: Some(names.to_vec()),
                safety: true,
                ..Default::default()
            },
        )
        .map_err(|e| {
            e.context("the safety backup of the current state failed, so nothing was changed; fix the cause, or restore without one with --no-safety-backup")
        })?;
        self.safety = Some(m.id.clone());
        Ok(format!(
            "safety backup {} ({}, {})",
            m.id,
            p.display(),
            crate::fsutil::human_bytes(m.size)
        ))
    }
}

fn restore_globals(
    src: &Source,
    file: &Path,
    reset_roles: bool,
    safety: Option<&str>,
    private: &Path,
) -> Result<String> {
    let pg = src.postgres.as_ref().expect("postgres source");
    let client = PgClient::new(pg, private)?;
    let report = client.restore_globals(file, reset_roles)?;
    let note = if report.reset.is_empty() {
        String::new()
    } else {
        old_state_note(safety)
    };
    Ok(format!("{}{note}", report.describe()))
}

/// The archive's one database, or its one database besides the maintenance database
/// (`postgres`, which a source without a `databases` list dumps too).
fn only_user_database<'p>(
    p: &'p PgSummary,
    maintenance_db: &str,
) -> Option<&'p crate::manifest::PgDatabase> {
    if p.databases.len() == 1 {
        return p.databases.first();
    }
    let mut user = p.databases.iter().filter(|d| d.name != maintenance_db);
    match (user.next(), user.next()) {
        (Some(d), None) => Some(d),
        _ => None,
    }
}

/// Why a restored folder's current state holds nothing to save: it does not exist, or it
/// is an empty folder. `None` when it holds something (or cannot be read: then the
/// safety backup tries, and says what is wrong).
fn empty_folder(p: &Path) -> Option<String> {
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("{} does not exist", p.display()))
        }
        Ok(m) if m.is_dir() => match std::fs::read_dir(p).map(|mut rd| rd.next().is_none()) {
            Ok(true) => Some(format!("{} is empty", p.display())),
            _ => None,
        },
        _ => None,
    }
}

/// [`old_state_note`] for a step of source `name`; nothing when its state held nothing to
/// save (so the safety backup left it out).
fn replaced_note(nothing_to_save: &[(String, String)], name: &str, safety: Option<&str>) -> String {
    if nothing_to_save.iter().any(|(n, _)| n == name) {
        String::new()
    } else {
        old_state_note(safety)
    }
}

/// `; the state before is in safety backup ID` for a step that replaced data.
fn old_state_note(safety: Option<&str>) -> String {
    match safety {
        Some(id) => format!("; what it replaced is in safety backup {id}"),
        None => "; no safety backup holds what it replaced (--no-safety-backup)".to_string(),
    }
}

/// `--target-db NAME`: a database that does not exist, or holds no relation, is a
/// fine target. One that holds relations is replaced only with `--replace-target-db`,
/// and then the safety backup holds it first.
fn check_target_db(
    client: &PgClient,
    src: &Source,
    target: &str,
    opts: &RestoreOptions,
    extra_safety_dbs: &mut Vec<(String, String)>,
    out: &mut dyn Write,
) -> Result<()> {
    if !client.database_exists(target)? {
        return Ok(());
    }
    let relations = client.relation_count(target)?;
    if relations == 0 {
        writeln!(
            out,
            "  postgres {}: database {target} exists and is empty; the dump goes into it",
            src.name
        )?;
        return Ok(());
    }
    if !opts.replace_target_db {
        return Err(usage(format!(
            "--target-db {target}: database {target} already exists and holds {relations} relations; \
             restoring into it would replace some of them and leave the rest, a mix of both. Pick a name \
             that does not exist, or give --replace-target-db to replace it (it is saved in the safety backup first)"
        )));
    }
    writeln!(
        out,
        "  postgres {}: database {target} exists and holds {relations} relations; --replace-target-db: it is saved in the safety backup, then replaced",
        src.name
    )?;
    extra_safety_dbs.push((src.name.clone(), target.to_string()));
    Ok(())
}

/// Add `(source, database)` pairs to the sources' `databases` lists for the safety
/// backup (a source without a list dumps every database already).
fn add_safety_databases(cfg: &mut Config, extra: &[(String, String)]) {
    for (name, db) in extra {
        if let Some(pg) = cfg
            .sources
            .iter_mut()
            .find(|s| &s.name == name)
            .and_then(|s| s.postgres.as_mut())
        {
            if let Some(list) = pg.databases.as_mut() {
                if !list.contains(db) {
                    list.push(db.clone());
                }
            }
        }
    }
}

/// `--replace-target-db`: the target becomes exactly the dump (no table of its own left).
fn replace_pg_database(
    src: &Source,
    file: &Path,
    db: &str,
    target: &str,
    tables: usize,
    rows: u64,
    private: &Path,
) -> Result<String> {
    let pg = src.postgres.as_ref().expect("postgres source");
    let client = PgClient::new(pg, private)?;
    client.replace_database(file, db, target)?;
    let now = client.count_tables(target)?;
    let now_rows: u64 = now.iter().map(|t| t.rows).sum();
    let check = if now.len() == tables && now_rows == rows {
        "matches the dump".to_string()
    } else {
        format!("the dump holds {tables} tables, {rows} rows")
    };
    Ok(format!(
        "replaced {target} by the dump (restored beside it, then swapped in): {} tables, {now_rows} rows now ({check})",
        now.len()
    ))
}

#[allow(clippy::too_many_arguments)]
fn restore_pg_database(
    src: &Source,
    file: &Path,
    db: &str,
    target: &str,
    tables: usize,
    rows: u64,
    private: &Path,
) -> Result<(String, bool)> {
    let pg = src.postgres.as_ref().expect("postgres source");
    let client = PgClient::new(pg, private)?;
    let mode = client.restore_database(file, db, target, false)?;
    // What is there now (the application may already be writing again).
    let now = client.count_tables(target)?;
    let now_rows: u64 = now.iter().map(|t| t.rows).sum();
    let check = if now.len() == tables && now_rows == rows {
        "matches the dump".to_string()
    } else {
        format!("the dump holds {tables} tables, {rows} rows")
    };
    let detail = format!(
        "restored {} {}: {} tables, {} rows now ({check})",
        target,
        mode.describe(),
        now.len(),
        now_rows
    );
    // Only an existing database had something replaced.
    Ok((detail, mode == crate::source::postgres::RestoreMode::Clean))
}

fn restore_redis(
    src: &Source,
    rdb_path: &Path,
    summary: &RedisSummary,
    dbfilename: &str,
    out: &mut dyn Write,
) -> Result<String> {
    let r = src.redis.as_ref().expect("redis source");
    let client = RedisClient::new(r)?;
    let scan = match rdb::scan(rdb_path) {
        Ok(s) => Some(s),
        Err(e) if e.kind == rdb::ScanErrorKind::Unsupported => None,
        Err(e) => return Err(anyhow!(e).context("the archived dump.rdb is damaged")),
    };
    let data_dir = r.data_dir.as_ref().expect("checked");
    let target = data_dir.join(dbfilename);

    let running = client.ping();
    if running {
        let said = run_command_line(
            &r.stop_command,
            "stop_command",
            COMMAND_LIMIT,
            client.secrets(),
        )
        .context("stop")?;
        client.wait_down(REDIS_STOP_WAIT).context("stop")?;
        writeln!(
            out,
            "      stopped with `{}`{}",
            mask(&r.stop_command.shown(), client.secrets()),
            said_suffix(&said, client.secrets())
        )?;
    } else {
        writeln!(out, "      was not running; not stopped")?;
    }
    if let Err(e) = replace_file(rdb_path, &target) {
        if running {
            // Bring back what we stopped, with its old data.
            let _ = run_command_line(
                &r.start_command,
                "start_command",
                COMMAND_LIMIT,
                client.secrets(),
            );
        }
        return Err(e.context(format!("replacing {}", target.display())));
    }
    writeln!(
        out,
        "      replaced {} ({} bytes)",
        target.display(),
        summary.bytes
    )?;
    let t0 = now_ms();
    let said = run_command_line(
        &r.start_command,
        "start_command",
        COMMAND_LIMIT,
        client.secrets(),
    )
    .context("start")?;
    client.wait_ready(REDIS_START_WAIT).context("start")?;
    let t1 = now_ms();
    writeln!(
        out,
        "      started with `{}`{}",
        mask(&r.start_command.shown(), client.secrets()),
        said_suffix(&said, client.secrets())
    )?;
    let loaded = client.keyspace().context("counting keys after the start")?;
    let loaded_total: u64 = loaded.iter().map(|d| d.keys).sum();
    let expected = summary.total_keys();
    let verdict = match &scan {
        Some(s) => {
            let min = expected - s.dbs.values().map(|d| d.expired_at(t1)).sum::<u64>();
            let max = expected - s.dbs.values().map(|d| d.expired_at(t0)).sum::<u64>();
            if loaded_total < min {
                bail!(
                    "the server loaded {loaded_total} keys, but the snapshot holds {expected} \
                     ({min} at least, counting keys whose TTL ran out): it did not load the restored \
                     file {} completely (is it the file the server reads?)",
                    target.display()
                );
            }
            if loaded_total <= max {
                if min == max {
                    "matches the snapshot".to_string()
                } else {
                    format!("matches the snapshot's {expected} less keys whose TTL ran out")
                }
            } else {
                format!("more than the snapshot's {expected}: something wrote after the start")
            }
        }
        None => {
            // A format this version cannot read: the backup's counts, less every key with a TTL.
            let with_ttl: u64 = summary.dbs.iter().map(|d| d.expires).sum();
            if loaded_total + with_ttl < expected {
                bail!(
                    "the server loaded {loaded_total} keys, but the backup recorded {expected} \
                     ({with_ttl} of them with a TTL): it did not load the restored file {} completely",
                    target.display()
                );
            }
            format!("the backup recorded {expected}")
        }
    };
    Ok(format!(
        "{loaded_total} keys loaded in {} databases ({verdict})",
        loaded.len()
    ))
}

/// Before anything is stopped: the running server must read its snapshot from the
/// file this restore writes, `data_dir`/`dbfilename` (`CONFIG GET dir` and `dbfilename`).
/// Returns the `dbfilename`. A server that hides `CONFIG GET` is trusted to use
/// `data_dir` and `dump.rdb`.
fn check_redis_files(client: &RedisClient, name: &str, data_dir: &Path) -> Result<String> {
    let dir = client.config_get("dir");
    if let Some(dir) = dir.as_deref().filter(|d| !d.is_empty()) {
        let same = match (std::fs::canonicalize(dir), std::fs::canonicalize(data_dir)) {
            (Ok(a), Ok(b)) => a == b,
            _ => Path::new(dir) == data_dir,
        };
        if !same {
            bail!(
                "redis source '{name}': the server reads its snapshot from {dir} (CONFIG GET dir), \
                 but data_dir is {}: the restored dump.rdb would not be loaded. Set data_dir = \"{dir}\" \
                 (or the host folder mounted there); nothing was stopped or changed",
                data_dir.display()
            );
        }
    }
    match client.config_get("dbfilename") {
        Some(f) if f.is_empty() || f.contains('/') => bail!(
            "redis source '{name}': the server's dbfilename is {f:?}, not a file name in its dir; \
             nothing was stopped or changed"
        ),
        Some(f) => Ok(f),
        None => Ok("dump.rdb".to_string()),
    }
}

fn said_suffix(said: &str, secrets: &[String]) -> String {
    if said.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", mask(&said.replace('\n', " / "), secrets))
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Put `src`'s content at `target` atomically: a temp name in the same folder (owner and
/// mode of the file it replaces, else of the folder's owner and 0660), fsync, rename.
fn replace_file(src: &Path, target: &Path) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let (uid, gid, mode) = match std::fs::metadata(target) {
        Ok(m) => (m.uid(), m.gid(), m.mode() & 0o7777),
        Err(_) => {
            let d = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
            (d.uid(), d.gid(), 0o660)
        }
    };
    let tmp = crate::fsutil::temp_name(target);
    let res = (|| -> Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut input =
            std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
        std::io::copy(&mut input, &mut out)
            .with_context(|| format!("writing {}", tmp.display()))?;
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::fchown(&out, Some(uid), Some(gid))
                .with_context(|| format!("setting the owner of {}", tmp.display()))?;
        }
        out.set_permissions(std::fs::Permissions::from_mode(mode))?;
        out.sync_all()?;
        std::fs::rename(&tmp, target)
            .with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))?;
        crate::fsutil::sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

// ---- folders ----

/// `path` made absolute and with its symlinks resolved as far as it exists (a missing
/// tail is kept as written), for comparing where things really are.
fn real_path(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut tail = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(cur) {
            return tail.iter().rev().fold(real, |p, n| p.join(n));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// Our own data is never inside what a restore replaces: the backup folder (its archives,
/// the safety backup this restore takes) and the folder of a `file://` remote. A folder
/// source that holds one of them is refused before anything is changed (exit 2).
fn refuse_replacing_our_data(cfg: &Config, selected: &[&Source]) -> Result<()> {
    let mut ours: Vec<(String, PathBuf)> = vec![(
        format!(
            "the backup folder ([local] dir) {}",
            cfg.local.dir.display()
        ),
        real_path(&cfg.local.dir),
    )];
    for r in &cfg.remotes {
        if let crate::config::RemoteLocation::File(p) = &r.location {
            ours.push((
                format!("remote '{}' ({})", r.name, p.display()),
                real_path(p),
            ));
        }
    }
    for s in selected {
        let Some(target) = &s.path else { continue };
        let t = real_path(target);
        for (what, p) in &ours {
            if p.starts_with(&t) {
                return Err(usage(format!(
                    "{}: source '{}' ({}) holds {what}: restoring it would replace our own archives (the safety backup of this restore included). Move [local] dir or the remote out of {}, or restore with `pull --to DIR` and copy what you need",
                    cfg.file.display(),
                    s.name,
                    target.display(),
                    target.display()
                )));
            }
        }
    }
    Ok(())
}

fn restore_folder(src: &Source, staged: &Path) -> Result<String> {
    let target = src.path.as_ref().expect("folder source");
    // A source that was a single file: its folder in the archive holds just that file.
    let single_file = match std::fs::symlink_metadata(target) {
        Ok(m) => m.is_file(),
        Err(_) => {
            let entries: Vec<_> = std::fs::read_dir(staged)?.flatten().collect();
            entries.len() == 1
                && Some(entries[0].file_name().as_os_str()) == target.file_name()
                && entries[0].file_type().is_ok_and(|t| t.is_file())
        }
    };
    if single_file {
        let name = target
            .file_name()
            .ok_or_else(|| anyhow!("{} has no file name", target.display()))?;
        let from = staged.join(name);
        if !from.is_file() {
            bail!(
                "{} is a file here, but the archive holds a folder for it",
                target.display()
            );
        }
        replace_file(&from, target)?;
        return Ok(format!("replaced the file {}", target.display()));
    }
    let (files, bytes) = crate::live_swap::replace_dir(staged, target)?;
    Ok(format!(
        "replaced {} with {files} files ({})",
        target.display(),
        crate::fsutil::human_bytes(bytes)
    ))
}

// ---- health checks ----

/// Run every configured health check, printing one line each; returns how many failed.
pub fn run_health_checks(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    private: &Path,
    out: &mut dyn Write,
) -> Result<usize> {
    let mut failed = 0;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("pronto-offsite/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client for health checks")?;
    for c in &cfg.health_checks {
        let start = Instant::now();
        let res = loop {
            let r: Result<String> = match &c.kind {
                CheckKind::Http { url } => rt.block_on(async {
                    let resp = http
                        .get(url)
                        .send()
                        .await
                        .map_err(|e| anyhow!("{}", without_url(&e)))?;
                    let status = resp.status();
                    if status.is_success() {
                        Ok(format!("HTTP {status}"))
                    } else {
                        Err(anyhow!("HTTP {status}"))
                    }
                }),
                CheckKind::Sql {
                    sql,
                    source,
                    database,
                } => (|| {
                    let src = cfg
                        .sources
                        .iter()
                        .find(|s| &s.name == source)
                        .and_then(|s| s.postgres.as_ref())
                        .ok_or_else(|| anyhow!("no postgres source {source}"))?;
                    let client = PgClient::new(src, private)?;
                    let v = client.query(database, sql)?;
                    let first = v.lines().next().unwrap_or("").to_string();
                    Ok(if first.is_empty() {
                        "ok (no rows)".to_string()
                    } else {
                        format!("ok: {first}")
                    })
                })(),
            };
            match r {
                Ok(v) => break Ok(v),
                Err(e) if start.elapsed() >= c.timeout => break Err(e),
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        };
        match res {
            Ok(v) => writeln!(out, "      pass  {}: {v}", c.name)?,
            Err(e) => {
                failed += 1;
                writeln!(
                    out,
                    "      FAIL  {}: {e:#} (for {}s)",
                    c.name,
                    c.timeout.as_secs()
                )?;
            }
        }
    }
    Ok(failed)
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "");
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live_swap::{replace_dir, set_mtime};

    #[test]
    fn only_values() {
        let k = parse_only(&["postgres,redis".to_string(), "configs".to_string()]).unwrap();
        assert_eq!(k.len(), 3);
        assert!(parse_only(&["postgre".to_string()]).is_err());
        assert!(parse_only(&[",".to_string()]).is_err());
    }

    #[test]
    fn copy_tree_keeps_modes_links_and_mtimes() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::write(a.join("sub/f"), "hello").unwrap();
        std::fs::set_permissions(a.join("sub/f"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("sub/f", a.join("l")).unwrap();
        set_mtime(&a.join("sub/f"), 1_000_000, 5).unwrap();
        let target = t.path().join("b");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("old"), "x").unwrap();
        let (files, bytes) = replace_dir(&a, &target).unwrap();
        assert_eq!((files, bytes), (1, 5));
        assert!(!target.join("old").exists());
        let m = std::fs::metadata(target.join("sub/f")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o640);
        assert_eq!(m.mtime(), 1_000_000);
        assert_eq!(
            std::fs::read_link(target.join("l")).unwrap(),
            Path::new("sub/f")
        );
        let left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        // The staged tree was moved into place (same file system): only the target is left.
        assert_eq!(left, vec![std::ffi::OsString::from("b")], "{left:?}");
    }
}
