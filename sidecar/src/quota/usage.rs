//! Reads the model's real token usage out of its answer, as the answer
//! streams past, without buffering what the client is waiting for. Every
//! inference shape the endpoint tables list, streamed and not:
//!
//! | answer | where the usage is |
//! |---|---|
//! | OpenAI chat/completions, embeddings, vLLM score, rerank, pooling | `usage` (`prompt_tokens`, `completion_tokens`, or only `total_tokens`) |
//! | OpenAI Responses API | `usage` (`input_tokens`, `output_tokens`); streamed: the `response.completed` (or `.incomplete`, `.failed`) event's `response.usage` |
//! | Anthropic Messages | `usage`; streamed: `message_start`'s `message.usage`, then each `message_delta`'s cumulative `usage` |
//! | Ollama chat and generate | the final (`done: true`) object's `prompt_eval_count` + `eval_count` |
//! | Ollama `/api/embed` | `prompt_eval_count` (no `done` field) |
//!
//! Server-sent events are framed per the standard (LF, CRLF and CR line
//! ends, see [`super::sse`]). A JSON answer of any size is metered: up to
//! [`MAX_WHOLE_BYTES`] it is parsed whole; past that only its first and last
//! [`EDGE_BYTES`] are kept and the usage is read from them (engines write
//! it last, or first). An NDJSON line or SSE event past the bound is passed
//! on and not parsed, so memory stays bounded whatever the model sends.
//!
//! When usage never comes (an engine that reports none, a client that left
//! early), the estimate is the prompt estimate plus one token per chunk
//! streamed.
//!
//! When the gateway itself asked for `stream_options.include_usage` (the
//! client had not), it also removes the usage-only final event, so the client
//! receives exactly the bytes it would have received without the gateway.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::sse::{SseParser, payload};

/// JSON answers up to this size are parsed whole.
pub const MAX_WHOLE_BYTES: usize = 1024 * 1024;
/// Of a larger answer, this much of its start and of its end is kept.
pub const EDGE_BYTES: usize = 64 * 1024;
/// NDJSON lines and SSE events longer than this are not parsed.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

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

/// Usage as reported, field by field: a later report overrides only the
/// fields it carries (Anthropic's `message_delta` carries output tokens
/// only, after `message_start` gave the input).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    pub total: Option<u64>,
}

impl Reported {
    /// Whether it counts nothing. Every inference answer has a prompt, so
    /// an all-zero `usage` is not a count: Ollama's OpenAI routes write one
    /// in every chunk of a completion stream, and in the whole answer when
    /// its runner stopped early (a model repeating itself), before any real
    /// count. Taken as a report, it would make such answers free; they are
    /// charged the estimate instead.
    fn counts_nothing(&self) -> bool {
        [self.prompt, self.completion, self.total]
            .iter()
            .all(|c| c.unwrap_or(0) == 0)
    }

    fn merge(&mut self, newer: Reported) {
        self.prompt = newer.prompt.or(self.prompt);
        self.completion = newer.completion.or(self.completion);
        self.total = newer.total.or(self.total);
    }

    /// Prompt and completion; a `total_tokens` larger than their sum (a
    /// rerank or score answer that reports only the total) is charged too,
    /// as prompt.
    fn usage(&self) -> Usage {
        let prompt = self.prompt.unwrap_or(0);
        let completion = self.completion.unwrap_or(0);
        let total = self.total.unwrap_or(0);
        let sum = prompt.saturating_add(completion);
        Usage {
            prompt: prompt.saturating_add(total.saturating_sub(sum)),
            completion,
            estimated: false,
        }
    }
}

/// A `usage` object of any of the shapes above.
pub fn read_usage_object(usage: &Value) -> Option<Reported> {
    let usage = usage.as_object()?;
    let n = |k: &str| usage.get(k).and_then(count);
    let cached = n("cache_creation_input_tokens")
        .unwrap_or(0)
        .saturating_add(n("cache_read_input_tokens").unwrap_or(0));
    let prompt = n("prompt_tokens").or_else(|| n("input_tokens").map(|i| i.saturating_add(cached)));
    let reported = Reported {
        prompt,
        completion: n("completion_tokens").or_else(|| n("output_tokens")),
        total: n("total_tokens"),
    };
    (!reported.counts_nothing()).then_some(reported)
}

/// The usage one JSON document (a whole answer, a stream line or an event
/// payload) carries, wherever its shape puts it.
pub fn read_document(v: &Value) -> Option<Reported> {
    // OpenAI, vLLM pooling, Anthropic (non-streamed, message_delta).
    if let Some(r) = v.get("usage").and_then(read_usage_object) {
        return Some(r);
    }
    // Responses API stream events; Anthropic message_start.
    for outer in ["response", "message"] {
        if let Some(r) = v
            .get(outer)
            .and_then(|o| o.get("usage"))
            .and_then(read_usage_object)
        {
            return Some(r);
        }
    }
    // Ollama: the final chat/generate object, or an /api/embed answer.
    let final_ollama = v.get("done").and_then(Value::as_bool) == Some(true)
        || (v.get("done").is_none() && v.get("prompt_eval_count").is_some());
    if final_ollama {
        let n = |k: &str| v.get(k).and_then(count);
        let reported = Reported {
            prompt: n("prompt_eval_count"),
            completion: n("eval_count"),
            total: None,
        };
        return (!reported.counts_nothing()).then_some(reported);
    }
    None
}

