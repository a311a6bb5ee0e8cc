//! `[encryption]`: the age recipients archives are encrypted to, and where the identity is.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Result;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::Locator;

/// `~/x` and paths relative to the config file's folder.
fn expand(base: &Path, p: &str) -> PathBuf {
    match p.strip_prefix("~/").zip(std::env::var_os("HOME")) {
        Some((rest, home)) => PathBuf::from(home).join(rest),
        None => super::resolve(base, p),
    }
}

/// `[encryption]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptionConfig {
    /// Public keys (`age1…`, canonical spelling), from `recipients` then `recipients_file`,
    /// without duplicates. Empty: archives are not encrypted.
    pub recipients: Vec<String>,
    /// Where the identity (secret key) is; `--identity FILE` overrides it.
    pub identity_file: Option<PathBuf>,
    /// `[encryption]` is present in the config (with or without recipients).
    pub configured: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEncryption {
    recipients: Option<Vec<Spanned<String>>>,
    recipients_file: Option<Spanned<String>>,
    identity_file: Option<Spanned<String>>,
}

/// A short, stable fingerprint of a recipient (public key): `sha256:` and the first 16 hex
/// digits of the SHA-256 of its canonical `age1…` spelling. Safe to print and to store.
pub fn fingerprint(recipient: &str) -> String {
    let d = Sha256::digest(recipient.trim().as_bytes());
    format!("sha256:{}", &hex::encode(d)[..16])
}

/// Parse one recipient; the error says what is expected and never repeats the text.
pub(crate) fn parse_recipient(s: &str) -> std::result::Result<age::x25519::Recipient, String> {
    let t = s.trim();
    if t.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        return Err(
            "a public key (age1…), not a secret key: a secret key never belongs in recipients; keep it in identity_file, away from the backup host if you can"
                .into(),
        );
    }
    if t.starts_with("ssh-") || t.starts_with("age1") && t.len() > 70 {
        return Err("an age X25519 public key (age1…, 62 characters); SSH and plugin recipients are not supported".into());
    }
    age::x25519::Recipient::from_str(t).map_err(|_| {
        "an age X25519 public key (age1…, as printed by `pronto-offsite keygen` or `age-keygen -y key.txt`)".to_string()
    })
}

/// Recipients in an age recipients file: one per line, `#` comments and blank lines ignored.
fn read_recipients_file(path: &Path) -> std::result::Result<Vec<String>, String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("a readable recipients file ({}: {e})", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let r = parse_recipient(l)
            .map_err(|exp| format!("{} line {}: {exp}", path.display(), i + 1))?;
        out.push(r.to_string());
    }
    if out.is_empty() {
        return Err(format!(
            "at least one recipient (age1…) in {}",
            path.display()
        ));
    }
    Ok(out)
}

impl EncryptionConfig {
    pub(crate) fn from_raw(
        raw: Option<&Spanned<RawEncryption>>,
        at: &Locator,
        base: &Path,
    ) -> Result<EncryptionConfig> {
        let Some(raw) = raw else {
            return Ok(EncryptionConfig::default());
        };
        let table_start = raw.span().start;
        let raw = raw.get_ref();
        let mut recipients: Vec<String> = Vec::new();
        let mut push = |r: String| {
            if !recipients.contains(&r) {
                recipients.push(r);
            }
        };
        for (i, r) in raw.recipients.iter().flatten().enumerate() {
            let key = format!("encryption.recipients[{i}]");
            let parsed =
                parse_recipient(r.get_ref()).map_err(|exp| at.err(r.span().start, &key, &exp))?;
            push(parsed.to_string());
        }
        if let Some(f) = &raw.recipients_file {
            let p = at.nonempty(f, "encryption.recipients_file", "a file path")?;
            let path = expand(base, p);
            crate::secrets::refuse_if_others_can_write(&path, "recipients file")?;
            for r in read_recipients_file(&path)
                .map_err(|exp| at.err(f.span().start, "encryption.recipients_file", &exp))?
            {
                push(r);
            }
        }
        if raw.recipients.as_ref().is_some_and(|v| v.is_empty()) && raw.recipients_file.is_none() {
            return Err(at.err(
                table_start,
                "encryption.recipients",
                "at least one public key (age1…); to turn encryption off, remove the [encryption] table",
            ));
        }
        let identity_file = match &raw.identity_file {
            Some(f) => Some(expand(
                base,
                at.nonempty(f, "encryption.identity_file", "a file path")?,
            )),
            None => None,
        };
        Ok(EncryptionConfig {
            recipients,
            identity_file,
            configured: true,
        })
    }
}
