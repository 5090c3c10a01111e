//! The authorize step for an MCP server (`engine: mcp`), see [`crate::mcp`]:
//! the request's JSON-RPC messages judged on their canonical form, the
//! canonical body forwarded, list answers trimmed.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response};

use super::authorize::set_path;
use super::authorize::{
    Authorized, BodyReadWhole, MAX_MODEL_LIST_BYTES, collect_limited, read_whole,
};
use super::call_boxed;
use super::protected_resource::metadata_url;
use crate::audit::AuditTrail;
use crate::body::{Body, full};
use crate::canonical::JudgedModel;
use crate::claims::Identity;
use crate::error::GatewayError;
use crate::jwt::AuthError;
use crate::mcp::judge::{self, Denial};
use crate::mcp::lists::{self, Lists};
use crate::mcp::message::{self, Ask, Judged, MessageError};
use crate::mcp::{self as mcp_config, METHOD_HEADER, NAME_HEADER};
use crate::policy::endpoint::{BodyShape, Endpoint, ModelSource};
use crate::policy::{EndpointClass, normalize_path};
use crate::runtime::Runtime;

/// Judges and forwards one request to the MCP server behind `inner`.
pub(super) async fn authorize<S>(
    inner: &mut S,
    runtime: Arc<Runtime>,
    identity: Arc<Identity>,
    request: Request<Body>,
) -> Result<Response<Body>, GatewayError>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    // Named in an `insufficient_scope` challenge.
    let resource_metadata = metadata_url(&runtime, &request);
    let (mut parts, body) = request.into_parts();
    let path = normalize_path(parts.uri.path()).map_err(GatewayError::BadPath)?;
    let trail = parts.extensions.get::<Arc<AuditTrail>>().cloned();
    let on_endpoint = path == runtime.config.mcp.path;
    let metrics = &runtime.metrics;

    // Everything but a POST of messages: the server's stream (GET), the end
    // of a session (DELETE), and paths the server has for itself.
    if !(on_endpoint && parts.method == Method::POST) {
        let class = if on_endpoint && matches!(parts.method, Method::GET | Method::DELETE) {
            EndpointClass::Read
        } else {
            EndpointClass::Unknown
        };
        let label = if class == EndpointClass::Read {
            parts.method.as_str().to_owned()
        } else {
            "(unknown)".to_owned()
        };
        if let Some(trail) = &trail {
            trail.endpoint(class.as_str(), None);
            trail.mcp(&label, None);
        }
        let decided = runtime.policy.decide(&identity, class, None);
        metrics.mcp_message(&label, "", decided.is_ok());
        let rule = decided.map_err(GatewayError::Forbidden)?.to_owned();
        if let Some(trail) = &trail {
            trail.authorized(class.as_str(), None, &rule);
        }
        set_path(&mut parts, &path)?;
        parts.extensions.insert(authorized(class, None, rule, path));
        return call_boxed(inner, Request::from_parts(parts, body)).await;
    }

    let mut permit = runtime.body_budget.permit();
    let bytes = read_whole(&runtime, &parts.headers, body, &mut permit).await?;
    let judged = message::read(&bytes, &runtime.config.mcp.session_methods)
        .map_err(GatewayError::BadMessage)?;
    check_headers(&parts.headers, &judged).map_err(GatewayError::BadMessage)?;

    let methods = judged
        .messages
        .iter()
        .map(|m| m.method.as_deref().unwrap_or("(answer)"))
        .collect::<Vec<_>>()
        .join(",");
    let call = judged.messages.iter().find_map(|m| match &m.ask {
        Ask::Call(target) => Some(target.clone()),
        _ => None,
    });
    let class = if call.is_some() {
        EndpointClass::Inference
    } else if judged.messages.iter().any(|m| m.ask == Ask::Unknown) {
        EndpointClass::Unknown
    } else {
        EndpointClass::Read
    };
    let model = call.map(|name| JudgedModel {
        served: runtime.served_models.contains(&name),
        name,
    });
    let target = model.as_ref().map(|m| m.name.as_str());
    if let Some(trail) = &trail {
        trail.endpoint(class.as_str(), target);
        trail.mcp(&methods, arguments(&runtime, &judged).as_deref());
    }

    let verdict = judge::judge(&runtime.policy, &identity, &judged.messages);
    for m in &judged.messages {
        let label = match &m.ask {
            Ask::Unknown => "(unknown)",
            _ => m.method.as_deref().unwrap_or("(answer)"),
        };
        let target = match &m.ask {
            Ask::Call(name) if runtime.served_models.contains(name) => name.as_str(),
            Ask::Call(_) => crate::canonical::UNLISTED_MODEL,
            _ => "",
        };
        metrics.mcp_message(label, target, verdict.is_ok());
    }
    let rule = verdict.map_err(|denial| {
        // The line names what was refused, in a batch too.
        if let (Some(trail), Some(refused)) = (&trail, &denial.target) {
            trail.endpoint(EndpointClass::Inference.as_str(), Some(refused));
        }
        refusal(denial, resource_metadata)
    })?;
    if let Some(trail) = &trail {
        trail.authorized(class.as_str(), target, &rule);
    }

    let lists = lists_of(&judged);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(judged.bytes.len()));
    parts.headers.remove(TRANSFER_ENCODING);
    set_path(&mut parts, &path)?;
    parts
        .extensions
        .insert(authorized(class, model, rule, path));
    parts.extensions.insert(BodyReadWhole);
    let response = call_boxed(inner, Request::from_parts(parts, full(judged.bytes))).await?;
    drop(permit);
    let Some(lists) = lists else {
        return Ok(response);
    };
    if !response.status().is_success() {
        return Ok(response);
    }
    trim(&runtime, &identity, lists, response).await
}

