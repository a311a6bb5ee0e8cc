//! The TOML config: where it is found, what it may say, and errors that name the
//! file, the line, the key and what was expected (exit code 2).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use crate::error::usage;
use crate::manifest::Section;
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
    pub sources: Vec<Source>,
    pub remotes: Vec<Remote>,
}

#[derive(Debug, Clone)]
pub struct Local {
    /// The backup folder; tiers live under `archive/{weekly,monthly,yearly}`.
    pub dir: PathBuf,
    /// Archive name prefix, default `pronto-app-backup`.
    pub prefix: String,
    /// gzip level 1..=9 (default 6).
    pub level: u32,
    /// Compression threads, 0 = all cores.
    pub threads: usize,
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
}

/// The kind of a remote, from its URL scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteLocation {
    /// `file:///path` (or `file://relative/path`, relative to the config file).
    File(PathBuf),
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
}

// ---- raw, as written in the file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    local: RawLocal,
    retention: Option<Spanned<Policy>>,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    remotes: Vec<RawRemote>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    dir: Spanned<String>,
    prefix: Option<Spanned<String>>,
    level: Option<Spanned<u32>>,
    threads: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    kind: Spanned<SourceKind>,
    path: Option<Spanned<String>>,
    #[serde(default)]
    skip_unreadable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    name: Spanned<String>,
    url: Spanned<String>,
    part_concurrency: Option<Spanned<usize>>,
    prune: Option<bool>,
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
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse(&text, &abs)
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

    // [local]
    let dir = at.nonempty(&raw.local.dir, "local.dir", "a folder path")?;
    let prefix = match &raw.local.prefix {
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
    let level = match &raw.local.level {
        Some(l) if !(1..=9).contains(l.get_ref()) => {
            return Err(at.err(l.span().start, "local.level", "a gzip level from 1 to 9"));
        }
        Some(l) => *l.get_ref(),
        None => 6,
    };
    let local = Local {
        dir: resolve(&base, dir),
        prefix,
        level,
        threads: raw.local.threads.unwrap_or(0),
    };

    // [retention]
    let retention = match raw.retention {
        Some(p) => {
            let start = p.span().start;
            let policy = p.into_inner();
            if let Err(msg) = policy.validate() {
                return Err(usage(format!(
                    "{}:{}: retention: {msg}",
                    file.display(),
                    at.line(start)
                )));
            }
            policy
        }
        None => Policy::seed_default(),
    };

    // [[sources]]
    let mut sources = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, s) in raw.sources.iter().enumerate() {
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
            (Some(p), _) => Some(resolve(&base, at.nonempty(p, &format!("{key}.path"), "a folder path")?)),
            (None, SourceKind::Postgres | SourceKind::Redis) => None,
            (None, _) => {
                return Err(at.err(
                    s.kind.span().start,
                    &format!("{key}.path"),
                    "a `path = \"/folder\"` for a static_content, configs or docker_volumes source",
                ));
            }
        };
        if matches!(kind, SourceKind::Postgres | SourceKind::Redis) {
            return Err(at.err(
                s.kind.span().start,
                &format!("{key}.kind"),
                "static_content, configs or docker_volumes: postgres and redis sources are not supported by this version yet",
            ));
        }
        sources.push(Source {
            name,
            kind,
            path,
            skip_unreadable: s.skip_unreadable,
        });
    }

    // [[remotes]]
    let mut remotes = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, r) in raw.remotes.iter().enumerate() {
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
        let location = parse_remote_url(&url, &base)
            .map_err(|msg| at.err(r.url.span().start, &format!("{key}.url"), &msg))?;
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
        remotes.push(Remote {
            name,
            url,
            location,
            part_concurrency,
            prune: r.prune.unwrap_or(true),
        });
    }

    Ok(Config {
        file: file.to_path_buf(),
        local,
        retention,
        sources,
        remotes,
    })
}

/// Parse a remote URL into its location. Errors say what is expected.
pub fn parse_remote_url(url: &str, base: &Path) -> std::result::Result<RemoteLocation, String> {
    if let Some(rest) = url.strip_prefix("file://") {
        if rest.is_empty() {
            return Err("a folder after file:// (file:///mnt/nas/pronto)".into());
        }
        return Ok(RemoteLocation::File(resolve(base, rest)));
    }
    let scheme = url.split("://").next().unwrap_or("");
    match scheme {
        "s3" | "gs" | "sftp" => Err(format!(
            "a file:// URL: {scheme}:// remotes are not supported by this version yet"
        )),
        _ => Err("a URL of the form file:///path (s3://, gs:// and sftp:// are planned)".into()),
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Turns byte offsets into `file:line: key: expected …` messages.
struct Locator<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Locator<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    fn err(&self, offset: usize, key: &str, expected: &str) -> anyhow::Error {
        usage(format!(
            "{}:{}: {key}: expected {expected}",
            self.file.display(),
            self.line(offset)
        ))
    }

    fn nonempty<'s>(&self, v: &'s Spanned<String>, key: &str, what: &str) -> Result<&'s str> {
        if v.get_ref().trim().is_empty() {
            return Err(self.err(v.span().start, key, &format!("{what}, not an empty string")));
        }
        Ok(v.get_ref())
    }

    fn name(&self, v: &Spanned<String>, key: &str) -> Result<String> {
        let s = v.get_ref();
        let ok = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(self.err(
                v.span().start,
                key,
                "a name of letters, digits, '-', '_' or '.'",
            ));
        }
        Ok(s.clone())
    }
}
