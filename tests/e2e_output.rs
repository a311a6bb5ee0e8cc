//! `backup --output DIR`: a one-off archive with its manifest outside the backup folder,
//! which push, prune and list then never touch.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{files_under, stdout, text, Env};

#[test]
fn one_off_archive_lands_in_output_and_stays_out_of_rotation() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/index.html"), "<h1>pronto</h1>").unwrap();
    env.write_config("");
    let out = env.path("before-upgrade");

    let o = env.run(&["backup", "--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let id = stdout(&o).trim().to_string();
    let archive = out.join(format!("pronto-app-backup-{id}.tar.gz"));
    let manifest = out.join(format!("pronto-app-backup-{id}.tar.gz.manifest.json"));
    assert!(
        archive.is_file() && manifest.is_file(),
        "{:?}",
        files_under(&out)
    );
    assert_eq!(
        std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let archives = |dir: &std::path::Path| {
        files_under(dir)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("pronto-app-backup-"))
            .count()
    };
    assert_eq!(
        archives(&env.backups()),
        0,
        "the backup folder got an archive"
    );

    // push, prune and list do not see it; it stays as it was.
    let before = std::fs::read(&archive).unwrap();
    for args in [&["push"][..], &["prune"], &["list"]] {
        let o = env.run(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert!(
            !stdout(&o).contains(&id),
            "{args:?} saw the one-off: {}",
            text(&o)
        );
    }
    assert_eq!(archives(&env.remote()), 0, "push uploaded the one-off");
    assert_eq!(std::fs::read(&archive).unwrap(), before);

    // The backup folder itself is refused (the archive would join the rotation).
    let o = env.run(&["backup", "--output", env.backups().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("inside the backup folder"),
        "{}",
        text(&o)
    );
}
