//! The keys of a `[[sources]]` entry that belong to its service (postgres or redis), as
//! written, and the stop/start commands a redis source may give.

use std::process::Command;

use serde::Deserialize;
use toml::Spanned;

/// A command given in the config: an argv array (`["systemctl", "stop", "redis"]`) or a
/// string run by `sh -c` (`"docker compose stop redis"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CommandLine {
    Shell(String),
    Argv(Vec<String>),
}

impl CommandLine {
    /// A [`Command`] for it.
    pub fn command(&self) -> Command {
        match self {
            CommandLine::Shell(s) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(s);
                c
            }
            CommandLine::Argv(v) => {
                let mut c = Command::new(&v[0]);
                c.args(&v[1..]);
                c
            }
        }
    }

    /// How it is shown in messages.
    pub fn shown(&self) -> String {
        match self {
            CommandLine::Shell(s) => s.clone(),
            CommandLine::Argv(v) => v.join(" "),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            CommandLine::Shell(s) => s.trim().is_empty(),
            CommandLine::Argv(v) => v.is_empty() || v[0].is_empty(),
        }
    }
}

/// The keys of a `[[sources]]` entry that belong to postgres and redis sources, as written.
pub(crate) struct RawKeys<'a> {
    pub url: Option<&'a Spanned<String>>,
    pub host: Option<&'a Spanned<String>>,
    pub port: Option<&'a Spanned<u16>>,
    pub user: Option<&'a Spanned<String>>,
    pub databases: Option<&'a Spanned<Vec<String>>>,
    pub password_file: Option<&'a Spanned<String>>,
    pub command_prefix: Option<&'a Spanned<Vec<String>>>,
    pub globals: Option<&'a Spanned<bool>>,
    pub lock_timeout: Option<&'a Spanned<String>>,
    pub data_dir: Option<&'a Spanned<String>>,
    pub stop_command: Option<&'a Spanned<CommandLine>>,
    pub start_command: Option<&'a Spanned<CommandLine>>,
}

impl RawKeys<'_> {
    /// (key name, offset) of every key that is set.
    pub(crate) fn present(&self) -> Vec<(&'static str, usize)> {
        let mut v = Vec::new();
        macro_rules! chk {
            ($($f:ident),*) => {$(
                if let Some(x) = &self.$f { v.push((stringify!($f), x.span().start)); }
            )*};
        }
        chk!(
            url,
            host,
            port,
            user,
            databases,
            password_file,
            command_prefix,
            globals,
            lock_timeout,
            data_dir,
            stop_command,
            start_command
        );
        v
    }
}
