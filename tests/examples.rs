//! Every config under examples/ parses, and the cron and systemd examples run the hook.

use std::path::{Path, PathBuf};

fn tomls(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            tomls(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn every_example_config_parses() {
    let mut files = Vec::new();
    tomls(&examples(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("ops.toml")), "{files:?}");
    for f in &files {
        if let Err(e) = pronto_offsite::config::load(f) {
            panic!("{}: {e:#}", f.display());
        }
    }
}

#[test]
fn the_ops_example_sets_every_operations_section() {
    let cfg = pronto_offsite::config::load(&examples().join("ops.toml")).unwrap();
    let log = cfg.log.as_ref().unwrap();
    assert_eq!(log.file, Path::new("/var/log/pronto-backup.log"));
    assert_eq!(log.max_size, 10 << 20);
    assert_eq!(log.keep, 5);
    assert!(cfg
        .metrics
        .unwrap()
        .textfile
        .ends_with("pronto_offsite.prom"));
    assert_eq!(
        cfg.status.max_age,
        std::time::Duration::from_secs(26 * 3600)
    );
    assert_eq!(cfg.hook.lock_wait, std::time::Duration::from_secs(3600));
    let n = &cfg.notify;
    let w = n.webhook.as_ref().unwrap();
    assert_eq!(w.format, pronto_offsite::notify::WebhookFormat::Slack);
    assert!(w.on.success && w.on.failure);
    let p = n.ping.as_ref().unwrap();
    assert!(
        !p.on.success && p.on.failure,
        "the shared `on` applies to the ping too"
    );
    let c = n.command.as_ref().unwrap();
    assert_eq!(c.argv[0], "mail");
    assert!(c.on.failure && !c.on.success);
}

#[test]
fn cron_and_systemd_examples_run_the_hook() {
    let cron = std::fs::read_to_string(examples().join("cron")).unwrap();
    let lines: Vec<&str> = cron
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    // The seed's schedule: daily at 2 AM, Sunday at 3 AM.
    assert_eq!(lines.len(), 2, "{cron}");
    assert!(
        lines[0].starts_with("0 2 * * * ") && lines[1].starts_with("0 3 * * 0 "),
        "{cron}"
    );
    for l in &lines {
        // /etc/cron.d format: 5 time fields, a user, then the command.
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f[5], "root");
        assert!(
            f[6].ends_with("pronto-offsite") && l.ends_with(" hook"),
            "{l}"
        );
    }
    let service =
        std::fs::read_to_string(examples().join("systemd/pronto-offsite.service")).unwrap();
    assert!(service.contains("Type=oneshot"));
    let exec = service
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .unwrap();
    assert!(exec.ends_with(" hook"), "{exec}");
    let timer = std::fs::read_to_string(examples().join("systemd/pronto-offsite.timer")).unwrap();
    assert!(
        timer.contains("OnCalendar=*-*-* 02:00:00")
            && timer.contains("OnCalendar=Sun *-*-* 03:00:00")
    );
    assert!(timer.contains("WantedBy=timers.target"));
}

/// The example's command line with the binary and config paths made local.
fn local_command(line: &str, config: &Path) -> String {
    let bin = assert_cmd::cargo::cargo_bin("pronto-offsite");
    line.replace("/usr/local/bin/pronto-offsite", &bin.display().to_string())
        .replace(
            "/etc/pronto-offsite/config.toml",
            &config.display().to_string(),
        )
}

/// Run a command line as cron does (`sh -c`, a bare environment); (code, stdout+stderr).
fn run_like_cron(cmd: &str, cwd: &Path) -> (i32, String) {
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", cwd)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

/// Quiet means quiet: the README's cron line (and the systemd unit's ExecStart) print
/// nothing at all on a good night, so cron sends no mail, and a short summary naming the
/// failed step and remote on a bad one.
#[test]
fn cron_and_systemd_lines_print_nothing_on_success_and_a_short_summary_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), "<h1>pronto</h1>").unwrap();
    let remote = dir.path().join("remote");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[local]\ndir = \"backups\"\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n\n[[remotes]]\nname = \"nas\"\nurl = \"file://{}\"\n",
            remote.display()
        ),
    )
    .unwrap();
    let cron = std::fs::read_to_string(examples().join("cron")).unwrap();
    let cron_line = cron.lines().find(|l| l.starts_with("0 2 * * * ")).unwrap();
    let cron_cmd = cron_line
        .split_whitespace()
        .skip(6)
        .collect::<Vec<_>>()
        .join(" ");
    let service =
        std::fs::read_to_string(examples().join("systemd/pronto-offsite.service")).unwrap();
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    for (what, line) in [("cron", cron_cmd.as_str()), ("systemd", exec)] {
        let cmd = local_command(line, &config);
        let (code, out) = run_like_cron(&cmd, dir.path());
        assert_eq!((code, out.as_str()), (0, ""), "{what}: {cmd}");
    }
    // A bad night: the remote's folder is a plain file, so the push fails.
    std::fs::remove_dir_all(&remote).unwrap();
    std::fs::write(&remote, "not a folder").unwrap();
    for (what, line) in [("cron", cron_cmd.as_str()), ("systemd", exec)] {
        let (code, out) = run_like_cron(&local_command(line, &config), dir.path());
        assert_eq!(code, 3, "{what}: {out}");
        assert!(
            out.contains("push FAILED to nas") && out.lines().count() <= 15,
            "{what}: a short summary naming the remote, got:\n{out}"
        );
    }
}
