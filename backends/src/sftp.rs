//! SFTP backend (`sftp://user@host:port/path`): an off-site server over SSH.
//!
//! Built on the system `ssh` (through the `openssh` crate, native mux) and
//! `openssh-sftp-client`. The user's `~/.ssh/config`, agent and keys work exactly as they
//! do for `ssh`; per-remote options add an identity file, a known_hosts file, a config
//! file and a connect timeout (see [`SftpConfig`]).
//!
//! # Connection
//! One `ssh` master per backend instance, its control socket in a private (`0700`) temp
//! folder that is removed with the backend; SFTP runs as a channel of that master, and
//! `remote_hash = "exec"` runs a hash command as another channel of the same connection.
//! The master is started with `BatchMode=yes` (never a password prompt),
//! `ServerAliveInterval=15` (a dead link is noticed) and `ControlPersist=30s` (a killed
//! `push` does not leave an `ssh` process behind for long).
//! On a CPU with AES instructions, when nobody configured `Ciphers`, AES-GCM goes first
//! in ssh's cipher list (`Inner::config_preferring_aes_gcm`): half the CPU of the
//! default chacha20-poly1305 there, which a fast transfer is bound by.
//!
//! The connection is made lazily on first use. When a call fails because the connection
//! dropped (the SSH link died, the server's session process was killed, a timeout), the
//! error is [`BackendError::Transient`] and the connection is marked broken: the
//! replicator retries the call, and the retry opens a new connection.
//!
//! # Host keys
//! Checked strictly (`StrictHostKeyChecking=yes`; the `openssh` crate's own default would
//! silently add unknown keys). An unknown or changed key fails with
//! [`BackendError::HostKey`] naming the host, the fingerprint of the key the server offers
//! (taken from a second `ssh -v` attempt that stops at the same check) and how to accept
//! it: `ssh-keyscan -p PORT HOST >> known_hosts`, or `accept_new_host_key = true`
//! (`StrictHostKeyChecking=accept-new`: an unknown key is recorded, a changed key is
//! still refused).
//!
//! # Layout on the server
//! ```text
//! <root>/<key>                       one file per object; key folders are real folders
//! <root>/<key>.sha256                `<hex>  <name>` (sha256sum format): `sha256sum -c` works there
//! <root>/<key>.<16 hex>.partial      a write in progress (a put, or a multipart upload)
//! <root>/<key>.sha256.<16 hex>.partial   a sidecar being written (hex: the object's sha256)
//! ```
//! A sidecar staged by a verification that never committed (the connection broke) is
//! reused by the next push of the same bytes, and removed by an abort of the upload.
//! Names ending in `.partial` or `.sha256` are reserved: such keys are refused, and
//! [`list`](Backend::list) never shows such files. Files are created `0600`, folders
//! `0700`; missing folders (the root included) are created.
//!
//! # Atomic writes
//! `put` writes `<key>.<nonce>.partial`, fsyncs it when the server offers the
//! `fsync@openssh.com` extension, verifies the finished file's SHA-256 on the server, then
//! commits: remove the old sidecar, `posix-rename@openssh.com` the partial over the key,
//! write the new sidecar (temp + rename). A crash between those steps leaves an object
//! without a sidecar (reported as `sha256: None`), never a sidecar describing other
//! bytes. SFTP has no way to fsync a folder: the renames are as durable as the server's
//! filesystem makes them.
//!
//! # Verification
//! Before the rename the partial file is hashed on the server ([`RemoteHash`]): by
//! running `openssl dgst -sha256` there, or `sha256sum` where openssl is missing (files
//! of 1 MiB or more; smaller ones are cheaper to read back), or by reading it back over
//! the same connection. The default (`Auto`) runs the command where it can and reads back
//! where it cannot (no shell access, `ForceCommand internal-sftp`), quietly;
//! `remote_hash = "exec"` warns once when it has to read back; `"read"` always reads back.
//!
//! # Multipart: parts at their offsets in one `.partial` file
//! The trait does not tell the backend the part size (not at `create_upload`, and a part's
//! own size says nothing when it is the last, shorter one — which may arrive first). So
//! this backend fixes it: [`Capabilities`] has `min_part_size == max_part_size ==`
//! [`PART_SIZE`], which leaves the caller no choice, and the upload id
//! (`<16 hex nonce>-<part size>`) records the size the upload was created with. Part `n`
//! is written at `(n - 1) * part_size` into `<key>.<nonce>.partial` and fsynced before its
//! receipt (token: the part's SHA-256) is returned. Re-sending a part overwrites its
//! region. [`complete_upload`](Backend::complete_upload) checks the receipts (numbered
//! `1..=k` without gaps, every part but the last exactly `part_size`), checks that the
//! file on the server holds at least their total (a part that never arrived is an error,
//! not a hole), truncates a stale longer tail, verifies every part's SHA-256 and the
//! whole file's while reading it back (with `exec`: the whole file's), and commits as
//! `put` does. Nothing needs copying on the server, so a resumed upload costs only the
//! parts the journal lacks.
//!
//! An upload id plus receipts saved to disk complete from a new process: everything is
//! derived from the key and the id. A retried `complete_upload` whose first attempt
//! committed but lost its reply succeeds when the object is there with the expected
//! size and hash.
//!
//! # Errors
//! No such file → [`BackendError::NotFound`]; permission denied →
//! [`BackendError::Auth`] naming the path, the user and the host; a dropped connection or
//! timeout → [`BackendError::Transient`]; anything else → [`BackendError::Permanent`].

use std::ffi::OsString;
use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::file::File;
use openssh_sftp_client::metadata::{MetaData, Permissions};
use openssh_sftp_client::{Sftp, SftpOptions};
use sha2::Digest;
use tokio::io::AsyncSeek;

use crate::{
    check_fixed_part_receipts, check_sha256 as check_sha, Backend, BackendError, ByteStream,
    Capabilities, ObjectMeta, PartReceipt, Result, UploadId,
};

type SftpError = openssh_sftp_client::Error;

/// The one part size of this backend's multipart uploads (the replicator's default).
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
/// Most parts one upload may have (8 TiB at [`PART_SIZE`]).
const MAX_PARTS: u32 = 1_000_000;
/// Suffix of a write in progress.
const PARTIAL: &str = ".partial";
/// Suffix of the `sha256sum` sidecar beside each object.
const SIDECAR: &str = ".sha256";
/// Bytes per SFTP read or write request we issue: OpenSSH's sftp-server limit (255 KiB).
/// The client reads the server's own limits at connect (`limits@openssh.com`) and splits a
/// request that exceeds them (`File::write_zero_copy` sends at most the server's
/// `write_len`; the loop in `write_at` sends the rest), so a server with smaller limits
/// still gets only requests it accepts.
const IO_CHUNK: usize = 255 * 1024;
/// SFTP requests in flight per read or write.
const IN_FLIGHT: usize = 16;
/// Files at least this big are hashed with `sha256sum` when `remote_hash = "exec"`.
const EXEC_HASH_MIN: u64 = 1024 * 1024;
/// How often a write retries when a concurrent `delete` pruned the folder it writes to.
const DIR_RACE_RETRIES: usize = 8;
/// Without `connect_timeout`, ssh's `ConnectTimeout`: a host that never answers (a
/// firewall dropping packets) fails in seconds, not minutes.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the backend verifies a finished file before renaming it into place. Either way
/// the SHA-256 is of the bytes the server stores; what differs is who reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemoteHash {
    /// As [`Exec`](Self::Exec) where a command can run on the server, else as
    /// [`ReadBack`](Self::ReadBack), said at debug level only (the default: what `rclone`
    /// does for its sftp hashes, and what a careful admin does with `sha256sum` there).
    #[default]
    Auto,
    /// Read the file back over SFTP and hash it here (works with any SFTP server; every
    /// byte crosses the link twice).
    ReadBack,
    /// Run `openssl dgst -sha256` (or `sha256sum`) on the server over the same SSH
    /// connection (needs a shell there); where neither can run, warn once and read back.
    Exec,
}

/// Where and how to connect. Built from the URL by [`SftpConfig::from_url`]; the CLI's
/// config layer fills in the per-remote options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpConfig {
    /// The URL as written (it cannot carry a password: [`from_url`](Self::from_url) refuses one).
    pub url: String,
    /// Login user; `None` = what `ssh` would use (`~/.ssh/config`, then the local user).
    pub user: Option<String>,
    /// Host name, IP address or `~/.ssh/config` alias.
    pub host: String,
    /// `None` = what `ssh` would use (usually 22).
    pub port: Option<u16>,
    /// The root folder on the server: absolute, or relative to the login's home folder.
    pub path: String,
    /// `ssh -i FILE` (with `IdentitiesOnly=yes`: only this key is offered).
    pub identity_file: Option<PathBuf>,
    /// `ssh -o UserKnownHostsFile=FILE` (default `~/.ssh/known_hosts`).
    pub known_hosts_file: Option<PathBuf>,
    /// `ssh -F FILE` (default `~/.ssh/config`; `/dev/null` for none).
    pub ssh_config_file: Option<PathBuf>,
    /// `ssh -o ConnectTimeout=…`.
    pub connect_timeout: Option<Duration>,
    /// Record an unknown host key instead of failing (`StrictHostKeyChecking=accept-new`).
    pub accept_new_host_key: bool,
    /// How finished files are verified.
    pub remote_hash: RemoteHash,
    /// Put AES-GCM first among ssh's ciphers where this CPU has AES instructions and
    /// nobody chose the ciphers (default true). False for a server without AES
    /// instructions (a Raspberry Pi 4), where chacha20-poly1305 costs it less.
    pub prefer_aes_gcm: bool,
    /// Create the remote folder when it is missing (true, for writing); false for
    /// read-only use, where a missing folder is an error that names it.
    pub create_root: bool,
}

