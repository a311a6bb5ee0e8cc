//! `[notify]`: the webhook, ping URL and command a hook run reports to, and when each fires.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::Locator;

/// When a channel fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct On {
    pub failure: bool,
    pub success: bool,
}

impl On {
    pub const FAILURE: On = On {
        failure: true,
        success: false,
    };
    pub const BOTH: On = On {
        failure: true,
        success: true,
    };
}

/// `webhook_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The whole report as JSON (with a `text` summary among its fields).
    Json,
    /// `{"text": "…"}`: Slack, Mattermost, Rocket.Chat, Matrix hookshot, Discord's `/slack` URLs.
    Slack,
    /// `{"content": "…"}`: Discord's own webhook URLs.
    Discord,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub format: WebhookFormat,
    pub on: On,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    pub url: String,
    pub on: On,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandNotify {
    pub argv: Vec<String>,
    pub on: On,
}

/// `[notify]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NotifyConfig {
    pub webhook: Option<Webhook>,
    pub ping: Option<Ping>,
    pub command: Option<CommandNotify>,
    pub timeout: Option<Duration>,
}

impl NotifyConfig {
    pub fn is_empty(&self) -> bool {
        self.webhook.is_none() && self.ping.is_none() && self.command.is_none()
    }
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    on: Option<Spanned<Vec<String>>>,
    webhook_url: Option<Spanned<String>>,
    webhook_format: Option<Spanned<WebhookFormat>>,
    webhook_on: Option<Spanned<Vec<String>>>,
    ping_url: Option<Spanned<String>>,
    ping_on: Option<Spanned<Vec<String>>>,
    command: Option<Spanned<Vec<String>>>,
    command_on: Option<Spanned<Vec<String>>>,
    timeout: Option<Spanned<String>>,
}

fn parse_on(v: &Spanned<Vec<String>>, key: &str, at: &Locator) -> Result<On> {
    let mut on = On::default();
    for s in v.get_ref() {
        match s.as_str() {
            "failure" => on.failure = true,
            "success" => on.success = true,
            _ => {
                return Err(at.err(
                    v.span().start,
                    key,
                    &format!("a list of \"failure\" and \"success\" (found {s:?})"),
                ))
            }
        }
    }
    if on == On::default() {
        return Err(at.err(
            v.span().start,
            key,
            "[\"failure\"] or [\"failure\", \"success\"], not an empty list",
        ));
    }
    Ok(on)
}

fn check_url(v: &Spanned<String>, key: &str, at: &Locator) -> Result<String> {
    let u = url::Url::parse(v.get_ref().trim());
    match u {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(v.get_ref().trim().to_string())
        }
        _ => Err(at.err(v.span().start, key, "an http:// or https:// URL")),
    }
}

impl NotifyConfig {
    pub(crate) fn from_raw(
        raw: Option<&RawNotify>,
        at: &Locator,
        _base: &Path,
    ) -> Result<NotifyConfig> {
        let Some(raw) = raw else {
            return Ok(NotifyConfig::default());
        };
        let shared = raw
            .on
            .as_ref()
            .map(|v| parse_on(v, "notify.on", at))
            .transpose()?;
        let pick = |own: &Option<Spanned<Vec<String>>>, key: &str, default: On| -> Result<On> {
            match own {
                Some(v) => parse_on(v, key, at),
                None => Ok(shared.unwrap_or(default)),
            }
        };
        let webhook = match &raw.webhook_url {
            Some(u) => Some(Webhook {
                url: check_url(u, "notify.webhook_url", at)?,
                format: raw
                    .webhook_format
                    .as_ref()
                    .map(|f| *f.get_ref())
                    .unwrap_or(WebhookFormat::Json),
                on: pick(&raw.webhook_on, "notify.webhook_on", On::FAILURE)?,
            }),
            None => {
                if let Some(v) = &raw.webhook_on {
                    return Err(at.err(
                        v.span().start,
                        "notify.webhook_on",
                        "a webhook_url beside it",
                    ));
                }
                if let Some(f) = &raw.webhook_format {
                    return Err(at.err(
                        f.span().start,
                        "notify.webhook_format",
                        "a webhook_url beside it",
                    ));
                }
                None
            }
        };
        let ping = match &raw.ping_url {
            Some(u) => Some(Ping {
                url: check_url(u, "notify.ping_url", at)?,
                // healthchecks expects a success ping every run.
                on: pick(&raw.ping_on, "notify.ping_on", On::BOTH)?,
            }),
            None => {
                if let Some(v) = &raw.ping_on {
                    return Err(at.err(v.span().start, "notify.ping_on", "a ping_url beside it"));
                }
                None
            }
        };
        let command = match &raw.command {
            Some(c) => {
                if c.get_ref().is_empty() || c.get_ref()[0].trim().is_empty() {
                    return Err(at.err(
                        c.span().start,
                        "notify.command",
                        "a program and its arguments, like [\"mail\", \"-s\", \"Pronto backup\", \"ops@example.com\"]",
                    ));
                }
                Some(CommandNotify {
                    argv: c.get_ref().clone(),
                    on: pick(&raw.command_on, "notify.command_on", On::FAILURE)?,
                })
            }
            None => {
                if let Some(v) = &raw.command_on {
                    return Err(at.err(v.span().start, "notify.command_on", "a command beside it"));
                }
                None
            }
        };
        let timeout = match &raw.timeout {
            Some(t) => Some(
                humantime::parse_duration(t.get_ref())
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        at.err(
                            t.span().start,
                            "notify.timeout",
                            "a duration like \"10s\" or \"1m\"",
                        )
                    })?,
            ),
            None => None,
        };
        Ok(NotifyConfig {
            webhook,
            ping,
            command,
            timeout,
        })
    }
}

/// Default `[notify] timeout`: per HTTP request and for the command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
