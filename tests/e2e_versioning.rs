//! Versioned S3 buckets (issue 22): on a bucket with versioning on, a deleted archive
//! stays as a noncurrent version and keeps costing. `doctor` reads the bucket's
//! versioning and lifecycle and fails its check when no rule expires noncurrent
//! versions; `prune` says so when it deleted archives there. LocalStack (started by
//! `backends/tests/support/localstack.rs`) is the S3; versioning and the lifecycle rule
//! are set with raw (unsigned) requests, as an admin would with the AWS CLI.

mod support;

#[path = "../backends/tests/support/localstack.rs"]
mod localstack;

use support::remotes::{s3_remote, Keys, STATIC_SITE};
use support::{text, Env};

const KEYS: Keys = Keys {
    id: "AKIAVERSIONINGTEST01",
    secret: "versioning-test-secret",
};

fn config(env: &Env, ls: &localstack::LocalStack, bucket: &str) {
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/a.txt"), "a\n").unwrap();
    let remote = s3_remote("s3", &ls.endpoint, &format!("{bucket}/prod"), "");
    std::fs::write(
        env.config(),
        format!("{STATIC_SITE}\n[retention]\nlast = 1\nmax_delete_fraction = 1\n\n{remote}"),
    )
    .unwrap();
}

fn enable_versioning(ls: &localstack::LocalStack, bucket: &str) {
    let body = r#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>"#;
    let (status, text) = localstack::http(
        "PUT",
        ls.port,
        &format!("/{bucket}?versioning"),
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "enable versioning: {text}");
}

/// The `versioning` check line of doctor's output, if any.
fn versioning_line(out: &str) -> Option<String> {
    out.lines()
        .find(|l| l.contains("remote s3 versioning"))
        .map(str::to_string)
}

#[test]
fn a_versioned_bucket_is_reported_by_doctor_and_prune() {
    let ls = localstack::shared();

    // Unversioned: no versioning line, doctor passes.
    let plain = ls.new_bucket("unversioned");
    let env = Env::new();
    config(&env, ls, &plain);
    let o = KEYS.bin(&env).arg("doctor").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(versioning_line(&String::from_utf8_lossy(&o.stdout)), None);

    // Versioned, no lifecycle rule: doctor fails that check, with the fix.
    let bucket = ls.new_bucket("versioned");
    enable_versioning(ls, &bucket);
    let env = Env::new();
    config(&env, ls, &bucket);
    let o = KEYS.bin(&env).arg("doctor").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let line = versioning_line(&out).unwrap_or_else(|| panic!("no versioning check: {out}"));
    assert!(
        line.starts_with("FAIL") && line.contains("Enabled") && line.contains("keeps costing"),
        "{line}"
    );
    assert!(
        out.contains("NoncurrentVersionExpiration"),
        "the fix: {out}"
    );

    // Two backups pushed, prune keeps one: the note says the deleted one keeps costing,
    // and the bucket indeed still holds its bytes as a noncurrent version.
    for _ in 0..2 {
        let o = KEYS.bin(&env).arg("backup").output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = KEYS
            .bin(&env)
            .args(["push", "--no-prune"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let o = KEYS.bin(&env).arg("prune").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("NOTE: bucket versioning is Enabled") && out.contains("Versioned buckets"),
        "{}",
        text(&o)
    );
    let archives = |xml: &str, tag: &str| {
        xml.split(&format!("<{tag}>"))
            .skip(1)
            .filter_map(|v| v.split(&format!("</{tag}>")).next())
            .filter(|v| v.contains(".tar.gz</Key>"))
            .count()
    };
    let (_, listing) =
        localstack::http("GET", ls.port, &format!("/{bucket}?versions"), &[]).unwrap();
    assert_eq!(
        archives(&listing, "Version"),
        2,
        "both archives' bytes: {listing}"
    );
    assert_eq!(archives(&listing, "DeleteMarker"), 1, "{listing}");

    // With a rule that expires noncurrent versions: doctor passes and says so.
    let rule = r#"<LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Rule><ID>expire-pruned-archives</ID><Filter><Prefix>prod/</Prefix></Filter><Status>Enabled</Status><NoncurrentVersionExpiration><NoncurrentDays>7</NoncurrentDays></NoncurrentVersionExpiration></Rule></LifecycleConfiguration>"#;
    let (status, body) = localstack::http(
        "PUT",
        ls.port,
        &format!("/{bucket}?lifecycle"),
        rule.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "put lifecycle: {body}");
    let o = KEYS.bin(&env).arg("doctor").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let line = versioning_line(&String::from_utf8_lossy(&o.stdout)).unwrap();
    assert!(
        line.starts_with("ok") && line.contains("lifecycle rule"),
        "{line}"
    );
}
