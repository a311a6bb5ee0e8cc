//! Encryption at rest through the binary: age-encrypted archives that round-trip through
//! `push` and `pull --identity`, that the standard `age` CLI decrypts, whose bytes on disk
//! hold no plaintext, and the failures a user relies on: a wrong or missing identity fails
//! with exit 2 before anything is written; a hostile archive inside the encryption is still
//! refused; a decompression bomb stops at the manifest's size. The same encrypted bytes
//! round-trip through every remote kind (file://, s3:// and gs:// on LocalStack, sftp://).
//!
//! The `age` CLI is Debian's `age` package (scripts/test installs it). Where it is missing,
//! the decryption check runs with the age crate in this test process instead (a process
//! separate from the binary under test).

#[path = "../backends/tests/support/localstack.rs"]
mod localstack;
#[path = "../backends/tests/support/sshd.rs"]
mod sshd;
mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use sha2::Digest;
use support::{names_in, snapshot, text, Env};

/// 64 KiB of pseudo-random bytes.
fn noise(seed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 << 10);
    let mut h = sha2::Sha256::digest(seed);
    while out.len() < 64 << 10 {
        out.extend_from_slice(&h);
        h = sha2::Sha256::digest(h);
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn build_tree(root: &Path) -> Vec<u8> {
    std::fs::create_dir_all(root.join("css")).unwrap();
    std::fs::write(
        root.join("css/app.css"),
        "body { color: PLAINTEXT-MARKER-7f3a; }\n",
    )
    .unwrap();
    std::fs::write(root.join("index.html"), "<h1>hello</h1>\n".repeat(200)).unwrap();
    std::os::unix::fs::symlink("css/app.css", root.join("style.css")).unwrap();
    let secret = root.join("secret.txt");
    std::fs::write(&secret, "private\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let n = noise(b"pronto");
    std::fs::write(root.join("noise.bin"), &n).unwrap();
    n
}

/// `keygen --output FILE` through the binary; returns the recipient (public key).
fn keygen(env: &Env, file: &Path) -> String {
    let o = env.run(&["keygen", "--output", file.to_str().unwrap()]);
    assert!(o.status.success(), "keygen: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn encryption_config(env: &Env, recipient: &str, extra: &str) {
    env.write_config(&format!(
        "\n[encryption]\nrecipients = [\"{recipient}\"]\n{extra}"
    ));
}

fn backup_id(env: &Env) -> String {
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Where a local archive is now: the top folder or a tier folder.
fn find_local(env: &Env, file: &str) -> PathBuf {
    ["", "archive/weekly", "archive/monthly", "archive/yearly"]
        .iter()
        .map(|d| env.backups().join(d).join(file))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{file} not in the backup folder"))
}

fn remove_local(env: &Env, file: &str) {
    std::fs::remove_file(find_local(env, file)).unwrap();
    std::fs::remove_file(find_local(env, &format!("{file}.manifest.json"))).unwrap();
}

/// Visible (non-hidden) names in the backup folder and its tiers.
fn visible_backups(env: &Env) -> Vec<String> {
    ["", "archive/weekly", "archive/monthly", "archive/yearly"]
        .iter()
        .flat_map(|d| names_in(&env.backups().join(d)))
        .filter(|n| {
            !n.starts_with('.')
                && n != "archive"
                && !["weekly", "monthly", "yearly"].contains(&n.as_str())
        })
        .collect()
}

fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").output().is_ok()
}

/// The plaintext `.tar.gz` of an age file: `age -d -i KEY` when the CLI is installed,
/// else the age crate in this process.
fn decrypt(archive: &Path, key: &Path) -> Vec<u8> {
    if have("age") {
        let o = Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(key)
            .arg(archive)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "age -d: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        return o.stdout;
    }
    eprintln!("the `age` CLI is not installed: decrypting with the age crate instead");
    let ids = age::IdentityFile::from_file(key.to_str().unwrap().to_string())
        .unwrap()
        .into_identities()
        .unwrap();
    let f = std::io::BufReader::new(std::fs::File::open(archive).unwrap());
    let d = age::Decryptor::new_buffered(f).unwrap();
    let mut r = d
        .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .unwrap();
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn encrypted_round_trip_push_pull_identity_and_the_age_cli() {
    let env = Env::new();
    let noise = build_tree(&env.path("src"));
    let key = env.path("keys/age.txt");
    let recipient = keygen(&env, &key);
    assert!(recipient.starts_with("age1"), "{recipient}");
    encryption_config(&env, &recipient, "");
    let before = snapshot(&env.path("src"));

    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz.age");
    let archive = find_local(&env, &file);
    assert_eq!(
        std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // On disk: an age file, not gzip (gunzip refuses it), none of the plaintext.
    let bytes = std::fs::read(&archive).unwrap();
    assert!(
        bytes.starts_with(b"age-encryption.org/v1\n"),
        "not an age file"
    );
    assert!(!contains(&bytes, b"PLAINTEXT-MARKER-7f3a"));
    assert!(!contains(&bytes, &noise[1000..1064]));
    assert!(!contains(&bytes, b"backup_info.txt"));
    let gunzip = Command::new("gunzip")
        .arg("-t")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        !gunzip.status.success(),
        "gunzip reads the encrypted archive"
    );

    // The manifest: encryption age, the recipient's fingerprint, sha256/size of the bytes on disk, no key.
    let mpath = find_local(&env, &format!("{file}.manifest.json"));
    assert_eq!(
        std::fs::metadata(&mpath).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mtext = std::fs::read_to_string(&mpath).unwrap();
    let m: serde_json::Value = serde_json::from_str(&mtext).unwrap();
    assert_eq!(m["encryption"], "age");
    assert_eq!(m["file"], file.as_str());
    let fp = format!(
        "sha256:{}",
        &hex::encode(sha2::Sha256::digest(recipient.as_bytes()))[..16]
    );
    assert_eq!(m["recipient_fingerprints"], serde_json::json!([fp]));
    assert_eq!(m["size"], bytes.len() as u64);
    assert_eq!(m["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
    assert!(
        !mtext.contains(&recipient) && !mtext.contains("AGE-SECRET-KEY"),
        "{mtext}"
    );

    // Recoverable without our tool: age -d, then plain tar.
    let plain = decrypt(&archive, &key);
    assert!(
        plain.starts_with(&[0x1f, 0x8b]),
        "age -d gives a gzip stream"
    );
    // ...whose tar holds the marker and the noise: the checks above were not vacuous.
    let mut tar_bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(&plain[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    assert!(
        contains(&tar_bytes, b"PLAINTEXT-MARKER-7f3a") && contains(&tar_bytes, &noise[1000..1064])
    );
    let listing = {
        let mut c = Command::new("tar")
            .arg("-tz")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&plain).unwrap();
        c.wait_with_output().unwrap()
    };
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    let top = format!("pronto-app-backup-{id}/");
    for entry in [
        "static_content/site/css/app.css",
        "static_content/site/noise.bin",
        "backup_info.txt",
    ] {
        assert!(
            listing.contains(&format!("{top}{entry}")),
            "missing {entry}: {listing}"
        );
    }
    // The one-liner the README gives.
    if have("age") {
        let out = env.path("by-age-cli");
        std::fs::create_dir(&out).unwrap();
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "age -d -i '{}' '{}' | tar -xz -C '{}'",
                key.display(),
                archive.display(),
                out.display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            snapshot(&out.join(format!("{top}static_content/site"))),
            before
        );
    }

    // Push, lose the local copy, pull back with --identity, extract: identical.
    let o = env.run(&["push"]);
    assert!(o.status.success(), "push: {}", text(&o));
    assert_eq!(
        std::fs::read(env.remote().join(&file)).unwrap(),
        bytes,
        "the remote holds the same bytes"
    );
    remove_local(&env, &file);
    let dest = env.path("restored");
    let o = env.run(&[
        "pull",
        &id,
        "--identity",
        key.to_str().unwrap(),
        "--to",
        dest.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "pull: {}", text(&o));
    assert_eq!(std::fs::read(find_local(&env, &file)).unwrap(), bytes);
    let after = snapshot(&dest.join(format!("{top}static_content/site")));
    assert_eq!(before, after, "the round trip changed the tree");

    // With identity_file in the config, no flag is needed.
    encryption_config(
        &env,
        &recipient,
        &format!("identity_file = \"{}\"\n", key.display()),
    );
    let dest2 = env.path("restored2");
    let o = env.run(&["pull", "latest", "--to", dest2.to_str().unwrap()]);
    assert!(o.status.success(), "pull with identity_file: {}", text(&o));
    assert_eq!(
        snapshot(&dest2.join(format!("{top}static_content/site"))),
        before
    );
}

#[test]
fn wrong_or_missing_identity_exits_2_before_anything_is_written() {
    let env = Env::new();
    build_tree(&env.path("src"));
    let key = env.path("age.txt");
    let recipient = keygen(&env, &key);
    let other = env.path("other.txt");
    let other_recipient = keygen(&env, &other);
    encryption_config(&env, &recipient, "");
    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz.age");
    assert!(env.run(&["push"]).status.success());
    remove_local(&env, &file);
    let before = visible_backups(&env);
    let fp = format!(
        "sha256:{}",
        &hex::encode(sha2::Sha256::digest(recipient.as_bytes()))[..16]
    );
    let other_fp = format!(
        "sha256:{}",
        &hex::encode(sha2::Sha256::digest(other_recipient.as_bytes()))[..16]
    );

    // Wrong identity.
    let dest = env.path("restored");
    let o = env.run(&[
        "pull",
        &id,
        "--identity",
        other.to_str().unwrap(),
        "--to",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrong identity"), "{err}");
    assert!(
        err.contains(&other_fp) && err.contains(&fp),
        "names both fingerprints: {err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!dest.exists(), "nothing extracted");
    assert_eq!(visible_backups(&env), before, "nothing downloaded");
    assert!(!names_in(&env.backups())
        .iter()
        .any(|n| n.ends_with(".partial")));

    // Missing identity.
    let o = env.run(&["pull", &id, "--to", dest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is encrypted with age") && err.contains("--identity"),
        "{err}"
    );
    assert!(!dest.exists());
    assert_eq!(visible_backups(&env), before);

    // An identity file that does not exist, or holds no key.
    let o = env.run(&[
        "pull",
        &id,
        "--identity",
        env.path("nope.txt").to_str().unwrap(),
        "--to",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("identity file"),
        "{}",
        text(&o)
    );
    std::fs::write(env.path("pub.txt"), format!("{recipient}\n")).unwrap();
    // (Private, so that the content is what is refused, not the mode.)
    std::fs::set_permissions(env.path("pub.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = env.run(&[
        "pull",
        &id,
        "--identity",
        env.path("pub.txt").to_str().unwrap(),
        "--to",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("public key"),
        "{}",
        text(&o)
    );
    assert!(!dest.exists());
    assert_eq!(visible_backups(&env), before);

    // The local copy, when it is there, is checked the same way by the extraction itself.
    let o = env.run(&["pull", &id]);
    assert!(
        o.status.success(),
        "pull without --to needs no identity: {}",
        text(&o)
    );
    let local = find_local(&env, &file);
    let e = pronto_offsite::extract::extract_with(
        &local,
        &dest,
        &pronto_offsite::extract::ExtractOptions {
            identities: Some(pronto_offsite::crypto::Identities::load(&other).unwrap()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(pronto_offsite::error::Exit::of(&e).code(), 2, "{e:#}");
    assert!(!dest.exists());
    let e = pronto_offsite::extract::extract(&local, &dest).unwrap_err();
    assert!(format!("{e:#}").contains("is encrypted with age"), "{e:#}");
    assert!(!dest.exists());
    assert_eq!(
        names_in(env.dir.path())
            .iter()
            .filter(|n| n.starts_with(".pronto-extract-"))
            .count(),
        0,
        "no staging folder left"
    );

    // And the right one works from the local copy.
    let o = env.run(&[
        "pull",
        &id,
        "-i",
        key.to_str().unwrap(),
        "--to",
        dest.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("using the local copy"),
        "{}",
        text(&o)
    );
}

#[test]
fn keygen_writes_0600_prints_the_recipient_and_never_overwrites() {
    let env = Env::new();
    let key = env.path("k/age.txt");
    let o = env.run(&["keygen", "--output", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let recipient = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let body = std::fs::read_to_string(&key).unwrap();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(env.path("k"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let secret = body
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("an identity line");
    assert!(body.contains(&format!("# public key: {recipient}")));
    assert!(
        !text(&o).contains(secret),
        "the secret key is never printed"
    );
    // The age crate (and age-keygen -y) derive the same recipient.
    let id = age::x25519::Identity::from_str(secret).unwrap();
    assert_eq!(id.to_public().to_string(), recipient);
    if have("age-keygen") {
        let y = Command::new("age-keygen")
            .arg("-y")
            .arg(&key)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&y.stdout).trim(), recipient);
    }

    let o = env.run(&["keygen", "--output", key.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        body,
        "never overwritten"
    );

    // Without --output: the config's identity_file; without one, a usage error.
    env.write_config(&format!(
        "\n[encryption]\nrecipients = [\"{recipient}\"]\nidentity_file = \"k/second.txt\"\n"
    ));
    let o = env.run(&["keygen"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(env.path("k/second.txt").exists());
    env.write_config("");
    let o = env.run(&["keygen"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--output"),
        "{}",
        text(&o)
    );

    // `--output -`: the identity on stdout, the recipient on stderr.
    let o = env.run(&["keygen", "--output", "-"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("AGE-SECRET-KEY-1"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("age1"));
}

#[test]
fn config_errors_for_encryption_exit_2_and_never_echo_a_key() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    let secret = age::x25519::Identity::generate()
        .to_string()
        .expose_secret()
        .to_string();
    let cases = [
        (
            format!("\n[encryption]\nrecipients = [\"{secret}\"]\n"),
            "not a secret key",
        ),
        (
            "\n[encryption]\nrecipients = [\"age1notakey\"]\n".to_string(),
            "encryption.recipients[0]",
        ),
        (
            "\n[encryption]\nrecipients = []\n".to_string(),
            "at least one public key",
        ),
        (
            "\n[encryption]\nrecipients_file = \"missing.txt\"\n".to_string(),
            "encryption.recipients_file",
        ),
        (
            "\n[encryption]\nrecipient = [\"age1x\"]\n".to_string(),
            "recipient",
        ),
    ];
    for (extra, want) in &cases {
        env.write_config(extra);
        let o = env.run(&["backup"]);
        assert_eq!(o.status.code(), Some(2), "{extra}\n{}", text(&o));
        let all = text(&o);
        assert!(all.contains(want), "{want}: {all}");
        assert!(!all.contains(&secret[15..40]), "the key was echoed: {all}");
    }
    // An identity but no recipients: backup refuses (it would make plain archives).
    env.write_config("\n[encryption]\nidentity_file = \"k.txt\"\n");
    let o = env.run(&["backup"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no recipients"),
        "{}",
        text(&o)
    );
    assert!(visible_backups_dir(&env.backups()).is_empty());

    // A recipients file (age format: comments, blank lines, several keys).
    let a = age::x25519::Identity::generate();
    let b = age::x25519::Identity::generate();
    std::fs::write(
        env.path("recipients.txt"),
        format!("# ops\n{}\n\n# offsite\n{}\n", a.to_public(), b.to_public()),
    )
    .unwrap();
    std::fs::write(env.path("src/a"), "a").unwrap();
    env.write_config("\n[encryption]\nrecipients_file = \"recipients.txt\"\n");
    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.gz.age");
    let archive = find_local(&env, &file);
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(find_local(&env, &format!("{file}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(m["recipient_fingerprints"].as_array().unwrap().len(), 2);
    // Either identity opens it.
    for k in [&a, &b] {
        let ids = pronto_offsite::crypto::Identities::from_key(Path::new("k"), k.clone());
        let st = pronto_offsite::extract::check_readable_with(
            &archive,
            &pronto_offsite::extract::ExtractOptions {
                identities: Some(ids),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(st.files, 2, "a + backup_info.txt");
    }
}

fn visible_backups_dir(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

// ---- hand-made archives on the remote ------------------------------------------------

/// A .tar.gz built entry by entry with raw headers (so that hostile names get through).
fn tar_gz(entries: &[(&str, tar::EntryType, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_000_000_000);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// Encrypt with the age CLI when installed (interoperability), else with the crate.
fn age_encrypt(plain: &[u8], recipient: &str) -> Vec<u8> {
    if have("age") {
        let mut c = Command::new("age")
            .arg("-r")
            .arg(recipient)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = c.stdin.take().unwrap();
        let p = plain.to_vec();
        let t = std::thread::spawn(move || stdin.write_all(&p).unwrap());
        let o = c.wait_with_output().unwrap();
        t.join().unwrap();
        assert!(o.status.success());
        return o.stdout;
    }
    let r = age::x25519::Recipient::from_str(recipient).unwrap();
    let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut w = enc.wrap_output(Vec::new()).unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap()
}

/// Put an archive and its manifest on the file:// remote, as a push would.
fn put_on_remote(env: &Env, id: &str, bytes: &[u8], content_bytes: u64) -> String {
    let file = format!("pronto-app-backup-{id}.tar.gz.age");
    std::fs::create_dir_all(env.remote()).unwrap();
    std::fs::write(env.remote().join(&file), bytes).unwrap();
    let manifest = serde_json::json!({
        "format": 1,
        "id": id,
        "file": file,
        "created": "2026-02-01T17:05:21Z",
        "size": bytes.len(),
        "sha256": hex::encode(sha2::Sha256::digest(bytes)),
        "compression": "gzip",
        "encryption": "age",
        "host": "elsewhere",
        "tool_version": "0.1.0",
        "sources": [{
            "name": "site", "section": "static_content", "archive_path": "static_content/site",
            "origin": "/srv", "files": 1, "dirs": 1, "symlinks": 0, "bytes": content_bytes
        }],
    });
    std::fs::write(
        env.remote().join(format!("{file}.manifest.json")),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    file
}

#[test]
fn hostile_entries_inside_an_encrypted_archive_are_refused_on_pull() {
    use tar::EntryType::{Link, Regular, Symlink};
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    let key = env.path("age.txt");
    let recipient = keygen(&env, &key);
    encryption_config(
        &env,
        &recipient,
        &format!("identity_file = \"{}\"\n", key.display()),
    );
    let outside = env.path("escaped");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            tar_gz(&[
                ("top/ok.txt", Regular, None, b"ok"),
                ("top/../../escaped", Regular, None, b"x"),
            ]),
        ),
        (
            "absolute",
            tar_gz(&[("/tmp/pronto-escaped-abs", Regular, None, b"x")]),
        ),
        (
            // A link is restored verbatim; writing through it is what is refused.
            "write through a symlink",
            tar_gz(&[
                ("top/l", Symlink, Some("../../../etc"), b""),
                ("top/l/x", Regular, None, b"x"),
            ]),
        ),
        (
            "hardlink out",
            tar_gz(&[("top/h", Link, Some("/etc/passwd"), b"")]),
        ),
    ];
    for (i, (what, gz)) in cases.iter().enumerate() {
        let id = format!("20260201-17052{i}");
        put_on_remote(&env, &id, &age_encrypt(gz, &recipient), 10);
        let dest = env.path(&format!("dest{i}"));
        let o = env.run(&["pull", &id, "--to", dest.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(4), "{what}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("refusing entry"),
            "{what}: {}",
            text(&o)
        );
        assert!(!dest.exists(), "{what}: nothing extracted");
        assert!(
            !outside.exists() && !Path::new("/tmp/pronto-escaped-abs").exists(),
            "{what} escaped"
        );
    }
    // The same archive, benign, extracts: the refusals are about the entries.
    let id = "20260201-170530";
    put_on_remote(
        &env,
        id,
        &age_encrypt(&tar_gz(&[("top/ok.txt", Regular, None, b"ok")]), &recipient),
        10,
    );
    let dest = env.path("fine");
    let o = env.run(&["pull", id, "--to", dest.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(dest.join("top/ok.txt")).unwrap(), b"ok");
}

#[test]
fn decompression_bomb_stops_at_the_manifest_size_and_damage_is_caught() {
    use tar::EntryType::Regular;
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    let key = env.path("age.txt");
    let recipient = keygen(&env, &key);
    encryption_config(
        &env,
        &recipient,
        &format!("identity_file = \"{}\"\n", key.display()),
    );

    // 40 MiB of zeros (compresses to ~40 KiB) in an archive whose manifest declares 1 KiB.
    let zeros = vec![0u8; 40 << 20];
    let bomb = age_encrypt(
        &tar_gz(&[
            ("top/small", Regular, None, b"x"),
            ("top/zeros", Regular, None, &zeros),
        ]),
        &recipient,
    );
    assert!(bomb.len() < 1 << 20);
    put_on_remote(&env, "20260201-170521", &bomb, 1024);
    let dest = env.path("dest");
    let o = env.run(&["pull", "20260201-170521", "--to", dest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("top/zeros") && err.contains("decompression bomb"),
        "{err}"
    );
    assert!(!dest.exists());

    // A damaged payload (valid header, one flipped byte late in the file) caught by the
    // age MAC when the manifest matches the damaged bytes (made so on purpose).
    let good = age_encrypt(
        &tar_gz(&[("top/a", Regular, None, &noise(b"a"))]),
        &recipient,
    );
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 100] ^= 0x40;
    let local = env.path("damaged.tar.gz.age");
    std::fs::write(&local, &bad).unwrap();
    let ids = pronto_offsite::crypto::Identities::load(&key).unwrap();
    let e = pronto_offsite::extract::extract_with(
        &local,
        &env.path("dest-damaged"),
        &pronto_offsite::extract::ExtractOptions {
            identities: Some(ids),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("damaged or truncated"), "{e:#}");
    assert!(!env.path("dest-damaged").exists());
    // Truncated: cut off the last chunk.
    std::fs::write(&local, &good[..good.len() - 200]).unwrap();
    let ids = pronto_offsite::crypto::Identities::load(&key).unwrap();
    let e = pronto_offsite::extract::check_readable_with(
        &local,
        &pronto_offsite::extract::ExtractOptions {
            identities: Some(ids),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("damaged or truncated"), "{e:#}");

    // A corrupt remote copy (manifest no longer matches): exit 4, nothing written.
    put_on_remote(&env, "20260201-170522", &good, 70_000);
    let remote = env
        .remote()
        .join("pronto-app-backup-20260201-170522.tar.gz.age");
    let mut b = std::fs::read(&remote).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&remote, b).unwrap();
    let o = env.run(&[
        "pull",
        "20260201-170522",
        "--to",
        env.path("d2").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(!env.path("d2").exists());
}

#[test]
fn verify_restore_test_takes_an_identity() {
    let env = Env::new();
    build_tree(&env.path("src"));
    let key = env.path("age.txt");
    let recipient = keygen(&env, &key);
    encryption_config(&env, &recipient, "");
    backup_id(&env);
    assert!(env.run(&["push"]).status.success());

    let o = env.run(&["verify", "latest", "--restore-test"]);
    assert_eq!(o.status.code(), Some(2), "no identity: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--identity"),
        "{}",
        text(&o)
    );

    let other = env.path("other.txt");
    keygen(&env, &other);
    let o = env.run(&[
        "verify",
        "latest",
        "--restore-test",
        "--identity",
        other.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "wrong identity: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong identity"),
        "{}",
        text(&o)
    );

    let o = env.run(&[
        "verify",
        "latest",
        "--restore-test",
        "--identity",
        key.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn pull_restore_takes_an_identity_and_its_safety_backup_is_encrypted_too() {
    let env = Env::new();
    build_tree(&env.path("src"));
    let key = env.path("age.txt");
    let recipient = keygen(&env, &key);
    encryption_config(&env, &recipient, "");
    let before = snapshot(&env.path("src"));
    let id = backup_id(&env);
    assert!(env.run(&["push"]).status.success());
    std::fs::write(env.path("src/index.html"), "defaced\n").unwrap();
    let defaced = snapshot(&env.path("src"));

    let o = env.run(&["pull", &id, "--restore"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--identity"),
        "{}",
        text(&o)
    );
    assert_eq!(
        snapshot(&env.path("src")),
        defaced,
        "nothing restored without the key"
    );

    let o = env.run(&[
        "pull",
        &id,
        "--restore",
        "--identity",
        key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(snapshot(&env.path("src")), before);
    // The safety backup of the defaced state is encrypted like every archive.
    let out = String::from_utf8_lossy(&o.stdout);
    let safety = out
        .lines()
        .find_map(|l| l.strip_prefix("safety backup: "))
        .unwrap_or_else(|| panic!("{out}"))
        .trim()
        .to_string();
    let archive = find_local(&env, &format!("pronto-app-backup-{safety}.tar.gz.age"));
    assert!(std::fs::read(archive)
        .unwrap()
        .starts_with(b"age-encryption.org/v1\n"));
}

/// The same encrypted bytes on every remote kind (file://, s3:// on LocalStack, gs:// on
/// LocalStack standing in for the GCS XML API, sftp:// on a private sshd), and each one
/// round-trips through `pull --remote NAME --identity`: the identity is checked from a
/// ranged read of the archive's first bytes on that remote, then the whole archive is
/// downloaded, verified and extracted.
#[test]
fn an_encrypted_archive_round_trips_through_every_remote_kind() {
    let ls = localstack::shared();
    let s3_bucket = ls.new_bucket("enc-s3");
    let gs_bucket = ls.new_bucket("enc-gs");
    let sshd = sshd::Sshd::start();
    let env = Env::new();
    build_tree(&env.path("src"));
    // 12 MiB of noise: a multipart upload (8 MiB parts) on the object stores.
    let mut big = Vec::with_capacity(12 << 20);
    while big.len() < 12 << 20 {
        big.extend_from_slice(&noise(&big.len().to_le_bytes()));
    }
    std::fs::write(env.path("src/big.bin"), &big).unwrap();
    let key = env.path("age.txt");
    let recipient = keygen(&env, &key);
    let sa = env.path("gcs-sa.json");
    std::fs::write(
        &sa,
        serde_json::json!({
            "type": "service_account",
            "private_key": "",
            "private_key_id": "pronto-test",
            "client_email": "pronto-test@example.iam.gserviceaccount.com",
            "gcs_base_url": ls.endpoint,
            "disable_oauth": true,
        })
        .to_string(),
    )
    .unwrap();
    let sftp_root = sshd.dir.path().join("srv/backups/pronto");
    env.write_config(&format!(
        r#"
[[remotes]]
name = "s3"
url = "s3://{s3_bucket}/prod"
region = "us-east-1"
endpoint = "{endpoint}"
allow_http = true

[[remotes]]
name = "gcs"
url = "gs://{gs_bucket}/prod"
service_account_file = "{sa}"
allow_http = true

[[remotes]]
name = "offsite"
url = "{sftp}"
identity_file = "{client_key}"
known_hosts_file = "{known_hosts}"
ssh_config_file = "/dev/null"
connect_timeout = "10s"

[encryption]
recipients = ["{recipient}"]
"#,
        endpoint = ls.endpoint,
        sa = sa.display(),
        sftp = sshd.url(&sftp_root),
        client_key = sshd.client_key.display(),
        known_hosts = sshd.known_hosts.display(),
    ));
    let aws = |c: &mut assert_cmd::Command| {
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                c.env_remove(k);
            }
        }
        c.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_CONFIG_FILE", env.path("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                env.path("no-aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true");
    };
    let run = |args: &[&str]| {
        let mut c = env.cmd();
        aws(&mut c);
        c.args(args).output().unwrap()
    };
    let before = snapshot(&env.path("src"));
    let o = run(&["backup"]);
    assert!(o.status.success(), "{}", text(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let file = format!("pronto-app-backup-{id}.tar.gz.age");
    let digest = support::file_digest(&find_local(&env, &file));
    let o = run(&["push"]);
    assert!(o.status.success(), "push to every remote: {}", text(&o));
    assert_eq!(support::file_digest(&env.remote().join(&file)), digest);
    assert_eq!(support::file_digest(&sftp_root.join(&file)), digest);
    assert!(ls.keys(&s3_bucket).contains(&format!("prod/{file}")));
    assert!(ls.keys(&gs_bucket).contains(&format!("prod/{file}")));

    let other = env.path("other.txt");
    keygen(&env, &other);
    for remote in ["nas", "s3", "gcs", "offsite"] {
        remove_local(&env, &file);
        let dest = env.path(&format!("from-{remote}"));
        // A wrong identity is refused from the remote's first bytes: nothing downloaded.
        let o = run(&[
            "pull",
            &id,
            "--remote",
            remote,
            "--identity",
            other.to_str().unwrap(),
            "--to",
            dest.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{remote}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("wrong identity"),
            "{remote}: {}",
            text(&o)
        );
        assert!(
            !visible_backups(&env).contains(&file),
            "{remote}: downloaded anyway"
        );
        let o = run(&[
            "pull",
            &id,
            "--remote",
            remote,
            "--identity",
            key.to_str().unwrap(),
            "--to",
            dest.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "pull from {remote}: {}", text(&o));
        assert_eq!(
            support::file_digest(&find_local(&env, &file)),
            digest,
            "{remote}"
        );
        let top = format!("pronto-app-backup-{id}/static_content/site");
        assert_eq!(
            snapshot(&dest.join(top)),
            before,
            "{remote}: the tree differs"
        );
    }
}
