//! Where each IdP puts the caller's identity, and how it is read out of a
//! verified token.
//!
//! A claim path is dot-separated (`realm_access.roles`). A path that starts
//! with `http://` or `https://` is a single namespaced key, as Auth0 writes
//! custom claims (`https://example.com/roles`). Alternatives are separated by
//! `|` and tried in order (`azp|client_id`).

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
    #[default]
    Generic,
}

impl Preset {
    /// Every preset's name, for messages.
    pub const NAMES: &'static str = "auth0, okta, descope, keycloak, entra, generic";
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
    /// Auth0's custom-claim namespace (for example `https://example.com`);
    /// with it the auth0 preset reads `<namespace>/roles`, `/groups` and `/tenant`.
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
        let d = self.defaults();
        let pick = |name: &str, over: &Option<String>, default: String| {
            ClaimPath::parse(over.as_deref().unwrap_or(&default))
                .map_err(|e| format!("{name}: {e}"))
        };
        Ok(ResolvedMapping {
            user: pick("user", &self.user, d.user)?,
            groups: pick("groups", &self.groups, d.groups)?,
            roles: pick("roles", &self.roles, d.roles)?,
            scopes: pick("scopes", &self.scopes, d.scopes)?,
            tenant: pick("tenant", &self.tenant, d.tenant)?,
            client: pick("client", &self.client, d.client)?,
        })
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
                let ns = self
                    .namespace
                    .as_deref()
                    .map(|n| n.trim_end_matches('/').to_owned());
                let custom = |name: &str, fallback: &str| match &ns {
                    Some(ns) => format!("{ns}/{name}|{fallback}"),
                    None => fallback.to_owned(),
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
    pub user: ClaimPath,
    pub groups: ClaimPath,
    pub roles: ClaimPath,
    pub scopes: ClaimPath,
    pub tenant: ClaimPath,
    pub client: ClaimPath,
}

/// The verified caller, as the rest of the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The token's issuer.
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
    /// The actor chain of a delegated token (RFC 8693 §4.1 `act`): the
    /// current actor first, then the actors it acted for, as `sub` (or
    /// `client_id`) of each.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub actors: Vec<String>,
    /// The token has no human subject: a machine client acting alone
    /// (client credentials).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub machine: bool,
    /// The token's expiry (seconds since the epoch).
    pub exp: u64,
    /// Raw claims chosen by `identity.forwardClaims`.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
    /// The identity headers, rendered once per verified token (the identity
    /// is shared through the token cache) rather than once per request.
    #[serde(skip)]
    pub(crate) rendered_headers: std::sync::OnceLock<crate::proxy::identity_headers::Rendered>,
}

impl ResolvedMapping {
    /// Reads the identity out of verified claims. Fails if there is no user.
    pub fn identity(
        &self,
        claims: &Map<String, Value>,
        exp: u64,
        forward: &[String],
    ) -> Result<Identity, &'static str> {
        let text = |v: &Value| scalar(v);
        let sub = claims.get("sub").and_then(text).unwrap_or_default();
        let user = self
            .user
            .lookup(claims)
            .and_then(text)
            .filter(|u| !u.is_empty())
            .ok_or("the token has no user claim")?;
        let iss = claims.get("iss").and_then(text).unwrap_or_default();
        let client: Option<String> = self.client.lookup(claims).and_then(text);
        let actors = actor_chain(claims);
        let machine = actors.is_empty()
            && client
                .as_deref()
                .is_some_and(|c| is_machine(claims, &sub, c));
        Ok(Identity {
            iss,
            sub,
            user,
            groups: self.groups.lookup(claims).map(list).unwrap_or_default(),
            roles: self.roles.lookup(claims).map(list).unwrap_or_default(),
            scopes: self
                .scopes
                .lookup(claims)
                .map(scope_list)
                .unwrap_or_default(),
            tenant: self.tenant.lookup(claims).and_then(text),
            client,
            actors,
            machine,
            exp,
            claims: forward
                .iter()
                .filter_map(|name| Some((name.clone(), claims.get(name)?.clone())))
                .collect(),
            rendered_headers: std::sync::OnceLock::new(),
        })
    }
}

