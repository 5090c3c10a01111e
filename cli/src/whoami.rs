//! The identity a gateway reads from a token: the same claim mapping, so
//! `attach whoami` shows the user, groups, roles, tenant and client that
//! rules will be matched against.

use attach_sidecar::claims::{ClaimMapping, Preset};
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::error::CliError;

/// A JWT's claims, read without checking the signature: the token came
/// from the IdP's token endpoint to this user; the gateway checks it.
pub fn claims(token: &str) -> Result<Map<String, Value>, CliError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| CliError::Identity("the access token is not a JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| CliError::Identity("the token's payload is not base64url".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| CliError::Identity("the token's payload is not a JSON object".into()))
}

/// Whether the token's `aud` (a string or a list) names `audience`.
pub fn has_audience(claims: &Map<String, Value>, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a == audience),
        _ => false,
    }
}

/// The identity as a gateway with `preset` maps it, plus whether it is a
/// person (what `humanOnly` rules ask).
pub fn identity(claims: &Map<String, Value>, preset: Preset) -> Result<Value, CliError> {
    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    let mapped = ClaimMapping::preset(preset)
        .resolve()
        .map_err(CliError::Identity)?
        .identity(claims, exp, &[])
        .map_err(|e| CliError::Identity(e.to_string()))?;
    let mut out =
        serde_json::to_value(&mapped.identity).map_err(|e| CliError::Identity(e.to_string()))?;
    out["human"] = Value::Bool(mapped.identity.is_human());
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use serde_json::json;

    fn jwt(claims: &Value) -> String {
        let part =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", part(&json!({"alg": "RS256"})), part(claims))
    }

    #[test]
    fn whoami_maps_the_claims_as_the_gateway_does() {
        let token = jwt(
            &json!({"iss": "https://kc/realms/a", "sub": "u-1", "exp": 10,
            "azp": "attach-cli", "groups": ["staff"], "realm_access": {"roles": ["admin"]},
            "aud": ["attach-gateway", "account"], "scope": "openid profile"}),
        );
        let claims = claims(&token).unwrap();
        let who = identity(&claims, Preset::Keycloak).unwrap();
        assert_eq!(who["user"], "u-1");
        assert_eq!(who["groups"], json!(["staff"]));
        assert_eq!(who["roles"], json!(["admin"]));
        assert_eq!(who["client"], "attach-cli");
        assert_eq!(who["human"], true);
        assert!(has_audience(&claims, "attach-gateway"));
        assert!(!has_audience(&claims, "attach"));
        let single = self::claims(&jwt(&json!({"aud": "x"}))).unwrap();
        assert!(has_audience(&single, "x"));
    }

    #[test]
    fn what_is_no_jwt_says_so() {
        for token in [
            "opaque",
            "a.%%%.c",
            &format!(
                "a.{}.c",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[1]")
            ),
        ] {
            assert!(claims(token).is_err(), "{token}");
        }
    }
}