impl SftpConfig {
    /// Parse `sftp://[user@]host[:port]/path`. The path is absolute on the server;
    /// `/~/backups` is `backups` in the login's home folder (`/~` is the home folder).
    pub fn from_url(url: &str) -> std::result::Result<SftpConfig, String> {
        let example = "sftp://user@host:22/srv/backups/pronto";
        let parsed = url::Url::parse(url).map_err(|e| format!("a URL like {example} ({e})"))?;
        if parsed.scheme() != "sftp" {
            return Err(format!("a URL like {example}"));
        }
        if parsed.password().is_some() {
            return Err(format!(
                "a URL without a password ({example}): use an SSH key (identity_file, or your ssh-agent)"
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!("a URL without '?' or '#' parts ({example})"));
        }
        let host = parsed
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("a host name in the URL ({example})"))?;
        let user = match parsed.username() {
            "" => None,
            u => Some(percent_decode(u).ok_or("a user name in valid UTF-8")?),
        };
        let raw_path = percent_decode(parsed.path()).ok_or("a path in valid UTF-8")?;
        let path = if raw_path == "/~" || raw_path == "/~/" {
            ".".to_string()
        } else if let Some(rel) = raw_path.strip_prefix("/~/") {
            rel.trim_end_matches('/').to_string()
        } else if raw_path.is_empty() {
            return Err(format!(
                "a folder after the host ({example}, or sftp://host/~/backups for a folder in the login's home)"
            ));
        } else if raw_path == "/" {
            "/".to_string()
        } else {
            raw_path.trim_end_matches('/').to_string()
        };
        if path.contains('\0') {
            return Err("a path without NUL bytes".into());
        }
        Ok(SftpConfig {
            url: url.to_string(),
            user,
            host,
            port: parsed.port(),
            path,
            identity_file: None,
            known_hosts_file: None,
            ssh_config_file: None,
            connect_timeout: None,
            accept_new_host_key: false,
            remote_hash: RemoteHash::Auto,
            prefer_aes_gcm: true,
            create_root: true,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).ok()?, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A backend storing objects as files under one folder on an SSH server.
#[derive(Debug, Clone)]
pub struct SftpBackend {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SftpConfig,
    /// Dropped before `control_dir`: closing needs the control socket.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// The ssh config file the masters get ([`Inner::config_preferring_aes_gcm`]), decided
    /// once per instance (reconnects reuse it).
    ssh_config: tokio::sync::OnceCell<Option<PathBuf>>,
    /// Effective user/host/port as `ssh -G` resolves them (for messages).
    who: std::sync::Mutex<Option<Who>>,
    /// Connections opened so far (1 = the first).
    connects: AtomicU64,
    /// `sha256sum` could not run on the server: read back from now on.
    exec_unavailable: AtomicBool,
    /// Private folder for the ssh control socket (last: fields drop in order).
    control_dir: tempfile::TempDir,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpBackend")
            .field("url", &self.cfg.url)
            .finish_non_exhaustive()
    }
}

/// Who we are on the server, for messages.
#[derive(Debug, Clone)]
struct Who {
    user: String,
    hostname: String,
    port: u16,
}

/// One live SSH connection with its SFTP channel.
///
/// Dropping it (the backend went away, or the connection broke and was replaced) tells
/// the ssh master to exit: the SFTP client's background tasks hold the channel open, so
/// merely dropping the session would leave the master (and the server's session) running.
struct Conn {
    sftp: Sftp,
    /// The remote `sftp` subsystem (a channel of the master).
    _channel: openssh::Child<Arc<Session>>,
    session: Arc<Session>,
    /// The root folder, canonical (absolute) on the server.
    root: String,
    broken: AtomicBool,
    fsync: bool,
    /// Whose turn it is to send write requests: the parts sent at once take turns, each
    /// issuing all its requests before the next begins (first come, first served), so they
    /// end one after the other, each one's fsync, close and the next one's open overlapping
    /// the others' data; sharing the link evenly, they would end together and leave it idle
    /// meanwhile.
    send_turn: tokio::sync::Mutex<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // `ssh -O exit` through the control socket: local, immediate, no network.
        let _ = std::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-S"])
            .arg(self.session.control_socket())
            .args(["-O", "exit", "pronto-offsite-master"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Conn {
    fn path(&self, key: &str) -> String {
        if key.is_empty() {
            self.root.clone()
        } else if self.root == "/" {
            format!("/{key}")
        } else {
            format!("{}/{key}", self.root)
        }
    }
}

/// What an SFTP error means here.
enum Kind {
    NotFound,
    Denied,
    /// SSH_FX_FAILURE: the server's catch-all (exists, not empty, is a folder, disk full…).
    Failure(String),
    Connection(String),
    Other(String),
}

fn kind_of(e: &SftpError) -> Kind {
    match e {
        SftpError::SftpError(SftpErrorKind::NoSuchFile, _) => Kind::NotFound,
        SftpError::SftpError(SftpErrorKind::PermDenied, _) => Kind::Denied,
        SftpError::SftpError(SftpErrorKind::Failure, m) => Kind::Failure(m.get().0.to_string()),
        SftpError::SftpError(SftpErrorKind::OpUnsupported, m)
        | SftpError::SftpError(SftpErrorKind::BadMessage, m) => Kind::Other(m.get().0.to_string()),
        // Codes v3 does not name (NO_CONNECTION, CONNECTION_LOST) and everything that is
        // not a server status: the channel or the connection broke.
        SftpError::SftpError(_, m) => Kind::Connection(m.get().0.to_string()),
        SftpError::UnsupportedExtension(x) => Kind::Other(format!("unsupported extension {x}")),
        other => Kind::Connection(other.to_string()),
    }
}

/// Name of the private control folders: `pronto-ssh-<pid>-<random>` in the temp folder.
const CONTROL_PREFIX: &str = "pronto-ssh-";

/// Remove the control folders (mode 0700, in `tmp`) that a killed run left behind: those
/// of ours whose process is gone. A live run's folder is never touched, nor anyone else's.
fn sweep_stale_control_dirs(tmp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(CONTROL_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if meta.is_dir() && meta.uid() == me && gone {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => tracing::debug!("removed {} left by a killed run", e.path().display()),
                Err(err) => tracing::warn!(
                    "cannot remove {} left by a killed run: {err}",
                    e.path().display()
                ),
            }
        }
    }
}

impl SftpBackend {
    /// A backend for `cfg`. Does not connect: the first call does.
    pub fn new(cfg: SftpConfig) -> Result<Self> {
        sweep_stale_control_dirs(&std::env::temp_dir());
        let control_dir = tempfile::Builder::new()
            .prefix(&format!("{CONTROL_PREFIX}{}-", std::process::id()))
            .permissions(
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
            )
            .tempdir()
            .map_err(|e| {
                BackendError::from_io("create a private folder for the ssh control socket", e)
            })?;
        Ok(SftpBackend {
            inner: Arc::new(Inner {
                cfg,
                control_dir,
                conn: tokio::sync::Mutex::new(None),
                ssh_config: tokio::sync::OnceCell::new(),
                who: std::sync::Mutex::new(None),
                connects: AtomicU64::new(0),
                exec_unavailable: AtomicBool::new(false),
            }),
        })
    }

    /// The private folder (0700) that holds this instance's ssh control socket; removed
    /// when the instance is dropped.
    pub fn control_folder(&self) -> &Path {
        self.inner.control_dir.path()
    }

    /// How many SSH connections this instance has opened (reconnects included).
    pub fn connections_opened(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// The live connection, or a new one when there is none or it broke.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.broken.load(Ordering::Relaxed) {
                return Ok(Arc::clone(c));
            }
            tracing::info!(
                "{}: the SSH connection dropped; reconnecting",
                self.inner.cfg.url
            );
        }
        *slot = None;
        let c = Arc::new(self.inner.connect().await?);
        *slot = Some(Arc::clone(&c));
        Ok(c)
    }
}

impl Inner {
    // ---- connecting -------------------------------------------------------------------

    /// `-F`, `-p`, `-l`, `-i`, known_hosts and timeout options, as the master gets them.
    fn ssh_args(&self) -> Vec<OsString> {
        let cfg = &self.cfg;
        let mut a: Vec<OsString> = Vec::new();
        if let Some(f) = &cfg.ssh_config_file {
            a.push("-F".into());
            a.push(f.into());
        }
        if let Some(p) = cfg.port {
            a.push("-p".into());
            a.push(p.to_string().into());
        }
        if let Some(u) = &cfg.user {
            a.push("-l".into());
            a.push(u.into());
        }
        if let Some(k) = &cfg.identity_file {
            a.push("-o".into());
            a.push("IdentitiesOnly=yes".into());
            a.push("-i".into());
            a.push(k.into());
        }
        if let Some(f) = &cfg.known_hosts_file {
            let mut o = OsString::from("UserKnownHostsFile=");
            o.push(f);
            a.push("-o".into());
            a.push(o);
        }
        let timeout = cfg
            .connect_timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
            .as_secs()
            .max(1);
        a.push("-o".into());
        a.push(format!("ConnectTimeout={timeout}").into());
        a
    }

    /// An ssh config file (in the private control folder) that puts AES-GCM first among
    /// ssh's own ciphers, then reads the user's configuration as ssh would; `None` (use
    /// the user's configuration as it is) unless all of this holds, each asked of `ssh -G`
    /// (local, no network):
    /// - this CPU has AES instructions;
    /// - nobody chose the ciphers: the list is the same with and without the user's and the
    ///   system's config files, and that list (OpenSSH's default) does not already start
    ///   with AES-GCM;
    /// - the connection goes straight to the server (no `ProxyJump` or `ProxyCommand`: a
    ///   jump host's ssh would read this file too, and its own choices must stay its own);
    /// - through this file ssh sees exactly the configuration it sees without it, but for
    ///   the ciphers (so an `Include` that resolves differently from a `-F` file, or a
    ///   system config elsewhere than `/etc/ssh/ssh_config`, means: leave it alone).
    ///
    /// Why: on a CPU with AES instructions AES-GCM costs ssh and sshd about half what
    /// chacha20-poly1305 does, and a push to a fast server is bound by that CPU (on the
    /// loopback benchmark 2.2 s → 2.0 s for 512 MiB; `scp -c aes128-gcm@openssh.com` 1.35 s
    /// → 1.1 s). rclone's sftp (Go's ssh) prefers AES-GCM the same way. Nothing is
    /// removed from the list, so a server without AES-GCM still agrees on a cipher.
    async fn config_preferring_aes_gcm(&self) -> Option<PathBuf> {
        if !self.cfg.prefer_aes_gcm || !cpu_has_aes() {
            return None;
        }
        let host: OsString = self.cfg.host.clone().into();
        let as_configured = ssh_g(self.ssh_args(), &host).await?;
        let defaults = ssh_g(vec!["-F".into(), "/dev/null".into()], &host).await?;
        let list = aes_gcm_first(
            ssh_g_value(&as_configured, "ciphers")?,
            ssh_g_value(&defaults, "ciphers")?,
        )?;
        for proxy in ["proxyjump", "proxycommand"] {
            if ssh_g_value(&as_configured, proxy).is_some_and(|v| v != "none") {
                return None;
            }
        }
        let mut text = format!(
            "# written by pronto-offsite: AES-GCM first, else as configured\nCiphers {list}\n"
        );
        match &self.cfg.ssh_config_file {
            Some(f) if f == Path::new("/dev/null") => {}
            Some(f) => {
                let f = std::path::absolute(f).ok()?;
                text.push_str(&format!("Include \"{}\"\n", f.display()));
            }
            None => text.push_str("Include ~/.ssh/config\nInclude /etc/ssh/ssh_config\n"),
        }
        let path = self.control_dir.path().join("ssh_config");
        if let Err(e) = std::fs::write(&path, text) {
            tracing::debug!("cannot write {}: {e}; ssh's own ciphers", path.display());
            return None;
        }
        let mut ours = self.ssh_args();
        if let Some(at) = ours.iter().position(|a| a == "-F") {
            ours.drain(at..at + 2);
        }
        ours.splice(0..0, ["-F".into(), path.clone().into_os_string()]);
        let through_ours = ssh_g(ours, &host).await?;
        let but_ciphers = |g: &str| -> Vec<String> {
            g.lines()
                .filter(|l| !l.starts_with("ciphers "))
                .map(str::to_string)
                .collect()
        };
        if ssh_g_value(&through_ours, "ciphers") != Some(list.as_str())
            || but_ciphers(&through_ours) != but_ciphers(&as_configured)
        {
            tracing::debug!(
                "{}: ssh reads the configuration differently through a file of ours; its own ciphers",
                self.cfg.url
            );
            return None;
        }
        Some(path)
    }

    /// Ask `ssh -G` who and where we would connect to (local, no network).
    async fn who(&self) -> Who {
        if let Some(w) = self.who.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return w;
        }
        let g = ssh_g(self.ssh_args(), &self.cfg.host.clone().into()).await;
        let mut who = Who {
            user: self
                .cfg
                .user
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "(your ssh user)".into()),
            hostname: self.cfg.host.clone(),
            port: self.cfg.port.unwrap_or(22),
        };
        if let Some(g) = g {
            if let Some(v) = ssh_g_value(&g, "user") {
                who.user = v.to_string();
            }
            if let Some(v) = ssh_g_value(&g, "hostname") {
                who.hostname = v.to_string();
            }
            if let Some(v) = ssh_g_value(&g, "port") {
                who.port = v.parse().unwrap_or(who.port);
            }
            *self.who.lock().unwrap_or_else(|p| p.into_inner()) = Some(who.clone());
        }
        who
    }

