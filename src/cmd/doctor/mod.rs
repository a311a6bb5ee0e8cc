//! `doctor`: checks what a backup run needs, one line per check, with a fix for each
//! failure. Replaces the seed's "Troubleshooting" (disk space, permissions, tools).
//!
//! Checks: the config; the backup folder (exists or can be made, writable); free disk
//! space against the newest archive's size; each source folder; each remote's
//! reachability and credentials (a listing) and write permission (a small probe object,
//! deleted again); the tools the config needs (`pg_dump`, `redis-cli`, `ssh`); the log
//! file, the metrics folder and the notification command.
//!
//! Exit 0 when every check passes, 1 when one fails, 2 when the config itself is broken.

mod check;
pub mod services;

use crate::fsutil::which;
pub use check::Check;
use check::{fail, ok};

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use bytes::Bytes;

use crate::config::{Config, SourceKind};
use crate::error::Exit;
use crate::fsutil::human_bytes;

/// Run doctor on a config file (loaded here, so that a broken one is a failed check).
pub fn run(config_path: Option<&Path>, json: bool, out: &mut dyn Write) -> Result<Exit> {
    let mut checks = Vec::new();
    let cfg = match crate::config::locate(config_path).and_then(|f| crate::config::load(&f)) {
        Ok(c) => {
            checks.push(ok("config", format!("{} is valid", c.file.display())));
            Some(c)
        }
        Err(e) => {
            checks.push(fail(
                "config",
                format!("{e:#}"),
                "correct the file, line and key named above (examples/ has a config for each remote kind)",
            ));
            None
        }
    };
    if let Some(cfg) = &cfg {
        crate::logging::attach_file(cfg.log.as_ref());
        let rt = crate::remotes::runtime()?;
        checks.extend(local_checks(cfg));
        checks.extend(rt.block_on(remote_checks(cfg)));
        checks.extend(tool_checks(cfg));
        checks.extend(postgres_checks(cfg));
        checks.extend(ops_checks(cfg));
        checks.extend(encryption_checks(cfg));
        checks.extend(adopt_check(cfg));
        checks.extend(services::checks(cfg));
        checks.push(schedule_check());
    }
    print(&checks, json, out)?;
    Ok(if cfg.is_none() {
        Exit::Usage
    } else if checks.iter().all(|c| c.ok) {
        Exit::Ok
    } else {
        Exit::Error
    })
}

