//! The S3 backend against LocalStack (started by `support/localstack.rs`, one server for
//! this test binary, a bucket per test): the shared conformance suite plus what only S3
//! shows — server-side checksum rejection, metadata, storage class, error mapping,
//! redaction of secrets. An optional test runs against a real bucket when
//! `PRONTO_TEST_S3_URL` (and the usual AWS credentials) are set.

#[path = "support/localstack.rs"]
mod localstack;
#[path = "support/proxy.rs"]
mod proxy;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pronto_backends::conformance::{test_data, Harness};
use pronto_backends::s3::{S3Backend, S3Checksum, S3Config};
use pronto_backends::{collect, sha256_of, Backend, BackendError};

/// Keys LocalStack accepts; the credential chain is tested end to end through the binary.
const KEY_ID: &str = "AKIAPRONTOTESTKEY0001";
const SECRET: &str = "pronto-test-secret-do-not-print-0123456789";

fn config(endpoint: &str, bucket: &str, prefix: &str) -> S3Config {
    S3Config {
        bucket: bucket.into(),
        prefix: prefix.into(),
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.into()),
        allow_http: true,
        access_key_id: Some(KEY_ID.into()),
        secret_access_key: Some(SECRET.into()),
        ..Default::default()
    }
}

fn open(cfg: S3Config) -> Arc<dyn Backend> {
    Arc::new(S3Backend::new(cfg).expect("open S3 backend"))
}

/// A fresh bucket; every backend instance opens it anew, under a prefix.
fn s3_harness() -> Harness {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("conf");
    let cfg = config(&ls.endpoint, &bucket, "pronto/prod");
    Harness::new(move || {
        let cfg = cfg.clone();
        async move { open(cfg) }
    })
}

pronto_backends::conformance_suite!(
    harness = s3_harness(),
    skip = {
        complete_with_wrong_whole_sha256_rejected_nothing_visible:
            "S3 cannot check a whole-object SHA-256 at CompleteMultipartUpload (its multipart checksum is a checksum of the parts' checksums); every part is verified by the server as it is sent, and the replicator verifies the completed object before it writes the manifest",
    },
);

// ---------------------------------------------------------------------------------------
// S3-only checks
// ---------------------------------------------------------------------------------------

fn expect_mismatch<T: std::fmt::Debug>(r: pronto_backends::Result<T>, what: &str) -> String {
    match r {
        Err(e @ BackendError::ChecksumMismatch { .. }) => e.to_string(),
        other => panic!("{what}: expected ChecksumMismatch, got {other:?}"),
    }
}

/// The server's own verdict, not the local check's.
#[track_caller]
fn assert_server_said_bad_digest(msg: &str) {
    assert!(
        msg.contains("BadDigest") || msg.contains("XAmzContentSHA256Mismatch"),
        "expected the server to reject the body: {msg}"
    );
}

/// A body corrupted between the client and the server (after the client computed its
/// checksum) is refused by the server — BadDigest — and surfaces as ChecksumMismatch;
/// nothing becomes visible. For each checksum mode that sends one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_rejects_a_body_corrupted_in_transit_as_checksum_mismatch() {
    let ls = localstack::shared();
    for mode in [S3Checksum::Sha256, S3Checksum::Md5] {
        let bucket = ls.new_bucket("corrupt");
        let proxy = proxy::Proxy::start(ls.port);
        proxy.corrupt(|r| r.method == "PUT" && r.len > 0);
        let mut cfg = config(&proxy.endpoint(), &bucket, "p");
        cfg.checksum = mode;
        let b = open(cfg);

        let data = test_data(100_000, 1);
        let r = b
            .put("obj", Bytes::from(data.clone()), sha256_of(&data))
            .await;
        let msg = expect_mismatch(r, &format!("{mode}: put through a corrupting proxy"));
        eprintln!("{mode}: {msg}");
        assert_server_said_bad_digest(&msg);
        assert!(
            ls.keys(&bucket).is_empty(),
            "{mode}: a rejected put left an object"
        );

        proxy.reset();
        let up = b.create_upload("multi").await.unwrap();
        proxy.corrupt(|r| r.part_number().is_some());
        let part = Bytes::from(test_data(6 << 20, 2));
        let r = b
            .put_part("multi", &up, 1, part.clone(), sha256_of(&part))
            .await;
        let msg = expect_mismatch(r, &format!("{mode}: put_part through a corrupting proxy"));
        assert_server_said_bad_digest(&msg);
        proxy.reset();
        // The upload goes on: the part is sent again, intact.
        let r1 = b
            .put_part("multi", &up, 1, part.clone(), sha256_of(&part))
            .await
            .unwrap();
        b.complete_upload("multi", &up, &[r1], sha256_of(&part))
            .await
            .unwrap();
        let got = collect(b.get("multi", None).await.unwrap()).await.unwrap();
        assert_eq!(
            sha256_of(&got),
            sha256_of(&part),
            "{mode}: object after a resent part"
        );
    }
}

