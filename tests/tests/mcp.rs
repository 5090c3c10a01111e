#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! MCP servers as protected backends (`engine: mcp`), with real MCP parts:
//! a Streamable HTTP server made with the official MCP Python SDK
//! (`MCPServer`, answering in SSE, or in JSON) behind the gateway, driven by
//! the official Python SDK client (protocol 2026-07-28 as it negotiates it,
//! and the initialize handshake with a session) and the official
//! TypeScript SDK client, with Keycloak tokens: a user's, a user's with a
//! step-up scope, a machine client's (an agent), one for another
//! audience, and an agent's acting for a person (an `act` chain, signed
//! here: Keycloak's token exchange adds no `act`).
//!
//! Shown: 401 naming the RFC 9728 metadata, and the metadata itself; a
//! token for another resource refused; allowed tools, resources and prompts
//! served, the others refused; `tools/list`, `resources/list` and
//! `prompts/list` trimmed; a tool that needs a scope refused naming it
//! (`insufficient_scope`), then served once the token has it; an agent
//! refused by a human-only rule, scope or not; a per-tool quota giving 429;
//! progress streamed through unbuffered; the caller's token never reaching
//! the server, its identity reaching it in `X-Attach-*`; case-variant keys,
//! mismatched `Mcp-Name` headers and mixed batches refused; audit lines
//! and metrics by tool and decision.

mod common;

use std::collections::BTreeSet;

use attach_sidecar::canonical::Engine;
use attach_sidecar::claims::Preset;
use attach_sidecar::config::{GatewayConfig, IssuerConfig};
use attach_sidecar::policy::{EndpointClass, Rule, Subjects};
use attach_sidecar::quota::{QuotaKey, QuotaLimit};
use attach_tests::gateway::GatewayProcess;
use attach_tests::keycloak::{KeycloakInfo as Keycloak, REALM, ResourceClients};
use attach_tests::mcp::{McpServer, Sdk, drive};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};

/// The resource the tokens are issued for: how clients name the server.
const RESOURCE: &str = "https://tools.attach.test/mcp";
/// The scope `deploy_app` needs.
const DEPLOY_SCOPE: &str = "mcp:deploy";

async fn user_token(kc: &Keycloak, clients: &ResourceClients, user: &str, scope: &str) -> String {
    kc.resource_user_token(clients, user, scope).await.unwrap()
}

async fn machine_token(kc: &Keycloak, clients: &ResourceClients) -> String {
    kc.resource_machine_token(clients, DEPLOY_SCOPE)
        .await
        .unwrap()
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into()
}

fn rule(name: &str, subjects: Subjects, targets: &[&str]) -> Rule {
    Rule::new(
        name,
        subjects,
        targets,
        &[EndpointClass::Inference, EndpointClass::Read],
    )
}

/// A second issuer, signing delegated tokens here: Keycloak's token
/// exchange adds no `act` claim, so an agent acting for a person is made
/// with the test key (as `agents.rs` does).
const LOCAL_ISSUER: &str = "https://agents.attach.test";

/// The local issuer's JWKS, written to `dir`.
fn local_jwks(dir: &std::path::Path) -> std::path::PathBuf {
    let mut jwk = Jwk::from_encoding_key(&common::local_key(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("local-1".into());
    let path = dir.join("jwks.json");
    std::fs::write(&path, json!({"keys": [jwk]}).to_string()).unwrap();
    path
}

/// Agent `agent-7`, through client `planner`, acting for alice, with the
/// deploy scope, for [`RESOURCE`].
fn delegated_token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": LOCAL_ISSUER, "aud": RESOURCE, "sub": "alice-id", "azp": "planner",
        "scope": DEPLOY_SCOPE, "act": {"sub": "agent-7"}, "iat": now, "exp": now + 300});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("local-1".into());
    jsonwebtoken::encode(&header, &claims, &common::local_key()).unwrap()
}

/// Adds the local issuer to `config`: every rule then names its issuer,
/// and the local issuer's callers may search, and deploy if human.
fn with_local_issuer(
    mut config: GatewayConfig,
    kc: &Keycloak,
    jwks: &std::path::Path,
) -> GatewayConfig {
    let mut local = IssuerConfig::new(LOCAL_ISSUER, vec![RESOURCE.into()], Preset::Generic);
    local.jwks_file = Some(jwks.to_owned());
    local.user_clients = vec!["planner".into()];
    config.issuers.push(local);
    for rule in &mut config.access.rules {
        rule.subjects.issuer = Some(kc.issuer(REALM));
    }
    for quota in &mut config.quotas.limits {
        if let Some(subjects) = &mut quota.subjects {
            subjects.issuer = Some(kc.issuer(REALM));
        }
    }
    let local_subjects = |subjects: Subjects| subjects.of_issuer(LOCAL_ISSUER);
    config.access.rules.push(rule(
        "delegated-search",
        local_subjects(Subjects {
            any_authenticated: true,
            ..Subjects::default()
        }),
        &["tool:search_docs"],
    ));
    let mut deployers = rule(
        "delegated-deployers",
        local_subjects(Subjects {
            scopes: vec![DEPLOY_SCOPE.into()],
            ..Subjects::default()
        }),
        &["tool:deploy_app"],
    );
    deployers.human_only = true;
    config.access.rules.push(deployers);
    config
}

