//! Secrets hygiene that is not about one feature: a config file that holds a secret must
//! not be readable by other users, and a file that decides where archives go or who can
//! read them (the config, a recipients file) must not be writable by them.
//!
//! The rules the rest of the code follows (see README "Secrets and permissions"):
//! passwords, keys and tokens come from the environment or from files, never from the
//! argv of a child process; they never appear in logs, manifests, `backup_info.txt`,
//! metrics or error messages; URLs are printed with their credentials redacted.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Keys whose (non-empty) value is a secret wherever they appear in the config.
const SECRET_KEYS: [&str; 7] = [
    "secret_access_key",
    "session_token",
    "password",
    "token",
    "webhook_url",
    "ping_url",
    "identity",
];

/// Where in `text` (a TOML config) a secret is written: dotted key paths, never values.
/// A secret is a value under one of [`SECRET_KEYS`], an age secret key anywhere, or a URL
/// with a password in it.
pub fn secrets_in_config(text: &str) -> Vec<String> {
    let Ok(v) = toml::from_str::<toml::Value>(text) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    walk(&v, "", &mut found);
    found
}

fn walk(v: &toml::Value, path: &str, found: &mut Vec<String>) {
    let key = path.rsplit('.').next().unwrap_or("");
    let key = key.split('[').next().unwrap_or(key);
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(v, &p, found);
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                walk(v, &format!("{path}[{i}]"), found);
            }
        }
        toml::Value::String(s) => {
            let s = s.trim();
            let secret = (!s.is_empty() && SECRET_KEYS.contains(&key))
                || s.to_ascii_uppercase().contains("AGE-SECRET-KEY-")
                || url::Url::parse(s).is_ok_and(|u| u.password().is_some());
            if secret {
                found.push(path.to_string());
            }
        }
        _ => {}
    }
}

/// Refuse (exit 2) a file that users other than its owner may change: `what` (the config
/// file, which names hook commands and remotes; a recipients file, which says who can
/// read every later backup) decides too much to trust a file others can write, as ssh
/// refuses such a config or key. Names the file, its mode and the fix. A file that cannot
/// be examined is left to the reader, which reports it.
pub fn refuse_if_others_can_write(path: &Path, what: &str) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 == 0 {
        return Ok(());
    }
    Err(crate::error::usage(format!(
        "{what} {} can be changed by other users (mode {mode:o}): anyone who can write it could add an age recipient, a remote or a command; refusing to use it: run `chmod 600 {}`",
        path.display(),
        path.display()
    )))
}

/// Warn (once, at WARN) when the config file at `path` holds a secret and its mode lets
/// its group or others read it. Names the file, the keys and the fix; never a value.
pub fn warn_if_exposed(path: &Path, text: &str) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.mode() & 0o044 == 0 {
        return;
    }
    let found = secrets_in_config(text);
    if found.is_empty() {
        return;
    }
    tracing::warn!(
        "config file {} holds secrets ({}) and can be read by other users (mode {:o}): run `chmod 600 {}`",
        path.display(),
        found.join(", "),
        meta.mode() & 0o777,
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_secret_keys_by_path_never_values() {
        let t = r#"
[local]
dir = "/b"
[[remotes]]
name = "s3"
url = "s3://b/p"
access_key_id = "AKIA"
secret_access_key = "s3cr3t"
[[remotes]]
name = "f"
url = "sftp://u:pw@h/x"
[notify]
webhook_url = "https://hooks.example.com/T/B/XYZ"
[encryption]
recipients = ["age1abc"]
identity_file = "/k"
"#;
        let f = secrets_in_config(t);
        assert_eq!(
            f,
            [
                "notify.webhook_url",
                "remotes[0].secret_access_key",
                "remotes[1].url"
            ]
        );
        assert!(f.iter().all(|p| !p.contains("s3cr3t")));
        assert!(secrets_in_config("[local]\ndir = \"/b\"\n").is_empty());
        assert_eq!(
            secrets_in_config("[x]\ny = \"AGE-SECRET-KEY-1QQQ\"\n"),
            ["x.y"]
        );
    }
}