/// The requests really carry the configured checksum header, with the body's value (seen
/// at a recording proxy between client and server), and with `none`, neither; every mode
/// round-trips single and multipart objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_modes_send_their_header_and_round_trip() {
    use base64::Engine;
    use md5::Digest;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let ls = localstack::shared();
    for mode in [S3Checksum::Sha256, S3Checksum::Md5, S3Checksum::None] {
        let bucket = ls.new_bucket("modes");
        let proxy = proxy::Proxy::start(ls.port);
        let mut cfg = config(&proxy.endpoint(), &bucket, "");
        cfg.checksum = mode;
        let b = open(cfg);
        let data = test_data(7 << 20, 3);
        b.put("single", Bytes::from(data.clone()), sha256_of(&data))
            .await
            .unwrap();
        let up = b.create_upload("multi").await.unwrap();
        let (p1, p2) = (
            Bytes::copy_from_slice(&data[..5 << 20]),
            Bytes::copy_from_slice(&data[5 << 20..]),
        );
        let r2 = b
            .put_part("multi", &up, 2, p2.clone(), sha256_of(&p2))
            .await
            .unwrap();
        let r1 = b
            .put_part("multi", &up, 1, p1.clone(), sha256_of(&p1))
            .await
            .unwrap();
        b.complete_upload("multi", &up, &[r1, r2], sha256_of(&data))
            .await
            .unwrap();

        // Each body sent (the single put, both parts) with the header its mode promises.
        let seen = proxy.seen();
        let bodies: Vec<(&proxy::Seen, &[u8])> = seen
            .iter()
            .filter(|r| r.method == "PUT" && r.len > 0)
            .map(|r| {
                let body: &[u8] = match r.part_number() {
                    Some(1) => &p1,
                    Some(2) => &p2,
                    _ => &data,
                };
                (r, body)
            })
            .collect();
        assert_eq!(bodies.len(), 3, "{mode}: {seen:#?}");
        for (r, body) in bodies {
            let (sha, md5) = (r.header("x-amz-checksum-sha256"), r.header("content-md5"));
            let want_sha = b64(&sha256_of(body));
            let want_md5 = b64(&md5::Md5::digest(body));
            match mode {
                S3Checksum::Sha256 => assert_eq!(sha, Some(want_sha.as_str()), "{mode}: {r:?}"),
                S3Checksum::Md5 => assert_eq!(md5, Some(want_md5.as_str()), "{mode}: {r:?}"),
                S3Checksum::None => assert_eq!((sha, md5), (None, None), "{mode}: {r:?}"),
            }
        }

        for k in ["single", "multi"] {
            let got = collect(b.get(k, None).await.unwrap()).await.unwrap();
            assert_eq!(sha256_of(&got), sha256_of(&data), "{mode}: {k}");
        }
        // A wrong sha256 is refused before anything is sent, whatever the mode.
        proxy.clear();
        expect_mismatch(
            b.put("bad", Bytes::from(data.clone()), [0u8; 32]).await,
            &format!("{mode}: put with a wrong sha256"),
        );
        assert!(
            !proxy.seen().iter().any(|r| r.method == "PUT"),
            "{mode}: the bad body reached the wire"
        );
        assert!(!ls.keys(&bucket).contains(&"bad".to_string()));
    }
}

