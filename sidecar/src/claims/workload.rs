//! A Kubernetes ServiceAccount token's workload (the `kubernetes` preset).
//!
//! The API server mints these tokens (TokenRequest, projected volumes) with
//! `sub` = `system:serviceaccount:<namespace>:<name>` and a `kubernetes.io`
//! claim naming the namespace, the ServiceAccount and, for a pod-bound
//! token, the pod and the node (Kubernetes docs, "Service account tokens"
//! and "Managing Service Accounts"). Both are read, and must agree: a token
//! whose `sub` names another account than its `kubernetes.io` claim was not
//! minted by an API server, and names nobody.
//!
//! The groups are the ones the API server itself gives a ServiceAccount
//! (`system:serviceaccounts`, `system:serviceaccounts:<namespace>`), so a
//! rule says "any ServiceAccount in namespace `agents`" as RBAC does; the
//! tenant is the namespace.

use serde_json::{Map, Value};

/// The group of every ServiceAccount, as the API server names it.
pub const ALL_SERVICE_ACCOUNTS: &str = "system:serviceaccounts";

/// The workload a ServiceAccount token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to (projected tokens); `None` for a
    /// token not bound to a pod.
    pub pod: Option<String>,
    /// The node the pod runs on, where the API server records it.
    pub node: Option<String>,
}

impl Workload {
    /// The API server's user name for this account, the token's `sub`.
    pub fn user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// The groups the API server gives the account.
    pub fn groups(&self) -> Vec<String> {
        vec![
            ALL_SERVICE_ACCOUNTS.to_owned(),
            format!("{ALL_SERVICE_ACCOUNTS}:{}", self.namespace),
        ]
    }
}

/// Reads the workload of a verified ServiceAccount token; `None` when the
/// `kubernetes.io` claim is missing or malformed, a name is not a
/// Kubernetes name, or `sub` names another account.
pub(crate) fn read(claims: &Map<String, Value>) -> Option<Workload> {
    let k8s = claims.get("kubernetes.io")?.as_object()?;
    let namespace = k8s.get("namespace")?.as_str()?;
    let service_account = name_of(k8s.get("serviceaccount")?)?;
    if !is_dns_subdomain(namespace) || !is_dns_subdomain(service_account) {
        return None;
    }
    let optional = |key: &str| match k8s.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(object) => name_of(object).map(|n| Some(n.to_owned())),
    };
    let workload = Workload {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod: optional("pod")?,
        node: optional("node")?,
    };
    let sub = claims.get("sub")?.as_str()?;
    (sub == workload.user()).then_some(workload)
}

/// `{"name": "...", "uid": "..."}`: the name.
fn name_of(object: &Value) -> Option<&str> {
    object
        .as_object()?
        .get("name")?
        .as_str()
        .filter(|n| !n.is_empty())
}

/// A Kubernetes object name (RFC 1123 subdomain): lower-case letters,
/// digits, `-` and `.`, at most 253, starting and ending alphanumeric. No
/// `:`, so `sub` splits one way only.
fn is_dns_subdomain(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
}
