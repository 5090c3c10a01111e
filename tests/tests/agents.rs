#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Agents as callers of their own: a user token (Keycloak, a human acting
//! directly), an M2M token (Keycloak `client_credentials`, a machine client
//! acting alone) and a delegated token carrying `act` (RFC 8693 §4.1).
//! Keycloak's token exchange does not add `act`, so the delegated tokens are
//! signed here, by a second issuer whose keys the gateway reads from a file.
//! Checked: `X-Attach-Agent` beside `X-Attach-User`, rules by agent (the
//! current actor's, not the chain's), a human-only admin rule, a person's
//! token held by another client, malformed delegations (401), denied agents,
//! a quota per agent, and audit lines naming both the user and the agent.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use attach_sidecar::claims::Preset;
use attach_sidecar::config::IssuerConfig;
use attach_sidecar::policy::{EndpointClass, Rule, Subjects};
use attach_sidecar::quota::{QuotaKey, QuotaLimit};
use attach_tests::gateway::GatewayProcess;
use attach_tests::keycloak::AUDIENCE;
use attach_tests::mock_model::MockModel;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

const LOCAL_ISSUER: &str = "https://agents.attach.test";

/// A token of the local issuer: alice (an admin), through `actors`.
fn delegated(actors: &[&str]) -> String {
    let mut act = serde_json::Value::Null;
    for actor in actors.iter().rev() {
        act = if act.is_null() {
            json!({"sub": actor})
        } else {
            json!({"sub": actor, "act": act})
        };
    }
    local_token(json!({"azp": "planner", "act": act}))
}

