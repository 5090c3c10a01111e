//! Where each IdP puts the caller's identity, and how it is read out of a
//! verified token.
//!
//! A claim path is dot-separated (`realm_access.roles`). A path that starts
//! with `http://` or `https://` is a single namespaced key, as Auth0 writes
//! custom claims (`https://example.com/roles`). Alternatives are separated by
//! `|` and tried in order (`azp|client_id`): the first one present is read,
//! and if its value has the wrong shape the field is left empty, never
//! filled from the next alternative.
//!
//! # The identity model
//!
//! - A subject is the pair (issuer, `sub`). Names (users, groups, roles,
//!   tenants, clients, agents) are unique only within their issuer, so every
//!   rule, quota budget, header and audit line carries the issuer beside them.
//! - The subject is a person or a machine (`machine`, per preset, from what
//!   each IdP documents).
//! - Who acts for the subject: the `act` chain (`actors`, read strictly), or,
//!   with `userClients`, the client that holds a person's token when it is
//!   not one of the clients people sign in with (token exchange,
//!   on-behalf-of).
//! - Claims are read by type (`typed`); a claim of an undocumented shape is
//!   ignored and counted, never turned into names.

mod actors;
mod machine;
mod typed;
mod workload;

pub use actors::MAX_ACTORS;
pub use workload::Workload;

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A default claim mapping for a well-known IdP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Auth0,
    Okta,
    Descope,
    Keycloak,
    Entra,
    /// The cluster's own ServiceAccount tokens: a workload, always a
    /// machine, named as the API server names it (see [`Workload`]).
    Kubernetes,
    #[default]
    Generic,
}

impl Preset {
    /// Every preset's name, for messages.
    pub const NAMES: &'static str = "auth0, okta, descope, keycloak, entra, kubernetes, generic";
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auth0" => Ok(Self::Auth0),
            "okta" => Ok(Self::Okta),
            "descope" => Ok(Self::Descope),
            "keycloak" => Ok(Self::Keycloak),
            "entra" | "azure" | "azuread" => Ok(Self::Entra),
            "kubernetes" | "k8s" => Ok(Self::Kubernetes),
            "generic" | "oidc" => Ok(Self::Generic),
            other => Err(format!(
                "unknown identity provider preset {other:?} (expected one of {})",
                Self::NAMES
            )),
        }
    }
}

