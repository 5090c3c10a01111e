//! The OpenTelemetry GenAI semantic conventions, next to the `attach_*`
//! metrics: token usage, request duration, time to first token and time per
//! output token of every inference answer the gateway forwards.
//!
//! Names and labels are those the OpenTelemetry Prometheus exporter gives
//! the conventions' instruments: dots become underscores, a unit of seconds
//! becomes a `_seconds` suffix, and the `{token}` annotation is dropped
//! (`gen_ai.client.token.usage` is `gen_ai_client_token_usage`). Bucket
//! bounds are the conventions' advice.
//!
//! Cardinality is bounded: `gen_ai_request_model` is a model the backend
//! serves or `(unlisted)`, the operation and provider come from fixed sets,
//! and `attach_backend` is one per gateway. `user` and `tenant` are only
//! there with `metrics.userLabels` / `metrics.tenantLabels`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::canonical::Engine;

/// Labels of every GenAI instrument.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Operation {
    /// `chat`, `text_completion`, `embeddings`, `generate_content`, or
    /// `other` (rerank, score, tokenize, ...).
    pub gen_ai_operation_name: &'static str,
    /// The engine: `ollama`, `vllm` or `openai_compatible`.
    pub gen_ai_provider_name: &'static str,
    /// The model asked for, canonical; `(unlisted)` for any name the backend
    /// does not serve.
    pub gen_ai_request_model: String,
    /// The `LLMBackend` (`namespace/name`) the gateway protects, when the
    /// operator rendered its config.
    pub attach_backend: Option<String>,
}

/// `gen_ai_client_token_usage` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenUsage {
    #[prometheus(flatten)]
    pub operation: Operation,
    /// `input` or `output`.
    pub gen_ai_token_type: &'static str,
    /// Only with `metrics.userLabels`.
    pub user: Option<String>,
    /// Only with `metrics.tenantLabels`.
    pub tenant: Option<String>,
}

/// `gen_ai_server_request_duration_seconds` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Duration {
    #[prometheus(flatten)]
    pub operation: Operation,
    /// The model's HTTP status when it was an error (`500`, `429`, ...), or
    /// `stream_error` when the answer broke off.
    pub error_type: Option<String>,
}

/// The conventions' advice for `gen_ai.client.token.usage`.
const TOKEN_BUCKETS: [f64; 14] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
/// The conventions' advice for `gen_ai.server.request.duration`.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// The conventions' advice for `gen_ai.server.time_to_first_token`.
const FIRST_TOKEN_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// The conventions' advice for `gen_ai.server.time_per_output_token`.
const PER_TOKEN_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The GenAI instruments.
#[derive(Debug)]
pub struct GenAi {
    /// `gen_ai_client_token_usage`: tokens per answer, input and output.
    pub token_usage: Histograms<TokenUsage>,
    /// `gen_ai_server_request_duration_seconds`: from the request's arrival
    /// to the end of its answer.
    pub request_duration: Histograms<Duration>,
    /// `gen_ai_server_time_to_first_token_seconds`: from arrival to the
    /// first chunk of a streamed answer.
    pub time_to_first_token: Histograms<Operation>,
    /// `gen_ai_server_time_per_output_token_seconds`: after the first
    /// chunk, the time per further output token of a streamed answer.
    pub time_per_output_token: Histograms<Operation>,
}

impl GenAi {
    /// Creates the instruments and registers them in `registry` (which must
    /// have no prefix: these names are the conventions').
    pub fn register(registry: &mut Registry) -> Self {
        let token_usage =
            Histograms::<TokenUsage>::new_with_constructor(|| Histogram::new(TOKEN_BUCKETS));
        registry.register(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used, per answer",
            token_usage.clone(),
        );
        let request_duration =
            Histograms::<Duration>::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register(
            "gen_ai_server_request_duration_seconds",
            "Generative AI server request duration, to the answer's last byte",
            request_duration.clone(),
        );
        let time_to_first_token =
            Histograms::<Operation>::new_with_constructor(|| Histogram::new(FIRST_TOKEN_BUCKETS));
        registry.register(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to generate the first chunk of a streamed answer",
            time_to_first_token.clone(),
        );
        let time_per_output_token =
            Histograms::<Operation>::new_with_constructor(|| Histogram::new(PER_TOKEN_BUCKETS));
        registry.register(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first of a streamed answer",
            time_per_output_token.clone(),
        );
        Self {
            token_usage,
            request_duration,
            time_to_first_token,
            time_per_output_token,
        }
    }

    /// Records one answer.
    pub fn record(&self, answer: &Answer) {
        let op = &answer.operation;
        let token = |kind, count: u64| {
            self.token_usage
                .get_or_create(&TokenUsage {
                    operation: op.clone(),
                    gen_ai_token_type: kind,
                    user: answer.user.clone(),
                    tenant: answer.tenant.clone(),
                })
                .observe(count as f64);
        };
        token("input", answer.input_tokens);
        if op.gen_ai_operation_name != "embeddings" {
            token("output", answer.output_tokens);
        }
        self.request_duration
            .get_or_create(&Duration {
                operation: op.clone(),
                error_type: answer.error_type.clone(),
            })
            .observe(answer.duration.as_secs_f64());
        if let Some(first) = answer.first_chunk {
            self.time_to_first_token
                .get_or_create(op)
                .observe(first.as_secs_f64());
            if let Some(per_token) = per_output_token(answer) {
                self.time_per_output_token
                    .get_or_create(op)
                    .observe(per_token);
            }
        }
    }
}