/// The `Authorized` extension of an MCP request.
fn authorized(
    class: EndpointClass,
    model: Option<JudgedModel>,
    rule: String,
    path: String,
) -> Authorized {
    Authorized {
        class,
        endpoint: Endpoint {
            class,
            model: ModelSource::None,
            shape: BodyShape::Other,
            path: path.clone(),
        },
        model,
        rule,
        body: None,
        path,
    }
}

/// `insufficient_scope` (naming the scopes that would allow it) when asking
/// for a scope can help; else 403 naming the kind of check that failed.
fn refusal(denial: Denial, resource_metadata: Option<String>) -> GatewayError {
    if denial.scopes.is_empty() {
        return GatewayError::Forbidden(denial.kind);
    }
    GatewayError::Auth {
        error: AuthError::InsufficientScope {
            required: denial.scopes,
        },
        resource_metadata,
        scope: None,
    }
}

/// The `Mcp-Method` and `Mcp-Name` headers, when sent, must say what the
/// (single) message says; a batch has no one method to name.
fn check_headers(headers: &HeaderMap, judged: &Judged) -> Result<(), MessageError> {
    let method = headers.get(METHOD_HEADER);
    let name = headers.get(NAME_HEADER);
    if method.is_none() && name.is_none() {
        return Ok(());
    }
    let [only] = judged.messages.as_slice() else {
        return Err(MessageError::HeaderMismatch("Mcp-Method"));
    };
    if let Some(method) = method
        && method.to_str().ok() != only.method.as_deref()
    {
        return Err(MessageError::HeaderMismatch("Mcp-Method"));
    }
    if let Some(name) = name {
        let named = match &only.ask {
            Ask::Call(target) => target
                .as_str()
                .split_once(':')
                .map(|(_, rest)| rest.to_owned()),
            _ => None,
        };
        let sent = name.to_str().ok().and_then(mcp_config::decode_header_value);
        if named.is_none() || sent != named {
            return Err(MessageError::HeaderMismatch("Mcp-Name"));
        }
    }
    Ok(())
}

/// The arguments of the request's tool call, for the audit line, when the
/// config asks for them.
fn arguments(runtime: &Runtime, judged: &Judged) -> Option<String> {
    if !runtime.config.mcp.audit_arguments {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&judged.bytes).ok()?;
    let first = match &value {
        serde_json::Value::Array(items) => items
            .iter()
            .find(|m| m.get("method").and_then(|v| v.as_str()) == Some("tools/call"))?,
        v => v,
    };
    first
        .get("params")?
        .get("arguments")
        .map(serde_json::Value::to_string)
}

/// Which answers are lists to trim, if any.
fn lists_of(judged: &Judged) -> Option<Lists> {
    let kinds: Vec<(Option<serde_json::Value>, message::ListKind)> = judged
        .messages
        .iter()
        .filter_map(|m| match m.ask {
            Ask::List(kind) => Some((m.id.clone(), kind)),
            _ => None,
        })
        .collect();
    if kinds.is_empty() {
        return None;
    }
    if !judged.batch {
        return kinds.first().map(|(_, kind)| Lists::Single(*kind));
    }
    Some(Lists::ById(
        kinds
            .into_iter()
            .filter_map(|(id, kind)| Some((id?, kind)))
            .collect(),
    ))
}

/// Reads a list answer whole (bounded) and trims it to what the caller may
/// use; an answer that cannot be read is not passed on.
async fn trim(
    runtime: &Runtime,
    identity: &Identity,
    lists: Lists,
    response: Response<Body>,
) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = response.into_parts();
    let sse = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
    let mut permit = runtime.body_budget.permit();
    let bytes: Bytes = collect_limited(body, MAX_MODEL_LIST_BYTES as u64, &mut permit, u64::MAX)
        .await
        .map_err(|_| GatewayError::UpstreamUnavailable)?;
    let keep = |target: &str| runtime.policy.may_use(identity, target);
    let trimmed = if bytes.is_empty() {
        Ok((Vec::new(), Vec::new()))
    } else if sse {
        lists::trim_sse(&bytes, &lists, &keep)
    } else {
        lists::trim_json(&bytes, &lists, &keep)
    };
    let (out, seen) = trimmed.map_err(|_| GatewayError::UpstreamUnavailable)?;
    runtime.served_models.observe_targets(&seen);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    parts.headers.remove(TRANSFER_ENCODING);
    Ok(Response::from_parts(parts, full(out)))
}
