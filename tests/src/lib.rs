//! The test world: a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager), a real OIDC provider (Keycloak) and a real Redis,
//! started on loopback by the project's own code; on request also a local
//! image registry with BuildKit, and a real node (containerd, kubelet,
//! kube-proxy, kube-scheduler, CoreDNS) whose pods reach all of them.
//!
//! Tests reach it through [`World::shared`], which attaches to a world that
//! `tests/cluster up` already started (the `ATTACH_WORLD` variable names its
//! `world.json`), or else starts a private one through the `attach-harness`
//! supervisor that stops everything when the test process exits, however it
//! exits.
#![forbid(unsafe_code)]

pub mod binaries;
pub mod control_plane;
pub mod device_approval;
pub mod engines;
pub mod error;
pub mod faithful;
pub mod gateway;
pub mod images;
pub mod injected_pod;
pub mod keycloak;
pub mod machine_lock;
pub mod mcp;
pub mod mock_model;
pub mod node;
pub mod operator;
pub mod otelcol;
pub mod pki;
pub mod pod_client;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod raw_http;
pub mod redis_cluster;
pub mod redis_server;
pub mod source_tree;
pub mod supervisor;
pub mod tools;
pub mod wait;
pub mod world;

pub use error::HarnessError;
pub use world::{World, WorldInfo};
