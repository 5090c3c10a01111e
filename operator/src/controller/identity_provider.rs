//! The identity-provider controllers: for every `IdentityProvider` and
//! `ClusterIdentityProvider`, fetch discovery and the JWKS, report what was
//! found in status (`Ready`, `jwksUri`, `keyCount`, `lastRefresh`, and for
//! the `kubernetes` preset the keys themselves, `relayedKeys`), emit an
//! Event when the IdP becomes unreachable and when it recovers, and check
//! again periodically.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use attach_sidecar::idp_client::IdpClient;
use attach_sidecar::jwt::jwks::discover_jwks_uri;
use attach_sidecar::jwt::keys::KeySet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::crd::conditions::types::READY;
use crate::crd::identity_provider::{IdentityProviderStatus, Preset};
use crate::crd::{ClusterIdentityProvider, IdentityProvider};

/// The field manager of every status this operator writes.
pub const FIELD_MANAGER: &str = "attach-operator";

/// How often a ready IdP is checked again, and how soon a failing one.
const RECHECK_READY: Duration = Duration::from_secs(300);
const RECHECK_FAILING: Duration = Duration::from_secs(30);

/// Why a reconcile failed (the status could not be written).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("serialising status: {0}")]
    Json(#[from] serde_json::Error),
}

/// What the controllers share.
pub struct Context {
    pub client: Client,
    pub http: IdpClient,
    pub recorder: Recorder,
    /// Failures in a row, per IdP (kind and name).
    pub backoff: super::backoff::Backoff<(&'static str, Option<String>, String)>,
}

fn key<K: IdpObject>(obj: &K) -> (&'static str, Option<String>, String) {
    (K::KIND, obj.namespace(), obj.name_any())
}

/// The fields both IdP kinds share that the check needs.
pub trait IdpObject:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The kind, as a metric label.
    const KIND: &'static str;
    fn issuer(&self) -> &str;
    fn jwks_uri(&self) -> Option<&str>;
    fn preset(&self) -> Preset;
    fn status(&self) -> Option<&IdentityProviderStatus>;
    fn api(client: Client, namespace: Option<&str>) -> Api<Self>;
}

impl IdpObject for IdentityProvider {
    const KIND: &'static str = "IdentityProvider";
    fn issuer(&self) -> &str {
        &self.spec.issuer
    }
    fn jwks_uri(&self) -> Option<&str> {
        self.spec.jwks_uri.as_deref()
    }
    fn preset(&self) -> Preset {
        self.spec.preset
    }
    fn status(&self) -> Option<&IdentityProviderStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, namespace: Option<&str>) -> Api<Self> {
        Api::namespaced(client, namespace.unwrap_or("default"))
    }
}

impl IdpObject for ClusterIdentityProvider {
    const KIND: &'static str = "ClusterIdentityProvider";
    fn issuer(&self) -> &str {
        &self.spec.issuer
    }
    fn jwks_uri(&self) -> Option<&str> {
        self.spec.jwks_uri.as_deref()
    }
    fn preset(&self) -> Preset {
        self.spec.preset
    }
    fn status(&self) -> Option<&IdentityProviderStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, _: Option<&str>) -> Api<Self> {
        Api::all(client)
    }
}

/// What checking an IdP found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Ready {
        jwks_uri: String,
        keys: usize,
        /// The JWKS itself, for the gateways (the `kubernetes` preset).
        relayed: Option<String>,
    },
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// Fetches discovery (unless the JWKS URL is given) and the JWKS.
pub async fn check(http: &IdpClient, issuer: &str, jwks_uri: Option<&str>) -> Check {
    let jwks_uri = match jwks_uri {
        Some(uri) => uri.to_owned(),
        None => match discover_jwks_uri(http, issuer).await {
            Ok(uri) => uri,
            Err(e) => {
                return Check::Failed {
                    reason: "DiscoveryFailed",
                    message: format!("OIDC discovery for {issuer} failed: {e}"),
                };
            }
        },
    };
    let doc: Value = match http.get_json(&jwks_uri).await {
        Ok(doc) => doc,
        Err(e) => {
            return Check::Failed {
                reason: "JwksUnreachable",
                message: format!("fetching the JWKS failed: {e}"),
            };
        }
    };
    match usable_keys(&doc, &jwks_uri) {
        Ok(keys) => Check::Ready {
            jwks_uri,
            keys,
            relayed: None,
        },
        Err(failed) => failed,
    }
}

/// How many signing keys of the JWKS `doc` (from `source`) can verify
/// tokens; none fails the check, saying how many were skipped.
fn usable_keys(doc: &Value, source: &str) -> Result<usize, Check> {
    let keys = KeySet::from_jwks(doc);
    if keys.is_empty() {
        return Err(Check::Failed {
            reason: "NoUsableKeys",
            message: format!(
                "{source} has no usable signing keys ({} skipped: symmetric, encryption or unparseable)",
                keys.skipped
            ),
        });
    }
    Ok(keys.len())
}

/// Where the API server serves its ServiceAccount issuer's discovery
/// document and keys.
const CLUSTER_DISCOVERY: &str = "/.well-known/openid-configuration";
const CLUSTER_JWKS: &str = "/openid/v1/jwks";