/// The shape of the model's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One line of JSON per chunk (Ollama streaming).
    NdJson,
    /// Server-sent events (OpenAI, Anthropic and Responses streaming).
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
    /// The prompt estimate, for when no usage comes.
    prompt_estimate: u64,
    /// NDJSON: the line in progress. JSON: the answer (up to
    /// `MAX_WHOLE_BYTES`), then its first `EDGE_BYTES`.
    pending: BytesMut,
    /// JSON past `MAX_WHOLE_BYTES`: its last `EDGE_BYTES`.
    tail: BytesMut,
    /// JSON: the answer outgrew `MAX_WHOLE_BYTES`.
    large: bool,
    /// NDJSON: the line in progress is past the bound; skip to its end.
    skip_line: bool,
    sse: SseParser,
    found: Option<Reported>,
    /// Chunks seen, for the estimate when no usage comes.
    chunks: u64,
}

impl UsageMeter {
    pub fn new(shape: Shape, strip_usage_event: bool, prompt_estimate: u64) -> Self {
        Self {
            shape,
            strip_usage_event: strip_usage_event && shape == Shape::Sse,
            prompt_estimate,
            pending: BytesMut::new(),
            tail: BytesMut::new(),
            large: false,
            skip_line: false,
            sse: SseParser::new(MAX_EVENT_BYTES),
            found: None,
            chunks: 0,
        }
    }

    /// A meter that reads nothing (what is left behind when a meter moves).
    pub fn opaque() -> Self {
        Self::new(Shape::Opaque, false, 0)
    }

    /// Feeds one chunk of the answer; returns what to send to the client now.
    pub fn feed(&mut self, data: Bytes) -> Bytes {
        match self.shape {
            Shape::Opaque => data,
            Shape::Json => {
                self.keep_json(&data);
                data
            }
            Shape::NdJson => {
                self.feed_ndjson(&data);
                data
            }
            Shape::Sse if !self.strip_usage_event => {
                for event in self.sse.feed(&data) {
                    self.read_sse_event(payload(&event));
                }
                if self.sse.held() > MAX_EVENT_BYTES {
                    self.sse.shed();
                }
                self.sse.take_passthrough();
                data
            }
            Shape::Sse => {
                // Held back until each event is complete, so one can be dropped.
                let events = self.sse.feed(&data);
                let mut out = BytesMut::from(&self.sse.take_passthrough()[..]);
                for event in events {
                    if !self.read_sse_event(payload(&event)) {
                        out.extend_from_slice(&event.raw);
                    }
                }
                if self.sse.held() > MAX_EVENT_BYTES {
                    // Too big to hold: pass it on unjudged.
                    out.extend_from_slice(&self.sse.shed());
                }
                out.freeze()
            }
        }
    }

    /// The end of the answer: returns any bytes still held, and the usage.
    pub fn finish(&mut self) -> (Bytes, Usage) {
        let mut tail = Bytes::new();
        match self.shape {
            Shape::Json => self.read_json(),
            // After a line past the bound, nothing is pending.
            Shape::NdJson => {
                let rest = std::mem::take(&mut self.pending);
                self.read_line(&rest);
            }
            Shape::Sse => {
                let events = self.sse.finish();
                let mut out = BytesMut::from(&self.sse.take_passthrough()[..]);
                for event in events {
                    let drop = self.read_sse_event(payload(&event));
                    if self.strip_usage_event && !drop {
                        out.extend_from_slice(&event.raw);
                    }
                }
                tail = out.freeze();
            }
            _ => {}
        }
        (tail, self.usage())
    }

    /// The usage found so far, or an estimate: the prompt estimate plus one
    /// token per chunk seen. Reported usage that lacks the prompt (a stream
    /// cut before it came) is completed the same way.
    pub fn usage(&self) -> Usage {
        if self.shape == Shape::Opaque {
            return Usage::default();
        }
        match self.found {
            Some(found) => {
                let mut usage = found.usage();
                if found.prompt.is_none() && found.total.is_none() {
                    usage.prompt = self.prompt_estimate;
                    usage.estimated = true;
                }
                usage
            }
            None => Usage {
                prompt: self.prompt_estimate,
                completion: self.chunks,
                estimated: true,
            },
        }
    }

    fn report(&mut self, reported: Reported) {
        match &mut self.found {
            Some(found) => found.merge(reported),
            None => self.found = Some(reported),
        }
    }

