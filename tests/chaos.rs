//! The chaos test (issue 15, Deliver 8): random interleavings of `backup`, `push`,
//! `prune`, `pin`/`unpin`, `push --cleanup` and `kill -9` of the running command,
//! against a file:// remote and an S3 remote (LocalStack, started by the shared support
//! code), with foreign files and uploads planted in both remotes. After every round:
//!
//! - **the invariant**: every archive the retention keeps (the newest `LAST` of all
//!   archives that exist complete anywhere or that a backup reported, plus the pinned
//!   ones) has a complete copy whose bytes hash to its manifest somewhere (the local
//!   folder, the file:// remote, or S3 as `pull --remote s3` proves);
//! - no foreign file, object or upload changed;
//! - every kept archive restores (`pull ID --to DIR`).
//!
//! Operations run one after the other (a kill lands while one runs), and in a second test
//! also two at once (pairs of backup, push, prune and push --cleanup racing); the seed is
//! printed and `PRONTO_CHAOS_SEED` replays it. About a minute by default;
//! `PRONTO_CHAOS_SECS` (time budget) and `PRONTO_CHAOS_ROUNDS` (at most this many
//! rounds) make it longer or shorter. The closing line gives rounds, operations and
//! kills survived.

mod support;

#[path = "../backends/tests/support/localstack.rs"]
mod localstack;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::remotes::{file_remote, s3_remote, Keys};
use support::{file_digest, files_under, text, Env};

const KEYS: Keys = Keys {
    id: "AKIAPRONTOCHAOS00042",
    secret: "chaos-secret-must-never-be-printed-01234",
};
/// `[retention] last`: the policy of every location.
const LAST: usize = 3;
const P: &str = "pronto-app-backup";

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        support::xorshift(&mut self.0) % n.max(1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

fn bin(env: &Env) -> Command {
    let mut c = KEYS.bin(env);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Run to the end; a panic of the tool is a failure whatever the exit code.
fn run(env: &Env, args: &[&str]) -> Output {
    let o = bin(env).args(args).output().unwrap();
    assert_no_panic(&o, args);
    o
}

#[track_caller]
fn assert_no_panic(o: &Output, args: &[&str]) {
    let t = text(o);
    assert!(
        !t.contains("panicked at") && o.status.code() != Some(101),
        "{args:?} panicked:\n{t}"
    );
}

/// Run, and SIGKILL the process after `after` if it still runs; returns the output and
/// whether the kill landed.
fn run_killed(env: &Env, args: &[&str], after: Duration) -> (Output, bool) {
    let mut child = bin(env).args(args).spawn().unwrap();
    let deadline = Instant::now() + after;
    let mut killed = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() >= deadline {
            // SAFETY: the pid is our own child's, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = child.wait_with_output().unwrap();
    if !killed {
        assert_no_panic(&o, args);
    }
    // A process that finished just before the signal was not killed.
    let killed = killed && o.status.code().is_none();
    (o, killed)
}

/// The id in an archive or manifest file name, when it is one of ours.
fn id_of(file: &str) -> Option<String> {
    let rest = file.strip_prefix(&format!("{P}-"))?;
    let id = rest.strip_suffix(".tar.gz")?;
    (id.len() == 15 && id.as_bytes()[8] == b'-').then(|| id.to_string())
}

/// `sha256` and `size` of a manifest file, when readable.
fn manifest_of(path: &Path) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some((v["sha256"].as_str()?.to_string(), v["size"].as_u64()?))
}

/// Ids with a complete copy in `dir` (recursively: the local tiers) whose bytes hash to
/// their manifest. Only files directly named like ours count (not other hosts' folders).
fn verified_in(dir: &Path, recursive: bool) -> BTreeSet<String> {
    let files = if recursive {
        files_under(dir)
    } else {
        std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    files
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let id = id_of(&name)?;
            let (sha, size) = manifest_of(&p.with_file_name(format!("{name}.manifest.json")))?;
            let bytes = std::fs::read(&p).ok()?;
            use sha2::Digest;
            (bytes.len() as u64 == size && hex::encode(sha2::Sha256::digest(&bytes)) == sha)
                .then_some(id)
        })
        .collect()
}

/// Ids whose archive and manifest are both in the S3 namespace `ns` (`prod/host-1/`).
fn complete_on_s3(ls: &localstack::LocalStack, bucket: &str, ns: &str) -> BTreeSet<String> {
    let keys: BTreeSet<String> = ls.keys(bucket).into_iter().collect();
    keys.iter()
        .filter_map(|k| {
            let file = k.strip_prefix(ns)?;
            let id = id_of(file)?;
            keys.contains(&format!("{k}.manifest.json")).then_some(id)
        })
        .collect()
}

/// Foreign things planted in the remotes, and how to see that they did not change.
struct Foreign {
    nas: BTreeMap<String, String>,
    s3_keys: Vec<String>,
    s3_uploads: Vec<String>,
}

fn plant_foreign(env: &Env, ls: &localstack::LocalStack, bucket: &str) -> Foreign {
    let nas = env.remote();
    let files = [
        ".x.tmp-abcdefghijkl",
        "notes/.todo.txt.tmp-abcdefghijkl",
        "notes/todo.txt",
        "other-host/pronto-app-backup-20200101-000000.tar.gz",
        "other-host/pronto-app-backup-20200101-000000.tar.gz.manifest.json",
        ".pronto-app-backup-20200102-000000.tar.gz.tmp-abcdefghijkl",
    ];
    for f in files {
        let p = nas.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("not yours: {f}\n")).unwrap();
    }
    let s3_keys = vec![
        "prod/other-tool.bin".to_string(),
        "prod/host-1/database.dump".to_string(),
        "prod/host-2/pronto-app-backup-20200101-000000.tar.gz".to_string(),
    ];
    for k in &s3_keys {
        let (status, body) =
            localstack::http("PUT", ls.port, &format!("/{bucket}/{k}"), b"not yours").unwrap();
        assert_eq!(status, 200, "put {k}: {body}");
    }
    let s3_uploads = vec![
        "prod/host-1/other-program.bin".to_string(),
        "prod/host-1/pronto-app-backup-20200102-000000.tar.gz".to_string(),
        "prod/host-2/pronto-app-backup-20200103-000000.tar.gz".to_string(),
    ];
    for k in &s3_uploads {
        let (status, body) =
            localstack::http("POST", ls.port, &format!("/{bucket}/{k}?uploads"), &[]).unwrap();
        assert_eq!(status, 200, "create upload {k}: {body}");
    }
    Foreign {
        nas: foreign_on_nas(env, &files),
        s3_keys,
        s3_uploads,
    }
}

