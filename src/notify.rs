//! Notifications after a `hook` run (`[notify]`): a JSON webhook (or a Slack / Discord /
//! Matrix-compatible `{"text": …}` payload), healthchecks-style ping URLs (`/start`, the
//! URL itself on success, `/fail` on failure) and a command that gets the report on stdin
//! (for `mail`).
//!
//! A notification that fails is logged at ERROR and never changes the run's exit code.
//! URLs are only ever printed redacted ([`redact_url`]): webhook and ping URLs carry
//! their secret in the path.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::AsyncWriteExt;

pub use crate::config::notify::{
    CommandNotify, NotifyConfig, On, Ping, Webhook, WebhookFormat, DEFAULT_TIMEOUT,
};
pub use crate::report::{Outcome, Report};

impl On {
    /// Whether a channel with this setting fires for a run that came to `o`.
    pub fn fires(self, o: Outcome) -> bool {
        if o.is_success() {
            self.success
        } else {
            self.failure
        }
    }
}

/// A URL safe to print: scheme, host and port; the path (where webhook and ping URLs keep
/// their token), the query and any user or password are replaced by `***`.
pub fn redact_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(p) => {
            let host = p.host_str().unwrap_or("?");
            let port = p.port().map(|n| format!(":{n}")).unwrap_or_default();
            let cred = if p.username().is_empty() && p.password().is_none() {
                ""
            } else {
                "***@"
            };
            let rest = if p.path().len() > 1 || p.query().is_some() {
                "/***"
            } else {
                ""
            };
            format!("{}://{cred}{host}{port}{rest}", p.scheme())
        }
        Err(_) => "<unparseable URL>".into(),
    }
}

/// `<url>/<suffix>` (healthchecks: `/start`, `/fail`), keeping any query string.
pub fn ping_url_with(u: &str, suffix: &str) -> Result<String> {
    let mut p = url::Url::parse(u).map_err(|e| anyhow!("{}: {e}", redact_url(u)))?;
    {
        let mut segs = p
            .path_segments_mut()
            .map_err(|_| anyhow!("{}: cannot add a path", redact_url(u)))?;
        segs.pop_if_empty().push(suffix);
    }
    Ok(p.to_string())
}

/// Sends the configured notifications.
pub struct Notifier {
    cfg: NotifyConfig,
    client: Option<reqwest::Client>,
}

/// Attempts per HTTP notification (transport errors, 429 and 5xx are retried).
const HTTP_ATTEMPTS: u32 = 3;

impl Notifier {
    pub fn new(cfg: &NotifyConfig) -> Notifier {
        let client = if cfg.webhook.is_some() || cfg.ping.is_some() {
            match reqwest::Client::builder()
                .timeout(cfg.timeout())
                .connect_timeout(cfg.timeout().min(Duration::from_secs(10)))
                .user_agent(concat!("pronto-offsite/", env!("CARGO_PKG_VERSION")))
                .build()
            {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!("notify: cannot set up the HTTP client: {e}; webhook and pings are not sent");
                    None
                }
            }
        } else {
            None
        };
        Notifier {
            cfg: cfg.clone(),
            client,
        }
    }

    /// The healthchecks `/start` ping, sent when a run begins.
    pub async fn start(&self) {
        let Some(ping) = &self.cfg.ping else { return };
        if !ping.on.success {
            return;
        }
        let res = async {
            let url = ping_url_with(&ping.url, "start")?;
            self.http(reqwest::Method::GET, &url, None).await
        }
        .await;
        match res {
            Ok(()) => tracing::debug!("notify: pinged {}/start", redact_url(&ping.url)),
            Err(e) => tracing::error!(
                "notify: start ping to {} failed: {e:#}",
                redact_url(&ping.url)
            ),
        }
    }

    /// Everything a finished run fires, per `on`. Each failure is logged at ERROR; the
    /// channels that failed (`webhook`, `ping`, `command`) are returned, for the exit code.
    pub async fn finish(&self, report: &Report) -> Vec<&'static str> {
        let outcome = report.status;
        let mut failed = Vec::new();
        if let Some(w) = &self.cfg.webhook {
            if w.on.fires(outcome) {
                let body = match w.format {
                    WebhookFormat::Json => serde_json::to_value(report).unwrap_or_default(),
                    WebhookFormat::Slack => serde_json::json!({ "text": report.text() }),
                    WebhookFormat::Discord => {
                        serde_json::json!({ "content": truncate(&report.text(), 1900) })
                    }
                };
                match self.http(reqwest::Method::POST, &w.url, Some(body)).await {
                    Ok(()) => tracing::info!(
                        "notify: webhook {} sent ({})",
                        redact_url(&w.url),
                        outcome.label()
                    ),
                    Err(e) => {
                        tracing::error!("notify: webhook {} failed: {e:#}", redact_url(&w.url));
                        failed.push("webhook");
                    }
                }
            }
        }
        if let Some(p) = &self.cfg.ping {
            if p.on.fires(outcome) {
                let res = async {
                    let url = if outcome.is_success() {
                        p.url.clone()
                    } else {
                        ping_url_with(&p.url, "fail")?
                    };
                    self.http(reqwest::Method::GET, &url, None).await
                }
                .await;
                match res {
                    Ok(()) => tracing::info!(
                        "notify: pinged {}{}",
                        redact_url(&p.url),
                        if outcome.is_success() { "" } else { " (/fail)" }
                    ),
                    Err(e) => {
                        tracing::error!("notify: ping to {} failed: {e:#}", redact_url(&p.url));
                        failed.push("ping");
                    }
                }
            }
        }
        if let Some(c) = &self.cfg.command {
            if c.on.fires(outcome) {
                match run_command(&c.argv, report, self.cfg.timeout()).await {
                    Ok(()) => {
                        tracing::info!("notify: command {} ran ({})", c.argv[0], outcome.label())
                    }
                    Err(e) => {
                        tracing::error!("notify: command {} failed: {e:#}", c.argv[0]);
                        failed.push("command");
                    }
                }
            }
        }
        failed
    }

    async fn http(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> Result<()> {
        let Some(client) = &self.client else {
            bail!("no HTTP client");
        };
        let mut last = None;
        for attempt in 1..=HTTP_ATTEMPTS {
            let mut req = client.request(method.clone(), url);
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    let err = anyhow!("HTTP {status}: {}", truncate(text.trim(), 200));
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        return Err(err);
                    }
                    last = Some(err);
                }
                // reqwest's errors carry the URL: strip it, it may hold a token.
                Err(e) => last = Some(anyhow::Error::new(e.without_url())),
            }
            if attempt < HTTP_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow!("not sent"))
            .context(format!("after {HTTP_ATTEMPTS} attempts")))
    }
}

