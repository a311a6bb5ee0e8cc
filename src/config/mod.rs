//! The TOML config: where it is found, what it may say, and errors that name the
//! file, the line, the key and what was expected (exit code 2).

pub mod codec;
pub mod drill;
pub mod encryption;
pub mod health;
pub mod hook;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod postgres;
pub mod redis;
pub mod service_keys;
pub mod services;
pub mod status;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::usage;
use crate::retention::Policy;

/// Default archive name prefix (the seed's).
pub const DEFAULT_PREFIX: &str = "pronto-app-backup";
/// Where the config is looked for when neither `--config` nor the environment names one.
pub const SEARCH_PATHS: [&str; 2] = ["./pronto-offsite.toml", "/etc/pronto-offsite/config.toml"];
/// The environment variable naming a config file.
pub const CONFIG_ENV: &str = "PRONTO_OFFSITE_CONFIG";

/// A loaded, validated config. Paths are absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    pub local: Local,
    pub retention: Policy,
    /// `[retention] max_delete_fraction`: a prune that would delete more than this share
    /// of a location's archives refuses unless `--force` (default 0.5).
    pub max_delete_fraction: f64,
    pub sources: Vec<Source>,
    pub remotes: Vec<Remote>,
    /// `[hook]`: lock wait for the scheduled entry point.
    pub hook: hook::HookConfig,
    /// `[notify]`: webhook, ping URL, command.
    pub notify: notify::NotifyConfig,
    /// `[log]`: a log file with size-based rotation.
    pub log: Option<log::LogConfig>,
    /// `[metrics]`: the Prometheus textfile.
    pub metrics: Option<metrics::MetricsConfig>,
    /// `[status]`: max age of the newest archive.
    pub status: status::StatusConfig,
    /// `[[health_checks]]`: run after a restore (HTTP URLs that must answer 2xx, SQL that must succeed).
    pub health_checks: Vec<health::HealthCheck>,
    /// `[drill]`: where `verify --restore-test` restores (a scratch server or a private instance).
    pub drill: drill::DrillConfig,
    /// `[encryption]`: age recipients archives are encrypted to, and the identity to decrypt.
    pub encryption: encryption::EncryptionConfig,
    /// `[restore] max_extract_size`: extraction (`pull --to`, restores, drills) refuses to
    /// write more file content than this (a decompression-bomb guard on top of the limit
    /// each archive's manifest implies). `None`: only the manifest's limit.
    pub max_extract_size: Option<u64>,
}

impl Config {
    /// The retention policy of remote `name`: its own `[remotes.retention]` when it has
    /// one, else `[retention]`'s (also for a name no remote has).
    pub fn policy_for(&self, name: &str) -> &Policy {
        self.remotes
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.retention.as_ref())
            .unwrap_or(&self.retention)
    }
}

#[derive(Debug, Clone)]
pub struct Local {
    /// The backup folder; tiers live under `archive/{weekly,monthly,yearly}`.
    pub dir: PathBuf,
    /// Archive name prefix, default `pronto-app-backup`.
    pub prefix: String,
    /// `compression`: "gzip" (default, `.tar.gz`) or "zstd" (`.tar.zst`).
    pub compression: codec::Codec,
    /// Compression level: gzip 1..=9 (default 6), zstd 1..=19 (default 3).
    pub level: u32,
    /// Compression threads, 0 = all cores.
    pub threads: usize,
    /// Set by `pull --host H` (see `namespace::as_host`), where `dir` is then H's own
    /// download folder `<backup folder>/hosts/H`: the backup folder proper, where this
    /// host's own backups (a restore's safety backup) go. `None` otherwise.
    pub home: Option<PathBuf>,
}

/// Which of the seed's sections a source is filed under inside the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    PostgresData,
    RedisData,
    StaticContent,
    Configs,
    DockerVolumes,
}

impl Section {
    /// The folder name inside the archive (the seed's layout).
    pub fn dir_name(self) -> &'static str {
        match self {
            Section::PostgresData => "postgres_data",
            Section::RedisData => "redis_data",
            Section::StaticContent => "static_content",
            Section::Configs => "configs",
            Section::DockerVolumes => "docker_volumes",
        }
    }
}

/// What kind of thing a source backs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    StaticContent,
    Configs,
    DockerVolumes,
    Postgres,
    Redis,
}

