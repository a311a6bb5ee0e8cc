//! The local-disk backend: the shared conformance suite plus what only a filesystem shows.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use pronto_backends::conformance::{test_data, Harness};
use pronto_backends::local::LocalBackend;
use pronto_backends::{collect, sha256_of, Backend, BackendError};

/// A harness whose every backend instance reopens the same folder, as a new process would.
fn local_harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("remote");
    Harness::new(move || {
        let root = root.clone();
        async move {
            Arc::new(LocalBackend::new(root).expect("open local backend")) as Arc<dyn Backend>
        }
    })
    .keep_alive(dir)
}

pronto_backends::conformance_suite!(harness = local_harness());

// ---------------------------------------------------------------------------------------
// Local-only checks
// ---------------------------------------------------------------------------------------

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every entry below `dir`, relative, sorted (hidden ones included).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn open(dir: &tempfile::TempDir) -> (LocalBackend, PathBuf) {
    let root = dir.path().join("nested/remote");
    (LocalBackend::new(root.clone()).unwrap(), root)
}

#[tokio::test]
async fn creates_root_0700_and_files_0600() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    assert_eq!(mode(&root), 0o700, "root folder mode");

    b.put("a/b/obj", Bytes::from_static(b"x"), sha256_of(b"x"))
        .await
        .unwrap();
    assert_eq!(mode(&root.join("a/b/obj")), 0o600, "object mode");
    assert_eq!(mode(&root.join("a")), 0o700, "key folder mode");
    assert_eq!(mode(&root.join("a/b")), 0o700, "key folder mode");

    let data = Bytes::from(test_data(100, 1));
    let up = b.create_upload("c/multi").await.unwrap();
    let staging = root.join(".uploads").join(&up.0);
    assert_eq!(mode(&root.join(".uploads")), 0o700, "uploads folder mode");
    assert_eq!(mode(&staging), 0o700, "staging folder mode");
    let r = b
        .put_part("c/multi", &up, 1, data.clone(), sha256_of(&data))
        .await
        .unwrap();
    assert_eq!(mode(&staging.join("parts")), 0o600, "parts file mode");
    assert_eq!(
        mode(&staging.join("upload.json")),
        0o600,
        "upload.json mode"
    );
    b.complete_upload("c/multi", &up, &[r], sha256_of(&data))
        .await
        .unwrap();
    assert_eq!(mode(&root.join("c/multi")), 0o600, "assembled object mode");
    assert!(!staging.exists(), "staging folder removed after complete");
}

#[tokio::test]
async fn existing_root_is_reused_and_described_as_file_url() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    assert_eq!(b.describe(), format!("file://{}", root.display()));
    assert!(b.describe().starts_with("file:///"));
    b.put("k", Bytes::from_static(b"v"), sha256_of(b"v"))
        .await
        .unwrap();
    let again = LocalBackend::new(root.clone()).unwrap();
    assert_eq!(
        collect(again.get("k", None).await.unwrap()).await.unwrap(),
        b"v"
    );

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    assert!(
        LocalBackend::new(file).is_err(),
        "a file is not a usable root"
    );
}

