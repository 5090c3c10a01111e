//! The cluster objects a node needs besides its processes: the API
//! server's access to kubelets, CoreDNS's read access, and the `kube-dns`
//! Service in front of CoreDNS on the host. Applied server-side, so a
//! restart of the same world applies them again without conflict.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, Patch, PatchParams};

use super::{BRIDGE_IP, DNS_SERVICE_IP};
use crate::HarnessError;

const MANAGER: &str = "attach-harness";

/// The user of the API server's kubelet client certificate.
pub const APISERVER_KUBELET_USER: &str = "kube-apiserver-kubelet-client";
/// CoreDNS's user.
pub const COREDNS_USER: &str = "system:coredns";

fn object<T: serde::de::DeserializeOwned>(
    what: &str,
    json: serde_json::Value,
) -> Result<T, HarnessError> {
    serde_json::from_value(json).map_err(|source| HarnessError::Json {
        what: what.to_owned(),
        source,
    })
}

/// Applies every object.
pub async fn apply(client: &kube::Client) -> Result<(), HarnessError> {
    let params = PatchParams::apply(MANAGER).force();
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());

    let coredns_role: ClusterRole = object(
        "coredns ClusterRole",
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "attach-node:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        }),
    )?;
    roles
        .patch("attach-node:coredns", &params, &Patch::Apply(&coredns_role))
        .await?;
    for (name, role, user) in [
        ("attach-node:coredns", "attach-node:coredns", COREDNS_USER),
        (
            "attach-node:kubelet-api-admin",
            "system:kubelet-api-admin",
            APISERVER_KUBELET_USER,
        ),
    ] {
        let binding: ClusterRoleBinding = object(
            name,
            serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            }),
        )?;
        bindings
            .patch(name, &params, &Patch::Apply(&binding))
            .await?;
    }

    // kube-dns: a Service without a selector, its endpoint CoreDNS on the host.
    let services: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    let service: Service = object(
        "kube-dns Service",
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                         "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "clusterIP": DNS_SERVICE_IP.to_string(),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        }),
    )?;
    services
        .patch("kube-dns", &params, &Patch::Apply(&service))
        .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "kube-system");
    let slice: EndpointSlice = object(
        "kube-dns EndpointSlice",
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kube-dns-host", "namespace": "kube-system",
                         "labels": {"kubernetes.io/service-name": "kube-dns",
                                    "endpointslice.kubernetes.io/managed-by": "attach-harness"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [BRIDGE_IP.to_string()], "conditions": {"ready": true}}],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        }),
    )?;
    slices
        .patch("kube-dns-host", &params, &Patch::Apply(&slice))
        .await?;
    Ok(())
}
