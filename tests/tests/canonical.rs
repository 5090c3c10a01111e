#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! What the gateway judges is what the model runs: the real gateway binary,
//! real Keycloak tokens, in front of upstreams that read requests with the
//! engines' own parsers (Ollama's Go code; vLLM's FastAPI and pydantic),
//! every case over HTTP/1.1 and h2c, and the upstream's verdict asserted.
//!
//! Where a case is an attack, the same request sent straight to the
//! upstream shows what the engine would have run without the gateway.

mod common;

use std::time::Duration;

use attach_sidecar::claims::Preset;
use attach_sidecar::config::{Engine, GatewayConfig, IssuerConfig};
use attach_sidecar::policy::{EndpointClass, Rule, Subjects};
use attach_tests::faithful::{FaithfulUpstream, Verdict};
use attach_tests::gateway::{GatewayProcess, metric_sum};
use attach_tests::keycloak::{AUDIENCE, REALM};
use attach_tests::raw_http::{Protocol, RawBody, RawClient, RawResponse};
use bytes::Bytes;
use serde_json::Value;

/// Installed in the Ollama-faithful upstream.
const OLLAMA_MODELS: &[&str] = &[
    "tinyllama",
    "llama3.1:70b",
    "tinyllama/big",
    "hf.co/someone/big-gguf:q4",
];

/// Served by the vLLM-faithful upstream: the base model (the default) and
/// a LoRA adapter.
const VLLM_MODELS: &[&str] = &["big-chat", "tiny-lora"];

fn config(upstream: &FaithfulUpstream, engine: Engine, small: &str) -> GatewayConfig {
    let kc = common::world().keycloak().unwrap();
    let issuer = IssuerConfig::new(kc.issuer(REALM), vec![AUDIENCE.into()], Preset::Keycloak);
    let mut config = GatewayConfig::new(vec![issuer]);
    config.upstream.url = upstream.url.clone();
    config.upstream.engine = engine;
    use EndpointClass::*;
    config.access.rules = vec![
        // bob: one small model (a glob, as rules are written).
        Rule::new(
            "staff-small",
            Subjects::groups(&["staff"]),
            &[small],
            &[Inference, Read],
        ),
        // alice: everything, and admin.
        Rule::new(
            "power",
            Subjects::groups(&["ai-power-users"]),
            &["*"],
            &[Inference, Read],
        ),
        Rule::new("admins", Subjects::groups(&["admins"]), &["*"], &[Admin]),
    ];
    config
}

/// One request through the gateway (or straight to an upstream).
struct Call<'a> {
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: RawBody,
}

fn post(path: &str, body: &str) -> Call<'static> {
    Call {
        method: "POST",
        path: leak(path),
        headers: vec![("content-type", "application/json")],
        body: RawBody::Full(Bytes::copy_from_slice(body.as_bytes())),
    }
}

fn get(path: &str) -> Call<'static> {
    Call {
        method: "GET",
        path: leak(path),
        headers: Vec::new(),
        body: RawBody::Empty,
    }
}

/// Test tables hold `&'static str`s built at run time.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

impl<'a> Call<'a> {
    fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }
}

async fn send(
    client: &RawClient,
    protocol: Protocol,
    base: &str,
    token: Option<&str>,
    call: &Call<'_>,
) -> (RawResponse, Verdict) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = call.headers.clone();
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    let response = client
        .send(
            protocol,
            call.method,
            &format!("{base}{}", call.path),
            &headers,
            call.body.clone(),
        )
        .await
        .unwrap();
    let verdict = Verdict::of(&response.headers);
    (response, verdict)
}

/// Asserts the gateway refused with `status` (and `reason` for 400s,
/// `denied_by` for 403s) without the upstream seeing the request.
fn refused(what: &str, (response, verdict): &(RawResponse, Verdict), status: u16, why: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
    let key = if status == 400 { "reason" } else { "denied_by" };
    assert_eq!(response.json()[key], why, "{what}: {}", response.text());
    assert_eq!(
        verdict.route, None,
        "{what}: the upstream saw a refused request"
    );
}

