//! Damaged streams and decompression bombs, crafted by hand.
//!
//! A truncated or corrupted gzip, zstd or age stream whose manifest matches the damaged
//! bytes (made so on purpose: only the stream's own checks can catch it) fails with exit 4
//! ("verification failed") on every path that extracts or reads it: `pull --to` from a
//! remote, `pull --to` of an intact local copy, and `verify`; nothing is left under the
//! destination. The configurable extraction limit (`[restore] max_extract_size`,
//! `pull --max-extract-size`) stops a bomb before the entry that crosses it is written.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::Output;
use std::str::FromStr;

use sha2::Digest;
use support::{text, Env};

/// Bytes that do not compress (so that a flipped byte lands in real deflate/zstd data).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    support::noise(len, seed)
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_000_000_000);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.include_checksum(true).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn age_encrypt(plain: &[u8], recipient: &str) -> Vec<u8> {
    let r = age::x25519::Recipient::from_str(recipient).unwrap();
    let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut w = enc.wrap_output(Vec::new()).unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap()
}

/// A benign archive: two files of incompressible data under `top/`.
fn payload() -> Vec<u8> {
    tar_of(&[
        ("top/a.bin", &noise(300_000, 1)),
        ("top/b.bin", &noise(200_000, 2)),
    ])
}

