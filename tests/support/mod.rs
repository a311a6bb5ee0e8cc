//! Shared helpers for end-to-end tests of the binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

pub mod remotes;

/// A test workspace: a config file, a backup folder, a file:// remote, a source tree.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        // A nightly schedule for `doctor` to find (PRONTO_OFFSITE_SCHEDULE_PATHS).
        std::fs::write(env.schedule(), "0 3 * * * root pronto-offsite -q hook\n").unwrap();
        env
    }
    /// The cron table the binary's `doctor` reads instead of the machine's.
    pub fn schedule(&self) -> PathBuf {
        self.path(".schedule.cron")
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn config(&self) -> PathBuf {
        self.path("pronto-offsite.toml")
    }
    pub fn backups(&self) -> PathBuf {
        self.path("backups")
    }
    pub fn remote(&self) -> PathBuf {
        self.path("remote")
    }
    /// Write a config with one static_content source at `src` and one file:// remote.
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            r#"[local]
dir = "backups"

[[sources]]
name = "site"
kind = "static_content"
path = "src"

[[remotes]]
name = "nas"
url = "file://{}"
{extra}"#,
            self.remote().display()
        );
        std::fs::write(self.config(), text).unwrap();
    }
    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("pronto-offsite").unwrap();
        c.arg("--config").arg(self.config());
        c.env_remove("PRONTO_OFFSITE_CONFIG");
        c.env("PRONTO_OFFSITE_SCHEDULE_PATHS", self.schedule());
        c
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `v` is empty (shown when not).
#[track_caller]
pub fn assert_empty<T: std::fmt::Debug>(v: &[T]) {
    assert!(v.is_empty(), "{v:?}");
}

/// Every file under a folder, recursively, in no particular order (empty for a missing
/// folder).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Where the file named `name` is under `root` (say an archive in the backup folder or
/// one of its tiers).
pub fn find_file(root: &Path, name: &str) -> Option<PathBuf> {
    files_under(root)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == name))
}

/// A small real archive `pronto-app-backup-<id>.tar.gz` in `dir` whose backup_info.txt
/// names `host`, and its manifest.
pub fn fabricate(dir: &Path, id: &str, host: &str) {
    use sha2::Digest;
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let stem = format!("pronto-app-backup-{id}");
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let info = format!("Pronto backup {id} of {host}\n");
    let mut h = tar::Header::new_gnu();
    h.set_size(info.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    tar.append_data(&mut h, format!("{stem}/backup_info.txt"), info.as_bytes())
        .unwrap();
    let mut gz = tar.into_inner().unwrap();
    gz.flush().unwrap();
    let bytes = gz.finish().unwrap();
    let file = format!("{stem}.tar.gz");
    std::fs::write(dir.join(&file), &bytes).unwrap();
    let created = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &id[0..4],
        &id[4..6],
        &id[6..8],
        &id[9..11],
        &id[11..13],
        &id[13..15]
    );
    let manifest = serde_json::json!({
        "format": 1, "id": id, "file": file, "created": created, "size": bytes.len(),
        "sha256": hex::encode(sha2::Sha256::digest(&bytes)), "compression": "gzip",
        "encryption": "none", "host": host, "tool_version": "test", "sources": [],
    });
    std::fs::write(
        dir.join(format!("{file}.manifest.json")),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

/// Files directly in a folder, sorted (empty for a missing folder).
pub fn names_in(dir: &Path) -> Vec<String> {
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

/// What a tree holds: relative path → (kind, mode, content hash or link target).
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let md = std::fs::symlink_metadata(&p).unwrap();
        let mode = md.permissions().mode() & 0o7777;
        if md.file_type().is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            out.insert(rel, format!("link -> {}", t.display()));
        } else if md.is_dir() {
            out.insert(rel, format!("dir {mode:o}"));
            walk(root, &p, out);
        } else {
            let digest = file_digest(&p);
            out.insert(
                rel,
                format!("file {mode:o} {} {} {digest}", md.size(), md.mtime()),
            );
        }
    }
}

pub fn file_digest(p: &Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// `len` deterministic bytes that gzip and zstd cannot shrink (xorshift64), so an
/// archive of them is as big as the data.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&xorshift(&mut x).to_le_bytes()[..chunk.len()]);
    }
    out
}

/// One step of xorshift64: the next value of `x` (not 0 unless `x` was).
pub fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Starts `c` (its output discarded) and kills it with SIGKILL after `delay`; true if it
/// had already finished by then.
pub fn kill_after(mut c: std::process::Command, delay: std::time::Duration) -> bool {
    use std::process::Stdio;
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let finished = child.try_wait().unwrap().is_some();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    finished
}

/// Write [`noise`] to `path`, 1 MiB at a time (for files of hundreds of MiB).
pub fn write_noise(path: &Path, len: usize, seed: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let mut left = len;
    let mut n = 0;
    while left > 0 {
        let chunk = noise(left.min(1 << 20), seed.wrapping_add(n));
        f.write_all(&chunk).unwrap();
        left -= chunk.len();
        n += 1;
    }
}
