//! Reads the model's real token usage out of its answer, as the answer
//! streams past, without buffering what the client is waiting for:
//!
//! - Ollama (`application/x-ndjson` streams, or one JSON object): the final
//!   object's `prompt_eval_count` + `eval_count`;
//! - OpenAI (`text/event-stream`, or one JSON object): `usage.prompt_tokens`
//!   + `usage.completion_tokens`.
//!
//! When the gateway itself asked for `stream_options.include_usage` (the
//! client had not), it also removes the usage-only final event, so the client
//! receives exactly the bytes it would have received without the gateway.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// Lines (or whole JSON answers) longer than this are not parsed for usage.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Tokens a request used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// No usage was reported; these are estimates.
    pub estimated: bool,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// The shape of the model's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One line of JSON per chunk (Ollama streaming).
    NdJson,
    /// Server-sent events (OpenAI streaming).
    Sse,
    /// One JSON document (non-streaming answers).
    Json,
    /// An answer that carries no usage (read and admin endpoints): passed
    /// through without parsing.
    Opaque,
}

impl Shape {
    /// Picks the shape from the response's `Content-Type`.
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        let ct = content_type.unwrap_or_default().to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Self::Sse
        } else if ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl") {
            Self::NdJson
        } else {
            Self::Json
        }
    }
}

/// Watches an answer go by and finds its usage.
#[derive(Debug)]
pub struct UsageMeter {
    shape: Shape,
    /// Remove the usage-only SSE event (the gateway asked for it).
    strip_usage_event: bool,
    pending: BytesMut,
    found: Option<Usage>,
    /// Chunks seen, for the estimate when no usage comes.
    chunks: u64,
    overflow: bool,
}

impl UsageMeter {
    pub fn new(shape: Shape, strip_usage_event: bool) -> Self {
        Self {
            shape,
            strip_usage_event: strip_usage_event && shape == Shape::Sse,
            pending: BytesMut::new(),
            found: None,
            chunks: 0,
            overflow: false,
        }
    }

    /// Feeds one chunk of the answer; returns what to send to the client now.
    pub fn feed(&mut self, data: Bytes) -> Bytes {
        match self.shape {
            Shape::Opaque => data,
            Shape::Json => {
                self.buffer(&data);
                data
            }
            Shape::NdJson => {
                self.buffer(&data);
                while let Some(line) = self.take_until(b"\n") {
                    self.chunks += 1;
                    self.read_ollama(&line);
                }
                data
            }
            Shape::Sse if !self.strip_usage_event => {
                self.buffer(&data);
                while let Some(event) = self.take_until(b"\n\n") {
                    self.read_sse_event(&event);
                }
                data
            }
            Shape::Sse => {
                // Held back until each event is complete, so one can be dropped.
                self.pending.extend_from_slice(&data);
                let mut out = BytesMut::new();
                while let Some(event) = self.take_until(b"\n\n") {
                    if !self.read_sse_event(&event) {
                        out.extend_from_slice(&event);
                    }
                }
                out.freeze()
            }
        }
    }

    /// The end of the answer: returns any bytes still held, and the usage.
    pub fn finish(&mut self) -> (Bytes, Usage) {
        let rest = std::mem::take(&mut self.pending).freeze();
        let mut tail = Bytes::new();
        match self.shape {
            Shape::Json if !self.overflow => self.read_json(&rest),
            Shape::NdJson if !rest.is_empty() && !self.overflow => self.read_ollama(&rest),
            Shape::Sse if !rest.is_empty() => {
                let added_event = self.read_sse_event(&rest);
                if self.strip_usage_event && !added_event {
                    tail = rest;
                }
            }
            _ => {}
        }
        (tail, self.usage())
    }

    /// The usage found so far, or an estimate from the chunks seen.
    pub fn usage(&self) -> Usage {
        if self.shape == Shape::Opaque {
            return Usage::default();
        }
        self.found.unwrap_or(Usage {
            prompt: 0,
            completion: self.chunks,
            estimated: true,
        })
    }

    fn buffer(&mut self, data: &[u8]) {
        if self.overflow {
            return;
        }
        if self.pending.len() + data.len() > MAX_LINE_BYTES && self.shape == Shape::Json {
            self.overflow = true;
            self.pending.clear();
            return;
        }
        self.pending.extend_from_slice(data);
    }