fn foreign_on_nas(env: &Env, files: &[&str]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|f| {
            let p = env.remote().join(f);
            (f.to_string(), file_digest(&p))
        })
        .collect()
}

#[track_caller]
fn check_foreign(env: &Env, ls: &localstack::LocalStack, bucket: &str, f: &Foreign, ctx: &str) {
    let names: Vec<&str> = f.nas.keys().map(String::as_str).collect();
    for n in &names {
        assert!(
            env.remote().join(n).exists(),
            "{ctx}: foreign file {n} was removed from the file:// remote"
        );
    }
    assert_eq!(
        foreign_on_nas(env, &names),
        f.nas,
        "{ctx}: a foreign file changed"
    );
    let keys: BTreeSet<String> = ls.keys(bucket).into_iter().collect();
    for k in &f.s3_keys {
        assert!(keys.contains(k), "{ctx}: foreign object {k} was deleted");
    }
    let uploads = ls.uploads(bucket);
    for k in &f.s3_uploads {
        assert!(
            uploads.contains(k),
            "{ctx}: foreign upload {k} was aborted (left: {uploads:?})"
        );
    }
}

/// The invariant and the restores, after a round.
#[allow(clippy::too_many_arguments)]
fn check_invariant(
    env: &Env,
    ls: &localstack::LocalStack,
    bucket: &str,
    reported: &BTreeSet<String>,
    pins: &BTreeSet<String>,
    scratch: &Path,
    ctx: &str,
) {
    let local = verified_in(&env.backups(), true);
    let nas = verified_in(&env.remote(), false);
    let s3 = complete_on_s3(ls, bucket, "prod/host-1/");
    let mut universe: BTreeSet<String> = reported.clone();
    universe.extend(local.iter().cloned());
    universe.extend(nas.iter().cloned());
    universe.extend(s3.iter().cloned());
    let mut kept: BTreeSet<String> = universe.iter().rev().take(LAST).cloned().collect();
    kept.extend(pins.iter().filter(|p| universe.contains(*p)).cloned());
    for id in &kept {
        let somewhere = local.contains(id)
            || nas.contains(id)
            || (s3.contains(id) && {
                let to = scratch.join(format!("s3-{id}"));
                let o = run(
                    env,
                    &["pull", id, "--remote", "s3", "--to", to.to_str().unwrap()],
                );
                let _ = std::fs::remove_dir_all(&to);
                o.status.success()
            });
        assert!(
            somewhere,
            "{ctx}: INVARIANT BROKEN: {id} is kept by the retention but has no complete, \
             verified copy anywhere (local {local:?}, nas {nas:?}, s3 {s3:?})"
        );
        let to = scratch.join(format!("restore-{id}"));
        if nas.contains(id) || s3.contains(id) {
            // Off-site: `pull --to` fetches (or takes the intact local copy), verifies
            // against the manifest and extracts.
            let o = run(env, &["pull", id, "--to", to.to_str().unwrap()]);
            assert!(
                o.status.success(),
                "{ctx}: kept archive {id} does not restore:\n{}",
                text(&o)
            );
        } else {
            // Only local (not pushed yet; `pull` reads remotes): extract it with tar.
            let file = files_under(&env.backups())
                .into_iter()
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n == format!("{P}-{id}.tar.gz").as_str())
                })
                .unwrap();
            std::fs::create_dir_all(&to).unwrap();
            let o = Command::new("tar")
                .arg("-xzf")
                .arg(&file)
                .arg("-C")
                .arg(&to)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{ctx}: {id} does not extract: {}",
                text(&o)
            );
        }
        assert!(
            files_under(&to).iter().any(|p| p.ends_with("index.html")),
            "{ctx}: {id} restored without its files: {:?}",
            files_under(&to)
        );
        std::fs::remove_dir_all(&to).unwrap();
    }
}