/// Puts `bytes` on the file:// remote as `pronto-app-backup-<id><ext>`, with a manifest
/// whose size and SHA-256 are those of `bytes` (damaged or not).
fn put_on_remote(env: &Env, id: &str, ext: &str, bytes: &[u8], content_bytes: u64) -> String {
    let file = format!("pronto-app-backup-{id}{ext}");
    std::fs::create_dir_all(env.remote()).unwrap();
    std::fs::write(env.remote().join(&file), bytes).unwrap();
    let compression = if ext.starts_with(".tar.zst") {
        "zstd"
    } else {
        "gzip"
    };
    let mut manifest = serde_json::json!({
        "format": 1,
        "id": id,
        "file": file,
        "created": "2026-02-01T17:05:21Z",
        "size": bytes.len(),
        "sha256": hex::encode(sha2::Sha256::digest(bytes)),
        "compression": compression,
        "encryption": "none",
        "host": "elsewhere",
        "tool_version": "0.1.0",
        "sources": [{
            "name": "site", "section": "static_content", "archive_path": "static_content/site",
            "origin": "/srv", "files": 2, "dirs": 1, "symlinks": 0, "bytes": content_bytes
        }],
    });
    if ext.ends_with(".age") {
        manifest["encryption"] = "age".into();
    }
    std::fs::write(
        env.remote().join(format!("{file}.manifest.json")),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    file
}

fn keygen(env: &Env, file: &Path) -> String {
    let o = env.run(&["keygen", "--output", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    out.split_whitespace()
        .find(|w| w.starts_with("age1"))
        .unwrap_or_else(|| panic!("no recipient in {out}"))
        .to_string()
}

/// An env with an age identity configured; returns the recipient.
fn env_with_key() -> (Env, String) {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    env.write_config("");
    let key = env.path("age.txt");
    let recipient = keygen(&env, &key);
    env.write_config(&format!(
        "\n[encryption]\nrecipients = [\"{recipient}\"]\nidentity_file = \"{}\"\n",
        key.display()
    ));
    (env, recipient)
}

/// The damaged variants of one good stream: cut short, and one byte flipped in the body.
fn damaged(good: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut flipped = good.to_vec();
    let at = good.len() / 2;
    flipped[at] ^= 0x20;
    vec![
        ("truncated", good[..good.len() * 2 / 3].to_vec()),
        (
            "truncated at the last bytes",
            good[..good.len() - 3].to_vec(),
        ),
        ("flipped byte", flipped),
    ]
}

fn assert_exit4(env: &Env, what: &str, args: &[&str], dest: Option<&Path>) {
    let o = env.run(args);
    assert_eq!(o.status.code(), Some(4), "{what}: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        err.contains("damaged") || err.contains("truncated"),
        "{what}: a clear message: {}",
        text(&o)
    );
    if let Some(d) = dest {
        assert!(!d.exists(), "{what}: nothing extracted at {}", d.display());
        // No staging folder beside it either.
        let left = staging_left(d.parent().unwrap());
        assert!(left.is_empty(), "{what}: left {left:?}");
    }
}

/// Extraction staging folders (`.pronto-extract-*`) left in `dir`.
fn staging_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pronto-extract-"))
        .collect()
}

/// `pull <id> [flags] --to <dest>`.
fn pull_to(env: &Env, id: &str, flags: &[&str], dest: &Path) -> Output {
    let mut args = vec!["pull", id];
    args.extend_from_slice(flags);
    args.extend(["--to", dest.to_str().unwrap()]);
    env.run(&args)
}

/// `pull <id> --to <tmp>/<dest>` exits 4 and extracts nothing (see [`assert_exit4`]).
fn pull_exit4(env: &Env, what: &str, id: &str, dest: &str) {
    let dest = env.path(dest);
    let args = ["pull", id, "--to", dest.to_str().unwrap()];
    assert_exit4(env, what, &args, Some(&dest));
}

#[test]
fn damaged_gzip_and_zstd_streams_exit_4_on_pull_and_verify() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    env.write_config("");
    let plain = payload();
    let mut n = 0;
    for (ext, good) in [(".tar.gz", gzip(&plain)), (".tar.zst", zstd(&plain))] {
        // Positive control: the good stream extracts.
        let id = format!("20260201-1700{n:02}");
        n += 1;
        put_on_remote(&env, &id, ext, &good, 500_000);
        let dest = env.path(&format!("ok{n}"));
        let o = pull_to(&env, &id, &[], &dest);
        assert!(o.status.success(), "{ext} good: {}", text(&o));
        assert_eq!(
            std::fs::read(dest.join("top/b.bin")).unwrap(),
            noise(200_000, 2)
        );

        for (what, bad) in damaged(&good) {
            let what = format!("{ext} {what}");
            let id = format!("20260201-1700{n:02}");
            n += 1;
            put_on_remote(&env, &id, ext, &bad, 500_000);
            // From the remote.
            pull_exit4(&env, &format!("{what}, pull --to"), &id, &format!("d{n}"));
            // The local copy (it matches its manifest, so pull uses it): still exit 4.
            pull_exit4(
                &env,
                &format!("{what}, pull --to of the local copy"),
                &id,
                &format!("e{n}"),
            );
            // verify reads the local copy through.
            assert_exit4(
                &env,
                &format!("{what}, verify --local"),
                &["verify", &id, "--local"],
                None,
            );
        }
    }
}

#[test]
fn damaged_age_streams_exit_4_on_pull_and_verify() {
    let (env, recipient) = env_with_key();
    let good = age_encrypt(&gzip(&payload()), &recipient);
    let put = |id: &str, bytes: &[u8]| put_on_remote(&env, id, ".tar.gz.age", bytes, 500_000);

    put("20260201-170100", &good);
    let dest = env.path("ok");
    let o = pull_to(&env, "20260201-170100", &[], &dest);
    assert!(o.status.success(), "good: {}", text(&o));

    // A flipped byte in the payload (its chunk's MAC fails), a flipped byte in the header
    // MAC, a payload cut inside a chunk, and a payload cut at a chunk boundary (the last
    // chunk missing: age's final-chunk flag catches it).
    let mac_line = good.windows(4).position(|w| w == b"\n---").unwrap() + 1;
    let header_end = mac_line + good[mac_line..].iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut payload_flip = good.clone();
    payload_flip[header_end + 5000] ^= 0x01;
    let mut mac_flip = good.clone();
    let mac_at = good.windows(4).position(|w| w == b"--- ").unwrap() + 6;
    mac_flip[mac_at] = if mac_flip[mac_at] == b'A' { b'B' } else { b'A' };
    let chunk = 64 * 1024 + 16;
    let cases = [
        ("payload byte flipped (bad MAC)", payload_flip),
        ("header MAC changed", mac_flip),
        (
            "truncated inside a chunk",
            good[..good.len() - 100].to_vec(),
        ),
        (
            "truncated at a chunk boundary",
            good[..header_end + 16 + 2 * chunk].to_vec(),
        ),
    ];
    for (i, (what, bad)) in cases.iter().enumerate() {
        let id = format!("20260201-17011{i}");
        put(&id, bad);
        pull_exit4(
            &env,
            &format!("age {what}, pull --to"),
            &id,
            &format!("d{i}"),
        );
        pull_exit4(
            &env,
            &format!("age {what}, pull --to of the local copy"),
            &id,
            &format!("e{i}"),
        );
        // A damaged header is refused before the download: no local copy to verify.
        if !what.starts_with("header") {
            assert_exit4(
                &env,
                &format!("age {what}, verify --local"),
                &["verify", &id, "--local"],
                None,
            );
        }
    }
}

#[test]
fn not_an_archive_at_all_exits_4() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    env.write_config("");
    put_on_remote(&env, "20260201-170200", ".tar.gz", b"hello, not gzip", 10);
    pull_exit4(&env, "not gzip", "20260201-170200", "d");
    // An intact gzip of a tar cut off inside an entry's data (the damage is in the tar).
    put_on_remote(
        &env,
        "20260201-170202",
        ".tar.gz",
        &gzip(&payload()[..250_000]),
        500_000,
    );
    pull_exit4(&env, "gzip of a truncated tar", "20260201-170202", "d3");
    // A gzip of something that is not tar.
    put_on_remote(&env, "20260201-170201", ".tar.gz", &gzip(&[0x55; 4000]), 10);
    pull_exit4(&env, "gzip of non-tar", "20260201-170201", "d2");
}