    /// Splits off everything up to and including the next `separator`.
    fn take_until(&mut self, separator: &[u8]) -> Option<BytesMut> {
        let at = self
            .pending
            .windows(separator.len())
            .position(|w| w == separator)?;
        Some(self.pending.split_to(at + separator.len()))
    }

    fn read_ollama(&mut self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
            self.found = Some(Usage {
                prompt: n("prompt_eval_count"),
                completion: n("eval_count"),
                estimated: false,
            });
        }
    }

    fn read_json(&mut self, body: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        if let Some(usage) = openai_usage(&v) {
            self.found = Some(usage);
        } else if v.get("done").is_some() {
            self.read_ollama(body);
        }
    }

    /// Reads one SSE event; returns whether it is a usage-only event (no
    /// choices) that the gateway added and should drop.
    fn read_sse_event(&mut self, event: &[u8]) -> bool {
        let text = String::from_utf8_lossy(event);
        let mut usage_only = false;
        for line in text.lines() {
            let Some(payload) = line.strip_prefix("data:") else {
                continue;
            };
            let payload = payload.trim();
            if payload == "[DONE]" {
                continue;
            }
            self.chunks += 1;
            let Ok(v) = serde_json::from_str::<Value>(payload) else {
                continue;
            };
            if let Some(usage) = openai_usage(&v) {
                self.found = Some(usage);
                usage_only = v
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty);
                if usage_only {
                    self.chunks -= 1;
                }
            }
        }
        usage_only && self.strip_usage_event
    }
}

fn openai_usage(v: &Value) -> Option<Usage> {
    let usage = v.get("usage")?.as_object()?;
    let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        prompt: n("prompt_tokens"),
        completion: n("completion_tokens"),
        estimated: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(meter: &mut UsageMeter, chunks: &[&str]) -> (String, Usage) {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&meter.feed(Bytes::from(c.to_string())));
        }
        let (tail, usage) = meter.finish();
        out.extend_from_slice(&tail);
        (String::from_utf8(out).unwrap(), usage)
    }

    #[test]
    fn ollama_streams_report_the_final_counts_even_when_split_mid_line() {
        let stream = [
            "{\"done\":false,\"message\":{\"content\":\"he\"}}\n{\"done\":fa",
            "lse,\"message\":{\"content\":\"llo\"}}\n",
            "{\"done\":true,\"prompt_eval_count\":26,\"eval_count\":",
            "298}\n",
        ];
        let mut m = UsageMeter::new(Shape::NdJson, false);
        let (out, usage) = run(&mut m, &stream);
        assert_eq!(out, stream.concat(), "passed through unchanged");
        assert_eq!(
            usage,
            Usage {
                prompt: 26,
                completion: 298,
                estimated: false
            }
        );
    }

    #[test]
    fn non_stream_answers_of_both_shapes() {
        let mut m = UsageMeter::new(Shape::Json, false);
        let (_, u) = run(
            &mut m,
            &[
                "{\"done\":true,\"prompt_eval_count\":5,",
                "\"eval_count\":7}",
            ],
        );
        assert_eq!(
            u,
            Usage {
                prompt: 5,
                completion: 7,
                estimated: false
            }
        );
        let mut m = UsageMeter::new(Shape::Json, false);
        let (_, u) = run(
            &mut m,
            &["{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}"],
        );
        assert_eq!(
            u,
            Usage {
                prompt: 3,
                completion: 4,
                estimated: false
            }
        );
    }

    #[test]
    fn an_answer_without_usage_is_an_estimate() {
        let mut m = UsageMeter::new(Shape::NdJson, false);
        let (_, u) = run(&mut m, &["{\"done\":false}\n", "{\"done\":false}\n"]);
        assert_eq!(
            u,
            Usage {
                prompt: 0,
                completion: 2,
                estimated: true
            }
        );
    }

    const SSE: [&str; 4] = [
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\nda",
        "ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    ];

    #[test]
    fn the_added_usage_event_is_removed_and_every_other_byte_kept() {
        let mut m = UsageMeter::new(Shape::Sse, true);
        let (out, usage) = run(&mut m, &SSE);
        let expected = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
            "data: [DONE]\n\n",
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(
            usage,
            Usage {
                prompt: 11,
                completion: 2,
                estimated: false
            }
        );
    }

    #[test]
    fn a_usage_event_the_client_asked_for_is_kept() {
        let mut m = UsageMeter::new(Shape::Sse, false);
        let (out, usage) = run(&mut m, &SSE);
        assert_eq!(out, SSE.concat());
        assert_eq!(usage.total(), 13);
    }
}
