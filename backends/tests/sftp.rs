//! The SFTP backend against a real, private sshd: the shared conformance suite, plus what
//! only SSH shows (host keys, permissions, dropped connections, the server-side layout).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pronto_backends::conformance::{test_data, Harness};
use pronto_backends::sftp::{cpu_has_aes, RemoteHash, SftpBackend, SftpConfig, PART_SIZE};
use pronto_backends::{collect, sha256_of, Backend, BackendError};
use support::sshd::{fingerprint_of, keygen, Sshd, SshdOptions};

/// One private sshd per case; every backend instance opens its own SSH connection to the
/// same folder, as a new process would. Files are verified as `remote_hash` says.
fn sftp_harness(remote_hash: RemoteHash) -> Harness {
    let sshd = Sshd::start();
    let mut cfg = sshd.config(&sshd.dir.path().join("remote"));
    cfg.remote_hash = remote_hash;
    Harness::new(move || {
        let cfg = cfg.clone();
        async move { Arc::new(SftpBackend::new(cfg).expect("sftp backend")) as Arc<dyn Backend> }
    })
    .keep_alive(sshd)
}

// The default: hashed on the server (this sshd runs commands).
pronto_backends::conformance_suite!(harness = sftp_harness(RemoteHash::Auto));

/// The same suite verifying by reading back (`remote_hash = "read"`, and what the default
/// falls back to where the server runs no command).
mod read_back {
    use super::*;
    pronto_backends::conformance_suite!(harness = sftp_harness(RemoteHash::ReadBack));
}

// ---------------------------------------------------------------------------------------
// SFTP-only checks
// ---------------------------------------------------------------------------------------

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Entries of a folder on the server (the server's disk is this machine's), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn backend(cfg: SftpConfig) -> SftpBackend {
    SftpBackend::new(cfg).expect("sftp backend")
}

fn put_bytes(data: &[u8]) -> (Bytes, [u8; 32]) {
    (Bytes::copy_from_slice(data), sha256_of(data))
}