#[tokio::test]
async fn no_temp_files_after_checksum_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    let data = Bytes::from(test_data(10_000, 2));

    let err = b.put("x/y/obj", data.clone(), [7u8; 32]).await.unwrap_err();
    assert!(
        matches!(err, BackendError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(
        tree(&root),
        Vec::<String>::new(),
        "a rejected put left files"
    );

    // Over an existing object: only the object remains.
    b.put("x/obj", data.clone(), sha256_of(&data))
        .await
        .unwrap();
    let err = b.put("x/obj", Bytes::from_static(b"new"), [7u8; 32]).await;
    assert!(matches!(err, Err(BackendError::ChecksumMismatch { .. })));
    assert_eq!(tree(&root), vec!["x", "x/obj"]);

    // A rejected part leaves nothing outside the upload's staging folder (its bytes were
    // hashed as they were written into the parts file, where no receipt names them).
    let up = b.create_upload("x/multi").await.unwrap();
    let staging = format!(".uploads/{}", up.0);
    let err = b.put_part("x/multi", &up, 1, data.clone(), [7u8; 32]).await;
    assert!(matches!(err, Err(BackendError::ChecksumMismatch { .. })));
    assert_eq!(
        tree(&root),
        vec![
            ".uploads".to_string(),
            staging.clone(),
            format!("{staging}/parts"),
            format!("{staging}/upload.json"),
            "x".into(),
            "x/obj".into()
        ]
    );

    // A rejected complete leaves no temp file beside the key.
    let r = b
        .put_part("x/multi", &up, 1, data.clone(), sha256_of(&data))
        .await
        .unwrap();
    let err = b
        .complete_upload("x/multi", &up, &[r], [7u8; 32])
        .await
        .unwrap_err();
    assert!(
        matches!(err, BackendError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(
        tree(&root.join("x")),
        vec!["obj"],
        "a rejected complete left files"
    );

    b.abort_upload("x/multi", &up).await.unwrap();
    assert_eq!(tree(&root), vec![".uploads", "x", "x/obj"]);
}

#[tokio::test]
async fn vanished_root_is_an_error_not_an_empty_remote() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    b.put("p/k", Bytes::from_static(b"v"), sha256_of(b"v"))
        .await
        .unwrap();
    std::fs::remove_dir_all(&root).unwrap();

    for prefix in ["", "p/", "missing/"] {
        let r = b.list(prefix).await;
        assert!(
            matches!(r, Err(BackendError::Permanent(_))),
            "list({prefix:?}) of a vanished root: {r:?}"
        );
    }
    let r = b.head("p/k").await;
    assert!(matches!(r, Err(BackendError::Permanent(_))), "head: {r:?}");
    assert!(matches!(
        b.get("p/k", None).await,
        Err(BackendError::Permanent(_))
    ));
    assert!(matches!(
        b.delete("p/k").await,
        Err(BackendError::Permanent(_))
    ));
    let r = b
        .put("p/k2", Bytes::from_static(b"v"), sha256_of(b"v"))
        .await;
    assert!(matches!(r, Err(BackendError::Permanent(_))), "put: {r:?}");
    assert!(b.create_upload("p/k3").await.is_err());
    assert!(!root.exists(), "a write must not recreate a vanished root");
}

#[tokio::test]
async fn invalid_keys_are_rejected_and_nothing_escapes_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    let sha = sha256_of(b"v");
    for key in [
        "../escape",
        "/abs",
        "a//b",
        "a/",
        "",
        "a/./b",
        ".uploads/x",
        "a/.b.tmp-x",
    ] {
        let r = b.put(key, Bytes::from_static(b"v"), sha).await;
        assert!(
            matches!(r, Err(BackendError::Permanent(_))),
            "put({key:?}): {r:?}"
        );
        assert!(matches!(b.head(key).await, Err(BackendError::Permanent(_))));
        assert!(matches!(
            b.delete(key).await,
            Err(BackendError::Permanent(_))
        ));
        assert!(matches!(
            b.create_upload(key).await,
            Err(BackendError::Permanent(_))
        ));
    }
    assert!(matches!(
        b.list("../").await,
        Err(BackendError::Permanent(_))
    ));
    assert!(matches!(b.list("/").await, Err(BackendError::Permanent(_))));
    assert!(!dir.path().join("nested/escape").exists());
    assert_eq!(tree(&root), Vec::<String>::new());
}

#[tokio::test]
async fn unknown_upload_ids_are_upload_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _root) = open(&dir);
    let body = Bytes::from_static(b"part");
    for id in ["doesnotexist", "../../etc", "", "a/b"] {
        let up = pronto_backends::UploadId(id.to_string());
        let r = b
            .put_part("k", &up, 1, body.clone(), sha256_of(&body))
            .await;
        assert!(
            matches!(r, Err(BackendError::UploadNotFound(_))),
            "put_part({id:?}): {r:?}"
        );
        let r = b.complete_upload("k", &up, &[], sha256_of(&body)).await;
        assert!(
            matches!(r, Err(BackendError::UploadNotFound(_))),
            "complete({id:?}): {r:?}"
        );
        b.abort_upload("k", &up).await.unwrap();
    }
}

#[tokio::test]
async fn temp_files_and_uploads_are_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    b.put("d/real", Bytes::from_static(b"v"), sha256_of(b"v"))
        .await
        .unwrap();
    std::fs::write(root.join("d/.real.tmp-abc123"), b"half").unwrap();
    std::fs::write(root.join(".top.tmp-xyz"), b"half").unwrap();
    std::fs::write(root.join("d/.hidden-but-real"), b"h").unwrap();
    let up = b.create_upload("d/pending").await.unwrap();
    b.put_part(
        "d/pending",
        &up,
        1,
        Bytes::from_static(b"p"),
        sha256_of(b"p"),
    )
    .await
    .unwrap();
    let listed: Vec<String> = b
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(listed, vec!["d/.hidden-but-real", "d/real"]);
    assert!(b.list(".up").await.unwrap().is_empty());
}

