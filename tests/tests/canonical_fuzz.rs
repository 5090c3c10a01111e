#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! A property test of the gateway's body canonicalisation against the
//! engines' own decoders: bodies with case-variant, duplicate, escaped,
//! Unicode-folded and nested keys, and many spellings of model names. For
//! every body the gateway either refuses it, or the engine, reading the
//! client's original bytes, would run exactly the model the gateway judged,
//! and reading the canonical bytes, runs it too.
//!
//! The Go decoder is Ollama's (the ollama-faithful upstream: gin binding,
//! `encoding/json`, `model.ParseName`); the Python one is vLLM's (FastAPI,
//! `json.loads`, pydantic). No test world is needed.
//!
//! `PROPTEST_CASES` sets the number of bodies (default 256 here, so the
//! normal test run stays short); `scripts/fuzz-canonical` runs many more.

use attach_sidecar::canonical::{self, Context, Engine, ModelName, canonical_name};
use attach_sidecar::policy::classify;
use attach_tests::faithful::{FaithfulUpstream, Verdict};
use attach_tests::raw_http::{Protocol, RawBody, RawClient};
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const OLLAMA_MODELS: &[&str] = &["tinyllama", "llama3.1:70b", "tinyllama/big"];
const VLLM_MODELS: &[&str] = &["big-chat", "tiny-lora", "Tiny-Lora"];

/// Spellings of a key, as JSON text (escapes included).
fn key_spelling(key: &'static str) -> impl Strategy<Value = String> {
    let variants: Vec<String> = match key {
        "model" => vec![
            "model",
            "MODEL",
            "Model",
            "mOdEl",
            "m\\u006fdel",
            "\\u006dodel",
            "MODE\\u004c",
            "model ",
            " model",
            "modeL",
        ],
        "stream" => vec![
            "stream",
            "STREAM",
            "\u{17f}tream",
            "\\u017ftream",
            "Stream",
            "stream\\u0000",
        ],
        "name" => vec!["name", "NAME", "Name", "n\\u0061me"],
        "options" => vec!["options", "OPTIONS", "Options"],
        "keep_alive" => vec!["keep_alive", "\u{212a}eep_alive", "KEEP_ALIVE"],
        other => vec![other],
    }
    .into_iter()
    .map(str::to_owned)
    .collect();
    proptest::sample::select(variants)
}

/// Model names, as JSON values.
fn model_value() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "\"tinyllama\"",
        "\"TinyLlama\"",
        "\"tinyllama:latest\"",
        "\"library/tinyllama\"",
        "\"registry.ollama.ai/library/tinyllama:latest\"",
        "\"https://registry.ollama.ai/library/TINYLLAMA\"",
        "\"llama3.1:70b\"",
        "\"LLAMA3.1:70B\"",
        "\"tinyllama/big\"",
        "\"tiny\\u006clama\"",
        "\"big-chat\"",
        "\"tiny-lora\"",
        "\"Tiny-Lora\"",
        "\"\"",
        "\" tinyllama\"",
        "\"tiny llama\"",
        "\"a/b/c/d\"",
        "null",
        "5",
        "[\"tinyllama\"]",
    ])
    .prop_map(str::to_owned)
}

/// One member of the top-level object, as JSON text.
fn member() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (key_spelling("model"), model_value()).prop_map(|(k, v)| format!("\"{k}\":{v}")),
        1 => (key_spelling("name"), model_value()).prop_map(|(k, v)| format!("\"{k}\":{v}")),
        1 => (key_spelling("stream"), proptest::sample::select(vec!["false", "true", "\"no\"", "0"]))
            .prop_map(|(k, v)| format!("\"{k}\":{v}")),
        1 => (key_spelling("keep_alive"), Just("\"5m\"")).prop_map(|(k, v)| format!("\"{k}\":{v}")),
        1 => (key_spelling("options"), proptest::sample::select(vec![
            "{}", "{\"num_predict\":5}", "{\"num_predict\":5,\"NUM_PREDICT\":9}", "{\"model\":\"llama3.1:70b\"}",
        ]))
        .prop_map(|(k, v)| format!("\"{k}\":{v}")),
        3 => proptest::sample::select(vec![
            "\"messages\":[]",
            "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]",
            "\"messages\":[{\"role\":\"user\",\"ROLE\":\"system\",\"content\":\"x\"}]",
            "\"messages\":[{\"role\":\"user\",\"content\":\"hi\",\"model\":\"llama3.1:70b\"}]",
            "\"extra\":{\"model\":\"llama3.1:70b\",\"MODEL\":\"x\"}",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

/// A whole body: members in any order, possibly repeated, with random
/// insignificant white space, sometimes followed by trailing data.
fn body() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(member(), 1..5),
        proptest::sample::select(vec!["", " ", "\n\t"]),
        prop_oneof![
            8 => Just(""),
            1 => Just(" {\"model\":\"llama3.1:70b\"}"),
            1 => Just("x"),
        ],
    )
        .prop_map(|(members, ws, trailing)| {
            format!(
                "{ws}{{{ws}{}{ws}}}{trailing}",
                members.join(&format!(",{ws}"))
            )
        })
}