/// Where the identity is in a token: a preset, and any field overridden by a
/// claim path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimMapping {
    /// The IdP whose conventions give the defaults.
    #[serde(default)]
    pub preset: Preset,
    /// The user (subject) claim. Default `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The groups claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<String>,
    /// The roles claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<String>,
    /// The scopes claim (a space-separated string or a list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
    /// The tenant claim. An object claim (Descope's `tenants`) with a single
    /// key yields that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The calling client's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Auth0's custom-claim namespace, a URL (for example
    /// `https://example.com`); with it the auth0 preset reads
    /// `<namespace>/roles`, `/groups` and `/tenant`, and never the plain
    /// `roles`, `groups` or `org_id` in their place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl ClaimMapping {
    /// The preset's mapping with nothing overridden.
    pub fn preset(preset: Preset) -> Self {
        Self {
            preset,
            ..Self::default()
        }
    }

    /// Checks every configured path.
    pub fn validate(&self) -> Result<(), String> {
        self.resolve().map(|_| ())
    }

    /// The final paths: each override, else the preset's default.
    pub fn resolve(&self) -> Result<ResolvedMapping, String> {
        self.check_namespace()?;
        self.check_kubernetes()?;
        let d = self.defaults();
        let pick = |name: &str, over: &Option<String>, default: String| {
            ClaimPath::parse(over.as_deref().unwrap_or(&default))
                .map_err(|e| format!("{name}: {e}"))
        };
        Ok(ResolvedMapping {
            preset: self.preset,
            user_clients: Vec::new(),
            user: pick("user", &self.user, d.user)?,
            groups: pick("groups", &self.groups, d.groups)?,
            roles: pick("roles", &self.roles, d.roles)?,
            scopes: pick("scopes", &self.scopes, d.scopes)?,
            tenant: pick("tenant", &self.tenant, d.tenant)?,
            client: pick("client", &self.client, d.client)?,
        })
    }

    /// An Auth0 namespace is a URL: written without a scheme it would be
    /// split on its dots and read claims nobody meant.
    fn check_namespace(&self) -> Result<(), String> {
        let Some(namespace) = &self.namespace else {
            return Ok(());
        };
        if self.preset != Preset::Auth0 {
            return Err("namespace: only the auth0 preset reads a namespace".into());
        }
        let uri: http::Uri = namespace
            .parse()
            .map_err(|_| format!("namespace: {namespace:?} is not a URL"))?;
        match (uri.scheme_str(), uri.host()) {
            (Some("https" | "http"), Some(host)) if !host.is_empty() => Ok(()),
            _ => Err(format!(
                "namespace: {namespace:?} must be an https:// URL (Auth0 namespaces custom claims by URL)"
            )),
        }
    }

    /// A ServiceAccount token's identity is the API server's: overriding
    /// where it is read would be silently ignored, so it is refused.
    fn check_kubernetes(&self) -> Result<(), String> {
        if self.preset != Preset::Kubernetes {
            return Ok(());
        }
        let overridden = [
            ("user", &self.user),
            ("groups", &self.groups),
            ("roles", &self.roles),
            ("scopes", &self.scopes),
            ("tenant", &self.tenant),
            ("client", &self.client),
        ]
        .into_iter()
        .find_map(|(name, path)| path.as_ref().map(|_| name));
        match overridden {
            Some(name) => Err(format!(
                "{name}: the kubernetes preset reads the ServiceAccount the API server names; its claim paths cannot be overridden"
            )),
            None => Ok(()),
        }
    }

    fn defaults(&self) -> Defaults {
        let s = |v: &str| v.to_owned();
        match self.preset {
            Preset::Generic => Defaults {
                user: s("sub"),
                groups: s("groups"),
                roles: s("roles"),
                scopes: s("scope|scp"),
                tenant: s("tenant|tid"),
                client: s("azp|client_id"),
            },
            Preset::Keycloak => Defaults {
                user: s("sub"),
                groups: s("groups"),
                roles: s("realm_access.roles"),
                scopes: s("scope"),
                tenant: s("tenant"),
                client: s("azp|client_id"),
            },
            Preset::Okta => Defaults {
                user: s("sub"),
                groups: s("groups"),
                roles: s("roles"),
                scopes: s("scp|scope"),
                tenant: s("tenant"),
                client: s("cid|azp|client_id"),
            },
            Preset::Auth0 => {
                // Custom claims only under the namespace: a plain `roles`
                // can be set by any Action, so it is never a fallback.
                let ns = self
                    .namespace
                    .as_deref()
                    .map(|n| n.trim_end_matches('/').to_owned());
                let custom = |name: &str, plain: &str| match &ns {
                    Some(ns) => format!("{ns}/{name}"),
                    None => plain.to_owned(),
                };
                Defaults {
                    user: s("sub"),
                    groups: custom("groups", "groups"),
                    roles: custom("roles", "roles"),
                    scopes: s("scope|permissions"),
                    tenant: custom("tenant", "org_id"),
                    client: s("azp|client_id"),
                }
            }
            Preset::Descope => Defaults {
                user: s("sub"),
                groups: s("groups"),
                roles: s("roles"),
                scopes: s("scope|permissions"),
                tenant: s("dct|tenants"),
                client: s("azp|client_id"),
            },
            Preset::Entra => Defaults {
                user: s("sub"),
                groups: s("groups"),
                roles: s("roles"),
                scopes: s("scp"),
                tenant: s("tid"),
                client: s("azp|appid"),
            },
            // Read from the `kubernetes.io` claim instead (see `workload`);
            // these paths are never looked up.
            Preset::Kubernetes => Defaults {
                user: s("sub"),
                groups: s("groups"),
                roles: s("roles"),
                scopes: s("scope"),
                tenant: s("tenant"),
                client: s("azp"),
            },
        }
    }
}

struct Defaults {
    user: String,
    groups: String,
    roles: String,
    scopes: String,
    tenant: String,
    client: String,
}

/// A parsed claim path: alternatives, each a list of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(Vec<Vec<String>>);

