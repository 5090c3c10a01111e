#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Identity that cannot be confused, with real Keycloak tokens:
//! - a user's token exchanged by an agent client, and a service account's
//!   token exchanged by it, are that agent acting (no human-only admin,
//!   denied by name), a service account is a machine only when its token
//!   says so, and a person named `service-account-attach-cli` stays a person;
//! - two trusted realms with a user `alice` each: rules, quota budgets,
//!   `X-Attach-Issuer` and audit lines keep them apart;
//! - token exchange: a refusal is asked of Keycloak once, not per request;
//!   a client-sent downstream-token header never reaches the model, where
//!   an exchange runs and where none does; a hanging token endpoint holds
//!   no quota slot.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use attach_sidecar::claims::Preset;
use attach_sidecar::config::IssuerConfig;
use attach_sidecar::exchange::TokenExchangeConfig;
use attach_sidecar::policy::{EndpointClass, Rule, Subjects};
use attach_sidecar::quota::{QuotaKey, QuotaLimit};
use attach_tests::gateway::{GatewayProcess, metric_sum};
use attach_tests::keycloak::{
    AGENT_CLIENT, AGENT_SECRET, AUDIENCE, LOOKALIKE_USER, OTHER_REALM, REALM,
};
use attach_tests::mock_model::{MockModel, SeenRequest};
use serde_json::json;