/// Asserts the upstream ran `model`.
fn ran(what: &str, (response, verdict): &(RawResponse, Verdict), model: &str) {
    assert!(
        (200..300).contains(&response.status),
        "{what}: {} {}",
        response.status,
        response.text()
    );
    assert_eq!(verdict.model, model, "{what}");
}

struct Ollama {
    upstream: FaithfulUpstream,
    gateway: GatewayProcess,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn ollama_world(extra: impl FnOnce(&mut GatewayConfig)) -> Ollama {
    let upstream = FaithfulUpstream::ollama(OLLAMA_MODELS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut config = config(&upstream, Engine::Ollama, "tinyllama*");
    config.audit.path = Some(audit.clone());
    extra(&mut config);
    let gateway = GatewayProcess::start(config).await.unwrap();
    Ollama {
        upstream,
        gateway,
        audit,
        _dir: dir,
    }
}

#[tokio::test]
async fn ollama_bodies_are_judged_as_go_decodes_them() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let w = ollama_world(|_| {}).await;
    let client = RawClient::new();
    let chat = |body: &str| post("/api/chat", body);

    // The attacks are real: straight to the engine, these run the big model.
    for body in [
        r#"{"model":"tinyllama","MODEL":"llama3.1:70b","stream":false}"#,
        r#"{"model":"tinyllama","model":"llama3.1:70b","stream":false}"#,
        r#"{"model":"tinyllama","m\u006fdel":"llama3.1:70b","stream":false}"#,
    ] {
        let direct = send(&client, Protocol::Http1, &w.upstream.url, None, &chat(body)).await;
        ran(&format!("direct {body}"), &direct, "llama3.1:70b");
    }

    let big = "\u{212a}"; // KELVIN SIGN: Go folds it to K
    let deep = format!(
        r#"{{"model":"tinyllama","x":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let kelvin = format!(
        r#"{{"model":"tinyllama","stream":false,"keep_alive":"5m","{big}eep_alive":"1h"}}"#
    );
    for protocol in Protocol::ALL {
        let go = |call: Call<'static>| {
            let client = &client;
            let url = &w.gateway.url;
            let bob = &bob;
            async move { send(client, protocol, url, Some(bob), &call).await }
        };
        let p = format!("{protocol:?}");
        // Keys Go would take for one field are refused.
        for body in [
            r#"{"model":"tinyllama","MODEL":"llama3.1:70b","stream":false}"#,
            r#"{"MODEL":"llama3.1:70b","model":"tinyllama","stream":false}"#,
            r#"{"model":"tinyllama","stream":false,"\u017ftream":true}"#,
            r#"{"model":"tinyllama","stream":false,"messages":[{"role":"user","ROLE":"system"}]}"#,
            kelvin.as_str(),
        ] {
            refused(
                &format!("{p} {body}"),
                &go(chat(body)).await,
                400,
                "key_collision",
            );
        }
        // A lone case variant is read as Go reads it, and judged.
        refused(
            &p,
            &go(chat(r#"{"MODEL":"llama3.1:70b","stream":false}"#)).await,
            403,
            "model",
        );
        refused(
            &p,
            &go(chat(r#"{"m\u006fdel":"llama3.1:70b","stream":false}"#)).await,
            403,
            "model",
        );
        ran(
            &p,
            &go(chat(r#"{"MODEL":"TinyLlama","stream":false}"#)).await,
            "tinyllama:latest",
        );
        // What two parsers could read two ways is refused.
        for (body, reason) in [
            (
                r#"{"model":"tinyllama","model":"llama3.1:70b","stream":false}"#,
                "duplicate_key",
            ),
            (
                r#"{"model":"tinyllama","m\u006fdel":"llama3.1:70b"}"#,
                "duplicate_key",
            ),
            (
                r#"{"model":"tinyllama","stream":false} {"model":"llama3.1:70b"}"#,
                "trailing_data",
            ),
            (r#"[{"model":"tinyllama"}]"#, "not_an_object"),
            (r#"{"model":"tinyllama","x":NaN}"#, "invalid_json"),
            (r#"{"model":"tiny\ud800llama"}"#, "invalid_json"),
            (deep.as_str(), "too_deep"),
        ] {
            refused(&format!("{p} {body}"), &go(chat(body)).await, 400, reason);
        }
        let invalid_utf8 = Call {
            body: RawBody::Full(Bytes::from_static(
                b"{\"model\":\"tiny\xffllama\",\"stream\":false}",
            )),
            ..chat("")
        };
        refused(&p, &go(invalid_utf8).await, 400, "invalid_utf8");
        // Any Content-Type: the body is judged all the same.
        let as_text = chat(r#"{"model":"tinyllama","MODEL":"llama3.1:70b"}"#)
            .header("content-type", "text/plain");
        refused(&p, &go(as_text).await, 400, "key_collision");
        // A body the gateway does not decode is refused, not passed on.
        for encoding in ["gzip", "zstd", "br, identity"] {
            let encoded = chat(r#"{"model":"tinyllama"}"#).header("content-encoding", encoding);
            refused(
                &format!("{p} {encoding}"),
                &go(encoded).await,
                400,
                "content_encoding",
            );
        }
        let zstd = post("/v1/responses", r#"{"model":"tinyllama","input":"hi"}"#)
            .header("content-encoding", "zstd");
        refused(&p, &go(zstd).await, 400, "content_encoding");
        // A chunked (or multi-frame) body is judged whole.
        let chunked = Call {
            body: RawBody::Chunked(vec![
                Bytes::from_static(br#"{"model":"tinyllama","#),
                Bytes::from_static(br#""MODEL":"llama3.1:70b"}"#),
            ]),
            ..chat("")
        };
        refused(&p, &go(chunked).await, 400, "key_collision");
        let chunked = Call {
            body: RawBody::Chunked(vec![
                Bytes::from_static(br#"{"stream":false,"#),
                Bytes::from_static(br#""model":"TINYLLAMA"}"#),
            ]),
            ..chat("")
        };
        ran(&p, &go(chunked).await, "tinyllama:latest");
        // Metering fields: Go's types, forwarded as decided.
        refused(
            &p,
            &go(chat(r#"{"model":"tinyllama","stream":"false"}"#)).await,
            400,
            "bad_field",
        );
        let (response, verdict) = go(chat(
            r#"{"model":"tinyllama","stream":false,"options":{"num_predict":7.9}}"#,
        ))
        .await;
        assert_eq!(response.status, 200, "{p}");
        assert_eq!(verdict.stream.as_deref(), Some("false"), "{p}");
        assert_eq!(verdict.num_predict.as_deref(), Some("7"), "{p}");
        // Ollama streams by default, and the gateway meters it as a stream.
        let (response, verdict) = go(chat(r#"{"model":"tinyllama"}"#)).await;
        assert_eq!(
            (response.status, verdict.stream.as_deref()),
            (200, Some("true")),
            "{p}"
        );
        // The OpenAI and Anthropic routes run through Ollama's middleware.
        let openai = post(
            "/v1/chat/completions",
            r#"{"model":"tinyllama","MODEL":"llama3.1:70b","messages":[{"role":"user","content":"x"}]}"#,
        );
        refused(&p, &go(openai).await, 400, "key_collision");
        let openai = post(
            "/v1/chat/completions",
            r#"{"Model":"TinyLlama","messages":[{"role":"user","content":"x"}],"max_tokens":5}"#,
        );
        let (response, verdict) = go(openai).await;
        ran(&p, &(response, verdict.clone()), "tinyllama:latest");
        assert_eq!(
            verdict.num_predict.as_deref(),
            Some("5"),
            "{p}: max_tokens became num_predict"
        );
        let anthropic = |model: &str| {
            post(
                "/v1/messages",
                &format!(
                    r#"{{"model":"{model}","max_tokens":8,"messages":[{{"role":"user","content":"x"}}]}}"#
                ),
            )
        };
        refused(&p, &go(anthropic("llama3.1:70b")).await, 403, "model");
        ran(&p, &go(anthropic("TinyLlama")).await, "tinyllama:latest");
    }
}

#[tokio::test]
async fn ollama_model_names_are_canonical_for_rules_audit_and_metrics() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let w = ollama_world(|_| {}).await;
    let client = RawClient::new();
    let chat = |model: &str| {
        post(
            "/api/chat",
            &format!(r#"{{"model":"{model}","stream":false}}"#),
        )
    };

    // Without the gateway, a name that matches `tinyllama*` as a string runs
    // another model.
    let direct = send(
        &client,
        Protocol::Http1,
        &w.upstream.url,
        None,
        &chat("tinyllama/big"),
    )
    .await;
    ran("direct", &direct, "tinyllama/big:latest");

    for protocol in Protocol::ALL {
        let p = format!("{protocol:?}");
        for name in [
            "tinyllama",
            "tinyllama:latest",
            "TinyLlama:Latest",
            "library/tinyllama",
            "registry.ollama.ai/library/tinyllama:latest",
            "https://registry.ollama.ai/library/TINYLLAMA",
        ] {
            let r = send(&client, protocol, &w.gateway.url, Some(&bob), &chat(name)).await;
            ran(&format!("{p} {name}"), &r, "tinyllama:latest");
        }
        for name in [
            "tinyllama/big",
            "llama3.1:70b",
            "hf.co/someone/big-gguf:q4",
            "tinyllama:70b",
        ] {
            let r = send(&client, protocol, &w.gateway.url, Some(&bob), &chat(name)).await;
            refused(&format!("{p} {name}"), &r, 403, "model");
        }
        let long = "a".repeat(300);
        for (name, reason) in [
            ("tiny llama", "invalid_model_name"),
            ("a/b/c/d", "invalid_model_name"),
            ("tinyllama:", "invalid_model_name"),
            ("-tinyllama", "invalid_model_name"),
            (long.as_str(), "model_name_too_long"),
        ] {
            let r = send(&client, protocol, &w.gateway.url, Some(&alice), &chat(name)).await;
            refused(&format!("{p} {name:.20}"), &r, 400, reason);
        }
    }

    // alice reads the full list (the gateway learns what is served), then
    // asks for a model that does not exist.
    let list = send(
        &client,
        Protocol::Http1,
        &w.gateway.url,
        Some(&alice),
        &get("/api/tags"),
    )
    .await;
    assert_eq!(list.0.status, 200);
    let made_up = send(
        &client,
        Protocol::Http1,
        &w.gateway.url,
        Some(&alice),
        &chat("made-up-name-0"),
    )
    .await;
    assert_eq!(
        made_up.0.status,
        404,
        "Ollama's own answer: {}",
        made_up.0.text()
    );
    let _ = send(
        &client,
        Protocol::Http1,
        &w.gateway.url,
        Some(&bob),
        &chat("TinyLlama:Latest"),
    )
    .await;

    // Audit lines name the canonical model; metrics label only served ones.
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&w.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        if lines.iter().any(|l| l["model"] == "made-up-name-0:latest") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let models: Vec<&str> = lines.iter().filter_map(|l| l["model"].as_str()).collect();
    assert!(models.contains(&"tinyllama:latest"), "{models:?}");
    assert!(
        !models
            .iter()
            .any(|m| m.contains("TinyLlama") || m.starts_with("https")),
        "{models:?}"
    );
    let metrics = w.gateway.metrics().await.unwrap();
    assert!(
        metric_sum(&metrics, "attach_tokens_total{model=\"tinyllama:latest\"") > 0.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains("made-up-name"),
        "a made-up name became a series"
    );
    assert!(metrics.contains("model=\"(unlisted)\""), "{metrics}");
    assert!(!metrics.contains("TinyLlama"), "a spelling became a series");
}

#[tokio::test]
async fn ollama_read_endpoints_never_reveal_a_forbidden_model() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let w = ollama_world(|_| {}).await;
    let client = RawClient::new();
    for protocol in Protocol::ALL {
        let p = format!("{protocol:?}");
        let send = |call: Call<'static>| {
            let client = &client;
            let url = &w.gateway.url;
            let bob = &bob;
            async move { send(client, protocol, url, Some(bob), &call).await }
        };
        // A model bob may not use answers exactly as one that does not exist
        // (which Ollama itself answers, through its RetrieveMiddleware).
        let (unknown, verdict) = send(get("/v1/models/tinyllama-none")).await;
        assert_eq!(
            verdict.route.as_deref(),
            Some("show"),
            "{p}: Ollama answered the unknown one"
        );
        assert_eq!(unknown.status, 404);
        for forbidden in [
            "llama3.1:70b",
            "LLAMA3.1:70B",
            "tinyllama:70b",
            "nosuch:70b",
        ] {
            let (answer, verdict) = send(get(&format!("/v1/models/{forbidden}"))).await;
            assert_eq!(verdict.route, None, "{p} {forbidden}");
            assert_eq!(answer.status, unknown.status, "{p} {forbidden}");
            assert_eq!(
                answer.headers.get("content-type"),
                unknown.headers.get("content-type"),
                "{p} {forbidden}"
            );
            let canonical = match forbidden {
                "LLAMA3.1:70B" => "llama3.1:70b",
                other => other,
            };
            assert_eq!(
                answer.text(),
                unknown.text().replace("tinyllama-none:latest", canonical),
                "{p} {forbidden}"
            );
        }
        let (shown, verdict) = send(get("/v1/models/TinyLlama")).await;
        assert_eq!(
            (shown.status, verdict.model.as_str()),
            (200, "tinyllama:latest"),
            "{p}"
        );
        // Lists show only bob's models: /api/tags, /api/ps, /v1/models.
        for (path, key, field) in [
            ("/api/tags", "models", "name"),
            ("/api/ps", "models", "name"),
            ("/v1/models", "data", "id"),
        ] {
            let (list, _) = send(get(path)).await;
            assert_eq!(list.status, 200, "{p} {path}");
            let names: Vec<String> = list.json()[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m[field].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(names, ["tinyllama:latest"], "{p} {path}");
        }
        // /api/show is judged like inference: model, else name.
        let show = |body: &str| post("/api/show", body);
        refused(
            &p,
            &send(show(r#"{"name":"llama3.1:70b"}"#)).await,
            403,
            "model",
        );
        refused(
            &p,
            &send(show(r#"{"model":"","name":"tinyllama/big"}"#)).await,
            403,
            "model",
        );
        refused(
            &p,
            &send(show(r#"{"model":"tinyllama","Model":"llama3.1:70b"}"#)).await,
            400,
            "key_collision",
        );
        ran(
            &p,
            &send(show(r#"{"model":"","name":"TinyLlama"}"#)).await,
            "tinyllama:latest",
        );
    }
}

#[tokio::test]
async fn ollama_endpoints_of_every_class_are_classed() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let w = ollama_world(|_| {}).await;
    let client = RawClient::new();
    for protocol in Protocol::ALL {
        let p = format!("{protocol:?}");
        // Ollama 0.17's account, alias and blob routes are admin: bob may
        // not reach them, alice (admins) may.
        for call in [
            get("/api/experimental/aliases"),
            post(
                "/api/experimental/aliases",
                r#"{"alias":"tinyllama","target":"llama3.1:70b"}"#,
            ),
            post("/api/me", "{}"),
            post("/api/signout", "{}"),
            post("/api/pull", r#"{"model":"tinyllama"}"#),
        ] {
            let what = format!("{p} {} {}", call.method, call.path);
            let denied = send(&client, protocol, &w.gateway.url, Some(&bob), &call).await;
            refused(&what, &denied, 403, "endpoint");
            let (allowed, verdict) =
                send(&client, protocol, &w.gateway.url, Some(&alice), &call).await;
            assert_eq!(allowed.status, 200, "{what}: {}", allowed.text());
            assert!(verdict.route.is_some(), "{what}");
        }
        // Unknown routes stay denied, whoever asks.
        for call in [
            get("/api/experimental/other"),
            post("/debug/pprof", "{}"),
            post("/invocations", "{}"),
        ] {
            let what = format!("{p} {}", call.path);
            refused(
                &what,
                &send(&client, protocol, &w.gateway.url, Some(&alice), &call).await,
                403,
                "unknown_endpoint",
            );
        }
        // /API/Chat was judged as /api/chat and is run as /api/chat.
        let (r, verdict) = send(
            &client,
            protocol,
            &w.gateway.url,
            Some(&bob),
            &post("/API/Chat", r#"{"model":"tinyllama","stream":false}"#),
        )
        .await;
        assert_eq!(
            (r.status, verdict.route.as_deref()),
            (200, Some("chat")),
            "{p}"
        );
    }
}

#[tokio::test]
async fn identity_and_forwarding_headers_reach_the_model_only_from_the_gateway() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let ollama = ollama_world(|_| {}).await;
    let vllm_up = FaithfulUpstream::vllm(VLLM_MODELS).await.unwrap();
    let mut vconfig = config(&vllm_up, Engine::Vllm, "tiny-lora");
    vconfig.upstream.default_model = Some("big-chat".into());
    let vllm = GatewayProcess::start(vconfig).await.unwrap();
    let client = RawClient::new();
    let forged = [
        ("x-attach-user", "root"),
        ("x_attach_user", "root"),
        ("X-Attach_Groups", "admins"),
        ("x-attach-role", "admin"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x_forwarded_for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
    ];
    let bodies = [
        (
            &ollama.gateway.url,
            r#"{"model":"tinyllama","stream":false}"#,
            "/api/chat",
        ),
        (
            &vllm.url,
            r#"{"model":"tiny-lora","messages":[]}"#,
            "/v1/chat/completions",
        ),
    ];
    for protocol in Protocol::ALL {
        for (url, body, path) in bodies {
            let what = format!("{protocol:?} {path}");
            let mut call = post(path, body);
            call.headers.extend(forged);
            let (response, verdict) = send(&client, protocol, url, Some(&bob), &call).await;
            assert_eq!(response.status, 200, "{what}: {}", response.text());
            let user = verdict.header("x-attach-user");
            assert_eq!(user.len(), 1, "{what}: {:?}", verdict.headers);
            assert_ne!(user[0], "root", "{what}");
            for name in [
                "x_attach_user",
                "x-attach_groups",
                "x-attach-role",
                "x_forwarded_for",
                "forwarded",
                "x-real-ip",
            ] {
                assert!(
                    verdict.header(name).is_empty(),
                    "{what}: {name} reached the model"
                );
            }
            assert_eq!(verdict.header("x-forwarded-for"), ["127.0.0.1"], "{what}");
            // A WSGI server sees only the gateway's identity.
            for (key, value) in &verdict.wsgi {
                assert!(
                    value != "root" && value != "admins" && !value.contains("6.6.6.6"),
                    "{what}: {key}={value}"
                );
            }
        }
    }
    // HTTP/1.1 only (HTTP/2 has no Connection header): a Connection header
    // naming a header the gateway sets is refused.
    for (url, body, path) in bodies {
        for named in [
            "x-attach-user",
            "X_Attach_Claims",
            "host",
            "authorization",
            "x-forwarded-for",
        ] {
            let connection = format!("keep-alive, {named}");
            let call = post(path, body).header("connection", leak(&connection));
            let r = send(&client, Protocol::Http1, url, Some(&bob), &call).await;
            refused(
                &format!("{path} Connection: {named}"),
                &r,
                400,
                "connection_names_gateway_header",
            );
        }
    }
    // A header name with white space is not HTTP: refused before anything.
    let mut raw = tokio::net::TcpStream::connect(ollama.gateway.url.trim_start_matches("http://"))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(
        format!(
            "POST /api/chat HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {bob}\r\nX-Attach-User : root\r\ncontent-length: 21\r\n\r\n{{\"model\":\"tinyllama\"}}"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 64];
    let n = raw.read(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );

    // Behind a trusted proxy, its forwarding headers are kept.
    let trusted = ollama_world(|c| c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let call = post("/api/chat", r#"{"model":"tinyllama","stream":false}"#)
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https");
    let (_, verdict) = send(
        &client,
        Protocol::Http1,
        &trusted.gateway.url,
        Some(&bob),
        &call,
    )
    .await;
    assert_eq!(
        verdict.header("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(verdict.header("x-forwarded-proto"), ["https"]);
}

#[tokio::test]
async fn vllm_bodies_names_and_endpoints_are_judged_as_vllm_reads_them() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let upstream = FaithfulUpstream::vllm(VLLM_MODELS).await.unwrap();
    let mut with_default = config(&upstream, Engine::Vllm, "tiny-lora");
    with_default.upstream.default_model = Some("big-chat".into());
    let gw = GatewayProcess::start(with_default).await.unwrap();
    let no_default = GatewayProcess::start(config(&upstream, Engine::Vllm, "tiny-lora"))
        .await
        .unwrap();
    let client = RawClient::new();
    let chat = |body: &str| post("/v1/chat/completions", body);

    // Straight to vLLM: `name` is ignored (the default model runs), the last
    // duplicate wins, and SageMaker's header replaces the body's model.
    for (call, model) in [
        (chat(r#"{"name":"tiny-lora","messages":[]}"#), "big-chat"),
        (
            chat(r#"{"model":"tiny-lora","model":"big-chat","messages":[]}"#),
            "big-chat",
        ),
        (
            post("/invocations", r#"{"model":"tiny-lora","messages":[]}"#)
                .header("x-amzn-sagemaker-adapter-identifier", "big-chat"),
            "big-chat",
        ),
    ] {
        ran(
            &format!("direct {}", call.path),
            &send(&client, Protocol::Http1, &upstream.url, None, &call).await,
            model,
        );
    }

    for protocol in Protocol::ALL {
        let p = format!("{protocol:?}");
        let go = |gw: &GatewayProcess, token: &str, call: Call<'static>| {
            let client = &client;
            let url = gw.url.clone();
            let token = token.to_owned();
            async move { send(client, protocol, &url, Some(&token), &call).await }
        };
        // No model: the default model is judged (bob may not use it).
        refused(
            &p,
            &go(&gw, &bob, chat(r#"{"name":"tiny-lora","messages":[]}"#)).await,
            403,
            "model",
        );
        refused(
            &p,
            &go(&gw, &bob, chat(r#"{"model":"","messages":[]}"#)).await,
            403,
            "model",
        );
        ran(
            &p,
            &go(&gw, &alice, chat(r#"{"model":null,"messages":[]}"#)).await,
            "big-chat",
        );
        // ... and without a declared default, such requests are refused.
        refused(
            &p,
            &go(&no_default, &alice, chat(r#"{"messages":[]}"#)).await,
            403,
            "missing_model",
        );
        ran(
            &p,
            &go(&gw, &bob, chat(r#"{"model":"tiny-lora","messages":[]}"#)).await,
            "tiny-lora",
        );
        // Duplicates are refused; case variants are other fields to pydantic.
        refused(
            &p,
            &go(
                &gw,
                &bob,
                chat(r#"{"model":"tiny-lora","model":"big-chat","messages":[]}"#),
            )
            .await,
            400,
            "duplicate_key",
        );
        ran(
            &p,
            &go(
                &gw,
                &bob,
                chat(r#"{"MODEL":"big-chat","model":"tiny-lora","messages":[]}"#),
            )
            .await,
            "tiny-lora",
        );
        // Names are exact for vLLM.
        refused(
            &p,
            &go(&gw, &bob, chat(r#"{"model":"Tiny-Lora","messages":[]}"#)).await,
            403,
            "model",
        );
        refused(
            &p,
            &go(&gw, &bob, chat(r#"{"model":" tiny-lora","messages":[]}"#)).await,
            400,
            "invalid_model_name",
        );
        // SageMaker's model header is dropped: the body's model runs.
        let invocation = post("/invocations", r#"{"model":"tiny-lora","messages":[]}"#)
            .header("x-amzn-sagemaker-adapter-identifier", "big-chat")
            .header("X_Amzn_SageMaker_Adapter_Identifier", "big-chat");
        ran(&p, &go(&gw, &bob, invocation).await, "tiny-lora");
        // Metering fields as pydantic reads them, forwarded as decided.
        let (response, verdict) = go(
            &gw,
            &bob,
            chat(r#"{"model":"tiny-lora","messages":[],"stream":"yes","max_tokens":"5_0"}"#),
        )
        .await;
        assert_eq!(response.status, 200, "{p}: {}", response.text());
        assert_eq!(verdict.stream.as_deref(), Some("true"), "{p}");
        assert_eq!(verdict.max_tokens.as_deref(), Some("50"), "{p}");
        // The gateway asked for usage; the client gets the stream it asked for.
        let text = response.text();
        assert!(
            text.contains("[DONE]") && !text.contains("\"usage\""),
            "{p}: {text}"
        );
        refused(
            &p,
            &go(
                &gw,
                &bob,
                chat(r#"{"model":"tiny-lora","messages":[],"stream":"maybe"}"#),
            )
            .await,
            400,
            "bad_field",
        );
        // What Python and the gateway could read two ways is refused here too.
        let deep = format!(
            r#"{{"model":"tiny-lora","messages":[],"x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for (body, reason) in [
            (
                r#"{"model":"tiny-lora","messages":[]} {"model":"big-chat"}"#,
                "trailing_data",
            ),
            (r#"[{"model":"tiny-lora"}]"#, "not_an_object"),
            (
                r#"{"model":"tiny-lora","messages":[],"x":NaN}"#,
                "invalid_json",
            ),
            (
                r#"{"model":"tiny\ud800lora","messages":[]}"#,
                "invalid_json",
            ),
            (deep.as_str(), "too_deep"),
        ] {
            refused(
                &format!("{p} {body:.60}"),
                &go(&gw, &bob, chat(body)).await,
                400,
                reason,
            );
        }
        let invalid_utf8 = Call {
            body: RawBody::Full(Bytes::from_static(
                b"{\"model\":\"tiny-lora\",\"messages\":[],\"x\":\"\xff\"}",
            )),
            ..chat("")
        };
        refused(&p, &go(&gw, &bob, invalid_utf8).await, 400, "invalid_utf8");
        let gzip =
            chat(r#"{"model":"tiny-lora","messages":[]}"#).header("content-encoding", "gzip");
        refused(&p, &go(&gw, &bob, gzip).await, 400, "content_encoding");
        let chunked = Call {
            body: RawBody::Chunked(vec![
                Bytes::from_static(br#"{"model":"tiny-lora","messages":[],"#),
                Bytes::from_static(br#""model":"big-chat"}"#),
            ]),
            ..chat("")
        };
        refused(&p, &go(&gw, &bob, chunked).await, 400, "duplicate_key");
        // Anthropic's /v1/messages is inference with its model in the body.
        let messages = |model: &str| {
            post(
                "/v1/messages",
                &format!(
                    r#"{{"model":"{model}","max_tokens":8,"messages":[{{"role":"user","content":"x"}}]}}"#
                ),
            )
        };
        refused(&p, &go(&gw, &bob, messages("big-chat")).await, 403, "model");
        ran(&p, &go(&gw, &bob, messages("tiny-lora")).await, "tiny-lora");
        // Admin and unknown routes.
        for path in [
            "/pause",
            "/update_weights",
            "/v1/load_lora_adapter",
            "/collective_rpc",
        ] {
            refused(
                &format!("{p} {path}"),
                &go(&gw, &bob, post(path, "{}")).await,
                403,
                "endpoint",
            );
        }
        for call in [
            get("/v1/models/big-chat"),
            post("/v1/audio/transcriptions", "{}"),
            post("/api/chat", "{}"),
        ] {
            refused(
                &format!("{p} {}", call.path),
                &go(&gw, &alice, call).await,
                403,
                "unknown_endpoint",
            );
        }
        let (list, _) = go(&gw, &bob, get("/v1/models")).await;
        let json = list.json();
        let ids: Vec<&str> = json["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["id"].as_str())
            .collect();
        assert_eq!(ids, ["tiny-lora"], "{p}");
        // The adapter's base model, which bob may not use, is not named.
        assert_eq!(json["data"][0]["parent"], Value::Null, "{p}");
        assert!(!list.text().contains("big-chat"), "{p}: {}", list.text());
    }
}
