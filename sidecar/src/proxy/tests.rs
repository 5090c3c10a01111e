//! The whole proxy stack ([`super::stack`]) in front of an in-process
//! upstream that records what reaches it: mistakes in the order or the
//! presence of a layer (the identity strip, `Authorization` removal, probe
//! methods, deny-all, header hygiene, the canonical body) fail here, in
//! seconds, without the test world.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, Header, encode};
use serde_json::{Value, json};
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::ClientAddr;
use crate::claims::Preset;
use crate::config::{GatewayConfig, IssuerConfig};
use crate::runtime::{Runtime, Shared};

const ISSUER: &str = "https://idp.stack.test/";
const AUDIENCE: &str = "attach-gateway";

/// What reached the upstream.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A model server on 127.0.0.1 that records every request and answers like
/// Ollama (a chat answer, or a model list for `/api/tags`).
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: Request<hyper::body::Incoming>| {
                            let record = record.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let path = parts.uri.path().to_owned();
                                // The gateway's own list reads are not the
                                // test's requests.
                                let list_read = parts
                                    .headers
                                    .get("user-agent")
                                    .is_some_and(|ua| ua == crate::served_models::USER_AGENT);
                                let sse = parts.headers.contains_key("x-answer-sse");
                                // `x-answer-models: N` adds N more models.
                                let more: usize = parts
                                    .headers
                                    .get("x-answer-models")
                                    .and_then(|v| v.to_str().ok()?.parse().ok())
                                    .unwrap_or(0);
                                if !list_read {
                                    record.lock().unwrap().push(Seen {
                                        method: parts.method.to_string(),
                                        path: path.clone(),
                                        headers: parts.headers,
                                        body: body.clone(),
                                    });
                                }
                                if path == "/mcp" {
                                    return Ok::<_, Infallible>(mcp_answer(&body, sse));
                                }
                                if path == "/v1/chat/completions" && sse {
                                    return Ok::<_, Infallible>(openai_stream());
                                }
                                let answer = if path == "/api/tags" {
                                    let mut models = vec![
                                        json!({"name": "tinyllama:latest"}),
                                        json!({"name": "llama3.1:70b"}),
                                    ];
                                    models
                                        .extend((0..more).map(
                                            |i| json!({"name": format!("filler-{i}:latest")}),
                                        ));
                                    json!({"models": models})
                                } else {
                                    json!({"model": "x", "done": true, "prompt_eval_count": 1, "eval_count": 1})
                                };
                                // `/api/generate` fails, as a broken model does.
                                let status = if path == "/api/generate" { 500 } else { 200 };
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(answer.to_string())))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// An MCP server's answer to `body` (a JSON-RPC request): `tools/list`
/// lists three tools, `prompts/list` two prompts, anything else gets an
/// empty result; as JSON, or as
/// an SSE stream (a progress notification, then the answer).
fn mcp_answer(body: &[u8], sse: bool) -> Response<Full<Bytes>> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let answer = match &request {
        Value::Array(batch) => Value::Array(batch.iter().map(mcp_result).collect()),
        single => mcp_result(single),
    };
    let (content_type, text) = if sse {
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": 1, "progress": 1}});
        (
            "text/event-stream",
            format!(
                "event: message\r\ndata: {progress}\r\n\r\nevent: message\r\ndata: {answer}\r\n\r\n"
            ),
        )
    } else {
        ("application/json", answer.to_string())
    };
    Response::builder()
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(text)))
        .unwrap()
}

/// A streamed OpenAI chat answer whose last event is the usage, as a
/// server sends it when asked for `stream_options.include_usage`; with its
/// `Content-Length`, as a whole body has one.
fn openai_stream() -> Response<Full<Bytes>> {
    let text = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
        "data: [DONE]\n\n",
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("content-length", text.len())
        .body(Full::new(Bytes::from(text)))
        .unwrap()
}

/// The answer to one JSON-RPC request.
fn mcp_result(request: &Value) -> Value {
    let result = match request["method"].as_str() {
        Some("tools/list") => {
            json!({"tools": [{"name": "search"}, {"name": "delete_all"}, {"name": "deploy"}]})
        }
        Some("prompts/list") => json!({"prompts": [{"name": "summarize"}, {"name": "leak"}]}),
        // A tool's result may hold anything, a member named `usage` too.
        Some("tools/call") => {
            json!({"content": [], "usage": {"prompt_tokens": 100, "completion_tokens": 100}})
        }
        _ => json!({}),
    };
    json!({"jsonrpc": "2.0", "id": request["id"], "result": result})
}

fn token(claims: Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    encode(&header, &claims, &crate::testkit::rsa_key()).unwrap()
}

fn alice() -> String {
    let now = crate::jwt::verifier::unix_now();
    token(
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300,
        "iat": now, "groups": ["staff"]}),
    )
}

/// The gateway's whole request path, built from `config` (issuer and
/// upstream filled in), with its keys loaded.
struct Gateway {
    service: BoxCloneService<Request<Full<Bytes>>, Response<crate::body::Body>, Infallible>,
    upstream: Upstream,
    current: Arc<ArcSwap<Runtime>>,
    metrics: Arc<crate::metrics::Metrics>,
    _jwks: tempfile::NamedTempFile,
}

async fn gateway(config: GatewayConfig) -> Gateway {
    gateway_with(config, Shared::new()).await
}

async fn gateway_with(config: GatewayConfig, shared: Shared) -> Gateway {
    gateway_tweaked(config, shared, |_| {}).await
}