fn print(checks: &[Check], json: bool, out: &mut dyn Write) -> Result<()> {
    if json {
        let failed = checks.iter().filter(|c| !c.ok).count();
        let v = serde_json::json!({ "ok": failed == 0, "failed": failed, "checks": checks });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    for c in checks {
        if c.ok {
            writeln!(out, "ok    {}: {}", c.name, c.detail)?;
        } else {
            writeln!(out, "FAIL  {}: {}", c.name, c.detail)?;
            if let Some(f) = &c.fix {
                writeln!(out, "      fix: {f}")?;
            }
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        writeln!(out, "all {} checks passed", checks.len())?;
    } else {
        writeln!(out, "{failed} of {} checks FAILED", checks.len())?;
    }
    Ok(())
}

/// Each postgres source that answers: what its backup would leave out (databases that
/// refuse connections, relations in schemas pg_dump skips). A server that does not
/// answer is left to the backup to report.
fn postgres_checks(cfg: &Config) -> Vec<Check> {
    let mut v = Vec::new();
    for s in &cfg.sources {
        let Some(pg) = &s.postgres else { continue };
        let name = format!("postgres {}", s.name);
        // A pgpass file is written only for a password_file: then in a private temp folder.
        let work = match &pg.password_file {
            Some(_) => match crate::source::WorkDir::create(
                std::env::temp_dir().join(format!("pronto-offsite-doctor-{}", std::process::id())),
            ) {
                Ok(w) => Some(w),
                Err(_) => continue,
            },
            None => None,
        };
        let dir = work
            .as_ref()
            .map_or_else(std::env::temp_dir, |w| w.path().to_path_buf());
        let Ok(client) = crate::source::postgres::PgClient::new(pg, &dir) else {
            continue;
        };
        let Ok(server) = client.server_version() else {
            continue;
        };
        v.push(pg_dump_check(&client, &s.name, &server));
        match client.left_out() {
            Ok(l) if l.is_empty() => v.push(ok(name, "a backup leaves nothing out")),
            Ok(l) => v.push(fail(
                name,
                format!("a backup would leave out: {}", l.join("; ")),
                "include or move what is named above, so the archive holds it",
            )),
            Err(_) => {}
        }
    }
    v
}

/// pg_dump refuses to dump a server of a newer major version: the night's backup would
/// fail. Compares `pg_dump --version` (as the backup runs it) with the server's.
fn pg_dump_check(client: &crate::source::postgres::PgClient, source: &str, server: &str) -> Check {
    use crate::source::postgres::major_version;
    let name = format!("postgres {source} pg_dump");
    let tool = match client.tool_version("pg_dump") {
        Ok(t) => t,
        Err(e) => {
            return fail(
                name,
                format!("{e:#}"),
                "apt-get install postgresql-client (the server's major version or newer), or set command_prefix to run the server's own pg_dump",
            )
        }
    };
    match (major_version(&tool), major_version(server)) {
        (Some(t), Some(srv)) if t < srv => fail(
            name,
            format!("{tool} is older than the server ({server}): pg_dump refuses to dump a newer major version, so the backup would fail"),
            format!("install postgresql-client-{srv} (apt.postgresql.org has every version), or set command_prefix to run the server's own pg_dump (e.g. [\"docker\", \"compose\", \"exec\", \"-T\", \"postgres\"])"),
        ),
        _ => ok(name, format!("{tool} can dump the server ({server})")),
    }
}

/// `[encryption]`: what archives are encrypted to, and whether the identity file (when
/// set) opens them. Never prints a key: fingerprints only.
fn encryption_checks(cfg: &Config) -> Vec<Check> {
    let enc = &cfg.encryption;
    let mut v = Vec::new();
    if enc.enabled() {
        v.push(ok(
            "encryption",
            format!(
                "archives are age-encrypted to {} recipient(s): {}",
                enc.recipients.len(),
                enc.fingerprints().join(", ")
            ),
        ));
    } else if enc.configured && enc.identity_file.is_some() {
        v.push(fail(
            "encryption",
            "[encryption] names an identity_file but no recipients: backup refuses to run",
            "add recipients = [\"age1...\"] (the public key: `age-keygen -y KEY_FILE` prints it)",
        ));
    } else {
        v.push(ok(
            "encryption",
            "off: archives are stored unencrypted (run `pronto-offsite keygen` and set [encryption] recipients to encrypt them)",
        ));
    }
    if let Some(file) = &enc.identity_file {
        match crate::crypto::Identities::load(file) {
            Err(e) => v.push(fail(
                "encryption identity",
                format!("{e:#}"),
                "point [encryption] identity_file at the age key file (`pronto-offsite keygen` writes one)",
            )),
            Ok(ids) if enc.enabled() && !ids.recipients().iter().any(|r| enc.recipients.contains(r)) => {
                v.push(fail(
                    "encryption identity",
                    format!(
                        "{} ({}) matches none of the recipients: archives made now could not be restored with it",
                        file.display(),
                        ids.fingerprints().join(", ")
                    ),
                    "set identity_file to the key whose public key is in recipients, or add its public key to recipients",
                ))
            }
            Ok(ids) => v.push(ok(
                "encryption identity",
                format!("{} holds {}", file.display(), ids.fingerprints().join(", ")),
            )),
        }
    }
    v
}

/// Create and remove a small file in `dir` (created if missing).
fn probe_dir(dir: &Path) -> std::io::Result<()> {
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)?;
    let p = crate::fsutil::temp_name(&dir.join("doctor-probe"));
    std::fs::write(&p, b"pronto-offsite doctor probe\n")?;
    std::fs::remove_file(&p)
}

fn local_checks(cfg: &Config) -> Vec<Check> {
    let mut v = Vec::new();
    let dir = &cfg.local.dir;
    match probe_dir(dir) {
        Ok(()) => v.push(ok("backup folder", format!("{} is writable", dir.display()))),
        Err(e) => v.push(fail(
            "backup folder",
            format!("cannot write in {}: {e}", dir.display()),
            format!(
                "create it and give the user running pronto-offsite write access: mkdir -p {0} && chown $(id -un) {0} && chmod 700 {0}",
                dir.display()
            ),
        )),
    }
    let now = chrono::Utc::now();
    let future: Vec<String> = crate::catalog::scan(&cfg.local)
        .map(|all| {
            all.into_iter()
                .filter(|a| crate::catalog::named_in_future(a.name.time, now))
                .map(|a| a.name.file)
                .collect()
        })
        .unwrap_or_default();
    if future.is_empty() {
        v.push(ok("clock", "no local archive is named in the future"));
    } else {
        v.push(fail(
            "clock",
            format!(
                "{} named in the future (this host's clock says {}): a clock was or is wrong",
                future.join(", "),
                now.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            "set the clock right (timedatectl, NTP); then, once you have checked what they hold, move those archives away (they are never `latest` and never pruned as the newest)",
        ));
    }
    let newest = crate::catalog::scan(&cfg.local).ok().and_then(|all| {
        all.into_iter()
            .filter_map(|a| a.manifest.map(|m| m.size))
            .next_back()
    });
    match crate::fsutil::free_space(dir) {
        Some(d) => match newest {
            Some(size) if d.free_bytes < size.saturating_add(size / 10) => v.push(fail(
                "disk space",
                format!(
                    "{} free on {}; the newest archive is {}, and the next one needs about as much (+10%)",
                    human_bytes(d.free_bytes),
                    d.path,
                    human_bytes(size)
                ),
                "free space there (`pronto-offsite status` shows what the retention policy keeps) or move [local] dir to a larger disk",
            )),
            Some(size) => v.push(ok(
                "disk space",
                format!("{} free on {} (newest archive {})", human_bytes(d.free_bytes), d.path, human_bytes(size)),
            )),
            None => v.push(ok(
                "disk space",
                format!("{} free on {} (no archive yet to compare with)", human_bytes(d.free_bytes), d.path),
            )),
        },
        None => v.push(fail(
            "disk space",
            format!("cannot read the free space of {}", dir.display()),
            "check that the folder's filesystem is mounted",
        )),
    }
    for s in &cfg.sources {
        let Some(path) = &s.path else { continue };
        let name = format!("source {}", s.name);
        match std::fs::read_dir(path) {
            Ok(_) => v.push(ok(name, format!("{} is readable", path.display()))),
            Err(e) => v.push(fail(
                name,
                format!("cannot read {}: {e}", path.display()),
                "fix the source's `path`, or run pronto-offsite as a user that can read it (root for Docker volumes)",
            )),
        }
        let left = crate::live_swap::interrupted_restore_leftovers(path);
        if !left.is_empty() {
            let list: Vec<String> = left.iter().map(|p| p.display().to_string()).collect();
            v.push(fail(
                format!("source {} restore leftovers", s.name),
                format!("left by an interrupted restore: {}", list.join(", ")),
                format!(
                    "the next `pull --restore` of it finishes or undoes the swap; or check that {} holds what you want and remove these copies",
                    path.display()
                ),
            ));
        }
    }
    v
}

fn remote_fix(e: &anyhow::Error, url: &str) -> String {
    let be = e
        .chain()
        .find_map(|c| c.downcast_ref::<pronto_backends::BackendError>());
    match be {
        Some(pronto_backends::BackendError::Auth(_)) => format!(
            "the credentials for {url} are missing or lack permission: they need list, read, write and delete on its prefix"
        ),
        Some(pronto_backends::BackendError::HostKey(_)) => format!(
            "the SSH host key of {url}'s server is not trusted here: check its fingerprint with the server's administrator, then accept it as the message says"
        ),
        Some(pronto_backends::BackendError::NotFound(_)) => {
            format!("{url} does not exist: create the bucket or folder, or correct the URL")
        }
        Some(pronto_backends::BackendError::Transient { .. }) => {
            format!("{url} did not answer in time: check the host name, the network and any firewall")
        }
        _ => format!("check the remote's url and options against examples/, and that {url} is reachable from this host"),
    }
}

async fn remote_checks(cfg: &Config) -> Vec<Check> {
    let mut v = Vec::new();
    for remote in &cfg.remotes {
        let name = format!("remote {}", remote.name);
        let r = match crate::remotes::open(cfg, remote) {
            Ok(r) => r,
            Err(e) => {
                let fix = remote_fix(&e, &remote.url);
                v.push(fail(name, format!("cannot open: {e:#}"), fix));
                continue;
            }
        };
        let desc = r.backend.describe();
        let listed =
            tokio::time::timeout(std::time::Duration::from_secs(60), r.backend.list("")).await;
        match listed {
            Err(_) => {
                v.push(fail(
                    name,
                    format!("listing {desc} took longer than 60s"),
                    format!("{desc} did not answer in time: check the host name, the network and any firewall"),
                ));
                continue;
            }
            Ok(Err(e)) => {
                let e = anyhow::Error::new(e);
                let fix = remote_fix(&e, &desc);
                v.push(fail(name, format!("cannot list {desc}: {e:#}"), fix));
                continue;
            }
            Ok(Ok(objects)) => {
                let st = crate::plan::remote_state(&cfg.local.prefix, &objects);
                v.push(ok(
                    name.clone(),
                    format!(
                        "{desc} is reachable ({} archive(s))",
                        st.archives.values().filter(|a| a.complete()).count()
                    ),
                ));
            }
        }
        v.extend(versioning_check(remote, &r.backend).await);
        // Write permission: a small probe object, deleted again.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = format!("pronto-offsite-doctor-probe-{}-{nanos}", std::process::id());
        let body = Bytes::from_static(b"pronto-offsite doctor probe; safe to delete\n");
        let sha = pronto_backends::sha256_of(&body);
        let wname = format!("remote {} write", remote.name);
        let before = std::time::SystemTime::now();
        match r.backend.put(&key, body, sha).await {
            Ok(_) => {
                let after = std::time::SystemTime::now();
                if let Ok(Some(at)) = r.backend.head(&key).await.map(|m| m.modified) {
                    v.push(clock_check(&remote.name, &desc, before, after, at));
                }
                match r.backend.delete(&key).await {
                Ok(()) => v.push(ok(wname, format!("wrote and deleted a probe object in {desc}"))),
                Err(e) => v.push(fail(
                    wname,
                    format!("wrote {key} in {desc} but could not delete it: {e}"),
                    "the credentials need delete permission too (pruning needs it); remove the probe object by hand",
                )),
                }
            }
            Err(e) => {
                let e = anyhow::Error::new(e);
                let fix = remote_fix(&e, &desc);
                v.push(fail(wname, format!("cannot write to {desc}: {e:#}"), fix));
            }
        }
    }
    v
}

/// Where `doctor` looks for the schedule that runs the tool at night (files, or folders
/// whose files it reads), besides `crontab -l` and `~/.config/systemd/user`.
/// `PRONTO_OFFSITE_SCHEDULE_PATHS` (`:`-separated) replaces them all.
const SCHEDULE_PATHS: &[&str] = &[
    "/etc/crontab",
    "/etc/cron.d",
    "/etc/cron.daily",
    "/etc/cron.hourly",
    "/var/spool/cron/crontabs",
    "/var/spool/cron",
    "/etc/systemd/system",
];

/// Whether a cron table or systemd unit runs pronto-offsite: an uncommented line that
/// names it, in the places cron and systemd read. Nothing scheduled means no backup
/// tonight, whatever else passes.
fn schedule_check() -> Check {
    let (paths, defaults) = match std::env::var_os("PRONTO_OFFSITE_SCHEDULE_PATHS") {
        Some(v) => (std::env::split_paths(&v).collect::<Vec<_>>(), false),
        None => {
            let mut p: Vec<PathBuf> = SCHEDULE_PATHS.iter().map(PathBuf::from).collect();
            if let Some(home) = std::env::var_os("HOME") {
                p.push(PathBuf::from(home).join(".config/systemd/user"));
            }
            (p, true)
        }
    };
    let mut found: Vec<String> = Vec::new();
    for p in &paths {
        let files: Vec<PathBuf> = if p.is_dir() {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|f| f.is_file())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            vec![p.clone()]
        };
        for f in files {
            if std::fs::read(&f).is_ok_and(|b| schedules_us(&String::from_utf8_lossy(&b))) {
                found.push(f.display().to_string());
            }
        }
    }
    if defaults {
        let crontab = std::process::Command::new("crontab")
            .arg("-l")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output();
        if let Ok(o) = crontab {
            if o.status.success() && schedules_us(&String::from_utf8_lossy(&o.stdout)) {
                found.push("crontab -l".into());
            }
        }
    }
    if found.is_empty() {
        fail(
            "schedule",
            "no cron table or systemd unit runs pronto-offsite: nothing makes tonight's backup",
            "schedule `pronto-offsite -q hook` nightly with cron or a systemd timer (docs/operations.md shows both)",
        )
    } else {
        ok(
            "schedule",
            format!("pronto-offsite is run from {}", found.join(", ")),
        )
    }
}

/// An uncommented line of a cron table or unit file that runs pronto-offsite.
fn schedules_us(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        !l.starts_with('#') && !l.starts_with(';') && l.contains("pronto-offsite")
    })
}