/// What one answer tells the GenAI instruments.
#[derive(Debug, Clone)]
pub struct Answer {
    pub operation: Operation,
    pub user: Option<String>,
    pub tenant: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// From the request's arrival to the answer's end.
    pub duration: std::time::Duration,
    /// From the request's arrival to the first chunk, for streamed answers.
    pub first_chunk: Option<std::time::Duration>,
    pub error_type: Option<String>,
}

/// The time per output token after the first: the rest of the stream
/// divided by the tokens that came after the first. `None` without a
/// stream or with fewer than two output tokens.
pub fn per_output_token(answer: &Answer) -> Option<f64> {
    let first = answer.first_chunk?;
    let after_first = answer.output_tokens.checked_sub(1).filter(|n| *n > 0)?;
    let rest = answer.duration.saturating_sub(first);
    Some(rest.as_secs_f64() / after_first as f64)
}

/// The convention's `gen_ai.operation.name` for an inference endpoint (in
/// the endpoint table's spelling).
pub fn operation_name(path: &str) -> &'static str {
    match path {
        "/api/chat" | "/v1/chat/completions" | "/v1/messages" | "/v1/responses" => "chat",
        "/api/generate" | "/v1/completions" => "text_completion",
        "/api/embed" | "/api/embeddings" | "/v1/embeddings" | "/pooling" => "embeddings",
        "/v1/images/generations" | "/v1/images/edits" => "generate_content",
        _ => "other",
    }
}

/// The convention's `gen_ai.provider.name` for the engine behind.
pub fn provider_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Ollama => "ollama",
        Engine::Vllm => "vllm",
        Engine::Openai => "openai_compatible",
        Engine::Mcp => "mcp",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as Elapsed;

    use super::*;

    #[test]
    fn every_inference_endpoint_has_its_operation() {
        for (path, name) in [
            ("/api/chat", "chat"),
            ("/v1/chat/completions", "chat"),
            ("/v1/messages", "chat"),
            ("/v1/responses", "chat"),
            ("/api/generate", "text_completion"),
            ("/v1/completions", "text_completion"),
            ("/api/embed", "embeddings"),
            ("/api/embeddings", "embeddings"),
            ("/v1/embeddings", "embeddings"),
            ("/pooling", "embeddings"),
            ("/v1/images/generations", "generate_content"),
            ("/v1/images/edits", "generate_content"),
            ("/v2/rerank", "other"),
            ("/tokenize", "other"),
            ("/invocations", "other"),
        ] {
            assert_eq!(operation_name(path), name, "{path}");
        }
    }

    fn answer(output_tokens: u64, duration_ms: u64, first_ms: Option<u64>) -> Answer {
        Answer {
            operation: Operation {
                gen_ai_operation_name: "chat",
                gen_ai_provider_name: "vllm",
                gen_ai_request_model: "m".into(),
                attach_backend: Some("team/m".into()),
            },
            user: None,
            tenant: None,
            input_tokens: 11,
            output_tokens,
            duration: Elapsed::from_millis(duration_ms),
            first_chunk: first_ms.map(Elapsed::from_millis),
            error_type: None,
        }
    }

    #[test]
    fn the_time_per_output_token_counts_the_tokens_after_the_first() {
        // 5 tokens: the first at 100 ms, 4 more over the next 400 ms.
        let per = per_output_token(&answer(5, 500, Some(100))).unwrap();
        assert!((per - 0.1).abs() < 1e-9, "{per}");
        assert_eq!(per_output_token(&answer(1, 500, Some(100))), None);
        assert_eq!(per_output_token(&answer(0, 500, Some(100))), None);
        assert_eq!(per_output_token(&answer(5, 500, None)), None, "no stream");
    }

    #[test]
    fn an_answer_is_exported_under_the_conventions_names() {
        let mut registry = Registry::default();
        let gen_ai = GenAi::register(&mut registry);
        gen_ai.record(&answer(3, 250, Some(50)));
        let mut embed = answer(0, 20, None);
        embed.operation.gen_ai_operation_name = "embeddings";
        embed.error_type = Some("500".into());
        gen_ai.record(&embed);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let labels = "gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"vllm\",\
                      gen_ai_request_model=\"m\",attach_backend=\"team/m\"";
        for line in [
            format!(
                "gen_ai_client_token_usage_sum{{{labels},gen_ai_token_type=\"input\",user=\"\",tenant=\"\"}} 11.0"
            ),
            format!(
                "gen_ai_client_token_usage_sum{{{labels},gen_ai_token_type=\"output\",user=\"\",tenant=\"\"}} 3.0"
            ),
            // An absent label is an empty one to Prometheus.
            format!("gen_ai_server_request_duration_seconds_sum{{{labels},error_type=\"\"}} 0.25"),
            format!("gen_ai_server_time_to_first_token_seconds_sum{{{labels}}} 0.05"),
            format!("gen_ai_server_time_per_output_token_seconds_sum{{{labels}}} 0.1"),
            "gen_ai_server_request_duration_seconds_count{gen_ai_operation_name=\"embeddings\",\
             gen_ai_provider_name=\"vllm\",gen_ai_request_model=\"m\",attach_backend=\"team/m\",\
             error_type=\"500\"} 1"
                .to_owned(),
        ] {
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
        assert!(
            !text.contains("embeddings\",gen_ai_provider_name=\"vllm\",gen_ai_request_model=\"m\",attach_backend=\"team/m\",gen_ai_token_type=\"output\""),
            "embeddings have no output tokens:\n{text}"
        );
    }
}