/// [`gateway_with`], with `tweak` applied to the runtime once built.
async fn gateway_tweaked(
    mut config: GatewayConfig,
    shared: Shared,
    tweak: impl FnOnce(&mut Runtime),
) -> Gateway {
    let upstream = Upstream::start().await;
    let mut jwk = Jwk::from_encoding_key(&crate::testkit::rsa_key(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(jwks.path(), json!({"keys": [jwk]}).to_string()).unwrap();
    let mut issuer = IssuerConfig::new(ISSUER, vec![AUDIENCE.into()], Preset::Keycloak);
    issuer.jwks_file = Some(jwks.path().to_owned());
    // A test may give the issuer a token exchange; the rest is the test key's.
    issuer.token_exchange = config
        .issuers
        .first()
        .and_then(|i| i.token_exchange.clone());
    config.issuers = vec![issuer];
    config.upstream.url = format!("http://{}", upstream.addr);
    let mut runtime = Runtime::build(config, None, &shared).unwrap();
    tweak(&mut runtime);
    for cache in runtime.verifier.key_caches() {
        cache.refresh("initial").await.unwrap();
    }
    let current = Arc::new(ArcSwap::from_pointee(runtime));
    let service = BoxCloneService::new(super::stack(current.clone(), shared.metrics.clone()));
    Gateway {
        service,
        upstream,
        current,
        metrics: shared.metrics.clone(),
        _jwks: jwks,
    }
}

fn base_config() -> GatewayConfig {
    GatewayConfig::new(Vec::new())
}

/// Staff may use `tinyllama` and read: the rule most stack tests judge by.
fn staff_tiny() -> GatewayConfig {
    let mut config = base_config();
    config.access.rules = vec![crate::policy::Rule::new(
        "staff-tiny",
        crate::policy::Subjects::groups(&["staff"]),
        &["tinyllama"],
        &[
            crate::policy::EndpointClass::Inference,
            crate::policy::EndpointClass::Read,
        ],
    )];
    config
}

impl Gateway {
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, Value) {
        let response = self.respond(method, path, headers, body).await;
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The whole answer to a request, headers and all.
    async fn respond(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response<crate::body::Body> {
        let mut request = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut request = request
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap();
        request
            .extensions_mut()
            .insert(ClientAddr("192.0.2.7:50000".parse().unwrap()));
        self.service
            .ready()
            .await
            .unwrap()
            .call(request)
            .await
            .unwrap()
    }

    fn last(&self) -> Seen {
        self.upstream
            .seen()
            .pop()
            .expect("a request reached the upstream")
    }

    fn reached(&self) -> usize {
        self.upstream.seen().len()
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn client_identity_headers_never_reach_the_model_in_any_spelling() {
    let mut gw = gateway(base_config()).await;
    let auth = bearer(&alice());
    let (status, _) = gw
        .send(
            "POST",
            "/api/chat",
            &[
                ("authorization", &auth),
                ("x-attach-user", "root"),
                ("x-attach-tenant", "evil-corp"),
                ("x-attach-role", "admin"),
                ("x_attach_user", "root"),
                ("X-Attach_Groups", "admins"),
            ],
            r#"{"model":"tinyllama"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let seen = gw.last();
    assert_eq!(seen.headers["x-attach-user"], "alice");
    let forged: Vec<_> = seen
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| {
            matches!(
                *k,
                "x-attach-tenant" | "x-attach-role" | "x_attach_user" | "x-attach_groups"
            )
        })
        .collect();
    assert!(
        forged.is_empty(),
        "client identity headers reached the model: {forged:?}"
    );
    assert_eq!(seen.headers.get_all("x-attach-user").iter().count(), 1);
}

#[tokio::test]
async fn the_callers_authorization_is_not_forwarded_unless_configured() {
    let mut gw = gateway(base_config()).await;
    let auth = bearer(&alice());
    // As Claude Code's apiKeyHelper sends it: the token in `X-Api-Key`
    // too (and Azure OpenAI clients' `Api-Key`).
    let token = auth.trim_start_matches("Bearer ");
    let with_keys = [
        ("authorization", auth.as_str()),
        ("x-api-key", token),
        ("api-key", token),
    ];
    let (status, _) = gw
        .send("POST", "/api/chat", &with_keys, r#"{"model":"tinyllama"}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    let seen = gw.last().headers;
    for name in ["authorization", "x-api-key", "api-key"] {
        assert!(!seen.contains_key(name), "{name} reached the model");
    }

    let mut config = base_config();
    config.identity.forward_authorization = true;
    let mut gw = gateway(config).await;
    gw.send("POST", "/api/chat", &with_keys, r#"{"model":"tinyllama"}"#)
        .await;
    let seen = gw.last().headers;
    assert_eq!(seen["authorization"], auth.as_str());
    assert_eq!(seen["x-api-key"], token);
}

#[tokio::test]
async fn the_browsers_cookies_never_reach_the_model() {
    // Open WebUI, forwarding its user's OAuth token, sends the browser's
    // cookies along: its own session (`token`), which would let the model
    // act in Open WebUI as that user. Forwarding the token does not change
    // that: cookies are credentials for another site.
    for forward_authorization in [false, true] {
        let mut config = base_config();
        config.identity.forward_authorization = forward_authorization;
        let mut gw = gateway(config).await;
        let auth = bearer(&alice());
        let cookies = [
            ("authorization", auth.as_str()),
            (
                "cookie",
                "token=eyJhbGciOiJIUzI1NiJ9.e30.sig; oauth_session_id=1",
            ),
            ("cookie", "other=1"),
        ];
        let (status, _) = gw
            .send("POST", "/api/chat", &cookies, r#"{"model":"tinyllama"}"#)
            .await;
        assert_eq!(status, StatusCode::OK);
        let seen = gw.last().headers;
        assert!(
            !seen.contains_key("cookie"),
            "a cookie reached the model (forwardAuthorization {forward_authorization})"
        );
        assert_eq!(seen["x-attach-user"], "alice");
    }
}

#[tokio::test]
async fn probe_paths_pass_without_a_token_for_get_and_head_only() {
    let mut config = base_config();
    config.unauthenticated_paths = vec!["/".into()];
    let mut gw = gateway(config).await;
    let (status, _) = gw.send("GET", "/", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gw.reached(), 1);
    let (status, _) = gw.send("HEAD", "/", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let (status, body) = gw.send(method, "/", &[], "{}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} /: {body}");
    }
    assert_eq!(gw.reached(), 2, "no other method reached the model");
    // Other paths always need a token.
    let (status, _) = gw.send("GET", "/api/tags", &[], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_deny_all_config_refuses_valid_tokens_before_the_model() {
    let mut config = base_config();
    config.deny_all = true;
    let mut gw = gateway(config).await;
    let auth = bearer(&alice());
    for (method, path, body) in [
        ("POST", "/api/chat", r#"{"model":"tinyllama"}"#),
        ("GET", "/api/tags", ""),
        ("GET", "/api/version", ""),
    ] {
        let (status, json) = gw
            .send(method, path, &[("authorization", &auth)], body)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(json["error"], "forbidden");
    }
    assert_eq!(gw.reached(), 0);
}

#[tokio::test]
async fn hop_by_hop_headers_go_before_the_gateway_sets_its_own() {
    let mut gw = gateway(base_config()).await;
    let auth = bearer(&alice());
    for named in [
        "x-attach-user",
        "X_Attach_Claims",
        "host",
        "x-forwarded-for",
    ] {
        let connection = format!("close, {named}");
        let (status, json) = gw
            .send(
                "POST",
                "/api/chat",
                &[("authorization", &auth), ("connection", &connection)],
                r#"{"model":"tinyllama"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{named}");
        assert_eq!(json["reason"], "connection_names_gateway_header");
    }
    assert_eq!(gw.reached(), 0);
    // A Connection header naming a header of the client's own is fine, and
    // that header is dropped with it.
    let (status, _) = gw
        .send(
            "POST",
            "/api/chat",
            &[
                ("authorization", &auth),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("x-forwarded-for", "6.6.6.6"),
            ],
            r#"{"model":"tinyllama"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let seen = gw.last();
    assert!(!seen.headers.contains_key("x-hop"));
    assert!(!seen.headers.contains_key("connection"));
    assert_eq!(seen.headers["x-attach-user"], "alice");
    // The client's own X-Forwarded-For is not trusted: only its address.
    assert_eq!(seen.headers["x-forwarded-for"], "192.0.2.7");
}

#[tokio::test]
async fn the_model_receives_the_canonical_body_that_was_judged() {
    let mut gw = gateway(staff_tiny()).await;
    let auth = bearer(&alice());
    let (status, _) = gw
        .send(
            "POST",
            "/API/Chat",
            &[("authorization", &auth)],
            r#"{ "MODEL" : "registry.ollama.ai/library/TinyLlama:latest", "stream": false }"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let seen = gw.last();
    assert_eq!(seen.path, "/api/chat");
    assert_eq!(
        &seen.body[..],
        br#"{"model":"tinyllama:latest","stream":false}"#
    );
    assert_eq!(
        seen.headers["content-length"],
        seen.body.len().to_string().as_str()
    );
    let reached = gw.reached();
    for (body, status) in [
        (
            r#"{"model":"tinyllama","MODEL":"llama3.1:70b"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"model":"tinyllama","model":"llama3.1:70b"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (r#"{"model":"llama3.1:70b"}"#, StatusCode::FORBIDDEN),
        (r#"{"model":"tinyllama/big"}"#, StatusCode::FORBIDDEN),
        (r#"{"model":"tiny llama"}"#, StatusCode::BAD_REQUEST),
    ] {
        let (got, json) = gw
            .send("POST", "/api/chat", &[("authorization", &auth)], body)
            .await;
        assert_eq!(got, status, "{body}: {json}");
    }
    assert_eq!(gw.reached(), reached, "nothing refused reached the model");
    // The model list shows only what the caller may use.
    let (status, list) = gw
        .send("GET", "/api/tags", &[("authorization", &auth)], "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!({"models": [{"name": "tinyllama:latest"}]}));
    assert_eq!(gw.last().method, "GET");
}

#[tokio::test]
async fn the_genai_metrics_count_inference_answers_only_and_name_model_errors() {
    let mut config = base_config();
    config.metrics.backend = Some("team/llm".into());
    let mut gw = gateway(config).await;
    let auth = bearer(&alice());
    let chat = r#"{"model": "tinyllama", "stream": false}"#;
    let (status, _) = gw
        .send("POST", "/api/chat", &[("authorization", &auth)], chat)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = gw
        .send("GET", "/api/tags", &[("authorization", &auth)], "")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = gw
        .send("POST", "/api/generate", &[("authorization", &auth)], chat)
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let text = gw.metrics.encode();
    let model = "gen_ai_provider_name=\"ollama\",gen_ai_request_model=\"tinyllama:latest\",\
                 attach_backend=\"team/llm\"";
    for line in [
        // The chat's usage as the model reported it; the list read is not
        // an inference answer and counts nowhere.
        format!(
            "gen_ai_client_token_usage_count{{gen_ai_operation_name=\"chat\",{model},\
             gen_ai_token_type=\"input\",user=\"\",tenant=\"\"}} 1"
        ),
        format!(
            "gen_ai_server_request_duration_seconds_count{{gen_ai_operation_name=\"chat\",\
             {model},error_type=\"\"}} 1"
        ),
        // The model's failure is named by its status.
        format!(
            "gen_ai_server_request_duration_seconds_count{{gen_ai_operation_name=\"text_completion\",\
             {model},error_type=\"500\"}} 1"
        ),
    ] {
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
    let answers: usize = text
        .lines()
        .filter(|l| l.starts_with("gen_ai_server_request_duration_seconds_count"))
        .count();
    assert_eq!(answers, 2, "{text}");
    assert!(
        !text.contains("gen_ai_server_time_to_first_token_seconds_count{"),
        "no stream, no first token:\n{text}"
    );
    let overhead = text
        .lines()
        .find(|l| l.starts_with("attach_request_overhead_seconds_count"))
        .unwrap();
    assert!(overhead.ends_with(" 3"), "{overhead}");
}

/// A service that is never ready, in place of the layer below the one
/// tested.
struct NotReady<E>(std::marker::PhantomData<fn() -> E>);

impl<E> Clone for NotReady<E> {
    fn clone(&self) -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<E> NotReady<E> {
    fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<E, B> Service<Request<B>> for NotReady<E> {
    type Response = Response<crate::body::Body>;
    type Error = E;
    type Future = std::future::Pending<Result<Response<crate::body::Body>, E>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), E>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        std::future::pending()
    }
}

/// Whether `service` says it is not ready yet.
fn waits<S: Service<Request<crate::body::Body>>>(mut service: S) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    service.poll_ready(&mut cx).is_pending()
}

#[tokio::test]
async fn every_layer_waits_while_the_layer_below_it_is_not_ready() {
    use crate::error::GatewayError;
    use tower::Layer;
    let gw = gateway(base_config()).await;
    // Above `rescue` errors are answers (Infallible); below, GatewayErrors.
    let top = NotReady::<Infallible>::new;
    let below = NotReady::<GatewayError>::new;
    let layers = [
        (
            "snapshot",
            waits(super::snapshot::SnapshotLayer::new(gw.current.clone()).layer(top())),
        ),
        (
            "observe",
            waits(super::observe::ObserveLayer::new(gw.metrics.clone()).layer(top())),
        ),
        (
            "audit_trail",
            waits(super::audit_trail::AuditLayer.layer(top())),
        ),
        ("rescue", waits(crate::rescue::RescueLayer.layer(below()))),
        (
            "catch_panic",
            waits(super::catch_panic::CatchPanicLayer.layer(below())),
        ),
        (
            "loadshed",
            waits(super::loadshed::LoadShedLayer::default().layer(below())),
        ),
        (
            "client_headers",
            waits(super::client_headers::ClientHeadersLayer.layer(below())),
        ),
        (
            "strip_identity",
            waits(super::strip_identity::StripIdentityLayer.layer(below())),
        ),
        (
            "protected_resource",
            waits(super::protected_resource::ProtectedResourceLayer.layer(below())),
        ),
        ("keys", waits(super::keys::KeysLayer.layer(below()))),
        (
            "authenticate",
            waits(super::authenticate::AuthenticateLayer.layer(below())),
        ),
        (
            "authorize",
            waits(super::authorize::AuthorizeLayer.layer(below())),
        ),
        (
            "exchange",
            waits(super::exchange::ExchangeLayer.layer(below())),
        ),
        ("admit", waits(super::admit::AdmitLayer.layer(below()))),
        (
            "identity_headers",
            waits(super::identity_headers::IdentityHeadersLayer.layer(below())),
        ),
    ];
    let eager: Vec<&str> = layers
        .iter()
        .filter(|(_, waits)| !waits)
        .map(|(name, _)| *name)
        .collect();
    assert!(
        eager.is_empty(),
        "ready while the layer below is not (its backpressure is lost): {eager:?}"
    );
}

#[tokio::test]
async fn a_request_id_is_made_up_only_for_a_request_that_is_audited_or_traced() {
    let chat = r#"{"model":"tinyllama","stream":false}"#;
    let mut quiet = base_config();
    quiet.audit.enabled = false;
    let mut gw = gateway(quiet).await;
    let auth = bearer(&alice());
    let (status, _) = gw
        .send("POST", "/api/chat", &[("authorization", &auth)], chat)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        gw.last().headers.get("x-request-id"),
        None,
        "nothing records the request: no id is made up"
    );
    let mut audited = gateway(base_config()).await;
    let (status, _) = audited
        .send("POST", "/api/chat", &[("authorization", &auth)], chat)
        .await;
    assert_eq!(status, StatusCode::OK);
    let id = audited.last().headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
}

mod keys;

mod traces {
    use opentelemetry::trace::{SpanKind, Status};
    use opentelemetry::{KeyValue, Value as OtelValue};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

    use super::*;

    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";

    /// A gateway sending spans, with the audit log off: traces do not
    /// depend on it.
    async fn traced(hash_user_id: bool) -> (Gateway, InMemorySpanExporter) {
        let mut shared = Shared::new();
        let (traces, spans) = crate::traces::Traces::in_memory(hash_user_id);
        shared.traces = traces;
        let mut config = base_config();
        config.audit.enabled = false;
        (gateway_with(config, shared).await, spans)
    }

    fn attribute(span: &SpanData, key: &str) -> Option<OtelValue> {
        span.attributes
            .iter()
            .find(|kv: &&KeyValue| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    }

    fn text(span: &SpanData, key: &str) -> String {
        attribute(span, key).map_or_else(|| format!("<no {key}>"), |v| v.as_str().into_owned())
    }

    #[tokio::test]
    async fn a_forwarded_request_is_traced_from_the_caller_through_the_gateway_to_the_model() {
        let (mut gw, spans) = traced(false).await;
        let auth = bearer(&alice());
        let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
        let (status, _) = gw
            .send(
                "POST",
                "/api/chat",
                &[
                    ("authorization", &auth),
                    ("traceparent", &parent),
                    ("tracestate", "vendor=kept"),
                ],
                r#"{"model":"tinyllama","stream":false}"#,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let finished = spans.get_finished_spans().unwrap();
        assert_eq!(finished.len(), 2, "{finished:#?}");
        let server = finished
            .iter()
            .find(|s| s.span_kind == SpanKind::Server)
            .expect("a server span");
        let client = finished
            .iter()
            .find(|s| s.span_kind == SpanKind::Client)
            .expect("a client span");
        // The caller's trace, continued: caller -> server -> client -> model.
        assert_eq!(server.span_context.trace_id().to_string(), CALLER_TRACE);
        assert_eq!(server.parent_span_id.to_string(), CALLER_SPAN);
        assert_eq!(client.span_context.trace_id().to_string(), CALLER_TRACE);
        assert_eq!(client.parent_span_id, server.span_context.span_id());
        let seen = gw.last();
        assert_eq!(
            seen.headers["traceparent"],
            format!("00-{CALLER_TRACE}-{}-01", client.span_context.span_id()),
            "the model is told the client span is its parent, not the caller's span"
        );
        assert_eq!(seen.headers["tracestate"], "vendor=kept");

        assert_eq!(server.name, "POST inference");
        assert_eq!(text(server, "user.id"), "alice");
        assert_eq!(text(server, "attach.decision"), "allow");
        assert_eq!(text(server, "attach.reason"), "forwarded");
        assert_eq!(text(server, "attach.rule"), "authenticated");
        assert_eq!(text(server, "gen_ai.request.model"), "tinyllama:latest");
        assert_eq!(
            attribute(server, "http.response.status_code"),
            Some(OtelValue::I64(200))
        );
        for span in [server, client] {
            assert_eq!(
                attribute(span, "gen_ai.usage.input_tokens"),
                Some(OtelValue::I64(1))
            );
            assert_eq!(
                attribute(span, "gen_ai.usage.output_tokens"),
                Some(OtelValue::I64(1))
            );
        }
        let events: Vec<&str> = server.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(
            events,
            ["authenticated", "authorized", "admitted", "answered"]
        );

        assert_eq!(client.name, "chat tinyllama:latest");
        assert_eq!(text(client, "gen_ai.operation.name"), "chat");
        assert_eq!(text(client, "gen_ai.provider.name"), "ollama");
        assert_eq!(client.status, Status::Unset);
        // The client span lies within the server span.
        assert!(client.start_time >= server.start_time);
        assert!(client.end_time <= server.end_time);
    }

    #[tokio::test]
    async fn a_refused_request_gets_one_span_that_says_why_and_nothing_reaches_the_model() {
        let (mut gw, spans) = traced(false).await;
        let (status, _) = gw
            .send("POST", "/api/chat", &[], r#"{"model":"tinyllama"}"#)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = gw
            .send(
                "DELETE",
                "/api/delete",
                &[("authorization", &bearer(&alice()))],
                r#"{"model":"tinyllama"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(gw.reached(), 0);
        let finished = spans.get_finished_spans().unwrap();
        assert_eq!(finished.len(), 2, "{finished:#?}");
        let [unauthenticated, forbidden] = &finished[..] else {
            unreachable!()
        };
        for span in [unauthenticated, forbidden] {
            assert_eq!(span.span_kind, SpanKind::Server);
            assert_eq!(text(span, "attach.decision"), "deny");
            assert_eq!(
                span.parent_span_id,
                opentelemetry::trace::SpanId::INVALID,
                "no caller trace: a root"
            );
        }
        assert_eq!(text(unauthenticated, "attach.reason"), "missing_token");
        assert_eq!(
            attribute(unauthenticated, "user.id"),
            None,
            "nobody was authenticated"
        );
        assert_eq!(text(forbidden, "user.id"), "alice");
        assert_ne!(text(forbidden, "attach.reason"), "forwarded");
        assert_eq!(
            attribute(forbidden, "http.response.status_code"),
            Some(OtelValue::I64(403))
        );
    }

    #[tokio::test]
    async fn the_user_id_can_be_hashed_and_a_model_error_marks_both_spans() {
        let (mut gw, spans) = traced(true).await;
        let (status, _) = gw
            .send(
                "POST",
                "/api/generate",
                &[("authorization", &bearer(&alice()))],
                r#"{"model":"tinyllama","stream":false}"#,
            )
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let finished = spans.get_finished_spans().unwrap();
        assert_eq!(finished.len(), 2, "{finished:#?}");
        for span in &finished {
            assert!(matches!(span.status, Status::Error { .. }), "{span:#?}");
        }
        let server = finished
            .iter()
            .find(|s| s.span_kind == SpanKind::Server)
            .unwrap();
        // sha256("alice")
        assert_eq!(
            text(server, "user.id"),
            "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90"
        );
        assert!(
            server
                .attributes
                .iter()
                .all(|kv| kv.value.as_str() != "alice"),
            "the plain id appears nowhere: {:#?}",
            server.attributes
        );
    }

    #[tokio::test]
    async fn a_probe_on_an_unauthenticated_path_is_not_traced() {
        let mut shared = Shared::new();
        let (traces, spans) = crate::traces::Traces::in_memory(false);
        shared.traces = traces;
        let mut config = base_config();
        config.unauthenticated_paths = vec!["/api/tags".into()];
        let mut gw = gateway_with(config, shared).await;
        let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
        let (status, _) = gw
            .send("GET", "/api/tags", &[("traceparent", &parent)], "")
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(gw.last().path, "/api/tags");
        assert_eq!(
            gw.last().headers["traceparent"],
            parent.as_str(),
            "a probe's trace is the caller's own"
        );
        assert_eq!(spans.get_finished_spans().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn without_traces_the_callers_traceparent_reaches_the_model_untouched() {
        let mut gw = gateway(base_config()).await;
        let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
        let (status, _) = gw
            .send(
                "POST",
                "/api/chat",
                &[
                    ("authorization", &bearer(&alice())),
                    ("traceparent", &parent),
                ],
                r#"{"model":"tinyllama","stream":false}"#,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(gw.last().headers["traceparent"], parent.as_str());
    }
}

/// An MCP server behind the whole stack (`engine: mcp`): what reaches it,
/// and what comes back.
mod mcp {
    use super::*;
    use crate::canonical::Engine;
    use crate::policy::{EndpointClass, Rule, Subjects};

    fn config() -> GatewayConfig {
        let mut config = base_config();
        config.upstream.engine = Engine::Mcp;
        config.resource.resource = Some("https://tools.test/mcp".into());
        let mut deploy = Rule::new(
            "deployers",
            Subjects {
                scopes: vec!["tools:deploy".into()],
                ..Subjects::default()
            },
            &["tool:deploy"],
            &[EndpointClass::Inference, EndpointClass::Read],
        );
        deploy.human_only = false;
        config.access.rules = vec![
            Rule::new(
                "staff",
                Subjects::groups(&["staff"]),
                &["tool:search", "prompt:summarize"],
                &[EndpointClass::Inference, EndpointClass::Read],
            ),
            deploy,
        ];
        config
    }

    fn call(tool: &str) -> String {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool}})
            .to_string()
    }

    #[tokio::test]
    async fn an_allowed_call_reaches_the_server_canonical_without_the_token() {
        let mut gw = gateway(config()).await;
        let auth = bearer(&alice());
        let body = r#"{"jsonrpc":"2.0", "id":7, "Method":"tools/call", "params":{"Name":"search", "arguments":{"Q":1}}}"#;
        let (status, _) = gw
            .send(
                "POST",
                "/mcp",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let seen = gw.last();
        assert_eq!(
            std::str::from_utf8(&seen.body).unwrap(),
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"Q":1}}}"#
        );
        assert_eq!(seen.headers["content-length"], seen.body.len().to_string());
        assert!(seen.headers.get("authorization").is_none());
        assert_eq!(seen.headers["x-attach-user"], "alice");
    }

    #[tokio::test]
    async fn refused_calls_never_reach_the_server() {
        let mut gw = gateway(config()).await;
        let auth = bearer(&alice());
        let h = [("authorization", auth.as_str())];
        // No token: 401 naming the metadata.
        let (status, _) = gw.send("POST", "/mcp", &[], &call("search")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // A tool no rule names; an unknown method; a batch with one refusal.
        let (status, body) = gw.send("POST", "/mcp", &h, &call("delete_all")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["denied_by"], "model");
        let unknown = json!({"jsonrpc": "2.0", "id": 1, "method": "tasks/list"}).to_string();
        let (status, body) = gw.send("POST", "/mcp", &h, &unknown).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["denied_by"], "unknown_endpoint");
        let batch = format!(
            "[{},{}]",
            call("search").replace("7", "1"),
            call("delete_all")
        );
        let (status, _) = gw.send("POST", "/mcp", &h, &batch).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // What a server could read differently: 400 with the reason.
        let forked = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","NAME":"delete_all"}}"#;
        let (status, body) = gw.send("POST", "/mcp", &h, forked).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["reason"], "key_collision");
        // Routing headers that disagree with the body.
        let (status, body) = gw
            .send(
                "POST",
                "/mcp",
                &[
                    h[0],
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "delete_all"),
                ],
                &call("search"),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["reason"], "header_mismatch");
        let (status, _) = gw
            .send(
                "POST",
                "/mcp",
                &[h[0], ("mcp-method", "tools/list")],
                &call("search"),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // Other paths and methods are unknown endpoints.
        for (method, path) in [("POST", "/admin"), ("PUT", "/mcp"), ("GET", "/mcp/x")] {
            let (status, _) = gw.send(method, path, &h, "").await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
        }
        assert_eq!(gw.reached(), 0, "{:?}", gw.upstream.seen());
        // The server's stream and the end of a session need `read` only.
        let (status, _) = gw.send("GET", "/mcp", &h, "").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = gw.send("DELETE", "/mcp", &h, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(gw.reached(), 2);
        // Each is counted, unknown methods under one label.
        let metrics = gw.metrics.encode();
        for series in [
            r#"attach_mcp_messages_total{method="GET",target="",decision="allow"} 1"#,
            r#"attach_mcp_messages_total{method="DELETE",target="",decision="allow"} 1"#,
            r#"attach_mcp_messages_total{method="(unknown)",target="",decision="deny"} 4"#,
            // delete_all, and both calls of the refused batch.
            r#"attach_mcp_messages_total{method="tools/call",target="(unlisted)",decision="deny"} 3"#,
        ] {
            assert!(metrics.contains(series), "{series} in {metrics}");
        }
    }

    #[tokio::test]
    async fn matching_routing_headers_pass() {
        let mut gw = gateway(config()).await;
        let auth = bearer(&alice());
        let (status, _) = gw
            .send(
                "POST",
                "/mcp",
                &[
                    ("authorization", &auth),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "search"),
                ],
                &call("search"),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_scope_gated_tool_names_its_scope_and_the_metadata_lists_it() {
        let mut gw = gateway(config()).await;
        let auth = bearer(&alice());
        let response = gw
            .respond("POST", "/mcp", &[("authorization", &auth)], &call("deploy"))
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains(r#"error="insufficient_scope", scope="tools:deploy""#),
            "{challenge}"
        );
        assert!(
            challenge.contains(
                r#"resource_metadata="https://tools.test/.well-known/oauth-protected-resource/mcp""#
            ),
            "{challenge}"
        );
        let (status, doc) = gw
            .send("GET", "/.well-known/oauth-protected-resource/mcp", &[], "")
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc["resource"], "https://tools.test/mcp");
        assert_eq!(doc["scopes_supported"], json!(["tools:deploy"]));
        assert_eq!(gw.reached(), 0);
    }

    #[tokio::test]
    async fn tool_lists_are_trimmed_in_json_and_sse_answers() {
        let mut gw = gateway(config()).await;
        let auth = bearer(&alice());
        let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).to_string();
        let (status, body) = gw
            .send("POST", "/mcp", &[("authorization", &auth)], &list)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["result"]["tools"], json!([{"name": "search"}]));
        // In an SSE answer too, every event kept, the list trimmed.
        let response = gw
            .respond(
                "POST",
                "/mcp",
                &[("authorization", &auth), ("x-answer-sse", "1")],
                &list,
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let length: usize = response.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(length, text.len());
        let text = std::str::from_utf8(&text).unwrap();
        assert!(text.contains("notifications/progress"), "{text}");
        assert!(text.contains(r#""tools":[{"name":"search"}]"#), "{text}");
        assert!(!text.contains("delete_all"), "{text}");
        // The calls and lists are counted by method, target and decision.
        let (status, _) = gw
            .send(
                "POST",
                "/mcp",
                &[("authorization", &auth)],
                &call("delete_all"),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let metrics = gw.metrics.encode();
        assert!(
            metrics.contains(
                r#"attach_mcp_messages_total{method="tools/list",target="",decision="allow"} 2"#
            ),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"attach_mcp_messages_total{method="tools/call",target="tool:delete_all",decision="deny"} 1"#),
            "{metrics}"
        );
    }

    /// In a batch, the list request's answer is trimmed, found by its id;
    /// the call's answer is left as it is.
    #[tokio::test]
    async fn a_batchs_list_answer_is_trimmed_by_id() {
        let mut gw = gateway(config()).await;
        let auth = bearer(&alice());
        let batch = json!([
            {"jsonrpc": "2.0", "id": "l", "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "search"}},
        ])
        .to_string();
        let (status, body) = gw
            .send("POST", "/mcp", &[("authorization", &auth)], &batch)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body[0]["result"]["tools"], json!([{"name": "search"}]));
        assert_eq!(body[1]["result"]["usage"]["prompt_tokens"], 100);
        // Lists of two kinds in one batch: each answer trimmed as its own
        // kind, never both as the first one's.
        let batch = json!([
            {"jsonrpc": "2.0", "id": "p", "method": "prompts/list"},
            {"jsonrpc": "2.0", "id": "t", "method": "tools/list"},
        ])
        .to_string();
        let (status, body) = gw
            .send("POST", "/mcp", &[("authorization", &auth)], &batch)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body[0]["result"]["prompts"], json!([{"name": "summarize"}]));
        assert_eq!(body[1]["result"]["tools"], json!([{"name": "search"}]));
    }

    /// Audit lines name the method and the target, and a tool call's
    /// arguments only when the config asks for them.
    #[tokio::test]
    async fn arguments_are_audited_only_when_asked() {
        for audited in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let mut config = config();
            config.audit.path = Some(path.clone());
            config.mcp.audit_arguments = audited;
            let mut gw = gateway(config).await;
            let auth = bearer(&alice());
            // The call's arguments are found in a batch, behind a list.
            let body = json!([
                {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                 "params": {"name": "search", "arguments": {"q": "secret plans"}}},
            ])
            .to_string();
            let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).to_string();
            for body in [body, list] {
                let (status, _) = gw
                    .send("POST", "/mcp", &[("authorization", &auth)], &body)
                    .await;
                assert_eq!(status, StatusCode::OK);
            }
            let mut text = String::new();
            for _ in 0..100 {
                text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.lines().count() == 2 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            // A lone list is a read.
            assert_eq!(lines[1]["endpoint"], "read", "{}", lines[1]);
            assert_eq!(lines[1]["mcp_method"], "tools/list");
            let line = &lines[0];
            assert_eq!(line["endpoint"], "inference", "{line}");
            assert_eq!(line["mcp_method"], "tools/list,tools/call");
            assert_eq!(line["model"], "tool:search");
            assert_eq!(line["rule"], "staff");
            if audited {
                assert_eq!(line["arguments"], r#"{"q":"secret plans"}"#);
            } else {
                assert!(line.get("arguments").is_none(), "{line}");
            }
        }
    }

    /// An MCP answer is a tool's, not a model's: it is never metered.
    #[tokio::test]
    async fn a_tools_usage_member_is_not_charged_as_llm_tokens() {
        let mut config = config();
        config.quotas.limits = vec![crate::quota::QuotaLimit {
            tokens_per_minute: Some(10),
            ..crate::quota::QuotaLimit::named("tokens")
        }];
        let mut gw = gateway(config).await;
        let auth = bearer(&alice());
        // Each answer says `usage: 200 tokens` against a budget of 10 a
        // minute: none is charged, so none is refused.
        for _ in 0..3 {
            let (status, body) = gw
                .send("POST", "/mcp", &[("authorization", &auth)], &call("search"))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
}

/// Where the gateway asked for usage the client did not, the usage event
/// is taken out of the stream: the upstream's `Content-Length` no longer
/// holds, so it is dropped, and what the client gets is what it asked for.
#[tokio::test]
async fn an_added_usage_event_is_removed_with_the_length_that_counted_it() {
    let mut config = base_config();
    config.upstream.engine = crate::canonical::Engine::Openai;
    config.access.rules = vec![crate::policy::Rule::new(
        "staff",
        crate::policy::Subjects::groups(&["staff"]),
        &["*"],
        &[crate::policy::EndpointClass::Inference],
    )];
    let mut gw = gateway(config).await;
    let auth = bearer(&alice());
    for (asked, usage_shown) in [(false, false), (true, true)] {
        let body = if asked {
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}, "messages": []})
        } else {
            json!({"model": "m", "stream": true, "messages": []})
        };
        let response = gw
            .respond(
                "POST",
                "/v1/chat/completions",
                &[("authorization", &auth), ("x-answer-sse", "1")],
                &body.to_string(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let length = response
            .headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
        let text = response.into_body().collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&text).unwrap();
        if let Some(length) = length {
            assert_eq!(length, text.len(), "asked {asked}: a length that holds");
        }
        assert!(
            !asked || length.is_some(),
            "nothing removed, the length stays"
        );
        assert_eq!(
            text.contains("\"usage\""),
            usage_shown,
            "asked {asked}: {text}"
        );
        assert!(text.contains("\"hi\"") && text.contains("[DONE]"), "{text}");
    }
}

/// A model list of megabytes, well within the bound the gateway reads, is
/// filtered whole; past the bound it is never passed on unfiltered.
#[tokio::test]
async fn a_large_model_list_is_filtered_whole_and_one_past_the_bound_refused() {
    let mut gw = gateway(staff_tiny()).await;
    let auth = bearer(&alice());
    // About 33 bytes a model: 1.7 MB, then 10 MB (the bound is 8 MiB).
    let (status, list) = gw
        .send(
            "GET",
            "/api/tags",
            &[("authorization", &auth), ("x-answer-models", "52000")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!({"models": [{"name": "tinyllama:latest"}]}));
    let (status, list) = gw
        .send(
            "GET",
            "/api/tags",
            &[("authorization", &auth), ("x-answer-models", "300000")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{list}");
}

/// An endpoint that describes one model (`/api/show`, `/v1/models/{id}`)
/// is a read, but it shows only a model the caller may use: reading the
/// catalogue is not a licence to learn about every model in it.
#[tokio::test]
async fn describing_a_model_needs_the_right_to_use_it() {
    use crate::policy::{EndpointClass, Rule, Subjects};
    let rules = vec![
        Rule::new(
            "staff-read",
            Subjects::groups(&["staff"]),
            &["*"],
            &[EndpointClass::Read],
        ),
        Rule::new(
            "staff-tiny",
            Subjects::groups(&["staff"]),
            &["tinyllama"],
            &[EndpointClass::Inference],
        ),
    ];
    let mut config = base_config();
    config.access.rules = rules;
    let mut gw = gateway(config).await;
    let auth = bearer(&alice());
    for (model, status) in [
        ("tinyllama", StatusCode::OK),
        ("llama3.1:70b", StatusCode::FORBIDDEN),
    ] {
        let body = json!({"model": model}).to_string();
        let (got, _) = gw
            .send("POST", "/api/show", &[("authorization", &auth)], &body)
            .await;
        assert_eq!(got, status, "/api/show {model}");
    }
    // Ollama's OpenAI route answers a model it may not show as one that is
    // not there.
    let reached = gw.reached();
    let (got, _) = gw
        .send(
            "GET",
            "/v1/models/llama3.1:70b",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    assert_eq!(gw.reached(), reached, "never asked of the model");
    let (got, _) = gw
        .send(
            "GET",
            "/v1/models/tinyllama",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(got, StatusCode::OK);
}

/// Only the model lists are filtered, and only when asked; an endpoint that
/// names a model without describing it (`/api/pull`) is judged by its own
/// class alone.
#[tokio::test]
async fn only_model_lists_are_filtered_and_an_admin_needs_no_inference_grant() {
    use crate::policy::{EndpointClass, Rule, Subjects};
    let mut config = base_config();
    config.access.rules = vec![
        Rule::new(
            "staff-tiny",
            Subjects::groups(&["staff"]),
            &["tinyllama"],
            &[EndpointClass::Inference, EndpointClass::Read],
        ),
        Rule::new(
            "staff-pull",
            Subjects::groups(&["staff"]),
            &["*"],
            &[EndpointClass::Admin],
        ),
    ];
    let mut gw = gateway(config.clone()).await;
    let auth = bearer(&alice());
    // Another GET passes as the model answered it.
    let (status, body) = gw
        .send("GET", "/api/version", &[("authorization", &auth)], "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["model"], "x", "{body}");
    // Pulling a model it may not chat with is an admin's job, not a use.
    let (status, _) = gw
        .send(
            "POST",
            "/api/pull",
            &[("authorization", &auth)],
            r#"{"model": "llama3.1:70b"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // With filtering off, the list comes whole.
    config.access.filter_model_lists = false;
    let mut gw = gateway(config).await;
    let (status, list) = gw
        .send("GET", "/api/tags", &[("authorization", &auth)], "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["models"].as_array().map(Vec::len), Some(2), "{list}");
}

/// The request body limit is a size a body may have: exactly the limit is
/// read, one byte more is 413, and nothing over it reaches the model. What
/// the gateway forwards may be longer (here `tinyllama` is forwarded as
/// `tinyllama:latest`): the client is not refused for the gateway's words.
#[tokio::test]
async fn a_body_of_exactly_the_limit_passes_and_one_byte_more_is_refused() {
    let body = |content: &str| {
        json!({"model": "tinyllama", "stream": false,
            "messages": [{"role": "user", "content": content}]})
        .to_string()
    };
    let limit = body("12345678").len();
    let mut config = staff_tiny();
    config.limits.max_request_body_bytes = limit as u64;
    let mut gw = gateway(config).await;
    let auth = bearer(&alice());
    let (status, _) = gw
        .send(
            "POST",
            "/api/chat",
            &[("authorization", &auth)],
            &body("12345678"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(gw.last().body.len() > limit, "forwarded longer than read");
    let reached = gw.reached();
    let (status, answer) = gw
        .send(
            "POST",
            "/api/chat",
            &[("authorization", &auth)],
            &body("123456789"),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(gw.reached(), reached);
}

/// Forwarding headers are believed only from a trusted proxy (by its
/// address), and the model always learns the client's host, address and
/// scheme.
#[tokio::test]
async fn forwarding_headers_are_kept_from_trusted_proxies_only_and_always_set() {
    let sent = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
    ];
    // The test client is 192.0.2.7.
    for (proxies, trusted) in [
        (vec![], false),
        (vec!["10.0.0.0/8"], false),
        (vec!["192.0.2.0/24"], true),
    ] {
        let mut config = staff_tiny();
        config.trusted_proxies = proxies.iter().map(|p| p.parse().unwrap()).collect();
        let mut gw = gateway(config).await;
        let auth = bearer(&alice());
        let mut headers = vec![("authorization", auth.as_str()), ("host", "llm.example")];
        headers.extend(sent);
        let (status, _) = gw
            .send("POST", "/api/chat", &headers, r#"{"model":"tinyllama"}"#)
            .await;
        assert_eq!(status, StatusCode::OK);
        let seen = gw.last().headers;
        let (xff, proto) = if trusted {
            ("6.6.6.6, 192.0.2.7", "https")
        } else {
            ("192.0.2.7", "http")
        };
        assert_eq!(seen["x-forwarded-for"], xff, "{proxies:?}");
        assert_eq!(seen["x-forwarded-proto"], proto, "{proxies:?}");
        assert_eq!(seen["x-forwarded-host"], "llm.example", "{proxies:?}");
    }
}

/// `config` with a token exchange that writes `x-downstream-token` (its
/// IdP is never asked in the tests that use it).
fn with_exchange_header(mut config: GatewayConfig) -> GatewayConfig {
    let mut exchange = crate::exchange::TokenExchangeConfig::new("gw", "s3cret");
    exchange.token_endpoint = Some("https://idp.invalid/token".into());
    exchange.header = "x-downstream-token".into();
    exchange.audience = Some("llm-downstream".into());
    let mut issuer = IssuerConfig::new(ISSUER, vec![AUDIENCE.into()], Preset::Keycloak);
    issuer.token_exchange = Some(exchange);
    config.issuers = vec![issuer];
    config
}

/// A token exchange's header is the gateway's: a client may not have it
/// dropped by naming it in `Connection`, nor send its own.
#[tokio::test]
async fn a_token_exchange_header_is_the_gateways_own() {
    let config = with_exchange_header(staff_tiny());
    let mut gw = gateway(config).await;
    let auth = bearer(&alice());
    let (status, body) = gw
        .send(
            "POST",
            "/api/chat",
            &[
                ("authorization", &auth),
                ("connection", "x-downstream-token"),
            ],
            r#"{"model":"tinyllama"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// A body the gateway does not read (an upload) is measured by what it
/// declares: exactly the limit passes, one byte more is 413 before the
/// model is asked.
#[tokio::test]
async fn a_streamed_body_of_exactly_the_limit_passes() {
    let mut config = base_config();
    config.access.rules = vec![crate::policy::Rule::new(
        "staff-admin",
        crate::policy::Subjects::groups(&["staff"]),
        &["*"],
        &[crate::policy::EndpointClass::Admin],
    )];
    config.limits.max_request_body_bytes = 16;
    let mut gw = gateway(config).await;
    let auth = bearer(&alice());
    let blob = "0123456789abcdef";
    let (status, _) = gw
        .send(
            "POST",
            "/api/blobs/sha256:abc",
            &[("authorization", &auth), ("content-length", "16")],
            blob,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&gw.last().body[..], blob.as_bytes());
    let reached = gw.reached();
    let (status, _) = gw
        .send(
            "POST",
            "/api/blobs/sha256:abc",
            &[("authorization", &auth), ("content-length", "17")],
            "0123456789abcdefg",
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(gw.reached(), reached);
}

/// A model that refuses the connection is 502 (504 is for one that does
/// not answer in time).
#[tokio::test]
async fn a_refused_connection_is_a_bad_gateway() {
    let mut gw = gateway(staff_tiny()).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut config = staff_tiny();
    config.issuers = gw.current.load().config.issuers.clone();
    config.upstream.url = format!("http://{addr}");
    let runtime = Runtime::build(config, None, &Shared::new()).unwrap();
    for cache in runtime.verifier.key_caches() {
        cache.refresh("initial").await.unwrap();
    }
    gw.current.store(Arc::new(runtime));
    let (status, body) = gw
        .send(
            "POST",
            "/api/chat",
            &[("authorization", &bearer(&alice()))],
            r#"{"model":"tinyllama"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
}

/// The resource the metadata names comes from `Host` only when that is a
/// plain host name (and port): anything else is not echoed.
#[tokio::test]
async fn only_a_plain_host_is_echoed_as_the_resource() {
    let gw = gateway(staff_tiny()).await;
    let runtime = gw.current.load_full();
    let long = format!("{}.example", "a".repeat(250));
    for (host, want) in [
        ("llm.example", Some("http://llm.example")),
        ("llm.example:8080", Some("http://llm.example:8080")),
        ("[::1]:8080", Some("http://[::1]:8080")),
        ("", None),
        ("llm.example/evil", None),
        ("llm.example?x", None),
        ("llm example", None),
        (&*long, None),
    ] {
        let request = Request::get("/").header("host", host).body(()).unwrap();
        assert_eq!(
            super::protected_resource::resource_url(&runtime, &request).as_deref(),
            want,
            "{host:?}"
        );
    }
    // 255 bytes is still a host.
    let longest = format!("{}.example", "a".repeat(247));
    assert_eq!(longest.len(), 255);
    let request = Request::get("/")
        .header("host", &*longest)
        .body(())
        .unwrap();
    assert!(super::protected_resource::resource_url(&runtime, &request).is_some());
}

/// The header a token exchange writes is the gateway's on every request,
/// also one that no exchange runs for (an unauthenticated probe): a
/// client's copy never reaches the model.
#[tokio::test]
async fn a_clients_copy_of_the_exchange_header_never_reaches_the_model() {
    let mut config = with_exchange_header(staff_tiny());
    config.unauthenticated_paths = vec!["/api/tags".into()];
    let mut gw = gateway(config).await;
    let (status, _) = gw
        .send(
            "GET",
            "/api/tags",
            &[("x-downstream-token", "Bearer forged")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(gw.last().headers.get("x-downstream-token").is_none());
    // Naming another header in `Connection` is no offence.
    let (status, _) = gw
        .send(
            "GET",
            "/api/tags",
            &[("connection", "keep-alive, x-hop")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}
