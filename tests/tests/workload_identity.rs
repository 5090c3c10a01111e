#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Workloads call models with their ServiceAccount tokens: the world's real
//! kube-apiserver mints them (TokenRequest, audience-bound, short-lived),
//! and publishes the keys that sign them (`/openid/v1/jwks`), which the
//! gateway reads from a file as the operator's relay would write it.
//! Checked: a rule naming one ServiceAccount in one namespace, a rule naming
//! every ServiceAccount of a namespace (the API server's own group), another
//! backend's audience (401), the same account name in another namespace
//! (403), workloads are never people (`humanOnly`), a quota per account
//! (429), the identity headers, and what the gateway cannot see offline: a
//! deleted account's token works until it expires, and it expires soon.
//! And a workload's token exchanged (RFC 8693) at the real Keycloak, which
//! federates the cluster's issuer, so that a model behind a second gateway
//! sees a token the IdP issued: judged before the exchange, refused for a
//! client the IdP does not trust, never logged.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use attach_sidecar::claims::Preset;
use attach_sidecar::config::{GatewayConfig, IssuerConfig};
use attach_sidecar::policy::{EndpointClass, Rule, Subjects};
use attach_sidecar::quota::{QuotaKey, QuotaLimit};
use attach_tests::gateway::GatewayProcess;
use attach_tests::mock_model::MockModel;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use serde_json::json;

/// The audience of the backend under test, and of another backend.
const AUDIENCE: &str = "attach.dev/models/embed";
const OTHER_AUDIENCE: &str = "attach.dev/models/chat";

fn minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

struct Cluster {
    client: kube::Client,
}

impl Cluster {
    async fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{:08x}", rand_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        name
    }

    async fn service_account(&self, ns: &str, name: &str) {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
    }

    /// A token of `ns`/`name` for `audience`, as a projected volume holds
    /// one (the shortest lifetime the API server grants: 10 minutes).
    async fn token(&self, ns: &str, name: &str, audience: &str) -> String {
        self.token_bound(ns, name, audience, None).await
    }

    /// A token of `ns`/`name` for `audience`, bound to `pod` when given, as
    /// the kubelet asks for a pod's projected token.
    async fn token_bound(&self, ns: &str, name: &str, audience: &str, pod: Option<&Pod>) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.into()],
                expiration_seconds: Some(600),
                bound_object_ref: pod.map(|pod| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..TokenRequest::default()
        };
        Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token
    }

    /// The issuer the API server names in its discovery document, and its
    /// signing keys: what the operator relays into the rendered config.
    async fn issuer_and_keys(&self) -> (String, serde_json::Value) {
        let get = |path: &str| {
            let client = self.client.clone();
            let req = http::Request::get(path).body(Vec::new()).unwrap();
            async move { client.request::<serde_json::Value>(req).await.unwrap() }
        };
        let discovery = get("/.well-known/openid-configuration").await;
        let keys = get("/openid/v1/jwks").await;
        (discovery["issuer"].as_str().unwrap().to_owned(), keys)
    }
}

fn rand_suffix() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