impl ClaimPath {
    /// Parses `a.b|c|https://ns.example/roles`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut alternatives = Vec::new();
        for alt in text.split('|').map(str::trim) {
            if alt.is_empty() {
                return Err(format!("empty claim path in {text:?}"));
            }
            let keys: Vec<String> = if alt.starts_with("https://") || alt.starts_with("http://") {
                vec![alt.to_owned()]
            } else {
                alt.split('.').map(str::to_owned).collect()
            };
            if keys.iter().any(String::is_empty) {
                return Err(format!("empty segment in claim path {alt:?}"));
            }
            alternatives.push(keys);
        }
        Ok(Self(alternatives))
    }

    /// The first alternative present in `claims`.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        self.0.iter().find_map(|keys| {
            let (first, rest) = keys.split_first()?;
            let mut value = claims.get(first)?;
            for key in rest {
                value = value.as_object()?.get(key)?;
            }
            (!value.is_null()).then_some(value)
        })
    }
}

/// A mapping with every path resolved, built once per issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedMapping {
    /// Whose token conventions apply (machine detection).
    pub preset: Preset,
    /// The clients people sign in through; empty when not configured. A
    /// person's token held by any other client was obtained for them by
    /// that client (token exchange, on-behalf-of): it acts for them.
    pub user_clients: Vec<String>,
    pub user: ClaimPath,
    pub groups: ClaimPath,
    pub roles: ClaimPath,
    pub scopes: ClaimPath,
    pub tenant: ClaimPath,
    pub client: ClaimPath,
}

/// Why verified claims give no identity. Each is a refused token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// The user claim is absent, empty or not a name.
    #[error("the token has no user claim")]
    NoUser,
    /// `act` is not an object with a string `sub`, at some depth.
    #[error("the token's act claim is malformed")]
    InvalidActor,
    /// The `act` chain is longer than [`MAX_ACTORS`].
    #[error("the token's actor chain is longer than {MAX_ACTORS}")]
    TooManyActors,
    /// A `kubernetes` issuer's token names no ServiceAccount, or its `sub`
    /// and `kubernetes.io` claims name different ones.
    #[error("the token names no ServiceAccount, or two different ones")]
    NoWorkload,
}

/// An identity, and the claims that were ignored for their shape (for the
/// `attach_claims_ignored_total` metric).
#[derive(Debug)]
pub struct Mapped {
    pub identity: Identity,
    pub ignored: Vec<&'static str>,
}

/// The verified caller, as the rest of the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The token's issuer: names below are unique only within it.
    pub iss: String,
    /// The token's `sub`.
    pub sub: String,
    /// The mapped user (by default `sub`).
    pub user: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Who acts for the subject, current actor first: the `act` chain
    /// (RFC 8693 §4.1), or the client that holds a person's token when it is
    /// not one of the issuer's `userClients`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub actors: Vec<String>,
    /// The subject is a machine client acting for itself (client
    /// credentials), as its IdP marks such tokens.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub machine: bool,
    /// The token's expiry (seconds since the epoch).
    pub exp: u64,
    /// The pod a ServiceAccount token is bound to (`kubernetes` preset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The node that pod runs on, where the API server records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Raw claims chosen by `identity.forwardClaims`.
    #[serde(skip_serializing_if = "Map::is_empty", default)]
    pub claims: Map<String, Value>,
    /// The identity headers, rendered once per verified token (the identity
    /// is shared through the token cache) rather than once per request.
    #[serde(skip)]
    pub(crate) rendered_headers: std::sync::OnceLock<crate::proxy::identity_headers::Rendered>,
}

impl ResolvedMapping {
    /// The same mapping, with the clients people sign in through.
    #[must_use]
    pub fn with_user_clients(mut self, clients: &[String]) -> Self {
        self.user_clients = clients.to_vec();
        self
    }