impl SourceKind {
    pub fn section(self) -> Section {
        match self {
            SourceKind::StaticContent => Section::StaticContent,
            SourceKind::Configs => Section::Configs,
            SourceKind::DockerVolumes => Section::DockerVolumes,
            SourceKind::Postgres => Section::PostgresData,
            SourceKind::Redis => Section::RedisData,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    /// The folder, for directory kinds.
    pub path: Option<PathBuf>,
    /// Skip unreadable or vanished files instead of failing (recorded in backup_info.txt).
    pub skip_unreadable: bool,
    /// `exclude`: gitignore-style patterns left out (see [`crate::exclude`]).
    pub exclude: Vec<String>,
    /// Fail the backup when a file changes while it is read (by default it is stored as
    /// read and listed as changed).
    pub strict: bool,
    /// For `kind = "postgres"`: how to reach the server and what to dump.
    pub postgres: Option<postgres::PgSource>,
    /// For `kind = "redis"`: how to reach the server, and how to restore into it.
    pub redis: Option<redis::RedisSource>,
}

/// The kind of a remote, from its URL scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteLocation {
    /// `file:///path` (or `file://relative/path`, relative to the config file).
    File(PathBuf),
    /// `sftp://user@host:port/path`, with the per-remote SSH options.
    Sftp(pronto_backends::sftp::SftpConfig),
    /// `s3://bucket/prefix`, with the per-remote S3 options.
    S3(pronto_backends::s3::S3Config),
    /// `gs://bucket/prefix`, with the per-remote GCS options.
    Gcs(pronto_backends::gcs::GcsConfig),
}

#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    /// The URL as written (never printed with credentials: file URLs carry none).
    pub url: String,
    pub location: RemoteLocation,
    /// Parts uploaded at once (default 4).
    pub part_concurrency: usize,
    /// Prune this remote after a successful push (default true).
    pub prune: bool,
    /// `retry_budget`: total time this remote's retries may wait in one run (default 10m).
    pub retry_budget: std::time::Duration,
    /// `host_id`: this host's namespace under the remote (`<url>/<host_id>/`); `None`
    /// (the default) keeps the flat layout.
    pub host_id: Option<String>,
    /// `bwlimit`: a rate or a timetable for this remote's transfers (`None`: unlimited).
    pub bwlimit: Option<crate::bwlimit::Schedule>,
    /// `[remotes.retention]`: this remote's own policy, replacing `[retention]`'s as a
    /// whole for this remote's prune and push planning (`None`: the global one). See
    /// [`Config::policy_for`].
    pub retention: Option<Policy>,
    /// Not a config key: `push --init-remote` writes this remote's marker although this
    /// host initialized it before and the marker is gone (see the `marker` module).
    pub init_marker: bool,
}

// ---- raw, as written in the file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    local: RawLocal,
    retention: Option<Spanned<RawRetention>>,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    remotes: Vec<RawRemote>,
    hook: Option<hook::RawHook>,
    notify: Option<notify::RawNotify>,
    log: Option<log::RawLog>,
    metrics: Option<metrics::RawMetrics>,
    status: Option<status::RawStatus>,
    #[serde(default)]
    health_checks: Vec<health::RawHealthCheck>,
    drill: Option<drill::RawDrill>,
    encryption: Option<Spanned<encryption::RawEncryption>>,
    restore: Option<RawRestore>,
}

/// `[restore]`: limits on what extraction writes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestore {
    max_extract_size: Option<Spanned<String>>,
}

/// `[retention]`: the [`Policy`] keys plus prune's own `max_delete_fraction`. The
/// policy's keys are spelled out (not `#[serde(flatten)]`) so that errors keep their
/// exact line and the list of expected keys; [`RawRetention::policy`] names every field,
/// so a key added to `Policy` fails to compile here until it is added.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    last: Option<crate::retention::Count>,
    hourly: Option<crate::retention::Count>,
    daily: Option<crate::retention::Count>,
    weekly: Option<crate::retention::Count>,
    monthly: Option<crate::retention::Count>,
    yearly: Option<crate::retention::Count>,
    within: Option<crate::retention::Span>,
    max_delete_fraction: Option<Spanned<Fraction>>,
}

impl RawRetention {
    fn policy(&self) -> Policy {
        Policy {
            last: self.last,
            hourly: self.hourly,
            daily: self.daily,
            weekly: self.weekly,
            monthly: self.monthly,
            yearly: self.yearly,
            within: self.within.clone(),
        }
    }
}

/// Most `[local] threads` accepted (each thread holds a few compression blocks).
pub const MAX_THREADS: i64 = 1024;

/// The default of `[retention] max_delete_fraction`.
pub const DEFAULT_MAX_DELETE_FRACTION: f64 = 0.5;