async fn send(
    gw: &GatewayProcess,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    model: &str,
) -> u16 {
    let mut request = reqwest::Client::new().request(method.clone(), format!("{}{path}", gw.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == reqwest::Method::POST {
        request = request.json(&json!({"model": model, "stream": false, "messages": []}));
    }
    request.send().await.unwrap().status().as_u16()
}

async fn chat(gw: &GatewayProcess, token: &str, model: &str) -> u16 {
    send(gw, reqwest::Method::POST, "/api/chat", Some(token), model).await
}

async fn pull(gw: &GatewayProcess, token: &str) -> u16 {
    send(
        gw,
        reqwest::Method::POST,
        "/api/pull",
        Some(token),
        "llama3.2:1b",
    )
    .await
}

fn header(seen: &SeenRequest, name: &str) -> Option<String> {
    seen.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

fn sub_of(token: &str) -> String {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap();
    claims["sub"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn exchanged_and_service_account_tokens_are_agents_and_lookalikes_are_people() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let mut config = common::gateway_config(&model);
    let issuer = config.issuers[0].issuer.clone();
    config.issuers[0].user_clients = vec!["attach-cli".into()];
    let mut admins = Rule::new(
        "admins",
        Subjects::groups(&["admins"]),
        &["*"],
        &[EndpointClass::Admin],
    );
    admins.human_only = true;
    let people = Rule::new(
        "people",
        Subjects::groups(&["ai-power-users", "staff"]),
        &["llama3.2:1b"],
        &[EndpointClass::Inference],
    );
    let agents = Rule::new(
        "agents",
        Subjects {
            agents: vec![AGENT_CLIENT.into(), "attach-m2m".into()],
            ..Subjects::default()
        },
        &["llama3.2:1b"],
        &[EndpointClass::Inference],
    );
    // A model only the attach-cli client "as an agent" may use: nobody is.
    let cli_bot = Rule::new(
        "cli-bot",
        Subjects {
            agents: vec!["attach-cli".into()],
            ..Subjects::default()
        },
        &["bot-only"],
        &[EndpointClass::Inference],
    );
    config.access.rules = vec![admins, people, agents, cli_bot];
    let gw = GatewayProcess::start(config).await.unwrap();

    // alice in person: the human-only admin rule applies, no agent.
    let alice = kc.token_for("alice").await.unwrap();
    assert_eq!(pull(&gw, &alice).await, 200, "{}", gw.log());
    assert_eq!(chat(&gw, &alice, "llama3.2:1b").await, 200);
    let seen = model.last().await.unwrap();
    assert_eq!(header(&seen, "x-attach-agent"), None);
    assert_eq!(
        header(&seen, "x-attach-issuer").as_deref(),
        Some(issuer.as_str())
    );

    // alice's token exchanged by attach-agent (sub alice, azp the agent, no
    // act): the agent acts for her.
    let exchanged = kc
        .exchange(AGENT_CLIENT, AGENT_SECRET, &alice, AUDIENCE)
        .await
        .unwrap();
    assert_eq!(sub_of(&exchanged), sub_of(&alice));
    assert_eq!(pull(&gw, &exchanged).await, 403, "not alice in person");
    assert_eq!(chat(&gw, &exchanged, "llama3.2:1b").await, 200);
    let seen = model.last().await.unwrap();
    assert_eq!(
        header(&seen, "x-attach-agent").as_deref(),
        Some(AGENT_CLIENT)
    );
    assert_eq!(header(&seen, "x-attach-user"), Some(sub_of(&alice)));

    // The service account's own token is a machine (its client_id says so).
    let m2m = kc.m2m_token().await.unwrap();
    assert_eq!(chat(&gw, &m2m, "llama3.2:1b").await, 200);
    let seen = model.last().await.unwrap();
    assert_eq!(
        header(&seen, "x-attach-agent").as_deref(),
        Some("attach-m2m")
    );
    assert_eq!(pull(&gw, &m2m).await, 403);
    // ... and exchanged by attach-agent, it is attach-agent acting.
    let m2m_exchanged = kc
        .exchange(AGENT_CLIENT, AGENT_SECRET, &m2m, AUDIENCE)
        .await
        .unwrap();
    assert_eq!(pull(&gw, &m2m_exchanged).await, 403);
    assert_eq!(chat(&gw, &m2m_exchanged, "llama3.2:1b").await, 200);
    let seen = model.last().await.unwrap();
    assert_eq!(
        header(&seen, "x-attach-agent").as_deref(),
        Some(AGENT_CLIENT)
    );

    // A person named service-account-attach-cli, signed in through
    // attach-cli, is a person: not the agent attach-cli.
    let lookalike = kc.token_for(LOOKALIKE_USER).await.unwrap();
    assert_eq!(chat(&gw, &lookalike, "llama3.2:1b").await, 200, "staff");
    assert_eq!(header(&model.last().await.unwrap(), "x-attach-agent"), None);
    assert_eq!(chat(&gw, &lookalike, "bot-only").await, 403);

    // Denying attach-agent refuses what it holds, wherever it acts, even
    // with no userClients to say the token was exchanged.
    let mut deny = common::gateway_config(&model);
    deny.access.rules = vec![Rule::new(
        "everyone",
        Subjects {
            any_authenticated: true,
            ..Subjects::default()
        },
        &["*"],
        &[EndpointClass::Inference, EndpointClass::Read],
    )];
    deny.access.denied_agents = vec![AGENT_CLIENT.into()];
    deny.access.allow_unknown_endpoints = true;
    let gw = GatewayProcess::start(deny).await.unwrap();
    assert_eq!(chat(&gw, &alice, "llama3.2:1b").await, 200);
    for token in [&exchanged, &m2m_exchanged] {
        assert_eq!(chat(&gw, token, "llama3.2:1b").await, 403);
        // An unknown endpoint is no way around it.
        assert_eq!(
            send(
                &gw,
                reqwest::Method::GET,
                "/not/a/known/path",
                Some(token),
                ""
            )
            .await,
            403
        );
    }
    let metrics = gw.metrics().await.unwrap();
    assert!(
        metric_sum(
            &metrics,
            "attach_requests_total{status=\"403\",reason=\"denied_agent\"}"
        ) >= 4.0,
        "{metrics}"
    );
}

fn minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

#[tokio::test]
async fn two_realms_with_an_alice_each_never_share_rules_budgets_or_headers() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let mut config = common::gateway_config(&model);
    let corp = kc.issuer(REALM);
    let partner = kc.issuer(OTHER_REALM);
    let mut partner_issuer =
        IssuerConfig::new(partner.clone(), vec![AUDIENCE.into()], Preset::Keycloak);
    // Both realms call their user "alice".
    partner_issuer.claims.user = Some("preferred_username".into());
    config.issuers[0].claims.user = Some("preferred_username".into());
    config.issuers.push(partner_issuer);
    let alice = || Subjects {
        users: vec!["alice".into()],
        ..Subjects::default()
    };
    config.access.rules = vec![
        Rule::new(
            "corp-alice",
            alice().of_issuer(&corp),
            &["*"],
            &[EndpointClass::Inference, EndpointClass::Read],
        ),
        Rule::new(
            "partner-alice",
            alice().of_issuer(&partner),
            &["*"],
            &[EndpointClass::Read],
        ),
    ];
    config.quotas.limits = vec![QuotaLimit {
        per: QuotaKey::User,
        requests_per_minute: Some(1),
        ..QuotaLimit::named("per-user")
    }];
    config.audit.path = Some(audit_path.clone());
    let corp_alice = kc.token_for("alice").await.unwrap();
    let partner_alice = kc.password_token(OTHER_REALM, "alice").await.unwrap();

    // The budgets are per UTC minute: a try that straddles a minute boundary
    // proves nothing and is run again on a fresh gateway (fresh counters).
    let mut proven = false;
    for _ in 0..3 {
        let gw = GatewayProcess::start(config.clone()).await.unwrap();
        // Partner's alice is not corp's alice for a rule.
        assert_eq!(chat(&gw, &partner_alice, "llama3.2:1b").await, 403);
        let before = minute();
        let first = chat(&gw, &corp_alice, "llama3.2:1b").await;
        let seen = model.last().await.unwrap();
        let corp_headers = (
            header(&seen, "x-attach-user"),
            header(&seen, "x-attach-issuer"),
        );
        // Corp's alice spent her one request; partner's alice has her own.
        let partner_read = send(
            &gw,
            reqwest::Method::GET,
            "/api/tags",
            Some(&partner_alice),
            "",
        )
        .await;
        let seen = model.last().await.unwrap();
        let partner_headers = (
            header(&seen, "x-attach-user"),
            header(&seen, "x-attach-issuer"),
        );
        let corp_again = chat(&gw, &corp_alice, "llama3.2:1b").await;
        if minute() != before {
            continue;
        }
        assert_eq!(
            (first, partner_read, corp_again),
            (200, 200, 429),
            "{}",
            gw.log()
        );
        assert_eq!(corp_headers, (Some("alice".into()), Some(corp.clone())));
        assert_eq!(
            partner_headers,
            (Some("alice".into()), Some(partner.clone()))
        );
        proven = true;
        break;
    }
    assert!(proven, "three minute boundaries in a row");

    // The audit lines say whose alice each was.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for issuer in [&corp, &partner] {
        assert!(
            lines.iter().any(|l| l["issuer"] == issuer.as_str()
                && l["user"] == "alice"
                && l["status"] == 200),
            "no allowed line for {issuer}'s alice: {lines:?}"
        );
    }
}

#[tokio::test]
async fn a_refused_exchange_is_asked_once_and_the_downstream_header_only_comes_from_the_gateway() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    const DOWNSTREAM: &str = "x-downstream-token";

    // A client Keycloak does not let exchange: refused, and remembered.
    let mut config = common::gateway_config(&model);
    let mut refused = TokenExchangeConfig::new("attach-no-exchange", "attach-no-exchange-secret");
    refused.audience = Some("llm-downstream".into());
    // Long enough that a loaded machine cannot outlast it in 30 requests.
    refused.refusal_cache_ttl = Duration::from_secs(120);
    config.issuers[0].token_exchange = Some(refused);
    let gw = GatewayProcess::start(config).await.unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    for _ in 0..30 {
        assert_eq!(
            send(&gw, reqwest::Method::GET, "/api/tags", Some(&alice), "").await,
            403
        );
    }
    let metrics = gw.metrics().await.unwrap();
    let asked = metric_sum(&metrics, "attach_token_exchanges_total{result=\"refused\"}");
    let remembered = metric_sum(
        &metrics,
        "attach_token_exchanges_total{result=\"refused_cached\"}",
    );
    assert_eq!((asked, remembered), (1.0, 29.0), "{metrics}");
    assert_eq!(model.request_count(), 0);
    drop(gw);

    // Two realms, one exchanging into a custom header, one not; a probe path.
    let mut config = common::gateway_config(&model);
    let mut exchange = TokenExchangeConfig::new("attach-gateway", "attach-gateway-secret");
    exchange.audience = Some("llm-downstream".into());
    exchange.header = DOWNSTREAM.into();
    config.issuers[0].token_exchange = Some(exchange);
    config.issuers.push(IssuerConfig::new(
        kc.issuer(OTHER_REALM),
        vec![AUDIENCE.into()],
        Preset::Keycloak,
    ));
    config.unauthenticated_paths = vec!["/".into()];
    let gw = GatewayProcess::start(config).await.unwrap();
    let forged = "Bearer forged-by-the-client";
    let http = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = http
            .get(format!("{}{path}", gw.url))
            .header(DOWNSTREAM, forged);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // The exchange runs: the model gets the gateway's token, not the client's.
    assert_eq!(
        get("/api/tags", Some(&alice)).await.unwrap().status(),
        200,
        "{}",
        gw.log()
    );
    let downstream = header(&model.last().await.unwrap(), DOWNSTREAM).unwrap();
    assert!(downstream.starts_with("Bearer ey"), "{downstream}");
    assert_ne!(downstream, forged);
    // No exchange for the other realm's token, nor for a probe: the header
    // is stripped all the same.
    let mallory = kc.password_token(OTHER_REALM, "mallory").await.unwrap();
    assert_eq!(
        get("/api/tags", Some(&mallory)).await.unwrap().status(),
        200
    );
    assert_eq!(header(&model.last().await.unwrap(), DOWNSTREAM), None);
    assert_eq!(get("/", None).await.unwrap().status(), 200);
    let seen = model.last().await.unwrap();
    assert_eq!(seen.path, "/");
    assert_eq!(header(&seen, DOWNSTREAM), None);
}

/// A token endpoint that never answers its first request and answers every
/// later one.
async fn first_request_hangs() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut first = true;
        while let Ok((mut s, _)) = listener.accept().await {
            let hang = std::mem::take(&mut first);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let _ = s.read(&mut buf).await;
                if hang {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let body =
                    r#"{"access_token":"downstream","token_type":"Bearer","expires_in":300}"#;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn no_quota_slot_is_held_while_the_token_endpoint_hangs() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let mut config = common::gateway_config(&model);
    let mut exchange = TokenExchangeConfig::new("attach-gateway", "attach-gateway-secret");
    exchange.audience = Some("llm-downstream".into());
    exchange.token_endpoint = Some(first_request_hangs().await);
    exchange.timeout = Duration::from_secs(4);
    config.issuers[0].token_exchange = Some(exchange);
    // One request at a time per user.
    config.quotas.limits = vec![QuotaLimit {
        concurrent: Some(1),
        ..QuotaLimit::named("one-at-a-time")
    }];
    let gw = GatewayProcess::start(config).await.unwrap();
    // Two tokens of the same user: two exchanges.
    let first = kc.token_for("bob").await.unwrap();
    let second = kc.token_for("bob").await.unwrap();
    assert_ne!(first, second);

    let url = format!("{}/api/tags", gw.url);
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let status = reqwest::Client::new()
            .get(url)
            .bearer_auth(first)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        (status, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!waiting.is_finished(), "the first exchange hangs");
    // bob's first request waits for the IdP; it holds no slot of his.
    assert_eq!(
        send(&gw, reqwest::Method::GET, "/api/tags", Some(&second), "").await,
        200,
        "{}",
        gw.log()
    );
    // The hanging exchange ends at its timeout, with 503.
    let (status, took) = waiting.await.unwrap();
    assert_eq!(status, 503);
    assert!(
        took < Duration::from_secs(10),
        "bounded by the timeout: {took:?}"
    );
}
