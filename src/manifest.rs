//! The manifest written beside every archive (`NAME.manifest.json`).
//!
//! The manifest is what marks an archive complete, locally and on every remote:
//! it is written last, and an archive without one is an incomplete upload that is
//! never a restore candidate. It never carries a secret.

use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::config::Section;
use crate::crypto::{Identities, Recipients};

/// Version of the manifest format, bumped on incompatible changes.
pub const FORMAT: u32 = 1;

/// What one source contributed to an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSummary {
    /// The source's `name` in the config.
    pub name: String,
    /// Its section (`static_content`, `configs`, ...).
    pub section: Section,
    /// Path of its folder inside the archive, relative to the top folder
    /// (e.g. `static_content/site`).
    pub archive_path: String,
    /// Where it came from on this host (a folder path; never a URL with credentials).
    pub origin: String,
    /// Regular files stored.
    pub files: u64,
    /// Folders stored (including the source's own folder).
    pub dirs: u64,
    /// Symlinks stored (as links, never followed).
    pub symlinks: u64,
    /// Bytes of file content stored (before compression).
    pub bytes: u64,
    /// Fifos and device nodes stored (headers only; devices are restored as root).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub specials: u64,
    /// Paths that were not stored, with the reason: sockets always;
    /// unreadable or vanished files only when the source allows skipping them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// The exclude patterns applied to this source (`exclude` and `backup --exclude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Files that changed while they were read (size, mtime or ctime differed after the
    /// read), stored as read, with what changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// The manifest of one archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The archive's id: the UTC timestamp in its name, `YYYYMMDD-HHMMSS`.
    pub id: String,
    /// The archive's file name, e.g. `pronto-app-backup-20260201-170521.tar.gz`.
    pub file: String,
    /// When the backup started (UTC).
    pub created: DateTime<Utc>,
    /// Archive size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the archive file.
    pub sha256: String,
    /// `gzip` or `zstd`.
    pub compression: String,
    /// `none` or an encryption scheme (`age`).
    pub encryption: String,
    /// For `age`: a fingerprint of each recipient (public key) the archive is encrypted
    /// to (`sha256:` + 16 hex digits, see `crypto::fingerprint`); never a key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipient_fingerprints: Vec<String>,
    /// Host that made the archive.
    pub host: String,
    /// pronto-offsite version that wrote it.
    pub tool_version: String,
    /// What each source contributed.
    pub sources: Vec<SourceSummary>,
    /// PostgreSQL sources: what each dump holds, with per-table row counts taken
    /// from the very snapshot the dump was made from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postgres: Vec<PgSummary>,
    /// Redis sources: the RDB snapshot and its key count per database.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis: Vec<RedisSummary>,
    /// A safety backup taken before a restore (`"safety": true`; absent in every other
    /// manifest and in those of older versions). It is not a scheduled backup: never
    /// uploaded, never `latest`, not counted by the retention policy or the deletion
    /// cap; prune keeps the [`SAFETY_KEEP`] newest and deletes older ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub safety: bool,
    /// Made outside pronto-offsite and taken in by `adopt` (read whole first).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// An encrypted archive's [`Contents`] (its sources with their paths and origins,
    /// databases, tables and row counts), encrypted to the archive's recipients: an age
    /// file, hex-encoded. The copy of the manifest a remote gets ([`Manifest::for_remote`])
    /// carries this section instead of the plaintext fields; [`Manifest::unseal`] puts them
    /// back with the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

/// What an archive holds, as a manifest tells it: the part an encrypted archive's
/// manifest keeps from the remote (see [`Manifest::sealed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    pub sources: Vec<SourceSummary>,
    #[serde(default)]
    pub postgres: Vec<PgSummary>,
    #[serde(default)]
    pub redis: Vec<RedisSummary>,
}

/// How many safety backups a prune keeps (the newest ones).
pub const SAFETY_KEEP: usize = 3;

/// What a PostgreSQL source put into `postgres_data/<source>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgSummary {
    /// The source's `name` in the config.
    pub source: String,
    /// `SHOW server_version` of the server dumped.
    pub server_version: String,
    /// File name of the `pg_dumpall --globals-only` output (roles, tablespaces), if taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<String>,
    /// One `pg_dump -Fc` per database.
    pub databases: Vec<PgDatabase>,
}

/// One database dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgDatabase {
    /// The database's name.
    pub name: String,
    /// File name of its dump inside the source's folder.
    pub file: String,
    /// Size of the dump in bytes.
    pub bytes: u64,
    /// Every table (`relkind` r or p, outside the system schemas and not owned by an
    /// extension) with its row count in the dump's snapshot, sorted by schema and name.
    pub tables: Vec<TableRows>,
}

