//! `IdentityProvider` (namespaced) and `ClusterIdentityProvider`
//! (cluster-scoped): an OIDC issuer whose tokens backends accept.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema;

/// A default claim mapping for a well-known identity provider.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Auth0,
    Okta,
    Descope,
    Keycloak,
    Entra,
    /// The cluster's own ServiceAccount tokens: the operator reads the
    /// issuer's keys from the API server and relays them to the gateways.
    Kubernetes,
    #[default]
    Generic,
}

/// An asymmetric JWS algorithm (HMAC and `none` cannot be named).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// Where the caller's identity is in the token; each field overrides the
/// preset with a claim path (`a.b`, `https://ns.example/roles`, `a|b`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.__namespace__) || (isURL(self.__namespace__) && url(self.__namespace__).getHostname() != '')").message("spec.claims.namespace must be a URL, e.g. https://example.com").field_path(".namespace"))]
pub struct ClaimPaths {
    /// The user claim (default `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user: Option<String>,
    /// The groups claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub groups: Option<String>,
    /// The roles claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub roles: Option<String>,
    /// The scopes claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub scopes: Option<String>,
    /// The tenant claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub tenant: Option<String>,
    /// Auth0's custom-claim namespace, a URL, e.g. `https://example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub namespace: Option<String>,
}

/// A key of a Secret: in the backend's namespace (see each field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key inside the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// RFC 8693 token exchange at this IdP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.audience) || size(self.scopes) > 0").message("spec.tokenExchange needs an audience or scopes: a token for the same audience gains nothing").field_path(".audience"))]
pub struct TokenExchange {
    /// The token endpoint (https, or http with `insecure: true`).
    #[schemars(length(min = 1))]
    pub token_endpoint: String,
    /// The client that exchanges tokens.
    #[schemars(length(min = 1))]
    pub client_id: String,
    /// The client secret. The injected pod mounts this Secret directly (the
    /// operator never reads it): for an `IdentityProvider` it lives beside
    /// the IdP and its backends; for a `ClusterIdentityProvider` a Secret of
    /// this name must exist in the namespace of every LLMBackend that uses
    /// it (pods mount Secrets of their own namespace only).
    pub client_secret_ref: SecretKeyRef,
    /// The audience of the exchanged token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub audience: Option<String>,
    /// Scopes of the exchanged token.
    #[serde(default)]
    #[schemars(inner(length(min = 1)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub scopes: Vec<String>,
    /// What the caller's token is to the IdP at `tokenEndpoint`
    /// (`subject_token_type`): `accessToken`, or `jwt` for a token it
    /// validates by signature as another issuer's. Default: `jwt` for the
    /// `kubernetes` preset (a workload's ServiceAccount token), else
    /// `accessToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_token_type: Option<SubjectTokenType>,
    /// The name the IdP at `tokenEndpoint` knows this issuer by, sent as
    /// `subject_issuer`: with Keycloak, the alias of the identity provider
    /// that trusts this issuer's keys (its external-to-internal exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub subject_issuer: Option<String>,
}

/// How the IdP takes the caller's token in a token exchange (default:
/// `jwt` for the `kubernetes` preset, else `accessToken`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SubjectTokenType {
    /// One of its own access tokens.
    AccessToken,
    /// A JWT of an issuer it federates, checked by signature.
    Jwt,
}

/// What an IdP reports once checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityProviderStatus {
    /// `Ready`: discovery reachable and the keys parse.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The JWKS URL in use (discovered or configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Signing keys found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_count: Option<u32>,
    /// When the keys were last fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<Time>,
    /// The `kubernetes` preset: the cluster issuer's signing keys (a JWKS,
    /// public keys only) as the API server publishes them, relayed into the
    /// config of every backend that accepts this IdP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed_keys: Option<String>,
}

