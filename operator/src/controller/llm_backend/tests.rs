//! The exact API calls a reconcile makes, against a mocked API server (the
//! tower-test pattern): what is read, what is written, with which content,
//! and nothing else.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::{Context, reconcile};
use crate::controller::backoff::Backoff;
use crate::controller::identity_provider::reporter;
use crate::controller::resolve::IdpStores;
use crate::crd::{ClusterIdentityProvider, IdentityProvider, LLMBackend};

type ApiServer = Handle<Request<Body>, Response<Body>>;

/// A store holding `objects`, marked as listed.
fn store<K>(objects: Vec<K>) -> (Store<K>, Writer<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for obj in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(obj));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    (store, writer)
}

fn backend(name: &str, created: &str, extra: Value) -> LLMBackend {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": "ollama"}},
        "engine": "ollama",
        "port": 11434,
        "identityProviderRefs": [{"name": "corp"}],
        "access": {"rules": [{"name": "staff", "subjects": {"groups": ["staff"]}, "endpoints": ["inference"]}]},
        "quotas": [{"name": "per-user", "tokensPerMinute": 1000}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
                     "generation": 3, "creationTimestamp": created},
        "spec": spec,
    }))
    .unwrap()
}

fn idp(ready: bool) -> IdentityProvider {
    serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "IdentityProvider",
        "metadata": {"name": "corp", "namespace": "ml"},
        "spec": {"issuer": "https://idp.example.com/", "audiences": ["attach-gateway"], "preset": "keycloak"},
        "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
            "reason": "KeysLoaded", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }))
    .unwrap()
}

fn pod(name: &str, injected: bool) -> PartialObjectMeta<Pod> {
    let mut annotations = serde_json::Map::new();
    if injected {
        annotations.insert("attach.dev/backend".into(), "chat".into());
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "labels": {"app": "ollama"}, "annotations": annotations},
    }))
    .unwrap()
}

/// The caches' writers, kept so the stores stay filled.
type Writers = (
    Writer<LLMBackend>,
    Writer<IdentityProvider>,
    Writer<ClusterIdentityProvider>,
    Writer<PartialObjectMeta<Pod>>,
    Writer<ConfigMap>,
);

/// The reconcile's world: a mocked API server and filled caches.
struct Fixture {
    server: ApiServer,
    ctx: Arc<Context>,
    _writers: Writers,
}

fn fixture(backends: Vec<LLMBackend>, idps: Vec<IdentityProvider>) -> Fixture {
    fixture_with(backends, idps, vec![pod("a", true)], Vec::new())
}

fn fixture_with(
    backends: Vec<LLMBackend>,
    idps: Vec<IdentityProvider>,
    pods: Vec<PartialObjectMeta<Pod>>,
    config_maps: Vec<ConfigMap>,
) -> Fixture {
    let (service, server) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (backends, bw) = store(backends);
    let (namespaced, iw) = store(idps);
    let (cluster, cw) = store(Vec::new());
    let (pods, pw) = store(pods);
    let (config_maps, mw) = store(config_maps);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter()),
        client,
        backends,
        idps: IdpStores {
            namespaced,
            cluster,
        },
        pods,
        config_maps,
        backoff: Backoff::default(),
        metrics: Arc::default(),
    });
    Fixture {
        server,
        ctx,
        _writers: (bw, iw, cw, pw, mw),
    }
}

/// Takes the next request, checks its method and path, answers with `reply`
/// (or the request's own body) and returns the request body.
async fn expect(
    server: &mut ApiServer,
    method: Method,
    path: &str,
    reply: Option<(StatusCode, Value)>,
) -> Value {
    let (request, send) = server.next_request().await.expect("another API call");
    assert_eq!(request.method(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let (status, reply) = reply.unwrap_or_else(|| {
        if path.ends_with("/status") {
            // The API server answers a status patch with the whole object.
            let mut object =
                serde_json::to_value(backend("chat", "2026-01-01T00:00:00Z", json!({}))).unwrap();
            object["status"] = body["status"].clone();
            (StatusCode::OK, object)
        } else {
            (StatusCode::OK, body.clone())
        }
    });
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

const CONFIG_MAPS: &str = "/api/v1/namespaces/ml/configmaps";
const CONFIG_MAP: &str = "/api/v1/namespaces/ml/configmaps/chat-attach-gateway";
const STATUS: &str = "/apis/attach.dev/v1alpha1/namespaces/ml/llmbackends/chat/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ml/events";

fn condition<'a>(status_patch: &'a Value, type_: &str) -> &'a Value {
    status_patch["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

fn config_of(config_map: &Value) -> attach_sidecar::config::GatewayConfig {
    let yaml = config_map["data"]["gateway.yaml"].as_str().unwrap();
    attach_sidecar::config::GatewayConfig::parse(yaml).unwrap()
}

fn status_error(code: u16, reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason}),
    )
}