/// Upload `data` through multipart (parts of PART_SIZE), not completing it.
async fn upload_parts(
    b: &SftpBackend,
    key: &str,
    data: &Bytes,
) -> (pronto_backends::UploadId, Vec<pronto_backends::PartReceipt>) {
    let up = b.create_upload(key).await.unwrap();
    let mut receipts = Vec::new();
    let p = PART_SIZE as usize;
    for (i, start) in (0..data.len()).step_by(p).enumerate() {
        let body = data.slice(start..(start + p).min(data.len()));
        let sha = sha256_of(&body);
        receipts.push(b.put_part(key, &up, i as u32 + 1, body, sha).await.unwrap());
    }
    (up, receipts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_folders_are_created_and_files_are_private_with_sha256sum_sidecars() {
    let sshd = Sshd::start();
    let root = sshd.dir.path().join("srv/backups/pronto");
    let b = backend(sshd.config(&root));
    assert!(!root.exists());
    let data = test_data(70_000, 1);
    let (body, sha) = put_bytes(&data);
    let meta = b
        .put("pronto-app-backup-20260101-000000.tar.gz", body, sha)
        .await
        .unwrap();
    assert_eq!(meta.sha256, Some(sha));
    assert_eq!(mode(&root), 0o700, "created root folder mode");
    assert_eq!(
        mode(&root.join("pronto-app-backup-20260101-000000.tar.gz")),
        0o600
    );
    assert_eq!(
        names(&root),
        vec![
            "pronto-app-backup-20260101-000000.tar.gz",
            "pronto-app-backup-20260101-000000.tar.gz.sha256"
        ],
        "the object and its sidecar, no partial left"
    );
    let side =
        std::fs::read_to_string(root.join("pronto-app-backup-20260101-000000.tar.gz.sha256"))
            .unwrap();
    assert_eq!(
        side,
        format!(
            "{}  pronto-app-backup-20260101-000000.tar.gz\n",
            hex::encode(sha)
        )
    );

    // Nested keys: folders 0700, every sidecar beside its object.
    let (body, sha) = put_bytes(b"nested");
    b.put("a/b/c.bin", body, sha).await.unwrap();
    assert_eq!(mode(&root.join("a")), 0o700);
    assert_eq!(mode(&root.join("a/b")), 0o700);

    // A person logged into the server can check every object without our tool.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("sha256sum -c *.sha256 && cd a/b && sha256sum -c c.bin.sha256")
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sha256sum -c: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("pronto-app-backup-20260101-000000.tar.gz: OK"));

    // Sidecars are not objects: list does not show them, head reports their hash,
    // delete removes them (and the folders it emptied).
    let keys: Vec<String> = b
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        keys,
        vec!["a/b/c.bin", "pronto-app-backup-20260101-000000.tar.gz"]
    );
    assert_eq!(
        b.head("a/b/c.bin").await.unwrap().sha256,
        Some(sha256_of(b"nested"))
    );
    b.delete("a/b/c.bin").await.unwrap();
    assert!(!root.join("a").exists(), "emptied folders pruned");
    b.delete("pronto-app-backup-20260101-000000.tar.gz")
        .await
        .unwrap();
    assert_eq!(names(&root), Vec::<String>::new());
    assert!(root.is_dir(), "the root stays");

    // Reserved names are refused.
    for key in ["x.sha256", "d/x.partial"] {
        let (body, sha) = put_bytes(b"v");
        assert!(
            matches!(b.put(key, body, sha).await, Err(BackendError::Permanent(_))),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_writes_parts_at_their_offsets_in_one_partial_file() {
    let sshd = Sshd::start();
    let root = sshd.dir.path().join("remote");
    let b = backend(sshd.config(&root));
    let caps = b.capabilities();
    assert_eq!(
        (caps.min_part_size, caps.max_part_size),
        (PART_SIZE, PART_SIZE)
    );

    let data = Bytes::from(test_data(2 * PART_SIZE as usize + 12345, 2));
    let key = "big.tar.gz";
    let up = b.create_upload(key).await.unwrap();
    let nonce = up.0.split('-').next().unwrap().to_string();
    assert_eq!(
        up.0,
        format!("{nonce}-{PART_SIZE}"),
        "the id records the part size"
    );
    let partial = root.join(format!("{key}.{nonce}.partial"));
    assert_eq!(names(&root), vec![format!("{key}.{nonce}.partial")]);
    assert_eq!(mode(&partial), 0o600);

    // Last part first: it lands at its offset, leaving a hole for the others.
    let p = PART_SIZE as usize;
    let part = |n: usize| data.slice((n - 1) * p..(n * p).min(data.len()));
    let r3 = b
        .put_part(key, &up, 3, part(3), sha256_of(&part(3)))
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(&partial).unwrap().len(),
        data.len() as u64
    );
    let r1 = b
        .put_part(key, &up, 1, part(1), sha256_of(&part(1)))
        .await
        .unwrap();
    let r2 = b
        .put_part(key, &up, 2, part(2), sha256_of(&part(2)))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&partial).unwrap(),
        data,
        "the partial file is the object"
    );
    assert!(
        b.list("").await.unwrap().is_empty(),
        "an upload is not listed"
    );

    // Parts with gaps in their numbering cannot complete (they would leave a hole).
    let r = b
        .complete_upload(key, &up, &[r1.clone(), r3.clone()], sha256_of(&data))
        .await;
    assert!(matches!(r, Err(BackendError::Permanent(_))), "{r:?}");

    let meta = b
        .complete_upload(
            key,
            &up,
            &[r1.clone(), r2.clone(), r3.clone()],
            sha256_of(&data),
        )
        .await
        .unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(names(&root), vec![key.to_string(), format!("{key}.sha256")]);
    assert_eq!(std::fs::read(root.join(key)).unwrap(), data);

    // A retried complete whose first reply was lost succeeds; after that the id is gone.
    let again = b
        .complete_upload(key, &up, &[r1, r2, r3], sha256_of(&data))
        .await
        .unwrap();
    assert_eq!(again.size, data.len() as u64);
    let r = b.put_part(key, &up, 1, part(1), sha256_of(&part(1))).await;
    assert!(matches!(r, Err(BackendError::UploadNotFound(_))), "{r:?}");
}