/// The `act` chain (RFC 8693 §4.1): `act.sub`, then `act.act.sub`, ... A
/// chain deeper than 8 is cut there.
fn actor_chain(claims: &Map<String, Value>) -> Vec<String> {
    let mut chain = Vec::new();
    let mut act = claims.get("act");
    while let Some(Value::Object(actor)) = act {
        if chain.len() == 8 {
            break;
        }
        let Some(id) = actor
            .get("sub")
            .or_else(|| actor.get("client_id"))
            .and_then(Value::as_str)
        else {
            break;
        };
        chain.push(id.to_owned());
        act = actor.get("act");
    }
    chain
}

/// Whether a token with no `act` was issued to `client` acting for itself:
/// `sub` is the client (Okta, Entra, generic), `<client>@clients` (Auth0),
/// or Keycloak's service account `service-account-<client>`.
fn is_machine(claims: &Map<String, Value>, sub: &str, client: &str) -> bool {
    sub == client
        || sub.strip_suffix("@clients") == Some(client)
        || claims
            .get("preferred_username")
            .and_then(Value::as_str)
            .is_some_and(|u| u.strip_prefix("service-account-") == Some(client))
}

impl Identity {
    /// Who acts, when it is not the user: the actor chain of a delegated
    /// token, or the machine client acting alone.
    pub fn agents(&self) -> Vec<&str> {
        if !self.actors.is_empty() {
            return self.actors.iter().map(String::as_str).collect();
        }
        match (&self.client, self.machine) {
            (Some(client), true) => vec![client.as_str()],
            _ => Vec::new(),
        }
    }

    /// A human subject acting directly: no actor, not a machine client.
    pub fn is_human(&self) -> bool {
        self.actors.is_empty() && !self.machine
    }
}

/// A single value: a string or number, or the one key of an object, or the
/// one element of a list.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(map) if map.len() == 1 => map.keys().next().cloned(),
        Value::Array(items) if items.len() == 1 => items.first().and_then(scalar),
        _ => None,
    }
}

