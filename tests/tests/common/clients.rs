//! Shared by the client tests (`cli.rs`, `open_webui.rs`, `api_keys.rs`):
//! the `attach` binary, a gateway any signed-in person of a realm may use,
//! and the events of a streamed answer.

use std::path::{Path, PathBuf};

use attach_sidecar::claims::Preset;
use attach_sidecar::config::{GatewayConfig, IssuerConfig};
use attach_sidecar::policy::{EndpointClass, Rule, Subjects};
use attach_tests::keycloak::AUDIENCE;
use attach_tests::mock_model::MockModel;

/// The `attach` binary, built once.
pub fn cli() -> PathBuf {
    attach_tests::binaries::build("attach-cli", "attach").expect("the attach CLI builds")
}

/// Runs `attach --config-dir <dir> <args>`: status, stdout (trimmed),
/// stderr.
pub async fn attach(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(cli())
        .arg("--config-dir")
        .arg(dir)
        .args(args)
        .output()
        .await
        .expect("attach runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A gateway config trusting `issuer` (Keycloak, the world's audience) in
/// front of `model`: any signed-in person may list and use `models`.
pub fn people_may_use(issuer: &str, model: &MockModel, models: &[&str]) -> GatewayConfig {
    let mut config = GatewayConfig::new(vec![IssuerConfig::new(
        issuer,
        vec![AUDIENCE.into()],
        Preset::Keycloak,
    )]);
    config.upstream.url = model.url();
    config.access.rules = vec![Rule::new(
        "people",
        Subjects {
            any_authenticated: true,
            ..Subjects::default()
        },
        models,
        &[EndpointClass::Read, EndpointClass::Inference],
    )];
    config
}

/// The `data:` of each server-sent event of a streamed answer, after
/// checking it is one.
pub async fn sse_events(answer: reqwest::Response) -> (Vec<String>, String) {
    let kind = answer.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    let text = answer.text().await.expect("the answer streams to its end");
    let events = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_owned)
        .collect();
    (events, text)
}