    fn host_desc(&self) -> String {
        match self.cfg.port {
            Some(p) => format!("{}:{p}", self.cfg.host),
            None => self.cfg.host.clone(),
        }
    }

    async fn connect(&self) -> Result<Conn> {
        let cfg = &self.cfg;
        // (A missing known_hosts file is no error of its own: the host key is then unknown,
        // and that message says how to add it.)
        for (what, file) in [
            ("identity_file", &cfg.identity_file),
            ("ssh_config_file", &cfg.ssh_config_file),
        ] {
            if let Some(f) = file {
                if std::fs::metadata(f).is_err() {
                    return Err(BackendError::Permanent(format!(
                        "{}: {what} {} does not exist or is unreadable",
                        cfg.url,
                        f.display()
                    )));
                }
            }
        }
        let mut b = SessionBuilder::default();
        if let Some(u) = &cfg.user {
            b.user(u.clone());
        }
        if let Some(p) = cfg.port {
            b.port(p);
        }
        if let Some(k) = &cfg.identity_file {
            b.keyfile(k);
        }
        let ours = self
            .ssh_config
            .get_or_init(|| self.config_preferring_aes_gcm())
            .await;
        match ours.clone() {
            Some(ours) => {
                b.config_file(ours);
            }
            None => {
                if let Some(f) = &cfg.ssh_config_file {
                    b.config_file(f);
                }
            }
        }
        if let Some(f) = &cfg.known_hosts_file {
            b.user_known_hosts_file(f);
        }
        let connect_timeout = cfg.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        b.connect_timeout(Duration::from_secs(connect_timeout.as_secs().max(1)));
        b.known_hosts_check(if cfg.accept_new_host_key {
            KnownHosts::Add
        } else {
            KnownHosts::Strict
        });
        b.control_directory(self.control_dir.path());
        b.control_persist(ControlPersist::IdleFor(
            std::num::NonZeroUsize::new(30).expect("nonzero"),
        ));
        b.server_alive_interval(Duration::from_secs(15));
        // The whole attempt (TCP, key exchange, login): a few round trips.
        let limit = connect_timeout * 3 + Duration::from_secs(5);
        self.connects.fetch_add(1, Ordering::Relaxed);
        let session = match tokio::time::timeout(limit, b.connect_mux(&cfg.host)).await {
            Err(_) => {
                return Err(BackendError::transient(format!(
                    "{}: connecting to {} timed out after {}s",
                    cfg.url,
                    self.host_desc(),
                    limit.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(self.connect_error(e).await),
            Ok(Ok(s)) => Arc::new(s),
        };
        let subsystem_error = |msg: String| {
            if msg.contains("subsystem") {
                BackendError::Permanent(format!(
                    "{}: {} does not offer the SFTP subsystem ({msg})",
                    cfg.url,
                    self.host_desc()
                ))
            } else {
                BackendError::transient(format!(
                    "{}: starting SFTP on {}: {msg}",
                    cfg.url,
                    self.host_desc()
                ))
            }
        };
        let mut channel = Session::to_subsystem(Arc::clone(&session), "sftp")
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::null())
            .spawn()
            .await
            .map_err(|e| subsystem_error(format!("{e}: {}", source_chain(&e))))?;
        let (Some(stdin), Some(stdout)) = (channel.stdin().take(), channel.stdout().take()) else {
            return Err(subsystem_error(
                "no stdin/stdout on the sftp channel".into(),
            ));
        };
        let sftp = Sftp::new(stdin, stdout, SftpOptions::new())
            .await
            .map_err(|e| subsystem_error(e.to_string()))?;
        let fsync = sftp.support_fsync();
        if !sftp.support_posix_rename() {
            tracing::warn!(
                "{}: the server lacks posix-rename@openssh.com: replacing an object is not atomic there",
                cfg.url
            );
        }
        let root = self.ensure_root(&sftp).await?;
        tracing::debug!("{}: connected (root {root}, fsync {fsync})", cfg.url);
        Ok(Conn {
            sftp,
            _channel: channel,
            session,
            root,
            broken: AtomicBool::new(false),
            fsync,
            send_turn: tokio::sync::Mutex::new(()),
        })
    }

    /// Turn a failed master start into an error that says what to do.
    async fn connect_error(&self, e: openssh::Error) -> BackendError {
        let raw = match &e {
            openssh::Error::Connect(io) => io.to_string(),
            other => format!("{other}: {}", source_chain(other)),
        };
        let lines: Vec<&str> = raw
            .lines()
            .map(|l| l.trim().trim_end_matches('\r'))
            .filter(|l| !l.is_empty() && !l.starts_with('@'))
            .collect();
        let text = lines.join("; ");
        let url = &self.cfg.url;
        let has = |s: &str| raw.contains(s);
        if has("Host key verification failed")
            || has("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || has("host key is known")
            || has("Host key for ")
        {
            return self.host_key_error(&raw).await;
        }
        let who = self.who().await;
        if has("UNPROTECTED PRIVATE KEY FILE") || has("bad permissions") {
            let key = self
                .cfg
                .identity_file
                .as_ref()
                .map(|k| k.display().to_string())
                .unwrap_or_else(|| "the private key".into());
            return BackendError::Auth(format!(
                "{url}: ssh refuses {key} because other users can read it; run `chmod 600 {key}`"
            ));
        }
        if has("Permission denied (") || has("Too many authentication failures") {
            let key = match &self.cfg.identity_file {
                Some(k) => format!("identity_file {}", k.display()),
                None => "your ssh-agent and default keys (or set identity_file)".into(),
            };
            return BackendError::Auth(format!(
                "{url}: SSH login as {}@{} was refused ({text}); check {key} and the server's authorized_keys for {}",
                who.user, who.hostname, who.user
            ));
        }
        if has("Could not resolve hostname") || has("Bad configuration option") || has("Bad port") {
            return BackendError::Permanent(format!("{url}: ssh: {text}"));
        }
        // Nothing listens there, or no route to it: asking again in a minute will not
        // help (and a remote that is only down for maintenance fails the same night
        // either way); say so at once, with host and port.
        for (cause, hint) in [
            (
                "Connection refused",
                "connection refused: is sshd running there, and is the port right?",
            ),
            (
                "No route to host",
                "no route to host: is the host up and reachable from here?",
            ),
            (
                "Network is unreachable",
                "network unreachable: is this machine's network up?",
            ),
        ] {
            if has(cause) {
                return BackendError::Permanent(format!(
                    "{url}: cannot connect to {}:{}: {hint}",
                    who.hostname, who.port
                ));
            }
        }
        BackendError::transient(format!(
            "{url}: could not connect to {}: {}",
            self.host_desc(),
            if text.is_empty() { e.to_string() } else { text }
        ))
    }

    /// An unknown or changed host key: name the host, the fingerprint, and the way out.
    async fn host_key_error(&self, log: &str) -> BackendError {
        let who = self.who().await;
        let changed = log.contains("HAS CHANGED") || log.contains("has changed");
        let fingerprint = self
            .offered_fingerprint()
            .await
            .or_else(|| fingerprint_in(log))
            .unwrap_or_else(|| "(unknown: could not fetch it)".into());
        let spec = if who.port == 22 {
            who.hostname.clone()
        } else {
            format!("[{}]:{}", who.hostname, who.port)
        };
        let kh = self
            .cfg
            .known_hosts_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.ssh/known_hosts".into());
        let keyscan = if who.port == 22 {
            format!("ssh-keyscan {} >> {kh}", who.hostname)
        } else {
            format!("ssh-keyscan -p {} {} >> {kh}", who.port, who.hostname)
        };
        let url = &self.cfg.url;
        BackendError::HostKey(if changed {
            format!(
                "{url}: the SSH host key of {spec} has CHANGED: the server now offers {fingerprint}, which is not the key recorded in {kh}. \
                 Someone may be intercepting the connection, or the server was reinstalled; nothing was sent. \
                 If the change is expected, remove the old key with `ssh-keygen -R '{spec}' -f {kh}` and accept the new one with `{keyscan}` \
                 (accept_new_host_key = true does not accept a changed key)"
            )
        } else {
            format!(
                "{url}: the SSH host key of {spec} is unknown (not in {kh}); the server offers {fingerprint}. \
                 Check that fingerprint with the server's administrator (on the server: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), \
                 then accept it with `{keyscan}`, or set `accept_new_host_key = true` on this remote to record it on the next connection"
            )
        })
    }

    /// The fingerprint of the host key the server offers, from an `ssh -v` attempt that
    /// stops at the same strict host key check (it authenticates nothing).
    async fn offered_fingerprint(&self) -> Option<String> {
        let mut args: Vec<OsString> = vec![
            "-v".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "ControlMaster=no".into(),
            "-o".into(),
            "ControlPath=none".into(),
        ];
        args.extend(self.ssh_args());
        args.push(self.cfg.host.clone().into());
        args.push("exit".into());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("ssh")
                .args(&args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .output()
        })
        .await
        .ok()?
        .ok()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        stderr.lines().find_map(|l| {
            l.split_once("Server host key: ")
                .map(|(_, k)| k.trim().to_string())
        })
    }

    /// Create the root folder (and its parents) when missing; return its canonical path.
    async fn ensure_root(&self, sftp: &Sftp) -> Result<String> {
        let (mut fs, mut resolver) = (sftp.fs(), sftp.fs());
        let root = self.cfg.path.clone();
        // The folder's attributes and its canonical path at once (one round trip); the
        // path is resolved again after the folder had to be created.
        let (meta, mut canon) = futures::join!(fs.metadata(&root), resolver.canonicalize(&root));
        match meta {
            Ok(m) if is_dir(&m) => {}
            Ok(_) => {
                return Err(BackendError::Permanent(format!(
                    "{}: {root} on {} exists but is not a folder",
                    self.cfg.url,
                    self.host_desc()
                )))
            }
            Err(e) => match kind_of(&e) {
                Kind::NotFound if !self.cfg.create_root => {
                    return Err(BackendError::Permanent(format!(
                        "{}: the remote folder {root} does not exist on {} (a typo in the URL, or a disk not mounted there?); nothing was created",
                        self.cfg.url,
                        self.host_desc()
                    )))
                }
                Kind::NotFound => {
                    let mut prefixes = Vec::new();
                    let mut cur = if root.starts_with('/') {
                        String::new()
                    } else {
                        String::from(".")
                    };
                    for comp in root.split('/').filter(|c| !c.is_empty() && *c != ".") {
                        cur = if cur.is_empty() {
                            format!("/{comp}")
                        } else if cur == "." {
                            comp.to_string()
                        } else {
                            format!("{cur}/{comp}")
                        };
                        prefixes.push(cur.clone());
                    }
                    for p in prefixes {
                        self.mkdir_if_missing(sftp, &p).await?;
                    }
                    canon = fs.canonicalize(&root).await;
                }
                _ => return Err(self.map_plain(&e, "open remote folder", &root).await),
            },
        }
        let canon = canon.map_err(|e| {
            BackendError::Permanent(format!("{}: resolving {root}: {e}", self.cfg.url))
        })?;
        canon.to_str().map(|s| s.to_string()).ok_or_else(|| {
            BackendError::Permanent(format!("{}: {root} is not UTF-8", self.cfg.url))
        })
    }

    async fn mkdir_if_missing(&self, sftp: &Sftp, p: &str) -> Result<()> {
        let mut fs = sftp.fs();
        match fs.metadata(p).await {
            Ok(m) if is_dir(&m) => return Ok(()),
            Ok(_) => {
                return Err(BackendError::Permanent(format!(
                    "{}: {p} on {} exists and is not a folder",
                    self.cfg.url,
                    self.host_desc()
                )))
            }
            Err(e) if matches!(kind_of(&e), Kind::NotFound) => {}
            Err(e) => return Err(self.map_plain(&e, "create remote folder", p).await),
        }
        let r = fs
            .dir_builder()
            .permissions(Permissions::from(0o700))
            .create(p)
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) => match fs.metadata(p).await {
                Ok(m) if is_dir(&m) => Ok(()), // created meanwhile by someone else
                // Not "no such object": the path cannot hold a folder there.
                _ if matches!(kind_of(&e), Kind::NotFound) => {
                    Err(BackendError::Permanent(format!(
                        "{}: cannot create the remote folder {p} on {}: no such file or directory \
                     (does the path above it exist, and can it hold folders?)",
                        self.cfg.url,
                        self.host_desc()
                    )))
                }
                _ => Err(self.map_plain(&e, "create remote folder", p).await),
            },
        }
    }

    // ---- errors -----------------------------------------------------------------------

    /// Classify an SFTP error from an operation on `path` (no connection to mark).
    async fn map_plain(&self, e: &SftpError, op: &str, path: &str) -> BackendError {
        let url = &self.cfg.url;
        match kind_of(e) {
            Kind::NotFound => BackendError::NotFound(format!("{op} {path}")),
            Kind::Denied => {
                let who = self.who().await;
                BackendError::Auth(format!(
                    "{url}: {op} {path}: permission denied for user {} on {}",
                    who.user, who.hostname
                ))
            }
            Kind::Failure(m) => BackendError::Permanent(format!("{url}: {op} {path}: {m}")),
            Kind::Other(m) => BackendError::Permanent(format!("{url}: {op} {path}: {m}")),
            Kind::Connection(m) => BackendError::transient(format!(
                "{url}: {op} {path}: the SSH connection to {} failed: {m}",
                self.host_desc()
            )),
        }
    }

    /// Classify an SFTP error; a connection error marks `c` broken so the next call reconnects.
    async fn map(&self, c: &Conn, e: &SftpError, op: &str, path: &str) -> BackendError {
        if matches!(kind_of(e), Kind::Connection(_)) {
            c.broken.store(true, Ordering::Relaxed);
        }
        self.map_plain(e, op, path).await
    }

    // ---- file helpers -----------------------------------------------------------------

    /// Create (or truncate) `path`, mode 0600, for reading and writing. With
    /// `dir_key`, missing folders below the root are created and the create retried.
    async fn create_file(
        &self,
        c: &Conn,
        path: &str,
        dir_key: &str,
        exclusive: bool,
    ) -> Result<File> {
        let mut attempt = 0;
        loop {
            let mut opts = c.sftp.options();
            opts.read(true).write(true);
            if exclusive {
                opts.create_new(true);
            } else {
                opts.create(true).truncate(true);
            }
            match opts.open(path).await {
                Ok(mut f) => {
                    if let Err(e) = f.set_permissions(Permissions::from(0o600)).await {
                        return Err(self.map(c, &e, "chmod", path).await);
                    }
                    return Ok(f);
                }
                Err(e)
                    if matches!(kind_of(&e), Kind::NotFound)
                        && !dir_key.is_empty()
                        && attempt < DIR_RACE_RETRIES =>
                {
                    attempt += 1;
                    self.ensure_dirs(c, dir_key).await?;
                }
                Err(e) => return Err(self.map(c, &e, "create", path).await),
            }
        }
    }

    /// Create the folders of `dir_key` below the root (mode 0700).
    async fn ensure_dirs(&self, c: &Conn, dir_key: &str) -> Result<()> {
        let mut cur = String::new();
        for comp in dir_key.split('/') {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(comp);
            let p = c.path(&cur);
            let mut fs = c.sftp.fs();
            let r = fs
                .dir_builder()
                .permissions(Permissions::from(0o700))
                .create(&p)
                .await;
            if let Err(e) = r {
                match kind_of(&e) {
                    // Exists already (SFTP v3 says "failure"): fine if it is a folder.
                    Kind::Failure(_) => match fs.metadata(&p).await {
                        Ok(m) if is_dir(&m) => {}
                        Ok(_) => {
                            return Err(BackendError::Permanent(format!(
                                "{}: {p} exists and is not a folder",
                                self.cfg.url
                            )))
                        }
                        Err(e2) => return Err(self.map(c, &e2, "create folder", &p).await),
                    },
                    _ => return Err(self.map(c, &e, "create folder", &p).await),
                }
            }
        }
        Ok(())
    }

    /// Write `body` at `offset`, [`IN_FLIGHT`] requests at a time, when it is this write's
    /// turn on the connection ([`Conn::send_turn`], held until its last request is issued).
    async fn write_at(
        &self,
        c: &Conn,
        f: &File,
        offset: u64,
        body: &Bytes,
        path: &str,
    ) -> Result<()> {
        let mut turn = Some(c.send_turn.lock().await);
        let mut starts = (0..body.len()).step_by(IO_CHUNK);
        let chunks = std::iter::from_fn(move || match starts.next() {
            Some(s) => Some((
                offset + s as u64,
                body.slice(s..(s + IO_CHUNK).min(body.len())),
            )),
            None => {
                drop(turn.take()); // every request issued: the next write's turn
                None
            }
        });
        let r = futures::stream::iter(chunks)
            .map(|(off, data)| {
                let mut f = f.clone();
                async move {
                    let (mut off, mut data) = (off, data);
                    while !data.is_empty() {
                        seek(&mut f, off);
                        let n = f.write_zero_copy(std::slice::from_ref(&data)).await?;
                        data.advance(n);
                        off += n as u64;
                    }
                    Ok::<(), SftpError>(())
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>()
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) => Err(self.map(c, &e, "write", path).await),
        }
    }

    /// Close a handle and wait for the server's answer (a write's late error surfaces here).
    async fn close(&self, c: &Conn, f: File, path: &str) -> Result<()> {
        match f.close().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.map(c, &e, "close", path).await),
        }
    }

