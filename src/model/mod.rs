//! The model: what an app, its Secret, its signed record and its status are, as pure functions
//! and types. Nothing here does I/O, holds shared state or spawns a task; everything here can be
//! tested without a cluster or a runtime.
//!
//! May use: nothing else in the crate.

pub mod crd;
pub mod id;
pub mod managed;
pub mod provider;
pub mod record;
pub mod rotated;
pub mod schedule;
pub mod secret;
pub mod status;
