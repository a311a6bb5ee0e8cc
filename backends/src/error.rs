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
            _ => BackendError::Permanent(format!("{context}: {e}")),
        }
    }
}