    async fn fsync(&self, c: &Conn, f: &mut File, path: &str) -> Result<()> {
        if !c.fsync {
            return Ok(());
        }
        match f.sync_all().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.map(c, &e, "fsync", path).await),
        }
    }

    /// Every entry but folders (files, links, others) in the folders that can hold keys
    /// under `prefix`, as `(key, its attributes as listed)`, unsorted; names that are not
    /// UTF-8 are left out (no backend writes them). A folder that is missing or not a
    /// folder holds nothing, except the root's with `root_must_exist` (`list`: a root
    /// that disappeared is an error, never an empty listing).
    async fn walk(
        &self,
        c: &Conn,
        prefix: &str,
        root_must_exist: bool,
    ) -> Result<Vec<(String, MetaData)>> {
        let start = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let mut out = Vec::new();
        let mut stack = vec![start.to_string()];
        while let Some(dir_key) = stack.pop() {
            let dir = c.path(&dir_key);
            let strict = root_must_exist && dir_key.is_empty();
            let entries: Vec<_> = match c.sftp.fs().open_dir(&dir).await {
                Ok(d) => match d.read_dir().try_collect().await {
                    Ok(v) => v,
                    Err(e) => return Err(self.map(c, &e, "list", &dir).await),
                },
                Err(e) => match kind_of(&e) {
                    Kind::NotFound if strict => {
                        return Err(BackendError::Permanent(format!(
                            "{}: the remote folder {dir} has disappeared",
                            self.cfg.url
                        )))
                    }
                    // The prefix's folder does not exist, or is a file: nothing there.
                    Kind::NotFound | Kind::Failure(_) if !strict => continue,
                    _ => return Err(self.map(c, &e, "list", &dir).await),
                },
            };
            for entry in entries {
                let Some(name) = entry.filename().to_str() else {
                    continue; // not UTF-8: not written by a backend
                };
                if name == "." || name == ".." || name.is_empty() {
                    continue;
                }
                let key = if dir_key.is_empty() {
                    name.to_string()
                } else {
                    format!("{dir_key}/{name}")
                };
                let meta = entry.metadata();
                if meta.file_type().is_some_and(|t| t.is_dir()) {
                    let sub = format!("{key}/");
                    if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                        stack.push(key);
                    }
                    continue;
                }
                out.push((key, meta));
            }
        }
        Ok(out)
    }

    /// Write a whole object's `body` into the new file `f` at `path`, fsync it, read it
    /// back against `sha256` and close it (what `put` and `put_if_absent` do before the
    /// file takes, or already has, its final name).
    async fn write_whole(
        &self,
        c: &Conn,
        f: File,
        path: &str,
        key: &str,
        body: &Bytes,
        sha256: [u8; 32],
    ) -> Result<()> {
        self.write_at(c, &f, 0, body, path).await?;
        let len = [body.len() as u64];
        self.verify_sync_close(c, f, path, Expected::whole(key, &len, sha256))
            .await
    }

    /// SHA-256 of each of `parts` (consecutive ranges from offset 0) and of all of them,
    /// read back over SFTP.
    async fn hash_parts(
        &self,
        c: &Conn,
        f: &File,
        parts: &[u64],
        path: &str,
    ) -> Result<(Vec<[u8; 32]>, [u8; 32])> {
        let mut ranges = Vec::new();
        let mut start = 0u64;
        for (i, &len) in parts.iter().enumerate() {
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(IO_CHUNK as u64);
                ranges.push((i, start + off, n as usize));
                off += n;
            }
            start += len;
        }
        let mut stream = futures::stream::iter(ranges)
            .map(|(i, off, n)| {
                let mut f = f.clone();
                async move { read_exact_at(&mut f, off, n).await.map(|b| (i, b)) }
            })
            .buffered(IN_FLIGHT);
        let mut whole = sha2::Sha256::new();
        let mut per: Vec<sha2::Sha256> = parts.iter().map(|_| sha2::Sha256::new()).collect();
        while let Some(item) = stream.next().await {
            match item {
                Ok((i, b)) => {
                    whole.update(&b);
                    per[i].update(&b);
                }
                Err(ReadErr::Eof) => {
                    return Err(BackendError::Permanent(format!(
                        "{}: {path} shrank while being verified",
                        self.cfg.url
                    )))
                }
                Err(ReadErr::Sftp(e)) => return Err(self.map(c, &e, "read back", path).await),
            }
        }
        Ok((
            per.into_iter().map(|h| h.finalize().into()).collect(),
            whole.finalize().into(),
        ))
    }

    /// The file's SHA-256 computed on the server (`openssl dgst -sha256` where it exists:
    /// it uses the CPU's SHA instructions, ~4× coreutils' `sha256sum`; else `sha256sum`);
    /// `None` when neither can run there.
    async fn exec_sha256(&self, c: &Conn, path: &str) -> Result<Option<[u8; 32]>> {
        if self.exec_unavailable.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let out = c
            .session
            .raw_command(exec_hash_command(path))
            .stdin(openssh::Stdio::null())
            .output()
            .await;
        let give_up = |why: String| {
            if !self.exec_unavailable.swap(true, Ordering::Relaxed) {
                if self.cfg.remote_hash == RemoteHash::Exec {
                    tracing::warn!(
                        "{}: remote_hash = \"exec\": cannot run sha256sum on {} ({why}); reading files back to verify them instead",
                        self.cfg.url,
                        self.host_desc()
                    );
                } else {
                    tracing::debug!(
                        "{}: cannot run sha256sum on {} ({why}); reading files back to verify them",
                        self.cfg.url,
                        self.host_desc()
                    );
                }
            }
            Ok(None)
        };
        let out = match out {
            Ok(o) => o,
            Err(openssh::Error::Disconnected) => {
                c.broken.store(true, Ordering::Relaxed);
                return Err(BackendError::transient(format!(
                    "{}: running sha256sum on {}: the SSH connection dropped",
                    self.cfg.url,
                    self.host_desc()
                )));
            }
            Err(e) => return give_up(e.to_string()),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let hex_part = stdout.trim_start_matches('\\').get(..64).unwrap_or("");
        let mut sha = [0u8; 32];
        if out.status.success() && hex::decode_to_slice(hex_part, &mut sha).is_ok() {
            return Ok(Some(sha));
        }
        // Not there, not runnable (no shell, `ForceCommand internal-sftp`), or it failed:
        // reading back still verifies, and surfaces real I/O errors through SFTP.
        let stderr = String::from_utf8_lossy(&out.stderr);
        give_up(format!(
            "exit status {}, {}",
            out.status
                .code()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "none".into()),
            stderr.trim().lines().next().unwrap_or("no error output")
        ))
    }

    /// Verify the file behind `f` (at `path`): per-part hashes (read back only) and the
    /// whole file's hash.
    async fn verify(&self, c: &Conn, f: &File, path: &str, want: Expected<'_>) -> Result<()> {
        let Expected {
            key,
            parts,
            part_tokens,
            sha256,
        } = want;
        let total: u64 = parts.iter().sum();
        let exec_hash = if self.cfg.remote_hash != RemoteHash::ReadBack && total >= EXEC_HASH_MIN {
            self.exec_sha256(c, path).await?
        } else {
            None
        };
        let whole = match exec_hash {
            Some(h) => h,
            None => {
                let (per, whole) = self.hash_parts(c, f, parts, path).await?;
                if let Some(tokens) = part_tokens {
                    for (i, (got, want)) in per.iter().zip(tokens).enumerate() {
                        if got != want {
                            return Err(BackendError::ChecksumMismatch {
                                key: format!("{key} part {}", i + 1),
                                expected: hex::encode(want),
                                actual: hex::encode(got),
                            });
                        }
                    }
                }
                whole
            }
        };
        if whole != sha256 {
            return Err(BackendError::ChecksumMismatch {
                key: key.to_string(),
                expected: hex::encode(sha256),
                actual: hex::encode(whole),
            });
        }
        Ok(())
    }

    /// [`verify`](Self::verify) and fsync the written file `f` at once (the hash reads
    /// what the sync writes out; both must succeed before a rename), then close it.
    async fn verify_sync_close(
        &self,
        c: &Conn,
        mut f: File,
        path: &str,
        want: Expected<'_>,
    ) -> Result<()> {
        let reader = f.clone();
        let (verified, synced) = futures::join!(
            self.verify(c, &reader, path, want),
            self.fsync(c, &mut f, path)
        );
        drop(reader); // the last clone: `close` closes the handle
        verified?;
        synced?;
        self.close(c, f, path).await
    }

    /// Make a verified partial file the object `key`, with the fresh sidecar that
    /// [`stage_sidecar`](Self::stage_sidecar) prepared (three requests in sequence: the
    /// old sidecar's removal, the object's rename, the sidecar's).
    async fn commit(&self, c: &Conn, key: &str, partial: &str, staged_side: &str) -> Result<()> {
        let obj = c.path(key);
        let side = format!("{obj}{SIDECAR}");
        // The old sidecar goes first: it must never describe the new bytes' predecessor.
        self.remove_quiet(c, &side).await?;
        self.rename(c, partial, &obj).await?;
        self.rename(c, staged_side, &side).await
    }

    /// Verify-and-commit with the sidecar prepared meanwhile: `verified` (the object's
    /// partial file, already written in full, synced, its hash checked, closed — the
    /// sidecar is staged after the object's last write, so that its mtime is not older
    /// than the object's) and the sidecar's temporary
    /// file are made concurrently — on a link with a long round trip, the sidecar's five
    /// requests then cost nothing — and only when both succeeded is the partial renamed
    /// to `key` and the sidecar after it. On failure the staged sidecar is removed.
    async fn verified_commit(
        &self,
        c: &Conn,
        key: &str,
        partial: &str,
        sha256: [u8; 32],
        verified: impl std::future::Future<Output = Result<()>>,
    ) -> Result<()> {
        let (verified, staged) = futures::join!(verified, self.stage_sidecar(c, key, sha256));
        let tmp = match staged {
            Ok(tmp) => tmp,
            Err(e) => return verified.and(Err(e)),
        };
        let res = match verified {
            Ok(()) => self.commit(c, key, partial, &tmp).await,
            Err(e) => Err(e),
        };
        if res.is_err() && !c.broken.load(Ordering::Relaxed) {
            let _ = self.remove_quiet(c, &tmp).await;
        }
        res
    }

    async fn rename(&self, c: &Conn, from: &str, to: &str) -> Result<()> {
        let mut fs = c.sftp.fs();
        if !c.sftp.support_posix_rename() {
            // Plain SFTP rename refuses to replace: not atomic, but the best there is.
            let _ = fs.remove_file(to).await;
        }
        match fs.rename(from, to).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.map(c, &e, &format!("rename {from} to"), to).await),
        }
    }

    /// Write `<key>.sha256` (temp + rename) in `sha256sum` format.
    async fn write_sidecar(&self, c: &Conn, key: &str, sha256: [u8; 32]) -> Result<()> {
        let tmp = self.stage_sidecar(c, key, sha256).await?;
        let side = format!("{}{SIDECAR}", c.path(key));
        self.rename(c, &tmp, &side).await
    }

    /// Write the sidecar of `key` under a temporary name beside it (created, written,
    /// synced, closed) and return that name, for a rename into place.
    async fn stage_sidecar(&self, c: &Conn, key: &str, sha256: [u8; 32]) -> Result<String> {
        let (dir_key, name) = split_key(key);
        let side = format!("{}{SIDECAR}", c.path(key));
        let tmp = format!("{side}.{}{PARTIAL}", &hex::encode(sha256)[..16]);
        let line = Bytes::from(sha256sum_line(&sha256, name));
        let mut f = self.create_file(c, &tmp, dir_key, false).await?;
        self.write_at(c, &f, 0, &line, &tmp).await?;
        self.fsync(c, &mut f, &tmp).await?;
        self.close(c, f, &tmp).await?;
        Ok(tmp)
    }

    /// Remove the sidecars of `key` that a verification staged but never committed
    /// (`<key>.sha256.<16 hex>.partial`): a connection that breaks while the server
    /// hashes the upload leaves one behind. The next push of the same bytes would reuse
    /// it, but when that push never comes only an abort of the upload sweeps it. Names
    /// of exactly that pattern are touched, nothing else.
    async fn remove_staged_sidecars(&self, c: &Conn, key: &str) -> Result<()> {
        let stem = format!("{key}{SIDECAR}.");
        for (name, _) in self.walk(c, key, false).await? {
            let staged = name
                .strip_prefix(&stem)
                .and_then(|rest| rest.strip_suffix(PARTIAL))
                .is_some_and(|h| {
                    h.len() == 16 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                });
            if staged {
                self.remove_quiet(c, &c.path(&name)).await?;
            }
        }
        Ok(())
    }

    /// The sidecar of an object a conditional create just made: the object is there and
    /// is the caller's, so a failure here is a warning (an object without a sidecar is a
    /// state every reader handles), not an error that would make the create look failed.
    async fn sidecar_after_create(&self, c: &Conn, key: &str, sha256: [u8; 32]) {
        if let Err(e) = self.write_sidecar(c, key, sha256).await {
            tracing::warn!("{}: {key} created, but not its sidecar: {e}", self.cfg.url);
        }
    }

    /// The sha256 recorded beside `key`, if the sidecar is there, well-formed and names
    /// this file, with the sidecar's mtime (a sidecar older than its object is stale: the
    /// caller compares). Two round trips: the open, then its attributes and its first
    /// bytes at once (a sidecar is one line); the handle closes in the background.
    async fn read_sidecar(&self, c: &Conn, key: &str) -> Option<(Option<u32>, [u8; 32])> {
        const MAX: u32 = 4096;
        let side = format!("{}{SIDECAR}", c.path(key));
        let f = c.sftp.open(&side).await.ok()?;
        let (mut attrs, mut head) = (f.clone(), f);
        let (meta, first) = futures::join!(attrs.metadata(), head.read(MAX + 1, BytesMut::new()));
        let meta = meta.ok()?;
        let len = meta.len()?;
        if len > MAX as u64 {
            return None;
        }
        let mut body = first.ok()?.unwrap_or_default().freeze();
        if (body.len() as u64) < len {
            // A server that answered with fewer bytes than asked: read the rest.
            body = read_exact_at(&mut head, 0, len as usize).await.ok()?;
        }
        let sha = parse_sha256sum_line(std::str::from_utf8(&body).ok()?, split_key(key).1)?;
        Some((meta.modified().map(|t| t.into_raw()), sha))
    }

    /// Remove a file; a missing one is fine.
    async fn remove_quiet(&self, c: &Conn, path: &str) -> Result<()> {
        match c.sftp.fs().remove_file(path).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(kind_of(&e), Kind::NotFound) => Ok(()),
            Err(e) => Err(self.map(c, &e, "remove", path).await),
        }
    }
}

