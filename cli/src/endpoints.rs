//! Where to log in: an issuer's endpoints from its OIDC discovery document,
//! and the issuer from a backend's RFC 9728 protected-resource metadata
//! (`attach login https://llm.example.com`).

use attach_sidecar::discovery;
use attach_sidecar::idp_client::IdpClient;
use serde_json::Value;

use crate::error::CliError;

/// The endpoints of one issuer that a login uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub issuer: String,
    pub token: String,
    pub device_authorization: String,
    pub revocation: Option<String>,
}

/// The endpoints `issuer`'s discovery document names, as strictly as the
/// gateway reads it (the document names that issuer exactly; an https
/// issuer's endpoints are https).
pub async fn of_issuer(http: &IdpClient, issuer: &str) -> Result<Endpoints, CliError> {
    let found = discovery::discover(http, issuer).await?;
    Ok(Endpoints {
        issuer: issuer.to_owned(),
        token: found.endpoint("token_endpoint")?,
        device_authorization: found.endpoint("device_authorization_endpoint")?,
        revocation: found.endpoint("revocation_endpoint").ok(),
    })
}

/// The issuer to log in at for the backend `resource`, from its metadata.
pub async fn issuer_of_resource(
    http: &IdpClient,
    resource: &str,
    wanted: Option<&str>,
) -> Result<String, CliError> {
    let doc: Value = http.get_json(&metadata_url(resource)?).await?;
    choose_issuer(&doc, resource, wanted)
}

/// RFC 9728 §3.1: the well-known path goes between the host and the
/// resource's path (`https://h/p` → `https://h/.well-known/oauth-protected-resource/p`).
pub fn metadata_url(resource: &str) -> Result<String, CliError> {
    const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";
    let uri: http::Uri = resource
        .parse()
        .map_err(|_| CliError::Metadata(format!("{resource} is not a URL")))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(CliError::Metadata(format!(
            "{resource} is not an absolute http(s) URL"
        )));
    };
    if !matches!(scheme, "http" | "https") || uri.query().is_some() {
        return Err(CliError::Metadata(format!(
            "{resource} is not an http(s) URL without a query"
        )));
    }
    let path = uri.path().trim_end_matches('/');
    Ok(format!("{scheme}://{authority}{WELL_KNOWN}{path}"))
}

/// The issuer the metadata names for `resource`: `wanted` if it is among
/// them, else the only one. The document must be for `resource` itself
/// (RFC 9728 §3.3), so that a backend cannot send a login elsewhere.
pub fn choose_issuer(
    doc: &Value,
    resource: &str,
    wanted: Option<&str>,
) -> Result<String, CliError> {
    let trim = |s: &str| s.trim_end_matches('/').to_owned();
    let named = doc["resource"].as_str().map(trim);
    if named.as_deref() != Some(trim(resource).as_str()) {
        return Err(CliError::Metadata(format!(
            "the metadata is for {}, not {resource}",
            named.as_deref().unwrap_or("no resource")
        )));
    }
    let servers: Vec<&str> = doc["authorization_servers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match (wanted, servers.as_slice()) {
        (Some(wanted), _) if servers.contains(&wanted) => Ok(wanted.to_owned()),
        (Some(wanted), _) => Err(CliError::Metadata(format!(
            "{resource} does not trust {wanted}; it trusts: {}",
            servers.join(", ")
        ))),
        (None, [only]) => Ok((*only).to_owned()),
        (None, []) => Err(CliError::Metadata(format!(
            "{resource} names no authorization server"
        ))),
        (None, several) => Err(CliError::Metadata(format!(
            "{resource} trusts several issuers; pick one with --issuer: {}",
            several.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use serde_json::json;

    #[test]
    fn the_metadata_url_puts_the_well_known_path_before_the_resources() {
        for (resource, want) in [
            (
                "https://llm.example.com",
                Some("https://llm.example.com/.well-known/oauth-protected-resource"),
            ),
            (
                "https://llm.example.com/",
                Some("https://llm.example.com/.well-known/oauth-protected-resource"),
            ),
            (
                "http://127.0.0.1:8080/mcp",
                Some("http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"),
            ),
            ("llm.example.com", None),
            ("ftp://llm.example.com", None),
            ("https://llm.example.com/?next=evil", None),
        ] {
            assert_eq!(metadata_url(resource).ok().as_deref(), want, "{resource}");
        }
    }

    #[test]
    fn the_issuer_is_one_the_resource_itself_names() {
        let doc = |resource: &str, servers: &[&str]| json!({"resource": resource, "authorization_servers": servers});
        let r = "https://llm.example.com";
        let (a, b) = ("https://a.example", "https://b.example");
        let cases: [(Value, Option<&str>, Result<&str, &str>); 7] = [
            (doc(r, &[a]), None, Ok(a)),
            (doc("https://llm.example.com/", &[a]), None, Ok(a)),
            (doc(r, &[a, b]), Some(b), Ok(b)),
            (doc(r, &[a, b]), None, Err("several")),
            (doc(r, &[a]), Some(b), Err("does not trust")),
            (doc(r, &[]), None, Err("no authorization server")),
            (
                doc("https://evil.example", &[a]),
                None,
                Err("not https://llm"),
            ),
        ];
        for (doc, wanted, want) in cases {
            let got = choose_issuer(&doc, r, wanted).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{doc}: {got:?}, want {want:?}"),
            }
        }
    }
}
