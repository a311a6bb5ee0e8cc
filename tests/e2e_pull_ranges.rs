//! Pulls of big archives come in concurrent ranges (`replicate::download_sized`): the
//! result is byte-identical, whatever the range size and the order ranges complete in.

mod support;

use std::sync::Arc;

use pronto_backends::local::LocalBackend;
use pronto_offsite::replicate::{self, RemoteHandle, RANGE_SIZE};
use pronto_offsite::retry::RetryPolicy;
use support::{snapshot, text, Env};

use support::noise;

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

#[test]
fn pull_of_an_archive_larger_than_two_ranges_is_byte_identical() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    // Incompressible, so that the archive spans more than 3 ranges (16 MiB each).
    std::fs::write(
        src.join("blob.bin"),
        noise((3 * RANGE_SIZE + RANGE_SIZE / 3) as usize, 42),
    )
    .unwrap();
    std::fs::write(src.join("docs/readme.txt"), "hello\n".repeat(1000)).unwrap();
    env.write_config("");
    let before = snapshot(&src);

    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup: {}", text(&o));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let o = env.run(&["push"]);
    assert!(o.status.success(), "push: {}", text(&o));
    let file = format!("pronto-app-backup-{id}.tar.gz");
    let remote_bytes = std::fs::read(env.remote().join(&file)).unwrap();
    assert!(
        remote_bytes.len() as u64 > 3 * RANGE_SIZE,
        "{} bytes",
        remote_bytes.len()
    );

    // Lose every local copy, pull it back.
    for d in ["", "archive/weekly", "archive/monthly", "archive/yearly"] {
        let _ = std::fs::remove_file(env.backups().join(d).join(&file));
        let _ = std::fs::remove_file(env.backups().join(d).join(format!("{file}.manifest.json")));
    }
    let dest = env.path("restored");
    let o = env.run(&["pull", &id, "--to", dest.to_str().unwrap()]);
    assert!(o.status.success(), "pull: {}", text(&o));
    let pulled = ["", "archive/weekly", "archive/monthly", "archive/yearly"]
        .iter()
        .map(|d| env.backups().join(d).join(&file))
        .find(|p| p.exists())
        .expect("the pulled archive");
    let pulled_bytes = std::fs::read(&pulled).unwrap();
    assert!(
        pulled_bytes == remote_bytes,
        "the pulled archive differs from the remote copy"
    );
    assert_eq!(
        snapshot(&dest.join(format!("pronto-app-backup-{id}/static_content/site"))),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_download_of_odd_sizes_matches_the_object() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("remote");
    std::fs::create_dir_all(&root).unwrap();
    let handle = RemoteHandle {
        name: "nas".into(),
        backend: Arc::new(LocalBackend::new(root.clone()).unwrap()),
        part_concurrency: 4,
        retry: RetryPolicy::default(),
    };
    // Sizes around range boundaries, with small ranges so that there are many.
    for (i, (size, range, conc)) in [
        (1_000_003u64, 4096u64, 4usize),
        (65_536, 4096, 3),
        (65_537, 4096, 1),
        (10, 4096, 4),
        (1, 1, 8),
    ]
    .into_iter()
    .enumerate()
    {
        let body = noise(size as usize, i as u64 + 1);
        std::fs::write(root.join(format!("obj{i}")), &body).unwrap();
        let dest = tmp.path().join(format!("out{i}"));
        let (sha, n) =
            replicate::download_ranges(&handle, &format!("obj{i}"), &dest, size, range, conc)
                .await
                .unwrap();
        assert_eq!(n, size);
        assert_eq!(
            sha,
            sha256(&body),
            "sha256 of obj{i} (size {size}, range {range})"
        );
        assert!(std::fs::read(&dest).unwrap() == body, "obj{i} differs");
    }

    // An object shorter than the size we were told: an error, not a silent short file.
    std::fs::write(root.join("short"), noise(5000, 9)).unwrap();
    let dest = tmp.path().join("short-out");
    let e = replicate::download_ranges(&handle, "short", &dest, 9000, 4096, 2)
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("short") || format!("{e:#}").contains("bytes"),
        "{e:#}"
    );

    // download_sized: the size decides (small objects stay one stream).
    let body = noise(12345, 3);
    std::fs::write(root.join("small"), &body).unwrap();
    let dest = tmp.path().join("small-out");
    let (sha, n) = replicate::download_sized(&handle, "small", &dest, Some(12345))
        .await
        .unwrap();
    assert_eq!((sha, n), (sha256(&body), 12345));
}
