//! `attach keys`: mint, list and revoke personal API keys at a backend's
//! gateway (`/.attach/keys`), with the login's access token. A key is
//! printed once, on stdout, alone: `KEY=$(attach keys create ...)`.

use attach_sidecar::idp_client::IdpClient;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

use crate::error::CliError;

/// The gateway's key collection at `backend` (its base URL).
pub fn collection(backend: &str) -> String {
    format!("{}/.attach/keys", backend.trim_end_matches('/'))
}

/// Sends one key request and returns the answer's JSON, or the gateway's
/// refusal (its `error` code and message).
pub async fn send(
    http: &IdpClient,
    method: http::Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<Value, CliError> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header(AUTHORIZATION, format!("Bearer {token}"));
    let bytes = match body {
        Some(body) => {
            request = request.header(CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let request = request
        .body(bytes)
        .map_err(|e| CliError::Metadata(format!("{url}: {e}")))?;
    let response = http.send_request(request).await?;
    let status = response.status();
    let answer: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(CliError::Gateway {
            status: status.as_u16(),
            code: answer["error"].as_str().unwrap_or("unknown").to_owned(),
            message: answer["message"].as_str().unwrap_or("").to_owned(),
        });
    }
    Ok(answer)
}

/// The body of a mint request.
pub fn mint_request(name: Option<&str>, expires: Option<&str>, models: &[String]) -> Value {
    let mut body = serde_json::Map::new();
    if let Some(name) = name {
        body.insert("name".into(), name.into());
    }
    if let Some(expires) = expires {
        body.insert("expiresIn".into(), expires.into());
    }
    if !models.is_empty() {
        body.insert("models".into(), models.to_vec().into());
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_say_only_what_was_asked() {
        assert_eq!(
            collection("https://llm.example.com/"),
            "https://llm.example.com/.attach/keys"
        );
        assert_eq!(mint_request(None, None, &[]), serde_json::json!({}));
        assert_eq!(
            mint_request(Some("ci"), Some("30d"), &["a".into(), "b*".into()]),
            serde_json::json!({"name": "ci", "expiresIn": "30d", "models": ["a", "b*"]})
        );
    }
}
