//! Exit codes and the error that carries one.
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

use std::fmt;

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_PARTIAL: i32 = 3;
pub const EXIT_VERIFY: i32 = 4;
pub const EXIT_STALE: i32 = 5;
pub const EXIT_BUSY: i32 = 6;

/// The exit code of a command that works on several locations (remotes, and the local
/// folder where it is one of them): 0 when none failed, 1 when every one did, 3 (partial)
/// when some did. The one place this rule is written.
pub fn code_for_locations(failed: usize, total: usize) -> i32 {
    match failed {
        0 => EXIT_OK,
        n if n >= total => EXIT_ERROR,
        _ => EXIT_PARTIAL,
    }
}

/// An error that decides the process's exit code. Anything else exits 1.
#[derive(Debug)]
pub struct ExitError {
    pub code: i32,
    pub message: String,
}

impl fmt::Display for ExitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitError {}

/// A usage or config error (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    ExitError {
        code: EXIT_USAGE,
        message: message.into(),
    }
    .into()
}

/// A verification failure (exit 4).
pub fn verification(message: impl Into<String>) -> anyhow::Error {
    ExitError {
        code: EXIT_VERIFY,
        message: message.into(),
    }
    .into()
}

/// The exit code an error maps to.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<ExitError>().map(|x| x.code))
        .unwrap_or(EXIT_ERROR)
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
        assert_eq!(code_for_locations(0, 0), EXIT_OK);
        assert_eq!(code_for_locations(0, 3), EXIT_OK);
        assert_eq!(code_for_locations(1, 3), EXIT_PARTIAL);
        assert_eq!(code_for_locations(2, 3), EXIT_PARTIAL);
        assert_eq!(code_for_locations(3, 3), EXIT_ERROR);
    }
}