#[tokio::test]
async fn delete_prunes_empty_folders_but_never_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    let sha = sha256_of(b"v");
    b.put("a/b/c", Bytes::from_static(b"v"), sha).await.unwrap();
    b.put("a/d", Bytes::from_static(b"v"), sha).await.unwrap();
    b.delete("a/b/c").await.unwrap();
    assert_eq!(tree(&root), vec!["a", "a/d"]);
    b.delete("a/d").await.unwrap();
    assert_eq!(tree(&root), Vec::<String>::new());
    assert!(root.is_dir(), "the root stays");
    b.put("top", Bytes::from_static(b"v"), sha).await.unwrap();
    b.delete("top").await.unwrap();
    assert!(root.is_dir(), "the root stays");
}

#[tokio::test]
async fn sha256_is_reported_while_the_file_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    let data = test_data(5000, 3);
    let sha = sha256_of(&data);
    b.put("k", Bytes::from(data.clone()), sha).await.unwrap();
    let head = b.head("k").await.unwrap();
    if !xattrs_supported(&root) {
        assert_eq!(head.sha256, None);
        skipped("sha256 recorded in user xattrs: unsupported here (sha256 is None, as documented)");
        return;
    }
    assert_eq!(head.sha256, Some(sha), "head reports the recorded sha256");
    assert_eq!(b.list("").await.unwrap()[0].sha256, Some(sha), "list too");

    // Edited in place: the recorded hash no longer applies.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("k"))
        .unwrap();
    f.write_all(b"tampered").unwrap();
    drop(f);
    assert_eq!(
        b.head("k").await.unwrap().sha256,
        None,
        "stale hash reported"
    );

    // A file put there by hand has none.
    std::fs::write(root.join("manual"), b"m").unwrap();
    assert_eq!(b.head("manual").await.unwrap().sha256, None);
}

/// Checks this binary skipped because the environment lacks something (counted).
static SKIPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Report a skipped check on the real stderr (not captured by the test harness, so it
/// shows in every run's output), with the count so far.
fn skipped(what: &str) {
    use std::io::Write;
    let n = SKIPPED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED ({n} so far in backends/tests/local.rs): {what}"
    );
}

fn xattrs_supported(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let probe = dir.join("xattr-probe");
    std::fs::write(&probe, b"").unwrap();
    let c = std::ffi::CString::new(probe.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a live buffer.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.probe".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
    std::fs::remove_file(&probe).unwrap();
    rc == 0
}

#[tokio::test]
async fn get_streams_in_chunks_of_at_most_one_mib() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _root) = open(&dir);
    let data = test_data(3 * 1024 * 1024 + 17, 4);
    b.put("big", Bytes::from(data.clone()), sha256_of(&data))
        .await
        .unwrap();
    let mut stream = b.get("big", Some(5..data.len() as u64)).await.unwrap();
    let (mut chunks, mut got) = (0, Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(
            !chunk.is_empty() && chunk.len() <= 1024 * 1024,
            "chunk of {}",
            chunk.len()
        );
        chunks += 1;
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, data[5..]);
    assert_eq!(chunks, 4);
    // An empty range is an empty stream.
    assert!(collect(b.get("big", Some(7..7)).await.unwrap())
        .await
        .unwrap()
        .is_empty());
}

/// An upload of key `k` with two parts sent (the first of the part size, the second of
/// `extra` bytes): the data, the upload, the two parts and their receipts.
struct TwoParts {
    data: Bytes,
    up: pronto_backends::UploadId,
    p1: Bytes,
    p2: Bytes,
    r1: pronto_backends::PartReceipt,
    r2: pronto_backends::PartReceipt,
}

async fn two_parts(b: &LocalBackend, extra: usize, seed: u64) -> TwoParts {
    let ps = b.capabilities().min_part_size as usize;
    let data = Bytes::from(test_data(ps + extra, seed));
    let (p1, p2) = (data.slice(..ps), data.slice(ps..));
    let up = b.create_upload("k").await.unwrap();
    let r1 = b
        .put_part("k", &up, 1, p1.clone(), sha256_of(&p1))
        .await
        .unwrap();
    let r2 = b
        .put_part("k", &up, 2, p2.clone(), sha256_of(&p2))
        .await
        .unwrap();
    TwoParts {
        data,
        up,
        p1,
        p2,
        r1,
        r2,
    }
}

