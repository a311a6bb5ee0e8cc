//! `[local] compression = "zstd"`: `.tar.zst` archives that plain `zstd` and `tar` read,
//! the round trip backup → push → pull → extract, encryption on top (`.tar.zst.age`),
//! level validation per compression, and format detection by magic bytes (not by name),
//! multi-member gzip included.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use pronto_offsite::archive::{write_archive, ArchiveInput, Codec, WriteOptions};
use pronto_offsite::manifest::Section;
use support::{snapshot, text, Env};

use support::noise;

fn build_tree(root: &Path) {
    std::fs::create_dir_all(root.join("css")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(
        root.join("css/app.css"),
        "body { margin: 0 }\n".repeat(5000),
    )
    .unwrap();
    for i in 0..200 {
        std::fs::write(
            root.join(format!("page-{i:03}.html")),
            format!("<p>{i}</p>\n").repeat(i + 1),
        )
        .unwrap();
    }
    std::fs::write(root.join("noise.bin"), noise(3 << 20, 7)).unwrap();
    std::os::unix::fs::symlink("css/app.css", root.join("style.css")).unwrap();
}

/// Config with `[local]` keys `local` (e.g. `compression = "zstd"`), one source, one file:// remote.
fn config(env: &Env, local: &str, extra: &str) {
    let text = format!(
        "[local]\ndir = \"backups\"\n{local}\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n\n[[remotes]]\nname = \"nas\"\nurl = \"file://{}\"\n{extra}",
        env.remote().display()
    );
    std::fs::write(env.config(), text).unwrap();
}

fn backup_id(env: &Env) -> String {
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn find_local(env: &Env, file: &str) -> PathBuf {
    ["", "archive/weekly", "archive/monthly", "archive/yearly"]
        .iter()
        .map(|d| env.backups().join(d).join(file))
        .find(|p| p.exists())
        .unwrap_or_else(|| env.backups().join(file))
}

fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn zstd_round_trip_backup_push_pull_extract() {
    let env = Env::new();
    build_tree(&env.path("src"));
    config(&env, "compression = \"zstd\"\nlevel = 5\nthreads = 2", "");
    let before = snapshot(&env.path("src"));

    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.zst");
    let archive = find_local(&env, &file);
    assert!(archive.exists(), "no {file}");
    let bytes = std::fs::read(&archive).unwrap();
    assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(archive.with_file_name(format!("{file}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["compression"], "zstd");
    assert_eq!(manifest["file"], file.as_str());

    // Plain tools read it: zstd -t (frame checksum included) and tar -I zstd -tf.
    ok(Command::new("zstd").arg("-q").arg("-t").arg(&archive));
    let listing = ok(Command::new("tar")
        .arg("-I")
        .arg("zstd")
        .arg("-tf")
        .arg(&archive));
    let top = format!("pronto-app-backup-{id}/");
    for entry in [
        "static_content/site/css/app.css",
        "static_content/site/noise.bin",
        "backup_info.txt",
    ] {
        assert!(
            listing.contains(&format!("{top}{entry}")),
            "{entry} missing from:\n{listing}"
        );
    }
    // Our own reader agrees (`gunzip -t` + `tar -t` equivalent).
    let stats = pronto_offsite::extract::check_readable(&archive).unwrap();
    assert_eq!(stats.files, 203, "202 files and backup_info.txt");

    let o = env.run(&["push"]);
    assert!(o.status.success(), "push: {}", text(&o));
    assert_eq!(std::fs::read(env.remote().join(&file)).unwrap(), bytes);
    assert!(env.remote().join(format!("{file}.manifest.json")).exists());

    std::fs::remove_file(&archive).unwrap();
    std::fs::remove_file(archive.with_file_name(format!("{file}.manifest.json"))).unwrap();
    let dest = env.path("restored");
    let o = env.run(&["pull", &id, "--to", dest.to_str().unwrap()]);
    assert!(o.status.success(), "pull: {}", text(&o));
    assert_eq!(
        std::fs::read(find_local(&env, &file)).unwrap(),
        bytes,
        "pulled copy is identical"
    );
    assert_eq!(
        snapshot(&dest.join(format!("{top}static_content/site"))),
        before
    );
}

#[test]
fn zstd_with_encryption_is_tar_zst_age() {
    let env = Env::new();
    build_tree(&env.path("src"));
    let key = env.path("key.txt");
    config(&env, "", "");
    let o = env.run(&["keygen", "--output", key.to_str().unwrap()]);
    assert!(o.status.success(), "keygen: {}", text(&o));
    let recipient = String::from_utf8(o.stdout).unwrap().trim().to_string();
    config(
        &env,
        "compression = \"zstd\"",
        &format!(
            "\n[encryption]\nrecipients = [\"{recipient}\"]\nidentity_file = \"{}\"\n",
            key.display()
        ),
    );
    let before = snapshot(&env.path("src"));
    let id = backup_id(&env);
    let file = format!("pronto-app-backup-{id}.tar.zst.age");
    let archive = find_local(&env, &file);
    assert!(archive.exists(), "no {file}");
    let o = env.run(&["push"]);
    assert!(o.status.success(), "push: {}", text(&o));
    std::fs::remove_file(&archive).unwrap();
    std::fs::remove_file(archive.with_file_name(format!("{file}.manifest.json"))).unwrap();
    let dest = env.path("restored");
    let o = env.run(&["pull", "latest", "--to", dest.to_str().unwrap()]);
    assert!(o.status.success(), "pull: {}", text(&o));
    assert_eq!(
        snapshot(&dest.join(format!("pronto-app-backup-{id}/static_content/site"))),
        before
    );
}

#[test]
fn level_is_validated_per_compression() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    for (local, expected) in [
        (
            "compression = \"zstd\"\nlevel = 20",
            "a zstd level from 1 to 19",
        ),
        (
            "compression = \"zstd\"\nlevel = 0",
            "a zstd level from 1 to 19",
        ),
        ("level = 10", "a gzip level from 1 to 9"),
        (
            "compression = \"gzip\"\nlevel = 0",
            "a gzip level from 1 to 9",
        ),
        ("compression = \"lz4\"", "local.compression"),
    ] {
        config(&env, local, "");
        let o = env.run(&["backup"]);
        assert_eq!(o.status.code(), Some(2), "{local}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(expected),
            "{local}: expected {expected:?} in {err}"
        );
    }
    // Level 19 is a valid zstd level (and not a gzip one).
    config(&env, "compression = \"zstd\"\nlevel = 19", "");
    let o = env.run(&["backup"]);
    assert!(o.status.success(), "zstd level 19: {}", text(&o));
}

fn site(path: &Path) -> ArchiveInput {
    ArchiveInput {
        name: "site".into(),
        section: Section::StaticContent,
        path: path.into(),
        allow_skip: false,
        strict: false,
    }
}

#[test]
fn format_is_detected_by_magic_bytes_and_multi_member_gzip_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_tree(&src);
    let info = |_: &[pronto_offsite::manifest::SourceSummary]| "info\n".to_string();

    // A zstd archive under a .tar.gz name is still read as zstd.
    let mislabeled = tmp.path().join("x.tar.gz");
    let opts = WriteOptions {
        codec: Codec::Zstd,
        level: 3,
        threads: 2,
        ..WriteOptions::new("TOP")
    };
    write_archive(&mislabeled, &opts, &[site(&src)], &info).unwrap();
    let stats = pronto_offsite::extract::check_readable(&mislabeled).unwrap();
    assert!(stats.files > 200, "{stats:?}");
    let out = tmp.path().join("out1");
    let got = pronto_offsite::extract::extract(&mislabeled, &out).unwrap();
    assert_eq!(got, stats);
    assert_eq!(
        snapshot(&out.join("TOP/static_content/site")),
        snapshot(&src)
    );

    // A multi-member gzip (the tar cut in two, each half gzipped, concatenated).
    let plain = tmp.path().join("y.tar.gz");
    write_archive(&plain, &WriteOptions::new("TOP"), &[site(&src)], &info).unwrap();
    let tar_bytes = {
        use std::io::Read;
        let mut v = Vec::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(&plain).unwrap())
            .read_to_end(&mut v)
            .unwrap();
        v
    };
    let gz = |b: &[u8]| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    let half = tar_bytes.len() / 2 + 123;
    let mut multi = gz(&tar_bytes[..half]);
    multi.extend(gz(&tar_bytes[half..]));
    let multi_path = tmp.path().join("multi.tar.zst"); // a misleading name too
    std::fs::write(&multi_path, &multi).unwrap();
    let out = tmp.path().join("out2");
    let got = pronto_offsite::extract::extract(&multi_path, &out).unwrap();
    assert_eq!(got, stats);
    assert_eq!(
        snapshot(&out.join("TOP/static_content/site")),
        snapshot(&src)
    );

    // A truncated zstd archive is refused (the frame never ends).
    let bytes = std::fs::read(&mislabeled).unwrap();
    let cut = tmp.path().join("cut.tar.zst");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    assert!(pronto_offsite::extract::check_readable(&cut).is_err());

    // Neither format: a clear message.
    let junk = tmp.path().join("junk.tar.gz");
    std::fs::write(&junk, b"PK\x03\x04 not an archive").unwrap();
    let e = pronto_offsite::extract::check_readable(&junk).unwrap_err();
    assert!(format!("{e:#}").contains("neither gzip nor zstd"), "{e:#}");
}
