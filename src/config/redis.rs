//! The keys of a redis source: how to reach the server, where it keeps `dump.rdb`, and
//! how to stop and start it for a restore, validated into a [`RedisSource`].

use std::path::PathBuf;

use anyhow::Result;

use super::service_keys::{CommandLine, RawKeys};
use super::Locator;

/// Default `url`.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Where a Redis server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSource {
    pub endpoint: Endpoint,
    /// `rediss://`: redis-cli `--tls`.
    pub tls: bool,
    /// ACL user (the URL's user part).
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Where the server keeps its RDB file (for a restore).
    pub data_dir: Option<PathBuf>,
    /// Stops the server for a restore (default `systemctl stop redis-server`).
    pub stop_command: CommandLine,
    /// Starts it again (default `systemctl start redis-server`).
    pub start_command: CommandLine,
    /// A throwaway server of ours ([`RedisSource::local`]): redis-cli gets none of this
    /// process's `REDISCLI_*` variables (an inherited `REDISCLI_AUTH` is the live
    /// server's password, which a passwordless server refuses).
    pub throwaway: bool,
}

pub(crate) fn from_raw(
    keys: &RawKeys,
    password_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    stop_command: Option<CommandLine>,
    start_command: Option<CommandLine>,
    at: &Locator,
    key: &str,
) -> Result<RedisSource> {
    let (endpoint, tls, url_user) = match keys.url {
        Some(u) => parse_url(u.get_ref())
            .map_err(|msg| at.err(u.span().start, &format!("{key}.url"), &msg))?,
        None => parse_url(DEFAULT_URL).expect("default parses"),
    };
    let user = match (keys.user, url_user) {
        (Some(u), Some(_)) => {
            return Err(at.err(
                u.span().start,
                &format!("{key}.user"),
                "the user in `url` or in `user`, not both",
            ));
        }
        (Some(u), None) => Some(
            at.nonempty(u, &format!("{key}.user"), "an ACL user name")?
                .to_string(),
        ),
        (None, u) => u,
    };
    Ok(RedisSource {
        endpoint,
        tls,
        user,
        password_file,
        data_dir,
        stop_command: stop_command.unwrap_or_else(|| {
            CommandLine::Argv(vec![
                "systemctl".into(),
                "stop".into(),
                "redis-server".into(),
            ])
        }),
        start_command: start_command.unwrap_or_else(|| {
            CommandLine::Argv(vec![
                "systemctl".into(),
                "start".into(),
                "redis-server".into(),
            ])
        }),
        throwaway: false,
    })
}

/// `redis://[user@]host[:port][/db]`, `rediss://…` or `unix:///path/redis.sock`. Refuses a password.
pub fn parse_url(s: &str) -> std::result::Result<(Endpoint, bool, Option<String>), String> {
    let u = url::Url::parse(s).map_err(|e| format!("a URL like redis://127.0.0.1:6379 ({e})"))?;
    if u.password().is_some() {
        return Err(
            "a URL without a password: put it in password_file or REDISCLI_AUTH (a password in the URL would end up in argv)".into(),
        );
    }
    let user = (!u.username().is_empty()).then(|| u.username().to_string());
    match u.scheme() {
        "redis" | "rediss" => {
            let host = u
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or("a host in the URL (redis://127.0.0.1:6379)")?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            Ok((
                Endpoint::Tcp {
                    host,
                    port: u.port().unwrap_or(6379),
                },
                u.scheme() == "rediss",
                user,
            ))
        }
        "unix" => {
            if u.path().is_empty() || u.path() == "/" {
                return Err("a socket path: unix:///run/redis/redis.sock".into());
            }
            Ok((Endpoint::Unix(PathBuf::from(u.path())), false, user))
        }
        other => Err(format!("a redis:// URL, not {other}://")),
    }
}
