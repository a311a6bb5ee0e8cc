//! The one error type every backend converts its own errors into, at its edge.

/// Result with a [`BackendError`].
pub type Result<T> = std::result::Result<T, BackendError>;

/// What can go wrong talking to a remote. Messages never carry secrets.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A conditional create found the object already there.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The body did not match the SHA-256 it was sent with; nothing was stored.
    #[error("checksum mismatch for {key}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        key: String,
        expected: String,
        actual: String,
    },
    /// The multipart upload is unknown to the server (expired, aborted, or never existed).
    #[error("upload not found: {0}")]
    UploadNotFound(String),
    /// Credentials missing, wrong or without permission. Retrying does not help.
    #[error("access denied: {0}")]
    Auth(String),
    /// The server's SSH host key is unknown or has changed: nothing was sent. The message
    /// names the key the server offers and how to accept it. Retrying does not help, and
    /// neither do other credentials.
    #[error("{0}")]
    HostKey(String),
    /// A passing fault (timeout, connection reset, 429/5xx, SlowDown). Worth retrying.
    #[error("transient error: {msg}")]
    Transient {
        msg: String,
        /// How long the server asked us to wait, when it said.
        retry_after: Option<std::time::Duration>,
    },
    /// Anything else that retrying will not fix (bad request, quota, invalid config).
    #[error("{0}")]
    Permanent(String),
}

impl BackendError {
    /// Whether the replicator should try the same request again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BackendError::Transient { .. })
    }

    /// A transient error without a server-given delay.
    pub fn transient(msg: impl Into<String>) -> Self {
        BackendError::Transient {
            msg: msg.into(),
            retry_after: None,
        }
    }

    /// Classify a local I/O error (local disk backend, journals).
    pub fn from_io(context: &str, e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            NotFound => BackendError::NotFound(context.to_string()),
            PermissionDenied => BackendError::Auth(format!("{context}: {e}")),
            AlreadyExists => BackendError::AlreadyExists(context.to_string()),
            Interrupted | TimedOut | WouldBlock => {
                BackendError::transient(format!("{context}: {e}"))
            }
            _ => match io_advice(&e) {
                Some(a) => BackendError::Permanent(format!("{context}: {e} ({a})")),
                None => BackendError::Permanent(format!("{context}: {e}")),
            },
        }
    }
}

/// What to do about a local I/O error a user can act on — a full disk, a file size limit,
/// a read-only filesystem, a failing disk, a permission — or `None`.
pub fn io_advice(e: &std::io::Error) -> Option<&'static str> {
    Some(match e.raw_os_error()? {
        libc::ENOSPC | libc::EDQUOT => {
            "the disk (or quota) is full: free space there, e.g. with `prune`, or move the folder to a larger disk, then run again"
        }
        libc::EFBIG => {
            "the file grew past the largest file allowed here (`ulimit -f`, or the filesystem's limit): raise the limit or use another filesystem"
        }
        libc::EROFS => {
            "the filesystem is mounted read-only: remount it read-write or choose another folder"
        }
        libc::EIO => {
            "the disk reported an I/O error: check it (dmesg, smartctl) before trusting what is on it"
        }
        libc::EACCES | libc::EPERM => {
            "permission denied: run as the user that owns the folder, or fix its permissions (an immutable flag: lsattr)"
        }
        _ => return None,
    })
}