/// The token's payload, unverified (to read what the API server wrote).
fn payload(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn workloads_reach_models_with_their_service_account_tokens_and_nothing_else() {
    let cluster = Cluster {
        client: common::world().client().await.unwrap(),
    };
    let search = cluster.namespace("search").await;
    let agents = cluster.namespace("agents").await;
    let elsewhere = cluster.namespace("elsewhere").await;
    cluster.service_account(&search, "rag-indexer").await;
    cluster.service_account(&elsewhere, "rag-indexer").await;
    let (issuer, keys) = cluster.issuer_and_keys().await;
    assert!(
        keys["keys"].as_array().is_some_and(|k| !k.is_empty()),
        "{keys}"
    );

    let model = MockModel::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, keys.to_string()).unwrap();
    let mut cluster_issuer = IssuerConfig::new(&issuer, vec![AUDIENCE.into()], Preset::Kubernetes);
    cluster_issuer.jwks_file = Some(jwks_file);
    let mut config = GatewayConfig::new(vec![cluster_issuer]);
    config.upstream.url = model.url();
    let indexer = format!("system:serviceaccount:{search}:rag-indexer");
    let agents_group = format!("system:serviceaccounts:{agents}");
    let indexer_rule = Rule::new(
        "rag-indexer",
        Subjects {
            users: vec![indexer.clone()],
            ..Subjects::default()
        },
        &["nomic-embed*"],
        &[EndpointClass::Inference],
    );
    let agents_rule = Rule::new(
        "agents",
        Subjects::groups(&[&agents_group]),
        &["*"],
        &[EndpointClass::Inference, EndpointClass::Read],
    );
    // Every ServiceAccount, but only people: so no workload.
    let mut admins = Rule::new(
        "admins",
        Subjects::groups(&["system:serviceaccounts"]),
        &["*"],
        &[EndpointClass::Admin],
    );
    admins.human_only = true;
    config.access.rules = vec![indexer_rule, agents_rule, admins];
    config.quotas.limits = vec![QuotaLimit {
        per: QuotaKey::User,
        subjects: Some(Subjects::groups(&[&agents_group])),
        requests_per_minute: Some(1),
        ..QuotaLimit::named("per-agent-account")
    }];
    let gw = GatewayProcess::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let call = |path: &'static str, token: String, body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{}{path}", gw.url);
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let embed = |token: String| {
        call(
            "/api/embed",
            token,
            json!({"model": "nomic-embed-text", "input": "hello"}),
        )
    };
    let chat = |token: String| {
        call(
            "/api/chat",
            token,
            json!({"model": "llama3.2:1b", "stream": false, "messages": []}),
        )
    };

    // The indexer, with a token for this backend: its rule, its identity.
    let token = cluster.token(&search, "rag-indexer", AUDIENCE).await;
    assert_eq!(embed(token.clone()).await, 200, "{}", gw.log());
    let seen = model.last().await.unwrap();
    assert_eq!(seen.headers["x-attach-user"], indexer);
    assert_eq!(seen.headers["x-attach-agent"], indexer, "a workload acts");
    assert_eq!(seen.headers["x-attach-tenant"], search);
    assert_eq!(seen.headers["x-attach-issuer"], issuer);
    assert!(seen.headers.get("authorization").is_none());
    // A pod's token (bound to it, as a projected volume's is): the model
    // learns which pod and node call, from the token alone.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "rag-indexer-0"},
        "spec": {"serviceAccountName": "rag-indexer", "nodeName": "node-x",
                 "containers": [{"name": "indexer", "image": "indexer"}]}
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(cluster.client.clone(), &search)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let bound = cluster
        .token_bound(&search, "rag-indexer", AUDIENCE, Some(&pod))
        .await;
    assert_eq!(embed(bound).await, 200, "{}", gw.log());
    let seen = model.last().await.unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(seen.headers["x-attach-claims"].as_bytes())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["user"], indexer);
    assert_eq!(claims["pod"], "rag-indexer-0");
    assert_eq!(claims["node"], "node-x");
    // Only the models its rule names.
    assert_eq!(chat(token.clone()).await, 403);

    // The same account's token for another backend.
    let other = cluster.token(&search, "rag-indexer", OTHER_AUDIENCE).await;
    assert_eq!(embed(other).await, 401);
    // The same account name in another namespace is another account.
    let lookalike = cluster.token(&elsewhere, "rag-indexer", AUDIENCE).await;
    assert_eq!(embed(lookalike).await, 403);

    // Any account of the agents namespace, by the API server's group; but
    // never as a person, so not the human-only admin rule.
    cluster.service_account(&agents, "planner").await;
    let planner = cluster.token(&agents, "planner", AUDIENCE).await;
    assert_eq!(chat(planner.clone()).await, 200);
    let pull = call("/api/pull", planner, json!({"model": "llama3.2:1b"})).await;
    assert_eq!(pull, 403, "a workload is no person");

    // One request a minute per agent account; each try takes a fresh
    // account, so a minute boundary mid-try only costs a retry.
    let mut proven = false;
    for i in 0..3 {
        let name = format!("batch-{i}");
        cluster.service_account(&agents, &name).await;
        let batch = cluster.token(&agents, &name, AUDIENCE).await;
        let before = minute();
        let first = chat(batch.clone()).await;
        let second = chat(batch).await;
        if minute() != before {
            continue;
        }
        assert_eq!((first, second), (200, 429), "{}", gw.log());
        proven = true;
        break;
    }
    assert!(proven, "three minute boundaries in a row");

    // Offline, the gateway cannot see a deleted account: its token works
    // until it expires, and the API server grants such tokens for minutes
    // (10 here, projected volumes default to an hour and rotate them).
    let claims = payload(&token);
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(lifetime <= 600, "{claims}");
    Api::<ServiceAccount>::namespaced(cluster.client.clone(), &search)
        .delete("rag-indexer", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(embed(token).await, 200, "accepted until exp: the limit");

    for ns in [search, agents, elsewhere] {
        let _ = Api::<Namespace>::all(cluster.client.clone())
            .delete(&ns, &DeleteParams::default())
            .await;
    }
}

