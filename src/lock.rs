//! The one local lock: every command that changes the backup folder or a remote
//! (`backup`, `push`, `prune`, `pin`/`unpin`, `pull` into the folder, a restore that
//! takes a safety backup, `hook`) holds `.pronto-offsite.lock` in the backup folder
//! while it runs, so no two of them ever overlap on one host. Read-only commands
//! (`list`, `status`, `verify`, `doctor`, dry runs) never take it and create nothing.
//!
//! - **One waiter.** [`acquire`] waits up to the given time, logging once who holds
//!   the lock (pid, command, since when, from what the holder wrote into the file), and
//!   gives up with a [`Busy`] error naming that holder. `hook` turns `Busy` into exit 6;
//!   every other command exits 1 with the message.
//! - **Held by the process.** The lock belongs to the process that took it: a step that
//!   asks for it again while the process holds it (the backup, push and prune inside a
//!   `hook`, the safety backup inside a restore) gets it at once, and the file is
//!   released when the outermost guard drops. So an outer command never deadlocks on its
//!   own inner steps, and nothing needs the guard passed down by hand.
//! - **A crash releases it.** It is an `flock(2)` (std's `File::try_lock`): the kernel drops it when the holder
//!   dies, so a killed run never leaves a lock behind (the file stays, unlocked).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{SubsecRound, Utc};

/// The lock file in the backup folder.
pub const LOCK_FILE: &str = ".pronto-offsite.lock";
/// How long a command waits for another run holding the lock (`hook`: `[hook] lock_wait`).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(600);

/// The lock is held by another process and was not released within the wait.
#[derive(Debug)]
pub struct Busy {
    /// The folder whose lock it is.
    pub dir: PathBuf,
    /// Who holds it: `pid N, command C, since T` (what the holder wrote).
    pub holder: Holder,
    /// How long this run waited.
    pub waited: Duration,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "another pronto-offsite {} ({}) still holds the lock on {} after waiting {}; \
             this run changed nothing. Try again when it has finished",
            self.holder.command.as_deref().unwrap_or("run"),
            self.holder.describe(),
            self.dir.join(LOCK_FILE).display(),
            humantime::format_duration(self.waited)
        )
    }
}

impl std::error::Error for Busy {}

/// What the holder of the lock wrote into the lock file.
#[derive(Debug, Clone, Default)]
pub struct Holder {
    pub pid: Option<u32>,
    pub command: Option<String>,
    pub since: Option<String>,
}

impl Holder {
    /// Parse the lock file's `key value` lines (an older version wrote only the pid).
    fn parse(text: &str) -> Holder {
        let mut h = Holder::default();
        for line in text.lines().map(str::trim) {
            if let Some(p) = line.strip_prefix("pid ") {
                h.pid = p.trim().parse().ok();
            } else if let Some(c) = line.strip_prefix("command ") {
                h.command = Some(c.trim().to_string());
            } else if let Some(s) = line.strip_prefix("since ") {
                h.since = Some(s.trim().to_string());
            } else if let Ok(p) = line.parse() {
                h.pid = Some(p);
            }
        }
        h
    }

    /// `pid 123, since 2026-02-01T17:05:21+00:00` (what is known).
    pub fn describe(&self) -> String {
        let mut parts = vec![match self.pid {
            Some(p) => format!("pid {p}"),
            None => "pid unknown".to_string(),
        }];
        if let Some(s) = &self.since {
            parts.push(format!("since {s}"));
        }
        parts.join(", ")
    }
}

/// Who holds the lock of `dir` now, as its holder wrote it.
pub fn holder(dir: &Path) -> Holder {
    let mut s = String::new();
    let _ = File::open(dir.join(LOCK_FILE)).and_then(|mut f| f.read_to_string(&mut s));
    Holder::parse(&s)
}

/// A lock this process holds: the open, flocked file and how many guards share it.
struct Held {
    dir: PathBuf,
    _file: File,
    depth: usize,
}

/// Every lock this process holds (normally one).
static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<Held>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Proof that this process holds the lock of a backup folder; released when the last
/// guard of the process drops.
#[must_use = "the lock is released when the guard drops"]
pub struct FolderLock {
    dir: PathBuf,
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        let mut all = held();
        if let Some(i) = all.iter().position(|h| h.dir == self.dir) {
            all[i].depth -= 1;
            if all[i].depth == 0 {
                // Closing the file releases the flock.
                all.remove(i);
            }
        }
    }
}

/// Take the lock of the backup folder `dir` for `command` (`backup`, `prune`, ...),
/// waiting up to `wait` for another run to finish. At once when this process already
/// holds it. Gives up with a [`Busy`] error (find it with [`busy`]) naming the holder.
pub fn acquire(dir: &Path, command: &str, wait: Duration) -> Result<FolderLock> {
    let key = dir.to_path_buf();
    if let Some(h) = held().iter_mut().find(|h| h.dir == key) {
        h.depth += 1;
        return Ok(FolderLock { dir: key });
    }
    crate::fsutil::create_private_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    let start = Instant::now();
    let mut told = false;
    loop {
        // std's `try_lock` is an flock(LOCK_EX | LOCK_NB) on Linux.
        match file.try_lock() {
            Ok(()) => {
                let _ = file.set_len(0);
                let _ = file.rewind();
                let _ = write!(
                    file,
                    "pid {}\ncommand {command}\nsince {}\n",
                    std::process::id(),
                    Utc::now().trunc_subsecs(0).to_rfc3339()
                );
                let _ = file.flush();
                held().push(Held {
                    dir: key.clone(),
                    _file: file,
                    depth: 1,
                });
                return Ok(FolderLock { dir: key });
            }
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
        }
        let who = holder(dir);
        if start.elapsed() >= wait {
            return Err(Busy {
                dir: key,
                holder: who,
                waited: wait,
            }
            .into());
        }
        if !told {
            tracing::info!(
                "another {} run ({}) holds the lock on {}; waiting up to {}",
                who.command.as_deref().unwrap_or("run"),
                who.describe(),
                dir.display(),
                humantime::format_duration(wait)
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The [`Busy`] error in `e`'s chain, if the lock was what failed.
pub fn busy(e: &anyhow::Error) -> Option<&Busy> {
    e.chain().find_map(|c| c.downcast_ref::<Busy>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_takes_its_own_lock_again_and_releases_it_with_the_last_guard() {
        let dir = tempfile::tempdir().unwrap();
        let outer = acquire(dir.path(), "hook", Duration::ZERO).unwrap();
        let inner = acquire(dir.path(), "backup", Duration::ZERO).unwrap();
        drop(outer);
        // Still held (the inner guard): another open file description cannot take it.
        let f = File::open(dir.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(
            f.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        assert_eq!(holder(dir.path()).command.as_deref(), Some("hook"));
        drop(inner);
        f.try_lock().unwrap();
    }

    #[test]
    fn holders_of_older_versions_are_named_by_pid() {
        let h = Holder::parse("4242\n");
        assert_eq!(h.pid, Some(4242));
        assert_eq!(h.describe(), "pid 4242");
    }
}
