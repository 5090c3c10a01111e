//! What a request may cost, judged from its body before it is forwarded: the
//! tokens reserved against its budgets at admission, and what it is charged
//! when no usage comes back (a client that left early, an engine that
//! reports nothing).
//!
//! A pure function of the endpoint path and the canonical body (the value
//! that was judged, see [`crate::canonical`]):
//!
//! - **prompt**: one token per [`BYTES_PER_TOKEN`] bytes of the text in the
//!   body (every string but the model name, roles and option names), plus
//!   [`TOKENS_PER_MESSAGE`] per chat message and [`TOKENS_PER_IMAGE`] per
//!   image (an `images` entry or a `data:` URL). Byte-level tokenizers spend
//!   about one token per three to four bytes of English, so this rarely
//!   undercounts text;
//! - **output**: the request's own cap as the engine reads it (decided by
//!   the canonical body: `max_completion_tokens`, `max_tokens`,
//!   `max_output_tokens`, Ollama's `options.num_predict`), times `n`
//!   choices, or the configured default when it names none (or asks for
//!   "until the context is full": `num_predict` below 0). Pooling endpoints
//!   (embeddings, score, rerank, tokenize) produce no output.
//!
//! `n`/`best_of` are read as integers, integral floats or numeric strings
//! (pydantic accepts all three); anything else is as if absent. Every sum
//! saturates: no input can make it panic.

use crate::canonical::json::Value;

/// Bytes of text per estimated prompt token.
pub const BYTES_PER_TOKEN: u64 = 3;
/// Template overhead per chat message.
pub const TOKENS_PER_MESSAGE: u64 = 4;
/// An image, whatever its size in the body.
pub const TOKENS_PER_IMAGE: u64 = 768;
/// The most choices (`n`) an estimate multiplies by.
const MAX_CHOICES: u64 = 128;

/// The estimate for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Prompt tokens.
    pub prompt: u64,
    /// The most output tokens the request can produce.
    pub max_output: u64,
}

impl Estimate {
    /// What admission reserves: prompt plus the whole possible output.
    pub fn reservation(&self) -> u64 {
        self.prompt.saturating_add(self.max_output)
    }
}

/// Endpoints whose answers are pooled (no generated tokens).
fn produces_no_output(path: &str) -> bool {
    let path = path.to_ascii_lowercase();
    matches!(
        path.as_str(),
        "/v1/embeddings"
            | "/api/embed"
            | "/api/embeddings"
            | "/pooling"
            | "/score"
            | "/v1/score"
            | "/rerank"
            | "/v1/rerank"
            | "/v2/rerank"
            | "/classify"
            | "/tokenize"
            | "/detokenize"
    )
}

/// Estimates what a request to `path` with the canonical `body` may cost.
/// `output_cap` is the request's own cap on generated tokens as the engine
/// reads it; requests that name none are given `default_max_output`.
pub fn estimate(
    path: &str,
    body: &Value,
    output_cap: Option<u64>,
    default_max_output: u64,
) -> Estimate {
    let mut text = TextCount::default();
    text.walk(body, None);
    let prompt = text
        .bytes
        .div_ceil(BYTES_PER_TOKEN)
        .saturating_add(text.messages.saturating_mul(TOKENS_PER_MESSAGE))
        .saturating_add(text.images.saturating_mul(TOKENS_PER_IMAGE))
        .saturating_add(text.token_ids);
    let max_output = if produces_no_output(path) {
        0
    } else {
        output_cap
            .unwrap_or(default_max_output)
            .saturating_mul(choices(body))
    };
    Estimate { prompt, max_output }
}

/// `n` (OpenAI) or `best_of` (vLLM): each choice is generated in full.
fn choices(body: &Value) -> u64 {
    let Some(object) = body.as_object() else {
        return 1;
    };
    ["n", "best_of"]
        .iter()
        .filter_map(|k| object.get(k).and_then(count))
        .max()
        .unwrap_or(1)
        .clamp(1, MAX_CHOICES)
}

