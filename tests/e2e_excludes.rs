//! Excludes: a source's `exclude` patterns, `backup --exclude`, and folders holding a
//! valid CACHEDIR.TAG stay out of the archive; the manifest records the patterns;
//! `backup --dry-run` lists what would be archived with sizes and writes nothing.

mod support;

use std::io::Read;

use support::{files_under, stdout, text, Env};

/// Entry names in a .tar.gz.
fn entries(archive: &std::path::Path) -> Vec<String> {
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(archive).unwrap());
    let mut tar = tar::Archive::new(gz);
    let mut names = Vec::new();
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        names.push(e.path().unwrap().display().to_string());
        let mut sink = Vec::new();
        e.read_to_end(&mut sink).unwrap();
    }
    names
}

fn tree(env: &Env) {
    let w = |p: &str, body: &str| {
        let p = env.path(&format!("src/{p}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    w("index.html", "<h1>pronto</h1>");
    w("logs/app.log", "noise");
    w("keep.log", "kept by a ! pattern");
    w("app/node_modules/x/index.js", "deps");
    w("tmp/scratch", "scratch");
    w(
        "media/tmp/photo.jpg",
        "a photo in a folder named tmp, not at the top",
    );
    w("thumbs/a.png", "cached");
    let mut tag = b"Signature: 8a477f597d28d172789f06886806bc55".to_vec();
    tag.extend_from_slice(b"\n# thumbnails cache\n");
    std::fs::write(env.path("src/thumbs/CACHEDIR.TAG"), tag).unwrap();
    w("big.iso", "an image");
}

#[test]
fn excluded_paths_stay_out_and_the_manifest_records_the_patterns() {
    let env = Env::new();
    tree(&env);
    // Source-level patterns go under the [[sources]] table the support config writes.
    let cfg = std::fs::read_to_string({
        env.write_config("");
        env.config()
    })
    .unwrap()
    .replace(
        "path = \"src\"\n",
        "path = \"src\"\nexclude = [\"*.log\", \"!keep.log\", \"node_modules/\", \"/tmp\"]\n",
    );
    std::fs::write(env.config(), cfg).unwrap();

    // --dry-run: lists with sizes, writes nothing.
    let o = env.run(&["backup", "--dry-run", "--exclude", "*.iso"]);
    assert!(o.status.success(), "{}", text(&o));
    let all = stdout(&o);
    assert!(
        all.contains("site: 3 file(s), 79 B would be archived"),
        "{all}"
    );
    let list: String = all.lines().filter(|l| !l.starts_with("site:")).collect();
    assert!(
        list.contains("15 B  ") && list.contains("/src/index.html"),
        "{all}"
    );
    for gone in ["app.log", "node_modules", "scratch", "a.png", "big.iso"] {
        assert!(!list.contains(gone), "{gone} listed:\n{list}");
    }
    assert!(
        list.contains("photo.jpg") && list.contains("keep.log"),
        "{list}"
    );
    assert!(
        files_under(&env.backups()).is_empty(),
        "dry run wrote something"
    );

    let o = env.run(&["backup", "--exclude", "*.iso"]);
    assert!(o.status.success(), "{}", text(&o));
    let files = files_under(&env.backups());
    let archive = files
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .unwrap();
    let names = entries(archive);
    let stored = |s: &str| names.iter().any(|n| n.ends_with(s));
    assert!(stored("static_content/site/index.html"), "{names:?}");
    assert!(stored("static_content/site/keep.log"), "{names:?}");
    assert!(
        stored("static_content/site/media/tmp/photo.jpg"),
        "{names:?}"
    );
    for gone in [
        "app.log",
        "node_modules",
        "/tmp/scratch",
        "thumbs",
        "big.iso",
    ] {
        assert!(
            !names.iter().any(|n| n.contains(gone)),
            "{gone} stored: {names:?}"
        );
    }
    let manifest = files
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .unwrap();
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let site = m["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "site")
        .unwrap();
    assert_eq!(
        site["exclude"],
        serde_json::json!(["*.log", "!keep.log", "node_modules/", "/tmp", "*.iso"])
    );
}
