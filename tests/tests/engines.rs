#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The gateway in front of the real engines: Ollama, llama.cpp's server and
//! vLLM, each serving tiny random-weight models made on this machine, with
//! real Keycloak tokens, through the official `openai` and `ollama` SDKs and
//! raw HTTP.
//!
//! Token counts differ by engine for the same prompt, so every charge is
//! compared with the usage the engine itself reported in that answer, never
//! with a fixed number.

mod common;

use std::time::{Duration, Instant};

use attach_sidecar::claims::Preset;
use attach_sidecar::config::{Engine, GatewayConfig, IssuerConfig};
use attach_sidecar::policy::{EndpointClass, Rule, Subjects};
use attach_sidecar::quota::QuotaLimit;
use attach_tests::engines::clients::{Sdk, SdkDriver};
use attach_tests::engines::{BIG_MODEL, CHAT_MODEL, EMBED_MODEL, EngineInfo, EngineRoute};
use attach_tests::gateway::GatewayProcess;
use attach_tests::keycloak::{AUDIENCE, REALM};
use serde_json::{Value, json};

/// A gateway in front of `engine`: bob (staff) may use the tiny chat and
/// embedding models, for inference and reading; alice may use every model,
/// and administer; everyone's tokens are counted.
async fn gateway(engine: &EngineInfo, kind: Engine) -> GatewayProcess {
    let kc = common::world().keycloak().unwrap();
    let issuer = IssuerConfig::new(kc.issuer(REALM), vec![AUDIENCE.into()], Preset::Keycloak);
    let mut config = GatewayConfig::new(vec![issuer]);
    config.upstream.url = engine.url.clone();
    config.upstream.engine = kind;
    if kind != Engine::Ollama {
        // The engine's first served name runs a request that names none.
        config.upstream.default_model = Some(engine.models[0].clone());
    }
    use EndpointClass::*;
    config.access.rules = vec![
        Rule::new(
            "staff-tiny",
            Subjects::groups(&["staff"]),
            &[CHAT_MODEL, EMBED_MODEL],
            &[Inference, Read],
        ),
        Rule::new(
            "power",
            Subjects::groups(&["ai-power-users"]),
            &["*"],
            &[Inference, Read],
        ),
        Rule::new("admins", Subjects::groups(&["admins"]), &["*"], &[Admin]),
    ];
    config.quotas.limits = vec![QuotaLimit {
        tokens_per_day: Some(1_000_000_000),
        ..QuotaLimit::named("per-user")
    }];
    GatewayProcess::start(config).await.unwrap()
}

/// Tokens the gateway has charged so far, as `(reported, estimated)`: the
/// sums of `attach_tokens_total` over every model and kind.
async fn charged(gw: &GatewayProcess) -> (u64, u64) {
    let metrics = gw.metrics().await.unwrap();
    let mut sums = (0, 0);
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("attach_tokens_total{") else {
            continue;
        };
        let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if rest.contains(r#"estimated="true""#) {
            sums.1 += value as u64;
        } else {
            sums.0 += value as u64;
        }
    }
    sums
}