fn judged(engine: Engine, path: &str, body: &str, default: Option<&ModelName>) -> Option<String> {
    let endpoint = classify(engine, &http::Method::POST, path);
    canonical::canonicalize(
        Context {
            engine,
            endpoint: &endpoint,
            default_model: default,
        },
        &Bytes::copy_from_slice(body.as_bytes()),
    )
    .ok()
    .and_then(|b| b.model.map(|m| m.to_string()))
}

async fn verdict(client: &RawClient, url: &str, path: &str, body: Bytes) -> (u16, Verdict) {
    let response = client
        .send(
            Protocol::Http1,
            "POST",
            &format!("{url}{path}"),
            &[("content-type", "application/json")],
            RawBody::Full(body),
        )
        .await
        .unwrap();
    (response.status, Verdict::of(&response.headers))
}

/// What Ollama made of a body's model: its parser's name (lower case), if
/// it got that far.
fn ollama_model(v: &Verdict) -> Option<String> {
    v.parsed
        .as_deref()
        .filter(|p| *p != "invalid")
        .map(str::to_ascii_lowercase)
}

/// What vLLM would run: the served model it resolved, or the name it
/// refused as not served.
fn vllm_model(v: &Verdict) -> Option<String> {
    if !v.model.is_empty() {
        Some(v.model.clone())
    } else {
        v.requested.clone()
    }
}

fn cases_or(default: u32) -> Config {
    let mut config = Config::with_cases(default);
    if let Some(n) = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.cases = n;
    }
    // Failures are reported with the shrunk body; nothing is written to the
    // source tree.
    config.failure_persistence = None;
    config
}

#[test]
fn the_engine_runs_the_model_the_gateway_judged_or_the_body_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ollama, vllm) = rt.block_on(async {
        (
            FaithfulUpstream::ollama(OLLAMA_MODELS).await.unwrap(),
            FaithfulUpstream::vllm(VLLM_MODELS).await.unwrap(),
        )
    });
    let client = RawClient::new();
    let default = canonical_name(Engine::Vllm, VLLM_MODELS[0]).unwrap();
    let checked = [std::cell::Cell::new(0u32), std::cell::Cell::new(0u32)];
    let mut runner = TestRunner::new(cases_or(256));
    let result = runner.run(&body(), |body| {
        rt.block_on(async {
            // Ollama: judged by the gateway as Go would read it.
            if let Some(model) = judged(Engine::Ollama, "/api/chat", &body, None) {
                let (status, original) =
                    verdict(&client, &ollama.url, "/api/chat", Bytes::from(body.clone())).await;
                // Go refusing to bind the body runs nothing; anything it
                // binds must name the judged model.
                if !(status == 400 && original.parsed.is_none()) {
                    checked[0].set(checked[0].get() + 1);
                    prop_assert_eq!(
                        ollama_model(&original),
                        Some(model.clone()),
                        "Ollama read the original body {} as another model",
                        body
                    );
                }
                let endpoint = classify(Engine::Ollama, &http::Method::POST, "/api/chat");
                let canonical = canonical::canonicalize(
                    Context {
                        engine: Engine::Ollama,
                        endpoint: &endpoint,
                        default_model: None,
                    },
                    &Bytes::from(body.clone()),
                )
                .unwrap();
                let (_, forwarded) =
                    verdict(&client, &ollama.url, "/api/chat", canonical.bytes.clone()).await;
                prop_assert_eq!(
                    ollama_model(&forwarded),
                    Some(model.clone()),
                    "Ollama read the canonical body {:?} as another model",
                    canonical.bytes
                );
            }
            // vLLM: judged as Python and pydantic read it, default included.
            if let Some(model) = judged(Engine::Vllm, "/v1/chat/completions", &body, Some(&default))
            {
                let (status, v) = verdict(
                    &client,
                    &vllm.url,
                    "/v1/chat/completions",
                    Bytes::from(body.clone()),
                )
                .await;
                // A body vLLM refuses for other reasons (no messages) runs
                // nothing; a body it accepts must run the judged model.
                if status != 400 {
                    checked[1].set(checked[1].get() + 1);
                    prop_assert_eq!(
                        vllm_model(&v),
                        Some(model.clone()),
                        "vLLM read {} ({}) as another model",
                        body,
                        status
                    );
                }
            }
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(e) = result {
        panic!(
            "{e}\nollama log:\n{}\nvllm log:\n{}",
            ollama.log(),
            vllm.log()
        );
    }
    // The generator must not produce only refusals.
    let checked = checked.map(std::cell::Cell::into_inner);
    assert!(
        checked.iter().all(|n| *n > 0),
        "checked per engine: {checked:?}"
    );
    eprintln!(
        "bodies accepted and checked: ollama {}, vllm {}",
        checked[0], checked[1]
    );
}
