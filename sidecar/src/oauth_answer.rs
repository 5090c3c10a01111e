//! Reading an OAuth token endpoint's answer (RFC 6749 §5.1, §5.2) the same
//! way wherever the project asks one: the gateway's token exchange and the
//! `attach` CLI.

use std::time::Duration;

use serde_json::Value;

/// The OAuth `error` code of an error answer, kept to its safe characters
/// and 64 of them (`invalid_response` when there is none). Only the code:
/// an `error_description` may echo input, so it is never shown.
pub fn error_code(body: &Value) -> String {
    body["error"]
        .as_str()
        .unwrap_or("invalid_response")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

/// Why an `expires_in` is not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadLifetime {
    #[error("expires_in is not a positive integer")]
    NotPositive,
    #[error("expires_in is not a number")]
    NotANumber,
}

/// A token's lifetime from `expires_in`: seconds, a positive integer;
/// `absent` when there is none, at most `max` whatever it says.
pub fn lifetime(
    expires_in: &Value,
    absent: Duration,
    max: Duration,
) -> Result<Duration, BadLifetime> {
    match expires_in {
        Value::Null => Ok(absent.min(max)),
        Value::Number(n) => match n.as_u64() {
            Some(0) | None => Err(BadLifetime::NotPositive),
            Some(secs) => Ok(Duration::from_secs(secs).min(max)),
        },
        _ => Err(BadLifetime::NotANumber),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_codes_safe_characters_are_kept() {
        for (body, want) in [
            (json!({"error": "invalid_grant"}), "invalid_grant"),
            (json!({"error": "bad<script>\"code\""}), "badscriptcode"),
            (json!({"error": "x".repeat(100)}), &*"x".repeat(64)),
            (json!({"error_description": "no code"}), "invalid_response"),
            (json!({"error": 7}), "invalid_response"),
        ] {
            assert_eq!(error_code(&body), want, "{body}");
        }
    }

    #[test]
    fn lifetimes_are_positive_integers_within_the_bound() {
        let (absent, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let secs = Duration::from_secs;
        for (value, want) in [
            (json!(null), Ok(secs(60))),
            (json!(300), Ok(secs(300))),
            (json!(u64::MAX), Ok(max)),
            (json!(0), Err(BadLifetime::NotPositive)),
            (json!(-5), Err(BadLifetime::NotPositive)),
            (json!(1.5), Err(BadLifetime::NotPositive)),
            (json!("60"), Err(BadLifetime::NotANumber)),
        ] {
            assert_eq!(lifetime(&value, absent, max), want, "{value}");
        }
    }
}
