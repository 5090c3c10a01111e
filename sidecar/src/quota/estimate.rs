//! What a request may cost, judged from its body before it is forwarded: the
//! tokens reserved against its budgets at admission, and what it is charged
//! when no usage comes back (a client that left early, an engine that
//! reports nothing).
//!
//! A pure function of the endpoint path and the parsed JSON body:
//!
//! - **prompt**: one token per [`BYTES_PER_TOKEN`] bytes of the text in the
//!   body (every string but the model name, roles and option names), plus
//!   [`TOKENS_PER_MESSAGE`] per chat message and [`TOKENS_PER_IMAGE`] per
//!   image (an `images` entry or a `data:` URL). Byte-level tokenizers spend
//!   about one token per three to four bytes of English, so this rarely
//!   undercounts text;
//! - **output**: the request's own cap (`max_completion_tokens`,
//!   `max_tokens`, `max_output_tokens`, Ollama's `options.num_predict`),
//!   times `n` choices, or the configured default when it names none (or
//!   asks for "until the context is full": `num_predict` below 0). Pooling
//!   endpoints (embeddings, score, rerank, tokenize) produce no output.
//!
//! Numbers are read the way the engines read them (JSON integers, integral
//! floats, and numeric strings, which pydantic accepts); anything else is as
//! if absent. Every sum saturates: no input can make it panic.

use serde_json::Value;

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

/// Estimates what a request to `path` with `body` may cost; requests that
/// name no output cap are given `default_max_output`.
pub fn estimate(path: &str, body: &Value, default_max_output: u64) -> Estimate {
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
        output_cap(body)
            .unwrap_or(default_max_output)
            .saturating_mul(choices(body))
    };
    Estimate { prompt, max_output }
}

/// The request's own cap on generated tokens, if it names a usable one.
fn output_cap(body: &Value) -> Option<u64> {
    for key in ["max_completion_tokens", "max_tokens", "max_output_tokens"] {
        if let Some(n) = body.get(key).and_then(count) {
            return Some(n);
        }
    }
    // Ollama: -1 is "no limit", -2 "fill the context": as if absent.
    body.get("options")
        .and_then(|o| o.get("num_predict"))
        .and_then(count)
}

/// `n` (OpenAI) or `best_of` (vLLM): each choice is generated in full.
fn choices(body: &Value) -> u64 {
    ["n", "best_of"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(count))
        .max()
        .unwrap_or(1)
        .clamp(1, MAX_CHOICES)
}

/// A non-negative integer as engines accept it: an integer, an integral
/// float, or a string of digits.
pub fn count(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0)
                // `as` saturates for floats past u64::MAX.
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
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
                if key == Some("images") || s.starts_with("data:") {
                    self.images = self.images.saturating_add(1);
                } else {
                    self.bytes = self.bytes.saturating_add(s.len() as u64);
                }
            }
            Value::Array(items) => {
                if key == Some("messages") {
                    self.messages = self.messages.saturating_add(items.len() as u64);
                }
                for item in items {
                    // Token ids (an OpenAI completions prompt of integers).
                    if item.is_number() && matches!(key, Some("prompt" | "input")) {
                        self.token_ids = self.token_ids.saturating_add(1);
                    } else {
                        self.walk(item, key);
                    }
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    if k == "options" || k == "stream_options" {
                        continue;
                    }
                    self.walk(item, Some(k));
                }
            }
            Value::Number(_) | Value::Bool(_) | Value::Null => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DEFAULT: u64 = 1000;

    fn est(path: &str, body: Value) -> Estimate {
        estimate(path, &body, DEFAULT)
    }

    #[test]
    fn output_caps_by_engine_and_endpoint() {
        let cases = [
            ("/v1/chat/completions", json!({"max_tokens": 50}), 50),
            (
                "/v1/chat/completions",
                json!({"max_completion_tokens": 40, "max_tokens": 50}),
                40,
            ),
            ("/v1/chat/completions", json!({"max_tokens": "70"}), 70),
            ("/v1/chat/completions", json!({"max_tokens": 30.0}), 30),
            ("/v1/chat/completions", json!({"max_tokens": 30.5}), DEFAULT),
            ("/v1/chat/completions", json!({"max_tokens": -5}), DEFAULT),
            ("/v1/chat/completions", json!({"max_tokens": null}), DEFAULT),
            (
                "/v1/chat/completions",
                json!({"max_tokens": 10, "n": 3}),
                30,
            ),
            (
                "/v1/chat/completions",
                json!({"max_tokens": 10, "n": 100_000}),
                10 * MAX_CHOICES,
            ),
            (
                "/v1/completions",
                json!({"max_tokens": 5, "best_of": 4}),
                20,
            ),
            ("/v1/responses", json!({"max_output_tokens": 64}), 64),
            ("/v1/messages", json!({"max_tokens": 256}), 256),
            ("/api/chat", json!({"options": {"num_predict": 12}}), 12),
            (
                "/api/generate",
                json!({"options": {"num_predict": -1}}),
                DEFAULT,
            ),
            (
                "/api/generate",
                json!({"options": {"num_predict": -2}}),
                DEFAULT,
            ),
            ("/api/generate", json!({}), DEFAULT),
            ("/v1/embeddings", json!({"max_tokens": 50}), 0),
            ("/api/embed", json!({}), 0),
            ("/rerank", json!({}), 0),
            ("/v1/score", json!({}), 0),
            ("/pooling", json!({}), 0),
            (
                "/v1/chat/completions",
                json!({"max_tokens": u64::MAX, "n": 2}),
                u64::MAX,
            ),
        ];
        for (path, body, expected) in cases {
            assert_eq!(
                est(path, body.clone()).max_output,
                expected,
                "{path} {body}"
            );
        }
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
    }

    #[test]
    fn nothing_overflows() {
        let e = Estimate {
            prompt: u64::MAX,
            max_output: u64::MAX,
        };
        assert_eq!(e.reservation(), u64::MAX);
        assert_eq!(count(&json!(1e300)), Some(u64::MAX));
        assert_eq!(count(&json!("18446744073709551616")), None);
        assert_eq!(count(&json!(true)), None);
    }
}
