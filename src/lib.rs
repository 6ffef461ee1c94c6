//! oauthapp-operator: a Kubernetes operator that owns the client secrets of OAuth applications.
//!
//! The pure core (`secret`, `id`, `controller::plan`) holds every decision; the reconciler and
//! the HTTP handlers only do I/O around it. All rotation triggers go through `rotation::rotate`.

pub mod admin;
pub mod api;
pub mod cached;
pub mod context;
pub mod controller;
pub mod crd;
pub mod error;
pub mod fair;
pub mod hasher;
pub mod id;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod plugin;
pub mod provider;
pub mod record;
pub mod repairs;
pub mod restart;
pub mod rotation;
pub mod schedule;
pub mod secret;
pub mod serve;
pub mod store;
pub mod watches;
