//! `[log]`: the log file and its rotation by size.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

/// Default `[log] max_size`.
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Default `[log] keep`.
pub const DEFAULT_KEEP: usize = 5;

/// `[log]`: a log file with size-based rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The log file (`/var/log/pronto-backup.log`).
    pub file: PathBuf,
    /// Rotate when the file would grow past this many bytes (`max_size = "10MiB"`); 0 = never.
    pub max_size: u64,
    /// Rotated files kept: `FILE.1` (newest) … `FILE.<keep>`.
    pub keep: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    file: Spanned<String>,
    max_size: Option<Spanned<String>>,
    keep: Option<Spanned<i64>>,
}

impl LogConfig {
    pub(crate) fn from_raw(
        raw: Option<&RawLog>,
        at: &super::Locator,
        base: &Path,
    ) -> Result<Option<LogConfig>> {
        let Some(raw) = raw else { return Ok(None) };
        let file = at.nonempty(&raw.file, "log.file", "a log file path")?;
        let max_size = match &raw.max_size {
            Some(s) => parse_size(s.get_ref()).map_err(|_| {
                at.err(
                    s.span().start,
                    "log.max_size",
                    "a size like \"10MiB\", \"500KB\" or \"1GiB\"",
                )
            })?,
            None => DEFAULT_MAX_SIZE,
        };
        let keep = match &raw.keep {
            Some(k) if !(0..=1000).contains(k.get_ref()) => {
                return Err(at.err(
                    k.span().start,
                    "log.keep",
                    "a number of rotated files from 0 to 1000",
                ));
            }
            Some(k) => *k.get_ref() as usize,
            None => DEFAULT_KEEP,
        };
        Ok(Some(LogConfig {
            file: super::resolve(base, file),
            max_size,
            keep,
        }))
    }
}

/// Parse a size: `10MiB`, `10 MiB`, `500KB`, `1GiB`, `4096` (bytes). K/M/G/T are powers of
/// 1000 with `B` alone and of 1024 with `iB`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000u64.pow(4),
        "tib" => 1 << 40,
        _ => return Err(format!("invalid size unit in {s:?}")),
    };
    if !num.is_finite() || num < 0.0 {
        return Err(format!("invalid size {s:?}"));
    }
    Ok((num * mult as f64).round() as u64)
}