/// The operator's part: a `ClusterIdentityProvider` with the `kubernetes`
/// preset is checked against the API server (its issuer, its keys), the
/// keys are relayed into each backend's rendered config, each backend
/// names its own audience, and a gateway running that config takes the
/// API server's tokens for that backend only.
#[tokio::test]
async fn the_operator_relays_the_cluster_keys_and_binds_each_backend_to_its_audience() {
    use attach_operator::crd::{ClusterIdentityProvider, LLMBackend};
    let chart = common::install_chart().await;
    let cluster = Cluster {
        client: common::world().client().await.unwrap(),
    };
    let (issuer, _) = cluster.issuer_and_keys().await;
    let ns = chart.namespace("workloads").await;
    cluster.service_account(&ns, "rag-indexer").await;
    let idp = format!("cluster-{:08x}", rand_suffix());
    let wrong = format!("{idp}-wrong");
    let audience = format!("attach.dev/{ns}/embed");
    common::kubectl_apply(&format!(
        "apiVersion: attach.dev/v1alpha1\nkind: ClusterIdentityProvider\nmetadata: {{name: {idp}}}\nspec: {{issuer: \"{issuer}\", audiences: [unused], preset: kubernetes}}\n---\n\
         apiVersion: attach.dev/v1alpha1\nkind: ClusterIdentityProvider\nmetadata: {{name: {wrong}}}\nspec: {{issuer: \"https://not-this-cluster.example\", audiences: [unused], preset: kubernetes}}\n---\n\
         apiVersion: attach.dev/v1alpha1\nkind: LLMBackend\nmetadata: {{name: embed, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: embed}}}}\n  engine: ollama\n  port: 11434\n  identityProviderRefs: [{{kind: ClusterIdentityProvider, name: {idp}, audiences: [\"{audience}\"]}}]\n  access:\n    rules:\n      - {{name: indexer, subjects: {{users: [\"system:serviceaccount:{ns}:rag-indexer\"]}}, endpoints: [inference]}}\n---\n\
         apiVersion: attach.dev/v1alpha1\nkind: LLMBackend\nmetadata: {{name: unbound, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: unbound}}}}\n  engine: ollama\n  port: 11434\n  identityProviderRefs: [{{kind: ClusterIdentityProvider, name: {idp}}}]\n"
    ));

    // The IdP: Ready with the API server's keys; one naming another issuer
    // is not, and says why.
    let idps: Api<ClusterIdentityProvider> = Api::all(cluster.client.clone());
    let ready = common::wait_ready(&idps, &idp, "True").await;
    let status = ready.status.unwrap();
    assert!(status.key_count.unwrap() >= 1, "{status:?}");
    let relayed: serde_json::Value =
        serde_json::from_str(status.relayed_keys.as_deref().unwrap()).unwrap();
    let not_ready = common::wait_ready(&idps, &wrong, "False").await;
    let condition = common::condition(&not_ready, "Ready").unwrap();
    assert_eq!(condition["reason"], "IssuerMismatch", "{condition}");
    assert!(
        condition["message"].as_str().unwrap().contains(&issuer),
        "{condition}"
    );

    // A backend without its own audience fails closed, and says so.
    let backends: Api<LLMBackend> = Api::namespaced(cluster.client.clone(), &ns);
    let unbound = common::wait_ready(&backends, "unbound", "False").await;
    let condition = common::condition(&unbound, "Ready").unwrap();
    assert_eq!(condition["reason"], "AudienceRequired", "{condition}");

    // The bound backend's config carries the keys and its audience only.
    common::wait_ready(&backends, "embed", "True").await;
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(cluster.client.clone(), &ns)
        .get("embed-attach-gateway")
        .await
        .unwrap();
    let yaml = &cm.data.unwrap()["gateway.yaml"];
    let mut config: GatewayConfig = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(config.issuers[0].audiences, std::slice::from_ref(&audience));
    assert_eq!(config.issuers[0].jwks.as_ref(), Some(&relayed));
    assert_eq!(config.issuers[0].claims.preset, Preset::Kubernetes);

    // That config, in front of a model: the API server's token for this
    // backend passes; one for another backend does not.
    let model = MockModel::start().await.unwrap();
    config.upstream.url = model.url();
    let gw = GatewayProcess::start(config).await.unwrap();
    let embed = |token: String| {
        let url = format!("{}/api/embed", gw.url);
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"model": "nomic-embed-text", "input": "hi"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let token = cluster.token(&ns, "rag-indexer", &audience).await;
    assert_eq!(embed(token).await, 200, "{}", gw.log());
    assert_eq!(
        model.last().await.unwrap().headers["x-attach-user"],
        format!("system:serviceaccount:{ns}:rag-indexer")
    );
    let other = cluster
        .token(&ns, "rag-indexer", &format!("attach.dev/{ns}/chat"))
        .await;
    assert_eq!(embed(other).await, 401);

    for name in [&idp, &wrong] {
        let _ = idps.delete(name, &DeleteParams::default()).await;
    }
}

/// The audience of a token the model behind the second gateway accepts.
const DOWNSTREAM: &str = attach_tests::keycloak::Federation::AUDIENCE;

#[tokio::test]
async fn a_workload_token_is_exchanged_at_the_idp_so_the_next_gateway_sees_an_idp_token() {
    use attach_sidecar::exchange::{SubjectTokenType, TokenExchangeConfig};
    use attach_tests::gateway::metric_sum;
    use attach_tests::keycloak::Federation;

    let world = common::world();
    let cluster = Cluster {
        client: world.client().await.unwrap(),
    };
    let search = cluster.namespace("search").await;
    let elsewhere = cluster.namespace("elsewhere").await;
    cluster.service_account(&search, "rag-indexer").await;
    cluster.service_account(&elsewhere, "rag-indexer").await;
    let (issuer, keys) = cluster.issuer_and_keys().await;
    let key_pem = world.control_plane().unwrap().service_account_public_key();
    let key_pem = std::fs::read_to_string(&key_pem).unwrap();
    let kc = world.keycloak().unwrap();
    let realm = format!("workloads-{:08x}", rand_suffix());
    let federation = kc
        .federate(&realm, "cluster", &issuer, &key_pem)
        .await
        .unwrap();

    // The second gateway, in front of the model: it trusts the IdP alone.
    let model = MockModel::start().await.unwrap();
    let idp_issuer = IssuerConfig::new(
        &federation.issuer,
        vec![DOWNSTREAM.into()],
        Preset::Keycloak,
    );
    let mut inner = GatewayConfig::new(vec![idp_issuer]);
    inner.upstream.url = model.url();
    // So the test can read, at the model, the token the IdP issued.
    inner.identity.forward_authorization = true;
    inner.access.rules = vec![Rule::new(
        "exchanged-workloads",
        Subjects {
            clients: vec![Federation::EXCHANGER.into()],
            ..Subjects::default()
        },
        &["nomic-embed*"],
        &[EndpointClass::Inference],
    )];
    let inner = GatewayProcess::start(inner).await.unwrap();

    // The first gateway, where workloads call: it judges their own token,
    // then exchanges it at the IdP as the client `client`.
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, keys.to_string()).unwrap();
    let outer = |client: &str| {
        let mut cluster_issuer =
            IssuerConfig::new(&issuer, vec![AUDIENCE.into()], Preset::Kubernetes);
        cluster_issuer.jwks_file = Some(jwks_file.clone());
        let mut exchange = TokenExchangeConfig::new(client, federation.secret.as_str());
        exchange.token_endpoint = Some(federation.token_endpoint.clone());
        exchange.audience = Some(DOWNSTREAM.into());
        exchange.subject_token_type = SubjectTokenType::Jwt;
        exchange.subject_issuer = Some(federation.alias.clone());
        cluster_issuer.token_exchange = Some(exchange);
        let mut config = GatewayConfig::new(vec![cluster_issuer]);
        config.upstream.url = inner.url.clone();
        config.access.rules = vec![Rule::new(
            "rag-indexer",
            Subjects {
                users: vec![format!("system:serviceaccount:{search}:rag-indexer")],
                ..Subjects::default()
            },
            &["nomic-embed*"],
            &[EndpointClass::Inference],
        )];
        GatewayProcess::start(config)
    };
    let gw = outer(Federation::EXCHANGER).await.unwrap();
    let http = reqwest::Client::new();
    let embed = |url: String, token: String| {
        let http = http.clone();
        async move {
            http.post(format!("{url}/api/embed"))
                .bearer_auth(token)
                .json(&json!({"model": "nomic-embed-text", "input": "hello"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    // The indexer calls with its ServiceAccount token; the model behind the
    // second gateway gets a token the IdP issued for it, naming the account.
    let token = cluster.token(&search, "rag-indexer", AUDIENCE).await;
    assert_eq!(
        embed(gw.url.clone(), token.clone()).await,
        200,
        "{}\n{}",
        gw.log(),
        inner.log()
    );
    let seen = model.last().await.unwrap();
    let forwarded = seen.headers["authorization"].to_str().unwrap();
    let exchanged = forwarded.strip_prefix("Bearer ").unwrap();
    assert_ne!(exchanged, token, "the workload's own token goes no further");
    let claims = payload(exchanged);
    assert_eq!(claims["iss"], federation.issuer, "{claims}");
    assert!(
        claims["aud"]
            .as_array()
            .is_some_and(|aud| aud.iter().any(|a| a == DOWNSTREAM)),
        "{claims}"
    );
    assert_eq!(
        claims["preferred_username"],
        format!("system:serviceaccount:{search}:rag-indexer"),
        "the IdP's user is the workload"
    );
    assert_eq!(claims["azp"], Federation::EXCHANGER);
    // The second gateway verified it, and says so to the model.
    assert_eq!(seen.headers["x-attach-issuer"], federation.issuer.as_str());
    assert_eq!(
        seen.headers["x-attach-user"],
        claims["sub"].as_str().unwrap()
    );
    // The second gateway takes IdP tokens only: not the workload's own.
    assert_eq!(embed(inner.url.clone(), token.clone()).await, 401);

    // Judged before any exchange: the same account name in another
    // namespace is refused at the first gateway, and the IdP is not asked.
    let exchanges = |metrics: &str| metric_sum(metrics, "attach_token_exchanges_total");
    let before = exchanges(&gw.metrics().await.unwrap());
    let lookalike = cluster.token(&elsewhere, "rag-indexer", AUDIENCE).await;
    assert_eq!(embed(gw.url.clone(), lookalike).await, 403);
    assert_eq!(exchanges(&gw.metrics().await.unwrap()), before);

    // A client the IdP does not allow to exchange the cluster's tokens:
    // the IdP refuses, and nothing is forwarded.
    let calls = model.request_count();
    let untrusted = outer(Federation::UNTRUSTED).await.unwrap();
    assert_eq!(embed(untrusted.url.clone(), token.clone()).await, 403);
    assert_eq!(model.request_count(), calls, "nothing reached the model");
    let refused = metric_sum(
        &untrusted.metrics().await.unwrap(),
        "attach_token_exchanges_total{result=\"refused\"}",
    );
    assert_eq!(refused, 1.0, "the IdP refused it: {}", untrusted.log());

    // No token, exchanged or not, in either log.
    for log in [gw.log(), inner.log(), untrusted.log()] {
        assert!(!log.contains(&token));
        assert!(!log.contains(exchanged));
        assert!(!log.contains(&federation.secret));
    }
}
