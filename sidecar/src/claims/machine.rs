//! Whether a token's subject is a machine (a client acting for itself, as
//! with the client-credentials grant) or a person, from what each IdP
//! documents about its own tokens. A user name never decides it: a person
//! may well be called `service-account-x`.
//!
//! | preset | machine when | source |
//! |---|---|---|
//! | entra | `idtyp` is `app`; without `idtyp`, no `scp` (app-only tokens carry `roles` and `oid` = `sub`, never `scp`) | Microsoft identity platform, access token claims reference and optional claims reference |
//! | keycloak | `client_id` (or the older `clientId`) names the token's client: the `service_account` client scope's mapper, set only for a service account | Keycloak server admin guide, service accounts |
//! | auth0 | `gty` is `client-credentials`, or `sub` is `<client>@clients` | Auth0 access token profiles |
//! | okta | no `uid` ("not included if there is no user bound to it") | Okta OpenID Connect & OAuth 2.0 API, access token payload |
//! | kubernetes | always: a ServiceAccount token names a workload, never a person | Kubernetes docs, "Service account tokens" |
//! | descope, generic | `sub` is the token's client (RFC 9068 §2.2 for the client-credentials grant) | RFC 9068; Descope inbound apps |

use serde_json::{Map, Value};

use super::Preset;

/// Whether the subject of `claims` is a machine client acting for itself.
/// `client` is the token's client as the mapping reads it.
pub(crate) fn is_machine(
    preset: Preset,
    claims: &Map<String, Value>,
    sub: &str,
    client: Option<&str>,
) -> bool {
    let string = |name: &str| claims.get(name).and_then(Value::as_str);
    let sub_is_client = client.is_some_and(|c| !c.is_empty() && c == sub);
    match preset {
        Preset::Entra => match string("idtyp") {
            Some("app") => true,
            Some("user") => false,
            // Anything else (or no idtyp): only delegated user tokens
            // carry scp.
            _ => !claims.contains_key("scp"),
        },
        Preset::Keycloak => {
            let named = string("client_id").or_else(|| string("clientId"));
            named.is_some_and(|named| client == Some(named))
        }
        Preset::Auth0 => {
            string("gty") == Some("client-credentials")
                || client.is_some_and(|c| !c.is_empty() && sub.strip_suffix("@clients") == Some(c))
        }
        Preset::Okta => !claims.contains_key("uid"),
        Preset::Kubernetes => true,
        Preset::Descope | Preset::Generic => sub_is_client,
    }
}
