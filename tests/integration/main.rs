//! Integration tests, all in one binary so that they share one real control plane
//! (kube-apiserver + etcd + kube-controller-manager, started by `support::control_plane`).

mod api;
mod chart;
mod consumers;
mod controlplane;
mod daytwo;
mod faults;
mod grace;
mod keycloak;
mod monitoring;
mod operations;
mod operator;
mod plugin;
mod reads;
mod schedule;
mod soak;
mod support;
mod tenants;
mod trust;
mod upgrade;