/// A list of names: a list of strings, an object's keys, or one string.
fn list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        Value::Object(map) => map.keys().cloned().collect(),
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Scopes: a space-separated string (RFC 8693 `scope`) or a list.
fn scope_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        other => list(other),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn identity(preset: Preset, claims: Value) -> Identity {
        let mapping = ClaimMapping::preset(preset).resolve().unwrap();
        let Value::Object(map) = claims else { panic!() };
        mapping.identity(&map, 0, &[]).unwrap()
    }

    #[test]
    fn delegation_and_machine_clients_are_told_apart_from_humans() {
        // RFC 8693 §4.1: the current actor first, then whom it acted for.
        let delegated = identity(
            Preset::Generic,
            json!({"sub": "alice", "azp": "planner", "act": {"sub": "summariser",
                   "act": {"client_id": "planner"}}}),
        );
        assert_eq!(delegated.actors, ["summariser", "planner"]);
        assert_eq!(delegated.agents(), ["summariser", "planner"]);
        assert!(!delegated.is_human() && !delegated.machine);
        assert_eq!(delegated.user, "alice", "the subject stays the user");
        // A machine client acting alone, in each IdP's convention.
        for claims in [
            json!({"sub": "batch-job", "client_id": "batch-job"}),
            json!({"sub": "batch-job@clients", "azp": "batch-job"}),
            json!({"sub": "0c7d", "azp": "batch-job", "preferred_username": "service-account-batch-job"}),
        ] {
            let m = identity(Preset::Generic, claims.clone());
            assert!(m.machine, "{claims}");
            assert_eq!(m.agents(), ["batch-job"]);
            assert!(!m.is_human());
        }
        // A person through an app: human, no agent.
        let human = identity(Preset::Generic, json!({"sub": "u1", "azp": "attach-cli"}));
        assert!(human.is_human());
        assert!(human.agents().is_empty());
        // A malformed act is no actor.
        let odd = identity(Preset::Generic, json!({"sub": "u1", "act": "x"}));
        assert!(odd.actors.is_empty());
    }

    #[test]
    fn keycloak_reads_realm_roles_groups_and_tenant() {
        let id = identity(
            Preset::Keycloak,
            json!({"sub": "u1", "azp": "attach-cli", "groups": ["staff"],
                   "realm_access": {"roles": ["llm-user"]}, "scope": "openid email",
                   "tenant": "acme"}),
        );
        assert_eq!(id.user, "u1");
        assert_eq!(id.groups, ["staff"]);
        assert_eq!(id.roles, ["llm-user"]);
        assert_eq!(id.scopes, ["openid", "email"]);
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert_eq!(id.client.as_deref(), Some("attach-cli"));
    }

    #[test]
    fn okta_reads_scp_list_and_cid() {
        let id = identity(
            Preset::Okta,
            json!({"sub": "a@b.c", "cid": "0oa1", "scp": ["llm.read", "llm.write"], "groups": ["Everyone"]}),
        );
        assert_eq!(id.scopes, ["llm.read", "llm.write"]);
        assert_eq!(id.client.as_deref(), Some("0oa1"));
        assert_eq!(id.groups, ["Everyone"]);
    }

    #[test]
    fn auth0_reads_namespaced_claims() {
        let mapping = ClaimMapping {
            namespace: Some("https://example.com/".into()),
            ..ClaimMapping::preset(Preset::Auth0)
        }
        .resolve()
        .unwrap();
        let claims = json!({"sub": "auth0|1", "https://example.com/roles": ["admin"],
                            "https://example.com/groups": ["ml"], "org_id": "org_1",
                            "azp": "m2m", "permissions": ["read:models"]});
        let id = mapping
            .identity(claims.as_object().unwrap(), 0, &[])
            .unwrap();
        assert_eq!(id.roles, ["admin"]);
        assert_eq!(id.groups, ["ml"]);
        assert_eq!(id.tenant.as_deref(), Some("org_1"));
        assert_eq!(id.scopes, ["read:models"]);
    }

    #[test]
    fn descope_reads_roles_and_single_tenant_object() {
        let id = identity(
            Preset::Descope,
            json!({"sub": "U2", "roles": ["AI-Power-Users"],
                   "tenants": {"T1": {"roles": ["admin"], "permissions": []}}}),
        );
        assert_eq!(id.roles, ["AI-Power-Users"]);
        assert_eq!(id.tenant.as_deref(), Some("T1"));
    }

    #[test]
    fn entra_reads_tid_roles_and_appid() {
        let id = identity(
            Preset::Entra,
            json!({"sub": "x", "oid": "o", "tid": "t-1", "roles": ["Model.Read"],
                   "groups": ["g-1"], "scp": "user_impersonation", "appid": "app"}),
        );
        assert_eq!(id.tenant.as_deref(), Some("t-1"));
        assert_eq!(id.roles, ["Model.Read"]);
        assert_eq!(id.scopes, ["user_impersonation"]);
        assert_eq!(id.client.as_deref(), Some("app"));
    }

    #[test]
    fn every_field_can_be_overridden_by_a_path() {
        let mapping = ClaimMapping {
            user: Some("preferred_username".into()),
            roles: Some("resource_access.attach-gateway.roles".into()),
            tenant: Some("org.id".into()),
            ..ClaimMapping::preset(Preset::Keycloak)
        }
        .resolve()
        .unwrap();
        let claims = json!({"sub": "s", "preferred_username": "alice",
                            "resource_access": {"attach-gateway": {"roles": ["r"]}},
                            "org": {"id": 7}});
        let id = mapping
            .identity(claims.as_object().unwrap(), 0, &[])
            .unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.roles, ["r"]);
        assert_eq!(id.tenant.as_deref(), Some("7"));
    }

    #[test]
    fn a_token_without_a_user_is_refused() {
        let mapping = ClaimMapping::default().resolve().unwrap();
        let claims = json!({"iss": "x"});
        assert!(
            mapping
                .identity(claims.as_object().unwrap(), 0, &[])
                .is_err()
        );
        let empty = json!({"sub": ""});
        assert!(
            mapping
                .identity(empty.as_object().unwrap(), 0, &[])
                .is_err()
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in ["", "a..b", "a|", ".a"] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn presets_parse_from_auth_backend_names() {
        assert_eq!("Keycloak".parse::<Preset>(), Ok(Preset::Keycloak));
        assert_eq!("entra".parse::<Preset>(), Ok(Preset::Entra));
        assert!("cognito".parse::<Preset>().is_err());
    }
}
