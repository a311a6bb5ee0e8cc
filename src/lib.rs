//! pronto-offsite: back up a self-hosted platform and keep the backups safe off-site.
//!
//! Flow: sources → [`archive`] (one streaming pass) → local [`catalog`] →
//! [`retention`] (pure) → [`plan`] (pure) → [`replicate`] → remotes
//! (`pronto_backends::Backend`) → [`pull`] and [`extract`].

pub mod adopt;
pub mod archive;
pub mod backup;
pub mod bwlimit;
pub mod catalog;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod doctor;
pub mod drill;
pub mod error;
pub mod exclude;
pub mod extract;
pub mod fsutil;
pub mod hook;
pub mod journal;
pub mod lease;
pub mod list;
pub mod lock;
pub mod logging;
pub mod manifest;
pub mod marker;
pub mod metrics;
pub mod namespace;
pub mod notify;
pub mod owners;
pub mod pins;
pub mod plan;
pub mod policy_cmd;
pub mod progress;
pub mod prune;
pub mod pull;
pub mod push;
pub mod quiet;
pub mod remotes;
pub mod replicate;
pub mod report;
pub mod restore;
pub mod retention;
pub mod retry;
pub mod secrets;
pub mod source;
pub mod status;
pub mod stream_upload;
pub mod verify;