/// Waits until the charge moves from `before` (the gateway records it as
/// the answer's body ends, a moment after the client has read it), and
/// returns the change.
async fn charge_since(gw: &GatewayProcess, before: (u64, u64)) -> (u64, u64) {
    let started = Instant::now();
    loop {
        let now = charged(gw).await;
        if now != before || started.elapsed() > Duration::from_secs(10) {
            // One more read: a charge is recorded as prompt, then completion.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = charged(gw).await;
            return (now.0 - before.0, now.1 - before.1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The usage an SDK answer reported, `None` when it carried none.
fn reported(answer: &Value) -> Option<u64> {
    let ok = &answer["ok"];
    let prompt = ok["prompt"].as_u64()?;
    Some(prompt + ok["completion"].as_u64().unwrap_or(0))
}

/// Makes `calls` through `sdk` as bob and checks each one's charge against
/// the usage the engine reported in its answer. Calls the engine answers
/// without usage are charged an estimate: more than the output the same
/// call generates with usage (prompt included).
async fn each_call_is_charged_its_usage(
    gw: &GatewayProcess,
    sdk: Sdk,
    calls: &[&str],
    without_usage: &[(&str, &str)],
) {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let mut driver = SdkDriver::start(sdk, &gw.url, &bob, CHAT_MODEL, EMBED_MODEL).unwrap();
    for call in calls {
        let before = charged(gw).await;
        let answer = tokio::task::block_in_place(|| driver.call(call)).unwrap();
        assert!(answer.get("ok").is_some(), "{sdk:?} {call}: {answer}");
        let usage = reported(&answer)
            .unwrap_or_else(|| panic!("{sdk:?} {call}: the engine reported no usage: {answer}"));
        assert!(usage > 0, "{sdk:?} {call}: {answer}");
        let charge = charge_since(gw, before).await;
        assert_eq!(
            charge,
            (usage, 0),
            "{sdk:?} {call}: charged (reported, estimated) vs the engine's usage in {answer}"
        );
    }
    for (call, like) in without_usage {
        let before = charged(gw).await;
        let answer = tokio::task::block_in_place(|| driver.call(like)).unwrap();
        // The prompt of an answer without usage can only be estimated from
        // the request's text (the engine's template and tokenizer are not
        // known): the floor is the output the engine produced.
        let floor = answer["ok"]["completion"].as_u64().unwrap();
        assert!(floor > 0, "{like}: {answer}");
        charge_since(gw, before).await;
        let before = charged(gw).await;
        let answer = tokio::task::block_in_place(|| driver.call(call)).unwrap();
        assert!(answer.get("ok").is_some(), "{sdk:?} {call}: {answer}");
        assert_eq!(
            reported(&answer),
            None,
            "{sdk:?} {call}: this engine is known to send no usage here; it now does: {answer}"
        );
        let (exact, estimated) = charge_since(gw, before).await;
        assert_eq!(exact, 0, "{sdk:?} {call}");
        assert!(
            estimated > floor,
            "{sdk:?} {call}: an answer without usage is charged {estimated} tokens, no more \
             than the {floor} the engine generates for {like}"
        );
    }
}

/// Asserts the SDK call was refused by the gateway with 403.
fn refused_403(answer: &Value, what: &str) {
    assert_eq!(answer["error"]["status"], 403, "{what}: {answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_through_both_sdks_charges_exactly_the_usage_ollama_reported() {
    let engines = common::world().engines().unwrap();
    let gw = gateway(&engines.ollama, Engine::Ollama).await;
    each_call_is_charged_its_usage(
        &gw,
        Sdk::Ollama,
        &[
            "chat",
            "chat_stream",
            "generate",
            "generate_stream",
            "embed",
        ],
        &[],
    )
    .await;
    each_call_is_charged_its_usage(
        &gw,
        Sdk::OpenAi,
        &[
            "chat",
            "chat_stream",
            "completion",
            "completion_stream",
            "embeddings",
            "responses",
            "responses_stream",
        ],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vllm_through_the_openai_sdk_charges_exactly_the_usage_vllm_reported() {
    let engines = common::world().engines().unwrap();
    let gw = gateway(&engines.vllm, Engine::Vllm).await;
    each_call_is_charged_its_usage(
        &gw,
        Sdk::OpenAi,
        &[
            "chat",
            "chat_stream",
            "completion",
            "completion_stream",
            "responses",
            "responses_stream",
        ],
        &[],
    )
    .await;
    let embed = gateway(&engines.vllm_embed, Engine::Vllm).await;
    each_call_is_charged_its_usage(&embed, Sdk::OpenAi, &["embeddings"], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn llamacpp_through_the_openai_sdk_charges_its_usage_or_no_less_than_it() {
    let engines = common::world().engines().unwrap();
    let gw = gateway(&engines.llamacpp, Engine::Openai).await;
    // llama.cpp's streams ignore `stream_options.include_usage`: those are
    // charged an estimate, never less than the same call's real usage.
    each_call_is_charged_its_usage(
        &gw,
        Sdk::OpenAi,
        &["chat", "completion", "embeddings"],
        &[("chat_stream", "chat"), ("completion_stream", "completion")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdks_see_only_allowed_models_and_admin_calls_are_refused() {
    let engines = common::world().engines().unwrap();
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();

    let gw = gateway(&engines.ollama, Engine::Ollama).await;
    let mut ollama = SdkDriver::start(Sdk::Ollama, &gw.url, &bob, CHAT_MODEL, EMBED_MODEL).unwrap();
    let list = ollama.call("list").unwrap();
    assert_eq!(
        list["ok"]["models"],
        json!(["tiny-embed:latest", "tiny:latest"]),
        "bob's list holds his models only: {list}"
    );
    assert_eq!(ollama.call("show").unwrap()["ok"]["family"], "llama");
    for call in ["forbidden_model", "pull", "delete", "copy"] {
        refused_403(&ollama.call(call).unwrap(), &format!("ollama SDK {call}"));
    }
    // Nothing was deleted or copied: Ollama's own list says so.
    let tags: Value = reqwest::get(format!("{}/api/tags", engines.ollama.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"tiny:latest"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("stolen")), "{names:?}");

    let mut openai = SdkDriver::start(Sdk::OpenAi, &gw.url, &bob, CHAT_MODEL, EMBED_MODEL).unwrap();
    let models = openai.call("models").unwrap();
    assert_eq!(
        models["ok"]["models"],
        json!(["tiny-embed:latest", "tiny:latest"]),
        "{models}"
    );
    refused_403(
        &openai.call("forbidden_model").unwrap(),
        "openai SDK on Ollama",
    );

    for (engine, kind, want) in [
        (&engines.vllm, Engine::Vllm, json!(["tiny"])),
        (
            &engines.llamacpp,
            Engine::Openai,
            json!(["tiny", "tiny-embed"]),
        ),
    ] {
        let gw = gateway(engine, kind).await;
        let mut openai =
            SdkDriver::start(Sdk::OpenAi, &gw.url, &bob, CHAT_MODEL, EMBED_MODEL).unwrap();
        let models = openai.call("models").unwrap();
        assert_eq!(models["ok"]["models"], want, "{kind:?}: {models}");
        refused_403(
            &openai.call("forbidden_model").unwrap(),
            &format!("openai SDK on {kind:?}"),
        );
    }
}

/// What the gateway does with one route of an engine, for bob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Passed to the engine (inference or read, on his model).
    Pass,
    /// Refused by the gateway with 403 (admin, or no known endpoint).
    Refuse,
}

use Expect::{Pass, Refuse};

/// Every route Ollama 0.17.4 registers, as it logs them, reviewed.
const OLLAMA_ROUTES: &[(&str, &str, Expect)] = &[
    ("GET", "/", Pass),
    ("HEAD", "/", Pass),
    ("GET", "/api/version", Pass),
    ("HEAD", "/api/version", Pass),
    ("GET", "/api/status", Pass),
    ("GET", "/api/tags", Pass),
    ("HEAD", "/api/tags", Pass),
    ("GET", "/api/ps", Pass),
    ("POST", "/api/show", Pass),
    ("POST", "/api/generate", Pass),
    ("POST", "/api/chat", Pass),
    ("POST", "/api/embed", Pass),
    ("POST", "/api/embeddings", Pass),
    ("POST", "/v1/chat/completions", Pass),
    ("POST", "/v1/completions", Pass),
    ("POST", "/v1/embeddings", Pass),
    ("GET", "/v1/models", Pass),
    ("GET", "/v1/models/:model", Pass),
    ("POST", "/v1/responses", Pass),
    ("POST", "/v1/images/generations", Pass),
    ("POST", "/v1/images/edits", Pass),
    ("POST", "/v1/messages", Pass),
    ("POST", "/api/pull", Refuse),
    ("POST", "/api/push", Refuse),
    ("DELETE", "/api/delete", Refuse),
    ("POST", "/api/me", Refuse),
    ("POST", "/api/signout", Refuse),
    ("DELETE", "/api/user/keys/:encodedKey", Refuse),
    ("POST", "/api/create", Refuse),
    ("POST", "/api/blobs/:digest", Refuse),
    ("HEAD", "/api/blobs/:digest", Refuse),
    ("POST", "/api/copy", Refuse),
    ("GET", "/api/experimental/aliases", Refuse),
    ("POST", "/api/experimental/aliases", Refuse),
    ("DELETE", "/api/experimental/aliases", Refuse),
];

/// The routes FastAPI adds to every app (its schema and docs pages), which
/// both Python engines serve: refused (vLLM's table has its schema and docs
/// as admin, the others are unknown).
const FASTAPI_DOCS_ROUTES: &[(&str, &str, Expect)] = &[
    ("GET", "/openapi.json", Refuse),
    ("HEAD", "/openapi.json", Refuse),
    ("GET", "/docs", Refuse),
    ("HEAD", "/docs", Refuse),
    ("GET", "/docs/oauth2-redirect", Refuse),
    ("HEAD", "/docs/oauth2-redirect", Refuse),
    ("GET", "/redoc", Refuse),
    ("HEAD", "/redoc", Refuse),
];

/// Every route llama-cpp-python 0.3.36's server registers besides FastAPI's
/// own, reviewed. Its extras are not OpenAI routes: unknown, so refused.
const LLAMACPP_ROUTES: &[(&str, &str, Expect)] = &[
    ("POST", "/v1/completions", Pass),
    ("POST", "/v1/chat/completions", Pass),
    ("POST", "/v1/embeddings", Pass),
    ("GET", "/v1/models", Pass),
    ("POST", "/v1/engines/copilot-codex/completions", Refuse),
    ("POST", "/extras/tokenize", Refuse),
    ("POST", "/extras/tokenize/count", Refuse),
    ("POST", "/extras/detokenize", Refuse),
];

/// The routes both vLLM 0.32 instances register besides FastAPI's own,
/// reviewed. `*` is a
/// mounted app (any method, and every path below it).
const VLLM_COMMON_ROUTES: &[(&str, &str, Expect)] = &[
    ("GET", "/health", Pass),
    ("GET", "/load", Pass),
    ("GET", "/version", Pass),
    ("GET", "/ping", Pass),
    ("POST", "/ping", Pass),
    ("GET", "/v1/models", Pass),
    ("POST", "/tokenize", Pass),
    ("POST", "/detokenize", Pass),
    ("POST", "/invocations", Pass),
    ("POST", "/v1/systemone", Pass),
    ("GET", "/kv_event_sources", Refuse),
    ("GET", "/metrics", Refuse),
    ("*", "/metrics", Refuse),
];

/// The generating instance's own routes, reviewed.
const VLLM_GENERATE_ROUTES: &[(&str, &str, Expect)] = &[
    ("POST", "/v1/chat/completions", Pass),
    ("POST", "/v1/chat/completions/batch", Pass),
    ("POST", "/v1/completions", Pass),
    ("POST", "/v1/responses", Pass),
    ("POST", "/v1/messages", Pass),
    ("POST", "/v1/messages/count_tokens", Pass),
    ("POST", "/generative_scoring", Pass),
    ("POST", "/inference/v1/generate", Pass),
    ("POST", "/v1/chat/completions/render", Pass),
    ("POST", "/v1/completions/render", Pass),
    ("POST", "/v1/messages/render", Pass),
    ("POST", "/v1/responses/render", Pass),
    ("POST", "/v1/chat/completions/derender", Pass),
    ("POST", "/v1/completions/derender", Pass),
    ("GET", "/v1/responses/{response_id}", Refuse),
    ("POST", "/v1/responses/{response_id}/cancel", Refuse),
    ("POST", "/inference/v1/abort_requests", Refuse),
    ("POST", "/scale_elastic_ep", Refuse),
    ("POST", "/is_scaling_elastic_ep", Refuse),
];

/// The pooling instance's own routes, reviewed.
const VLLM_EMBED_ROUTES: &[(&str, &str, Expect)] = &[
    ("POST", "/v1/embeddings", Pass),
    ("POST", "/pooling", Pass),
    ("POST", "/v2/embed", Pass),
    ("POST", "/score", Pass),
    ("POST", "/v1/score", Pass),
    ("POST", "/rerank", Pass),
    ("POST", "/v1/rerank", Pass),
    ("POST", "/v2/rerank", Pass),
];

/// A concrete path for a route pattern: `/v1/models/:model` names bob's
/// model, other parameters a placeholder.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            ":model" | "{model}" | "{model_name}" => CHAT_MODEL,
            s if s.starts_with(':') || s.starts_with('{') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Checks that `listed` (what the engine registered at start) is exactly
/// the reviewed `table`, then sends one request per route through the
/// gateway as bob and checks it is passed or refused as the table says.
async fn routes_are_classed_as_reviewed(
    name: &str,
    engine: &EngineInfo,
    kind: Engine,
    table: &[(&str, &str, Expect)],
) {
    let listed: Vec<(String, String)> = engine
        .routes
        .iter()
        .map(|EngineRoute { method, path }| (method.clone(), path.clone()))
        .collect();
    let reviewed: Vec<(String, String)> = table
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let unclassed: Vec<_> = listed.iter().filter(|r| !reviewed.contains(r)).collect();
    assert!(
        unclassed.is_empty(),
        "{name} registers routes nobody has classed (add them to the table and, if \
         needed, to the gateway's endpoint table): {unclassed:?}"
    );
    let gone: Vec<_> = reviewed.iter().filter(|r| !listed.contains(r)).collect();
    assert!(
        gone.is_empty(),
        "{name} no longer registers these reviewed routes: {gone:?}"
    );

    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let gw = gateway(engine, kind).await;
    let http = reqwest::Client::new();
    for (method, path, expect) in table {
        let url = format!("{}{}", gw.url, concrete(path));
        // A mounted app takes any method: GET stands for them.
        let verb = if *method == "*" { "GET" } else { method };
        let mut request = http.request(verb.parse().unwrap(), &url).bearer_auth(&bob);
        if *method == "POST" {
            request = request.json(&json!({"model": CHAT_MODEL}));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let what = format!("{name}: {method} {path} -> {status} {body}");
        match expect {
            Refuse => {
                assert_eq!(status, 403, "{what}");
                if verb == "HEAD" {
                    continue; // an answer to HEAD has no body
                }
                let denied_by = body["denied_by"].as_str().unwrap_or_default();
                assert!(
                    ["endpoint", "unknown_endpoint"].contains(&denied_by),
                    "{what}"
                );
            }
            Pass => {
                assert!(
                    body.get("denied_by").is_none() && body.get("reason").is_none(),
                    "the gateway refused a route the table passes: {what}"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_route_ollama_registers_is_classed_and_judged_as_reviewed() {
    let engines = common::world().engines().unwrap();
    routes_are_classed_as_reviewed("ollama", &engines.ollama, Engine::Ollama, OLLAMA_ROUTES).await;
}

#[tokio::test]
async fn every_route_vllm_registers_is_classed_and_judged_as_reviewed() {
    let engines = common::world().engines().unwrap();
    let generate = [
        FASTAPI_DOCS_ROUTES,
        VLLM_COMMON_ROUTES,
        VLLM_GENERATE_ROUTES,
    ]
    .concat();
    routes_are_classed_as_reviewed("vllm", &engines.vllm, Engine::Vllm, &generate).await;
    let embed = [FASTAPI_DOCS_ROUTES, VLLM_COMMON_ROUTES, VLLM_EMBED_ROUTES].concat();
    routes_are_classed_as_reviewed("vllm (pooling)", &engines.vllm_embed, Engine::Vllm, &embed)
        .await;
}

#[tokio::test]
async fn every_route_llamacpp_registers_is_classed_and_judged_as_reviewed() {
    let engines = common::world().engines().unwrap();
    routes_are_classed_as_reviewed(
        "llama.cpp",
        &engines.llamacpp,
        Engine::Openai,
        &[FASTAPI_DOCS_ROUTES, LLAMACPP_ROUTES].concat(),
    )
    .await;
}

/// One raw request, straight to `base` (an engine or a gateway).
async fn raw(base: &str, token: Option<&str>, path: &str, body: &str) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn what_ollama_runs_is_what_the_gateway_judged() {
    let engines = common::world().engines().unwrap();
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let gw = gateway(&engines.ollama, Engine::Ollama).await;
    let ollama = &engines.ollama.url;
    let chat = |model_keys: &str| {
        format!(
            r#"{{{model_keys},"stream":false,"options":{{"num_predict":2}},"messages":[{{"role":"user","content":"hi"}}]}}"#
        )
    };

    // The attacks are real: straight to Ollama, each runs the big model.
    for keys in [
        format!(r#""model":"{CHAT_MODEL}","MODEL":"{BIG_MODEL}""#),
        format!(r#""model":"{CHAT_MODEL}","model":"{BIG_MODEL}""#),
        format!(r#""model":"{CHAT_MODEL}","m\u006fdel":"{BIG_MODEL}""#),
    ] {
        let (status, answer) = raw(ollama, None, "/api/chat", &chat(&keys)).await;
        assert_eq!(status, 200, "direct {keys}: {answer}");
        assert_eq!(answer["model"], BIG_MODEL, "direct {keys}: {answer}");
    }
    // Through the gateway, each is refused before Ollama reads it.
    for (keys, status, why) in [
        (
            format!(r#""model":"{CHAT_MODEL}","MODEL":"{BIG_MODEL}""#),
            400,
            "key_collision",
        ),
        (
            format!(r#""model":"{CHAT_MODEL}","model":"{BIG_MODEL}""#),
            400,
            "duplicate_key",
        ),
        (
            format!(r#""model":"{CHAT_MODEL}","m\u006fdel":"{BIG_MODEL}""#),
            400,
            "duplicate_key",
        ),
        (format!(r#""MODEL":"{BIG_MODEL}""#), 403, "model"),
        (r#""Model":"BIG:latest""#.to_owned(), 403, "model"),
    ] {
        let (got, answer) = raw(&gw.url, Some(&bob), "/api/chat", &chat(&keys)).await;
        assert_eq!(got, status, "{keys}: {answer}");
        let key = if status == 400 { "reason" } else { "denied_by" };
        assert_eq!(answer[key], why, "{keys}: {answer}");
    }
    // A lone case variant of an allowed name runs that model.
    let (status, answer) = raw(
        &gw.url,
        Some(&bob),
        "/api/chat",
        &chat(r#""MODEL":"Tiny:Latest""#),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["model"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("tiny:latest"),
        "{answer}"
    );
    // The OpenAI and Anthropic routes, through Ollama's own middleware.
    let openai = format!(
        r#"{{"model":"{CHAT_MODEL}","Model":"{BIG_MODEL}","max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let (status, answer) = raw(ollama, None, "/v1/chat/completions", &openai).await;
    assert_eq!(
        (status, &answer["model"]),
        (200, &json!(BIG_MODEL)),
        "{answer}"
    );
    let (status, answer) = raw(&gw.url, Some(&bob), "/v1/chat/completions", &openai).await;
    assert_eq!(
        (status, &answer["reason"]),
        (400, &json!("key_collision")),
        "{answer}"
    );
    let anthropic = format!(
        r#"{{"model":"{BIG_MODEL}","max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let (status, answer) = raw(&gw.url, Some(&bob), "/v1/messages", &anthropic).await;
    assert_eq!(
        (status, &answer["denied_by"]),
        (403, &json!("model")),
        "{answer}"
    );
}

#[tokio::test]
async fn what_vllm_runs_is_what_the_gateway_judged() {
    let engines = common::world().engines().unwrap();
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let gw = gateway(&engines.vllm, Engine::Vllm).await;
    let vllm = &engines.vllm.url;
    let chat = |model_keys: &str| {
        let sep = if model_keys.is_empty() { "" } else { "," };
        format!(
            r#"{{{model_keys}{sep}"max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
        )
    };

    // Straight to vLLM: Python's json keeps the last duplicate (a name it
    // does not serve shows which one it read).
    let dup = |first: &str, last: &str| format!(r#""model":"{first}","model":"{last}""#);
    let (status, answer) = raw(
        vllm,
        None,
        "/v1/chat/completions",
        &chat(&dup(CHAT_MODEL, "nope")),
    )
    .await;
    assert_eq!(status, 404, "vLLM read the last one: {answer}");
    let (status, answer) = raw(
        vllm,
        None,
        "/v1/chat/completions",
        &chat(&dup("nope", CHAT_MODEL)),
    )
    .await;
    assert_eq!(status, 200, "vLLM read the last one: {answer}");
    for keys in [dup(CHAT_MODEL, BIG_MODEL), dup(BIG_MODEL, CHAT_MODEL)] {
        let (status, answer) = raw(&gw.url, Some(&bob), "/v1/chat/completions", &chat(&keys)).await;
        assert_eq!(
            (status, &answer["reason"]),
            (400, &json!("duplicate_key")),
            "{keys}: {answer}"
        );
    }

    // vLLM reads exactly `model`: a case variant is another field, and the
    // request runs the model `model` names, as the gateway judged.
    let (status, answer) = raw(
        vllm,
        None,
        "/v1/chat/completions",
        &chat(r#""Model":"nope""#),
    )
    .await;
    assert_eq!(status, 200, "vLLM ignores a case variant: {answer}");
    let variant = format!(r#""Model":"{BIG_MODEL}","model":"{CHAT_MODEL}""#);
    let (status, answer) = raw(&gw.url, Some(&bob), "/v1/chat/completions", &chat(&variant)).await;
    assert_eq!(
        (status, &answer["model"]),
        (200, &json!(CHAT_MODEL)),
        "{answer}"
    );
    let big = format!(r#""model":"{BIG_MODEL}""#);
    let (status, answer) = raw(&gw.url, Some(&bob), "/v1/chat/completions", &chat(&big)).await;
    assert_eq!(
        (status, &answer["denied_by"]),
        (403, &json!("model")),
        "{answer}"
    );
    // vLLM names are case-sensitive: TINY is another name, not bob's model.
    let upper = r#""model":"TINY""#;
    let (status, answer) = raw(&gw.url, Some(&bob), "/v1/chat/completions", &chat(upper)).await;
    assert_eq!(status, 403, "{answer}");

    // No model: vLLM runs its first served name, the declared default.
    let (status, answer) = raw(vllm, None, "/v1/chat/completions", &chat("")).await;
    assert_eq!(
        (status, &answer["model"]),
        (200, &json!(CHAT_MODEL)),
        "{answer}"
    );
    let (status, answer) = raw(&gw.url, Some(&bob), "/v1/chat/completions", &chat("")).await;
    assert_eq!(
        (status, &answer["model"]),
        (200, &json!(CHAT_MODEL)),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_mid_stream_is_charged_what_the_engine_reports() {
    let engines = common::world().engines().unwrap();
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let body = |stream: bool| {
        json!({
            "model": CHAT_MODEL,
            "stream": stream,
            "max_tokens": 48,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
        })
    };
    for (name, engine, kind, streams_usage) in [
        ("ollama", &engines.ollama, Engine::Ollama, true),
        ("vllm", &engines.vllm, Engine::Vllm, true),
        ("llama.cpp", &engines.llamacpp, Engine::Openai, false),
    ] {
        let gw = gateway(engine, kind).await;
        let http = reqwest::Client::new();
        // The whole answer: what the engine reports for it.
        let before = charged(&gw).await;
        let whole: Value = http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&bob)
            .json(&body(false))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let usage = whole["usage"]["total_tokens"].as_u64().unwrap();
        assert_eq!(
            charge_since(&gw, before).await,
            (usage, 0),
            "{name}: {whole}"
        );

        // The same request streamed, left after the first chunk: the gateway
        // reads the rest of the answer nobody receives, to its usage.
        let before = charged(&gw).await;
        let mut response = http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&bob)
            .json(&body(true))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let first = response.chunk().await.unwrap();
        assert!(first.is_some(), "{name}: the stream sent nothing");
        drop(response);
        let (exact, estimated) = charge_since(&gw, before).await;
        if streams_usage {
            assert_eq!(
                (exact, estimated),
                (usage, 0),
                "{name}: a client that left mid-stream is charged the usage the engine \
                 reported for the answer it did not read"
            );
        } else {
            // llama.cpp's streams carry no usage: the estimate (the
            // prompt's, and one token per event read).
            let completion = whole["usage"]["completion_tokens"].as_u64().unwrap();
            assert!(
                exact == 0 && estimated > completion,
                "{name}: leaving mid-stream cost {exact}+{estimated} tokens, no more than \
                 the {completion} the whole answer generates"
            );
        }
    }
}
