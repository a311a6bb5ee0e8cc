//! What a remote learns from an encrypted backup (issue 22): sizes, hashes, the
//! encryption scheme and recipient fingerprints — never a table, a database, a source
//! path or an origin. The manifest a remote gets carries what the archive holds only in
//! a section sealed to the archive's recipients; a restore from that remote, with the
//! identity, still knows every table and row count (it checks them after the restore).
//! Against the real PostgreSQL the suite starts (tests/support/pg.rs).

#[path = "support/pg.rs"]
mod pg;
mod support;

use std::path::Path;

use pg::Pg;
use support::{files_under, text, Env};

const PG_PASSWORD: &str = "pg-Secret-41c7aa";
/// Names that would tell a remote what the business is: none may reach it.
const DATABASE: &str = "clinic_ledger_5e4";
const TABLES: [&str; 2] = ["patient_visits_7a1", "invoice_lines_9b2"];
const FOLDER: &str = "Private-Scans-3c9";
const SOURCE: &str = "radiology-d81f";

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every file below `dir` that holds one of `needles`, with the needle.
fn leaks(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files_under(dir) {
        let bytes = std::fs::read(&f).unwrap();
        for n in needles {
            if contains(&bytes, n) {
                out.push(format!("{} holds {n}", f.display()));
            }
        }
    }
    out
}

#[test]
fn a_remote_learns_no_table_database_or_path_and_a_restore_from_it_still_checks_every_table() {
    let pg = Pg::start();
    pg.script(
        "postgres",
        &format!(
            "CREATE ROLE pronto LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}';\nCREATE DATABASE {DATABASE};\n"
        ),
    );
    pg.script(
        DATABASE,
        &format!(
            "CREATE TABLE {t0} (id int PRIMARY KEY, note text);\n\
             INSERT INTO {t0} SELECT g, 'visit ' || g FROM generate_series(1, 300) g;\n\
             CREATE TABLE {t1} (id int PRIMARY KEY, amount numeric);\n\
             INSERT INTO {t1} SELECT g, g / 7.0 FROM generate_series(1, 1200) g;\n",
            t0 = TABLES[0],
            t1 = TABLES[1]
        ),
    );
    let env = Env::new();
    let folder = env.path(FOLDER);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("scan-0001.txt"), "not an image\n").unwrap();
    let key = env.path("keys/age.txt");
    let o = env.run(&["keygen", "--output", key.to_str().unwrap()]);
    assert!(o.status.success(), "keygen: {}", text(&o));
    let recipient = String::from_utf8(o.stdout).unwrap().trim().to_string();
    std::fs::write(env.path("pg.pass"), format!("{PG_PASSWORD}\n")).unwrap();
    std::fs::set_permissions(
        env.path("pg.pass"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = format!(
        "[local]\ndir = \"backups\"\n\n[[remotes]]\nname = \"nas\"\nurl = \"file://{remote}\"\n\n\
         [encryption]\nrecipients = [\"{recipient}\"]\nidentity_file = \"{key}\"\n\n\
         [[sources]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"{url}\"\npassword_file = \"pg.pass\"\n\
         databases = [\"{DATABASE}\"]\n\n\
         [[sources]]\nname = \"{SOURCE}\"\nkind = \"static_content\"\npath = \"{FOLDER}\"\n",
        remote = env.remote().display(),
        key = key.display(),
        url = pg.url("pronto"),
    );
    std::fs::write(env.config(), config).unwrap();

    let o = env.run(&["backup"]);
    assert!(o.status.success(), "backup: {}", text(&o));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let o = env.run(&["push"]);
    assert!(o.status.success(), "push: {}", text(&o));

    let needles = [DATABASE, TABLES[0], TABLES[1], FOLDER, SOURCE];
    // The local manifest names them all: the check below is not vacuous.
    let local = env.backups();
    let local_manifests: Vec<_> = files_under(&local)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .collect();
    assert_eq!(local_manifests.len(), 1, "{local_manifests:?}");
    let local_text = std::fs::read(&local_manifests[0]).unwrap();
    for n in needles {
        assert!(contains(&local_text, n), "the local manifest lacks {n}");
    }

    // Every byte on the remote: the archive (encrypted) and its manifest.
    let remote_files = files_under(&env.remote());
    assert!(remote_files.len() >= 2, "{remote_files:?}");
    assert_eq!(leaks(&env.remote(), &needles), Vec::<String>::new());
    let mpath = remote_files
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(mpath).unwrap()).unwrap();
    assert_eq!(m["encryption"], "age");
    assert_eq!(m["sources"], serde_json::json!([]), "{m:#}");
    assert!(m.get("postgres").is_none(), "{m:#}");
    assert!(m["sealed"].as_str().is_some_and(|s| s.len() > 64), "{m:#}");
    assert!(m["sha256"].as_str().is_some() && m["size"].as_u64().is_some());

    // Disaster: the local copy is gone, rows are lost. A restore from the remote knows
    // every table again (it checks their row counts) and brings the rows back.
    for f in files_under(&local) {
        if f.to_string_lossy().contains(&id) {
            std::fs::remove_file(f).unwrap();
        }
    }
    let count = |t: &str| pg.psql(DATABASE, &format!("SELECT count(*) FROM {t}"));
    let before = (count(TABLES[0]), count(TABLES[1]));
    pg.script(
        DATABASE,
        &format!("DELETE FROM {} WHERE id > 10;", TABLES[1]),
    );
    assert_ne!(count(TABLES[1]), before.1);
    let o = env.run(&["pull", &id, "--restore", "--only", "postgres"]);
    let t = text(&o);
    assert!(o.status.success(), "pull --restore: {t}");
    assert!(t.contains(TABLES[1]) || t.contains("rows"), "{t}");
    assert_eq!((count(TABLES[0]), count(TABLES[1])), before, "{t}");
    assert!(!t.contains(PG_PASSWORD), "{t}");
    // The pulled copy's local manifest is whole again.
    let pulled = files_under(&local)
        .into_iter()
        .find(|p| {
            let s = p.to_string_lossy();
            s.contains(&id) && s.ends_with(".manifest.json") && !s.contains("safety")
        })
        .expect("the pulled manifest");
    let pulled_text = std::fs::read(pulled).unwrap();
    for t in TABLES {
        assert!(contains(&pulled_text, t), "the pulled manifest lacks {t}");
    }
}
