//! A private sshd for tests, as TESTING.md describes: `/usr/sbin/sshd -D -f CFG -E LOG`
//! as root, listening on 127.0.0.1 on a free port, with its own host key, authorized_keys,
//! known_hosts and logs in a temp folder. It is killed — with every session process it
//! forked — when the [`Sshd`] is dropped, also when a test panics.
//!
//! If sshd is missing or cannot start, [`Sshd::start`] panics: the SFTP tests fail, they
//! never skip. `scripts/test` installs `openssh-server`.
//!
//! Shared by `backends/tests/sftp.rs` and (through `#[path]`) `tests/e2e_sftp.rs`.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pronto_backends::sftp::SftpConfig;

pub const SSHD: &str = "/usr/sbin/sshd";
pub const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// How to run the server.
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// Run `sftp-server -l INFO` with its log in `sftp.log`, so a test can count the bytes
    /// the server wrote (`close "…" bytes read R written W` lines) instead of internal-sftp.
    pub sftp_log: bool,
    /// Extra sshd_config lines.
    pub extra_config: String,
    /// sshd's `LogLevel` (default `INFO`; `DEBUG1` logs the negotiated cipher).
    pub log_level: Option<&'static str>,
}

pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// Private key the tests log in with (mode 0600).
    pub client_key: PathBuf,
    /// `[127.0.0.1]:PORT ssh-ed25519 …` for the server's host key.
    pub known_hosts: PathBuf,
    /// The server's host public key line (`ssh-ed25519 AAAA… comment`).
    pub host_pub: String,
    pub log: PathBuf,
    pub sftp_log: PathBuf,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Make a fresh ed25519 key pair at `path` (private 0600) and `path.pub`.
pub fn keygen(path: &Path, comment: &str) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path));
}

impl Sshd {
    pub fn start() -> Sshd {
        Sshd::start_with(SshdOptions::default())
    }