/// How far the store's clock may be from ours before doctor fails: the tolerance under
/// which an archive is not yet "named in the future".
const CLOCK_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(300);

/// The store's clock against ours: `at` is when the store says it wrote the probe
/// object, which this host wrote between `before` and `after` (stores round to the
/// second, so a second of slack). Archive names carry this host's time while `status`
/// and S3 request signing rely on the store's: a skew of minutes confuses both.
fn clock_check(
    remote: &str,
    desc: &str,
    before: std::time::SystemTime,
    after: std::time::SystemTime,
    at: std::time::SystemTime,
) -> Check {
    let slack = std::time::Duration::from_secs(1);
    let (skew, way) = if let Ok(d) = (before - slack).duration_since(at) {
        (d, "behind")
    } else if let Ok(d) = at.duration_since(after + slack) {
        (d, "ahead of")
    } else {
        (std::time::Duration::ZERO, "")
    };
    let name = format!("remote {remote} clock");
    if skew > CLOCK_TOLERANCE {
        fail(
            name,
            format!(
                "the clock of {desc} is {} minutes {way} this host's (it stamped a probe object written now at {})",
                (skew.as_secs() + 30) / 60,
                chrono::DateTime::<chrono::Utc>::from(at).format("%Y-%m-%d %H:%M:%S UTC")
            ),
            "set the clocks right with NTP (timedatectl set-ntp true) on this host and, if it is yours, on the server",
        )
    } else {
        ok(
            name,
            format!(
                "the clock of {desc} agrees with this host's (within {}s)",
                skew.as_secs().max(1)
            ),
        )
    }
}

