//! The commands: one module each, what `cli` dispatches to. A command reads its flags and
//! the config, takes the lock when it changes something, calls the engine (catalog, plan,
//! replicate, local_backup, push_remotes, prune_locations, fetch, ...) and prints; a
//! command never imports another command (`tests/architecture.rs` checks it).

pub mod adopt;
pub mod backup;
pub mod doctor;
pub mod hook;
pub mod list;
pub mod policy;
pub mod prune;
pub mod pull;
pub mod push;
pub mod restore;
pub mod restore_drill;
pub mod status;
pub mod verify;