    pub fn start_with(opts: SshdOptions) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server (scripts/test does); the SFTP tests need a real sshd"
        );
        std::fs::create_dir_all("/run/sshd").expect(
            "cannot create /run/sshd (sshd's privilege separation folder): run the tests as root",
        );
        let dir = tempfile::Builder::new()
            .prefix("pronto-sshd-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let host_key = d.join("host_key");
        keygen(&host_key, "pronto-test-host");
        let client_key = d.join("client_key");
        keygen(&client_key, "pronto-test-client");
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub"))
            .unwrap()
            .trim()
            .to_string();
        let log = d.join("sshd.log");
        let sftp_log = d.join("sftp.log");
        let subsystem = if opts.sftp_log {
            let wrapper = d.join("sftp-server-logged");
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nexec {SFTP_SERVER} -e -l INFO 2>>'{}'\n",
                    sftp_log.display()
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
            wrapper.display().to_string()
        } else {
            "internal-sftp".to_string()
        };

        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let cfg = d.join("sshd_config");
            std::fs::write(
                &cfg,
                format!(
                    "ListenAddress 127.0.0.1\n\
                     Port {port}\n\
                     HostKey {hk}\n\
                     PidFile {d}/sshd.pid\n\
                     AuthorizedKeysFile {d}/authorized_keys\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     PermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     MaxSessions 64\n\
                     MaxStartups 64:30:128\n\
                     LogLevel {level}\n\
                     {extra}\n\
                     Subsystem sftp {subsystem}\n",
                    hk = host_key.display(),
                    d = d.display(),
                    extra = opts.extra_config,
                    level = opts.log_level.unwrap_or("INFO"),
                ),
            )
            .unwrap();
            let _ = std::fs::remove_file(&log);
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-f")
                .arg(&cfg)
                .arg("-E")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let known_hosts = d.join("known_hosts");
                    let mut parts = host_pub.split_whitespace();
                    let (kt, kb) = (parts.next().unwrap(), parts.next().unwrap());
                    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kt} {kb}\n"))
                        .unwrap();
                    return Sshd {
                        dir,
                        port,
                        child: Some(child),
                        client_key,
                        known_hosts,
                        host_pub,
                        log,
                        sftp_log,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!(
                        "sshd exited with {status}: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = format!(
                        "sshd did not listen on port {port} within 10 s: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start a private sshd: {last_err}");
    }

    /// The listener's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Every process the listener forked (one tree per SSH connection).
    pub fn session_pids(&self) -> Vec<u32> {
        descendants(self.pid())
    }

    /// Kill every session (the connections drop); the listener keeps accepting.
    pub fn kill_sessions(&self) -> usize {
        let pids = self.session_pids();
        for &p in &pids {
            // SAFETY: plain kill(2) on pids we just read as sshd's descendants.
            unsafe {
                libc::kill(p as i32, libc::SIGKILL);
            }
        }
        pids.len()
    }

    /// Wait until no session process is left (after a client went away or was killed).
    pub fn wait_no_sessions(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.session_pids().is_empty() {
            assert!(
                Instant::now() < deadline,
                "sshd sessions still alive after {limit:?}: {:?}",
                self.session_pids()
                    .iter()
                    .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `SHA256:…` of the server's host key.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.dir.path().join("host_key.pub"))
    }

    /// A backend config for `root` on this server, logging in as root with the test key,
    /// this server's known_hosts, and no ssh config (`-F /dev/null`).
    pub fn config(&self, root: &Path) -> SftpConfig {
        self.config_as("root", root)
    }

    pub fn config_as(&self, user: &str, root: &Path) -> SftpConfig {
        let mut c = SftpConfig::from_url(&self.url_as(user, root)).expect("valid sftp URL");
        c.identity_file = Some(self.client_key.clone());
        c.known_hosts_file = Some(self.known_hosts.clone());
        c.ssh_config_file = Some(PathBuf::from("/dev/null"));
        c.connect_timeout = Some(Duration::from_secs(10));
        c
    }

    pub fn url(&self, root: &Path) -> String {
        self.url_as("root", root)
    }

    pub fn url_as(&self, user: &str, root: &Path) -> String {
        format!("sftp://{user}@127.0.0.1:{}{}", self.port, root.display())
    }

    /// Bytes the sftp-server wrote into files whose path contains `needle`, from the
    /// `sftp_log` (needs [`SshdOptions::sftp_log`]), counting log lines from byte `from`.
    pub fn bytes_written(&self, needle: &str, from: u64) -> u64 {
        self.log_bytes(needle, from, " written ")
    }

    /// Bytes the sftp-server read from files whose path contains `needle` (see
    /// [`bytes_written`](Self::bytes_written)).
    pub fn bytes_read(&self, needle: &str, from: u64) -> u64 {
        self.log_bytes(needle, from, " read ")
    }

    /// Sum the number after `word` on the `close "…" bytes read R written W` lines.
    fn log_bytes(&self, needle: &str, from: u64, word: &str) -> u64 {
        let log = std::fs::read(&self.sftp_log).unwrap_or_default();
        let text = String::from_utf8_lossy(&log[(from as usize).min(log.len())..]).into_owned();
        text.lines()
            .filter(|l| l.contains("close \"") && l.contains(needle))
            .filter_map(|l| {
                let (_, after) = l.rsplit_once(word)?;
                after.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    }

    /// Current length of the sftp log (a mark for [`bytes_written`](Self::bytes_written)).
    pub fn sftp_log_len(&self) -> u64 {
        std::fs::metadata(&self.sftp_log)
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pids = descendants(child.id());
            let _ = child.kill();
            for p in pids {
                // SAFETY: plain kill(2) on sshd's descendants.
                unsafe {
                    libc::kill(p as i32, libc::SIGKILL);
                }
            }
            let _ = child.wait();
        }
    }
}

/// `SHA256:…` of a public key file.
pub fn fingerprint_of(pub_key: &Path) -> String {
    let out = run(Command::new("ssh-keygen").arg("-lf").arg(pub_key));
    out.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .expect("ssh-keygen -l prints a SHA256 fingerprint")
        .to_string()
}

/// All descendants of `pid`, from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // pid (comm) state ppid …; comm may hold spaces and parentheses.
            let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
                continue;
            };
            let mut fields = after.split_whitespace();
            // Zombies are gone already: only their exit status waits to be collected.
            if fields.next() == Some("Z") {
                continue;
            }
            if let Some(ppid) = fields.next().and_then(|s| s.parse::<u32>().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(cur) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == cur && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}
