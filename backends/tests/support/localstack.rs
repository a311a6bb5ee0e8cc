//! LocalStack for the tests: one private S3 server per test binary, on a free port on
//! 127.0.0.1, with its state in a temp folder, started on first use and shared by every
//! test in the binary.
//!
//! It is found in `$PRONTO_LOCALSTACK_VENV` or `${XDG_CACHE_HOME:-~/.cache}/pronto-offsite/localstack`
//! (`localstack/install.sh` puts it there and is run here when it is missing). If it cannot
//! be installed or started, the tests **fail**; they never skip.
//!
//! Statics are never dropped, so the server is stopped two ways: an `atexit` hook kills
//! its process group and removes its folder when the test binary exits normally, and the
//! server is spawned from a thread that lives as long as the process with
//! `PR_SET_PDEATHSIG = SIGKILL`, so it also dies when the test binary is killed.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running LocalStack.
#[derive(Debug)]
pub struct LocalStack {
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub pid: u32,
    pub dir: PathBuf,
}

static SERVER: OnceLock<LocalStack> = OnceLock::new();
/// What the atexit hook cleans up: (process group id, folder).
static CLEANUP: Mutex<Option<(i32, PathBuf)>> = Mutex::new(None);

/// The repository root (this file is at backends/tests/support/).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("localstack").is_dir() && p.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("PRONTO_LOCALSTACK_VENV").filter(|v| !v.is_empty()) {
        return PathBuf::from(v);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("pronto-offsite/localstack")
}

/// The shared server, started on first use. Panics (failing the test) when it cannot start.
pub fn shared() -> &'static LocalStack {
    SERVER.get_or_init(|| {
        let python = venv().join("bin/python");
        if !python.exists() {
            let install = repo_root().join("localstack/install.sh");
            eprintln!("LocalStack is not installed in {}; running {}", venv().display(), install.display());
            let status = Command::new(&install).stdout(Stdio::null()).status();
            assert!(
                matches!(status, Ok(s) if s.success()) && python.exists(),
                "LocalStack is needed for these tests and could not be installed with {} ({status:?}); \
                 run it by hand to see why, or set PRONTO_LOCALSTACK_VENV",
                install.display()
            );
        }
        let mut last = String::new();
        for _ in 0..3 {
            match start(&python) {
                Ok(ls) => return ls,
                Err(e) => {
                    eprintln!("LocalStack did not start: {e}");
                    last = e;
                }
            }
        }
        panic!("LocalStack could not be started (tried 3 ports): {last}");
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

extern "C" fn stop_at_exit() {
    if let Ok(mut g) = CLEANUP.lock() {
        if let Some((pgid, dir)) = g.take() {
            // SAFETY: plain syscalls.
            unsafe {
                libc::kill(-pgid, libc::SIGTERM);
            }
            std::thread::sleep(Duration::from_millis(300));
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn start(python: &Path) -> Result<LocalStack, String> {
    let dir = tempfile::Builder::new()
        .prefix("pronto-localstack-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    for sub in ["vol", "tmp", "conf"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let port = free_port();
    let log = std::fs::File::create(dir.join("localstack.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(python);
    cmd.args(["-m", "localstack.runtime.main"])
        .env("GATEWAY_SERVER", "hypercorn")
        .env("OVERRIDE_IN_DOCKER", "0")
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("SERVICES", "s3")
        .env("FILESYSTEM_ROOT", &dir)
        .env("LOCALSTACK_VOLUME_DIR", dir.join("vol"))
        .env("TMPDIR", dir.join("tmp"))
        .env("CONFIG_DIR", dir.join("conf"))
        .env("SKIP_SSL_CERT_DOWNLOAD", "1")
        .env("DISABLE_EVENTS", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    // PR_SET_PDEATHSIG fires when the *thread* that forked exits: fork from a thread that
    // lives until the process ends.
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("localstack-parent".into())
        .spawn(move || {
            let child = cmd.spawn();
            let ok = child.is_ok();
            let _ = tx.send(child.map(|c| c.id()).map_err(|e| e.to_string()));
            if ok {
                loop {
                    std::thread::park();
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let pid = rx.recv().map_err(|e| e.to_string())??;
    *CLEANUP.lock().unwrap() = Some((pid as i32, dir.clone()));
    static HOOKED: OnceLock<()> = OnceLock::new();
    HOOKED.get_or_init(|| unsafe {
        libc::atexit(stop_at_exit);
    });

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid as i32, 0) } == 0 && !is_zombie(pid);
        if !alive {
            let log = std::fs::read_to_string(dir.join("localstack.log")).unwrap_or_default();
            stop_at_exit();
            return Err(format!("LocalStack exited during start; log:\n{log}"));
        }
        if let Ok((200, body)) = http("GET", port, "/_localstack/health", &[]) {
            if body.contains("\"s3\": \"available\"") || body.contains("\"s3\": \"running\"") {
                break;
            }
        }
        if Instant::now() > deadline {
            stop_at_exit();
            return Err(format!("S3 not up on port {port} after 90 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(LocalStack {
        port,
        endpoint: format!("http://127.0.0.1:{port}"),
        pid,
        dir,
    })
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// A minimal HTTP/1.1 request without authentication (LocalStack accepts unsigned
/// requests): returns the status and the body.
pub fn http(method: &str, port: u16, path: &str, body: &[u8]) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

impl LocalStack {
    /// Create a bucket (a raw unsigned PUT: object_store cannot create buckets).
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = http("PUT", self.port, &format!("/{name}"), &[])
            .unwrap_or_else(|e| panic!("create bucket {name}: {e}"));
        assert_eq!(status, 200, "create bucket {name}: HTTP {status}: {body}");
    }

    /// A new bucket with a unique name.
    pub fn new_bucket(&self, what: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.create_bucket(&name);
        name
    }

    /// Every key in a bucket but the tool's remote markers (unsigned ListObjectsV2; fine
    /// for test-sized buckets).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.all_keys(bucket)
            .into_iter()
            .filter(|k| !k.ends_with(REMOTE_MARKER))
            .collect()
    }

    /// Every object key in a bucket, the tool's remote markers included.
    pub fn all_keys(&self, bucket: &str) -> Vec<String> {
        let (status, body) = http("GET", self.port, &format!("/{bucket}?list-type=2"), &[])
            .unwrap_or_else(|e| panic!("list {bucket}: {e}"));
        assert_eq!(status, 200, "list {bucket}: {body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }

    /// Multipart uploads in progress in a bucket (keys).
    pub fn uploads(&self, bucket: &str) -> Vec<String> {
        let (status, body) = http("GET", self.port, &format!("/{bucket}?uploads"), &[])
            .unwrap_or_else(|e| panic!("list uploads {bucket}: {e}"));
        assert_eq!(status, 200, "list uploads {bucket}: {body}");
        body.split("<Upload>")
            .skip(1)
            .filter_map(|s| {
                s.split_once("<Key>")
                    .and_then(|(_, r)| r.split_once("</Key>"))
                    .map(|(k, _)| k.to_string())
            })
            .collect()
    }
}

/// The marker the first push writes at a remote's root (src/marker.rs): [`LocalStack::keys`]
/// leaves it out, so that tests count archives and manifests.
pub const REMOTE_MARKER: &str = ".pronto-offsite-remote";