/// What a first reconcile of `chat` wrote: its ConfigMap (as the API server
/// stored it) and its status.
async fn first_reconcile(chat: &LLMBackend) -> (ConfigMap, Value) {
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture(vec![chat.clone()], vec![idp(true)]);
    let run = tokio::spawn(reconcile(Arc::new(chat.clone()), ctx));
    let mut cm = expect(&mut server, Method::POST, CONFIG_MAPS, None).await;
    cm["metadata"]["resourceVersion"] = json!("7");
    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    run.await.unwrap().unwrap();
    (serde_json::from_value(cm).unwrap(), status)
}

#[tokio::test]
async fn a_resolved_backend_writes_its_config_and_a_ready_status() {
    let chat = backend("chat", "2026-01-01T00:00:00Z", json!({}));
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture(vec![chat.clone()], vec![idp(true)]);
    let run = tokio::spawn(reconcile(Arc::new(chat), ctx));

    // Not in the cache: created (never applied over whatever is there).
    let cm = expect(&mut server, Method::POST, CONFIG_MAPS, None).await;
    assert_eq!(cm["metadata"]["name"], "chat-attach-gateway");
    let config = config_of(&cm);
    assert!(!config.deny_all);
    assert_eq!(config.issuers[0].issuer, "https://idp.example.com/");
    assert_eq!(config.quotas.limits[0].tokens_per_minute, Some(1000));
    assert_eq!(config.access.rules[0].name, "staff");
    let hash = cm["metadata"]["annotations"]["attach.dev/config-hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "attach-operator"
    );
    assert_eq!(cm["metadata"]["ownerReferences"][0]["kind"], "LLMBackend");
    assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], "uid-chat");
    assert_eq!(cm["metadata"]["ownerReferences"][0]["controller"], true);

    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(
        condition(&status, "IdentityProvidersResolved")["status"],
        "True"
    );
    assert_eq!(condition(&status, "ConfigRendered")["reason"], "Rendered");
    assert_eq!(condition(&status, "PodsProtected")["status"], "True");
    assert_eq!(status["status"]["configHash"], hash.as_str());
    assert_eq!(status["status"]["observedGeneration"], 3);
    assert_eq!(status["status"]["matchedPods"], 1);
    assert_eq!(status["status"]["injectedPods"], 1);

    run.await.unwrap().unwrap();
    // First-time Ready is not news: no Event, and no further call.
    drop(_writers);
    assert!(server.next_request().await.is_none(), "no other API call");
}

/// Steady state: the ConfigMap in the cache says what would be written and
/// the status is unchanged, so a reconcile makes no API call at all.
#[tokio::test]
async fn a_steady_state_reconcile_writes_nothing() {
    let mut chat = backend("chat", "2026-01-01T00:00:00Z", json!({}));
    let (cm, status) = first_reconcile(&chat).await;
    chat.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let Fixture {
        server,
        ctx,
        _writers,
    } = fixture_with(
        vec![chat.clone()],
        vec![idp(true)],
        vec![pod("a", true)],
        vec![cm],
    );
    reconcile(Arc::new(chat), ctx).await.unwrap();
    drop(_writers);
    let mut server = server;
    assert!(server.next_request().await.is_none(), "no API call");
}

/// A changed spec replaces the ConfigMap over the cached version.
#[tokio::test]
async fn a_changed_config_replaces_the_cached_version() {
    let chat = backend("chat", "2026-01-01T00:00:00Z", json!({}));
    let (cm, _) = first_reconcile(&chat).await;
    let changed = backend(
        "chat",
        "2026-01-01T00:00:00Z",
        json!({"quotas": [{"name": "per-user", "tokensPerMinute": 5}]}),
    );
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture_with(
        vec![changed.clone()],
        vec![idp(true)],
        vec![pod("a", true)],
        vec![cm],
    );
    let run = tokio::spawn(reconcile(Arc::new(changed), ctx));
    let put = expect(&mut server, Method::PUT, CONFIG_MAP, None).await;
    assert_eq!(
        put["metadata"]["resourceVersion"], "7",
        "over the version inspected"
    );
    assert_eq!(config_of(&put).quotas.limits[0].tokens_per_minute, Some(5));
    expect(&mut server, Method::PATCH, STATUS, None).await;
    run.await.unwrap().unwrap();
}

