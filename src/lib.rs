//! oauthapp-operator: a Kubernetes operator that owns the client secrets of OAuth applications.
//!
//! The crate is built in layers; each uses only the layers below it (`tests/layers.rs` fails
//! on a `use` that points up). From the bottom:
//!
//! - [`model`]: what an app, its Secret, its record and its status are. Pure: no I/O.
//! - [`runtime`]: what one operator process shares: the watch caches, the hasher, the leader
//!   Lease, metrics, the limits, and the writes everyone makes (status, events).
//! - [`provider`]: identity providers an app is registered in (Keycloak).
//! - [`rotation`]: the one `rotate()` that every trigger uses, step by step.
//! - [`controller`]: what should happen to an app now (the planner) and the reconcile loop.
//! - [`api`]: the REST API (it reaches the controller only through `rotation::rotate`).
//! - [`plugin`]: the `kubectl oauthapp` plugin (the model only).
//!
//! `docs/architecture.md` draws the layers and the way a rotation travels through them.

pub mod api;
pub mod controller;
pub mod model;
pub mod plugin;
pub mod provider;
pub mod rotation;
pub mod runtime;
