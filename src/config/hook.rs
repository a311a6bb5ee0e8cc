//! `[hook]`: how long a hook waits for the lock, and whether it streams the new archive.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::Locator;

/// Default `[hook] lock_wait`.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(600);

/// `[hook]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    /// How long a hook waits for another one to finish (`lock_wait = "10m"`).
    pub lock_wait: Duration,
    /// Upload the new archive to the remotes while it is written (`stream_upload`,
    /// default true), as `backup --push` does; false: backup first, then push.
    pub stream_upload: bool,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            lock_wait: DEFAULT_LOCK_WAIT,
            stream_upload: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHook {
    lock_wait: Option<Spanned<String>>,
    stream_upload: Option<bool>,
}

impl HookConfig {
    pub(crate) fn from_raw(
        raw: Option<&RawHook>,
        at: &Locator,
        _base: &Path,
    ) -> Result<HookConfig> {
        let mut c = HookConfig::default();
        if let Some(s) = raw.and_then(|r| r.stream_upload) {
            c.stream_upload = s;
        }
        if let Some(w) = raw.and_then(|r| r.lock_wait.as_ref()) {
            c.lock_wait = humantime::parse_duration(w.get_ref()).map_err(|_| {
                at.err(
                    w.span().start,
                    "hook.lock_wait",
                    "a duration like \"10m\", \"1h\" or \"0s\"",
                )
            })?;
        }
        Ok(c)
    }
}
