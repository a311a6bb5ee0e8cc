//! `verify <id> --restore-test`: a disaster-recovery drill a cron job can run weekly.
//!
//! Pull the archive (verified against its manifest), extract it into
//! `<dir>/.drill-<id>-<pid>/`, then prove that it restores:
//!
//! - every PostgreSQL dump is restored into a throwaway database, on the scratch
//!   server of `[drill] postgres_url` or on a private instance started for the drill
//!   (initdb in a temp folder; as root it runs as the `postgres` user), and every
//!   table's row count is compared with the manifest, which recorded them in the
//!   dump's own snapshot: they must be equal;
//! - every RDB snapshot is read through (CRC-64, key counts compared with the
//!   manifest), then loaded by a throwaway redis-server whose key counts are compared
//!   too (less keys whose TTL ran out since the backup);
//! - every folder source's files, symlinks and bytes are counted and compared.
//!
//! Pass/fail is reported with the numbers; any mismatch exits 4. Throwaway
//! databases, servers and folders are removed in every case.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::catalog::top_folder;
pub use crate::config::drill::DrillConfig;
use crate::config::Config;
use crate::error::Exit;
use crate::manifest::{Manifest, Section};
use crate::source::postgres::{PgClient, PgSource};
use crate::source::rdb;
use crate::source::redis::RedisClient;
use crate::source::scratch::{find_pg_bin_dir, PrivatePostgres, PrivateRedis};
use crate::source::{remove_stale_work_dirs, WorkDir};

/// Drill folders in the backup folder start with this.
pub const DRILL_PREFIX: &str = ".drill-";

/// `verify --restore-test`'s flags.
#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    pub id: String,
    pub remote: Option<String>,
    pub json: bool,
}

