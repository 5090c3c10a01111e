//! The exact API calls a reconcile makes, against a mocked API server (the
//! tower-test pattern): what is read, what is written, with which content,
//! and nothing else.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::{Context, reconcile};
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

/// The reconcile's world: a mocked API server and filled caches.
struct Fixture {
    server: ApiServer,
    ctx: Arc<Context>,
    _writers: (
        Writer<LLMBackend>,
        Writer<IdentityProvider>,
        Writer<ClusterIdentityProvider>,
        Writer<PartialObjectMeta<Pod>>,
    ),
}

fn fixture(backends: Vec<LLMBackend>, idps: Vec<IdentityProvider>) -> Fixture {
    let (service, server) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (backends, bw) = store(backends);
    let (namespaced, iw) = store(idps);
    let (cluster, cw) = store(Vec::new());
    let (pods, pw) = store(vec![pod("a", true), pod("b", false)]);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter()),
        client,
        backends,
        idps: IdpStores {
            namespaced,
            cluster,
        },
        pods,
        operator_namespace: "attach-system".into(),
    });
    Fixture {
        server,
        ctx,
        _writers: (bw, iw, cw, pw),
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

const SECRET: &str = "/api/v1/namespaces/ml/secrets/chat-gateway";
const CONFIG_MAP: &str = "/api/v1/namespaces/ml/configmaps/chat-gateway";
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

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
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

    let secret = expect(&mut server, Method::PATCH, SECRET, None).await;
    assert_eq!(
        secret["data"],
        json!({}),
        "nothing secret in a memory-store backend"
    );
    assert_eq!(secret["metadata"]["ownerReferences"][0]["controller"], true);
    let cm = expect(&mut server, Method::PATCH, CONFIG_MAP, None).await;
    let config = config_of(&cm);
    assert!(!config.deny_all);
    assert_eq!(config.issuers[0].issuer, "https://idp.example.com/");
    assert_eq!(config.quotas.limits[0].tokens_per_minute, Some(1000));
    assert_eq!(config.access.rules[0].name, "staff");
    let hash = cm["metadata"]["annotations"]["attach.dev/config-hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(cm["metadata"]["ownerReferences"][0]["kind"], "LLMBackend");
    assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], "uid-chat");

    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(
        condition(&status, "IdentityProvidersResolved")["status"],
        "True"
    );
    assert_eq!(condition(&status, "ConfigRendered")["reason"], "Rendered");
    assert_eq!(status["status"]["configHash"], hash.as_str());
    assert_eq!(status["status"]["observedGeneration"], 3);
    assert_eq!(status["status"]["matchedPods"], 2);
    assert_eq!(status["status"]["injectedPods"], 1);

    run.await.unwrap().unwrap();
    // First-time Ready is not news: no Event, and no further call.
    drop(_writers);
    assert!(server.next_request().await.is_none(), "no other API call");
}

#[tokio::test]
async fn an_unchanged_status_is_not_written_again() {
    let mut chat = backend("chat", "2026-01-01T00:00:00Z", json!({}));
    // The status a first reconcile wrote.
    {
        let Fixture {
            mut server,
            ctx,
            _writers,
        } = fixture(vec![chat.clone()], vec![idp(true)]);
        let run = tokio::spawn(reconcile(Arc::new(chat.clone()), ctx));
        expect(&mut server, Method::PATCH, SECRET, None).await;
        expect(&mut server, Method::PATCH, CONFIG_MAP, None).await;
        let status = expect(&mut server, Method::PATCH, STATUS, None).await;
        run.await.unwrap().unwrap();
        chat.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    }
    let Fixture {
        mut server,
        ctx,
        _writers,
    } = fixture(vec![chat.clone()], vec![idp(true)]);
    let run = tokio::spawn(reconcile(Arc::new(chat), ctx));
    expect(&mut server, Method::PATCH, SECRET, None).await;
    expect(&mut server, Method::PATCH, CONFIG_MAP, None).await;
    run.await.unwrap().unwrap();
    drop(_writers);
    assert!(server.next_request().await.is_none(), "no status write");
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

    expect(&mut server, Method::PATCH, SECRET, None).await;
    let cm = expect(&mut server, Method::PATCH, CONFIG_MAP, None).await;
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
    expect(&mut server, Method::PATCH, SECRET, None).await;
    let cm = expect(&mut server, Method::PATCH, CONFIG_MAP, None).await;
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

#[tokio::test]
async fn the_redis_url_is_read_from_its_secret_and_kept_out_of_the_config_map() {
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
    let url = "redis://:hunter2@redis:6379/0";
    expect(
        &mut server,
        Method::GET,
        "/api/v1/namespaces/ml/secrets/redis",
        Some((
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": "ml"},
                   "data": {"url": base64(url)}}),
        )),
    )
    .await;
    let secret = expect(&mut server, Method::PATCH, SECRET, None).await;
    assert_eq!(secret["data"]["redis-url"], base64(url));
    let cm = expect(&mut server, Method::PATCH, CONFIG_MAP, None).await;
    let text = cm["data"]["gateway.yaml"].as_str().unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("/etc/attach/secrets/redis-url"), "{text}");
    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    assert_eq!(condition(&status, "Ready")["status"], "True");
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_missing_redis_secret_fails_closed() {
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
    expect(
        &mut server,
        Method::GET,
        "/api/v1/namespaces/ml/secrets/redis",
        Some(not_found()),
    )
    .await;
    let secret = expect(&mut server, Method::PATCH, SECRET, None).await;
    assert_eq!(secret["data"], json!({}));
    let cm = expect(&mut server, Method::PATCH, CONFIG_MAP, None).await;
    assert!(config_of(&cm).deny_all);
    let status = expect(&mut server, Method::PATCH, STATUS, None).await;
    assert_eq!(condition(&status, "Ready")["reason"], "SecretNotFound");
    assert_eq!(
        condition(&status, "IdentityProvidersResolved")["status"],
        "True"
    );
    expect(&mut server, Method::POST, EVENTS, None).await;
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
    expect(&mut server, Method::PATCH, SECRET, None).await;
    let cm = expect(&mut server, Method::PATCH, CONFIG_MAP, None).await;
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
        Method::PATCH,
        SECRET,
        Some((
            StatusCode::FORBIDDEN,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "forbidden"}),
        )),
    )
    .await;
    let err = run.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("Secret chat-gateway"), "{err}");
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