/// `put` records the SHA-256 as `x-amz-meta-sha256` and `head` reports it; the storage
/// class reaches the server; the prefix is where the objects land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_storage_class_and_layout() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("meta");
    let mut cfg = config(&ls.endpoint, &bucket, "/backups/host-1/");
    cfg.storage_class = Some("STANDARD_IA".into());
    let b = open(cfg);
    assert_eq!(
        b.describe(),
        format!("s3://{bucket}/backups/host-1 at {}", ls.endpoint)
    );
    let data = b"archive bytes".to_vec();
    b.put("a.tar.gz", Bytes::from(data.clone()), sha256_of(&data))
        .await
        .unwrap();
    assert_eq!(
        b.head("a.tar.gz").await.unwrap().sha256,
        Some(sha256_of(&data))
    );
    assert_eq!(
        ls.keys(&bucket),
        vec!["backups/host-1/a.tar.gz".to_string()]
    );

    let (_, listing) =
        localstack::http("GET", ls.port, &format!("/{bucket}?list-type=2"), &[]).unwrap();
    assert!(
        listing.contains("<StorageClass>STANDARD_IA</StorageClass>"),
        "{listing}"
    );
    let head = raw_head(ls.port, &format!("/{bucket}/backups/host-1/a.tar.gz"));
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "x-amz-meta-sha256: {}",
            hex::encode(sha256_of(&data))
        )),
        "{head}"
    );

    // A multipart upload started through the trait with the hash carries it too.
    let s3 = S3Backend::new(config(&ls.endpoint, &bucket, "backups/host-1")).unwrap();
    let body = Bytes::from(test_data(1000, 4));
    let up = Backend::create_upload_for(&s3, "m.tar.gz", sha256_of(&body))
        .await
        .unwrap();
    let r = s3
        .put_part("m.tar.gz", &up, 1, body.clone(), sha256_of(&body))
        .await
        .unwrap();
    s3.complete_upload("m.tar.gz", &up, &[r], sha256_of(&body))
        .await
        .unwrap();
    assert_eq!(
        s3.head("m.tar.gz").await.unwrap().sha256,
        Some(sha256_of(&body))
    );
    // Through the trait's create_upload there is no hash to record: head says None.
    let up = s3.create_upload("n.tar.gz").await.unwrap();
    let r = s3
        .put_part("n.tar.gz", &up, 1, body.clone(), sha256_of(&body))
        .await
        .unwrap();
    s3.complete_upload("n.tar.gz", &up, &[r], sha256_of(&body))
        .await
        .unwrap();
    assert_eq!(s3.head("n.tar.gz").await.unwrap().sha256, None);
}

fn raw_head(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Errors map at the edge: SlowDown with Retry-After → Transient with the delay, 403 →
/// Auth, NoSuchBucket → Permanent (never an empty listing), NoSuchUpload → UploadNotFound;
/// and no message carries the access key id or secret, even when the server's error
/// body echoes the key id (as SignatureDoesNotMatch does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_mapped_and_never_show_secrets() {
    let ls = localstack::shared();
    let bucket = ls.new_bucket("errors");
    let proxy = proxy::Proxy::start(ls.port);
    let b = open(config(&proxy.endpoint(), &bucket, "p"));
    let data = Bytes::from_static(b"x");
    let mut messages = Vec::new();

    proxy.canned(
        |r| r.method == "PUT",
        &xml_response(
            503,
            "SlowDown",
            "Please reduce your request rate.",
            &[("Retry-After", "7")],
            "",
        ),
    );
    match b.put("k", data.clone(), sha256_of(&data)).await {
        Err(
            e @ BackendError::Transient {
                retry_after: Some(d),
                ..
            },
        ) => {
            assert_eq!(d, Duration::from_secs(7));
            assert!(e.is_retryable());
            messages.push(e.to_string());
        }
        other => panic!("SlowDown: expected Transient with retry_after 7 s, got {other:?}"),
    }

    proxy.canned(
        |r| r.method == "PUT",
        &xml_response(
            500,
            "InternalError",
            "We encountered an internal error.",
            &[],
            "",
        ),
    );
    let e = b
        .put("k", data.clone(), sha256_of(&data))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::Transient {
                retry_after: None,
                ..
            }
        ),
        "{e:?}"
    );
    messages.push(e.to_string());

    let echo = format!("<AWSAccessKeyId>{KEY_ID}</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256 {SECRET}</StringToSign>");
    proxy.canned(
        |r| r.method == "PUT",
        &xml_response(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
            &[],
            &echo,
        ),
    );
    let e = b
        .put("k", data.clone(), sha256_of(&data))
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Auth(_)), "{e:?}");
    messages.push(e.to_string());

    proxy.canned(
        |r| r.method == "GET",
        &xml_response(
            403,
            "AccessDenied",
            &format!("Access Denied for {KEY_ID}"),
            &[],
            "",
        ),
    );
    let e = b.list("").await.unwrap_err();
    assert!(matches!(e, BackendError::Auth(_)), "{e:?}");
    messages.push(e.to_string());

    proxy.reset();
    let missing = open(config(&ls.endpoint, "no-such-bucket-here", "p"));
    let e = missing.list("").await.unwrap_err();
    assert!(
        matches!(e, BackendError::Permanent(_)),
        "listing a missing bucket: {e:?}"
    );
    messages.push(e.to_string());

    let up = b.create_upload("u").await.unwrap();
    b.abort_upload("u", &up).await.unwrap();
    let e = b
        .put_part("u", &up, 1, data.clone(), sha256_of(&data))
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::UploadNotFound(_)), "{e:?}");
    messages.push(e.to_string());

    // A server that refuses the connection cannot heal by retrying: Permanent, with host,
    // port and the cause in the message (issue 17).
    let dead = open(config("http://127.0.0.1:9", &bucket, "p"));
    let e = dead.head("k").await.unwrap_err();
    assert!(
        !e.is_retryable()
            && e.to_string().contains("127.0.0.1:9")
            && e.to_string().contains("connection refused"),
        "a refused connection fails at once, naming host, port and cause: {e:?}"
    );
    messages.push(e.to_string());

    for m in &messages {
        assert!(
            !m.contains(KEY_ID) && !m.contains(SECRET),
            "secret in message: {m}"
        );
    }
    let dbg = format!("{:?}", config(&ls.endpoint, &bucket, "p"));
    assert!(!dbg.contains(KEY_ID) && !dbg.contains(SECRET), "{dbg}");
    assert!(!b.describe().contains(KEY_ID));
}