/// A number written as a float or an integer (`1`, `0.5`).
struct Fraction(f64);

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Fraction;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a fraction from 0 to 1")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Fraction, E> {
                Ok(Fraction(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Fraction, E> {
                Ok(Fraction(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Fraction, E> {
                Ok(Fraction(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    dir: Spanned<String>,
    prefix: Option<Spanned<String>>,
    compression: Option<Spanned<String>>,
    level: Option<Spanned<u32>>,
    threads: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    kind: Spanned<SourceKind>,
    path: Option<Spanned<String>>,
    #[serde(default)]
    skip_unreadable: bool,
    /// Gitignore-style patterns left out of the archive (folder sources).
    exclude: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    strict: bool,
    // postgres and redis sources
    url: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    user: Option<Spanned<String>>,
    databases: Option<Spanned<Vec<String>>>,
    password_file: Option<Spanned<String>>,
    command_prefix: Option<Spanned<Vec<String>>>,
    globals: Option<Spanned<bool>>,
    lock_timeout: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    stop_command: Option<Spanned<service_keys::CommandLine>>,
    start_command: Option<Spanned<service_keys::CommandLine>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    name: Spanned<String>,
    url: Spanned<String>,
    part_concurrency: Option<Spanned<usize>>,
    prune: Option<bool>,
    retry_budget: Option<Spanned<String>>,
    host_id: Option<Spanned<String>>,
    bwlimit: Option<Spanned<String>>,
    retention: Option<Spanned<RawRetention>>,
    // sftp:// remotes
    identity_file: Option<Spanned<String>>,
    known_hosts_file: Option<Spanned<String>>,
    ssh_config_file: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    accept_new_host_key: Option<Spanned<bool>>,
    remote_hash: Option<Spanned<String>>,
    prefer_aes_gcm: Option<Spanned<bool>>,
    // s3:// and gs:// remotes
    region: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    path_style: Option<Spanned<bool>>,
    storage_class: Option<Spanned<String>>,
    checksum: Option<Spanned<String>>,
    allow_http: Option<Spanned<bool>>,
    ca_bundle: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
    access_key_id: Option<Spanned<String>>,
    secret_access_key: Option<Spanned<String>>,
    session_token: Option<Spanned<String>>,
    service_account_file: Option<Spanned<String>>,
    credentials_file: Option<Spanned<String>>,
}

/// Find the config file: `--config`, else `$PRONTO_OFFSITE_CONFIG`, else
/// `./pronto-offsite.toml`, else `/etc/pronto-offsite/config.toml`.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    for p in SEARCH_PATHS {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(usage(format!(
        "no config file: give --config FILE, set ${CONFIG_ENV}, or create {} or {} (see examples/ for a starting point)",
        SEARCH_PATHS[0], SEARCH_PATHS[1]
    )))
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
    crate::secrets::refuse_if_others_can_write(path, "config file")?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let cfg = parse(&text, &abs)?;
    crate::secrets::warn_if_exposed(path, &text);
    Ok(cfg)
}

/// Parse config text; `file` is used for messages and to resolve relative paths.
pub fn parse(text: &str, file: &Path) -> Result<Config> {
    let at = Locator { text, file };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| at.line(s.start)).unwrap_or(0);
        let msg = e.message().trim().to_string();
        usage(format!("{}:{line}: {msg}", file.display()))
    })?;
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();

    let local = parse_local(&raw.local, &at, &base)?;
    let (retention, max_delete_fraction) = parse_retention(raw.retention, &at)?;
    let sources = parse_sources(&raw.sources, &at, &base)?;
    let remotes = parse_remotes(&raw.remotes, &at, &base)?;
    check_layout(&at, &raw.remotes, &local.dir, &remotes)?;

    // [hook] [notify] [log] [metrics] [status]
    let hook = hook::HookConfig::from_raw(raw.hook.as_ref(), &at, &base)?;
    let notify = notify::NotifyConfig::from_raw(raw.notify.as_ref(), &at, &base)?;
    let log = log::LogConfig::from_raw(raw.log.as_ref(), &at, &base)?;
    let metrics = metrics::MetricsConfig::from_raw(raw.metrics.as_ref(), &at, &base)?;
    let status = status::StatusConfig::from_raw(raw.status.as_ref(), &at, &base)?;
    // [[health_checks]] [drill]
    let health_checks = health::health_checks_from_raw(&raw.health_checks, &sources, &at)?;
    let drill = drill::DrillConfig::from_raw(raw.drill.as_ref(), &at, &base)?;
    // [encryption]
    let encryption = encryption::EncryptionConfig::from_raw(raw.encryption.as_ref(), &at, &base)?;

    let max_extract_size = parse_restore(raw.restore.as_ref(), &at)?;

    Ok(Config {
        file: file.to_path_buf(),
        local,
        retention,
        max_delete_fraction,
        sources,
        remotes,
        hook,
        notify,
        log,
        metrics,
        status,
        health_checks,
        drill,
        encryption,
        max_extract_size,
    })
}

