//! The decision on one MCP request: every message of it judged by the
//! access rules, the batch allowed only when each of its messages is.
//!
//! - Session traffic, lists and the client's answers need a rule that
//!   grants the caller `read`; lists are then trimmed in the answer.
//! - A call (`tools/call`, `resources/read`, `prompts/get`, ...) needs a
//!   rule that grants the caller `inference` on its target (`tool:<name>`,
//!   `resource:<uri>`, `prompt:<name>`).
//! - A method the gateway does not know is denied (`unknown_endpoint`),
//!   unless `access.allowUnknownEndpoints` is set.
//!
//! A call refused where a rule naming scopes would allow it is refused as
//! `insufficient_scope`, naming those scopes, so that the client can ask
//! for them (step-up authorization).

use super::message::{Ask, Message};
use crate::claims::Identity;
use crate::policy::{DenyKind, EndpointClass, Policy};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub kind: DenyKind,
    /// The scopes that would allow the refused call, which the caller lacks
    /// (empty: no scope would help).
    pub scopes: Vec<String>,
    /// The method refused.
    pub method: Option<String>,
    /// The target refused (`tool:<name>`, ...), when the message had one.
    pub target: Option<String>,
}

/// The checks a message needs: endpoint classes, each with its target.
pub fn checks_of(ask: &Ask) -> Vec<(EndpointClass, Option<&str>)> {
    match ask {
        Ask::Session | Ask::List(_) | Ask::Answer => vec![(EndpointClass::Read, None)],
        Ask::Call(target) => vec![(EndpointClass::Inference, Some(target.as_str()))],
        // The stream, and each resource whose updates it carries.
        Ask::Listen(targets) => std::iter::once((EndpointClass::Read, None))
            .chain(
                targets
                    .iter()
                    .map(|t| (EndpointClass::Inference, Some(t.as_str()))),
            )
            .collect(),
        Ask::Unknown => vec![(EndpointClass::Unknown, None)],
    }
}

/// Judges every message; returns the rule that allowed the first call (or
/// the first message), or the first refusal.
pub fn judge(policy: &Policy, identity: &Identity, messages: &[Message]) -> Result<String, Denial> {
    let mut allowed: Option<(bool, String)> = None;
    for message in messages {
        for (class, target) in checks_of(&message.ask) {
            match policy.decide(identity, class, target) {
                Ok(rule) => {
                    let call = target.is_some();
                    if allowed
                        .as_ref()
                        .is_none_or(|(was_call, _)| call && !was_call)
                    {
                        allowed = Some((call, rule.to_owned()));
                    }
                }
                Err(kind) => {
                    let scopes = match target {
                        Some(target) => policy
                            .scopes_granting(identity, class, target)
                            .into_iter()
                            .filter(|s| !identity.scopes.contains(s))
                            .collect(),
                        None => Vec::new(),
                    };
                    return Err(Denial {
                        kind,
                        scopes,
                        method: message.method.clone(),
                        target: target.map(str::to_owned),
                    });
                }
            }
        }
    }
    allowed.map(|(_, rule)| rule).ok_or(Denial {
        kind: DenyKind::Endpoint,
        scopes: Vec::new(),
        method: None,
        target: None,
    })
}
