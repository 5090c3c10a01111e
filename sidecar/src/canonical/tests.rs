//! Canonicalisation, per engine: what is refused, what is judged, and what
//! is forwarded.

use bytes::Bytes;

use super::*;
use crate::policy::classify;

fn run(
    engine: Engine,
    path: &str,
    body: &str,
    default: Option<&str>,
) -> Result<CanonicalBody, BodyError> {
    let endpoint = classify(engine, &http::Method::POST, path);
    let default = default.map(|d| canonical_name(engine, d).unwrap());
    canonicalize(
        Context {
            engine,
            endpoint: &endpoint,
            default_model: default.as_ref(),
        },
        &Bytes::copy_from_slice(body.as_bytes()),
    )
}

fn ollama(path: &str, body: &str) -> Result<CanonicalBody, BodyError> {
    run(Engine::Ollama, path, body, None)
}

fn vllm(path: &str, body: &str) -> Result<CanonicalBody, BodyError> {
    run(Engine::Vllm, path, body, Some("big-chat"))
}

fn text(b: &CanonicalBody) -> String {
    String::from_utf8(b.bytes.to_vec()).unwrap()
}

fn model(b: &CanonicalBody) -> &str {
    b.model.as_ref().map_or("", ModelName::as_str)
}

#[test]
fn ollama_case_variant_keys_are_refused_and_a_lone_variant_is_renamed() {
    for body in [
        r#"{"model":"tinyllama","MODEL":"big"}"#,
        r#"{"Model":"tinyllama","model":"big"}"#,
        r#"{"model":"tinyllama","\u017ftream":true,"stream":false}"#,
        r#"{"model":"tinyllama","messages":[{"role":"user","ROLE":"system"}]}"#,
    ] {
        assert!(
            matches!(
                ollama("/api/chat", body),
                Err(BodyError::KeyCollision { .. })
            ),
            "{body}"
        );
    }
    // Go reads `MODEL` as `model`; so does the gateway, and the model gets
    // the exact field name.
    let b = ollama("/api/chat", r#"{"MODEL":"TinyLlama","messages":[]}"#).unwrap();
    assert_eq!(model(&b), "tinyllama:latest");
    assert_eq!(text(&b), r#"{"model":"tinyllama:latest","messages":[]}"#);
    // vLLM (pydantic) matches exactly: `MODEL` is an unknown extra field.
    let b = vllm("/v1/chat/completions", r#"{"MODEL":"tiny","messages":[]}"#).unwrap();
    assert_eq!(model(&b), "big-chat");
}

#[test]
fn the_model_is_read_where_the_engine_reads_it() {
    // A backend's default model stands in only on OpenAI engines: Ollama
    // refuses a body that names no model, so the gateway judges none.
    assert_eq!(
        run(
            Engine::Ollama,
            "/api/chat",
            r#"{"messages":[]}"#,
            Some("tinyllama")
        )
        .unwrap_err(),
        BodyError::MissingModel
    );
    // Ollama's chat has no `name`: a request with only `name` names no model.
    assert_eq!(
        ollama("/api/chat", r#"{"name":"tinyllama"}"#).unwrap_err(),
        BodyError::MissingModel
    );
    // /api/show reads model, else name; the judged name moves to `model`.
    let b = ollama("/api/show", r#"{"name":"TinyLlama"}"#).unwrap();
    assert_eq!(text(&b), r#"{"model":"tinyllama:latest"}"#);
    let b = ollama("/api/show", r#"{"model":"","name":"big"}"#).unwrap();
    assert_eq!(model(&b), "big:latest");
    let b = ollama("/api/show", r#"{"model":"small","name":"big"}"#).unwrap();
    assert_eq!(text(&b), r#"{"model":"small:latest"}"#);
    // null leaves Go's string empty.
    assert_eq!(
        ollama("/api/generate", r#"{"model":null}"#).unwrap_err(),
        BodyError::MissingModel
    );
    assert!(matches!(
        ollama("/api/generate", r#"{"model":7}"#),
        Err(BodyError::BadField { field: "model", .. })
    ));
    // vLLM never reads `name`: absent, null or empty is the default model,
    // which the model is then told explicitly.
    for body in [
        r#"{"name":"tiny","messages":[]}"#,
        r#"{"model":null,"name":"tiny","messages":[]}"#,
        r#"{"model":"","messages":[]}"#,
    ] {
        let b = vllm("/v1/chat/completions", body).unwrap();
        assert_eq!(model(&b), "big-chat", "{body}");
        assert!(text(&b).contains(r#""model":"big-chat""#), "{body}");
    }
    // Without a declared default such a request names no model.
    assert_eq!(
        run(
            Engine::Vllm,
            "/v1/chat/completions",
            r#"{"messages":[]}"#,
            None
        )
        .unwrap_err(),
        BodyError::MissingModel
    );
    assert!(matches!(
        vllm("/v1/completions", r#"{"model":5}"#),
        Err(BodyError::BadField { field: "model", .. })
    ));
}

#[test]
fn model_names_are_canonical_or_refused() {
    let b = ollama(
        "/api/chat",
        r#"{"model":"https://registry.ollama.ai/library/TinyLlama:latest"}"#,
    )
    .unwrap();
    assert_eq!(text(&b), r#"{"model":"tinyllama:latest"}"#);
    for bad in ["tiny llama", "a/b/c/d", "tiny:", "-x"] {
        assert!(
            matches!(
                ollama("/api/chat", &format!(r#"{{"model":"{bad}"}}"#)),
                Err(BodyError::Name(NameError::Invalid { .. }))
            ),
            "{bad}"
        );
    }
    let long = "a".repeat(300);
    assert_eq!(
        ollama("/api/chat", &format!(r#"{{"model":"{long}"}}"#)).unwrap_err(),
        BodyError::Name(NameError::TooLong)
    );
    assert_eq!(
        vllm("/v1/completions", &format!(r#"{{"model":"{long}"}}"#)).unwrap_err(),
        BodyError::Name(NameError::TooLong)
    );
}

#[test]
fn bodies_two_parsers_could_read_differently_are_refused() {
    for (body, code) in [
        (r#"{"model":"a","model":"b"}"#, "duplicate_key"),
        (r#"{"model":"a","mod\u0065l":"b"}"#, "duplicate_key"),
        (r#"{"model":"a"}{"model":"b"}"#, "trailing_data"),
        (r#"["model","a"]"#, "not_an_object"),
        (r#""a""#, "not_an_object"),
        (r#"{"model":"a","x":NaN}"#, "invalid_json"),
        (r#"{"model":"\ud800"}"#, "invalid_json"),
    ] {
        for engine in [Engine::Ollama, Engine::Vllm] {
            let err = run(engine, "/v1/chat/completions", body, Some("m")).unwrap_err();
            assert_eq!(err.code(), code, "{engine:?} {body}");
        }
    }
    let endpoint = classify(Engine::Ollama, &http::Method::POST, "/api/chat");
    let invalid = canonicalize(
        Context {
            engine: Engine::Ollama,
            endpoint: &endpoint,
            default_model: None,
        },
        &Bytes::from_static(b"{\"model\":\"tiny\xffllama\"}"),
    );
    assert_eq!(invalid.unwrap_err().code(), "invalid_utf8");
    let deep = format!(
        "{{\"model\":\"a\",\"x\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_eq!(ollama("/api/chat", &deep).unwrap_err().code(), "too_deep");
    assert_eq!(
        check_content_encoding(Some(b"gzip")).unwrap_err().code(),
        "content_encoding"
    );
    assert!(check_content_encoding(Some(b"zstd")).is_err());
    assert!(check_content_encoding(Some(b"identity")).is_ok());
    assert!(check_content_encoding(None).is_ok());
}

#[test]
fn unknown_fields_numbers_and_order_survive() {
    let b = ollama(
        "/api/chat",
        r#"{ "messages": [ {"role":"user","content":"h\u00e9"} ], "model": "tinyllama", "options": {"temperature": 0.70, "seed": 12345678901234567890}, "x-extra": [1e3] }"#,
    )
    .unwrap();
    assert_eq!(
        text(&b),
        "{\"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9\"}],\"model\":\"tinyllama:latest\",\"options\":{\"temperature\":0.70,\"seed\":12345678901234567890},\"x-extra\":[1e3]}"
    );
    // The canonical form is a fixed point.
    let again = ollama("/api/chat", &text(&b)).unwrap();
    assert_eq!(text(&again), text(&b));
}

#[test]
fn ollama_metering_fields_follow_go() {
    let b = ollama("/api/chat", r#"{"model":"m"}"#).unwrap();
    assert_eq!(
        b.metering,
        Metering {
            stream: true,
            max_output_tokens: None,
            include_usage: false
        },
        "Ollama streams by default"
    );
    let b = ollama(
        "/api/generate",
        r#"{"model":"m","stream":null,"options":{"num_predict":12.9}}"#,
    )
    .unwrap();
    assert!(b.metering.stream);
    assert_eq!(b.metering.max_output_tokens, Some(12));
    assert_eq!(
        text(&b),
        r#"{"model":"m:latest","stream":null,"options":{"num_predict":12}}"#
    );
    // `options` is a map: null is an empty one to Go, accepted and kept.
    let b = ollama("/api/generate", r#"{"model":"m","options":null}"#).unwrap();
    assert_eq!(b.metering.max_output_tokens, None);
    assert_eq!(text(&b), r#"{"model":"m:latest","options":null}"#);
    let b = ollama(
        "/api/chat",
        r#"{"model":"m","STREAM":false,"Options":{"num_predict":-1}}"#,
    )
    .unwrap();
    assert!(!b.metering.stream);
    assert_eq!(b.metering.max_output_tokens, None, "-1 is no limit");
    assert_eq!(
        text(&b),
        r#"{"model":"m:latest","stream":false,"options":{"num_predict":-1}}"#
    );
    for (body, field) in [
        (r#"{"model":"m","stream":"true"}"#, "stream"),
        (r#"{"model":"m","stream":1}"#, "stream"),
        (
            r#"{"model":"m","options":{"num_predict":"5"}}"#,
            "options.num_predict",
        ),
        (
            r#"{"model":"m","options":{"num_predict":1e300}}"#,
            "options.num_predict",
        ),
        (r#"{"model":"m","options":[]}"#, "options"),
    ] {
        assert!(
            matches!(ollama("/api/chat", body), Err(BodyError::BadField { field: f, .. }) if f == field),
            "{body}"
        );
    }
    // Ollama's OpenAI routes: Go's strict types.
    let b = ollama("/v1/chat/completions", r#"{"model":"m","max_tokens":7}"#).unwrap();
    assert_eq!(b.metering.max_output_tokens, Some(7));
    assert!(!b.metering.stream);
    for body in [
        r#"{"model":"m","max_tokens":7.0}"#,
        r#"{"model":"m","max_tokens":"7"}"#,
        r#"{"model":"m","stream":"yes"}"#,
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":1}}"#,
    ] {
        assert!(
            matches!(
                ollama("/v1/chat/completions", body),
                Err(BodyError::BadField { .. })
            ),
            "{body}"
        );
    }
    // max_completion_tokens is no Ollama field.
    let b = ollama(
        "/v1/chat/completions",
        r#"{"model":"m","max_completion_tokens":"x"}"#,
    )
    .unwrap();
    assert_eq!(b.metering.max_output_tokens, None);
    let b = ollama(
        "/v1/messages",
        r#"{"model":"m","max_tokens":64,"stream":true}"#,
    )
    .unwrap();
    assert_eq!(
        (b.metering.stream, b.metering.max_output_tokens),
        (true, Some(64))
    );
}

#[test]
fn vllm_metering_fields_follow_pydantic_and_are_forwarded_as_decided() {
    let b = vllm(
        "/v1/chat/completions",
        r#"{"model":"m","stream":"yes","max_tokens":"5_000","max_completion_tokens":"12.0"}"#,
    )
    .unwrap();
    assert_eq!(
        b.metering,
        Metering {
            stream: true,
            max_output_tokens: Some(12),
            include_usage: true
        }
    );
    assert!(b.usage_added);
    assert_eq!(
        text(&b),
        r#"{"model":"m","stream":true,"max_tokens":5000,"max_completion_tokens":12,"stream_options":{"include_usage":true}}"#
    );
    let b = vllm(
        "/v1/completions",
        r#"{"model":"m","stream":1,"stream_options":{"include_usage":"TRUE"}}"#,
    )
    .unwrap();
    assert!(b.metering.stream && b.metering.include_usage && !b.usage_added);
    assert_eq!(
        text(&b),
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
    );
    let b = vllm(
        "/v1/chat/completions",
        r#"{"model":"m","stream":"f","max_tokens":1.0}"#,
    )
    .unwrap();
    assert!(!b.metering.stream && !b.usage_added);
    assert_eq!(text(&b), r#"{"model":"m","stream":false,"max_tokens":1}"#);
    for body in [
        r#"{"model":"m","stream":"maybe"}"#,
        r#"{"model":"m","stream":2}"#,
        r#"{"model":"m","max_tokens":5.5}"#,
        r#"{"model":"m","max_tokens":"1e3"}"#,
        r#"{"model":"m","stream":true,"stream_options":"x"}"#,
    ] {
        assert!(
            matches!(
                vllm("/v1/chat/completions", body),
                Err(BodyError::BadField { .. })
            ),
            "{body}"
        );
    }
    let b = vllm("/v1/responses", r#"{"model":"m","max_output_tokens":"9"}"#).unwrap();
    assert_eq!(b.metering.max_output_tokens, Some(9));
}

#[test]
fn usage_is_requested_only_for_streams_that_did_not_ask() {
    // Go reads a case variant of `stream_options` as the field: the model
    // gets the exact name, and the usage it already asked for is not added.
    let b = ollama(
        "/v1/chat/completions",
        r#"{"model":"m","stream":true,"Stream_Options":{"include_usage":true}}"#,
    )
    .unwrap();
    assert!(!b.usage_added);
    assert_eq!(
        text(&b),
        r#"{"model":"m:latest","stream":true,"stream_options":{"include_usage":true}}"#
    );
    for (body, added) in [
        (r#"{"model":"m","stream":true}"#, true),
        (r#"{"model":"m","stream":true,"stream_options":null}"#, true),
        (
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
            true,
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            false,
        ),
        (r#"{"model":"m","stream":false}"#, false),
        (r#"{"model":"m"}"#, false),
    ] {
        let b = ollama("/v1/chat/completions", body).unwrap();
        assert_eq!(b.usage_added, added, "{body}");
        if b.metering.stream {
            assert!(
                text(&b).contains(r#""stream_options":{"include_usage":true}"#),
                "{body}"
            );
        }
    }
    // Ollama's native API reports usage itself.
    assert!(
        !ollama("/api/chat", r#"{"model":"m","stream":true}"#)
            .unwrap()
            .usage_added
    );
}
