//! Token answers (RFC 6749 §5.1) and when a stored token must be renewed.

use std::time::Duration;

use serde_json::Value;

use crate::error::CliError;

/// The lifetime assumed when the IdP gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// The longest lifetime believed, whatever `expires_in` says.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A token endpoint's successful answer.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub lifetime: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Reads a successful token answer: an access token, perhaps a refresh
/// token, and `expires_in` as a positive integer (absent: five minutes;
/// believed up to a day).
pub fn parse(endpoint: &'static str, body: &Value) -> Result<Tokens, CliError> {
    let bad = |problem: &str| CliError::BadAnswer {
        endpoint,
        problem: problem.to_owned(),
    };
    let access_token = body["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token"))?
        .to_owned();
    let refresh_token = body["refresh_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let lifetime =
        attach_sidecar::oauth_answer::lifetime(&body["expires_in"], DEFAULT_LIFETIME, MAX_LIFETIME)
            .map_err(|e| bad(&e.to_string()))?;
    Ok(Tokens {
        access_token,
        refresh_token,
        lifetime,
    })
}

/// Whether a token expiring at `expires_at` must be renewed at `now` so
/// that it stays valid for `min_valid` more.
pub fn needs_refresh(expires_at: u64, now: u64, min_valid: Duration) -> bool {
    expires_at.saturating_sub(now) < min_valid.as_secs()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use serde_json::json;

    #[test]
    fn answers_are_read_strictly() {
        let ok = parse(
            "token",
            &json!({"access_token": "a", "refresh_token": "r", "expires_in": 60}),
        )
        .unwrap();
        assert_eq!(
            (ok.refresh_token.as_deref(), ok.lifetime),
            (Some("r"), Duration::from_secs(60))
        );
        let plain = parse("token", &json!({"access_token": "a"})).unwrap();
        assert_eq!(
            (plain.refresh_token, plain.lifetime),
            (None, DEFAULT_LIFETIME)
        );
        let huge = parse(
            "token",
            &json!({"access_token": "a", "expires_in": u64::MAX}),
        )
        .unwrap();
        assert_eq!(huge.lifetime, MAX_LIFETIME);
        for bad in [
            json!({}),
            json!({"access_token": ""}),
            json!({"access_token": "a", "expires_in": 0}),
            json!({"access_token": "a", "expires_in": -5}),
            json!({"access_token": "a", "expires_in": 1.5}),
            json!({"access_token": "a", "expires_in": "60"}),
        ] {
            assert!(parse("token", &bad).is_err(), "{bad}");
        }
        let secret = parse("token", &json!({"access_token": "tok-secret"})).unwrap();
        assert!(!format!("{secret:?}").contains("tok-secret"));
    }

    #[test]
    fn a_token_is_renewed_before_it_has_less_than_asked_left() {
        let min = Duration::from_secs(60);
        for (expires_at, now, want) in [
            (1_000, 900, false),
            (1_000, 940, false),
            (1_000, 941, true),
            (1_000, 1_000, true),
            (1_000, 5_000, true),
        ] {
            assert_eq!(
                needs_refresh(expires_at, now, min),
                want,
                "{expires_at} at {now}"
            );
        }
        assert!(!needs_refresh(1_000, 1_000, Duration::ZERO));
    }
}
