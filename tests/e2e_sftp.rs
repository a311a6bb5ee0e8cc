//! End to end with an sftp:// remote on a private sshd (started by the test support code,
//! killed when each test ends): backup → push → prune → pull, a push killed mid-file that
//! resumes and sends only the rest (counted by the server), a connection dropped
//! mid-transfer, host key refusals, config validation — and no key material in any output.

#[path = "../backends/tests/support/sshd.rs"]
mod sshd;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sshd::{keygen, Sshd, SshdOptions};
use support::{names_in, snapshot, text, Env};

const REMOTE: &str = "offsite";

/// Write `len` bytes of incompressible noise.
fn noise(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, support::noise(len, seed)).unwrap();
}

/// A source tree with a few small files and `big` bytes of noise.
fn source_tree(env: &Env, big: usize) {
    let src = env.path("src");
    std::fs::create_dir_all(src.join("css")).unwrap();
    std::fs::write(src.join("index.html"), "<h1>pronto</h1>\n").unwrap();
    std::fs::write(src.join("css/app.css"), "body { color: #333 }\n").unwrap();
    std::fs::write(src.join("a file with spaces.txt"), "spaces\n").unwrap();
    if big > 0 {
        noise(&src.join("media.bin"), big, 7);
    }
}

/// The remote folder on the server (the server's disk is this machine's).
fn remote_dir(sshd: &Sshd) -> PathBuf {
    sshd.dir.path().join("srv/backups/pronto")
}

/// Config: one static_content source, one sftp:// remote on `sshd`, plus `extra` lines in
/// the remote's table and `top` lines before it.
fn write_config(env: &Env, sshd: &Sshd, top: &str, extra: &str) {
    let text = format!(
        r#"[local]
dir = "backups"
level = 1
{top}
[[sources]]
name = "site"
kind = "static_content"
path = "src"

[[remotes]]
name = "{REMOTE}"
url = "{url}"
identity_file = "{key}"
known_hosts_file = "{kh}"
ssh_config_file = "/dev/null"
connect_timeout = "10s"
{extra}
"#,
        url = sshd.url(&remote_dir(sshd)),
        key = sshd.client_key.display(),
        kh = sshd.known_hosts.display(),
    );
    std::fs::write(env.config(), text).unwrap();
}

/// The output must not contain the private key (its PEM armour or any line of its body).
fn assert_no_key_material(o: &Output, sshd: &Sshd) {
    let all = text(o);
    assert!(
        !all.contains("PRIVATE KEY"),
        "key material in output: {all}"
    );
    let private = std::fs::read_to_string(&sshd.client_key).unwrap();
    for line in private.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            !all.contains(line),
            "a line of the private key is in the output: {all}"
        );
    }
}

fn run(env: &Env, sshd: &Sshd, args: &[&str]) -> Output {
    let o = env.run(args);
    assert_no_key_material(&o, sshd);
    o
}

fn backup_id(env: &Env, sshd: &Sshd) -> String {
    let o = run(env, sshd, &["backup"]);
    assert!(o.status.success(), "backup failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn archive_name(id: &str) -> String {
    format!("pronto-app-backup-{id}.tar.gz")
}

/// Where the backup folder holds `file` (backups are filed under archive/<tier>/).
fn local_archive(env: &Env, file: &str) -> PathBuf {
    fn find(dir: &Path, file: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if e.file_name().to_str() == Some(file) {
                return Some(p);
            }
            if p.is_dir() {
                if let Some(found) = find(&p, file) {
                    return Some(found);
                }
            }
        }
        None
    }
    find(&env.backups(), file)
        .unwrap_or_else(|| panic!("{file} is not in {}", env.backups().display()))
}

fn sha256sum_check(dir: &Path) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("sha256sum -c *.sha256")
        .current_dir(dir)
        .output()
        .unwrap()
}

/// The remote folder's names, without the remote's marker (and its sidecar) that the
/// first push writes (src/marker.rs).
fn ours(remote: &std::path::Path) -> Vec<String> {
    names_in(remote)
        .into_iter()
        .filter(|n| !n.starts_with(".pronto-offsite-remote"))
        .collect()
}

