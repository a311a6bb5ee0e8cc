//! What a backup leaves out: each source's `exclude = [...]` patterns plus
//! `backup --exclude PATTERN`, with gitignore's rules (the `ignore` crate's matcher:
//! `*.log`, `node_modules/`, `/tmp` anchored at the source folder, `**`, `!keep.log`), and
//! every folder holding a valid `CACHEDIR.TAG` (the convention tar, restic and borg share:
//! <https://bford.info/cachedir/>). The source walker asks [`Excludes::skips`] once per
//! path; `backup --dry-run` walks with the same filter.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// The first bytes of a valid `CACHEDIR.TAG`.
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// One source's compiled patterns.
#[derive(Debug, Clone)]
struct SourceFilter {
    patterns: Vec<String>,
    matcher: Gitignore,
}

impl PartialEq for SourceFilter {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}
impl Eq for SourceFilter {}

/// The filters of every source, by source name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Excludes {
    by_source: BTreeMap<String, SourceFilter>,
    /// Keep folders holding a `CACHEDIR.TAG` (default: skip them).
    pub keep_cachedir_tagged: bool,
}

impl Excludes {
    /// Compile `patterns` for the source `name` rooted at `root`; the error names the
    /// source and the pattern.
    pub fn add(&mut self, name: &str, root: &Path, patterns: &[String]) -> Result<()> {
        if patterns.is_empty() {
            return Ok(());
        }
        let mut b = GitignoreBuilder::new(root);
        for p in patterns {
            b.add_line(None, p).with_context(|| {
                format!(
                    "source '{name}': exclude pattern {p:?} is not a valid gitignore-style glob"
                )
            })?;
        }
        let matcher = b
            .build()
            .with_context(|| format!("source '{name}': exclude patterns"))?;
        self.by_source.insert(
            name.to_string(),
            SourceFilter {
                patterns: patterns.to_vec(),
                matcher,
            },
        );
        Ok(())
    }

    /// The patterns of source `name` (what its manifest entry records).
    pub fn patterns(&self, name: &str) -> Vec<String> {
        self.by_source
            .get(name)
            .map(|f| f.patterns.clone())
            .unwrap_or_default()
    }

    /// Whether `path` (inside source `name`'s folder `root`) is left out: it matches the
    /// source's patterns, or it is a folder holding a valid `CACHEDIR.TAG`.
    pub fn skips(&self, name: &str, root: &Path, path: &Path, is_dir: bool) -> bool {
        if let Some(f) = self.by_source.get(name) {
            let rel = path.strip_prefix(root).unwrap_or(path);
            if f.matcher.matched(rel, is_dir).is_ignore() {
                return true;
            }
        }
        is_dir && !self.keep_cachedir_tagged && has_cachedir_tag(path)
    }
}

/// A folder holding a `CACHEDIR.TAG` that starts with the signature.
pub fn has_cachedir_tag(dir: &Path) -> bool {
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    std::fs::File::open(dir.join("CACHEDIR.TAG"))
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == CACHEDIR_SIGNATURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_rules_and_cachedir_tag() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for dir in ["a/node_modules", "tmp", "b/tmp", "cache"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let mut tag = CACHEDIR_SIGNATURE.to_vec();
        tag.extend_from_slice(b"\n# a cache\n");
        std::fs::write(root.join("cache/CACHEDIR.TAG"), tag).unwrap();
        std::fs::write(root.join("b/CACHEDIR.TAG"), "not the signature").unwrap();
        let mut ex = Excludes::default();
        let pats: Vec<String> = ["*.log", "node_modules/", "/tmp", "!keep.log"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        ex.add("site", root, &pats).unwrap();
        let skips = |p: &str, dir: bool| ex.skips("site", root, &root.join(p), dir);
        assert!(skips("x/error.log", false));
        assert!(!skips("keep.log", false));
        assert!(skips("a/node_modules", true));
        assert!(skips("tmp", true), "anchored /tmp");
        assert!(
            !skips("b/tmp", true),
            "/tmp is anchored at the source folder"
        );
        assert!(skips("cache", true), "valid CACHEDIR.TAG");
        assert!(!skips("b", true), "a CACHEDIR.TAG without the signature");
        assert!(!ex.skips("other", root, &root.join("x.log"), false));
        ex.keep_cachedir_tagged = true;
        assert!(!ex.skips("site", root, &root.join("cache"), true));
        assert!(Excludes::default()
            .add("s", root, &["*.[z-a]".to_string()])
            .is_err());
    }
}
