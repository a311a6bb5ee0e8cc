//! Exit codes, and the errors that choose one.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | error |
//! | 2 | usage or config error |
//! | 3 | partial: some remotes failed, others succeeded |
//! | 4 | verification failed |
//! | 5 | `status`: stale — the newest archive is older than the max age, a remote lags, or a remote could not be checked |
//! | 6 | `hook`: busy — another run held the one local lock longer than `[hook] lock_wait` |

//!
//! Two types carry them, and [`Exit::code`] is the one place that turns either into a number:
//! a command that ends without an error returns an [`Exit`] (ok, partial, verification
//! failed, stale, …); a command that fails returns an error, and [`Exit::of`] reads the
//! exit from it — an [`AppError`] (usage, verification) or the folder lock's
//! [`crate::lock::Busy`] decide it, anything else (a [`pronto_backends::BackendError`], an
//! I/O error) is a plain error, exit 1.

/// How a run ends: one variant per row of the table above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok,
    Error,
    Usage,
    Partial,
    VerifyFailed,
    Stale,
    Busy,
}

impl Exit {
    /// The process exit code: the one place the numbers are written.
    pub fn code(self) -> i32 {
        match self {
            Exit::Ok => 0,
            Exit::Error => 1,
            Exit::Usage => 2,
            Exit::Partial => 3,
            Exit::VerifyFailed => 4,
            Exit::Stale => 5,
            Exit::Busy => 6,
        }
    }

    /// The exit of a command that works on several locations (remotes, and the local
    /// folder where it is one of them): ok when none failed, an error when every one did,
    /// partial when some did. The one place this rule is written.
    pub fn for_locations(failed: usize, total: usize) -> Exit {
        match failed {
            0 => Exit::Ok,
            n if n >= total => Exit::Error,
            _ => Exit::Partial,
        }
    }

    /// The exit an error maps to: the first [`AppError`] in its chain decides; a lock held
    /// by another run is [`Exit::Busy`] only where the caller says so (`hook`), so here it
    /// is a plain error like everything else.
    pub fn of(e: &anyhow::Error) -> Exit {
        e.chain()
            .find_map(|c| c.downcast_ref::<AppError>())
            .map_or(Exit::Error, |a| match a {
                AppError::Usage(_) => Exit::Usage,
                AppError::Verification(_) => Exit::VerifyFailed,
            })
    }
}

/// Shown as its number (`exit 3`).
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// Written as its number (`"exit_code": 3` in JSON reports).
impl serde::Serialize for Exit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.code())
    }
}

/// The errors the application raises itself to choose an exit code; the rest of a failure
/// is context on an `anyhow::Error`. The backends raise [`pronto_backends::BackendError`].
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A bad flag, config value or input that the user must fix (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Data that does not check out: a hash, a manifest, a decryption, an archive entry
    /// (exit 4).
    #[error("{0}")]
    Verification(String),
}

/// A usage or config error (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    AppError::Usage(message.into()).into()
}

/// A verification failure (exit 4).
pub fn verification(message: impl Into<String>) -> anyhow::Error {
    AppError::Verification(message.into()).into()
}

/// Whether `e` is (or wraps) a verification failure.
pub fn is_verification(e: &anyhow::Error) -> bool {
    Exit::of(e) == Exit::VerifyFailed
}

/// What to do about the operating-system error behind `e`, if it is one a user can act on:
/// a full disk, a file size limit, a read-only filesystem, a failing disk, a permission.
pub fn advice(e: &anyhow::Error) -> Option<&'static str> {
    e.chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .and_then(pronto_backends::io_advice)
}

/// The error as one line (`{e:#}`), with [`advice`] appended when there is some.
pub fn describe(e: &anyhow::Error) -> String {
    match advice(e) {
        Some(a) => format!("{e:#} ({a})"),
        None => format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn some_failed_locations_make_a_partial_run_and_all_failed_an_error() {
        assert_eq!(Exit::for_locations(0, 0), Exit::Ok);
        assert_eq!(Exit::for_locations(0, 3), Exit::Ok);
        assert_eq!(Exit::for_locations(1, 3), Exit::Partial);
        assert_eq!(Exit::for_locations(2, 3), Exit::Partial);
        assert_eq!(Exit::for_locations(3, 3), Exit::Error);
    }

    #[test]
    fn an_error_exits_by_the_first_app_error_in_its_chain() {
        use anyhow::Context;
        let wrapped = Err::<(), _>(usage("bad flag"))
            .context("reading the config")
            .unwrap_err();
        assert_eq!(Exit::of(&wrapped).code(), 2);
        let v = Err::<(), _>(verification("hash mismatch"))
            .context("pulling")
            .unwrap_err();
        assert_eq!(Exit::of(&v).code(), 4);
        assert!(is_verification(&v));
        let io = anyhow::Error::from(std::io::Error::other("disk on fire"));
        assert_eq!(Exit::of(&io).code(), 1);
        let codes: Vec<i32> = [
            Exit::Ok,
            Exit::Error,
            Exit::Usage,
            Exit::Partial,
            Exit::VerifyFailed,
            Exit::Stale,
            Exit::Busy,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(
            codes,
            [0, 1, 2, 3, 4, 5, 6],
            "the table in docs/commands.md"
        );
    }
}