/// Declares the spec struct of one identity-provider kind; both kinds share
/// every field, rule, printer column and the status type, and differ only in
/// kind, scope, short name and description.
macro_rules! identity_provider_spec {
    ($(#[$kube:meta])* $name:ident) => {
        /// An OIDC identity provider whose access tokens backends accept.
        // Printcolumns repeat `type_ = "string"`; not duplicated attributes.
        #[allow(clippy::duplicated_attributes)]
        #[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
        $(#[$kube])*
        #[kube(
            group = "attach.dev",
            version = "v1alpha1",
            status = "IdentityProviderStatus",
            category = "attach",
            printcolumn(name = "Issuer", type_ = "string", json_path = ".spec.issuer"),
            printcolumn(
                name = "Ready",
                type_ = "string",
                json_path = ".status.conditions[?(@.type==\"Ready\")].status"
            ),
            printcolumn(name = "Keys", type_ = "integer", json_path = ".status.keyCount"),
            printcolumn(
                name = "Age",
                type_ = "date",
                json_path = ".metadata.creationTimestamp"
            )
        )]
        #[serde(rename_all = "camelCase")]
        #[x_kube(validation = Rule::new(schema::url_rule("issuer")).message("spec.issuer must be an https:// URL with a host (http:// only with insecure: true)").field_path(".issuer"))]
        #[x_kube(validation = Rule::new(schema::url_rule("jwksUri")).message("spec.jwksUri must be an https:// URL with a host (http:// only with insecure: true)").field_path(".jwksUri"))]
        #[x_kube(validation = Rule::new(schema::exchange_url_rule()).message("spec.tokenExchange.tokenEndpoint must be an https:// URL with a host (http:// only with insecure: true)").field_path(".tokenExchange.tokenEndpoint"))]
        pub struct $name {
            /// The issuer URL, exactly as tokens carry it in `iss`: https
            /// (http only with `insecure`), a host, no query or fragment.
            #[schemars(length(min = 1, max = 2048))]
            #[x_kube(validation = Rule::new("!self.contains('?') && !self.contains('#')").message("spec.issuer must not have a query or fragment"))]
            pub issuer: String,
            /// Accepted `aud` values, each once; a token must carry at least one.
            #[schemars(length(min = 1), inner(length(min = 1)))]
            #[x_kube(merge_strategy = ListMerge::Set)]
            pub audiences: Vec<String>,
            /// The JWKS URL; without it, OIDC discovery finds it.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub jwks_uri: Option<String>,
            /// The IdP's claim conventions: auth0, okta, descope, keycloak,
            /// entra, generic, or kubernetes (the cluster's ServiceAccount
            /// tokens; each backend then names its own audience in
            /// `identityProviderRefs[].audiences`).
            #[serde(default)]
            pub preset: Preset,
            /// Claim paths overriding the preset.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub claims: Option<ClaimPaths>,
            /// Allowed signing algorithms (default: every asymmetric one).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub algorithms: Option<Vec<Algorithm>>,
            /// Clock skew allowed on exp/nbf/iat, in seconds (default 60).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 0, max = 600))]
            pub leeway_seconds: Option<u32>,
            /// How often the gateway refreshes the keys in the background, a
            /// duration such as `5m` or `1h30m` (units `s`, `m`, `h`;
            /// 30s to 24h; default 5m).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+(s|m|h))+$"))]
            #[x_kube(validation = Rule::new("duration(self) >= duration('30s') && duration(self) <= duration('24h')").message("spec.jwksRefreshInterval must be between 30s and 24h"))]
            pub jwks_refresh_interval: Option<String>,
            /// Allow an http:// issuer or JWKS URL. For local testing only.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub insecure: Option<bool>,
            /// The clients people sign in through (their apps, CLIs). A
            /// person's token held by any other client was obtained for them
            /// by that client (token exchange, on-behalf-of): that client is
            /// an agent acting for them. Required by `humanOnly` rules.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
            #[x_kube(merge_strategy = ListMerge::Set)]
            pub user_clients: Vec<String>,
            /// RFC 8693 token exchange settings.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub token_exchange: Option<TokenExchange>,
        }
    };
}

identity_provider_spec!(
    #[kube(
        kind = "IdentityProvider",
        namespaced,
        shortname = "idp",
        doc = "An OIDC identity provider, in this namespace, whose access tokens LLMBackends here may accept."
    )]
    IdentityProviderSpec
);

identity_provider_spec!(
    #[kube(
        kind = "ClusterIdentityProvider",
        shortname = "cidp",
        doc = "An OIDC identity provider declared once for the whole cluster; any LLMBackend may accept its tokens."
    )]
    ClusterIdentityProviderSpec
);
