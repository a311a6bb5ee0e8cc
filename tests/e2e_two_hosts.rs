//! Many hosts, one bucket, on real servers: two configs with two `host_id`s push to and
//! prune the same LocalStack S3 bucket (and the same folder of a private sshd) at the same
//! time. Neither loses or deletes the other's archives, `list` shows each host its own,
//! `list --all-hosts` shows both, `pull --host` restores the other host's archive, and a
//! prune while another prune holds the namespace's lease (a conditional create on the
//! server: `If-None-Match: *` on S3, a no-overwrite hard link over SFTP) is refused,
//! deletes nothing, and leaves the lease alone.

#[path = "../backends/tests/support/localstack.rs"]
mod localstack;
#[path = "../backends/tests/support/sshd.rs"]
mod sshd;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use pronto_backends::s3::{S3Backend, S3Config};
use pronto_backends::sftp::SftpBackend;
use pronto_backends::{sha256_of, Backend, BackendError};
use support::remotes::{s3_remote, sftp_remote, Keys};
use support::{fabricate, text, Env};

const P: &str = "pronto-app-backup";
const KEYS: Keys = Keys {
    id: "AKIAPRONTOTWOHOSTS01",
    secret: "two-hosts-secret-never-printed-0123456789",
};
const LEASE: &str = "pronto-app-backup.prune-lease.json";

/// web1's archives and web2's: two names in common (same name, other bytes), the rest
/// each its own. With `last = 3` each host keeps its three newest.
const WEB1: [&str; 4] = [
    "20260101-010000",
    "20260102-010000",
    "20260103-010000",
    "20260104-010000",
];
const WEB2: [&str; 4] = [
    "20260103-010000",
    "20260104-010000",
    "20260105-010000",
    "20260106-010000",
];

/// The shared remote, as each kind of server sees it.
enum Remote {
    S3 {
        ls: &'static localstack::LocalStack,
        bucket: String,
    },
    Sftp {
        sshd: sshd::Sshd,
        root: PathBuf,
    },
}

impl Remote {
    fn s3() -> Remote {
        let ls = localstack::shared();
        let bucket = ls.new_bucket("two-hosts");
        Remote::S3 { ls, bucket }
    }

    fn sftp() -> Remote {
        let sshd = sshd::Sshd::start();
        let root = sshd.dir.path().join("srv/backups/pronto");
        Remote::Sftp { sshd, root }
    }

    /// The `[[remotes]]` table of a host's config.
    fn toml(&self, host: &str) -> String {
        let common = format!("host_id = \"{host}\"\nretry_budget = \"1m\"");
        match self {
            Remote::S3 { ls, bucket } => {
                s3_remote("shared", &ls.endpoint, &format!("{bucket}/prod"), &common)
            }
            Remote::Sftp { sshd, root } => sftp_remote(
                "shared",
                &sshd.url(root),
                &sshd.client_key,
                &sshd.known_hosts,
                &common,
            ),
        }
    }

    /// The remote's root, as a backend (to hold a lease the way another prune would).
    fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Remote::S3 { ls, bucket } => Arc::new(
                S3Backend::new(S3Config {
                    bucket: bucket.clone(),
                    prefix: "prod".into(),
                    region: Some("us-east-1".into()),
                    endpoint: Some(ls.endpoint.clone()),
                    allow_http: true,
                    access_key_id: Some(KEYS.id.into()),
                    secret_access_key: Some(KEYS.secret.into()),
                    ..Default::default()
                })
                .unwrap(),
            ),
            Remote::Sftp { sshd, root } => Arc::new(SftpBackend::new(sshd.config(root)).unwrap()),
        }
    }

    /// Archive file names under `<host>/` on the server, read by the server's own means
    /// (S3: an unsigned listing; SFTP: the folder on disk), sorted.
    fn archives(&self, host: &str) -> Vec<String> {
        let ns = format!("{host}/");
        let keys: Vec<String> = match self {
            Remote::S3 { ls, bucket } => ls
                .keys(bucket)
                .into_iter()
                .filter_map(|k| k.strip_prefix("prod/").map(str::to_string))
                .collect(),
            Remote::Sftp { root, .. } => support::names_in(&root.join(host))
                .into_iter()
                .map(|n| format!("{ns}{n}"))
                .collect(),
        };
        let mut out: Vec<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&ns))
            .filter(|n| n.starts_with(P) && n.ends_with(".tar.gz"))
            // Every archive listed is complete: its manifest is there too.
            .inspect(|n| {
                assert!(
                    keys.contains(&format!("{ns}{n}.manifest.json")),
                    "{ns}{n} has no manifest: {keys:?}"
                )
            })
            .map(str::to_string)
            .collect();
        out.sort();
        out
    }
}

