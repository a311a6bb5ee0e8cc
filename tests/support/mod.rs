//! Shared helpers for end-to-end tests of the binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// A test workspace: a config file, a backup folder, a file:// remote, a source tree.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
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
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
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