/// Bytes changed on the server after a part's receipt are caught before the rename,
/// reading back and with `remote_hash = "exec"` alike.
/// `head` reads the object's attributes and its sidecar at once; a sidecar older than
/// its object (the file replaced by another tool after our upload) describes the bytes it
/// replaced and is not believed: no recorded hash, so a verification reads the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_older_than_its_object_is_not_believed() {
    let sshd = Sshd::start();
    let root = sshd.dir.path().join("remote");
    let b = backend(sshd.config(&root));
    let (body, sha) = put_bytes(b"the archive");
    b.put("k", body, sha).await.unwrap();
    assert_eq!(b.head("k").await.unwrap().sha256, Some(sha));
    std::fs::write(root.join("k"), b"other bytes").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(root.join("k"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let meta = b.head("k").await.unwrap();
    assert_eq!((meta.size, meta.sha256), (11, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_on_the_server_is_caught_before_the_rename() {
    let sshd = Sshd::start();
    for (i, hash) in [RemoteHash::ReadBack, RemoteHash::Exec]
        .into_iter()
        .enumerate()
    {
        let root = sshd.dir.path().join(format!("remote-{i}"));
        let mut cfg = sshd.config(&root);
        cfg.remote_hash = hash;
        let b = backend(cfg);
        let data = Bytes::from(test_data(PART_SIZE as usize + 3_000_000, 3));
        let key = "archive.tar.gz";
        let (up, receipts) = upload_parts(&b, key, &data).await;
        let nonce = up.0.split('-').next().unwrap();
        let partial = root.join(format!("{key}.{nonce}.partial"));
        let mut bytes = std::fs::read(&partial).unwrap();
        bytes[PART_SIZE as usize + 1000] ^= 0x40;
        std::fs::write(&partial, &bytes).unwrap();

        let r = b
            .complete_upload(key, &up, &receipts, sha256_of(&data))
            .await;
        assert!(
            matches!(r, Err(BackendError::ChecksumMismatch { .. })),
            "{hash:?}: {r:?}"
        );
        assert!(
            !root.join(key).exists(),
            "{hash:?}: nothing renamed into place"
        );
        // The sidecar prepared while the server hashed is gone with the failure: the
        // upload's partial file is all there is (kept, to be repaired or aborted).
        assert_eq!(
            names(&root),
            vec![format!("{key}.{nonce}.partial")],
            "{hash:?}"
        );
        assert!(matches!(b.head(key).await, Err(BackendError::NotFound(_))));

        // Re-sending the damaged part repairs the upload.
        let p2 = data.slice(PART_SIZE as usize..);
        b.put_part(key, &up, 2, p2.clone(), sha256_of(&p2))
            .await
            .unwrap();
        b.complete_upload(key, &up, &receipts, sha256_of(&data))
            .await
            .unwrap();
        assert_eq!(std::fs::read(root.join(key)).unwrap(), data, "{hash:?}");
    }
}

/// A connection that breaks while the server hashes an upload leaves the sidecar staged
/// meanwhile (`<key>.sha256.<16 hex>.partial`). Aborting the upload (what `push --cleanup`
/// and a push that starts over do) removes it with the upload's partial file, and touches
/// no other name: another key's staged sidecar, names not of the pattern.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_an_upload_sweeps_its_stranded_staged_sidecar_and_nothing_else() {
    let sshd = Sshd::start();
    let root = sshd.dir.path().join("remote");
    let b = backend(sshd.config(&root));
    let data = Bytes::from(test_data(PART_SIZE as usize + 1000, 7));
    let key = "archive.tar.gz";
    let (up, _) = upload_parts(&b, key, &data).await;
    let hex16 = &hex::encode(sha256_of(&data))[..16];
    let stranded = format!("{key}.sha256.{hex16}.partial");
    let foreign = [
        format!("other.tar.gz.sha256.{hex16}.partial"),
        format!("{key}.sha256.partial"),
        format!("{key}.sha256.{}.partial", "g".repeat(16)),
        format!("{key}.sha256.{hex16}.partial.keep"),
        format!("{key}.sha256"),
    ];
    for name in foreign.iter().chain([&stranded]) {
        std::fs::write(root.join(name), b"x").unwrap();
    }
    // The stranded sidecar is not an upload of its own.
    let listed = b.list_uploads("").await.unwrap().unwrap();
    assert_eq!(listed, vec![(key.to_string(), up.clone())]);

    b.abort_upload(key, &up).await.unwrap();
    let mut want: Vec<String> = foreign.to_vec();
    want.sort();
    assert_eq!(
        names(&root),
        want,
        "the partial and the staged sidecar gone, nothing else"
    );
    // Aborting again is harmless.
    b.abort_upload(key, &up).await.unwrap();
    assert_eq!(names(&root), want);
}

/// `remote_hash = "exec"` and the default (`auto`) hash on the server: the server's sftp
/// log shows the partial file was never read back, while `"read"` reads every byte once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_hash_exec_hashes_on_the_server_instead_of_reading_back() {
    assert_eq!(
        SftpConfig::from_url("sftp://h/x").unwrap().remote_hash,
        RemoteHash::Auto,
        "the default"
    );
    let sshd = Sshd::start_with(SshdOptions {
        sftp_log: true,
        ..Default::default()
    });
    let data = Bytes::from(test_data(PART_SIZE as usize + 5_000_000, 6));
    for (i, hash) in [RemoteHash::ReadBack, RemoteHash::Exec, RemoteHash::Auto]
        .into_iter()
        .enumerate()
    {
        let root = sshd.dir.path().join(format!("remote-{i}"));
        let mut cfg = sshd.config(&root);
        cfg.remote_hash = hash;
        let b = backend(cfg);
        let (up, receipts) = upload_parts(&b, "k.tar.gz", &data).await;
        let mark = sshd.sftp_log_len();
        b.complete_upload("k.tar.gz", &up, &receipts, sha256_of(&data))
            .await
            .unwrap();
        drop(b);
        sshd.wait_no_sessions(Duration::from_secs(10));
        let read = sshd.bytes_read(".partial", mark);
        let want = if hash == RemoteHash::ReadBack {
            data.len() as u64
        } else {
            0
        };
        assert_eq!(
            read, want,
            "{hash:?}: bytes of the partial file read back over SFTP"
        );
        assert_eq!(std::fs::read(root.join("k.tar.gz")).unwrap(), data);
    }
}

/// With `ForceCommand internal-sftp` (an SFTP-only account) `sha256sum` cannot run: the
/// backend reads back instead (`exec` and the default alike), and still catches corruption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_hash_exec_falls_back_to_reading_back_on_sftp_only_accounts() {
    let sshd = Sshd::start_with(SshdOptions {
        extra_config: "ForceCommand internal-sftp".into(),
        ..Default::default()
    });
    for hash in [RemoteHash::Exec, RemoteHash::Auto] {
        falls_back_to_reading_back(&sshd, hash).await;
    }
}

async fn falls_back_to_reading_back(sshd: &Sshd, hash: RemoteHash) {
    let root = sshd.dir.path().join(format!("remote-{hash:?}"));
    let mut cfg = sshd.config(&root);
    cfg.remote_hash = hash;
    let b = backend(cfg);
    let data = Bytes::from(test_data(3_000_000, 4));
    let (up, receipts) = upload_parts(&b, "k", &data).await;
    let meta = b
        .complete_upload("k", &up, &receipts, sha256_of(&data))
        .await
        .unwrap();
    assert_eq!(meta.size, data.len() as u64);
    let (up, receipts) = upload_parts(&b, "k2", &data).await;
    let nonce = up.0.split('-').next().unwrap();
    let partial = root.join(format!("k2.{nonce}.partial"));
    let mut bytes = std::fs::read(&partial).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&partial, &bytes).unwrap();
    let r = b
        .complete_upload("k2", &up, &receipts, sha256_of(&data))
        .await;
    assert!(
        matches!(r, Err(BackendError::ChecksumMismatch { .. })),
        "{hash:?}: {r:?}"
    );
}

