//! A real OpenTelemetry Collector on loopback ports, and the spans it
//! received.
//!
//! The binary is `tests/tools/otelcol` (see [`crate::tools::otelcol_binary`]):
//! the collector's own OTLP receiver, on gRPC and on HTTP, and the contrib
//! file exporter, which writes every batch it exports as one line of OTLP
//! JSON. [`Collector::spans`] reads that file back, so what a test sees is
//! what the collector itself decoded from the wire.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::HarnessError;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::wait::until_ready;

/// How long the collector gets to start its receivers and pipeline.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the collector logs once every pipeline is running.
const READY_LINE: &str = "Everything is ready";

/// The config file [`Collector::start`] writes, in its folder.
pub const CONFIG_FILE: &str = "otelcol.yaml";

/// The file the collector exports spans to, in its folder.
pub const SPANS_FILE: &str = "spans.jsonl";

/// A running collector. Dropping it stops it.
#[derive(Debug)]
pub struct Collector {
    process: Supervised,
    dir: PathBuf,
    grpc_port: u16,
    http_port: u16,
}

impl Collector {
    /// Writes a config to `dir/otelcol.yaml` (the OTLP receiver on a free
    /// loopback port for gRPC and another for HTTP; the file exporter to
    /// `dir/spans.jsonl`, flushed every 100 ms; the collector's own metrics
    /// off) and starts `binary` with it; returns once the collector logs that
    /// its pipeline is running.
    pub async fn start(binary: &Path, dir: &Path) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        let grpc_port = free_port()?;
        let http_port = free_port()?;
        let config = dir.join(CONFIG_FILE);
        std::fs::write(
            &config,
            config_yaml(grpc_port, http_port, &dir.join(SPANS_FILE)),
        )
        .map_err(HarnessError::io(&config))?;
        let mut cmd = process::command(binary);
        cmd.arg(format!("--config={}", config.display()))
            .current_dir(dir);
        let log = dir.join("otelcol.log");
        let mut process = Supervised::spawn("otelcol", cmd, &log)?;
        until_ready(
            &mut process,
            READY_TIMEOUT,
            Duration::from_millis(100),
            async || std::fs::read_to_string(&log).is_ok_and(|text| text.contains(READY_LINE)),
        )
        .await?;
        Ok(Self {
            process,
            dir: dir.to_owned(),
            grpc_port,
            http_port,
        })
    }

    /// The OTLP/HTTP endpoint, `http://127.0.0.1:<port>` (traces go to
    /// `/v1/traces`).
    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The OTLP/gRPC endpoint, `http://127.0.0.1:<port>` (plaintext).
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The collector's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The folder holding its config, log and exported spans.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the collector's output goes.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Every span exported so far, in the order the collector wrote them.
    /// A last line the exporter has not finished writing is left for the
    /// next call.
    pub fn spans(&self) -> Result<Vec<Span>, HarnessError> {
        let path = self.dir.join(SPANS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_export(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(HarnessError::io(path)(e)),
        }
    }

    /// Polls [`Self::spans`] every 100 ms until `done` holds for them, and
    /// returns them. Fails if the collector exits, or when `timeout` passes
    /// (naming the spans it had).
    pub async fn wait_for_spans(
        &mut self,
        mut done: impl FnMut(&[Span]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Span>, HarnessError> {
        let started = Instant::now();
        loop {
            self.process.check_running()?;
            let spans = self.spans()?;
            if done(&spans) {
                return Ok(spans);
            }
            if started.elapsed() >= timeout {
                let names: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.service_name))
                    .collect();
                return Err(HarnessError::Other(format!(
                    "the collector had not received the expected spans after {}s; it has {}: [{}]",
                    timeout.as_secs(),
                    spans.len(),
                    names.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The collector's config: OTLP in on both protocols, OTLP JSON lines out.
fn config_yaml(grpc_port: u16, http_port: u16, spans: &Path) -> String {
    // JSON strings are YAML strings: the path is quoted whatever it holds.
    let spans = Value::String(spans.display().to_string());
    format!(
        r#"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc_port}
      http:
        endpoint: 127.0.0.1:{http_port}
exporters:
  file:
    path: {spans}
    format: json
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
"#
    )
}

/// OTLP's span kinds (`Span.kind` in OTLP JSON is the enum's number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
    /// A number OTLP does not define.
    Other(i64),
}

impl From<i64> for SpanKind {
    fn from(kind: i64) -> Self {
        match kind {
            0 => Self::Unspecified,
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            other => Self::Other(other),
        }
    }
}

/// One span as the collector exported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// 32 lowercase hex digits, as in OTLP JSON.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id; `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    /// The `service.name` attribute of the span's resource ("" if none).
    pub service_name: String,
    /// The instrumentation scope's name ("" if none).
    pub scope_name: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// `status.code`: 0 unset, 1 ok, 2 error.
    pub status_code: i64,
    pub status_message: String,
    /// The span's attributes as plain JSON: strings, integers (OTLP JSON
    /// writes them as strings), doubles and booleans as such; arrays and
    /// key-value lists as JSON arrays and objects; bytes as their base64.
    pub attributes: BTreeMap<String, Value>,
}

impl Span {
    /// The attribute `key` as a string, if it is one.
    pub fn str_attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    /// The attribute `key` as an integer, if it is one.
    pub fn int_attribute(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_i64)
    }
}

// OTLP JSON (ExportTraceServiceRequest / TracesData), only the fields read.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TracesData {
    #[serde(default)]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans {
    #[serde(default)]
    resource: Resource,
    #[serde(default)]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Deserialize, Default)]
struct Resource {
    #[serde(default)]
    attributes: Vec<KeyValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScopeSpans {
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    spans: Vec<OtlpSpan>,
}

#[derive(Deserialize, Default)]
struct Scope {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtlpSpan {
    trace_id: String,
    span_id: String,
    #[serde(default)]
    parent_span_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: i64,
    #[serde(default)]
    start_time_unix_nano: Value,
    #[serde(default)]
    end_time_unix_nano: Value,
    #[serde(default)]
    attributes: Vec<KeyValue>,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize, Default)]
struct Status {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: Value,
}

/// Parses the file exporter's output: one OTLP JSON `TracesData` per line.
/// A last line without its newline is still being written, and is left out.
/// `what` names the file in errors.
pub fn parse_export(text: &str, what: &str) -> Result<Vec<Span>, HarnessError> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    let mut spans = Vec::new();
    for (number, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let data: TracesData = serde_json::from_str(line).map_err(|source| HarnessError::Json {
            what: format!("{what} line {}", number + 1),
            source,
        })?;
        spans.extend(flatten(data));
    }
    Ok(spans)
}

fn flatten(data: TracesData) -> impl Iterator<Item = Span> {
    data.resource_spans.into_iter().flat_map(|rs| {
        let resource = attributes(rs.resource.attributes);
        let service_name = resource
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        rs.scope_spans.into_iter().flat_map(move |ss| {
            let service_name = service_name.clone();
            let scope_name = ss.scope.name;
            ss.spans.into_iter().map(move |s| Span {
                trace_id: s.trace_id,
                span_id: s.span_id,
                parent_span_id: Some(s.parent_span_id).filter(|p| !p.is_empty()),
                name: s.name,
                kind: SpanKind::from(s.kind),
                service_name: service_name.clone(),
                scope_name: scope_name.clone(),
                start_time_unix_nano: nanos(&s.start_time_unix_nano),
                end_time_unix_nano: nanos(&s.end_time_unix_nano),
                status_code: s.status.code,
                status_message: s.status.message,
                attributes: attributes(s.attributes),
            })
        })
    })
}

fn attributes(list: Vec<KeyValue>) -> BTreeMap<String, Value> {
    list.into_iter()
        .map(|kv| (kv.key, any_value(kv.value)))
        .collect()
}

/// An OTLP JSON `AnyValue` as plain JSON. OTLP JSON writes 64-bit integers
/// as strings (`{"intValue": "200"}`); they become numbers here.
fn any_value(value: Value) -> Value {
    let Value::Object(mut fields) = value else {
        return Value::Null;
    };
    if let Some(v) = fields.remove("stringValue") {
        return v;
    }
    if let Some(v) = fields.remove("boolValue") {
        return v;
    }
    if let Some(v) = fields.remove("intValue") {
        return match &v {
            Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or(v),
            _ => v,
        };
    }
    if let Some(v) = fields.remove("doubleValue") {
        return v;
    }
    if let Some(v) = fields.remove("bytesValue") {
        return v;
    }
    if let Some(Value::Object(mut array)) = fields.remove("arrayValue") {
        return match array.remove("values") {
            Some(Value::Array(values)) => values.into_iter().map(any_value).collect(),
            _ => Value::Array(Vec::new()),
        };
    }
    if let Some(Value::Object(mut list)) = fields.remove("kvlistValue") {
        let entries = match list.remove("values") {
            Some(values) => serde_json::from_value::<Vec<KeyValue>>(values).unwrap_or_default(),
            None => Vec::new(),
        };
        return Value::Object(attributes(entries).into_iter().collect());
    }
    Value::Null
}

/// A `fixed64` time: OTLP JSON writes it as a string of digits.
fn nanos(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        other => other.as_u64().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A line the real collector (tests/tools/otelcol) wrote for an OTLP/HTTP
    /// JSON request holding a server span and its client child.
    const RECORDED: &str = include_str!("../fixtures/otelcol/spans.jsonl");

    #[test]
    fn a_recorded_export_flattens_into_its_spans() {
        let spans = parse_export(RECORDED, "fixture").unwrap();
        assert_eq!(spans.len(), 2, "{spans:?}");
        let (parent, child) = (&spans[0], &spans[1]);
        assert_eq!(parent.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(parent.span_id, "eee19b7ec3c1b174");
        assert_eq!(parent.parent_span_id, None);
        assert_eq!(parent.name, "POST /api/chat");
        assert_eq!(parent.kind, SpanKind::Server);
        assert_eq!(parent.service_name, "attach-gateway");
        assert_eq!(parent.scope_name, "attach");
        assert_eq!(parent.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(parent.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(parent.str_attribute("http.request.method"), Some("POST"));
        assert_eq!(parent.int_attribute("http.response.status_code"), Some(200));

        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.parent_span_id.as_deref(), Some("eee19b7ec3c1b174"));
        assert_eq!(child.kind, SpanKind::Client);
        assert_eq!(child.service_name, "attach-gateway");
        assert_eq!(
            child.attributes,
            BTreeMap::from([
                ("gen_ai.usage.input_tokens".to_owned(), json!(11)),
                ("ratio".to_owned(), json!(0.5)),
                ("streamed".to_owned(), json!(true)),
            ])
        );
    }

    #[test]
    fn a_line_still_being_written_is_left_for_later() {
        let line = RECORDED.trim_end();
        let partial = format!("{line}\n{}", &line[..line.len() / 2]);
        assert_eq!(parse_export(&partial, "f").unwrap().len(), 2);
        assert!(parse_export(&line[..10], "f").unwrap().is_empty());
        assert!(parse_export("", "f").unwrap().is_empty());
        let twice = format!("{line}\n\n{line}\n");
        assert_eq!(parse_export(&twice, "f").unwrap().len(), 4);
    }

    #[test]
    fn a_broken_line_is_an_error_naming_it() {
        let text = format!("{}not json\n", RECORDED);
        let err = parse_export(&text, "spans.jsonl").unwrap_err().to_string();
        assert!(err.contains("spans.jsonl line 2"), "{err}");
    }

    #[test]
    fn any_values_become_plain_json() {
        let cases = [
            (json!({"stringValue": "a"}), json!("a")),
            (
                json!({"intValue": "-9007199254740993"}),
                json!(-9_007_199_254_740_993_i64),
            ),
            (json!({"intValue": 7}), json!(7)),
            (json!({"doubleValue": 1.5}), json!(1.5)),
            (json!({"boolValue": false}), json!(false)),
            (json!({"bytesValue": "AAE="}), json!("AAE=")),
            (
                json!({"arrayValue": {"values": [{"stringValue": "x"}, {"intValue": "2"}]}}),
                json!(["x", 2]),
            ),
            (
                json!({"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": true}}]}}),
                json!({"k": true}),
            ),
            (json!({"arrayValue": {}}), json!([])),
            (json!({}), Value::Null),
        ];
        for (otlp, plain) in cases {
            assert_eq!(any_value(otlp.clone()), plain, "{otlp}");
        }
    }

    #[test]
    fn span_kinds_follow_otlp_numbers() {
        let kinds: Vec<SpanKind> = (0..=6).map(SpanKind::from).collect();
        assert_eq!(
            kinds,
            [
                SpanKind::Unspecified,
                SpanKind::Internal,
                SpanKind::Server,
                SpanKind::Client,
                SpanKind::Producer,
                SpanKind::Consumer,
                SpanKind::Other(6),
            ]
        );
    }

    #[test]
    fn the_config_quotes_the_spans_path() {
        let yaml = config_yaml(4317, 4318, Path::new("/tmp/a b/spans.jsonl"));
        assert!(yaml.contains("endpoint: 127.0.0.1:4317"), "{yaml}");
        assert!(yaml.contains("endpoint: 127.0.0.1:4318"), "{yaml}");
        assert!(yaml.contains(r#"path: "/tmp/a b/spans.jsonl""#), "{yaml}");
    }
}