/// What a file on the server must hold.
struct Expected<'a> {
    /// The key, for messages.
    key: &'a str,
    /// Sizes of its consecutive parts (one part: the whole file).
    parts: &'a [u64],
    /// Each part's SHA-256, when known (checked when reading back).
    part_tokens: Option<&'a [[u8; 32]]>,
    /// The whole file's SHA-256.
    sha256: [u8; 32],
}

impl<'a> Expected<'a> {
    /// A file written whole: one part of `len[0]` bytes.
    fn whole(key: &'a str, len: &'a [u64; 1], sha256: [u8; 32]) -> Self {
        Expected {
            key,
            parts: len,
            part_tokens: None,
            sha256,
        }
    }
}

/// Why a positioned read stopped.
enum ReadErr {
    Eof,
    Sftp(SftpError),
}

/// Read exactly `n` bytes at `off` (several requests when the server returns fewer).
async fn read_exact_at(f: &mut File, off: u64, n: usize) -> std::result::Result<Bytes, ReadErr> {
    let mut buf = BytesMut::with_capacity(n);
    while buf.len() < n {
        seek(f, off + buf.len() as u64);
        let want = (n - buf.len()).min(u32::MAX as usize) as u32;
        match f.read(want, BytesMut::new()).await {
            Ok(Some(b)) if !b.is_empty() => buf.extend_from_slice(&b),
            Ok(_) => return Err(ReadErr::Eof),
            Err(e) => return Err(ReadErr::Sftp(e)),
        }
    }
    Ok(buf.freeze())
}