/// `[local]`: the backup folder, the archive names' prefix, compression and threads.
fn parse_local(raw: &RawLocal, at: &Locator, base: &Path) -> Result<Local> {
    let dir = at.nonempty(&raw.dir, "local.dir", "a folder path")?;
    let prefix = match &raw.prefix {
        Some(p) => {
            let v = p.get_ref();
            let ok = !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(at.err(
                    p.span().start,
                    "local.prefix",
                    "letters, digits, '-', '_' or '.' only (the archive names are PREFIX-YYYYMMDD-HHMMSS.tar.gz)",
                ));
            }
            v.clone()
        }
        None => DEFAULT_PREFIX.to_string(),
    };
    let compression = match &raw.compression {
        Some(c) => codec::Codec::parse(c.get_ref()).ok_or_else(|| {
            at.err(
                c.span().start,
                "local.compression",
                "\"gzip\" (the default) or \"zstd\"",
            )
        })?,
        None => codec::Codec::Gzip,
    };
    let level = match &raw.level {
        Some(l) if !compression.levels().contains(l.get_ref()) => {
            let expected = match compression {
                codec::Codec::Gzip => "a gzip level from 1 to 9 (default 6)",
                codec::Codec::Zstd => "a zstd level from 1 to 19 (default 3)",
            };
            return Err(at.err(l.span().start, "local.level", expected));
        }
        Some(l) => *l.get_ref(),
        None => compression.default_level(),
    };
    Ok(Local {
        dir: resolve(base, dir),
        prefix,
        compression,
        level,
        threads: match &raw.threads {
            Some(t) if !(0..=MAX_THREADS).contains(t.get_ref()) => {
                return Err(at.err(
                    t.span().start,
                    "local.threads",
                    &format!("a number of compression threads from 0 (all cores) to {MAX_THREADS}"),
                ));
            }
            Some(t) => *t.get_ref() as usize,
            None => 0,
        },
        home: None,
    })
}

/// `[retention]`: the policy (the seed's when the table is absent) and the deletion cap.
fn parse_retention(raw: Option<Spanned<RawRetention>>, at: &Locator) -> Result<(Policy, f64)> {
    let mut max_delete_fraction = DEFAULT_MAX_DELETE_FRACTION;
    let retention = match raw {
        Some(p) => {
            let start = p.span().start;
            let raw_retention = p.into_inner();
            if let Some(f) = &raw_retention.max_delete_fraction {
                let v = f.get_ref().0;
                if !(0.0..=1.0).contains(&v) {
                    return Err(at.err(
                        f.span().start,
                        "retention.max_delete_fraction",
                        "a fraction from 0 to 1 (0.5 = at most half of a location's archives per prune)",
                    ));
                }
                max_delete_fraction = v;
            }
            let policy = raw_retention.policy();
            // A table with only max_delete_fraction keeps the seed's policy.
            if policy == Policy::none() && raw_retention.max_delete_fraction.is_some() {
                Policy::seed_default()
            } else {
                if let Err(msg) = policy.validate() {
                    return Err(usage(format!(
                        "{}:{}: retention: {msg}",
                        at.file.display(),
                        at.line(start)
                    )));
                }
                policy
            }
        }
        None => Policy::seed_default(),
    };
    Ok((retention, max_delete_fraction))
}

/// `[[sources]]`: each source's name (unique), kind, path or service keys, and filters.
fn parse_sources(raw: &[RawSource], at: &Locator, base: &Path) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, s) in raw.iter().enumerate() {
        let key = format!("sources[{i}]");
        let name = at.name(&s.name, &format!("{key}.name"))?;
        if let Some(first) = seen.insert(name.clone(), at.line(s.name.span().start)) {
            return Err(at.err(
                s.name.span().start,
                &format!("{key}.name"),
                &format!("a unique source name; '{name}' is already used on line {first}"),
            ));
        }
        let kind = *s.kind.get_ref();
        let path = match (&s.path, kind) {
            (Some(p), SourceKind::Postgres | SourceKind::Redis) => {
                return Err(at.err(
                    p.span().start,
                    &format!("{key}.path"),
                    "no `path` for a postgres or redis source: it is reached by `url` (the dumps are taken over the network)",
                ));
            }
            (Some(p), _) => Some(resolve(
                base,
                at.nonempty(p, &format!("{key}.path"), "a folder path")?,
            )),
            (None, SourceKind::Postgres | SourceKind::Redis) => None,
            (None, _) => {
                return Err(at.err(
                    s.kind.span().start,
                    &format!("{key}.path"),
                    "a `path = \"/folder\"` for a static_content, configs or docker_volumes source",
                ));
            }
        };
        let keys = service_keys::RawKeys {
            url: s.url.as_ref(),
            host: s.host.as_ref(),
            port: s.port.as_ref(),
            user: s.user.as_ref(),
            databases: s.databases.as_ref(),
            password_file: s.password_file.as_ref(),
            command_prefix: s.command_prefix.as_ref(),
            globals: s.globals.as_ref(),
            lock_timeout: s.lock_timeout.as_ref(),
            data_dir: s.data_dir.as_ref(),
            stop_command: s.stop_command.as_ref(),
            start_command: s.start_command.as_ref(),
        };
        let (postgres, redis) = match services::from_raw(kind, &keys, at, base, &key)? {
            services::Service::Postgres(p) => (Some(p), None),
            services::Service::Redis(r) => (None, Some(r)),
            services::Service::None => (None, None),
        };
        let exclude = s
            .exclude
            .as_ref()
            .map_or_else(Vec::new, |e| e.get_ref().clone());
        if let (Some(e), Some(p)) = (&s.exclude, &path) {
            crate::exclude::Excludes::default()
                .add(&name, p, &exclude)
                .map_err(|err| {
                    at.err(
                        e.span().start,
                        &format!("{key}.exclude"),
                        &format!("gitignore-style patterns ({err:#})"),
                    )
                })?;
        }
        sources.push(Source {
            name,
            kind,
            path,
            skip_unreadable: s.skip_unreadable,
            exclude,
            strict: s.strict,
            postgres,
            redis,
        });
    }
    Ok(sources)
}

