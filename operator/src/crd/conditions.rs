//! Status conditions, in the shape every Kubernetes controller uses.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Condition types this operator writes.
pub mod types {
    /// Everything is in place and the backend (or IdP) works.
    pub const READY: &str = "Ready";
    /// Every referenced identity provider exists and is ready.
    pub const IDENTITY_PROVIDERS_RESOLVED: &str = "IdentityProvidersResolved";
    /// The gateway config was rendered into the owned ConfigMap.
    pub const CONFIG_RENDERED: &str = "ConfigRendered";
    /// Every pod the backend selects carries the gateway (or is opted out
    /// with the backend's leave).
    pub const PODS_PROTECTED: &str = "PodsProtected";
}