fn seek(f: &mut File, off: u64) {
    // Only sets the offset the next request is sent with; cannot fail for Start.
    let _ = Pin::new(f).start_seek(SeekFrom::Start(off));
}

fn is_dir(m: &MetaData) -> bool {
    m.file_type().is_some_and(|t| t.is_dir())
}

fn is_file(m: &MetaData) -> bool {
    m.file_type().is_some_and(|t| t.is_file())
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// A `SHA256:…` fingerprint in ssh's output (the changed-key banner prints one).
fn fingerprint_in(log: &str) -> Option<String> {
    let i = log.find("SHA256:")?;
    let fp: String = log[i..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '.')
        .collect();
    Some(fp)
}

/// The POSIX shell line that prints `<hex> …` for `path`: `openssl dgst -sha256 -r` when
/// openssl is there and works, else `sha256sum`. The path is single-quoted (and made to start with
/// `/` or `./`, so no tool can take it for an option).
fn exec_hash_command(path: &str) -> String {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("./{path}")
    };
    let q = format!("'{}'", path.replace('\'', "'\\''"));
    format!(
        "{{ command -v openssl >/dev/null 2>&1 && openssl dgst -sha256 -r {q} 2>/dev/null; }} || sha256sum -- {q}"
    )
}

/// Whether this CPU has the AES (and carry-less multiply) instructions AES-GCM runs on:
/// then the connection prefers AES-GCM where nobody chose the ciphers.
pub fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// What `ssh -G ARGS HOST` prints (the configuration ssh would use; local, no network),
/// `None` when it fails or takes more than 10 s (a `Match exec` that hangs).
async fn ssh_g(mut args: Vec<OsString>, host: &OsString) -> Option<String> {
    args.insert(0, "-G".into());
    args.push(host.clone());
    let run = tokio::process::Command::new("ssh")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .ok()?
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of `key` in `ssh -G` output.
fn ssh_g_value<'a>(g: &'a str, key: &str) -> Option<&'a str> {
    g.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')))
}

/// `effective` (the ciphers ssh would offer) with the AES-GCM ones moved to the front,
/// when it is `defaults` (OpenSSH's own list: nobody chose) and that does not already
/// start with AES-GCM; `None` otherwise.
fn aes_gcm_first(effective: &str, defaults: &str) -> Option<String> {
    if effective != defaults {
        return None;
    }
    let all: Vec<&str> = effective.split(',').collect();
    let is_gcm = |c: &&str| c.starts_with("aes") && c.contains("-gcm");
    if all.first().is_none_or(is_gcm) || !all.iter().any(is_gcm) {
        return None;
    }
    let (gcm, rest): (Vec<&str>, Vec<&str>) = all.into_iter().partition(is_gcm);
    Some([gcm, rest].concat().join(","))
}

/// `<hex>  <name>\n`, escaped the way GNU sha256sum escapes names with `\` or newlines.
fn sha256sum_line(sha: &[u8; 32], name: &str) -> String {
    if name.contains(['\\', '\n', '\r']) {
        let esc = name
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        format!("\\{}  {esc}\n", hex::encode(sha))
    } else {
        format!("{}  {name}\n", hex::encode(sha))
    }
}

fn parse_sha256sum_line(line: &str, name: &str) -> Option<[u8; 32]> {
    let line = line.strip_suffix('\n')?;
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (hex_part, rest) = line.split_at_checked(64)?;
    let file = rest
        .strip_prefix("  ")
        .or_else(|| rest.strip_prefix(" *"))?;
    let file = if escaped {
        file.replace("\\n", "\n")
            .replace("\\r", "\r")
            .replace("\\\\", "\\")
    } else {
        file.to_string()
    };
    if file != name {
        return None;
    }
    let mut sha = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut sha).ok()?;
    Some(sha)
}

/// 16 random hex characters.
fn nonce() -> String {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let h = RandomState::new().hash_one((
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now(),
        std::process::id(),
    ));
    format!("{h:016x}")
}

/// `(nonce, part size)` of a well-formed upload id.
fn parse_upload_id(id: &str) -> Option<(&str, u64)> {
    let (nonce, size) = id.split_once('-')?;
    let ok_nonce = nonce.len() == 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit());
    let size: u64 = size.parse().ok()?;
    (ok_nonce && size > 0 && size <= 1 << 40).then_some((nonce, size))
}

/// `(folder key, file name)`.
fn split_key(key: &str) -> (&str, &str) {
    key.rsplit_once('/').unwrap_or(("", key))
}

fn partial_path(c: &Conn, key: &str, nonce: &str) -> String {
    format!("{}.{nonce}{PARTIAL}", c.path(key))
}

/// Names this backend keeps for itself.
fn is_reserved_name(name: &str) -> bool {
    name.ends_with(PARTIAL) || name.ends_with(SIDECAR)
}

fn check_key(key: &str) -> Result<()> {
    crate::check_key_with(key, |_, comp| check_component(comp))?;
    if is_reserved_name(split_key(key).1) {
        return Err(BackendError::Permanent(format!(
            "invalid key {key:?}: names ending in .partial or .sha256 are reserved on sftp remotes"
        )));
    }
    Ok(())
}

