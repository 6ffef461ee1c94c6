//! oauthapp-operator: a Kubernetes operator that owns the client secrets of OAuth applications.
//!
//! The pure core (`secret`, `id`, `controller::plan`) holds every decision; the reconciler and
//! the HTTP handlers only do I/O around it. All rotation triggers go through `rotation::rotate`.

pub mod crd;
pub mod id;
pub mod secret;
