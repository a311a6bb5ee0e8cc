//! The commands: one module each, what `cli` dispatches to. A command uses the engine
//! (catalog, plan, replicate, archive, extract, sources, ...) and the config; the known
//! exceptions where one command calls another are listed in `tests/architecture.rs`.

pub mod abandoned_uploads;
pub mod adopt;
pub mod backup;
pub mod backup_and_push;
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
