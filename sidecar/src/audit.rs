//! The audit log: one JSON line per request decision, to stdout or a file.
//!
//! Fields: `time`, `request_id`, `issuer` (whose names `user`, `agent`,
//! `tenant` and `client` are), `user` (the subject), `agent` (who acted
//! for it: the `act` chain, current actor first, or the machine client
//! acting alone; absent for a human acting directly), `tenant`, `client`, `model`,
//! `pod` and `node` (a ServiceAccount token bound to a pod),
//! `endpoint`, `decision` (`allow`/`deny`), `reason`, `rule`, `status`,
//! `prompt_tokens`, `completion_tokens`, `tokens_estimated`, `latency_ms`.
//! It never holds a token, an `Authorization` header or a body, and no
//! value longer than [`MAX_VALUE_CHARS`] characters (longer ones are cut and
//! end with `…`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::claims::Identity;
use crate::quota::usage::Usage;
use crate::traces::RequestSpan;
use crate::traces::request_span::ModelCall;

/// The longest text value an audit line holds, in characters.
pub const MAX_VALUE_CHARS: usize = 256;

/// `value`, cut to [`MAX_VALUE_CHARS`] characters.
fn bounded(value: &str) -> String {
    match value.char_indices().nth(MAX_VALUE_CHARS) {
        None => value.to_owned(),
        Some((end, _)) => format!("{}…", &value[..end]),
    }
}

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditConfig {
    /// Write audit lines at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A file to append to; stdout when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
        }
    }
}

/// Audit lines waiting for the writer; past this, lines are dropped (and
/// counted) rather than making a request wait.
pub const QUEUE_LINES: usize = 8192;

/// Writes audit lines without ever blocking the request path: lines go
/// through a bounded queue to one writer thread; when the queue is full
/// (stdout or the disk is slower than the traffic) a line is dropped and
/// `attach_audit_lines_dropped_total` counts it.
#[derive(Clone)]
pub struct AuditSink {
    out: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    dropped: Option<prometheus_client::metrics::counter::Counter>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("enabled", &self.out.is_some())
            .finish()
    }
}

impl AuditSink {
    /// A sink that writes nothing.
    pub fn disabled() -> Self {
        Self {
            out: None,
            dropped: None,
        }
    }

    /// Whether lines are written at all.
    pub fn is_enabled(&self) -> bool {
        self.out.is_some()
    }

    /// Opens the sink `config` describes.
    pub fn open(config: &AuditConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        if !config.enabled {
            return Ok(Self::disabled());
        }
        let out: Box<dyn Write + Send> = match &config.path {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        Self::with_writer(out, QUEUE_LINES, metrics)
    }

    /// A sink writing to `out` on its own thread, queueing at most
    /// `queue` lines.
    pub fn with_writer(
        out: Box<dyn Write + Send>,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(queue);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_lines(out, &rx))?;
        Ok(Self {
            out: Some(tx),
            dropped: Some(metrics.audit_dropped.clone()),
        })
    }

    /// Queues one record as a line; never waits.
    pub fn write(&self, record: &AuditRecord) {
        let Some(out) = &self.out else { return };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        if out.try_send(line).is_err()
            && let Some(dropped) = &self.dropped
        {
            dropped.inc();
        }
    }
}

/// The writer thread: writes lines as they come, flushing whenever the
/// queue runs dry; ends when every sink handle is gone.
fn write_lines(out: Box<dyn Write + Send>, rx: &std::sync::mpsc::Receiver<Vec<u8>>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut failing = false;
    while let Ok(line) = rx.recv() {
        let mut result = out.write_all(&line);
        while let Ok(line) = rx.try_recv() {
            result = result.and_then(|()| out.write_all(&line));
        }
        result = result.and_then(|()| out.flush());
        match (result, failing) {
            (Err(e), false) => {
                failing = true;
                tracing::warn!(error = %e, "cannot write the audit log");
            }
            (Ok(()), true) => failing = false,
            _ => {}
        }
    }
    let _ = out.flush();
}

/// One decision.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditRecord {
    pub time: String,
    pub request_id: String,
    pub issuer: Option<String>,
    pub user: Option<String>,
    pub agent: Option<Vec<String>>,
    pub tenant: Option<String>,
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The personal API key the caller used, or minted or revoked: its
    /// public id, never the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    pub model: Option<String>,
    pub endpoint: Option<&'static str>,
    /// MCP: the JSON-RPC method(s), comma-separated for a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_method: Option<String>,
    /// MCP: a `tools/call`'s arguments, only with `mcp.auditArguments`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    pub decision: &'static str,
    pub reason: &'static str,
    pub rule: Option<String>,
    pub status: u16,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub tokens_estimated: Option<bool>,
    pub latency_ms: f64,
}

/// What the request path learns about a request, filled in layer by layer
/// and written once, when the decision (and, for answers, the usage) is known.
#[derive(Debug)]
pub struct AuditTrail {
    started: Instant,
    record: Mutex<AuditRecord>,
    sink: AuditSink,
    /// Set when the answer is metered: the meter writes the line at its end.
    deferred: std::sync::atomic::AtomicBool,
    /// Set once the line is written (or the request is not audited).
    written: std::sync::atomic::AtomicBool,
    /// The request's spans, when traces are on: they end with the line and
    /// say what it says.
    span: Option<RequestSpan>,
}

impl Drop for AuditTrail {
    /// A request dropped before its line was written (the client left
    /// before the answer, or the drain cut it) still gets one: status 499.
    fn drop(&mut self) {
        if !self.written.load(std::sync::atomic::Ordering::SeqCst) {
            self.finish(499, "client_closed", None);
        }
    }
}

