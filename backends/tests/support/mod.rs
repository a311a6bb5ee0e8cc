//! Test support shared by the backend tests.
pub mod sshd;
