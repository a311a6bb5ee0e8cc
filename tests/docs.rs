//! The documentation a newcomer reads stays true: the README stays short and holds the two set-up commands,
//! every relative link in README.md, BENCHMARKS.md and docs/ points at a file (and heading) that exists, and
//! every TOML config example in them is accepted by the config loader.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, BENCHMARKS.md and every Markdown file under docs/.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![root().join("README.md"), root().join("BENCHMARKS.md")];
    walk(&root().join("docs"), &mut out);
    out.sort();
    out
}

/// The lines outside fenced code blocks, and the fenced blocks with their info string.
fn split_fences(text: &str) -> (Vec<&str>, Vec<(String, String)>) {
    let mut prose = Vec::new();
    let mut blocks = Vec::new();
    let mut cur: Option<(String, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            match cur.take() {
                Some(b) => blocks.push(b),
                None => cur = Some((info.trim().to_string(), String::new())),
            }
            continue;
        }
        match cur.as_mut() {
            Some((_, body)) => {
                // Fences indented inside list items: drop the list's indentation.
                body.push_str(line.strip_prefix("   ").unwrap_or(line));
                body.push('\n');
            }
            None => prose.push(line),
        }
    }
    assert!(cur.is_none(), "an unclosed code fence");
    (prose, blocks)
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(page: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let (prose, _) = split_fences(&text);
    prose
        .iter()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// `[label](target)` links in prose (inline code spans removed first).
fn links(line: &str) -> Vec<String> {
    let mut without_code = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            without_code.push(c);
        }
    }
    let mut out = Vec::new();
    let mut rest = without_code.as_str();
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) => {
                out.push(after[..j].to_string());
                rest = &after[j..];
            }
            None => break,
        }
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let (prose, _) = split_fences(&text);
        for line in prose {
            for target in links(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, frag) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target.as_str(), None),
                };
                let dest = if file.is_empty() {
                    page.clone()
                } else {
                    page.parent().unwrap().join(file)
                };
                if !dest.exists() {
                    broken.push(format!("{}: {target} (no such file)", page.display()));
                    continue;
                }
                if let Some(a) = frag {
                    if dest.extension().is_some_and(|x| x == "md") && !anchors(&dest).contains(a) {
                        broken.push(format!("{}: {target} (no such heading)", page.display()));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked > 30,
        "only {checked} links found: is the parser broken?"
    );
}

/// A fragment (one table, or a few) is checked inside the smallest config that is complete.
fn as_full_config(block: &str) -> String {
    let mut text = String::new();
    if !block.contains("[local]") {
        text.push_str("[local]\ndir = \"/var/backups/pronto\"\n\n");
    }
    text.push_str(block);
    text
}

#[test]
fn every_config_example_in_the_docs_loads() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let (_, blocks) = split_fences(&text);
        for (info, body) in blocks {
            if info != "toml" {
                continue;
            }
            checked += 1;
            let cfg = as_full_config(&body);
            let file = root().join("examples").join("from-docs.toml");
            if let Err(e) = pronto_offsite::config::parse(&cfg, &file) {
                failures.push(format!("{}:\n{body}\n=> {e:#}\n", page.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 9, "only {checked} TOML examples found");
}

#[test]
fn the_readme_is_short_and_starts_with_the_two_set_up_commands() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.len() < 12 * 1024, "README is {} bytes", readme.len());
    let setup = readme.find("## Set up").expect("a Set up section");
    let after = &readme[setup..];
    let quick = after
        .find("scripts/quickstart")
        .expect("the quickstart command");
    let test = after.find("scripts/test").expect("the test command");
    assert!(quick < test);
    for script in ["scripts/quickstart", "scripts/test", "scripts/install"] {
        assert!(
            root().join(script).exists(),
            "{script} is named in the README"
        );
    }
    // The test command is what CI runs.
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.contains("scripts/test"), ".ci/run runs {ci}");
}