/// Run the command with the text report on stdin and `PRONTO_OFFSITE_STATUS`,
/// `PRONTO_OFFSITE_EXIT_CODE` and `PRONTO_OFFSITE_SUMMARY` in its environment.
async fn run_command(argv: &[String], report: &Report, timeout: Duration) -> Result<()> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("PRONTO_OFFSITE_STATUS", report.status.label())
        .env("PRONTO_OFFSITE_EXIT_CODE", report.exit_code.to_string())
        .env("PRONTO_OFFSITE_SUMMARY", &report.summary)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", argv[0]))?;
    let mut stdin = child.stdin.take().expect("piped");
    let text = report.text();
    let work = async {
        // A command that does not read its stdin is not an error.
        let _ = stdin.write_all(text.as_bytes()).await;
        drop(stdin);
        child.wait_with_output().await
    };
    let out = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r.with_context(|| format!("waiting for {}", argv[0]))?,
        Err(_) => bail!(
            "still running after {}; killed",
            humantime::format_duration(timeout)
        ),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{}: {}", out.status, truncate(err.trim(), 300));
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_tokens_and_passwords() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "https://hooks.slack.com/***"
        );
        assert_eq!(
            redact_url("https://hc-ping.com/1234-uuid"),
            "https://hc-ping.com/***"
        );
        assert_eq!(
            redact_url("http://user:pw@127.0.0.1:8080/x?token=1"),
            "http://***@127.0.0.1:8080/***"
        );
        assert_eq!(redact_url("https://example.com"), "https://example.com");
        assert!(!redact_url("https://example.com/?k=secret").contains("secret"));
    }

    #[test]
    fn ping_suffixes() {
        assert_eq!(
            ping_url_with("https://hc-ping.com/abc", "start").unwrap(),
            "https://hc-ping.com/abc/start"
        );
        assert_eq!(
            ping_url_with("https://hc-ping.com/abc/", "fail").unwrap(),
            "https://hc-ping.com/abc/fail"
        );
        assert_eq!(
            ping_url_with("https://hc.example/ping/abc?rid=1", "fail").unwrap(),
            "https://hc.example/ping/abc/fail?rid=1"
        );
    }

    #[test]
    fn on_lists() {
        assert!(On::FAILURE.fires(Outcome::Partial));
        assert!(On::FAILURE.fires(Outcome::Failure));
        assert!(!On::FAILURE.fires(Outcome::Success));
        assert!(On::BOTH.fires(Outcome::Success));
    }
}
