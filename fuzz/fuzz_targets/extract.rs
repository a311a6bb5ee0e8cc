//! The extraction path: any bytes, as an archive file (gzip, zstd or plain tar: the
//! compression is sniffed), are read and extracted into a temp folder. Never a panic,
//! never a write outside the destination, and nothing left behind when it fails.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pronto_offsite::extract::{self, ExtractOptions};

/// Every path under `root`, without following symlinks.
fn tree(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if let Ok(rd) = fs::read_dir(&p) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    // The harness's own setup failing (a full disk on a shared machine) is not a finding.
    let Ok(tmp) = tempfile::tempdir() else {
        return;
    };
    let archive = tmp.path().join("in.tar.gz");
    // A folder beside the destination that a path escape would land in.
    let outside = tmp.path().join("outside");
    let dest = tmp.path().join("box").join("dest");
    if fs::write(&archive, data).is_err()
        || fs::create_dir(&outside).is_err()
        || fs::create_dir(tmp.path().join("box")).is_err()
    {
        return;
    }

    let _ = extract::check_readable(&archive);
    let opts = ExtractOptions {
        max_bytes: Some(8 << 20),
        ..Default::default()
    };
    let res = extract::extract_with(&archive, &dest, &opts);

    assert!(
        tree(&outside).is_empty(),
        "wrote outside: {:?}",
        tree(&outside)
    );
    let top: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top.len(), 3, "wrote beside the destination: {top:?}");
    let boxed: Vec<_> = fs::read_dir(tmp.path().join("box"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match res {
        Ok(_) => assert_eq!(boxed, vec!["dest".to_string()], "left {boxed:?}"),
        Err(_) => assert!(boxed.is_empty(), "a failed extraction left {boxed:?}"),
    }
    // Every symlink extracted resolves inside the destination.
    for p in tree(&dest) {
        if let Ok(target) = fs::canonicalize(&p) {
            assert!(
                target.starts_with(fs::canonicalize(&dest).unwrap()),
                "{} resolves to {}",
                p.display(),
                target.display()
            );
        }
    }
});
