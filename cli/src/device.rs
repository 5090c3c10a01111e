//! The OAuth 2.0 device authorization grant (RFC 8628): the CLI asks for a
//! code, the person approves it in any browser, the CLI polls until the
//! IdP answers.

use std::time::Duration;

use attach_sidecar::idp_client::IdpClient;
use serde_json::Value;

use crate::error::{CliError, oauth_code};
use crate::tokens::{self, Tokens};

/// `grant_type` of RFC 8628 §3.4.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The polling interval when the IdP names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// How much longer to wait after `slow_down` (RFC 8628 §3.5).
const SLOW_DOWN: Duration = Duration::from_secs(5);
/// The shortest interval and the longest wait believed from the IdP.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(30 * 60);

/// A started device authorization: what the person must do.
#[derive(Clone, PartialEq, Eq)]
pub struct Started {
    device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .finish_non_exhaustive()
    }
}

/// Asks `endpoint` for a device code for `client_id` and `scope`.
pub async fn start(
    http: &IdpClient,
    endpoint: &str,
    client_id: &str,
    scope: &str,
) -> Result<Started, CliError> {
    let mut form = vec![("client_id", client_id)];
    if !scope.is_empty() {
        form.push(("scope", scope));
    }
    let (status, body) = http.post_public_form(endpoint, &form).await?;
    if !status.is_success() {
        return Err(CliError::refused("device authorization", &body));
    }
    started(&body)
}

/// Reads a device authorization answer (RFC 8628 §3.2).
fn started(body: &Value) -> Result<Started, CliError> {
    let field = |name: &str| {
        body[name]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| CliError::BadAnswer {
                endpoint: "device authorization",
                problem: format!("no {name}"),
            })
    };
    let seconds =
        |name: &str, default: Duration| body[name].as_u64().map_or(default, Duration::from_secs);
    Ok(Started {
        device_code: field("device_code")?,
        user_code: field("user_code")?,
        verification_uri: field("verification_uri")?,
        verification_uri_complete: field("verification_uri_complete").ok(),
        expires_in: seconds("expires_in", MAX_WAIT).min(MAX_WAIT),
        interval: seconds("interval", DEFAULT_INTERVAL).max(MIN_INTERVAL),
    })
}

/// What to do after the token endpoint refused with `code` (RFC 8628
/// §3.5): wait this long and ask again, or stop.
pub fn after(code: &str, interval: Duration) -> Result<Duration, CliError> {
    match code {
        "authorization_pending" => Ok(interval),
        "slow_down" => Ok(interval + SLOW_DOWN),
        "access_denied" => Err(CliError::LoginNotApproved("the request was denied")),
        "expired_token" => Err(CliError::LoginNotApproved("the code expired")),
        other => Err(CliError::Refused {
            endpoint: "token",
            code: other.to_owned(),
        }),
    }
}

/// Polls `token_endpoint` until the person approved, refused, or the code
/// expired.
pub async fn wait(
    http: &IdpClient,
    token_endpoint: &str,
    client_id: &str,
    started: &Started,
) -> Result<Tokens, CliError> {
    let deadline = tokio::time::Instant::now() + started.expires_in;
    let mut interval = started.interval;
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() > deadline {
            return Err(CliError::LoginNotApproved("the code expired"));
        }
        let form = [
            ("grant_type", GRANT_TYPE),
            ("device_code", started.device_code.as_str()),
            ("client_id", client_id),
        ];
        let (status, body) = http.post_public_form(token_endpoint, &form).await?;
        if status.is_success() {
            return tokens::parse("token", &body);
        }
        interval = after(&oauth_code(&body), interval)?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use serde_json::json;

    #[test]
    fn polling_follows_the_idps_answers() {
        let five = Duration::from_secs(5);
        assert_eq!(after("authorization_pending", five).unwrap(), five);
        assert_eq!(after("slow_down", five).unwrap(), Duration::from_secs(10));
        for (code, says) in [
            ("access_denied", "denied"),
            ("expired_token", "expired"),
            ("invalid_client", "invalid_client"),
            ("invalid_response", "invalid_response"),
        ] {
            let err = after(code, five).unwrap_err().to_string();
            assert!(err.contains(says), "{code}: {err}");
        }
    }

    #[test]
    fn a_device_answer_is_read_with_bounds() {
        let ok = started(&json!({"device_code": "d", "user_code": "ABCD-EFGH",
            "verification_uri": "https://idp/device", "expires_in": 600, "interval": 0}))
        .unwrap();
        assert_eq!(ok.interval, MIN_INTERVAL, "never a busy loop");
        assert_eq!(ok.expires_in, Duration::from_secs(600));
        assert_eq!(ok.verification_uri_complete, None);
        let plain = started(&json!({"device_code": "d", "user_code": "u",
            "verification_uri": "https://idp/device", "expires_in": u64::MAX}))
        .unwrap();
        assert_eq!(
            (plain.interval, plain.expires_in),
            (DEFAULT_INTERVAL, MAX_WAIT)
        );
        for missing in ["device_code", "user_code", "verification_uri"] {
            let mut body = json!({"device_code": "d", "user_code": "u", "verification_uri": "v"});
            body.as_object_mut().unwrap().remove(missing);
            let err = started(&body).unwrap_err().to_string();
            assert!(err.contains(missing), "{err}");
        }
        assert!(!format!("{ok:?}").contains("\"d\""));
    }
}