/// `[[remotes]]`: each remote's name (unique), URL and its backend's options, and the
/// keys every remote takes (concurrency, retries, host id, bandwidth, retention).
fn parse_remotes(raw: &[RawRemote], at: &Locator, base: &Path) -> Result<Vec<Remote>> {
    let mut remotes = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("remotes[{i}]");
        let name = at.name(&r.name, &format!("{key}.name"))?;
        if let Some(first) = seen.insert(name.clone(), at.line(r.name.span().start)) {
            return Err(at.err(
                r.name.span().start,
                &format!("{key}.name"),
                &format!("a unique remote name; '{name}' is already used on line {first}"),
            ));
        }
        let url = r.url.get_ref().clone();
        let location = parse_remote_url(&url, base)
            .map_err(|msg| at.err(r.url.span().start, &format!("{key}.url"), &msg))?;
        let location = sftp_options(at, &key, r, base, location)?;
        let location = cloud_options(at, &key, r, base, location, &name)?;
        let part_concurrency = match &r.part_concurrency {
            Some(c) if *c.get_ref() == 0 || *c.get_ref() > 64 => {
                return Err(at.err(
                    c.span().start,
                    &format!("{key}.part_concurrency"),
                    "a number of parallel part uploads from 1 to 64",
                ));
            }
            Some(c) => *c.get_ref(),
            None => 4,
        };
        let retry_budget = match &r.retry_budget {
            None => crate::retry::DEFAULT_BUDGET,
            Some(b) => humantime::parse_duration(b.get_ref().trim()).map_err(|_| {
                at.err(
                    b.span().start,
                    &format!("{key}.retry_budget"),
                    "a duration like \"10m\", \"1h\" or \"0s\" (no retries)",
                )
            })?,
        };
        let host_id = match &r.host_id {
            None => None,
            Some(h) if valid_host_id(h.get_ref()) => Some(h.get_ref().clone()),
            Some(h) => {
                return Err(at.err(
                    h.span().start,
                    &format!("{key}.host_id"),
                    "a host name of letters, digits, '.', '-' and '_' (no '/', not starting with '-': `-` is how `list --all-hosts` shows the flat layout), like \"web1\"",
                ))
            }
        };
        let bwlimit = match &r.bwlimit {
            None => None,
            Some(b) => Some(crate::bwlimit::Schedule::parse(b.get_ref()).map_err(|e| {
                at.err(
                    b.span().start,
                    &format!("{key}.bwlimit"),
                    &format!("a rate like \"10MiB\" or a timetable like \"08:00-18:00 2MiB, 18:00-08:00 off\" ({e})"),
                )
            })?),
        };
        let retention = match &r.retention {
            None => None,
            Some(p) => {
                if let Some(f) = &p.get_ref().max_delete_fraction {
                    return Err(at.err(
                        f.span().start,
                        &format!("{key}.retention.max_delete_fraction"),
                        "only the policy keys here (last, hourly, daily, weekly, monthly, yearly, within): max_delete_fraction is set once, in [retention]",
                    ));
                }
                let policy = p.get_ref().policy();
                if let Err(msg) = policy.validate() {
                    return Err(usage(format!(
                        "{}:{}: {key}.retention: {msg}",
                        at.file.display(),
                        at.line(p.span().start)
                    )));
                }
                Some(policy)
            }
        };
        remotes.push(Remote {
            name,
            url,
            location,
            part_concurrency,
            prune: r.prune.unwrap_or(true),
            retry_budget,
            host_id,
            bwlimit,
            retention,
            init_marker: false,
        });
    }
    Ok(remotes)
}

/// `[restore]`: the most bytes one extraction may write (`None`: no limit).
fn parse_restore(raw: Option<&RawRestore>, at: &Locator) -> Result<Option<u64>> {
    let max_extract_size = match raw.and_then(|r| r.max_extract_size.as_ref()) {
        None => None,
        Some(v) => match log::parse_size(v.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(at.err(
                    v.span().start,
                    "restore.max_extract_size",
                    "a size like \"200GiB\", \"500GB\" or \"1TiB\" (more than 0)",
                ))
            }
        },
    };
    Ok(max_extract_size)
}