#[test]
fn push_prune_and_pull_over_sftp() {
    let sshd = Sshd::start();
    let env = Env::new();
    source_tree(&env, 20 << 20); // > 8 MiB: a multipart upload
    write_config(&env, &sshd, "", "");
    let remote = remote_dir(&sshd);
    assert!(!remote.exists(), "the remote folder does not exist yet");

    let id1 = backup_id(&env, &sshd);
    let file1 = archive_name(&id1);
    let o = run(&env, &sshd, &["-v", "push"]);
    assert!(o.status.success(), "push: {}", text(&o));
    assert_eq!(
        ours(&remote),
        vec![
            file1.clone(),
            format!("{file1}.manifest.json"),
            format!("{file1}.manifest.json.sha256"),
            format!("{file1}.sha256"),
        ],
        "archive, manifest and their sidecars; no partial left"
    );
    assert_eq!(
        support::file_digest(&remote.join(&file1)),
        support::file_digest(&local_archive(&env, &file1))
    );
    // On the backup server, without our tool:
    let o = sha256sum_check(&remote);
    assert!(
        o.status.success(),
        "sha256sum -c on the server: {}",
        text(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{file1}: OK")));

    // Up to date: nothing is sent again; list shows the remote copy complete.
    let o = run(&env, &sshd, &["push"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("uploaded 0"),
        "{}",
        text(&o)
    );
    let o = run(&env, &sshd, &["list", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["archives"][0]["remotes"][REMOTE], "complete", "{v}");

    // A second backup, pushed; then a policy keeping only the last one prunes the remote:
    // the older archive, its manifest and both sidecars go.
    std::fs::write(env.path("src/new.txt"), "second backup\n").unwrap();
    let id2 = backup_id(&env, &sshd);
    let file2 = archive_name(&id2);
    let o = run(&env, &sshd, &["push", "--no-prune"]);
    assert!(o.status.success(), "{}", text(&o));
    write_config(&env, &sshd, "[retention]\nlast = 1\n", "");
    let o = run(&env, &sshd, &["prune", "--remote", REMOTE, "--force"]);
    assert!(o.status.success(), "prune: {}", text(&o));
    assert_eq!(
        ours(&remote),
        vec![
            file2.clone(),
            format!("{file2}.manifest.json"),
            format!("{file2}.manifest.json.sha256"),
            format!("{file2}.sha256"),
        ],
        "{}",
        text(&o)
    );

    // Lose the local copy; pull it back over SFTP and extract it.
    let before = snapshot(&env.path("src"));
    let local2 = local_archive(&env, &file2);
    std::fs::remove_file(&local2).unwrap();
    std::fs::remove_file(local2.with_file_name(format!("{file2}.manifest.json"))).unwrap();
    let dest = env.path("restored");
    let o = run(
        &env,
        &sshd,
        &["pull", "latest", "--to", dest.to_str().unwrap()],
    );
    assert!(o.status.success(), "pull: {}", text(&o));
    let after = snapshot(&dest.join(format!("pronto-app-backup-{id2}/static_content/site")));
    assert_eq!(before.len(), after.len());
    for (k, v) in &before {
        assert_eq!(after.get(k), Some(v), "{k} differs after the round trip");
    }
}

/// Read the push journal of `file` (the receipts a new process resumes from).
fn journal_parts(env: &Env, file: &str) -> Option<Vec<(u32, u64)>> {
    let path = env
        .backups()
        .join(".journal")
        .join(REMOTE)
        .join(format!("{file}.json"));
    let bytes = std::fs::read(path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(
        v["parts"]
            .as_array()?
            .iter()
            .map(|p| {
                (
                    p["number"].as_u64().unwrap() as u32,
                    p["size"].as_u64().unwrap(),
                )
            })
            .collect(),
    )
}

/// Wait until the server runs no sftp-server (a killed client's channel has closed and
/// the server has logged everything it wrote).
fn wait_no_sftp_server(sshd: &Sshd) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let busy = sshd.session_pids().into_iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == "sftp-server")
                .unwrap_or(false)
        });
        if !busy {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the killed push's sftp-server is still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_push(env: &Env) -> std::process::Child {
    Command::new(assert_cmd::cargo::cargo_bin("pronto-offsite"))
        .arg("--config")
        .arg(env.config())
        .arg("push")
        .env_remove("PRONTO_OFFSITE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `push` killed with SIGKILL mid-file; the second run sends only the parts the journal
/// lacks. The bytes are counted by the server: sftp-server's own log (`close "…" bytes
/// read R written W`), summed over the partial file after the second run starts.
#[test]
fn killed_push_resumes_and_the_server_receives_only_the_rest() {
    let sshd = Sshd::start_with(SshdOptions {
        sftp_log: true,
        ..Default::default()
    });
    let env = Env::new();
    source_tree(&env, 128 << 20);
    write_config(&env, &sshd, "", "part_concurrency = 2");
    let id = backup_id(&env, &sshd);
    let file = archive_name(&id);
    let size = std::fs::metadata(local_archive(&env, &file)).unwrap().len();
    const PART: u64 = 8 << 20;
    let n_parts = size.div_ceil(PART);
    assert!(n_parts >= 12, "a {size}-byte archive");

    // First run: killed once a few parts are journaled.
    let mut child = spawn_push(&env);
    let t0 = Instant::now();
    loop {
        if journal_parts(&env, &file).is_some_and(|p| p.len() >= 3) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "push finished before it could be killed"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no parts journaled after 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_no_key_material(&out, &sshd);
    wait_no_sftp_server(&sshd);
    let remote = remote_dir(&sshd);
    assert!(
        !remote.join(&file).exists(),
        "nothing under the final name after a kill"
    );
    assert!(!remote.join(format!("{file}.manifest.json")).exists());
    let partials: Vec<String> = names_in(&remote)
        .into_iter()
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert_eq!(
        partials.len(),
        1,
        "one partial file on the server: {partials:?}"
    );

    let journaled = journal_parts(&env, &file).unwrap();
    let resumed_bytes: u64 = journaled.iter().map(|p| p.1).sum();
    assert!(
        journaled.len() >= 3 && (journaled.len() as u64) < n_parts,
        "{journaled:?}"
    );

    // Second run, counted on the server from here.
    let mark = sshd.sftp_log_len();
    let o = run(&env, &sshd, &["push"]);
    assert!(o.status.success(), "second push: {}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "resuming upload of {file}: {} parts already sent",
            journaled.len()
        )),
        "{stderr}"
    );
    wait_no_sftp_server(&sshd);
    // Only the archive's partial file (`NAME.<upload nonce>.partial`) counts: manifests
    // and sidecars are written to other names.
    let written = sshd.bytes_written(&partials[0], mark);
    assert_eq!(
        written,
        size - resumed_bytes,
        "the server received exactly the parts the journal lacked ({} parts of {n_parts} resumed)",
        journaled.len()
    );
    assert_eq!(
        support::file_digest(&remote.join(&file)),
        support::file_digest(&local_archive(&env, &file))
    );
    let o = sha256sum_check(&remote);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !names_in(&remote).iter().any(|n| n.ends_with(".partial")),
        "{:?}",
        names_in(&remote)
    );
}

/// The SSH connection dies mid-transfer (the server's session processes are killed):
/// the replicator retries, the backend reconnects, the upload resumes and completes.
#[test]
fn a_connection_dropped_mid_transfer_is_retried_and_resumed() {
    let sshd = Sshd::start();
    let env = Env::new();
    source_tree(&env, 96 << 20);
    write_config(&env, &sshd, "", "part_concurrency = 2");
    let id = backup_id(&env, &sshd);
    let file = archive_name(&id);
    let remote = remote_dir(&sshd);

    let child = spawn_push(&env);
    let t0 = Instant::now();
    let partial_size = || -> u64 {
        names_in(&remote)
            .iter()
            .filter(|n| n.starts_with(&file) && n.ends_with(".partial"))
            .filter_map(|n| std::fs::metadata(remote.join(n)).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    };
    while partial_size() < 20 << 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the upload did not start"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(sshd.kill_sessions() > 0, "a session to kill");
    let o = child.wait_with_output().unwrap();
    assert_no_key_material(&o, &sshd);
    assert!(
        o.status.success(),
        "push after a dropped connection: {}",
        text(&o)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("retrying"),
        "the failure was retried: {stderr}"
    );
    assert!(
        stderr.contains("reconnecting"),
        "the backend reconnected: {stderr}"
    );
    let logins = std::fs::read_to_string(&sshd.log)
        .unwrap()
        .matches("Accepted publickey")
        .count();
    assert!(logins >= 2, "a second SSH connection was made ({logins})");
    assert_eq!(
        support::file_digest(&remote.join(&file)),
        support::file_digest(&local_archive(&env, &file))
    );
    assert!(!names_in(&remote).iter().any(|n| n.ends_with(".partial")));
}

#[test]
fn changed_or_unknown_host_keys_are_refused_by_push() {
    let sshd = Sshd::start();
    let env = Env::new();
    source_tree(&env, 0);
    write_config(&env, &sshd, "", "");
    backup_id(&env, &sshd);

    // known_hosts records another key for this server.
    let other = sshd.dir.path().join("impostor_key");
    keygen(&other, "impostor");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut it = other_pub.split_whitespace();
    std::fs::write(
        &sshd.known_hosts,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            it.next().unwrap(),
            it.next().unwrap()
        ),
    )
    .unwrap();
    let o = run(&env, &sshd, &["push"]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    for want in [
        format!("[127.0.0.1]:{}", sshd.port),
        "CHANGED".into(),
        sshd.fingerprint(),
        format!(
            "ssh-keyscan -p {} 127.0.0.1 >> {}",
            sshd.port,
            sshd.known_hosts.display()
        ),
    ] {
        assert!(err.contains(&want), "lacks {want:?}: {err}");
    }
    // A host key is not a credential: no advice to check keys or permissions.
    for wrong in ["access denied", "check the credentials"] {
        assert!(!err.contains(wrong), "says {wrong:?}: {err}");
    }
    assert!(
        !remote_dir(&sshd).exists(),
        "nothing written to an unverified server"
    );

    // An unknown key: refused too, with the way to accept it ...
    std::fs::write(&sshd.known_hosts, "").unwrap();
    let o = run(&env, &sshd, &["push"]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = text(&o);
    assert!(
        err.contains(&sshd.fingerprint()) && err.contains("accept_new_host_key = true"),
        "{err}"
    );
    assert!(!remote_dir(&sshd).exists());

    // ... which works.
    write_config(&env, &sshd, "", "accept_new_host_key = true");
    let o = run(&env, &sshd, &["push"]);
    assert!(o.status.success(), "{}", text(&o));
    let kh = std::fs::read_to_string(&sshd.known_hosts).unwrap();
    assert!(
        kh.contains(sshd.host_pub.split_whitespace().nth(1).unwrap()),
        "{kh}"
    );
}

#[test]
fn sftp_config_keys_are_checked_and_the_example_parses() {
    let env = Env::new();
    let base = "[local]\ndir = \"b\"\n[[remotes]]\nname = \"r\"\n";
    let cases = [
        (
            "url = \"sftp://u@h:22/srv\"\nremote_hash = \"md5\"\n",
            "remotes[0].remote_hash",
        ),
        (
            "url = \"sftp://u@h:22/srv\"\nconnect_timeout = \"soon\"\n",
            "remotes[0].connect_timeout",
        ),
        (
            "url = \"file:///tmp/x\"\nidentity_file = \"/k\"\n",
            "remotes[0].identity_file",
        ),
        (
            "url = \"file:///tmp/x\"\naccept_new_host_key = true\n",
            "remotes[0].accept_new_host_key",
        ),
        (
            "url = \"file:///tmp/x\"\nprefer_aes_gcm = false\n",
            "remotes[0].prefer_aes_gcm",
        ),
        (
            "url = \"sftp://u@h:22/srv\"\nprefer_aes_gcm = \"no\"\n",
            "pronto-offsite.toml:6: invalid type: string \"no\", expected a boolean",
        ),
        ("url = \"sftp://u:hunter2@h/srv\"\n", "remotes[0].url"),
        ("url = \"sftp://h\"\n", "remotes[0].url"),
    ];
    for (remote, key) in cases {
        std::fs::write(env.config(), format!("{base}{remote}")).unwrap();
        let o = env.run(&["list"]);
        assert_eq!(o.status.code(), Some(2), "{remote}\n{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(key), "names {key}: {err}");
        assert!(
            !err.contains("hunter2"),
            "a password is never echoed: {err}"
        );
    }

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sftp.toml");
    let cfg = pronto_offsite::config::load(&example).unwrap_or_else(|e| panic!("{e:#}"));
    let sftp: Vec<_> = cfg
        .remotes
        .iter()
        .filter_map(|r| match &r.location {
            pronto_offsite::config::RemoteLocation::Sftp(c) => Some(c),
            _ => None,
        })
        .collect();
    assert!(!sftp.is_empty(), "examples/sftp.toml has an sftp:// remote");
    assert!(sftp
        .iter()
        .any(|c| c.identity_file.is_some() && c.connect_timeout.is_some()));
}

/// A small source, a config with the sftp remote `offsite` (its folder not made yet) and
/// one backup: the environment and the remote's folder on the server.
fn one_small_backup(sshd: &Sshd) -> (Env, PathBuf) {
    let env = Env::new();
    source_tree(&env, 1 << 10);
    write_config(&env, sshd, "", "");
    backup_id(&env, sshd);
    (env, remote_dir(sshd))
}

#[test]
fn read_only_commands_never_create_a_missing_sftp_folder() {
    let sshd = Sshd::start();
    let (env, remote) = one_small_backup(&sshd);
    for args in [&["list"][..], &["pull", "latest", "--from", "offsite"][..]] {
        let o = run(&env, &sshd, args);
        let all = text(&o);
        assert!(o.status.code().is_some_and(|c| c != 0), "{args:?}: {all}");
        assert!(
            all.contains("does not exist") && all.contains("srv/backups/pronto"),
            "{args:?} names the missing folder: {all}"
        );
        assert!(!remote.exists(), "{args:?} created {}", remote.display());
    }
    // Without `--from`, `latest` is the intact local archive: the pull works, still names
    // the folder it could not read, and creates nothing.
    let o = run(&env, &sshd, &["pull", "latest"]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert!(
        all.contains("using the local copy") && all.contains("srv/backups/pronto"),
        "{all}"
    );
    assert!(!remote.exists(), "pull latest created {}", remote.display());
}

/// The folder of an sftp remote this host initialized is gone (a disk not mounted on the
/// server): push does not create it again — that would fill the disk underneath — and
/// says how to start it afresh; `--init-remote` does.
#[test]
fn push_does_not_recreate_the_folder_of_a_known_sftp_remote() {
    let sshd = Sshd::start();
    let (env, remote) = one_small_backup(&sshd);
    let o = run(&env, &sshd, &["push"]);
    assert!(o.status.success(), "{}", text(&o));

    let moved = remote.with_file_name("unmounted");
    std::fs::rename(&remote, &moved).unwrap();
    let o = run(&env, &sshd, &["push"]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(1), "{all}");
    for want in [
        "this host initialized it on",
        "not mounted?",
        "nothing was created",
        "--init-remote",
    ] {
        assert!(all.contains(want), "lacks {want:?}: {all}");
    }
    assert!(!remote.exists(), "push created {}", remote.display());

    let o = run(&env, &sshd, &["push", "--init-remote"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(remote.join(".pronto-offsite-remote").is_file());
}

/// The local prune leans on a remote copy only when its recorded SHA-256 is the
/// manifest's: sftp listings carry no hash, so the prune reads the sidecar (a `head`) of
/// the archive it would delete; a sidecar naming other bytes keeps the local copy.
#[test]
fn the_local_prune_keeps_an_archive_whose_sftp_copy_records_other_bytes() {
    let sshd = Sshd::start();
    let env = Env::new();
    source_tree(&env, 1 << 10);
    write_config(
        &env,
        &sshd,
        "[retention]\nlast = 1\nmax_delete_fraction = 1\n",
        "[remotes.retention]\nlast = 5\n",
    );
    let remote = remote_dir(&sshd);
    let first = backup_id(&env, &sshd);
    std::thread::sleep(Duration::from_millis(1100));
    let o = run(&env, &sshd, &["push", "--no-prune"]);
    assert!(o.status.success(), "{}", text(&o));
    let sidecar = remote.join(format!("{}.sha256", archive_name(&first)));
    let good = std::fs::read_to_string(&sidecar).unwrap();
    let (hex, name) = good.split_once("  ").unwrap();
    let other: String = hex
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    std::fs::write(&sidecar, format!("{other}  {name}")).unwrap();

    backup_id(&env, &sshd);
    let o = run(&env, &sshd, &["prune", "--local"]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(
        all.contains(&format!(
            "WARNING offsite: {f}: its copy there does not match its manifest (offsite: {f} has sha256",
            f = archive_name(&first)
        )),
        "{all}"
    );
    local_archive(&env, &archive_name(&first));

    // With the sidecar right again, the copy is proved by its recorded hash (no read
    // back) and the local one goes.
    std::fs::write(&sidecar, &good).unwrap();
    let o = run(&env, &sshd, &["prune", "--local"]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(!all.contains("read back"), "{all}");
    assert!(
        all.contains(&format!("delete  {}", archive_name(&first)))
            && all.contains("local: deleted 1"),
        "{all}"
    );
}