#[tokio::test]
async fn complete_validates_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    let min = b.capabilities().min_part_size as usize;
    let TwoParts {
        data,
        up,
        p2,
        r1,
        r2,
        ..
    } = two_parts(&b, 10, 5).await;
    let sha = sha256_of(&data);

    let bad = [
        ("no parts", vec![]),
        ("out of order", vec![r2.clone(), r1.clone()]),
        ("repeated", vec![r1.clone(), r1.clone(), r2.clone()]),
        (
            "a first part shorter than the part size",
            vec![
                pronto_backends::PartReceipt {
                    size: min as u64 - 1,
                    ..r1.clone()
                },
                r2.clone(),
            ],
        ),
        (
            "a last part longer than the part size",
            vec![pronto_backends::PartReceipt {
                size: min as u64 + 1,
                ..r1.clone()
            }],
        ),
        (
            "malformed token",
            vec![
                r1.clone(),
                pronto_backends::PartReceipt {
                    token: "zz".into(),
                    ..r2.clone()
                },
            ],
        ),
    ];
    for (what, receipts) in bad {
        let r = b.complete_upload("k", &up, &receipts, sha).await;
        assert!(
            matches!(r, Err(BackendError::Permanent(_))),
            "{what}: {r:?}"
        );
    }
    // The stored bytes are not what the receipts and the whole hash say: a mismatch,
    // naming the part whose bytes differ from its receipt when one does.
    let short_last = pronto_backends::PartReceipt {
        size: 9,
        ..r2.clone()
    };
    let r = b
        .complete_upload("k", &up, &[r1.clone(), short_last], sha)
        .await;
    assert!(
        matches!(r, Err(BackendError::ChecksumMismatch { .. })),
        "a last part's receipt one byte short: {r:?}"
    );
    let wrong_token = pronto_backends::PartReceipt {
        token: hex::encode(sha256_of(b"other")),
        ..r2.clone()
    };
    let mut wrong_whole = sha;
    wrong_whole[0] ^= 1;
    let r = b
        .complete_upload("k", &up, &[r1.clone(), wrong_token], wrong_whole)
        .await;
    assert!(
        matches!(&r, Err(BackendError::ChecksumMismatch { key, .. }) if key == "k part 2"),
        "{r:?}"
    );
    for n in [0, b.capabilities().max_parts + 1] {
        let r = b.put_part("k", &up, n, p2.clone(), sha256_of(&p2)).await;
        assert!(
            matches!(r, Err(BackendError::Permanent(_))),
            "part {n}: {r:?}"
        );
    }
    assert_eq!(
        tree(&root)
            .iter()
            .filter(|p| !p.starts_with(".uploads"))
            .count(),
        0
    );
    b.complete_upload("k", &up, &[r1, r2], sha).await.unwrap();
    assert_eq!(
        collect(b.get("k", None).await.unwrap()).await.unwrap(),
        data
    );
}

/// Parts are written at their offsets in one file, so a last part re-sent shorter than
/// before leaves the old one's tail behind it: the completion cuts it, and the object is
/// exactly the parts of the receipts, in one file renamed out of the staging folder.
#[tokio::test]
async fn a_last_part_resent_shorter_leaves_no_stale_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    let ps = b.capabilities().preferred_part_size as usize;
    let first = Bytes::from(test_data(ps, 31));
    let long = Bytes::from(test_data(5000, 32));
    let short = Bytes::from(test_data(300, 33));
    let up = b.create_upload("k").await.unwrap();
    // The last part arrives first, then part 1, then the last again, shorter.
    b.put_part("k", &up, 2, long.clone(), sha256_of(&long))
        .await
        .unwrap();
    let r1 = b
        .put_part("k", &up, 1, first.clone(), sha256_of(&first))
        .await
        .unwrap();
    let r2 = b
        .put_part("k", &up, 2, short.clone(), sha256_of(&short))
        .await
        .unwrap();
    let staging = root.join(".uploads").join(&up.0);
    assert_eq!(
        std::fs::metadata(staging.join("parts")).unwrap().len(),
        (ps + 5000) as u64,
        "the parts file holds the longer part's tail before the completion"
    );
    let want = [first.as_ref(), short.as_ref()].concat();
    let meta = b
        .complete_upload("k", &up, &[r1, r2], sha256_of(&want))
        .await
        .unwrap();
    assert_eq!(meta.size, want.len() as u64);
    assert_eq!(std::fs::read(root.join("k")).unwrap(), want);
    assert_eq!(b.head("k").await.unwrap().size, want.len() as u64);
    assert!(!staging.exists(), "the staging folder is gone");
    assert_eq!(tree(&root), vec![".uploads".to_string(), "k".to_string()]);
}