fn xml_response(
    status: u16,
    code: &str,
    message: &str,
    headers: &[(&str, &str)],
    extra: &str,
) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>{extra}<RequestId>1</RequestId></Error>"
    );
    let mut r = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(&body);
    r
}

/// Config problems are refused when the backend is opened, naming the key.
#[test]
fn bad_options_are_refused() {
    let mut c = config("http://127.0.0.1:1", "bucket", "p");
    c.allow_http = false;
    let e = S3Backend::new(c).unwrap_err().to_string();
    assert!(e.contains("endpoint") && e.contains("allow_http"), "{e}");
    let mut c = config("https://s3.example.com", "bucket", "p");
    c.storage_class = Some("cheap please".into());
    assert!(S3Backend::new(c)
        .unwrap_err()
        .to_string()
        .contains("storage_class"));
}

/// Optional: the same basic round trip against a real bucket, when
/// `PRONTO_TEST_S3_URL=s3://bucket/prefix` and AWS credentials are in the environment
/// (`PRONTO_TEST_S3_REGION`, `PRONTO_TEST_S3_ENDPOINT` optional). Ignored unless asked for:
/// `cargo test -p pronto-backends --test s3 real_ -- --ignored`; then a missing variable fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real S3 bucket: set PRONTO_TEST_S3_URL and credentials, run with --ignored"]
async fn real_s3_bucket_when_configured() {
    let url = std::env::var("PRONTO_TEST_S3_URL")
        .expect("PRONTO_TEST_S3_URL=s3://bucket/prefix (and credentials) for the real-bucket test");
    let mut cfg = S3Config::from_url(&url).expect("PRONTO_TEST_S3_URL");
    cfg.prefix = format!("{}/pronto-test-{}", cfg.prefix, std::process::id())
        .trim_start_matches('/')
        .to_string();
    cfg.region = std::env::var("PRONTO_TEST_S3_REGION").ok();
    cfg.endpoint = std::env::var("PRONTO_TEST_S3_ENDPOINT").ok();
    let real = cfg.clone();
    pronto_backends::conformance::put_if_absent_creates_once(&Harness::new(move || {
        let cfg = real.clone();
        async move { open(cfg) }
    }))
    .await;
    let b = open(cfg);
    let data = test_data(6 << 20, 9);
    b.put("single", Bytes::from(data.clone()), sha256_of(&data))
        .await
        .unwrap();
    assert_eq!(
        b.head("single").await.unwrap().sha256,
        Some(sha256_of(&data))
    );
    let up = b.create_upload("multi").await.unwrap();
    let p1 = Bytes::copy_from_slice(&data[..5 << 20]);
    let p2 = Bytes::copy_from_slice(&data[5 << 20..]);
    let r1 = b
        .put_part("multi", &up, 1, p1.clone(), sha256_of(&p1))
        .await
        .unwrap();
    let r2 = b
        .put_part("multi", &up, 2, p2.clone(), sha256_of(&p2))
        .await
        .unwrap();
    b.complete_upload("multi", &up, &[r1, r2], sha256_of(&data))
        .await
        .unwrap();
    let got = collect(b.get("multi", None).await.unwrap()).await.unwrap();
    assert_eq!(sha256_of(&got), sha256_of(&data));
    assert_eq!(b.list("").await.unwrap().len(), 2);
    b.delete("single").await.unwrap();
    b.delete("multi").await.unwrap();
}
