//! The service keys of a `[[sources]]` entry (`type = "postgres"` or `"redis"`): which keys
//! each kind takes, checked and turned into a [`PgSource`] or a [`RedisSource`].

use std::path::Path;

use anyhow::Result;
use toml::Spanned;

use super::postgres::{self, PgSource};
use super::redis::{self, RedisSource};
use super::service_keys::{CommandLine, RawKeys};
use super::{resolve, Locator, SourceKind};

/// The service part of a source: what a postgres or redis source says.
#[derive(Debug, Clone)]
pub(crate) enum Service {
    None,
    Postgres(PgSource),
    Redis(RedisSource),
}

/// Validate the service keys of source `key` (`sources[3]`) of kind `kind`.
pub(crate) fn from_raw(
    kind: SourceKind,
    keys: &RawKeys,
    at: &Locator,
    base: &Path,
    key: &str,
) -> Result<Service> {
    let allowed: &[&str] = match kind {
        SourceKind::Postgres => &[
            "url",
            "host",
            "port",
            "user",
            "databases",
            "password_file",
            "command_prefix",
            "globals",
            "lock_timeout",
        ],
        SourceKind::Redis => &[
            "url",
            "user",
            "password_file",
            "data_dir",
            "stop_command",
            "start_command",
        ],
        _ => &[],
    };
    for (name, offset) in keys.present() {
        if !allowed.contains(&name) {
            let which = match name {
                "data_dir" | "stop_command" | "start_command" => "a redis source",
                "host" | "port" | "databases" | "command_prefix" | "globals" | "lock_timeout" => {
                    "a postgres source"
                }
                _ => "a postgres or redis source",
            };
            return Err(at.err(
                offset,
                &format!("{key}.{name}"),
                &format!("no `{name}` here: it is a key of {which}"),
            ));
        }
    }
    let password_file = match keys.password_file {
        Some(p) => Some(resolve(
            base,
            at.nonempty(
                p,
                &format!("{key}.password_file"),
                "a file holding the password",
            )?,
        )),
        None => None,
    };
    match kind {
        SourceKind::Postgres => Ok(Service::Postgres(postgres::from_raw(
            keys,
            password_file,
            at,
            key,
        )?)),
        SourceKind::Redis => {
            let cmd = |c: Option<&Spanned<CommandLine>>,
                       name: &str|
             -> Result<Option<CommandLine>> {
                match c {
                    Some(c) if c.get_ref().is_empty() => Err(at.err(
                        c.span().start,
                        &format!("{key}.{name}"),
                        "a command: an array like [\"systemctl\", \"stop\", \"redis-server\"] or a shell string",
                    )),
                    Some(c) => Ok(Some(c.get_ref().clone())),
                    None => Ok(None),
                }
            };
            let data_dir = match keys.data_dir {
                Some(d) => Some(resolve(
                    base,
                    at.nonempty(
                        d,
                        &format!("{key}.data_dir"),
                        "the folder where Redis keeps dump.rdb",
                    )?,
                )),
                None => None,
            };
            Ok(Service::Redis(redis::from_raw(
                keys,
                password_file,
                data_dir,
                cmd(keys.stop_command, "stop_command")?,
                cmd(keys.start_command, "start_command")?,
                at,
                key,
            )?))
        }
        _ => Ok(Service::None),
    }
}