/// Another team's ConfigMap of the same name: never written, never adopted;
/// the backend reports a Conflict with an Event.
#[tokio::test]
async fn a_config_map_that_is_not_ours_is_left_alone() {
    let chat = backend("chat", "2026-01-01T00:00:00Z", json!({}));
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture(vec![chat.clone()], vec![idp(true)]);
    let run = tokio::spawn(reconcile(Arc::new(chat), ctx));
    expect(
        &mut server,
        Method::POST,
        CONFIG_MAPS,
        Some(status_error(409, "AlreadyExists")),
    )
    .await;
    expect(
        &mut server,
        Method::GET,
        CONFIG_MAP,
        Some((
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "chat-attach-gateway", "namespace": "ml", "resourceVersion": "1"},
                   "data": {"gateway.yaml": "theirs"}}),
        )),
    )
    .await;
    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "Conflict");
    assert!(
        ready["message"].as_str().unwrap().contains(
            "ConfigMap ml/chat-attach-gateway exists and was not created by attach-operator"
        ),
        "{ready}"
    );
    assert_eq!(condition(&status, "ConfigRendered")["reason"], "Conflict");
    let event = expect(&mut server, Method::POST, EVENTS, None).await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "Conflict");
    run.await.unwrap().unwrap();
    drop(_writers);
    assert!(
        server.next_request().await.is_none(),
        "nothing written to it"
    );
}

#[tokio::test]
async fn a_missing_identity_provider_fails_closed_with_a_warning() {
    let chat = backend("chat", "2026-01-01T00:00:00Z", json!({}));
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture(vec![chat.clone()], Vec::new());
    let run = tokio::spawn(reconcile(Arc::new(chat), ctx));

    let cm = expect(&mut server, Method::POST, CONFIG_MAPS, None).await;
    let config = config_of(&cm);
    assert!(config.deny_all, "never open");
    assert!(config.issuers.is_empty());
    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "IdentityProviderNotFound");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("IdentityProvider ml/corp")
    );
    assert_eq!(
        condition(&status, "IdentityProvidersResolved")["status"],
        "False"
    );
    assert_eq!(condition(&status, "ConfigRendered")["reason"], "DenyAll");
    let event = expect(&mut server, Method::POST, EVENTS, None).await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "IdentityProviderNotFound");
    assert_eq!(event["regarding"]["name"], "chat");
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_identity_provider_not_ready_renders_but_is_not_ready() {
    let chat = backend("chat", "2026-01-01T00:00:00Z", json!({}));
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture(vec![chat.clone()], vec![idp(false)]);
    let run = tokio::spawn(reconcile(Arc::new(chat), ctx));
    let cm = expect(&mut server, Method::POST, CONFIG_MAPS, None).await;
    assert!(
        !config_of(&cm).deny_all,
        "the gateway refuses what it cannot verify by itself"
    );
    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    assert_eq!(
        condition(&status, "Ready")["reason"],
        "IdentityProviderNotReady"
    );
    assert_eq!(condition(&status, "ConfigRendered")["status"], "True");
    expect(&mut server, Method::POST, EVENTS, None).await;
    run.await.unwrap().unwrap();
}

/// The Redis URL is never read: the config names the file the pod mounts
/// from the user's Secret, and no Secret is touched.
#[tokio::test]
async fn secrets_are_named_never_read() {
    let chat = backend(
        "chat",
        "2026-01-01T00:00:00Z",
        json!({"quotaStore": {"type": "redis", "urlSecretRef": {"name": "redis", "key": "url"}}}),
    );
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture(vec![chat.clone()], vec![idp(true)]);
    let run = tokio::spawn(reconcile(Arc::new(chat), ctx));
    let cm = expect(&mut server, Method::POST, CONFIG_MAPS, None).await;
    let text = cm["data"]["gateway.yaml"].as_str().unwrap();
    assert!(
        text.contains("urlFile: /etc/attach/secrets/redis-url"),
        "{text}"
    );
    assert!(
        text.contains("keyPrefix: 'attach:quota:ml/chat:'"),
        "{text}"
    );
    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    assert_eq!(condition(&status, "Ready")["status"], "True");
    run.await.unwrap().unwrap();
}