/// Reads the cluster's ServiceAccount issuer through the API server, with
/// the operator's own credentials: it serves these documents to
/// authenticated callers only, so gateways in model pods (often without a
/// token of their own, or a route to the API server) could not fetch them.
/// The issuer must be the one the API server names.
pub async fn check_cluster(client: &Client, issuer: &str) -> Check {
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            let request = http::Request::get(path)
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            let text = client
                .request_text(request)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_str::<Value>(&text).map_err(|e| format!("not JSON: {e}"))
        }
    };
    let discovery = match get(CLUSTER_DISCOVERY).await {
        Ok(doc) => doc,
        Err(e) => {
            return Check::Failed {
                reason: "DiscoveryFailed",
                message: format!("reading the API server's {CLUSTER_DISCOVERY} failed: {e}"),
            };
        }
    };
    let named = discovery.get("issuer").and_then(Value::as_str);
    if named != Some(issuer) {
        return Check::Failed {
            reason: "IssuerMismatch",
            message: format!(
                "the API server's ServiceAccount issuer is {}, not {issuer}: its tokens carry that iss (set spec.issuer to it)",
                named.unwrap_or("not named")
            ),
        };
    }
    let doc = match get(CLUSTER_JWKS).await {
        Ok(doc) => doc,
        Err(e) => {
            return Check::Failed {
                reason: "JwksUnreachable",
                message: format!("reading the API server's {CLUSTER_JWKS} failed: {e}"),
            };
        }
    };
    let keys = match usable_keys(&doc, &format!("the API server's {CLUSTER_JWKS}")) {
        Ok(keys) => keys,
        Err(failed) => return failed,
    };
    Check::Ready {
        jwks_uri: discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .unwrap_or(CLUSTER_JWKS)
            .to_owned(),
        keys,
        relayed: Some(doc.to_string()),
    }
}

/// Reconciles one IdP of either kind.
pub async fn reconcile<K: IdpObject>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = match obj.preset() {
        Preset::Kubernetes => check_cluster(&ctx.client, obj.issuer()).await,
        _ => check(&ctx.http, obj.issuer(), obj.jwks_uri()).await,
    };
    let previous = obj
        .status()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .cloned();
    let now = Time(Timestamp::now());
    let (status_value, reason, message) = match &result {
        Check::Ready { keys, .. } => (
            "True",
            "KeysLoaded",
            format!("{keys} signing key(s) loaded"),
        ),
        Check::Failed { reason, message } => ("False", *reason, message.clone()),
    };
    let transition = previous.as_ref().is_none_or(|p| p.status != status_value);
    let condition = Condition {
        type_: READY.to_owned(),
        status: status_value.to_owned(),
        reason: reason.to_owned(),
        message: message.clone(),
        observed_generation: obj.meta().generation,
        last_transition_time: match (&previous, transition) {
            (Some(p), false) => p.last_transition_time.clone(),
            _ => now.clone(),
        },
    };
    let status = IdentityProviderStatus {
        conditions: vec![condition],
        observed_generation: obj.meta().generation,
        jwks_uri: match &result {
            Check::Ready { jwks_uri, .. } => Some(jwks_uri.clone()),
            Check::Failed { .. } => obj.status().and_then(|s| s.jwks_uri.clone()),
        },
        key_count: match &result {
            Check::Ready { keys, .. } => Some(u32::try_from(*keys).unwrap_or(u32::MAX)),
            Check::Failed { .. } => Some(0),
        },
        last_refresh: match &result {
            Check::Ready { .. } => Some(now),
            Check::Failed { .. } => obj.status().and_then(|s| s.last_refresh.clone()),
        },
        // The last good keys stay while the API server cannot be read.
        relayed_keys: match &result {
            Check::Ready { relayed, .. } => relayed.clone(),
            Check::Failed { .. } => obj.status().and_then(|s| s.relayed_keys.clone()),
        },
    };
    // A failing IdP that still fails the same way has nothing new to say
    // (a ready one has: when its keys were last fetched).
    let unchanged = obj.status().is_some_and(|before| {
        super::conditions::same(&before.conditions, &status.conditions)
            && before.observed_generation == status.observed_generation
            && before.jwks_uri == status.jwks_uri
            && before.key_count == status.key_count
            && before.last_refresh == status.last_refresh
            && before.relayed_keys == status.relayed_keys
    });
    if !unchanged {
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        let api = K::api(ctx.client.clone(), obj.namespace().as_deref());
        api.patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::Status)?;
    }

    if transition {
        let event = match &result {
            Check::Ready { .. } => Event {
                type_: EventType::Normal,
                reason: "IdentityProviderReady".into(),
                note: Some(message),
                action: "FetchKeys".into(),
                secondary: None,
            },
            Check::Failed { reason, message } => Event {
                type_: EventType::Warning,
                reason: (*reason).into(),
                note: Some(message.chars().take(1000).collect()),
                action: "FetchKeys".into(),
                secondary: None,
            },
        };
        if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish an event");
        }
    }
    ctx.backoff.succeeded(&key(obj.as_ref()));
    Ok(Action::requeue(match result {
        Check::Ready { .. } => RECHECK_READY,
        Check::Failed { .. } => RECHECK_FAILING,
    }))
}

/// Retries a failed reconcile with exponential backoff and jitter.
pub fn error_policy<K: IdpObject>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let pause = ctx.backoff.failed(key(obj.as_ref()));
    tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "identity provider reconcile failed");
    Action::requeue(pause)
}

/// The event reporter of this operator.
pub fn reporter() -> Reporter {
    Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}