/// A bucket with versioning keeps every deleted archive as a noncurrent version: prune
/// frees nothing until a lifecycle rule expires them. Failed when no rule does; no check
/// where the store has no versioning (or it was never on).
pub async fn versioning_check(
    remote: &crate::config::Remote,
    backend: &std::sync::Arc<dyn pronto_backends::Backend>,
) -> Option<Check> {
    let name = format!("remote {} versioning", remote.name);
    let desc = backend.describe();
    let gcs = remote.url.starts_with("gs://");
    let (rule_fix, permission_fix) = if gcs {
        (
            "add a lifecycle rule that deletes noncurrent versions (action Delete, condition daysSinceNoncurrentTime; docs/backends/s3-gcs.md: \"Versioned buckets\"), or turn versioning off on the bucket",
            "allow storage.buckets.get to these credentials, so that doctor can tell whether deleted archives keep costing",
        )
    } else {
        (
            "add a lifecycle rule with NoncurrentVersionExpiration (docs/backends/s3-gcs.md: \"Versioned buckets\"), or suspend versioning on the bucket",
            "allow s3:GetBucketVersioning and s3:GetLifecycleConfiguration to these credentials, so that doctor can tell whether deleted archives keep costing",
        )
    };
    match backend.versioning().await {
        Ok(None) => None,
        Ok(Some(v)) if v.noncurrent_expiration => Some(ok(
            name,
            format!("bucket versioning is {} on {desc}; a lifecycle rule expires noncurrent versions, so pruned archives stop costing once it runs", v.status),
        )),
        Ok(Some(v)) => Some(fail(
            name,
            crate::remotes::versioning_warning(&v, &desc),
            rule_fix,
        )),
        Err(e) => Some(fail(
            name,
            format!("cannot read the bucket's versioning on {desc}: {e}"),
            permission_fix,
        )),
    }
}