/// The drill's findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub archive: String,
    pub id: String,
    pub passed: bool,
    /// Where the PostgreSQL dumps were restored: `scratch server …` or `private PostgreSQL …`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_server: Option<String>,
    pub postgres: Vec<PgResult>,
    pub redis: Vec<RedisResult>,
    pub folders: Vec<FolderResult>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PgResult {
    pub source: String,
    pub database: String,
    pub restored_into: String,
    pub tables: usize,
    pub rows_expected: u64,
    pub rows_restored: u64,
    pub dump_bytes_expected: u64,
    pub dump_bytes: u64,
    /// Tables whose counts differ (or that are missing on one side).
    pub mismatches: Vec<TableMismatch>,
    /// Large objects and sequence values that match the dump's table of contents.
    pub extras_checked: Vec<String>,
    /// Large objects or sequence values that do not.
    pub extras_mismatches: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableMismatch {
    pub schema: String,
    pub table: String,
    pub expected: Option<u64>,
    pub restored: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisResult {
    pub source: String,
    pub rdb_bytes: u64,
    pub checksum_verified: bool,
    pub dbs: Vec<RedisDbResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub passed: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisDbResult {
    pub db: u32,
    /// Keys recorded in the manifest.
    pub expected: u64,
    /// Keys counted in the RDB file.
    pub snapshot: u64,
    /// Keys the throwaway server holds after loading it.
    pub loaded: u64,
    /// Keys whose TTL ran out between the backup and the load (not loaded by Redis).
    pub expired: u64,
    pub passed: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FolderResult {
    pub source: String,
    pub section: String,
    /// What the manifest says the archive holds.
    pub expected: TreeCounts,
    /// What the extracted archive holds.
    pub found: TreeCounts,
    pub passed: bool,
}

/// Files, symlinks and bytes of a folder source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TreeCounts {
    pub files: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Run the drill; returns the exit code (0 pass, 4 mismatch).
pub fn run(cfg: &Config, opts: &DrillOptions, out: &mut dyn Write) -> Result<Exit> {
    let rt = crate::remotes::runtime()?;
    let mut sink = std::io::sink();
    let pull_out: &mut dyn Write = if opts.json { &mut sink } else { out };
    let path = rt.block_on(crate::fetch::run_for_extract(
        cfg,
        &opts.id,
        opts.remote.as_deref(),
        pull_out,
    ))?;
    drop(rt);
    // An encrypted archive: its identity is checked here, before anything is written.
    let xopts = crate::extract::ExtractOptions::for_archive(cfg, &path)?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = Manifest::read_unsealed(
        &path.with_file_name(Manifest::file_name_for(&file)),
        xopts.identities.as_ref(),
    )?;

    remove_stale_work_dirs(&cfg.local.dir, DRILL_PREFIX);
    let work = WorkDir::create(cfg.local.dir.join(format!(
        "{DRILL_PREFIX}{}-{}",
        manifest.id,
        std::process::id()
    )))?;
    let unpacked = work.path().join("archive");
    crate::extract::extract_with(&path, &unpacked, &xopts)
        .map_err(|e| crate::error::verification(format!("{e:#}")))
        .with_context(|| format!("extracting {}", path.display()))?;
    let top = unpacked.join(top_folder(&cfg.local.prefix, &manifest.file));

    let mut report = Report {
        archive: manifest.file.clone(),
        id: manifest.id.clone(),
        ..Report::default()
    };
    if !opts.json {
        writeln!(out, "restore test of {}", manifest.file)?;
    }

    // PostgreSQL.
    if manifest.postgres.iter().any(|p| !p.databases.is_empty()) {
        drill_postgres(
            cfg,
            &manifest,
            &top,
            work.path(),
            &mut report,
            if opts.json { None } else { Some(&mut *out) },
        )?;
    }
    // Redis.
    for r in &manifest.redis {
        let res = drill_redis(cfg, &manifest, r, &top, work.path())?;
        if !opts.json {
            print_redis(out, &res)?;
        }
        report.redis.push(res);
    }
    // Folders.
    for s in &manifest.sources {
        if matches!(s.section, Section::PostgresData | Section::RedisData) {
            continue;
        }
        let mut c = (0u64, 0u64, 0u64);
        count_tree(&top.join(&s.archive_path), &mut c);
        let res = FolderResult {
            source: s.name.clone(),
            section: s.section.dir_name().to_string(),
            expected: TreeCounts {
                files: s.files,
                symlinks: s.symlinks,
                bytes: s.bytes,
            },
            found: TreeCounts {
                files: c.0,
                symlinks: c.1,
                bytes: c.2,
            },
            passed: s.files == c.0 && s.symlinks == c.1 && s.bytes == c.2,
        };
        if !opts.json {
            writeln!(
                out,
                "  {} {}: {} files, {} symlinks, {} bytes (manifest: {}, {}, {}): {}",
                res.section,
                res.source,
                c.0,
                c.1,
                c.2,
                s.files,
                s.symlinks,
                s.bytes,
                verdict(res.passed)
            )?;
        }
        report.folders.push(res);
    }

    report.passed = report.postgres.iter().all(|p| p.passed)
        && report.redis.iter().all(|r| r.passed)
        && report.folders.iter().all(|f| f.passed);
    let checks = report.postgres.len() + report.redis.len() + report.folders.len();
    let failed = report.postgres.iter().filter(|p| !p.passed).count()
        + report.redis.iter().filter(|r| !r.passed).count()
        + report.folders.iter().filter(|f| !f.passed).count();
    drop(work);
    if opts.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else if report.passed {
        writeln!(out, "restore test PASSED ({checks} checks)")?;
    } else {
        writeln!(out, "restore test FAILED ({failed} of {checks} checks)")?;
    }
    if report.passed {
        Ok(Exit::Ok)
    } else {
        tracing::error!(
            "restore test of {} failed: {failed} of {checks} checks",
            manifest.file
        );
        Ok(Exit::VerifyFailed)
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Files, symlinks and bytes under `dir` (the root folder itself not counted).
fn count_tree(dir: &Path, c: &mut (u64, u64, u64)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.file_type().is_symlink() {
            c.1 += 1;
        } else if m.is_dir() {
            count_tree(&e.path(), c);
        } else if m.is_file() {
            c.0 += 1;
            c.2 += m.len();
        }
    }
}

fn drill_postgres(
    cfg: &Config,
    manifest: &Manifest,
    top: &Path,
    work: &Path,
    report: &mut Report,
    mut out: Option<&mut dyn Write>,
) -> Result<()> {
    // The server: scratch or private.
    let private;
    let (src, bin_dir, scratch): (PgSource, Option<PathBuf>, bool) = match &cfg.drill.postgres {
        Some(s) => (s.clone(), None, true),
        None => {
            let bin = find_pg_bin_dir(cfg.drill.postgres_bin_dir.as_deref()).ok_or_else(|| {
                anyhow!(
                    "the restore test needs a PostgreSQL server: configure [drill] postgres_url (a scratch server), or install the PostgreSQL server binaries (initdb; Debian: postgresql) for a private instance{}",
                    cfg.drill
                        .postgres_bin_dir
                        .as_ref()
                        .map(|d| format!(" ({} has no initdb and postgres)", d.display()))
                        .unwrap_or_default()
                )
            })?;
            private = PrivatePostgres::start(&bin)?;
            (private.source().clone(), Some(bin), false)
        }
    };
    let mut client = PgClient::new(&src, work)?.with_bin_dir(bin_dir.clone());
    if !scratch {
        // Our own private instance: judge only the archive, not this shell's PG* variables.
        client = client.throwaway();
    }
    let version = client.server_version()?;
    let server = if scratch {
        format!("scratch server {} (PostgreSQL {version})", src.describe())
    } else {
        format!(
            "private PostgreSQL {version} instance on 127.0.0.1 ({})",
            bin_dir
                .as_deref()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        )
    };
    if let Some(o) = out.as_deref_mut() {
        writeln!(o, "  restoring the PostgreSQL dumps on a {server}")?;
    }
    report.postgres_server = Some(server);
    let mut n = 0;
    for p in &manifest.postgres {
        let folder = top.join(Section::PostgresData.dir_name()).join(&p.source);
        // Roles first on a private instance (a scratch server keeps its own).
        let mut plain = scratch;
        if !scratch {
            if let Some(g) = &p.globals {
                match client.restore_globals(&folder.join(g), false) {
                    Ok(_) => {}
                    Err(e) => {
                        plain = true;
                        if let Some(o) = out.as_deref_mut() {
                            writeln!(o, "  postgres {}: roles could not be loaded ({e:#}); restoring without owners", p.source)?;
                        }
                    }
                }
            }
        }
        for d in &p.databases {
            n += 1;
            let throwaway = format!("pronto_drill_{}_{n}", std::process::id());
            let dump = folder.join(&d.file);
            let mut res = PgResult {
                source: p.source.clone(),
                database: d.name.clone(),
                restored_into: throwaway.clone(),
                tables: d.tables.len(),
                rows_expected: d.total_rows(),
                dump_bytes_expected: d.bytes,
                dump_bytes: std::fs::metadata(&dump).map(|m| m.len()).unwrap_or(0),
                ..PgResult::default()
            };
            let outcome = client
                .restore_database(&dump, &d.name, &throwaway, plain)
                .and_then(|_| client.count_tables(&throwaway))
                .and_then(|t| {
                    let (ok, bad) = client.check_dump_extras(&dump, &throwaway, work)?;
                    res.extras_checked = ok;
                    res.extras_mismatches = bad;
                    Ok(t)
                });
            if let Err(e) = client.drop_database(&throwaway) {
                tracing::warn!("could not drop the throwaway database {throwaway}: {e:#}");
            }
            match outcome {
                Ok(tables) => {
                    res.rows_restored = tables.iter().map(|t| t.rows).sum();
                    for t in &d.tables {
                        let got = tables
                            .iter()
                            .find(|x| x.schema == t.schema && x.table == t.table)
                            .map(|x| x.rows);
                        if got != Some(t.rows) {
                            res.mismatches.push(TableMismatch {
                                schema: t.schema.clone(),
                                table: t.table.clone(),
                                expected: Some(t.rows),
                                restored: got,
                            });
                        }
                    }
                    for t in &tables {
                        if !d
                            .tables
                            .iter()
                            .any(|x| x.schema == t.schema && x.table == t.table)
                        {
                            res.mismatches.push(TableMismatch {
                                schema: t.schema.clone(),
                                table: t.table.clone(),
                                expected: None,
                                restored: Some(t.rows),
                            });
                        }
                    }
                    res.passed = res.mismatches.is_empty()
                        && res.extras_mismatches.is_empty()
                        && res.dump_bytes == res.dump_bytes_expected;
                }
                Err(e) => {
                    res.error = Some(format!("{e:#}"));
                }
            }
            if let Some(o) = out.as_deref_mut() {
                print_pg(o, &res)?;
            }
            report.postgres.push(res);
        }
    }
    Ok(())
}

fn print_pg(out: &mut dyn Write, r: &PgResult) -> Result<()> {
    writeln!(
        out,
        "  postgres {} / {}: {} tables, {} rows restored into {} (manifest: {} rows): {}",
        r.source,
        r.database,
        r.tables,
        r.rows_restored,
        r.restored_into,
        r.rows_expected,
        verdict(r.passed)
    )?;
    if r.dump_bytes != r.dump_bytes_expected {
        writeln!(
            out,
            "      the dump has {} bytes, the manifest says {}",
            r.dump_bytes, r.dump_bytes_expected
        )?;
    }
    if let Some(e) = &r.error {
        writeln!(out, "      restore failed: {e}")?;
    }
    for c in &r.extras_checked {
        writeln!(out, "      {c}")?;
    }
    for m in &r.extras_mismatches {
        writeln!(out, "      MISMATCH {m}")?;
    }
    for m in &r.mismatches {
        let show = |v: Option<u64>| v.map_or("absent".to_string(), |n| format!("{n} rows"));
        writeln!(
            out,
            "      {}.{}: manifest {}, restored {}",
            m.schema,
            m.table,
            show(m.expected),
            show(m.restored)
        )?;
    }
    Ok(())
}

fn drill_redis(
    cfg: &Config,
    _manifest: &Manifest,
    r: &crate::manifest::RedisSummary,
    top: &Path,
    work: &Path,
) -> Result<RedisResult> {
    let path = top
        .join(Section::RedisData.dir_name())
        .join(&r.source)
        .join(&r.file);
    let mut res = RedisResult {
        source: r.source.clone(),
        rdb_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        ..RedisResult::default()
    };
    let scan = match rdb::scan(&path) {
        Ok(s) => Some(s),
        Err(e) if e.kind == rdb::ScanErrorKind::Unsupported => None,
        Err(e) => {
            res.error = Some(format!("{e}"));
            return Ok(res);
        }
    };
    res.checksum_verified = scan.as_ref().is_some_and(|s| s.checksum_verified);
    let server = cfg.drill.redis_server.as_deref().unwrap_or("redis-server");
    // No server to load it with: the drill cannot run (exit 1), which is not a bad backup.
    let runs = std::process::Command::new(server)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !runs {
        return Err(anyhow!(
            "the restore test needs redis-server to load the Redis snapshot; `{server}` does not run (install redis-server, or set [drill] redis_server)"
        ));
    }
    let t0 = chrono::Utc::now().timestamp_millis();
    let private = match PrivateRedis::start(work.join(format!("redis-{}", r.source)), &path, server)
    {
        Ok(p) => p,
        Err(e) => {
            res.error = Some(format!("{e:#}"));
            return Ok(res);
        }
    };
    let client = RedisClient::new(private.source())?;
    let loaded = client.keyspace()?;
    let t1 = chrono::Utc::now().timestamp_millis();
    drop(private);
    let mut dbs: Vec<u32> = r.dbs.iter().map(|d| d.db).collect();
    dbs.extend(loaded.iter().map(|d| d.db));
    if let Some(s) = &scan {
        dbs.extend(s.dbs.keys());
    }
    dbs.sort();
    dbs.dedup();
    let exact = r.counted_from == "rdb";
    for db in dbs {
        let expected = r.dbs.iter().find(|d| d.db == db).map_or(0, |d| d.keys);
        let got = loaded.iter().find(|d| d.db == db).map_or(0, |d| d.keys);
        let (snapshot, lo_expired, hi_expired) = match scan.as_ref().and_then(|s| s.dbs.get(&db)) {
            Some(d) => (d.keys, d.expired_at(t0), d.expired_at(t1)),
            None if scan.is_some() => (0, 0, 0),
            None => (expected, 0, 0),
        };
        let load_ok = got + lo_expired <= snapshot && got + hi_expired >= snapshot;
        let passed = if exact {
            expected == snapshot && load_ok
        } else {
            load_ok
        };
        res.dbs.push(RedisDbResult {
            db,
            expected,
            snapshot,
            loaded: got,
            expired: snapshot.saturating_sub(got),
            passed,
        });
    }
    res.passed = res.dbs.iter().all(|d| d.passed);
    Ok(res)
}

fn print_redis(out: &mut dyn Write, r: &RedisResult) -> Result<()> {
    let total = |f: fn(&RedisDbResult) -> u64| r.dbs.iter().map(f).sum::<u64>();
    writeln!(
        out,
        "  redis {}: snapshot {} keys in {} databases ({} bytes{}), loaded {} (manifest: {}): {}",
        r.source,
        total(|d| d.snapshot),
        r.dbs.len(),
        r.rdb_bytes,
        if r.checksum_verified {
            ", CRC-64 ok"
        } else {
            ""
        },
        total(|d| d.loaded),
        total(|d| d.expected),
        verdict(r.passed)
    )?;
    if let Some(e) = &r.error {
        writeln!(out, "      the snapshot does not load: {e}")?;
    }
    for d in &r.dbs {
        if !d.passed || d.expired > 0 {
            writeln!(
                out,
                "      db{}: manifest {}, snapshot {}, loaded {}{}",
                d.db,
                d.expected,
                d.snapshot,
                d.loaded,
                if d.expired > 0 {
                    format!(" ({} expired since the backup)", d.expired)
                } else {
                    String::new()
                }
            )?;
        }
    }
    Ok(())
}