fn check_component(comp: &str) -> std::result::Result<(), String> {
    if comp.is_empty() {
        return Err("empty path component".into());
    }
    if comp == "." || comp == ".." {
        return Err(format!("'{comp}' component"));
    }
    if comp.contains('\0') {
        return Err("NUL byte".into());
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.starts_with('/') {
        return Err(BackendError::Permanent(format!(
            "invalid prefix {prefix:?}: must not start with '/'"
        )));
    }
    if let Some((dirs, _)) = prefix.rsplit_once('/') {
        for comp in dirs.split('/') {
            check_component(comp).map_err(|why| {
                BackendError::Permanent(format!("invalid prefix {prefix:?}: {why}"))
            })?;
        }
    }
    Ok(())
}

#[async_trait]
impl Backend for SftpBackend {
    fn describe(&self) -> String {
        self.inner.cfg.url.clone()
    }

    fn capabilities(&self) -> Capabilities {
        // One fixed part size: part n's offset is then known when part n arrives.
        Capabilities {
            min_part_size: PART_SIZE,
            max_part_size: PART_SIZE,
            preferred_part_size: PART_SIZE,
            max_parts: MAX_PARTS,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        let c = self.conn().await?;
        let inner = &self.inner;
        let mut out = Vec::new();
        for (key, meta) in inner.walk(&c, prefix, true).await? {
            let name = key.rsplit('/').next().unwrap_or(&key);
            if !key.starts_with(prefix) || is_reserved_name(name) {
                continue;
            }
            let ft = meta.file_type();
            let size = if ft.is_some_and(|t| t.is_symlink()) {
                // A link to a file is an object; a link to a folder is not followed.
                match c.sftp.fs().metadata(c.path(&key)).await {
                    Ok(m) if is_file(&m) => m.len().unwrap_or(0),
                    Ok(_) => continue,
                    Err(e) if matches!(kind_of(&e), Kind::NotFound) => continue,
                    Err(e) => return Err(inner.map(&c, &e, "stat", &c.path(&key)).await),
                }
            } else if ft.is_some_and(|t| t.is_file()) {
                meta.len().unwrap_or(0)
            } else {
                continue;
            };
            out.push(ObjectMeta {
                modified: None,
                key,
                size,
                sha256: None,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        check_key(key)?;
        let c = self.conn().await?;
        let path = c.path(key);
        // The object's attributes and its sidecar at once.
        let mut fs = c.sftp.fs();
        let (meta, side) = futures::join!(fs.metadata(&path), self.inner.read_sidecar(&c, key));
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                return Err(match kind_of(&e) {
                    Kind::NotFound => BackendError::NotFound(key.to_string()),
                    _ => self.inner.map(&c, &e, "stat", &path).await,
                })
            }
        };
        if !is_file(&meta) {
            return Err(BackendError::NotFound(key.to_string()));
        }
        // A sidecar older than the object describes the bytes it replaced.
        let obj_mtime = meta.modified().map(|t| t.into_raw());
        let sha256 = side.and_then(|(side_mtime, sha)| match (obj_mtime, side_mtime) {
            (Some(obj), Some(side)) if side < obj => None,
            _ => Some(sha),
        });
        Ok(ObjectMeta {
            modified: meta.modified().map(|t| t.as_system_time()),
            key: key.to_string(),
            size: meta.len().unwrap_or(0),
            sha256,
        })
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        check_key(key)?;
        let c = self.conn().await?;
        let inner = Arc::clone(&self.inner);
        let path = c.path(key);
        let mut file = match c.sftp.open(&path).await {
            Ok(f) => f,
            Err(e) => {
                return Err(match kind_of(&e) {
                    Kind::NotFound => BackendError::NotFound(key.to_string()),
                    _ => inner.map(&c, &e, "open", &path).await,
                })
            }
        };
        let meta = match file.metadata().await {
            Ok(m) => m,
            Err(e) => return Err(inner.map(&c, &e, "stat", &path).await),
        };
        if !is_file(&meta) {
            return Err(BackendError::NotFound(key.to_string()));
        }
        let size = meta.len().unwrap_or(0);
        let (start, len) = crate::byte_range(key, range, size)?;
        let chunks = (0..len.div_ceil(IO_CHUNK as u64)).map(move |i| {
            let off = i * IO_CHUNK as u64;
            (start + off, (len - off).min(IO_CHUNK as u64) as usize)
        });
        let stream = futures::stream::iter(chunks)
            .map(move |(off, n)| {
                let mut f = file.clone();
                let c = Arc::clone(&c);
                let inner = Arc::clone(&inner);
                let path = path.clone();
                async move {
                    match read_exact_at(&mut f, off, n).await {
                        Ok(b) => Ok(b),
                        Err(ReadErr::Eof) => Err(BackendError::Permanent(format!(
                            "{}: {path} shrank while being read",
                            inner.cfg.url
                        ))),
                        Err(ReadErr::Sftp(e)) => Err(inner.map(&c, &e, "read", &path).await),
                    }
                }
            })
            .buffered(IN_FLIGHT);
        Ok(Box::pin(stream))
    }

    async fn put(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta> {
        check_key(key)?;
        // The body is in memory: a mismatch never reaches the server.
        check_sha(key, &body, &sha256)?;
        let c = self.conn().await?;
        let inner = &self.inner;
        let (dir_key, _) = split_key(key);
        // Named after the content: a retried put reuses (truncates) its own partial file.
        let partial = partial_path(&c, key, &hex::encode(sha256)[..16]);
        let res = async {
            let f = inner.create_file(&c, &partial, dir_key, false).await?;
            inner.write_at(&c, &f, 0, &body, &partial).await?;
            // The sidecar is staged only now, after the last write: its mtime must not be
            // older than the object's, or `head` would take it for a stale one.
            let len = [body.len() as u64];
            let verified =
                inner.verify_sync_close(&c, f, &partial, Expected::whole(key, &len, sha256));
            inner
                .verified_commit(&c, key, &partial, sha256, verified)
                .await
        }
        .await;
        if res.is_err() && !c.broken.load(Ordering::Relaxed) {
            let _ = inner.remove_quiet(&c, &partial).await;
        }
        res?;
        Ok(ObjectMeta {
            modified: None,
            key: key.to_string(),
            size: body.len() as u64,
            sha256: Some(sha256),
        })
    }

    async fn create_upload(&self, key: &str) -> Result<UploadId> {
        check_key(key)?;
        let c = self.conn().await?;
        let n = nonce();
        let partial = partial_path(&c, key, &n);
        let f = self
            .inner
            .create_file(&c, &partial, split_key(key).0, true)
            .await?;
        // Created and made private; nothing was written, so no late write error can come:
        // the handle closes in the background.
        drop(f);
        Ok(UploadId(format!("{n}-{PART_SIZE}")))
    }

    async fn put_part(
        &self,
        key: &str,
        up: &UploadId,
        n: u32,
        body: Bytes,
        sha256: [u8; 32],
    ) -> Result<PartReceipt> {
        check_key(key)?;
        let not_found = || BackendError::UploadNotFound(format!("{} (for {key})", up.0));
        let Some((nonce, part_size)) = parse_upload_id(&up.0) else {
            return Err(not_found());
        };
        if n == 0 || n > MAX_PARTS {
            return Err(BackendError::Permanent(format!(
                "{key}: part number {n} outside 1..={MAX_PARTS}"
            )));
        }
        if body.len() as u64 > part_size {
            return Err(BackendError::Permanent(format!(
                "{key}: part {n} has {} bytes, more than this upload's part size {part_size}",
                body.len()
            )));
        }
        check_sha(&format!("{key} part {n}"), &body, &sha256)?;
        let c = self.conn().await?;
        let inner = &self.inner;
        let partial = partial_path(&c, key, nonce);
        let mut f = match c.sftp.options().write(true).open(&partial).await {
            Ok(f) => f,
            Err(e) => {
                return Err(match kind_of(&e) {
                    Kind::NotFound => not_found(),
                    _ => inner.map(&c, &e, "open", &partial).await,
                })
            }
        };
        let offset = (n as u64 - 1) * part_size;
        inner.write_at(&c, &f, offset, &body, &partial).await?;
        inner.fsync(&c, &mut f, &partial).await?;
        inner.close(&c, f, &partial).await?;
        Ok(PartReceipt {
            number: n,
            size: body.len() as u64,
            token: hex::encode(sha256),
        })
    }

    async fn complete_upload(
        &self,
        key: &str,
        up: &UploadId,
        parts: &[PartReceipt],
        sha256: [u8; 32],
    ) -> Result<ObjectMeta> {
        check_key(key)?;
        let not_found = || BackendError::UploadNotFound(format!("{} (for {key})", up.0));
        let Some((nonce, part_size)) = parse_upload_id(&up.0) else {
            return Err(not_found());
        };
        let c = self.conn().await?;
        let inner = &self.inner;
        let partial = partial_path(&c, key, nonce);
        // The handle and what the server holds, at once.
        let mut opts = c.sftp.options();
        opts.read(true).write(true);
        let mut fs = c.sftp.fs();
        let (opened, held) = futures::join!(opts.open(&partial), fs.metadata(&partial));
        let mut f = match opened {
            Ok(f) => f,
            Err(e) if matches!(kind_of(&e), Kind::NotFound) => {
                // Completed before, and the reply was lost? Then the object is there.
                let total: u64 = parts.iter().map(|p| p.size).sum();
                return match self.head(key).await {
                    Ok(meta) if meta.size == total && meta.sha256 == Some(sha256) => Ok(meta),
                    Ok(meta)
                        if meta.size == total && meta.sha256.is_none() && !parts.is_empty() =>
                    {
                        // Renamed, but the sidecar was not written: check the bytes.
                        let path = c.path(key);
                        let f = match c.sftp.open(&path).await {
                            Ok(f) => f,
                            Err(_) => return Err(not_found()),
                        };
                        match inner
                            .verify(
                                &c,
                                &f,
                                &path,
                                Expected {
                                    key,
                                    parts: &[total],
                                    part_tokens: None,
                                    sha256,
                                },
                            )
                            .await
                        {
                            Ok(()) => {
                                drop(f);
                                inner.write_sidecar(&c, key, sha256).await?;
                                Ok(ObjectMeta {
                                    modified: None,
                                    sha256: Some(sha256),
                                    ..meta
                                })
                            }
                            Err(e) if e.is_retryable() => Err(e),
                            Err(_) => Err(not_found()),
                        }
                    }
                    Ok(_) | Err(BackendError::NotFound(_)) => Err(not_found()),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(inner.map(&c, &e, "open", &partial).await),
        };

        // Receipts first: numbered 1..=k, all but the last exactly one part size.
        let tokens = check_fixed_part_receipts(key, parts, part_size)?;
        let sizes: Vec<u64> = parts.iter().map(|p| p.size).collect();
        let total: u64 = sizes.iter().sum();

        // What the server holds must cover every part.
        let have = match held {
            Ok(m) => m.len().unwrap_or(0),
            Err(e) => return Err(inner.map(&c, &e, "stat", &partial).await),
        };
        if have < total {
            return Err(BackendError::Permanent(format!(
                "{key}: the server holds {have} bytes of upload {} but the receipts add up to {total}: a part never arrived",
                up.0
            )));
        }
        if have > total {
            // A last part re-sent shorter leaves the longer one's tail behind.
            if let Err(e) = f.set_len(total).await {
                return Err(inner.map(&c, &e, "truncate", &partial).await);
            }
        }
        let want = Expected {
            key,
            parts: &sizes,
            part_tokens: Some(&tokens),
            sha256,
        };
        let verified = inner.verify_sync_close(&c, f, &partial, want);
        inner
            .verified_commit(&c, key, &partial, sha256, verified)
            .await?;
        Ok(ObjectMeta {
            modified: None,
            key: key.to_string(),
            size: total,
            sha256: Some(sha256),
        })
    }

    /// Every `<key>.<16 hex>.partial` under the prefix's folder (a multipart upload, or a
    /// `put` that never finished: `abort_upload` removes either), as `(key, id)`; sidecar
    /// partials are not uploads and are not listed.
    async fn list_uploads(&self, prefix: &str) -> Result<Option<Vec<(String, UploadId)>>> {
        check_prefix(prefix)?;
        let c = self.conn().await?;
        let mut out = Vec::new();
        for (key, _) in self.inner.walk(&c, prefix, false).await? {
            let Some((object, nonce)) = key.strip_suffix(PARTIAL).and_then(|k| k.rsplit_once('.'))
            else {
                continue;
            };
            let id = format!("{nonce}-{PART_SIZE}");
            if object.starts_with(prefix)
                && !object.ends_with(SIDECAR)
                && parse_upload_id(&id).is_some()
                && check_key(object).is_ok()
            {
                out.push((object.to_string(), UploadId(id)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Some(out))
    }

    async fn abort_upload(&self, key: &str, up: &UploadId) -> Result<()> {
        check_key(key)?;
        let Some((nonce, _)) = parse_upload_id(&up.0) else {
            return Ok(()); // cannot exist
        };
        let c = self.conn().await?;
        let partial = partial_path(&c, key, nonce);
        self.inner.remove_quiet(&c, &partial).await?;
        self.inner.remove_staged_sidecars(&c, key).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let c = self.conn().await?;
        let inner = &self.inner;
        let path = c.path(key);
        // Sidecar first: an object may lack one, a sidecar never outlives its object.
        inner.remove_quiet(&c, &format!("{path}{SIDECAR}")).await?;
        match c.sftp.fs().remove_file(&path).await {
            Ok(()) => {}
            Err(e) => match kind_of(&e) {
                Kind::NotFound => return Ok(()),
                // A folder is not an object: nothing to delete.
                Kind::Failure(_) => match c.sftp.fs().metadata(&path).await {
                    Ok(m) if is_dir(&m) => return Ok(()),
                    Err(e2) if matches!(kind_of(&e2), Kind::NotFound) => return Ok(()),
                    _ => return Err(inner.map(&c, &e, "remove", &path).await),
                },
                _ => return Err(inner.map(&c, &e, "remove", &path).await),
            },
        }
        // Remove the folders the delete left empty, up to (never including) the root.
        let mut dir_key = split_key(key).0;
        while !dir_key.is_empty() {
            if c.sftp.fs().remove_dir(c.path(dir_key)).await.is_err() {
                break; // not empty, or already gone
            }
            dir_key = split_key(dir_key).0;
        }
        Ok(())
    }

    /// The sidecar's SHA-256 is of the finished file, hashed on the server (or read back)
    /// before its rename.
    fn sha256_is_computed_from_stored_bytes(&self) -> bool {
        true
    }
    fn supports_put_if_absent(&self) -> bool {
        true
    }

    /// A conditional create that never shows a partial body under `key`.
    ///
    /// Opening `key` itself with `O_EXCL` (SFTP `create_new`) would be atomic as a
    /// *create*, but the object would be visible — empty or half-written — until the
    /// write lands, and a prune lease read in that window looks unreadable (stale). So the
    /// body goes to `<key>.<nonce>.partial` first (written, fsynced, its SHA-256 checked
    /// on the server, as [`put`](Backend::put) does), and is then published with a
    /// no-overwrite link:
    /// - `hardlink@openssh.com` (OpenSSH ≥ 5.7): the server calls `link(2)`, which fails
    ///   with `EEXIST` when `key` exists — atomic, decided by the server's filesystem;
    ///   the partial name is removed afterwards.
    /// - without it, on a server without `posix-rename@openssh.com`: a plain SFTP v3
    ///   `rename`, which the protocol says fails when the target exists (OpenSSH's own
    ///   server implements it with `link(2)` too).
    /// - a server with posix-rename but no hardlink (where a rename would overwrite):
    ///   `O_EXCL` create of `key` and one write of the (small) body; a reader may see it
    ///   empty for that moment, which the prune lease tolerates by reading again.
    ///
    /// When the link fails because `key` exists: [`BackendError::AlreadyExists`]. The
    /// `.sha256` sidecar is written after the object, as `put` does.
    async fn put_if_absent(&self, key: &str, body: Bytes, sha256: [u8; 32]) -> Result<ObjectMeta> {
        check_key(key)?;
        check_sha(key, &body, &sha256)?;
        let c = self.conn().await?;
        let inner = &self.inner;
        let (dir_key, _) = split_key(key);
        let obj = c.path(key);
        // A failed create or link means "exists" when the key is there now.
        async fn exists_or(c: &Conn, url: &str, key: &str, e: BackendError) -> BackendError {
            match c.sftp.fs().metadata(c.path(key)).await {
                Ok(_) => BackendError::AlreadyExists(format!("{url}: {key}")),
                Err(_) => e,
            }
        }
        let url = inner.cfg.url.as_str();
        let meta = ObjectMeta {
            modified: None,
            key: key.to_string(),
            size: body.len() as u64,
            sha256: Some(sha256),
        };
        if !c.sftp.support_hardlink() && c.sftp.support_posix_rename() {
            let f = match inner.create_file(&c, &obj, dir_key, true).await {
                Ok(f) => f,
                Err(e) => return Err(exists_or(&c, url, key, e).await),
            };
            let res = inner.write_whole(&c, f, &obj, key, &body, sha256).await;
            if let Err(e) = res {
                let _ = inner.remove_quiet(&c, &obj).await;
                return Err(e);
            }
            inner.sidecar_after_create(&c, key, sha256).await;
            return Ok(meta);
        }
        let partial = partial_path(&c, key, &nonce());
        let f = inner.create_file(&c, &partial, dir_key, true).await?;
        let res = async {
            inner
                .write_whole(&c, f, &partial, key, &body, sha256)
                .await?;
            let mut fs = c.sftp.fs();
            let linked = if c.sftp.support_hardlink() {
                fs.hard_link(&partial, &obj).await
            } else {
                fs.rename(&partial, &obj).await
            };
            match linked {
                Ok(()) => Ok(()),
                Err(e) => {
                    let mapped = inner.map(&c, &e, &format!("link {partial} to"), &obj).await;
                    Err(exists_or(&c, url, key, mapped).await)
                }
            }
        }
        .await;
        if !c.broken.load(Ordering::Relaxed) {
            // After a hard link (or on failure) the partial name goes; after a rename it is gone.
            let _ = inner.remove_quiet(&c, &partial).await;
        }
        res?;
        inner.sidecar_after_create(&c, key, sha256).await;
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed() {
        let c = SftpConfig::from_url("sftp://backup@backup.example.com:2222/srv/backups/pronto")
            .unwrap();
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(c.host, "backup.example.com");
        assert_eq!(c.port, Some(2222));
        assert_eq!(c.path, "/srv/backups/pronto");

        let c = SftpConfig::from_url("sftp://nas/~/backups/").unwrap();
        assert_eq!((c.user, c.port, c.path.as_str()), (None, None, "backups"));
        assert_eq!(SftpConfig::from_url("sftp://nas/~").unwrap().path, ".");
        assert_eq!(SftpConfig::from_url("sftp://h/").unwrap().path, "/");
        let c = SftpConfig::from_url("sftp://u%40corp@[::1]:22/a%20b").unwrap();
        assert_eq!(c.user.as_deref(), Some("u@corp"));
        assert_eq!(c.host, "::1");
        assert_eq!(c.path, "/a b");

        for bad in [
            "sftp://u:secret@h/x",
            "sftp://h",
            "sftp:///x",
            "s3://b/x",
            "sftp://h/x?y=1",
        ] {
            let e = SftpConfig::from_url(bad).expect_err(bad);
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn keys_are_checked() {
        for good in ["a", "a/b.tar.gz", "x/.hidden", "a.partial/b", "sha256"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "../a",
            "a/./b",
            "a.partial",
            "d/a.sha256",
            "a\0b",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upload_ids() {
        assert_eq!(
            parse_upload_id("0123456789abcdef-8388608"),
            Some(("0123456789abcdef", 8388608))
        );
        for bad in [
            "",
            "x-1",
            "0123456789abcdef",
            "0123456789abcdef-0",
            "../../etc-5",
        ] {
            assert_eq!(parse_upload_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn exec_hash_command_quotes_the_path_and_falls_back_to_sha256sum() {
        let c = exec_hash_command("/srv/it's here/a.tar.gz");
        assert!(
            c.contains("openssl dgst -sha256 -r '/srv/it'\\''s here/a.tar.gz'"),
            "{c}"
        );
        assert!(
            c.ends_with("|| sha256sum -- '/srv/it'\\''s here/a.tar.gz'"),
            "{c}"
        );
        assert!(exec_hash_command("-rf").contains("'./-rf'"));
    }

    #[test]
    fn aes_gcm_goes_first_only_where_nobody_chose_the_ciphers() {
        let openssh = "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com";
        assert_eq!(
            aes_gcm_first(openssh, openssh).as_deref(),
            Some("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr")
        );
        let chosen = "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com";
        assert_eq!(aes_gcm_first(chosen, openssh), None, "the user's own list");
        let gcm_first = "aes256-gcm@openssh.com,chacha20-poly1305@openssh.com";
        assert_eq!(aes_gcm_first(gcm_first, gcm_first), None, "already first");
        let no_gcm = "chacha20-poly1305@openssh.com,aes128-ctr";
        assert_eq!(aes_gcm_first(no_gcm, no_gcm), None, "none to move");
        assert_eq!(aes_gcm_first("", ""), None);
    }

    #[test]
    fn sidecar_lines_roundtrip_like_sha256sum() {
        let sha = crate::sha256_of(b"x");
        let line = sha256sum_line(&sha, "pronto-app-backup-20260101-000000.tar.gz");
        assert_eq!(
            line,
            format!(
                "{}  pronto-app-backup-20260101-000000.tar.gz\n",
                hex::encode(sha)
            )
        );
        for name in ["plain", "with space", "back\\slash", "new\nline"] {
            let line = sha256sum_line(&sha, name);
            assert_eq!(parse_sha256sum_line(&line, name), Some(sha), "{name:?}");
            assert_eq!(parse_sha256sum_line(&line, "other"), None);
        }
        assert_eq!(parse_sha256sum_line("garbage\n", "x"), None);
    }

    #[test]
    fn fingerprints_are_found_in_ssh_output() {
        let log = "The fingerprint for the ED25519 key sent by the remote host is\nSHA256:abcDEF123+/xyz.\nPlease contact";
        assert_eq!(
            fingerprint_in(log).as_deref(),
            Some("SHA256:abcDEF123+/xyz")
        );
    }
}