#[test]
fn configured_extract_limit_stops_a_bomb_before_writing_it() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    // 8 MiB of zeros: a ~8 KiB gzip. Its manifest honestly declares 8 MiB, so only the
    // configured limit can stop it.
    let zeros = vec![0u8; 8 << 20];
    let bomb = gzip(&tar_of(&[("top/small", b"x"), ("top/zeros", &zeros)]));
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    put_on_remote(&env, "20260201-170300", ".tar.gz", &bomb, 8 << 20);

    env.write_config("\n[restore]\nmax_extract_size = \"1MiB\"\n");
    let dest = env.path("d");
    let o = pull_to(&env, "20260201-170300", &[], &dest);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("top/zeros") && err.contains("max_extract_size") && err.contains("1048576"),
        "{err}"
    );
    assert!(!dest.exists(), "nothing left half-extracted");
    assert_eq!(
        staging_left(env.dir.path()),
        Vec::<String>::new(),
        "no staging folder left"
    );

    // The flag overrides the config: a larger limit lets it through.
    let o = pull_to(
        &env,
        "20260201-170300",
        &["--max-extract-size", "9MiB"],
        &dest,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::metadata(dest.join("top/zeros")).unwrap().len(),
        8 << 20
    );

    // …and a smaller one stops it, without a config key.
    env.write_config("");
    let dest = env.path("d2");
    let o = pull_to(
        &env,
        "20260201-170300",
        &["--max-extract-size", "100KiB"],
        &dest,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("decompression bomb"));
    assert!(!dest.exists());

    // Without any limit but the manifest's, it extracts.
    let dest = env.path("d3");
    let o = pull_to(&env, "20260201-170300", &[], &dest);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn bad_max_extract_size_is_a_located_config_error() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    for bad in ["\"lots\"", "\"0\"", "\"-5GiB\""] {
        env.write_config(&format!("\n[restore]\nmax_extract_size = {bad}\n"));
        let o = env.run(&["list"]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("max_extract_size") && err.contains(":14"),
            "{bad}: the key and its line: {err}"
        );
    }
    // A number, not a size string: still located.
    env.write_config("\n[restore]\nmax_extract_size = 12\n");
    let o = env.run(&["list"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(":14:"),
        "{}",
        text(&o)
    );
    env.write_config("\n[restore]\nmax_extrct_size = \"1GiB\"\n");
    let o = env.run(&["list"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = env.run(&["pull", "latest", "--max-extract-size", "huge"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
