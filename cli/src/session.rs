//! A stored login kept usable: its access token renewed with the refresh
//! token when it would expire too soon, and the refresh token revoked at
//! logout.

use std::time::Duration;

use attach_sidecar::idp_client::IdpClient;

use crate::error::{CliError, oauth_code};
use crate::store::Login;
use crate::tokens;

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Renews `login`'s access token if it has less than `min_valid` left;
/// whether it did. A refused refresh token ends the session.
pub async fn keep_fresh(
    http: &IdpClient,
    login: &mut Login,
    min_valid: Duration,
) -> Result<bool, CliError> {
    let now = now();
    if !tokens::needs_refresh(login.expires_at, now, min_valid) {
        return Ok(false);
    }
    let Some(refresh) = login.refresh_token.clone() else {
        return Err(CliError::SessionEnded {
            issuer: login.issuer.clone(),
            code: "no_refresh_token".into(),
        });
    };
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", login.client_id.as_str()),
    ];
    let (status, body) = http.post_public_form(&login.token_endpoint, &form).await?;
    if !status.is_success() {
        let code = oauth_code(&body);
        // RFC 6749 §5.2: the refresh token is invalid, expired or revoked.
        return Err(if code == "invalid_grant" {
            CliError::SessionEnded {
                issuer: login.issuer.clone(),
                code,
            }
        } else {
            CliError::Refused {
                endpoint: "token",
                code,
            }
        });
    }
    let fresh = tokens::parse("token", &body)?;
    login.access_token = fresh.access_token;
    // A rotated refresh token replaces the old one; else the old one stays.
    if let Some(rotated) = fresh.refresh_token {
        login.refresh_token = Some(rotated);
    }
    login.expires_at = now.saturating_add(fresh.lifetime.as_secs());
    Ok(true)
}

/// Revokes `login`'s refresh token (RFC 7009) where the IdP offers it.
pub async fn revoke(http: &IdpClient, login: &Login) -> Result<(), CliError> {
    let (Some(endpoint), Some(token)) = (&login.revocation_endpoint, &login.refresh_token) else {
        return Ok(());
    };
    let form = [
        ("token", token.as_str()),
        ("token_type_hint", "refresh_token"),
        ("client_id", login.client_id.as_str()),
    ];
    let (status, body) = http.post_public_form(endpoint, &form).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(CliError::refused("revocation", &body))
    }
}
