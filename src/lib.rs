//! pronto-offsite: back up a self-hosted platform and keep the backups safe off-site.
//!
//! The layers, each importing only those below it (docs/architecture.md; `tests/architecture.rs`
//! fails on an import circle):
//!
//! 1. [`cli`]: arguments, dispatch, `-q` ([`quiet`]).
//! 2. [`cmd`]: one module per command (`backup`, `push`, `prune`, `pull`, `hook`, ...).
//! 3. The engine: the workflows commands share — [`local_backup`] (a backup into the
//!    folder), [`backup_and_push`] (uploading while archiving), [`push_remotes`],
//!    [`prune_locations`], [`fetch`] (a verified archive from the folder or a remote) —
//!    over sources ([`source`]) → [`archive`] (one streaming pass) → the local
//!    [`catalog`] → [`retention`] and [`plan`] (pure) → [`replicate`] (the one upload and
//!    download loop) → remotes ([`remotes`], wrapped by [`host_namespace`] and [`bwlimit`])
//!    → [`extract`] (and [`tree_copy`] across file systems); around them [`lock`],
//!    [`lease`], [`journal`], [`pins`], [`marker`], [`manifest`], [`crypto`], [`report`],
//!    [`metrics`], [`notify`].
//! 4. [`config`] (every raw and validated type) and the leaves: [`error`] (exit codes),
//!    [`retry`], [`fsutil`], [`dir_at`] (entries reached relative to an open folder),
//!    [`posix_acl`], [`secrets`].
//! 5. The `pronto_backends` crate: the `Backend` trait and its four implementations.

pub mod cli;
pub mod cmd;
pub mod quiet;

pub mod abandoned_uploads;
pub mod archive;
pub mod backup_and_push;
pub mod bwlimit;
pub mod catalog;
pub mod crypto;
pub mod exclude;
pub mod extract;
pub mod fetch;
pub mod host_namespace;
pub mod journal;
pub mod lease;
pub mod live_swap;
pub mod local_backup;
pub mod lock;
pub mod logging;
pub mod manifest;
pub mod marker;
pub mod metrics;
pub mod notify;
pub mod owners;
pub mod pins;
pub mod plan;
pub mod posix_acl;
pub mod progress;
pub mod prune_locations;
pub mod push_remotes;
pub mod remotes;
pub mod repair;
pub mod replicate;
pub mod report;
pub mod retention;
pub mod source;
pub mod tiers;
pub mod tree_copy;

pub mod config;
pub mod dir_at;
pub mod error;
pub mod fsutil;
pub mod retry;
pub mod secrets;

/// `n` bytes of deterministic noise (xorshift from `seed`): incompressible test content
/// for the library's unit tests (the integration tests have `tests/support`'s).
#[cfg(test)]
pub(crate) fn test_noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