/// The gateway in front of `server`: staff may search, read the docs and
/// use the summary prompt; holders of the deploy scope may deploy, if
/// human; the machine client may search, twice a minute.
fn config(
    kc: &Keycloak,
    server: &McpServer,
    clients: &ResourceClients,
    audit: &std::path::Path,
) -> GatewayConfig {
    let mut issuer = IssuerConfig::new(kc.issuer(REALM), vec![RESOURCE.into()], Preset::Keycloak);
    // Tokens this client obtains are people's own (humanOnly rules).
    issuer.user_clients = vec![clients.user.clone()];
    let mut config = GatewayConfig::new(vec![issuer]);
    config.upstream.url = server.url.clone();
    config.upstream.engine = Engine::Mcp;
    config.resource.resource = Some(RESOURCE.into());
    config.unauthenticated_paths = vec!["/healthz".into()];
    config.audit.path = Some(audit.to_owned());
    let mut deployers = rule(
        "deployers",
        Subjects {
            scopes: vec![DEPLOY_SCOPE.into()],
            ..Subjects::default()
        },
        &["tool:deploy_app"],
    );
    deployers.human_only = true;
    config.access.rules = vec![
        rule(
            "staff-tools",
            Subjects::groups(&["staff"]),
            &[
                "tool:search_docs",
                "tool:whoami",
                "tool:wait_for_client",
                "resource:docs://*",
                "prompt:summarize",
            ],
        ),
        deployers,
        rule(
            "machine-search",
            Subjects::clients(&[clients.machine.as_str()]),
            &["tool:search_docs"],
        ),
    ];
    config.quotas.limits = vec![QuotaLimit {
        per: QuotaKey::Client,
        subjects: Some(Subjects::clients(&[clients.machine.as_str()])),
        models: vec!["tool:search_docs".into()],
        requests_per_minute: Some(2),
        ..QuotaLimit::named("machine-searches")
    }];
    config
}

fn steps(flag: &std::path::Path) -> Vec<Value> {
    vec![
        json!({"op": "tools"}),
        json!({"op": "resources"}),
        json!({"op": "prompts"}),
        json!({"op": "call", "name": "search_docs", "args": {"query": "quotas"}}),
        json!({"op": "call", "name": "whoami"}),
        json!({"op": "call", "name": "delete_all"}),
        json!({"op": "call", "name": "deploy_app", "args": {"name": "web"}}),
        json!({"op": "read", "uri": "docs://readme"}),
        json!({"op": "read", "uri": "secrets://db-password"}),
        json!({"op": "prompt", "name": "summarize", "args": {"text": "x"}}),
        json!({"op": "prompt", "name": "internal"}),
        json!({"op": "wait_for_client", "flag": flag}),
    ]
}