fn tool_checks(cfg: &Config) -> Vec<Check> {
    let mut needs: Vec<(&str, &str, &str)> = Vec::new();
    let pg_prefixes: Vec<&str> = cfg
        .sources
        .iter()
        .filter_map(|s| s.postgres.as_ref())
        .map(|p| p.command_prefix.first().map(String::as_str).unwrap_or(""))
        .collect();
    // With a command_prefix (`docker compose exec -T postgres`), pg_dump runs inside the
    // container: the host needs the prefix's program, not pg_dump.
    if pg_prefixes.contains(&"") {
        needs.push((
            "pg_dump",
            "a postgres source",
            "apt-get install postgresql-client (the major version of the server or newer)",
        ));
    }
    for program in pg_prefixes.into_iter().filter(|p| !p.is_empty()) {
        if !needs.iter().any(|(t, _, _)| *t == program) {
            needs.push((
                program,
                "a postgres source's command_prefix",
                "install it, or give its full path as the first word of command_prefix",
            ));
        }
    }
    if cfg.sources.iter().any(|s| s.kind == SourceKind::Redis) {
        needs.push(("redis-cli", "a redis source", "apt-get install redis-tools"));
    }
    if cfg.remotes.iter().any(|r| r.url.starts_with("sftp://")) {
        needs.push(("ssh", "an sftp:// remote", "apt-get install openssh-client"));
    }
    needs
        .into_iter()
        .map(|(tool, why, fix)| match which(tool) {
            Some(p) => ok(
                format!("tool {tool}"),
                format!("{} (for {why})", p.display()),
            ),
            None => fail(
                format!("tool {tool}"),
                format!("not found on PATH, and {why} needs it"),
                fix,
            ),
        })
        .collect()
}

