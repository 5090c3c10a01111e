//! OpenID Connect discovery, one strict way for every endpoint the gateway
//! reads from it (the JWKS and the token endpoint): the document must name
//! the issuer it was fetched for (OpenID Connect Discovery §4.3), and an
//! HTTPS issuer's endpoints must be HTTPS too. An `http://` issuer exists
//! only where the config allowed it (loopback, or `allowInsecureHttp`).

use serde_json::Value;

use crate::idp_client::{FetchError, IdpClient};

/// Why discovery gave no usable endpoint.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The document speaks for another issuer.
    #[error("the discovery document names issuer {named:?}, not {expected:?}")]
    WrongIssuer {
        named: Option<String>,
        expected: String,
    },
    /// The document has no such endpoint.
    #[error("the discovery document has no {0}")]
    Missing(&'static str),
    /// The endpoint is not a URL, or not HTTPS for an HTTPS issuer.
    #[error("{name} {url:?} {problem}")]
    Unusable {
        name: &'static str,
        url: String,
        problem: &'static str,
    },
}

/// A discovery document that named the right issuer.
#[derive(Debug, Clone)]
pub struct Discovery {
    issuer: String,
    doc: Value,
}

/// Fetches `<issuer>/.well-known/openid-configuration` and checks that it
/// names `issuer` exactly.
pub async fn discover(http: &IdpClient, issuer: &str) -> Result<Discovery, DiscoveryError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc: Value = http.get_json(&url).await?;
    Discovery::checked(issuer, doc)
}

impl Discovery {
    /// `doc` as the discovery document of `issuer`, if it names it.
    pub fn checked(issuer: &str, doc: Value) -> Result<Self, DiscoveryError> {
        let named = doc.get("issuer").and_then(Value::as_str);
        if named != Some(issuer) {
            return Err(DiscoveryError::WrongIssuer {
                named: named.map(str::to_owned),
                expected: issuer.to_owned(),
            });
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            doc,
        })
    }

    /// The endpoint `name` (`jwks_uri`, `token_endpoint`): a URL with a host,
    /// HTTPS when the issuer is.
    pub fn endpoint(&self, name: &'static str) -> Result<String, DiscoveryError> {
        let url = self
            .doc
            .get(name)
            .and_then(Value::as_str)
            .ok_or(DiscoveryError::Missing(name))?;
        let unusable = |problem| DiscoveryError::Unusable {
            name,
            url: url.to_owned(),
            problem,
        };
        let uri: http::Uri = url.parse().map_err(|_| unusable("is not a URL"))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(unusable("has no host"));
        }
        match uri.scheme_str() {
            Some("https") => Ok(url.to_owned()),
            Some("http") if !self.issuer.starts_with("https://") => Ok(url.to_owned()),
            Some("http") => Err(unusable("is not https:// for an https:// issuer")),
            _ => Err(unusable("is not an http(s) URL")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_document_must_name_the_issuer_exactly() {
        let issuer = "https://idp.example/realms/a";
        assert!(Discovery::checked(issuer, json!({"issuer": issuer})).is_ok());
        for named in [
            json!({"issuer": "https://evil.example/realms/a"}),
            json!({"issuer": "https://idp.example/realms/a/"}),
            json!({"issuer": 7}),
            json!({}),
        ] {
            assert!(
                matches!(
                    Discovery::checked(issuer, named.clone()),
                    Err(DiscoveryError::WrongIssuer { .. })
                ),
                "{named}"
            );
        }
    }

    #[test]
    fn an_https_issuer_gets_https_endpoints_only() {
        let https = "https://idp.example";
        let doc = |endpoint: Value| {
            Discovery::checked(https, json!({"issuer": https, "token_endpoint": endpoint})).unwrap()
        };
        assert_eq!(
            doc(json!("https://idp.example/token"))
                .endpoint("token_endpoint")
                .unwrap(),
            "https://idp.example/token"
        );
        for bad in [
            json!("http://idp.example/token"),
            json!("http://127.0.0.1/token"),
            json!("ftp://idp.example/token"),
            json!("/token"),
            json!("not a url"),
        ] {
            assert!(
                matches!(
                    doc(bad.clone()).endpoint("token_endpoint"),
                    Err(DiscoveryError::Unusable { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            doc(json!(7)).endpoint("token_endpoint"),
            Err(DiscoveryError::Missing("token_endpoint"))
        ));
        // A loopback http:// issuer (allowed by the config) may name http://.
        let local = "http://127.0.0.1:8080/realms/a";
        let d = Discovery::checked(
            local,
            json!({"issuer": local, "jwks_uri": "http://127.0.0.1:8080/certs"}),
        )
        .unwrap();
        assert!(d.endpoint("jwks_uri").is_ok());
    }
}