impl AuditTrail {
    pub fn new(request_id: String, sink: AuditSink) -> Self {
        Self {
            started: Instant::now(),
            record: Mutex::new(AuditRecord {
                request_id,
                ..AuditRecord::default()
            }),
            sink,
            deferred: std::sync::atomic::AtomicBool::new(false),
            written: std::sync::atomic::AtomicBool::new(false),
            span: None,
        }
    }

    /// Traces the request too.
    #[must_use]
    pub fn with_span(mut self, span: Option<RequestSpan>) -> Self {
        self.span = span;
        self
    }

    /// Marks a phase on the request's span (a no-op without traces).
    pub fn event(&self, name: &'static str) {
        if let Some(span) = &self.span {
            span.event(name);
        }
    }

    /// The request leaves for the model: starts its client span and puts
    /// the trace context in `headers` (a no-op without traces).
    pub fn leave_for(&self, upstream: &ModelCall, headers: &mut http::HeaderMap) {
        if let Some(span) = &self.span {
            let endpoint = self.with(|r| r.endpoint).unwrap_or("request");
            span.leave_for(upstream, endpoint, headers);
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut AuditRecord) -> T) -> T {
        let mut record = self
            .record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut record)
    }

    pub fn identity(&self, identity: &Identity) {
        self.with(|r| {
            r.issuer = Some(bounded(&identity.iss));
            r.user = Some(bounded(&identity.user));
            let agents = identity.agents();
            r.agent = (!agents.is_empty()).then(|| agents.into_iter().map(bounded).collect());
            r.tenant = identity.tenant.as_deref().map(bounded);
            r.client = identity.client.as_deref().map(bounded);
            r.pod = identity.pod.as_deref().map(bounded);
            r.node = identity.node.as_deref().map(bounded);
        });
        self.event("authenticated");
    }

    /// The personal API key this request came with, minted or revoked.
    pub fn api_key(&self, id: &str) {
        self.with(|r| r.api_key_id = Some(bounded(id)));
    }

    pub fn authorized(&self, endpoint: &'static str, model: Option<&str>, rule: &str) {
        self.with(|r| {
            r.endpoint = Some(endpoint);
            r.model = model.map(bounded);
            r.rule = Some(bounded(rule));
        });
        self.event("authorized");
    }

    pub fn endpoint(&self, endpoint: &'static str, model: Option<&str>) {
        self.with(|r| {
            r.endpoint = Some(endpoint);
            r.model = model.map(bounded);
        });
    }

    /// The MCP method(s) of the request, and (only when the config says so)
    /// the arguments of its tool call.
    pub fn mcp(&self, methods: &str, arguments: Option<&str>) {
        self.with(|r| {
            r.mcp_method = Some(bounded(methods));
            r.arguments = arguments.map(bounded);
        });
    }

    /// The answer is metered; its end writes the line.
    pub fn defer(&self) {
        self.deferred
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.event("answered");
    }

    /// The request is not audited (a probe): no line, even when dropped.
    pub fn skip(&self) {
        self.written
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(span) = &self.span {
            span.discard();
        }
    }

    pub fn is_deferred(&self) -> bool {
        self.deferred.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Writes the line for a response whose status and reason are known.
    pub fn finish(&self, status: u16, reason: &'static str, usage: Option<Usage>) {
        if self.written.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return; // one line per request
        }
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let mut record = self
            .record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        record.time = now_rfc3339();
        record.status = status;
        record.reason = reason;
        let allowed_then_left = reason == "client_closed" && record.rule.is_some();
        record.decision =
            if (200..400).contains(&status) || reason == "forwarded" || allowed_then_left {
                "allow"
            } else {
                "deny"
            };
        if let Some(usage) = usage {
            record.prompt_tokens = Some(usage.prompt);
            record.completion_tokens = Some(usage.completion);
            record.tokens_estimated = Some(usage.estimated);
        }
        record.latency_ms = (latency_ms * 1000.0).round() / 1000.0;
        self.sink.write(&record);
        if let Some(span) = &self.span {
            span.finish(&record);
        }
    }

    /// Remembers the status the answer started with (for deferred lines).
    pub fn status(&self, status: u16) {
        self.with(|r| r.status = status);
    }

    pub fn recorded_status(&self) -> u16 {
        self.record.lock().map_or(0, |r| r.status)
    }
}

/// Millisecond-precision UTC timestamp, RFC 3339.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(MAX_VALUE_CHARS + 10);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), MAX_VALUE_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(bounded(&"x".repeat(MAX_VALUE_CHARS)).len(), MAX_VALUE_CHARS);
    }

    /// A writer that blocks forever, as stdout does when nobody reads it.
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::Error::other("never"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_never_blocks_the_caller_and_drops_are_counted() {
        let (_hold, rx) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let sink = AuditSink::with_writer(Box::new(Stuck(rx)), 4, metrics.clone()).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            sink.write(&AuditRecord::default());
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "writing never waited on the stuck writer"
        );
        // Only what the queue and the writer's buffer took got through.
        assert!(
            metrics.audit_dropped.get() >= 900,
            "{}",
            metrics.audit_dropped.get()
        );
    }

    #[test]
    fn lines_reach_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let config = AuditConfig {
            enabled: true,
            path: Some(path.clone()),
        };
        let sink = AuditSink::open(&config, Arc::new(Metrics::new())).unwrap();
        for i in 0..100 {
            sink.write(&AuditRecord {
                status: i,
                ..AuditRecord::default()
            });
        }
        drop(sink);
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 100 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let statuses: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["status"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(statuses, (0..100).collect::<Vec<_>>());
    }
}