    fn keep_json(&mut self, data: &[u8]) {
        if !self.large && self.pending.len() + data.len() <= MAX_WHOLE_BYTES {
            self.pending.extend_from_slice(data);
            return;
        }
        if !self.large {
            self.large = true;
            // The head: the first EDGE_BYTES of what came before and, when
            // that is less (one chunk over the bound at once), of this chunk.
            let all = std::mem::take(&mut self.pending);
            let mut head = BytesMut::from(&all[..EDGE_BYTES.min(all.len())]);
            let room = EDGE_BYTES - head.len();
            head.extend_from_slice(&data[..room.min(data.len())]);
            self.pending = head;
            self.push_tail(&all);
        }
        self.push_tail(data);
    }

    fn push_tail(&mut self, data: &[u8]) {
        let keep = &data[data.len().saturating_sub(EDGE_BYTES)..];
        self.tail.extend_from_slice(keep);
        if self.tail.len() > 2 * EDGE_BYTES {
            let cut = self.tail.len() - EDGE_BYTES;
            let _ = self.tail.split_to(cut);
        }
    }

    fn read_json(&mut self) {
        if !self.large {
            let body = std::mem::take(&mut self.pending);
            if let Ok(v) = serde_json::from_slice::<Value>(&body)
                && let Some(r) = read_document(&v)
            {
                self.report(r);
            }
            return;
        }
        // Usage is a top-level member; engines write it last (OpenAI,
        // Anthropic, vLLM) or among the final fields (Ollama). Read the
        // last `"usage":` object of the tail, else of the head.
        let tail = std::mem::take(&mut self.tail);
        let head = std::mem::take(&mut self.pending);
        for part in [&tail[..], &head[..]] {
            if let Some(r) = scan_usage(part) {
                self.report(r);
                return;
            }
        }
    }

    fn feed_ndjson(&mut self, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            match rest.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    let (line, after) = rest.split_at(end + 1);
                    rest = after;
                    if std::mem::take(&mut self.skip_line) {
                        continue;
                    }
                    if self.pending.is_empty() {
                        self.read_line(line);
                    } else {
                        self.pending.extend_from_slice(line);
                        let whole = std::mem::take(&mut self.pending);
                        self.read_line(&whole);
                    }
                }
                None => {
                    if !self.skip_line {
                        self.pending.extend_from_slice(rest);
                        if self.pending.len() > MAX_EVENT_BYTES {
                            self.pending.clear();
                            self.skip_line = true;
                        }
                    }
                    break;
                }
            }
        }
    }

    fn read_line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.chunks = self.chunks.saturating_add(1);
        if let Ok(v) = serde_json::from_slice::<Value>(line)
            && let Some(r) = read_document(&v)
        {
            self.report(r);
        }
    }

    /// Reads one SSE event's data; returns whether it is the usage-only
    /// event (no choices) that the gateway added and should drop.
    fn read_sse_event(&mut self, data: &str) -> bool {
        if data.is_empty() || data == "[DONE]" {
            return false;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            self.chunks = self.chunks.saturating_add(1);
            return false;
        };
        let Some(reported) = read_document(&v) else {
            self.chunks = self.chunks.saturating_add(1);
            return false;
        };
        // From here usage is known, and chunks no longer count.
        self.report(reported);
        let usage_only = v
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty);
        usage_only && self.strip_usage_event
    }
}

/// The last top-level-looking `"usage": {...}` object in `text`, or
/// Ollama's counters. Inside JSON strings quotes are escaped, so `"usage"`
/// followed by a colon is always a key.
fn scan_usage(text: &[u8]) -> Option<Reported> {
    let mut best = None;
    let mut from = 0;
    while let Some(at) = find(&text[from..], b"\"usage\"").map(|p| p + from) {
        from = at + 1;
        let mut i = at + b"\"usage\"".len();
        while text.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if text.get(i) != Some(&b':') {
            continue;
        }
        let mut values = serde_json::Deserializer::from_slice(&text[i + 1..]).into_iter::<Value>();
        if let Some(Ok(v)) = values.next()
            && let Some(r) = read_usage_object(&v)
        {
            best = Some(r);
        }
    }
    if best.is_some() {
        return best;
    }
    let number_after = |key: &[u8]| -> Option<u64> {
        let at = rfind(text, key)? + key.len();
        let rest = &text[at..];
        let rest = rest.strip_prefix(b":").or_else(|| {
            let trimmed = rest.trim_ascii_start();
            trimmed.strip_prefix(b":")
        })?;
        let digits: Vec<u8> = rest
            .trim_ascii_start()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .copied()
            .collect();
        std::str::from_utf8(&digits).ok()?.parse().ok()
    };
    let reported = Reported {
        prompt: number_after(b"\"prompt_eval_count\""),
        completion: number_after(b"\"eval_count\""),
        total: None,
    };
    (!reported.counts_nothing()).then_some(reported)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// A token count as a model reports it: a non-negative integer (an
/// integral float too); anything else is as if absent.
fn count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            // An infinite or NaN count (not JSON, but) has no zero fraction.
            .filter(|f| *f >= 0.0 && f.fract() == 0.0)
            // `as` saturates for floats past u64::MAX.
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests;