/// A token of the local issuer for alice (an admin) with `extra` claims.
fn local_token(extra: serde_json::Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({
        "iss": LOCAL_ISSUER, "aud": AUDIENCE, "sub": "alice-id",
        "groups": ["admins", "ai-power-users"], "iat": now, "exp": now + 300,
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("local-1".into());
    jsonwebtoken::encode(&header, &claims, &common::local_key()).unwrap()
}

#[tokio::test]
async fn agents_are_identified_authorised_limited_and_audited() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut jwk = Jwk::from_encoding_key(&common::local_key(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("local-1".into());
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, json!({"keys": [jwk]}).to_string()).unwrap();
    let audit_path = dir.path().join("audit.jsonl");

    let mut config = common::gateway_config(&model);
    let kc_issuer = config.issuers[0].issuer.clone();
    // People sign in through attach-cli (Keycloak) or planner (local).
    config.issuers[0].user_clients = vec!["attach-cli".into()];
    let mut local = IssuerConfig::new(LOCAL_ISSUER, vec![AUDIENCE.into()], Preset::Keycloak);
    local.jwks_file = Some(jwks_file);
    local.user_clients = vec!["planner".into()];
    config.issuers.push(local);
    // Two issuers: every rule says whose names it uses.
    let rule = |name: &str,
                issuer: &str,
                subjects: Subjects,
                models: &[&str],
                endpoints: &[EndpointClass]| {
        Rule::new(name, subjects.of_issuer(issuer), models, endpoints)
    };
    let inference = [EndpointClass::Inference, EndpointClass::Read];
    let mut admins = rule(
        "admins",
        &kc_issuer,
        Subjects::groups(&["admins"]),
        &["*"],
        &[EndpointClass::Admin],
    );
    admins.human_only = true;
    let mut local_admins = rule(
        "local-admins",
        LOCAL_ISSUER,
        Subjects::groups(&["admins"]),
        &["*"],
        &[EndpointClass::Admin],
    );
    local_admins.human_only = true;
    let agents = |names: &[&str]| Subjects {
        agents: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Subjects::default()
    };
    let batch = rule(
        "batch",
        &kc_issuer,
        agents(&["attach-m2m"]),
        &["*"],
        &inference,
    );
    let local_batch = rule(
        "local-batch",
        LOCAL_ISSUER,
        agents(&["summariser", "drafter"]),
        &["llama3.2:1b"],
        &inference,
    );
    // Only for the planner acting now (not for whoever acts for it).
    let planner = rule(
        "planner",
        LOCAL_ISSUER,
        agents(&["planner"]),
        &["planner-model"],
        &[EndpointClass::Inference],
    );
    let people = rule(
        "people",
        &kc_issuer,
        Subjects::groups(&["ai-power-users", "staff"]),
        &["*"],
        &inference,
    );
    config.access.rules = vec![admins, local_admins, batch, local_batch, planner, people];
    config.access.denied_agents = vec!["rogue".into()];
    config.quotas.limits = vec![QuotaLimit {
        per: QuotaKey::Agent,
        requests_per_minute: Some(2),
        ..QuotaLimit::named("per-agent")
    }];
    config.audit.path = Some(audit_path.clone());
    let gw = GatewayProcess::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let chat_with = |token: String, model: &'static str| {
        let http = http.clone();
        let url = format!("{}/api/chat", gw.url);
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"model": model, "stream": false, "messages": []}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let chat = |token: String| chat_with(token, "llama3.2:1b");
    let pull = |token: String| {
        let http = http.clone();
        let url = format!("{}/api/pull", gw.url);
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"model": "llama3.2:1b"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };

    // alice herself: human, no agent header; the human-only admin rule applies.
    let alice = kc.token_for("alice").await.unwrap();
    assert_eq!(chat(alice.clone()).await, 200);
    let seen = model.last().await.unwrap();
    assert!(seen.headers.get("x-attach-agent").is_none());
    assert_eq!(pull(alice.clone()).await, 200);

    // A machine client acting alone (Keycloak client_credentials).
    let m2m = kc.m2m_token().await.unwrap();
    assert_eq!(chat(m2m.clone()).await, 200, "the batch rule, by agent");
    assert_eq!(
        model.last().await.unwrap().headers["x-attach-agent"],
        "attach-m2m"
    );
    assert_eq!(pull(m2m.clone()).await, 403, "no admin for machines");

    // alice through an agent: the agent acts, alice is the user.
    let via_agent = delegated(&["summariser"]);
    assert_eq!(chat(via_agent.clone()).await, 200);
    let seen = model.last().await.unwrap();
    assert_eq!(seen.headers["x-attach-agent"], "summariser");
    assert_eq!(seen.headers["x-attach-user"], "alice-id");
    assert_eq!(
        pull(via_agent.clone()).await,
        403,
        "admin needs a human acting directly"
    );

    // A denied agent anywhere in the chain.
    assert_eq!(chat(delegated(&["summariser", "rogue"])).await, 403);

    // The summariser acting for the planner does not borrow the planner's
    // grant; the planner acting itself has it.
    assert_eq!(
        chat_with(delegated(&["summariser", "planner"]), "planner-model").await,
        403
    );
    assert_eq!(
        chat_with(delegated(&["planner"]), "planner-model").await,
        200
    );

    // alice's token held by drafter with no act (exchanged): drafter acts
    // for her, so no human-only admin.
    let held = local_token(json!({"azp": "drafter"}));
    assert_eq!(pull(held.clone()).await, 403, "not alice in person");
    assert_eq!(chat(held).await, 200, "drafter's own grant");
    assert_eq!(
        model.last().await.unwrap().headers["x-attach-agent"],
        "drafter"
    );

    // Malformed or overlong delegation is refused, never read as alice.
    let deep: Vec<String> = (0..9).map(|i| format!("agent-{i}")).collect();
    let deep: Vec<&str> = deep.iter().map(String::as_str).collect();
    for token in [
        local_token(json!({"azp": "planner", "act": ["summariser"]})),
        local_token(json!({"azp": "planner", "act": {"sub": 7}})),
        delegated(&deep),
    ] {
        assert_eq!(pull(token).await, 401);
    }

    // Two requests a minute per agent: the summariser has used one plus one
    // refused pull (refusals are not admitted), so one more, then 429;
    // the machine client and alice have their own budgets, or none.
    assert_eq!(chat(via_agent.clone()).await, 200);
    assert_eq!(chat(via_agent.clone()).await, 429);
    assert_eq!(chat(m2m.clone()).await, 200);
    assert_eq!(chat(m2m).await, 429);
    assert_eq!(chat(alice).await, 200, "no agent, no per-agent budget");

    // The audit lines trace every agent action back to the user.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_agent = lines
        .iter()
        .find(|l| l["agent"] == json!(["summariser"]) && l["status"] == 200)
        .unwrap();
    assert_eq!(by_agent["user"], "alice-id");
    let denied = lines
        .iter()
        .find(|l| l["reason"] == "denied_agent")
        .unwrap();
    assert_eq!(denied["agent"], json!(["summariser", "rogue"]));
    assert_eq!(denied["status"], 403);
    assert!(lines.iter().any(|l| l["agent"] == json!(["attach-m2m"])));
}