/// Refuse layouts that defeat the copies: a file:// remote that is the backup folder,
/// lies inside it or contains it (a second copy on the same disk, or archives taken for
/// each other's), and two remotes at the same place (one copy counted twice).
fn check_layout(
    at: &Locator,
    raw: &[RawRemote],
    local_dir: &Path,
    remotes: &[Remote],
) -> Result<()> {
    let local = real_path(local_dir);
    let mut places: HashMap<String, (String, usize)> = HashMap::new();
    for (i, (r, rr)) in remotes.iter().zip(raw).enumerate() {
        let key = format!("remotes[{i}].url");
        let offset = rr.url.span().start;
        let place = match &r.location {
            RemoteLocation::File(p) => {
                let root = real_path(p);
                let problem = if root == local {
                    Some("a folder other than the backup folder ([local] dir): a copy there is no second copy")
                } else if root.starts_with(&local) {
                    Some("a folder outside the backup folder ([local] dir): a remote inside it goes with it when the disk fails")
                } else if local.starts_with(&root) {
                    Some("a folder that does not contain the backup folder ([local] dir): the local archives would be taken for the remote's")
                } else {
                    None
                };
                if let Some(p) = problem {
                    return Err(at.err(
                        offset,
                        &key,
                        &format!("{p}; {} is {}", r.url, local.display()),
                    ));
                }
                format!("file://{}", root.display())
            }
            _ => r.url.trim_end_matches('/').to_string(),
        };
        let place = match &r.host_id {
            Some(h) => format!("{place} (host_id {h})"),
            None => place,
        };
        if let Some((other, line)) = places.insert(place.clone(), (r.name.clone(), at.line(offset)))
        {
            return Err(at.err(
                offset,
                &key,
                &format!(
                    "a place no other remote uses; remote '{other}' (line {line}) is already at {place}: two remotes there are one copy, not two"
                ),
            ));
        }
    }
    Ok(())
}

/// `p` made absolute with `.` and `..` resolved, through the real path (symlinks
/// resolved) of its longest existing ancestor: two spellings of one folder compare equal,
/// whether it exists yet or not.
pub(crate) fn real_path(p: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for c in std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .components()
    {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            c => lexical.push(c),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc, name| acc.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

/// Parse a remote URL into its location. Errors say what is expected.
pub fn parse_remote_url(url: &str, base: &Path) -> std::result::Result<RemoteLocation, String> {
    if url.starts_with("sftp://") {
        return pronto_backends::sftp::SftpConfig::from_url(url).map(RemoteLocation::Sftp);
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if rest.is_empty() {
            return Err("a folder after file:// (file:///mnt/nas/pronto)".into());
        }
        return Ok(RemoteLocation::File(resolve(base, rest)));
    }
    if url.starts_with("s3://") {
        return pronto_backends::s3::S3Config::from_url(url).map(RemoteLocation::S3);
    }
    if url.starts_with("gs://") {
        return pronto_backends::gcs::GcsConfig::from_url(url).map(RemoteLocation::Gcs);
    }
    Err(
        "a URL of the form file:///path, s3://bucket/prefix, gs://bucket/prefix or sftp://user@host/path"
            .into(),
    )
}

pub(crate) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Turns byte offsets into `file:line: key: expected …` messages.
pub(crate) struct Locator<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Locator<'_> {
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    pub(crate) fn err(&self, offset: usize, key: &str, expected: &str) -> anyhow::Error {
        usage(format!(
            "{}:{}: {key}: expected {expected}",
            self.file.display(),
            self.line(offset)
        ))
    }

    pub(crate) fn nonempty<'s>(
        &self,
        v: &'s Spanned<String>,
        key: &str,
        what: &str,
    ) -> Result<&'s str> {
        if v.get_ref().trim().is_empty() {
            return Err(self.err(v.span().start, key, &format!("{what}, not an empty string")));
        }
        Ok(v.get_ref())
    }

    fn name(&self, v: &Spanned<String>, key: &str) -> Result<String> {
        let s = v.get_ref();
        // `.` and `..` would name the folder itself or its parent inside the archive.
        let ok = !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(self.err(
                v.span().start,
                key,
                "a name of letters, digits, '-', '_' or '.' (not `.` or `..`)",
            ));
        }
        Ok(s.clone())
    }
}