impl PgDatabase {
    /// Total rows over every table.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// Rows of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub schema: String,
    pub table: String,
    pub rows: u64,
}

/// What a Redis source put into `redis_data/<source>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisSummary {
    /// The source's `name` in the config.
    pub source: String,
    /// File name of the RDB snapshot inside the source's folder (`dump.rdb`).
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// RDB format version (the digits after `REDIS`).
    pub rdb_version: u32,
    /// `redis-ver` recorded in the RDB, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_version: Option<String>,
    /// How the key counts were taken: `rdb` (counted in the snapshot itself) or
    /// `info` (`INFO keyspace` right after the transfer, when the RDB could not be parsed).
    pub counted_from: String,
    /// Keys per database, databases without keys left out.
    pub dbs: Vec<RedisDb>,
}

impl RedisSummary {
    /// Total keys over every database.
    pub fn total_keys(&self) -> u64 {
        self.dbs.iter().map(|d| d.keys).sum()
    }
}

/// Keys of one Redis database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisDb {
    pub db: u32,
    pub keys: u64,
    /// Keys with a TTL.
    pub expires: u64,
}

impl Manifest {
    /// The manifest's file name for an archive file name.
    pub fn file_name_for(archive_file: &str) -> String {
        format!("{archive_file}.manifest.json")
    }

    /// The SHA-256 as bytes.
    pub fn sha256_bytes(&self) -> Result<[u8; 32]> {
        let v = hex::decode(&self.sha256).context("manifest sha256 is not hex")?;
        v.try_into()
            .map_err(|_| anyhow::anyhow!("manifest sha256 is not 32 bytes"))
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    pub fn from_json(bytes: &[u8], what: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes)
            .with_context(|| format!("{what}: not a valid manifest"))?;
        if m.format > FORMAT {
            anyhow::bail!(
                "{what}: manifest format {} is newer than this pronto-offsite understands ({FORMAT}); upgrade pronto-offsite",
                m.format
            );
        }
        Ok(m)
    }

    pub fn read(path: &Path) -> Result<Manifest> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&bytes, &path.display().to_string())
    }

    /// [`Manifest::read`], then [`Manifest::unseal`] when an identity is at hand.
    pub fn read_unsealed(path: &Path, ids: Option<&Identities>) -> Result<Manifest> {
        let mut m = Self::read(path)?;
        if let Some(ids) = ids {
            m.unseal(ids)?;
        }
        Ok(m)
    }

    /// For an encrypted archive: encrypt what it holds to its recipients into
    /// [`Manifest::sealed`] (the plaintext fields stay, for the local copy).
    pub fn seal(&mut self, recipients: &Recipients) -> Result<()> {
        let contents = Contents {
            sources: self.sources.clone(),
            postgres: self.postgres.clone(),
            redis: self.redis.clone(),
        };
        let plain = serde_json::to_vec(&contents).context("serializing the manifest's contents")?;
        self.sealed = Some(hex::encode(recipients.seal(&plain)?));
        Ok(())
    }

    /// The manifest a remote gets. For a sealed (encrypted) archive only what push,
    /// prune and verify need: id, file, times, size, hash, compression, encryption,
    /// recipient fingerprints, host and version, and the sealed section; no source path,
    /// origin, database, table or row count. Any other manifest as it is (archives of
    /// versions before sealing keep their plaintext fields, so they still restore).
    pub fn for_remote(&self) -> Manifest {
        let mut m = self.clone();
        if m.sealed.is_some() {
            m.sources.clear();
            m.postgres.clear();
            m.redis.clear();
        }
        m
    }

    /// Put back what [`Manifest::for_remote`] left out, from the sealed section, with the
    /// identity that opens the archive. Nothing to do without a sealed section or when
    /// the plaintext fields are already there.
    pub fn unseal(&mut self, ids: &Identities) -> Result<()> {
        let Some(sealed) = &self.sealed else {
            return Ok(());
        };
        if !self.sources.is_empty() {
            return Ok(());
        }
        let what = format!("the sealed section of {}'s manifest", self.file);
        let bytes = hex::decode(sealed)
            .map_err(|e| crate::error::verification(format!("{what}: not hex: {e}")))?;
        let plain = ids.open_sealed(&bytes, &what, &self.recipient_fingerprints)?;
        let c: Contents = serde_json::from_slice(&plain)
            .map_err(|e| crate::error::verification(format!("{what}: unreadable: {e}")))?;
        self.sources = c.sources;
        self.postgres = c.postgres;
        self.redis = c.redis;
        Ok(())
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
