//! The audit log: one JSON line per request decision, to stdout or a file.
//!
//! Fields: `time`, `request_id`, `issuer` (whose names `user`, `agent`,
//! `tenant` and `client` are), `user` (the subject), `agent` (who acted
//! for it: the `act` chain, current actor first, or the machine client
//! acting alone; absent for a human acting directly), `tenant`, `client`, `model`,
//! `endpoint`, `decision` (`allow`/`deny`), `reason`, `rule`, `status`,
//! `prompt_tokens`, `completion_tokens`, `tokens_estimated`, `latency_ms`.
//! It never holds a token, an `Authorization` header or a body, and no
//! value longer than [`MAX_VALUE_CHARS`] characters (longer ones are cut and
//! end with `…`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::claims::Identity;
use crate::quota::usage::Usage;

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

/// Writes audit lines.
#[derive(Clone)]
pub struct AuditSink {
    out: Option<Arc<Mutex<Box<dyn Write + Send>>>>,
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
        Self { out: None }
    }

    /// Whether lines are written at all.
    pub fn is_enabled(&self) -> bool {
        self.out.is_some()
    }

    /// Opens the sink `config` describes.
    pub fn open(config: &AuditConfig) -> std::io::Result<Self> {
        if !config.enabled {
            return Ok(Self { out: None });
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
        Ok(Self {
            out: Some(Arc::new(Mutex::new(out))),
        })
    }

    /// Writes one record as a line.
    pub fn write(&self, record: &AuditRecord) {
        let Some(out) = &self.out else { return };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut out = out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if out.write_all(&line).and_then(|()| out.flush()).is_err() {
            tracing::warn!("cannot write the audit log");
        }
    }
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
    pub model: Option<String>,
    pub endpoint: Option<&'static str>,
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
        }
    }

    fn with(&self, f: impl FnOnce(&mut AuditRecord)) {
        let mut record = self
            .record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut record);
    }

    pub fn identity(&self, identity: &Identity) {
        self.with(|r| {
            r.issuer = Some(bounded(&identity.iss));
            r.user = Some(bounded(&identity.user));
            let agents = identity.agents();
            r.agent = (!agents.is_empty()).then(|| agents.into_iter().map(bounded).collect());
            r.tenant = identity.tenant.as_deref().map(bounded);
            r.client = identity.client.as_deref().map(bounded);
        });
    }

    pub fn authorized(&self, endpoint: &'static str, model: Option<&str>, rule: &str) {
        self.with(|r| {
            r.endpoint = Some(endpoint);
            r.model = model.map(bounded);
            r.rule = Some(bounded(rule));
        });
    }

    pub fn endpoint(&self, endpoint: &'static str, model: Option<&str>) {
        self.with(|r| {
            r.endpoint = Some(endpoint);
            r.model = model.map(bounded);
        });
    }

    /// The answer is metered; its end writes the line.
    pub fn defer(&self) {
        self.deferred
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_deferred(&self) -> bool {
        self.deferred.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Writes the line for a response whose status and reason are known.
    pub fn finish(&self, status: u16, reason: &'static str, usage: Option<Usage>) {
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let mut record = self
            .record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        record.time = now_rfc3339();
        record.status = status;
        record.reason = reason;
        record.decision = if (200..400).contains(&status) || reason == "forwarded" {
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
}