/// An apiKeys section the CRD's rules accept but the gateway would refuse
/// (key admins named without their issuer, with two identity providers):
/// the backend fails closed, and its conditions name the field and why.
#[tokio::test]
async fn api_key_admins_without_their_issuer_fail_closed_naming_the_field() {
    let corp = "https://idp.example.com/";
    let chat = backend(
        "chat",
        "2026-01-01T00:00:00Z",
        json!({
            "identityProviderRefs": [{"name": "corp"}, {"name": "partner"}],
            "access": {"rules": [{"name": "staff", "subjects": {"issuer": corp, "groups": ["staff"]},
                                  "endpoints": ["inference"]}]},
            "quotaStore": {"type": "redis", "urlSecretRef": {"name": "redis", "key": "url"}},
            "apiKeys": {"enabled": true, "signingKeySecretRef": {"name": "keys", "key": "k"},
                        "admins": {"groups": ["ops"]}},
        }),
    );
    let mut partner = idp(true);
    partner.metadata.name = Some("partner".into());
    partner.spec.issuer = "https://partner.example.com/".into();
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture(vec![chat.clone()], vec![idp(true), partner]);
    let run = tokio::spawn(reconcile(Arc::new(chat), ctx));
    let cm = expect(&mut server, Method::POST, CONFIG_MAPS, None).await;
    assert!(config_of(&cm).deny_all, "never open");
    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "InvalidConfig");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("apiKeys.admins.issuer") && message.contains("several issuers"),
        "{message}"
    );
    let rendered = condition(&status, "ConfigRendered");
    assert_eq!(rendered["reason"], "DenyAll");
    assert!(
        rendered["message"]
            .as_str()
            .unwrap()
            .contains("apiKeys.admins.issuer"),
        "{rendered}"
    );
    let event = expect(&mut server, Method::POST, EVENTS, None).await;
    assert_eq!(event["reason"], "InvalidConfig");
    run.await.unwrap().unwrap();
}

/// A selected pod without the gateway (created before the backend): not
/// Ready, naming the pod and the fix.
#[tokio::test]
async fn a_selected_pod_without_the_gateway_keeps_the_backend_from_ready() {
    let chat = backend("chat", "2026-01-01T00:00:00Z", json!({}));
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture_with(
        vec![chat.clone()],
        vec![idp(true)],
        vec![pod("a", true), pod("b", false)],
        Vec::new(),
    );
    let metrics = ctx.metrics.clone();
    let run = tokio::spawn(reconcile(Arc::new(chat), ctx));
    expect(&mut server, Method::POST, CONFIG_MAPS, None).await;
    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    let text = metrics.encode();
    let series = "attach_operator_unprotected_pods{namespace=\"ml\",backend=\"chat\"} 1";
    assert!(text.contains(series), "{series} not in\n{text}");
    let protected = condition(&status, "PodsProtected");
    assert_eq!(protected["status"], "False");
    assert_eq!(protected["reason"], "PodsNotInjected");
    let message = protected["message"].as_str().unwrap();
    assert!(
        message.contains(": b;") && message.contains("rollout restart"),
        "{message}"
    );
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "PodsNotInjected");
    let event = expect(&mut server, Method::POST, EVENTS, None).await;
    assert_eq!(event["reason"], "PodsNotInjected");
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_later_of_two_overlapping_backends_reports_a_conflict() {
    let first = backend("all-ollama", "2026-01-01T00:00:00Z", json!({}));
    let chat = backend("chat", "2026-02-01T00:00:00Z", json!({}));
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture(vec![first, chat.clone()], vec![idp(true)]);
    let run = tokio::spawn(reconcile(Arc::new(chat), ctx));
    let cm = expect(&mut server, Method::POST, CONFIG_MAPS, None).await;
    assert!(config_of(&cm).deny_all);
    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "Conflict");
    assert!(ready["message"].as_str().unwrap().contains("all-ollama"));
    expect(&mut server, Method::POST, EVENTS, None).await;
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_failed_write_is_an_error_to_retry() {
    let chat = backend("chat", "2026-01-01T00:00:00Z", json!({}));
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture(vec![chat.clone()], vec![idp(true)]);
    let run = tokio::spawn(reconcile(Arc::new(chat), ctx));
    expect(
        &mut server,
        Method::POST,
        CONFIG_MAPS,
        Some(status_error(403, "Forbidden")),
    )
    .await;
    let err = run.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("ConfigMap chat-attach-gateway"),
        "{err}"
    );
}