fn ops_checks(cfg: &Config) -> Vec<Check> {
    let mut v = Vec::new();
    if let Some(l) = &cfg.log {
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&l.file);
        match res {
            Ok(_) => v.push(ok("log file", format!("{} is writable", l.file.display()))),
            Err(e) => v.push(fail(
                "log file",
                format!("cannot write {}: {e}", l.file.display()),
                "create its folder and give the user running pronto-offsite write access, or change [log] file",
            )),
        }
    }
    if let Some(m) = &cfg.metrics {
        let dir = m.textfile.parent().unwrap_or(Path::new("."));
        match probe_dir(dir) {
            Ok(()) => v.push(ok("metrics", format!("{} is writable", dir.display()))),
            Err(e) => v.push(fail(
                "metrics",
                format!("cannot write in {}: {e}", dir.display()),
                "point [metrics] textfile into node_exporter's --collector.textfile.directory and make it writable",
            )),
        }
    }
    if let Some(c) = &cfg.notify.command {
        match which(&c.argv[0]) {
            Some(p) => v.push(ok("notify command", format!("{} found", p.display()))),
            None => v.push(fail(
                "notify command",
                format!("{} is not on PATH", c.argv[0]),
                "install it (for `mail`: apt-get install bsd-mailx) or give its full path in [notify] command",
            )),
        }
    }
    v
}

/// `doctor`: a failed check when manifest-less archives of ours are in the folder.
fn adopt_check(cfg: &Config) -> Option<Check> {
    let all = crate::catalog::scan(&cfg.local).ok()?;
    let detail = crate::catalog::adoption_hint(&all)?;
    Some(Check {
        name: "adopt".into(),
        ok: false,
        detail,
        fix: Some(
            "run `pronto-offsite adopt` (it refuses damaged ones with the reason); delete an interrupted backup's file by hand".into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_store_clock_minutes_away_fails_and_one_within_the_tolerance_passes() {
        let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let after = before + Duration::from_secs(2);
        let check = |at| clock_check("s3", "s3://b", before, after, at);
        // Rounded down to the second, or a little late: agrees.
        assert!(check(before - Duration::from_millis(900)).ok);
        assert!(check(after + Duration::from_secs(200)).ok);
        let behind = check(before - Duration::from_secs(11 * 60));
        assert!(!behind.ok);
        assert!(
            behind.detail.contains("11 minutes behind"),
            "{}",
            behind.detail
        );
        assert!(behind.fix.as_deref().unwrap().contains("NTP"));
        let ahead = check(after + Duration::from_secs(3600));
        assert!(schedules_us(
            "0 3 * * * root /usr/local/bin/pronto-offsite -q hook\n"
        ));
        assert!(schedules_us(
            "[Service]\nExecStart=/usr/local/bin/pronto-offsite hook\n"
        ));
        assert!(!schedules_us(
            "# 0 3 * * * root pronto-offsite -q hook\n0 4 * * * other\n"
        ));
        assert!(
            !ahead.ok && ahead.detail.contains("60 minutes ahead of"),
            "{}",
            ahead.detail
        );
    }
}