/// A non-negative integer as engines accept it: an integer, an integral
/// float, or a string of digits.
pub fn count(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) if n.is_integer_literal() => n.as_str().parse().ok().or_else(|| {
            // An integer literal past u64::MAX, or negative.
            (n.as_f64() > 0.0).then_some(u64::MAX)
        }),
        Value::Number(n) => Some(n.as_f64())
            .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0)
            // `as` saturates for floats past u64::MAX.
            .map(|f| f as u64),
        Value::String(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// Keys whose string values are names or options, not prompt text.
const NOT_TEXT: [&str; 12] = [
    "model",
    "role",
    "type",
    "format",
    "keep_alive",
    "stream",
    "encoding_format",
    "id",
    "name",
    "tool_choice",
    "service_tier",
    "reasoning_effort",
];

#[derive(Debug, Default)]
struct TextCount {
    bytes: u64,
    messages: u64,
    images: u64,
    token_ids: u64,
}

impl TextCount {
    fn walk(&mut self, v: &Value, key: Option<&str>) {
        match v {
            Value::String(s) => {
                if key.is_some_and(|k| NOT_TEXT.contains(&k)) {
                    return;
                }
                // Escapes counted as written (a slight overestimate, never
                // an under-reservation), so no prompt is decoded here.
                if key == Some("images") || s.starts_with("data:") {
                    self.images = self.images.saturating_add(1);
                } else {
                    self.bytes = self.bytes.saturating_add(s.encoded_len() as u64);
                }
            }
            Value::Array(items) => {
                if key == Some("messages") {
                    self.messages = self.messages.saturating_add(items.len() as u64);
                }
                for item in items {
                    // Token ids (an OpenAI completions prompt of integers).
                    if matches!(item, Value::Number(_)) && matches!(key, Some("prompt" | "input")) {
                        self.token_ids = self.token_ids.saturating_add(1);
                    } else {
                        self.walk(item, key);
                    }
                }
            }
            Value::Object(map) => {
                for (k, item) in map.iter() {
                    let k = k.as_str();
                    if k == "options" || k == "stream_options" {
                        continue;
                    }
                    self.walk(item, Some(&k));
                }
            }
            Value::Number(_) | Value::Bool(_) | Value::Null => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;

    const DEFAULT: u64 = 1000;

    fn value(body: serde_json::Value) -> Value {
        crate::canonical::json::parse(&Bytes::from(body.to_string())).unwrap()
    }

    fn est(path: &str, body: serde_json::Value) -> Estimate {
        estimate(path, &value(body), None, DEFAULT)
    }

    #[test]
    fn the_output_is_the_engines_cap_times_the_choices_or_the_default() {
        let cases = [
            ("/v1/chat/completions", json!({}), Some(50), 50),
            ("/v1/chat/completions", json!({}), None, DEFAULT),
            ("/v1/chat/completions", json!({"n": 3}), Some(10), 30),
            ("/v1/chat/completions", json!({"n": "3"}), Some(10), 30),
            ("/v1/chat/completions", json!({"n": 2.0}), Some(10), 20),
            ("/v1/chat/completions", json!({"n": 2.5}), Some(10), 10),
            ("/v1/chat/completions", json!({"n": -2}), Some(10), 10),
            (
                "/v1/chat/completions",
                json!({"n": 100_000}),
                Some(10),
                10 * MAX_CHOICES,
            ),
            ("/v1/completions", json!({"best_of": 4}), Some(5), 20),
            ("/v1/embeddings", json!({}), Some(50), 0),
            ("/api/embed", json!({}), None, 0),
            ("/rerank", json!({}), None, 0),
            ("/v1/score", json!({}), None, 0),
            ("/pooling", json!({}), None, 0),
            (
                "/v1/chat/completions",
                json!({"n": 2}),
                Some(u64::MAX),
                u64::MAX,
            ),
        ];
        for (path, body, cap, expected) in cases {
            assert_eq!(
                estimate(path, &value(body.clone()), cap, DEFAULT).max_output,
                expected,
                "{path} {body} {cap:?}"
            );
        }
    }

    #[test]
    fn the_cap_comes_from_the_canonical_body_as_each_engine_reads_it() {
        use crate::canonical::{Context, Engine, canonicalize};
        use crate::policy::classify;
        let cap = |engine: Engine, path: &str, body: serde_json::Value| {
            let endpoint = classify(engine, &http::Method::POST, path);
            let context = Context {
                engine,
                endpoint: &endpoint,
                default_model: None,
            };
            let body = canonicalize(context, &Bytes::from(body.to_string())).unwrap();
            estimate(path, &body.value, body.metering.max_output_tokens, DEFAULT).max_output
        };
        let m = "m";
        assert_eq!(
            cap(
                Engine::Ollama,
                "/api/chat",
                json!({"model": m, "options": {"num_predict": 12}})
            ),
            12
        );
        assert_eq!(
            cap(
                Engine::Ollama,
                "/api/generate",
                json!({"model": m, "options": {"num_predict": -1}})
            ),
            DEFAULT
        );
        assert_eq!(
            cap(
                Engine::Vllm,
                "/v1/chat/completions",
                json!({"model": m, "max_completion_tokens": 40, "max_tokens": 50})
            ),
            40
        );
        assert_eq!(
            cap(
                Engine::Vllm,
                "/v1/chat/completions",
                json!({"model": m, "max_tokens": "70"})
            ),
            70
        );
        assert_eq!(
            cap(
                Engine::Vllm,
                "/v1/responses",
                json!({"model": m, "max_output_tokens": 64})
            ),
            64
        );
    }

    #[test]
    fn the_prompt_counts_text_messages_images_and_token_ids() {
        let chat = est(
            "/v1/chat/completions",
            json!({"model": "a-very-long-model-name", "messages": [
                {"role": "system", "content": "abcdef"},
                {"role": "user", "content": [
                    {"type": "text", "text": "abc"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ]},
            ]}),
        );
        // 9 bytes of text -> 3, two messages -> 8, one image.
        assert_eq!(chat.prompt, 3 + 8 + TOKENS_PER_IMAGE);

        let ollama = est(
            "/api/generate",
            json!({"model": "m", "prompt": "abcdefg", "images": ["iVBOR", "iVBOR"],
                   "options": {"stop": ["a-long-stop-word"]}, "format": "json"}),
        );
        assert_eq!(ollama.prompt, 3 + 2 * TOKENS_PER_IMAGE);

        let ids = est("/v1/completions", json!({"prompt": [1, 2, 3, 4, 5]}));
        assert_eq!(ids.prompt, 5);
        let embed = est("/api/embed", json!({"input": ["ab", "cd"]}));
        assert_eq!(
            embed,
            Estimate {
                prompt: 2,
                max_output: 0
            }
        );
        let responses = est(
            "/v1/responses",
            json!({"instructions": "abc", "input": [{"role": "user", "content": "abc"}]}),
        );
        assert_eq!(responses.prompt, 2);
        // Escaped text counts as written (18 bytes for "abc"): never less
        // than the characters it stands for, and nothing decoded to count it.
        let parsed =
            |raw: &'static [u8]| crate::canonical::json::parse(&Bytes::from_static(raw)).unwrap();
        let escaped = estimate(
            "/api/generate",
            &parsed(br#"{"prompt":"\u0061\u0062\u0063"}"#),
            None,
            DEFAULT,
        );
        assert_eq!(escaped.prompt, 6);
        // An image is an image however its data URL is spelled.
        for raw in [
            &br#"{"messages":[{"content":"\u0064ata:image/png;base64,AAAA"}]}"#[..],
            &br#"{"messages":[{"content":"data:image/png;base64,AA\nAA"}]}"#[..],
        ] {
            let image = estimate("/v1/chat/completions", &parsed(raw), None, DEFAULT);
            assert_eq!(image.prompt, TOKENS_PER_MESSAGE + TOKENS_PER_IMAGE);
        }
    }

    #[test]
    fn token_ids_are_the_numbers_of_a_prompt_or_an_input_only() {
        // A list of strings is text even under `prompt`/`input`...
        assert_eq!(
            est("/v1/embeddings", json!({"input": ["abcdefghi"]})).prompt,
            3
        );
        assert_eq!(
            est("/v1/completions", json!({"prompt": ["abcdefghi"]})).prompt,
            3
        );
        // ...and numbers under other keys are neither text nor token ids.
        let other = est(
            "/v1/embeddings",
            json!({"dimensions_list": [1, 2, 3, 4, 5, 6]}),
        );
        assert_eq!(other.prompt, 0);
        assert_eq!(
            est("/v1/embeddings", json!({"input": [[1, 2], [3]]})).prompt,
            3
        );
    }

    #[test]
    fn counts_are_read_exactly_and_never_from_a_negative_number() {
        let parsed =
            |raw: &'static [u8]| crate::canonical::json::parse(&Bytes::from_static(raw)).unwrap();
        // An integer past f64's 2^53 is read as written, not rounded.
        assert_eq!(
            count(&parsed(b"9007199254740993")),
            Some(9_007_199_254_740_993)
        );
        // An integer literal past u64::MAX saturates; a negative one (minus zero
        // included: `-0`) is no count at all.
        assert_eq!(count(&parsed(b"100000000000000000000")), Some(u64::MAX));
        assert_eq!(count(&parsed(b"-5")), None);
        assert_eq!(count(&parsed(b"-0")), None);
        assert_eq!(count(&parsed(b"0")), Some(0));
    }

    #[test]
    fn nothing_overflows() {
        let e = Estimate {
            prompt: u64::MAX,
            max_output: u64::MAX,
        };
        assert_eq!(e.reservation(), u64::MAX);
        assert_eq!(count(&value(json!(1e300))), Some(u64::MAX));
        assert_eq!(
            count(&value(json!(18446744073709551615u64))),
            Some(u64::MAX)
        );
        assert_eq!(count(&value(json!("18446744073709551616"))), None);
        assert_eq!(count(&value(json!(true))), None);
    }
}