/// Runs `a` and `b` at once (two processes racing for the lock, the remotes and the
/// lease), SIGKILLs `a` after `kill_a` when given; returns both outputs and whether the
/// kill landed.
fn run_pair(env: &Env, a: &[&str], b: &[&str], kill_a: Option<Duration>) -> (Output, Output, bool) {
    let mut first = bin(env).args(a).spawn().unwrap();
    let second = bin(env).args(b).spawn().unwrap();
    let mut killed = false;
    if let Some(after) = kill_a {
        let deadline = Instant::now() + after;
        while first.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                // SAFETY: the pid is our own child's, not yet reaped.
                unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
                killed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (oa, ob) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    let killed = killed && oa.status.code().is_none();
    if !killed {
        assert_no_panic(&oa, a);
    }
    assert_no_panic(&ob, b);
    (oa, ob, killed)
}

/// Sequential operations (one command at a time, a kill landing while one runs).
#[test]
fn chaos_keeps_the_invariant_under_random_interleavings_and_kills() {
    chaos(false, 60);
}

/// The same with two commands at once (backup, push, prune and push --cleanup in pairs,
/// one of the pair sometimes killed): the lock, the lease and the journals must keep the
/// invariant when commands really race. About 30 s by default.
#[test]
fn chaos_keeps_the_invariant_with_two_commands_at_once() {
    chaos(true, 30);
}

fn chaos(concurrent: bool, default_secs: u64) {
    let seed = env_u64("PRONTO_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    let budget = Duration::from_secs(env_u64("PRONTO_CHAOS_SECS").unwrap_or(default_secs));
    let max_rounds = env_u64("PRONTO_CHAOS_ROUNDS").unwrap_or(u64::MAX);
    eprintln!(
        "chaos{}: seed {seed} (PRONTO_CHAOS_SEED={seed} replays it)",
        if concurrent { " (two at once)" } else { "" }
    );
    let mut rng = Rng(seed);

    let ls = localstack::shared();
    let bucket = ls.new_bucket("chaos");
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), "<h1>pronto</h1>\n").unwrap();
    // Big enough for multipart uploads (parts of 8 MiB) that a kill can interrupt.
    support::write_noise(&src.join("noise.bin"), 10 << 20, seed);
    std::fs::create_dir_all(env.remote()).unwrap();
    let cfg = format!(
        "[local]\ndir = \"backups\"\nlevel = 1\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n\n[retention]\nlast = {LAST}\nmax_delete_fraction = 1\n{}{}",
        file_remote("nas", &env.remote(), ""),
        s3_remote(
            "s3",
            &ls.endpoint,
            &format!("{bucket}/prod"),
            "host_id = \"host-1\""
        ),
    );
    std::fs::write(env.config(), cfg).unwrap();
    let foreign = plant_foreign(&env, ls, &bucket);
    let scratch = env.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();

    let started = Instant::now();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut pins: BTreeSet<String> = BTreeSet::new();
    let (mut rounds, mut ops, mut kills) = (0u64, 0u64, 0u64);
    let mut last_backup = Instant::now() - Duration::from_secs(2);
    while rounds < max_rounds && (rounds == 0 || started.elapsed() < budget) {
        rounds += 1;
        let n_ops = 1 + rng.below(4);
        for _ in 0..n_ops {
            ops += 1;
            let kill_after = (rng.below(3) == 0).then(|| Duration::from_millis(rng.below(1500)));
            let op = rng.below(10);
            let args: Vec<String> = match op {
                0..=2 => {
                    // A new archive (names are per second: never two in one second).
                    if let Some(wait) =
                        Duration::from_millis(1100).checked_sub(last_backup.elapsed())
                    {
                        std::thread::sleep(wait);
                    }
                    last_backup = Instant::now();
                    std::fs::write(src.join("round.txt"), format!("round {rounds}\n")).unwrap();
                    vec!["backup".into()]
                }
                3..=5 => vec!["push".into()],
                6 => vec!["prune".into()],
                7 => vec!["push".into(), "--cleanup".into()],
                _ => {
                    let known: Vec<&String> = reported.iter().collect();
                    if known.is_empty() {
                        continue;
                    }
                    let id = known[rng.below(known.len() as u64) as usize].clone();
                    let pin = !pins.contains(&id);
                    // A pin keeps what exists; it cannot bring back an archive that every
                    // location had already pruned (pin accepts such an id, with a warning).
                    let exists = verified_in(&env.backups(), true).contains(&id)
                        || verified_in(&env.remote(), false).contains(&id)
                        || complete_on_s3(ls, &bucket, "prod/host-1/").contains(&id);
                    let o = run(&env, &[if pin { "pin" } else { "unpin" }, &id]);
                    eprintln!(
                        "round {rounds}: {} {id} (exists: {exists}) -> {:?}",
                        if pin { "pin" } else { "unpin" },
                        o.status.code()
                    );
                    if o.status.success() && (exists || !pin) {
                        if pin {
                            pins.insert(id);
                        } else {
                            pins.remove(&id);
                        }
                    }
                    continue;
                }
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if concurrent && rng.below(2) == 0 {
                // A second command at the same time: never a second backup (names are
                // per second), and not a pin (whether a racing prune ran before it is
                // what the sequential rounds check).
                let other: &[&str] = match rng.below(4) {
                    0 => &["push"],
                    1 => &["prune"],
                    2 => &["push", "--cleanup"],
                    _ => &["push", "--no-prune"],
                };
                let (oa, ob, killed) = run_pair(&env, &args, other, kill_after);
                kills += u64::from(killed);
                ops += 1;
                eprintln!(
                    "round {rounds}: {args:?}{} and {other:?} at once -> {:?}, {:?}",
                    kill_after
                        .map(|k| format!(" (kill after {k:?})"))
                        .unwrap_or_default(),
                    oa.status.code(),
                    ob.status.code()
                );
                if args == ["backup"] && oa.status.success() {
                    reported.insert(String::from_utf8_lossy(&oa.stdout).trim().to_string());
                }
                continue;
            }
            let o = match kill_after {
                Some(after) => {
                    let (o, killed) = run_killed(&env, &args, after);
                    if killed {
                        kills += 1;
                    }
                    o
                }
                None => run(&env, &args),
            };
            eprintln!(
                "round {rounds}: {args:?}{} -> {:?}",
                kill_after
                    .map(|k| format!(" (kill after {k:?})"))
                    .unwrap_or_default(),
                o.status.code()
            );
            if args == ["backup"] && o.status.success() {
                let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
                assert!(
                    id_of(&format!("{P}-{id}.tar.gz")).is_some(),
                    "backup printed {id:?}"
                );
                reported.insert(id);
            }
        }
        let ctx = format!("seed {seed}, round {rounds}");
        check_foreign(&env, ls, &bucket, &foreign, &ctx);
        check_invariant(&env, ls, &bucket, &reported, &pins, &scratch, &ctx);
    }
    // Nothing may be left half-way: one clean push and cleanup, then every check again.
    let o = run(&env, &["push", "--cleanup"]);
    let ctx = format!("seed {seed}, after the final push --cleanup ({})", text(&o));
    check_foreign(&env, ls, &bucket, &foreign, &ctx);
    check_invariant(&env, ls, &bucket, &reported, &pins, &scratch, &ctx);
    eprintln!(
        "chaos{}: seed {seed}: {rounds} rounds, {ops} operations, {kills} kills survived, \
         {} archives made, invariant held after every round",
        if concurrent { " (two at once)" } else { "" },
        reported.len()
    );
}