    /// Reads the identity out of verified claims. Fails if there is no user
    /// or the delegation is malformed; claims of the wrong shape are left
    /// out and listed in [`Mapped::ignored`].
    pub fn identity(
        &self,
        claims: &Map<String, Value>,
        exp: u64,
        forward: &[String],
    ) -> Result<Mapped, MappingError> {
        if self.preset == Preset::Kubernetes {
            return workload_identity(claims, exp, forward);
        }
        let mut ignored = Vec::new();
        let mut read = Reader {
            claims,
            ignored: &mut ignored,
        };
        let user = match typed::Read::from_option(self.user.lookup(claims), typed::text) {
            typed::Read::Value(user) if !user.is_empty() => user,
            _ => return Err(MappingError::NoUser),
        };
        let sub = string_claim(claims, "sub");
        let iss = string_claim(claims, "iss");
        let client = read.field("client", &self.client, typed::text);
        let groups = read
            .field("groups", &self.groups, typed::names)
            .unwrap_or_default();
        let roles = read
            .field("roles", &self.roles, typed::names)
            .unwrap_or_default();
        let scopes = read
            .field("scopes", &self.scopes, typed::scopes)
            .unwrap_or_default();
        let tenant = read.field("tenant", &self.tenant, typed::tenant);
        let mut actors = actors::chain(claims)?;
        let machine = machine::is_machine(self.preset, claims, &sub, client.as_deref());
        if actors.is_empty()
            && !machine
            && !self.user_clients.is_empty()
            && let Some(client) = &client
            && !self.user_clients.contains(client)
        {
            // A person's token in the hands of another client: that client
            // got it for them (token exchange) and acts for them.
            actors.push(client.clone());
        }
        Ok(Mapped {
            identity: Identity {
                iss,
                sub,
                user,
                groups,
                roles,
                scopes,
                tenant,
                client,
                actors,
                machine,
                exp,
                pod: None,
                node: None,
                claims: forwarded(claims, forward),
                rendered_headers: std::sync::OnceLock::new(),
            },
            ignored,
        })
    }
}

/// A ServiceAccount token's identity: the account as the API server names
/// it, its namespace's groups, the namespace as tenant; a machine (no person
/// stands behind a workload), acting as itself. Delegation (`act`) is not
/// something the API server mints, so a token carrying it is refused.
fn workload_identity(
    claims: &Map<String, Value>,
    exp: u64,
    forward: &[String],
) -> Result<Mapped, MappingError> {
    let workload = workload::read(claims).ok_or(MappingError::NoWorkload)?;
    if claims.contains_key("act") {
        return Err(MappingError::InvalidActor);
    }
    let user = workload.user();
    Ok(Mapped {
        identity: Identity {
            iss: string_claim(claims, "iss"),
            sub: user.clone(),
            user,
            groups: workload.groups(),
            roles: Vec::new(),
            scopes: Vec::new(),
            tenant: Some(workload.namespace),
            client: None,
            actors: Vec::new(),
            machine: true,
            exp,
            pod: workload.pod,
            node: workload.node,
            claims: forwarded(claims, forward),
            rendered_headers: std::sync::OnceLock::new(),
        },
        ignored: Vec::new(),
    })
}

/// A string claim as is, empty when absent or not a string (`sub`, `iss`:
/// the verifier has already required them).
fn string_claim(claims: &Map<String, Value>, name: &str) -> String {
    claims
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The raw claims `identity.forwardClaims` names, those present.
fn forwarded(claims: &Map<String, Value>, forward: &[String]) -> Map<String, Value> {
    forward
        .iter()
        .filter_map(|name| Some((name.clone(), claims.get(name)?.clone())))
        .collect()
}

/// Reads mapped fields by type, noting the ones ignored for their shape.
struct Reader<'a> {
    claims: &'a Map<String, Value>,
    ignored: &'a mut Vec<&'static str>,
}

impl Reader<'_> {
    fn field<T>(
        &mut self,
        name: &'static str,
        path: &ClaimPath,
        read: fn(&Value) -> Option<T>,
    ) -> Option<T> {
        match typed::Read::from_option(path.lookup(self.claims), read) {
            typed::Read::Value(value) => Some(value),
            typed::Read::Absent => None,
            typed::Read::Ignored => {
                self.ignored.push(name);
                None
            }
        }
    }
}

impl Identity {
    /// Who acts, when it is not the subject in person: the actor chain
    /// (current actor first), or the machine client acting for itself.
    pub fn agents(&self) -> Vec<&str> {
        if !self.actors.is_empty() {
            return self.actors.iter().map(String::as_str).collect();
        }
        if self.machine {
            return vec![self.client.as_deref().unwrap_or(&self.sub)];
        }
        Vec::new()
    }

    /// The agent acting now: the current actor, or the machine client.
    pub fn current_agent(&self) -> Option<&str> {
        self.agents().first().copied()
    }

    /// A person acting directly: no actor, not a machine.
    pub fn is_human(&self) -> bool {
        self.actors.is_empty() && !self.machine
    }
}

#[cfg(test)]
mod tests;