fn names(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| format!("{P}-{id}.tar.gz")).collect()
}

/// `<tmp>/<host>.toml`: backups in `<tmp>/backups-<host>`, keep the last 3, one remote
/// `shared` under `host_id = <host>`.
fn host_config(env: &Env, remote: &Remote, host: &str) -> PathBuf {
    let p = env.path(&format!("{host}.toml"));
    std::fs::write(
        &p,
        format!(
            "[local]\ndir = \"backups-{host}\"\n\n[retention]\nlast = 3\nmax_delete_fraction = 1\n\n{}",
            remote.toml(host)
        ),
    )
    .unwrap();
    p
}

/// The binary as `cfg`'s host, with S3 keys from the environment and nothing else of
/// the machine's AWS setup.
fn as_host(env: &Env, cfg: &Path, args: &[&str]) -> Command {
    let mut c = KEYS.bin_at(env, cfg);
    c.args(args);
    c
}

fn checked(o: Output, what: &str) -> Output {
    KEYS.assert_not_in(&o, what);
    o
}

/// Run the same command as both hosts at the same moment; both outputs.
fn both_at_once(env: &Env, cfgs: [&Path; 2], args: &[&str]) -> [Output; 2] {
    let spawn = |cfg: &Path| {
        as_host(env, cfg, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(cfgs[0]), spawn(cfgs[1]));
    [
        checked(a.wait_with_output().unwrap(), "web1"),
        checked(b.wait_with_output().unwrap(), "web2"),
    ]
}

fn run(env: &Env, cfg: &Path, args: &[&str]) -> Output {
    checked(as_host(env, cfg, args).output().unwrap(), &args.join(" "))
}

/// `(host, id)` of every row of `list --all-hosts --json`, sorted.
fn all_hosts(env: &Env, cfg: &Path) -> Vec<(String, String)> {
    let o = run(env, cfg, &["list", "--all-hosts", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut rows: Vec<(String, String)> = v["archives"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|r| {
            assert_eq!(r["remote"], "shared", "{r}");
            assert_eq!(r["status"], "complete", "{r}");
            (
                r["host"].as_str().unwrap().into(),
                r["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The ids `list --json` shows complete on the remote, sorted.
fn own_list(env: &Env, cfg: &Path) -> Vec<String> {
    let o = run(env, cfg, &["list", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut ids: Vec<String> = v["archives"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["remotes"]["shared"] == "complete")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// `pull --host <host> <id> --to DIR` as `cfg`'s host: whose archive arrived.
fn pull_from(env: &Env, cfg: &Path, host: &str, id: &str, to: &str) -> String {
    let dest = env.path(to);
    let o = run(
        env,
        cfg,
        &["pull", "--host", host, id, "--to", dest.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    std::fs::read_to_string(dest.join(format!("{P}-{id}/backup_info.txt"))).unwrap()
}

fn lease_body(host: &str, pid: u32) -> Bytes {
    let now = chrono::Utc::now();
    Bytes::from(
        serde_json::json!({
            "host": host, "pid": pid, "started": now.to_rfc3339(),
            "expires": (now + chrono::TimeDelta::minutes(10)).to_rfc3339(),
        })
        .to_string(),
    )
}

fn two_hosts_share_one_remote(remote: Remote) {
    let env = Env::new();
    let web1 = host_config(&env, &remote, "web1");
    let web2 = host_config(&env, &remote, "web2");
    for id in WEB1 {
        fabricate(&env.path("backups-web1"), id, "web1");
    }
    for id in WEB2 {
        fabricate(&env.path("backups-web2"), id, "web2");
    }

    // Both push — and then prune their namespace — at the same moment.
    for o in both_at_once(&env, [&web1, &web2], &["push"]) {
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    assert_eq!(remote.archives("web1"), names(&WEB1[1..]));
    assert_eq!(remote.archives("web2"), names(&WEB2[1..]));

    // Both prune at once (forced: every rail off): each keeps its own three.
    for o in both_at_once(&env, [&web1, &web2], &["prune", "--force"]) {
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    assert_eq!(remote.archives("web1"), names(&WEB1[1..]));
    assert_eq!(remote.archives("web2"), names(&WEB2[1..]));

    // `list`: each host its own; `list --all-hosts`: both.
    assert_eq!(own_list(&env, &web1), WEB1[1..]);
    assert_eq!(own_list(&env, &web2), WEB2[1..]);
    let want: Vec<(String, String)> = WEB1[1..]
        .iter()
        .map(|id| ("web1".to_string(), id.to_string()))
        .chain(WEB2[1..].iter().map(|id| ("web2".into(), id.to_string())))
        .collect();
    assert_eq!(all_hosts(&env, &web1), want);
    assert_eq!(all_hosts(&env, &web2), want);

    // `pull --host` from the other host: its archive, also under a name both hosts use.
    // It lands in `<backup folder>/hosts/<host>/`, apart from this host's own archives:
    // this host's same-named copy is left as it is, and the next push does not take the
    // other host's archive for one of its own.
    let mine = env.path(&format!("backups-web1/{}", names(&WEB1[3..])[0]));
    let before = std::fs::read(&mine).unwrap();
    assert!(pull_from(&env, &web1, "web2", WEB2[3], "r1").contains("of web2"));
    assert!(pull_from(&env, &web1, "web2", WEB1[3], "r2").contains("of web2"));
    assert!(pull_from(&env, &web2, "web1", WEB1[1], "r3").contains("of web1"));
    assert_eq!(std::fs::read(&mine).unwrap(), before);
    for id in [WEB2[3], WEB1[3]] {
        assert!(env
            .path(&format!("backups-web1/hosts/web2/{P}-{id}.tar.gz"))
            .exists());
    }
    assert_eq!(own_list(&env, &web1), WEB1[1..]);

    // Another prune holds web1's lease (a standby web1, say): web1's prune is refused,
    // deletes nothing and leaves the lease alone; web2's namespace has its own lease and
    // prunes at the same time.
    let newer1 = "20260107-010000";
    let newer2 = "20260108-010000";
    fabricate(&env.path("backups-web1"), newer1, "web1");
    fabricate(&env.path("backups-web2"), newer2, "web2");
    for o in both_at_once(&env, [&web1, &web2], &["push", "--no-prune"]) {
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let before1: Vec<String> = names(&[WEB1[1], WEB1[2], WEB1[3], newer1]);
    assert_eq!(remote.archives("web1"), before1);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = remote.backend();
    let lease = format!("web1/{LEASE}");
    let held = lease_body("web1-standby", 4242);
    rt.block_on(b.put_if_absent(&lease, held.clone(), sha256_of(&held)))
        .expect("hold web1's lease");
    // The server refuses a second create of the lease (what a racing prune sees).
    let other = lease_body("web1-third", 7);
    assert!(matches!(
        rt.block_on(b.put_if_absent(&lease, other.clone(), sha256_of(&other))),
        Err(BackendError::AlreadyExists(_))
    ));

    let [o1, o2] = both_at_once(&env, [&web1, &web2], &["prune", "--remote", "shared"]);
    assert_eq!(o1.status.code(), Some(1), "{}", text(&o1));
    let t = text(&o1);
    assert!(t.contains("another prune holds the lease"), "{t}");
    assert!(t.contains("web1-standby") && t.contains("4242"), "{t}");
    assert_eq!(o2.status.code(), Some(0), "{}", text(&o2));
    assert_eq!(remote.archives("web1"), before1, "nothing deleted");
    assert_eq!(remote.archives("web2"), names(&[WEB2[2], WEB2[3], newer2]));
    let still = rt
        .block_on(async { pronto_backends::collect(b.get(&lease, None).await?).await })
        .expect("the other prune's lease is left alone");
    assert_eq!(still, held.to_vec());
    // Nor does the prune that follows a push run under someone else's lease.
    let o = run(&env, &web1, &["push"]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("another prune holds the lease"),
        "{}",
        text(&o)
    );
    assert_eq!(remote.archives("web1"), before1);

    // That prune is done (its lease gone): web1 prunes, and releases its own lease.
    rt.block_on(b.delete(&lease)).unwrap();
    let o = run(&env, &web1, &["prune", "--remote", "shared"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(remote.archives("web1"), names(&[WEB1[2], WEB1[3], newer1]));
    assert!(matches!(
        rt.block_on(b.head(&lease)),
        Err(BackendError::NotFound(_))
    ));
    assert_eq!(remote.archives("web2"), names(&[WEB2[2], WEB2[3], newer2]));
}

#[test]
fn two_hosts_on_one_localstack_s3_bucket() {
    two_hosts_share_one_remote(Remote::s3());
}

#[test]
fn two_hosts_in_one_sftp_folder() {
    two_hosts_share_one_remote(Remote::sftp());
}

/// `pull --host web2 <id> --restore` on web1 restores web2's archive into web1's folders;
/// the safety backup of web1's state goes into web1's own backup folder (listed and pushed
/// as web1's), and web2's archive stays in `hosts/web2/`, out of web1's namespace.
#[test]
fn restoring_another_hosts_archive_keeps_this_hosts_backups_its_own() {
    let env = Env::new();
    let bucket = env.path("bucket");
    let config = |host: &str| {
        let src = env.path(&format!("src-{host}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("index.html"), format!("<h1>{host}</h1>\n")).unwrap();
        let p = env.path(&format!("{host}.toml"));
        std::fs::write(
            &p,
            format!(
                "[local]\ndir = \"backups-{host}\"\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\n\
                 path = \"src-{host}\"\n\n[[remotes]]\nname = \"shared\"\nurl = \"file://{}\"\nhost_id = \"{host}\"\n",
                bucket.display()
            ),
        )
        .unwrap();
        p
    };
    let (web1, web2) = (config("web1"), config("web2"));
    let backup = |cfg: &Path| {
        let o = run(&env, cfg, &["backup"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let id2 = backup(&web2);
    assert_eq!(run(&env, &web2, &["push"]).status.code(), Some(0));
    std::thread::sleep(std::time::Duration::from_millis(1100)); // ids are seconds
    let id1 = backup(&web1);
    assert_eq!(run(&env, &web1, &["push"]).status.code(), Some(0));

    let o = run(&env, &web1, &["pull", "--host", "web2", &id2, "--restore"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(env.path("src-web1/index.html")).unwrap(),
        "<h1>web2</h1>\n"
    );
    assert!(env
        .path(&format!("backups-web1/hosts/web2/{P}-{id2}.tar.gz"))
        .exists());

    // web1's own list on the remote: its backup, not web2's. The safety backup (of
    // "<h1>web1</h1>") stays in web1's backup folder: safety backups are not scheduled
    // backups and are never pushed (docs/invariant.md).
    let o = run(&env, &web1, &["push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ids = own_list(&env, &web1);
    assert_eq!(ids, vec![id1.clone()], "{ids:?}");
    let safety: Vec<std::path::PathBuf> = support::files_under(&env.path("backups-web1"))
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".manifest.json")
                && std::fs::read_to_string(p)
                    .unwrap()
                    .contains("\"safety\": true")
        })
        .collect();
    assert_eq!(
        safety.len(),
        1,
        "one safety backup in web1's folder: {safety:?}"
    );
    let archive = std::path::PathBuf::from(
        safety[0]
            .to_string_lossy()
            .trim_end_matches(".manifest.json")
            .to_string(),
    );
    let listing = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(&archive)
        .arg("--wildcards")
        .arg("*/static_content/site/index.html")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "<h1>web1</h1>\n",
        "the safety backup holds web1's state before the restore"
    );
    assert_eq!(
        std::fs::read_dir(bucket.join("web2"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tar.gz"))
            .count(),
        1,
        "web2's namespace holds only web2's backup"
    );
}