/// Apply a remote's SSH keys (`identity_file`, `known_hosts_file`, `ssh_config_file`,
/// `connect_timeout`, `accept_new_host_key`, `remote_hash`, `prefer_aes_gcm`) to its sftp:// location;
/// on any other remote they are an error, not silently ignored.
fn sftp_options(
    at: &Locator,
    key: &str,
    r: &RawRemote,
    base: &Path,
    location: RemoteLocation,
) -> Result<RemoteLocation> {
    use pronto_backends::sftp::RemoteHash;
    let paths = [
        ("identity_file", &r.identity_file),
        ("known_hosts_file", &r.known_hosts_file),
        ("ssh_config_file", &r.ssh_config_file),
        ("connect_timeout", &r.connect_timeout),
        ("remote_hash", &r.remote_hash),
    ];
    let RemoteLocation::Sftp(mut cfg) = location else {
        let set = paths
            .iter()
            .find_map(|(name, v)| v.as_ref().map(|v| (*name, v.span().start)))
            .or_else(|| {
                r.accept_new_host_key
                    .as_ref()
                    .map(|v| ("accept_new_host_key", v.span().start))
            })
            .or_else(|| {
                r.prefer_aes_gcm
                    .as_ref()
                    .map(|v| ("prefer_aes_gcm", v.span().start))
            });
        if let Some((name, start)) = set {
            return Err(at.err(
                start,
                &format!("{key}.{name}"),
                &format!("no `{name}` here: it applies to sftp:// remotes only"),
            ));
        }
        return Ok(location);
    };
    let file = |v: &Option<Spanned<String>>, name: &str| -> Result<Option<PathBuf>> {
        let Some(v) = v else { return Ok(None) };
        let s = at.nonempty(v, &format!("{key}.{name}"), "a file path")?;
        Ok(Some(match s.strip_prefix("~/") {
            Some(rest) => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(rest),
                None => resolve(base, s),
            },
            None => resolve(base, s),
        }))
    };
    cfg.identity_file = file(&r.identity_file, "identity_file")?;
    cfg.known_hosts_file = file(&r.known_hosts_file, "known_hosts_file")?;
    cfg.ssh_config_file = file(&r.ssh_config_file, "ssh_config_file")?;
    if let Some(t) = &r.connect_timeout {
        match humantime::parse_duration(t.get_ref()) {
            Ok(d) if d >= std::time::Duration::from_secs(1) => cfg.connect_timeout = Some(d),
            _ => {
                return Err(at.err(
                    t.span().start,
                    &format!("{key}.connect_timeout"),
                    "a duration of at least one second, like \"10s\" or \"1m\"",
                ))
            }
        }
    }
    cfg.accept_new_host_key = r.accept_new_host_key.as_ref().is_some_and(|v| *v.get_ref());
    cfg.prefer_aes_gcm = r.prefer_aes_gcm.as_ref().is_none_or(|v| *v.get_ref());
    if let Some(h) = &r.remote_hash {
        cfg.remote_hash = match h.get_ref().as_str() {
            "auto" => RemoteHash::Auto,
            "exec" => RemoteHash::Exec,
            "read" => RemoteHash::ReadBack,
            _ => {
                return Err(at.err(
                    h.span().start,
                    &format!("{key}.remote_hash"),
                    "\"auto\" (hash on the server where a command can run there, else read the file back; the default), \"exec\" (hash on the server, warn when it cannot) or \"read\" (always read the file back)",
                ))
            }
        };
    }
    Ok(RemoteLocation::Sftp(cfg))
}