/// An upload staged by an earlier version (one `part-NNNNN` file per part, no part size
/// in `upload.json`) is never resumed: writing or completing it says "upload not found"
/// (the push then starts it over), and it is still listed as in progress and aborted.
#[tokio::test]
async fn an_upload_staged_by_an_earlier_version_is_started_over_not_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    let id = "abcdefghij0123456789";
    let staging = root.join(".uploads").join(id);
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(
        staging.join("upload.json"),
        r#"{"key": "old/archive.tar.gz", "created_unix": 1}"#,
    )
    .unwrap();
    let part = Bytes::from(test_data(1000, 34));
    std::fs::write(staging.join("part-00001"), &part).unwrap();
    let up = pronto_backends::UploadId(id.to_string());
    let r = b
        .put_part("old/archive.tar.gz", &up, 2, part.clone(), sha256_of(&part))
        .await;
    assert!(matches!(r, Err(BackendError::UploadNotFound(_))), "{r:?}");
    let receipt = pronto_backends::PartReceipt {
        number: 1,
        size: 1000,
        token: hex::encode(sha256_of(&part)),
    };
    let r = b
        .complete_upload("old/archive.tar.gz", &up, &[receipt], sha256_of(&part))
        .await;
    assert!(matches!(r, Err(BackendError::UploadNotFound(_))), "{r:?}");
    assert!(matches!(
        b.head("old/archive.tar.gz").await,
        Err(BackendError::NotFound(_))
    ));
    assert_eq!(
        b.list_uploads("old/").await.unwrap(),
        Some(vec![("old/archive.tar.gz".to_string(), up.clone())])
    );
    b.abort_upload("old/archive.tar.gz", &up).await.unwrap();
    assert!(!staging.exists(), "the old staging folder is gone");
    assert_eq!(b.list_uploads("").await.unwrap(), Some(vec![]));
}

/// Deletes prune folders that concurrent puts are about to use: every put must still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_and_deletes_in_the_same_folders() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    let b = Arc::new(b);
    let sha = sha256_of(b"v");
    let ops = futures::stream::iter(0..400u32).map(|i| {
        let b = Arc::clone(&b);
        async move {
            let key = format!("x/y/z/k{i}");
            b.put(&key, Bytes::from_static(b"v"), sha).await?;
            b.delete(&key).await
        }
    });
    let results: Vec<_> = ops.buffer_unordered(16).collect().await;
    for r in results {
        r.unwrap();
    }
    assert!(b.list("").await.unwrap().is_empty());
    assert_eq!(tree(&root), Vec::<String>::new(), "every folder pruned");
}

/// `put_part` hashes the body as it writes it (a chunk at a time, while it is in the
/// cache), so a body that is not what its sha256 says is refused after it was written over
/// its part's region. The invariant holds: nothing becomes visible, a completion with the
/// part's earlier receipt fails naming the part, and sending the part again repairs it.
#[tokio::test]
async fn a_corrupted_resend_is_refused_and_the_completion_names_the_part_until_it_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (b, root) = open(&dir);
    let ps = b.capabilities().min_part_size as usize;
    let TwoParts {
        data,
        up,
        p1,
        r1,
        r2,
        ..
    } = two_parts(&b, 1000, 9).await;
    let mut bad = p1.to_vec();
    bad[ps - 1] ^= 1; // in the last chunk: found only after every chunk was written
    let r = b
        .put_part("k", &up, 1, Bytes::from(bad), sha256_of(&p1))
        .await;
    assert!(
        matches!(&r, Err(BackendError::ChecksumMismatch { key, .. }) if key == "k part 1"),
        "{r:?}"
    );
    let r = b
        .complete_upload("k", &up, &[r1, r2.clone()], sha256_of(&data))
        .await;
    assert!(
        matches!(&r, Err(BackendError::ChecksumMismatch { key, .. }) if key == "k part 1"),
        "{r:?}"
    );
    assert!(!root.join("k").exists(), "nothing under the final name");
    assert!(matches!(b.head("k").await, Err(BackendError::NotFound(_))));

    let r1 = b
        .put_part("k", &up, 1, p1.clone(), sha256_of(&p1))
        .await
        .unwrap();
    b.complete_upload("k", &up, &[r1, r2], sha256_of(&data))
        .await
        .unwrap();
    assert_eq!(
        collect(b.get("k", None).await.unwrap()).await.unwrap(),
        data
    );
}