fn auth_message(r: Result<Vec<pronto_backends::ObjectMeta>, BackendError>) -> String {
    match r {
        Err(BackendError::Auth(m)) => m,
        other => panic!("expected an Auth error, got {other:?}"),
    }
}

fn host_key_message(r: Result<Vec<pronto_backends::ObjectMeta>, BackendError>) -> String {
    match r {
        Err(BackendError::HostKey(m)) => m,
        other => panic!("expected a HostKey error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_key_is_refused_with_its_fingerprint_and_how_to_accept_it() {
    let sshd = Sshd::start();
    let root = sshd.dir.path().join("remote");
    let empty = sshd.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let mut cfg = sshd.config(&root);
    cfg.known_hosts_file = Some(empty.clone());
    let msg = host_key_message(backend(cfg.clone()).list("").await);
    let port = sshd.port;
    for want in [
        format!("[127.0.0.1]:{port}"),
        "is unknown".to_string(),
        sshd.fingerprint(),
        format!("ssh-keyscan -p {port} 127.0.0.1 >> {}", empty.display()),
        "accept_new_host_key = true".to_string(),
    ] {
        assert!(msg.contains(&want), "message lacks {want:?}: {msg}");
    }
    assert!(
        !root.exists(),
        "nothing was created on an unverified server"
    );
    assert_eq!(
        std::fs::read_to_string(&empty).unwrap(),
        "",
        "the key was not recorded"
    );

    // The advice works: ssh-keyscan's line makes the next connection succeed.
    let scan = std::process::Command::new("ssh-keyscan")
        .args(["-p", &port.to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    std::fs::write(&empty, &scan.stdout).unwrap();
    backend(cfg).list("").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_is_refused_even_with_accept_new_host_key() {
    let sshd = Sshd::start();
    let root = sshd.dir.path().join("remote");
    // known_hosts records another key for [127.0.0.1]:PORT.
    let other = sshd.dir.path().join("other_host_key");
    keygen(&other, "impostor");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut it = other_pub.split_whitespace();
    let kh = sshd.dir.path().join("stale_known_hosts");
    std::fs::write(
        &kh,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            it.next().unwrap(),
            it.next().unwrap()
        ),
    )
    .unwrap();
    let before = std::fs::read_to_string(&kh).unwrap();
    for accept_new in [false, true] {
        let mut cfg = sshd.config(&root);
        cfg.known_hosts_file = Some(kh.clone());
        cfg.accept_new_host_key = accept_new;
        let msg = host_key_message(backend(cfg).list("").await);
        for want in [
            format!("[127.0.0.1]:{}", sshd.port),
            "CHANGED".to_string(),
            sshd.fingerprint(),
            "ssh-keyscan -p".to_string(),
            "ssh-keygen -R".to_string(),
        ] {
            assert!(
                msg.contains(&want),
                "accept_new={accept_new}: message lacks {want:?}: {msg}"
            );
        }
        // The fingerprint given as the one offered is the server's real key, and the
        // recorded (impostor's) key is not passed off as it.
        let offered = msg
            .split_once("now offers ")
            .and_then(|(_, rest)| rest.split_once(", which"))
            .map_or("", |(fp, _)| fp);
        assert!(
            offered.contains(&sshd.fingerprint()),
            "accept_new={accept_new}: {msg}"
        );
        assert!(
            !msg.contains(&fingerprint_of(&other.with_extension("pub"))),
            "accept_new={accept_new}: the recorded key's fingerprint in: {msg}"
        );
        assert_eq!(
            std::fs::read_to_string(&kh).unwrap(),
            before,
            "known_hosts untouched"
        );
        assert!(!root.exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_host_key_records_an_unknown_key() {
    let sshd = Sshd::start();
    let root = sshd.dir.path().join("remote");
    let kh = sshd.dir.path().join("new_known_hosts");
    let mut cfg = sshd.config(&root);
    cfg.known_hosts_file = Some(kh.clone());
    cfg.accept_new_host_key = true;
    backend(cfg.clone()).list("").await.unwrap();
    let recorded = std::fs::read_to_string(&kh).unwrap();
    let key_b64 = sshd.host_pub.split_whitespace().nth(1).unwrap();
    assert!(recorded.contains(key_b64), "recorded: {recorded}");
    // From now on the key is known: strict checking passes.
    cfg.accept_new_host_key = false;
    backend(cfg).list("").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_server_does_not_accept_is_an_auth_error_naming_user_and_host() {
    let sshd = Sshd::start();
    let stranger = sshd.dir.path().join("stranger_key");
    keygen(&stranger, "stranger");
    let mut cfg = sshd.config(&sshd.dir.path().join("remote"));
    cfg.identity_file = Some(stranger.clone());
    let msg = auth_message(backend(cfg).list("").await);
    assert!(msg.contains("root@127.0.0.1"), "{msg}");
    assert!(msg.contains(&stranger.display().to_string()), "{msg}");
    let private = std::fs::read_to_string(&stranger).unwrap();
    let body_line = private.lines().nth(1).unwrap();
    assert!(
        !msg.contains(body_line) && !msg.contains("PRIVATE KEY"),
        "key material in: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_key_others_can_read_is_an_auth_error_that_says_how_to_fix_it() {
    let sshd = Sshd::start();
    let loose = sshd.dir.path().join("loose_key");
    std::fs::copy(&sshd.client_key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = sshd.config(&sshd.dir.path().join("remote"));
    cfg.identity_file = Some(loose.clone());
    let msg = auth_message(backend(cfg).list("").await);
    assert!(
        msg.contains(&format!("chmod 600 {}", loose.display())),
        "{msg}"
    );
}

/// A root whose folders cannot be made (`/proc` holds no folders of ours) is a permanent
/// error naming the remote, the host and the folder — not "no such object".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_that_cannot_be_created_is_named_with_the_remote_and_host() {
    let sshd = Sshd::start();
    let cfg = sshd.config(Path::new("/proc/pronto-nonexistent/backups"));
    let url = cfg.url.clone();
    let (body, sha) = put_bytes(b"x");
    match backend(cfg).put("k", body, sha).await {
        Err(BackendError::Permanent(m)) => {
            for want in [
                url.as_str(),
                "cannot create the remote folder /proc/pronto-nonexistent",
                "127.0.0.1",
            ] {
                assert!(m.contains(want), "lacks {want:?}: {m}");
            }
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_errors_name_the_path_and_the_user() {
    let sshd = Sshd::start();
    // Log in as `nobody`, who may read but not write the server's folder.
    std::fs::set_permissions(sshd.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = sshd.dir.path().join("readonly");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let b = backend(sshd.config_as("nobody", &root));
    assert!(b.list("").await.unwrap().is_empty(), "nobody can list");
    let (body, sha) = put_bytes(b"v");
    let err = b.put("k", body, sha).await.unwrap_err();
    let BackendError::Auth(msg) = &err else {
        panic!("expected Auth, got {err:?}")
    };
    assert!(msg.contains(&root.display().to_string()), "{msg}");
    assert!(msg.contains("user nobody"), "{msg}");
    assert!(!err.is_retryable());

    // A root below an unwritable folder cannot be created: the message says where.
    let b = backend(sshd.config_as("nobody", &root.join("sub/dir")));
    let msg = auth_message(b.list("").await);
    assert!(
        msg.contains(&root.join("sub").display().to_string()) && msg.contains("nobody"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_transient_and_the_next_call_reconnects() {
    let sshd = Sshd::start();
    let root = sshd.dir.path().join("remote");
    let b = backend(sshd.config(&root));
    let (body, sha) = put_bytes(b"before");
    b.put("k", body, sha).await.unwrap();
    assert_eq!(b.connections_opened(), 1);
    assert!(sshd.kill_sessions() > 0, "there was a session to kill");

    // The first call notices the dead connection…
    let mut first_error = None;
    for _ in 0..50 {
        match b.head("k").await {
            Ok(_) => {}
            Err(e) => {
                first_error = Some(e);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = first_error.expect("a call after the kill failed");
    assert!(e.is_retryable(), "a dropped connection is retryable: {e:?}");
    // …and the next one reconnects.
    let meta = b.head("k").await.unwrap();
    assert_eq!(meta.size, 6);
    assert_eq!(b.connections_opened(), 2);
    assert_eq!(
        collect(b.get("k", None).await.unwrap()).await.unwrap(),
        b"before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_part_is_retried_and_the_upload_completes() {
    let sshd = Sshd::start();
    let root = sshd.dir.path().join("remote");
    let b = Arc::new(backend(sshd.config(&root)));
    let data = Bytes::from(test_data(4 * PART_SIZE as usize, 5));
    let key = "dropped.tar.gz";
    let up = b.create_upload(key).await.unwrap();
    let nonce = up.0.split('-').next().unwrap().to_string();
    let partial = root.join(format!("{key}.{nonce}.partial"));
    // Kill the session while parts are being written.
    let killer = {
        let partial = partial.clone();
        let pid = sshd.pid();
        std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 1_000_000 {
                if t0.elapsed() > Duration::from_secs(20) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            for p in support::sshd::descendants(pid) {
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
            true
        })
    };
    let mut receipts = Vec::new();
    let mut failures = 0;
    for n in 1..=4u32 {
        let body =
            data.slice((n as usize - 1) * PART_SIZE as usize..n as usize * PART_SIZE as usize);
        let sha = sha256_of(&body);
        // What the replicator does: retry retryable errors.
        loop {
            match b.put_part(key, &up, n, body.clone(), sha).await {
                Ok(r) => {
                    receipts.push(r);
                    break;
                }
                Err(e) if e.is_retryable() && failures < 5 => failures += 1,
                Err(e) => panic!("part {n}: {e:?}"),
            }
        }
    }
    assert!(killer.join().unwrap(), "the session was killed mid-upload");
    assert!(failures >= 1, "the kill was noticed as a retryable error");
    assert!(b.connections_opened() >= 2, "reconnected");
    b.complete_upload(key, &up, &receipts, sha256_of(&data))
        .await
        .unwrap();
    assert_eq!(std::fs::read(root.join(key)).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_ssh_config_is_used_when_given() {
    // An alias in an ssh config file names host, port, user, key and known_hosts: the
    // URL only says `sftp://backup-alias/…`.
    let sshd = Sshd::start();
    let root = sshd.dir.path().join("remote");
    let conf = sshd.dir.path().join("ssh_config");
    std::fs::write(
        &conf,
        format!(
            "Host backup-alias\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  UserKnownHostsFile {}\n",
            sshd.port,
            sshd.client_key.display(),
            sshd.known_hosts.display()
        ),
    )
    .unwrap();
    let mut cfg = SftpConfig::from_url(&format!("sftp://backup-alias{}", root.display())).unwrap();
    cfg.ssh_config_file = Some(conf);
    let b = backend(cfg);
    let (body, sha) = put_bytes(b"via alias");
    b.put("k", body, sha).await.unwrap();
    assert_eq!(std::fs::read(root.join("k")).unwrap(), b"via alias");
    assert_eq!(
        b.describe(),
        format!("sftp://backup-alias{}", root.display())
    );
}

/// The ciphers the server's log says the connections made since `from` agreed on, in order.
fn negotiated_ciphers(sshd: &Sshd, from: usize) -> Vec<String> {
    let log = std::fs::read_to_string(&sshd.log).unwrap();
    let found: Vec<String> = log[from..]
        .lines()
        .filter_map(|l| {
            l.split("kex: client->server cipher: ")
                .nth(1)
                .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
        })
        .collect();
    assert!(
        !found.is_empty(),
        "no cipher in the server's log: {}",
        &log[from..]
    );
    found
}

/// The cipher the server's log says the connection made at `from` agreed on.
fn negotiated_cipher(sshd: &Sshd, from: usize) -> String {
    negotiated_ciphers(sshd, from).remove(0)
}

/// Where nobody chose the ciphers, a CPU with AES instructions gets AES-GCM (half the
/// CPU of ssh's default chacha20-poly1305 there); a list the user chose in their ssh
/// config is kept, and the rest of that config (a host alias) still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_gcm_is_preferred_unless_the_user_chose_the_ciphers() {
    let sshd = Sshd::start_with(SshdOptions {
        log_level: Some("DEBUG1"),
        ..Default::default()
    });
    let log_len = || std::fs::metadata(&sshd.log).unwrap().len() as usize;
    let connect = |cfg: SftpConfig| async move {
        let b = backend(cfg);
        b.list("").await.unwrap();
    };
    let fast = if cpu_has_aes() {
        "aes128-gcm@openssh.com"
    } else {
        "chacha20-poly1305@openssh.com"
    };

    // Nobody chose (`-F /dev/null`).
    let mark = log_len();
    connect(sshd.config(&sshd.dir.path().join("r1"))).await;
    assert_eq!(negotiated_cipher(&sshd, mark), fast, "no ssh config");

    // `prefer_aes_gcm = false` (a server without AES instructions): ssh's own order.
    let mut cfg = sshd.config(&sshd.dir.path().join("r1"));
    cfg.prefer_aes_gcm = false;
    let mark = log_len();
    connect(cfg).await;
    assert_eq!(
        negotiated_cipher(&sshd, mark),
        "chacha20-poly1305@openssh.com",
        "prefer_aes_gcm = false"
    );

    // An ssh config with a host alias and no ciphers: the alias still works.
    let conf = sshd.dir.path().join("ssh_config_alias");
    let alias = format!(
        "Host backup-alias\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  UserKnownHostsFile {}\n",
        sshd.port,
        sshd.client_key.display(),
        sshd.known_hosts.display()
    );
    std::fs::write(&conf, &alias).unwrap();
    let root = sshd.dir.path().join("r2");
    let mut cfg = SftpConfig::from_url(&format!("sftp://backup-alias{}", root.display())).unwrap();
    cfg.ssh_config_file = Some(conf.clone());
    let mark = log_len();
    connect(cfg.clone()).await;
    assert_eq!(negotiated_cipher(&sshd, mark), fast, "an alias, no ciphers");

    // The user's own list is kept as it is.
    std::fs::write(
        &conf,
        format!("Ciphers chacha20-poly1305@openssh.com,aes128-gcm@openssh.com\n{alias}"),
    )
    .unwrap();
    let mark = log_len();
    connect(cfg).await;
    assert_eq!(
        negotiated_cipher(&sshd, mark),
        "chacha20-poly1305@openssh.com",
        "the user's choice"
    );

    // Through a jump host that has its own choice: the jump host's ssh would read a
    // config file of ours too, so there is none; both connections keep ssh's choices.
    let jump = sshd.dir.path().join("ssh_config_jump");
    std::fs::write(
        &jump,
        format!(
            "Host jumpy\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n  UserKnownHostsFile {kh}\n  Ciphers aes256-ctr\n\
             Host behind-jumpy\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n  UserKnownHostsFile {kh}\n  ProxyJump jumpy\n",
            port = sshd.port,
            key = sshd.client_key.display(),
            kh = sshd.known_hosts.display()
        ),
    )
    .unwrap();
    let root = sshd.dir.path().join("r3");
    let mut cfg = SftpConfig::from_url(&format!("sftp://behind-jumpy{}", root.display())).unwrap();
    cfg.ssh_config_file = Some(jump);
    let mark = log_len();
    connect(cfg).await;
    let mut seen = negotiated_ciphers(&sshd, mark);
    seen.sort();
    assert_eq!(
        seen,
        ["aes256-ctr", "chacha20-poly1305@openssh.com"],
        "the jump host's own choice, and ssh's default behind it"
    );
}

#[tokio::test]
async fn describe_never_needs_a_connection() {
    let cfg = SftpConfig::from_url("sftp://backup@127.0.0.1:2222/srv/backups").unwrap();
    let b = backend(cfg);
    assert_eq!(b.describe(), "sftp://backup@127.0.0.1:2222/srv/backups");
    assert_eq!(b.connections_opened(), 0);
}

/// The ssh control socket lives in a private folder, `pronto-ssh-<pid>-*` in the temp
/// folder: mode 0700 while the backend lives, removed when it is dropped; and a folder a
/// killed run left behind (its process is gone) is removed by the next backend, while a
/// live process's folder is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_folder_is_private_and_removed_also_after_a_kill() {
    use std::os::unix::fs::DirBuilderExt;
    let tmp = std::env::temp_dir();
    // A folder left by a killed run: a pid that has exited (our reaped child).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let stale = tmp.join(format!("pronto-ssh-{}-killed", child.id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&stale)
        .unwrap();
    std::fs::write(stale.join("socket"), b"").unwrap();
    // One of a live process (pid 1): never ours to remove.
    // (Named for this test process, so that concurrent runs of the suite never share it.)
    let live = tmp.join(format!("pronto-ssh-1-alive-{}", std::process::id()));
    let _ = std::fs::remove_dir(&live);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&live)
        .unwrap();

    let sshd = Sshd::start();
    let b = backend(sshd.config(&sshd.dir.path().join("remote")));
    assert!(!stale.exists(), "the killed run's folder is removed");
    assert!(live.exists(), "a live process's folder is left alone");
    std::fs::remove_dir(&live).unwrap();
    b.list("").await.unwrap();
    let folder = b.control_folder().to_path_buf();
    let name = folder.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        folder.parent() == Some(tmp.as_path())
            && name.starts_with(&format!("pronto-ssh-{}-", std::process::id())),
        "{}",
        folder.display()
    );
    assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    drop(b);
    assert!(!folder.exists(), "removed with the backend");
}