/// Apply a remote's object-store keys to its s3:// or gs:// location: `region`,
/// `path_style`, `profile`, `access_key_id`, `secret_access_key`,
/// `session_token` (s3 only); `service_account_file` / `credentials_file` (gs only);
/// `endpoint`, `storage_class`, `checksum`, `allow_http` (both). On any other remote they are an
/// error, not silently ignored. Keys written in the file are accepted with a warning.
fn cloud_options(
    at: &Locator,
    key: &str,
    r: &RawRemote,
    base: &Path,
    location: RemoteLocation,
    name: &str,
) -> Result<RemoteLocation> {
    let span = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.span().start);
    let bspan = |v: &Option<Spanned<bool>>| v.as_ref().map(|v| v.span().start);
    let s3_only = [
        ("region", span(&r.region)),
        ("path_style", bspan(&r.path_style)),
        ("profile", span(&r.profile)),
        ("access_key_id", span(&r.access_key_id)),
        ("secret_access_key", span(&r.secret_access_key)),
        ("session_token", span(&r.session_token)),
    ];
    let gs_only = [
        ("service_account_file", span(&r.service_account_file)),
        ("credentials_file", span(&r.credentials_file)),
    ];
    let both = [
        ("endpoint", span(&r.endpoint)),
        ("storage_class", span(&r.storage_class)),
        ("checksum", span(&r.checksum)),
        ("allow_http", bspan(&r.allow_http)),
        ("ca_bundle", span(&r.ca_bundle)),
    ];
    let refuse = |keys: &[(&str, Option<usize>)], applies: &str| -> Result<()> {
        if let Some((k, Some(start))) = keys.iter().find(|(_, s)| s.is_some()) {
            return Err(at.err(
                *start,
                &format!("{key}.{k}"),
                &format!("no `{k}` here: it applies to {applies} remotes only"),
            ));
        }
        Ok(())
    };
    let text = |v: &Option<Spanned<String>>, k: &str, what: &str| -> Result<Option<String>> {
        match v {
            Some(v) => Ok(Some(
                at.nonempty(v, &format!("{key}.{k}"), what)?.to_string(),
            )),
            None => Ok(None),
        }
    };
    // A key error from the backend's own validation, at the key's line.
    let at_key = |(k, expected): (&str, String)| {
        let start = s3_only
            .iter()
            .chain(&gs_only)
            .chain(&both)
            .find(|(n, _)| *n == k)
            .and_then(|(_, s)| *s)
            .unwrap_or(r.url.span().start);
        at.err(start, &format!("{key}.{k}"), &expected)
    };
    // `ca_bundle`: a PEM file of CA certificates, read and checked now (exit 2 when bad).
    let ca_bundle = || -> Result<Option<pronto_backends::objstore::CaBundle>> {
        let Some(v) = &r.ca_bundle else {
            return Ok(None);
        };
        {
            let p = at.nonempty(v, &format!("{key}.ca_bundle"), "a PEM file path")?;
            let p = match p.strip_prefix("~/").zip(std::env::var_os("HOME")) {
                Some((rest, home)) => PathBuf::from(home).join(rest),
                None => resolve(base, p),
            };
            Ok(Some(
                pronto_backends::objstore::CaBundle::load(&p).map_err(|e| {
                    at.err(
                        v.span().start,
                        &format!("{key}.ca_bundle"),
                        &format!("a readable PEM file of one or more CA certificates ({e})"),
                    )
                })?,
            ))
        }
    };
    match location {
        RemoteLocation::S3(mut cfg) => {
            refuse(&gs_only, "gs://")?;
            cfg.ca_bundle = ca_bundle()?;
            cfg.region = text(&r.region, "region", "an AWS region")?;
            cfg.endpoint = text(&r.endpoint, "endpoint", "a URL")?;
            cfg.path_style = r.path_style.as_ref().map(|v| *v.get_ref());
            cfg.storage_class = text(&r.storage_class, "storage_class", "a storage class")?;
            if let Some(c) = &r.checksum {
                cfg.checksum = c.get_ref().parse().map_err(|expected: String| {
                    at.err(c.span().start, &format!("{key}.checksum"), &expected)
                })?;
            }
            cfg.allow_http = r.allow_http.as_ref().is_some_and(|v| *v.get_ref());
            cfg.profile = text(&r.profile, "profile", "an AWS profile name")?;
            cfg.access_key_id = text(&r.access_key_id, "access_key_id", "an access key id")?;
            cfg.secret_access_key = text(
                &r.secret_access_key,
                "secret_access_key",
                "a secret access key",
            )?;
            cfg.session_token = text(&r.session_token, "session_token", "a session token")?;
            cfg.validate().map_err(at_key)?;
            if cfg.has_static_keys() {
                tracing::warn!(
                    "remote {name}: access keys written in {} are discouraged (anyone who can read the file can use them); prefer the AWS credential chain: environment, a profile in ~/.aws, SSO, or an instance/container role",
                    at.file.display()
                );
            }
            Ok(RemoteLocation::S3(cfg))
        }
        RemoteLocation::Gcs(mut cfg) => {
            refuse(&s3_only, "s3://")?;
            cfg.ca_bundle = ca_bundle()?;
            if let (Some(_), Some(c)) = (&r.service_account_file, &r.credentials_file) {
                return Err(at.err(
                    c.span().start,
                    &format!("{key}.credentials_file"),
                    "either service_account_file or credentials_file (the same key), not both",
                ));
            }
            let (k, v) = match &r.credentials_file {
                Some(_) => ("credentials_file", &r.credentials_file),
                None => ("service_account_file", &r.service_account_file),
            };
            cfg.service_account_file = text(v, k, "a file path")?.map(|s| {
                match s.strip_prefix("~/").zip(std::env::var_os("HOME")) {
                    Some((rest, home)) => PathBuf::from(home).join(rest),
                    None => resolve(base, &s),
                }
            });
            cfg.endpoint = text(&r.endpoint, "endpoint", "a URL")?;
            cfg.storage_class = text(&r.storage_class, "storage_class", "a storage class")?;
            if let Some(c) = &r.checksum {
                cfg.checksum = c.get_ref().parse().map_err(|expected: String| {
                    at.err(c.span().start, &format!("{key}.checksum"), &expected)
                })?;
            }
            cfg.allow_http = r.allow_http.as_ref().is_some_and(|v| *v.get_ref());
            cfg.validate().map_err(at_key)?;
            Ok(RemoteLocation::Gcs(cfg))
        }
        other => {
            refuse(&s3_only, "s3://")?;
            refuse(&gs_only, "gs://")?;
            refuse(&both, "s3:// and gs://")?;
            Ok(other)
        }
    }
}

/// Whether `id` can name a host's namespace: one path segment of letters, digits,
/// `.`, `-`, `_`, not `.` or `..`, and not starting with `-` (that would be `-`, how
/// the flat layout is shown, or read as an option by `pull --host`).
pub fn valid_host_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}