fn names(step: &Value) -> BTreeSet<String> {
    assert_eq!(step["ok"], true, "{step}");
    step["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// What bob (staff) gets through `sdk`, whichever client, protocol and
/// answer format: only what the rules give him.
fn check_staff_report(sdk: Sdk, report: &Value, streams: bool) {
    assert!(report.get("connect_error").is_none(), "{sdk:?}: {report}");
    let s = report["steps"].as_array().unwrap();
    assert_eq!(
        names(&s[0]),
        set(&["search_docs", "whoami", "wait_for_client"]),
        "{sdk:?}: tools/list trimmed"
    );
    assert_eq!(
        names(&s[1]),
        set(&["docs://readme"]),
        "{sdk:?}: resources/list"
    );
    assert_eq!(names(&s[2]), set(&["summarize"]), "{sdk:?}: prompts/list");
    assert_eq!(s[3]["ok"], true, "{sdk:?}: {}", s[3]);
    assert_eq!(s[3]["text"], "found: quotas");
    // The server saw bob's identity, never his token.
    let who = &s[4]["json"];
    assert_eq!(s[4]["ok"], true, "{sdk:?}: {}", s[4]);
    assert_eq!(
        who["authorization"], false,
        "{sdk:?}: the token reached the server: {who}"
    );
    assert!(who["user"].as_str().is_some_and(|u| !u.is_empty()), "{who}");
    assert!(who["groups"].as_str().unwrap().contains("staff"), "{who}");
    for (i, what) in [
        (5, "delete_all"),
        (6, "deploy_app"),
        (8, "the secret"),
        (10, "the internal prompt"),
    ] {
        assert_eq!(s[i]["ok"], false, "{sdk:?}: {what} was served: {}", s[i]);
        assert!(!s[i].to_string().contains("hunter2"), "{}", s[i]);
    }
    assert_eq!(s[7]["text"], "the readme", "{sdk:?}: {}", s[7]);
    assert_eq!(s[9]["ok"], true, "{sdk:?}: {}", s[9]);
    // The progress reached the client while the call was still running.
    if !streams {
        return;
    }
    assert_eq!(
        s[11]["text"], "the client saw progress first",
        "{sdk:?}: the stream was held back: {}",
        s[11]
    );
}

#[tokio::test]
async fn mcp_servers_are_protected_tool_by_tool_for_both_official_sdks() {
    let kc = common::world().keycloak().unwrap();
    let clients = kc
        .resource_clients(RESOURCE, &[DEPLOY_SCOPE])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let sse = McpServer::start(false).await.unwrap();
    let json_server = McpServer::start(true).await.unwrap();
    let gateway = GatewayProcess::start(config(kc, &sse, &clients, &audit))
        .await
        .unwrap();
    let json_gateway = GatewayProcess::start(with_local_issuer(
        config(
            kc,
            &json_server,
            &clients,
            &dir.path().join("audit-json.jsonl"),
        ),
        kc,
        &local_jwks(dir.path()),
    ))
    .await
    .unwrap();
    let bob = user_token(kc, &clients, "bob", "openid").await;
    let http = reqwest::Client::new();
    let mcp = format!("{}/mcp", gateway.url);
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let post = |token: Option<&str>, body: &Value| {
        let mut request = http
            .post(&mcp)
            .header("accept", "application/json, text/event-stream")
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    };

    // No token: 401 naming the metadata document (RFC 9728), which names
    // Keycloak as the authorization server and the scopes tools need.
    let r = post(None, &initialize).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let metadata_url = "https://tools.attach.test/.well-known/oauth-protected-resource/mcp";
    assert!(
        challenge.contains(&format!(r#"resource_metadata="{metadata_url}""#)),
        "{challenge}"
    );
    let path = metadata_url.trim_start_matches("https://tools.attach.test");
    let metadata: Value = http
        .get(format!("{}{path}", gateway.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], RESOURCE);
    assert_eq!(metadata["authorization_servers"], json!([kc.issuer(REALM)]));
    assert!(
        metadata["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(DEPLOY_SCOPE)),
        "{metadata}"
    );

    // A token minted for another resource (the realm's model audience).
    let elsewhere = kc.token_for("bob").await.unwrap();
    let r = post(Some(&elsewhere), &initialize).send().await.unwrap();
    assert_eq!(r.status(), 401, "a token for another audience");

    // Bob through every client: what staff may use, and nothing else.
    // (A server answering in JSON cannot stream progress: the streaming
    // check is for SSE answers.)
    let json_mcp = format!("{}/mcp", json_gateway.url);
    for (sdk, url, streams) in [
        (Sdk::Python { mode: "auto" }, &mcp, true),
        (Sdk::Python { mode: "legacy" }, &mcp, true),
        (Sdk::TypeScript, &mcp, true),
        (Sdk::Python { mode: "legacy" }, &json_mcp, false),
        (Sdk::TypeScript, &json_mcp, false),
    ] {
        let flag = dir.path().join(format!("flag-{}", rand_suffix()));
        let mut plan = steps(&flag);
        if !streams {
            plan.pop();
        }
        let report = drive(sdk, url, &bob, &plan).await.unwrap();
        check_staff_report(sdk, &report, streams);
    }
    // The Python client negotiated the newest protocol where it could.
    let report = drive(
        Sdk::Python { mode: "auto" },
        &mcp,
        &bob,
        &[json!({"op": "tools"})],
    )
    .await
    .unwrap();
    assert_eq!(report["protocol_version"], "2026-07-28", "{report}");

    // The tool that needs a scope: refused naming it, so a client can ask.
    let deploy = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "deploy_app", "arguments": {"name": "web"}}});
    let r = post(Some(&bob), &deploy).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains(&format!(
            r#"error="insufficient_scope", scope="{DEPLOY_SCOPE}""#
        )),
        "{challenge}"
    );
    // Alice asks for the scope (step-up): she may deploy, and her tool
    // list shows the one tool she may use.
    let alice = user_token(kc, &clients, "alice", &format!("openid {DEPLOY_SCOPE}")).await;
    for sdk in [Sdk::Python { mode: "legacy" }, Sdk::TypeScript] {
        let report = drive(
            sdk,
            &mcp,
            &alice,
            &[
                json!({"op": "tools"}),
                json!({"op": "call", "name": "deploy_app", "args": {"name": "web"}}),
            ],
        )
        .await
        .unwrap();
        let s = report["steps"].as_array().unwrap();
        assert_eq!(names(&s[0]), set(&["deploy_app"]), "{sdk:?}: {report}");
        assert_eq!(s[1]["text"], "deployed web", "{sdk:?}: {report}");
    }

    // The machine client (an agent acting for itself) holds the scope, but
    // the rule is human-only: refused, and no scope is named, since none
    // would help. It may search, twice a minute.
    let agent = machine_token(kc, &clients).await;
    let r = post(Some(&agent), &deploy).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("www-authenticate").is_none(), "{r:?}");
    let report = drive(
        Sdk::Python { mode: "legacy" },
        &mcp,
        &agent,
        &[
            json!({"op": "tools"}),
            json!({"op": "call", "name": "search_docs", "args": {"query": "a"}}),
            json!({"op": "call", "name": "search_docs", "args": {"query": "b"}}),
            json!({"op": "call", "name": "search_docs", "args": {"query": "c"}}),
        ],
    )
    .await
    .unwrap();
    let s = report["steps"].as_array().unwrap();
    assert_eq!(names(&s[0]), set(&["search_docs"]), "{report}");
    assert_eq!(s[1]["ok"], true, "{report}");
    assert_eq!(s[2]["ok"], true, "{report}");
    assert_eq!(s[3]["ok"], false, "the third search in a minute: {report}");
    let search = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "search_docs", "arguments": {"query": "d"}}});
    let r = post(Some(&agent), &search).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));

    // An agent acting for alice (an `act` chain), holding the scope: it may
    // search, but the human-only deploy rule refuses it, naming no scope.
    let delegated = delegated_token();
    let report = drive(
        Sdk::Python { mode: "legacy" },
        &json_mcp,
        &delegated,
        &[
            json!({"op": "tools"}),
            json!({"op": "call", "name": "search_docs", "args": {"query": "a"}}),
            json!({"op": "call", "name": "deploy_app", "args": {"name": "web"}}),
        ],
    )
    .await
    .unwrap();
    let s = report["steps"].as_array().unwrap();
    assert_eq!(names(&s[0]), set(&["search_docs"]), "{report}");
    assert_eq!(s[1]["ok"], true, "{report}");
    assert_eq!(s[2]["ok"], false, "the agent deployed: {report}");
    let r = http
        .post(&json_mcp)
        .bearer_auth(&delegated)
        .json(&deploy)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("www-authenticate").is_none(), "{r:?}");

    // What a server could read differently is refused before it.
    for (body, reason) in [
        (
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"search_docs","Name":"delete_all"}}"#,
            "key_collision",
        ),
        (
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"search_docs"},"params":{"name":"delete_all"}}"#,
            "duplicate_key",
        ),
    ] {
        let r = http
            .post(&mcp)
            .bearer_auth(&bob)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["reason"], reason, "{body}");
    }
    // The 2026-07-28 routing headers must say what the body says.
    let r = post(Some(&bob), &search)
        .header("mcp-method", "tools/call")
        .header("mcp-name", "delete_all")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A batch passes only whole.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "delete_all"}},
    ]);
    let r = post(Some(&bob), &batch).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // Methods the gateway does not know are denied.
    let r = post(
        Some(&bob),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tasks/list"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);

    // Metrics count tool calls by tool and decision.
    let metrics = gateway.metrics().await.unwrap();
    let allowed = attach_tests::gateway::metric_sum(
        &metrics,
        r#"attach_mcp_messages_total{method="tools/call",target="tool:search_docs",decision="allow"}"#,
    );
    assert!(allowed >= 3.0, "{metrics}");
    let denied = attach_tests::gateway::metric_sum(
        &metrics,
        r#"attach_mcp_messages_total{method="tools/call",target="tool:delete_all",decision="deny"}"#,
    );
    assert!(denied >= 3.0, "{metrics}");

    // Audit lines name the user, the tool and the decision, never the
    // arguments (not asked for here).
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused = lines
        .iter()
        .find(|l| l["model"] == "tool:delete_all" && l["mcp_method"] == "tools/call")
        .expect("an audit line for the refused call");
    assert_eq!(refused["decision"], "deny");
    assert!(refused["user"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(lines.iter().all(|l| l.get("arguments").is_none()));
    let agent_line = lines
        .iter()
        .find(|l| l["model"] == "tool:deploy_app" && l["client"] == clients.machine.as_str())
        .expect("an audit line for the agent's refused deploy");
    assert_eq!(agent_line["decision"], "deny");
    assert!(agent_line["agent"].is_array(), "{agent_line}");
}
