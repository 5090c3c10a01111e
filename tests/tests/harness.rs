#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The test world itself: each real component is up, reachable, and does
//! what later tests rely on; and the harness leaves nothing behind.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use attach_tests::World;
use attach_tests::keycloak::{
    AGENT_CLIENT, AGENT_SECRET, AUDIENCE, LOOKALIKE_USER, OTHER_REALM, REALM,
};
use attach_tests::supervisor::{self, processes_mentioning};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::Value;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ollama
  labels: {app: ollama}
spec:
  replicas: 1
  selector:
    matchLabels: {app: ollama}
  template:
    metadata:
      labels: {app: ollama}
    spec:
      containers:
        - name: ollama
          image: ollama/ollama:0.12.0
          ports:
            - {name: http, containerPort: 11434}
"#;

#[tokio::test]
async fn kubectl_apply_works_and_controller_manager_creates_replicaset_and_pod() {
    let world = common::world();
    let ns = world.namespace("harness").await.unwrap();

    let mut apply = world
        .kubectl()
        .unwrap()
        .args(["apply", "-n", &ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(DEPLOYMENT.as_bytes())
        .unwrap();
    let out = apply.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "deployment.apps/ollama created"
    );

    let client = world.client().await.unwrap();
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let selector = ListParams::default().labels("app=ollama");
    let mut found = None;
    for _ in 0..300 {
        let rs = replica_sets.list(&selector).await.unwrap().items;
        let pod = pods.list(&selector).await.unwrap().items;
        if let (Some(rs), Some(pod)) = (rs.first(), pod.first()) {
            found = Some((rs.clone(), pod.clone()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rs, pod) = found.expect("the Deployment got a ReplicaSet and a Pod within 30s");

    let owner =
        |refs: &Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
            refs.as_ref()
                .and_then(|r| r.first())
                .map(|o| (o.kind.clone(), o.name.clone()))
        };
    assert_eq!(
        owner(&rs.metadata.owner_references),
        Some(("Deployment".to_owned(), "ollama".to_owned()))
    );
    assert_eq!(
        owner(&pod.metadata.owner_references),
        Some(("ReplicaSet".to_owned(), rs.metadata.name.clone().unwrap()))
    );
    // No scheduler and no kubelet: the pod exists but never runs.
    let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
    assert_eq!(phase, "Pending");
}

async fn jwks(world: &World, realm: &str) -> JwkSet {
    let kc = world.keycloak().unwrap();
    let discovery: Value = reqwest::get(format!(
        "{}/.well-known/openid-configuration",
        kc.issuer(realm)
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .expect("discovery has jwks_uri");
    assert_eq!(jwks_uri, kc.jwks_uri(realm));
    reqwest::get(jwks_uri).await.unwrap().json().await.unwrap()
}

fn verify(token: &str, keys: &JwkSet, issuer: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let header = decode_header(token)?;
    let kid = header.kid.unwrap_or_default();
    let jwk = keys
        .find(&kid)
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
    let key = DecodingKey::from_jwk(jwk)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    decode::<Value>(token, &key, &validation).map(|t| t.claims)
}

fn strings(v: &Value) -> Vec<&str> {
    let mut out: Vec<&str> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.sort_unstable();
    out
}

#[tokio::test]
async fn keycloak_tokens_verify_against_jwks_with_the_fixture_claims() {
    let world = common::world();
    let kc = world.keycloak().unwrap();
    let issuer = kc.issuer(REALM);
    let keys = jwks(world, REALM).await;

    let alice = verify(&kc.token_for("alice").await.unwrap(), &keys, &issuer).unwrap();
    assert_eq!(alice["preferred_username"], "alice");
    assert_eq!(strings(&alice["groups"]), ["admins", "ai-power-users"]);
    assert_eq!(
        strings(&alice["realm_access"]["roles"]),
        ["llm-admin", "llm-user"]
    );
    assert_eq!(alice["tenant"], "acme");
    // The gateway's audience, and attach-agent's: the fixture's agent may
    // exchange user tokens (Keycloak wants the requester in `aud`).
    assert_eq!(strings(&alice["aud"]), [AGENT_CLIENT, AUDIENCE]);

    let bob = verify(&kc.token_for("bob").await.unwrap(), &keys, &issuer).unwrap();
    assert_eq!(strings(&bob["groups"]), ["staff"]);
    assert_eq!(bob["tenant"], "acme");

    let carol = verify(&kc.token_for("carol").await.unwrap(), &keys, &issuer).unwrap();
    assert!(
        strings(&carol["groups"]).is_empty(),
        "carol has no groups: {carol}"
    );
    assert_eq!(carol["tenant"], "globex");

    let m2m = verify(&kc.m2m_token().await.unwrap(), &keys, &issuer).unwrap();
    assert_eq!(m2m["azp"], "attach-m2m");
    assert_eq!(m2m["preferred_username"], "service-account-attach-m2m");
    assert_eq!(
        m2m["client_id"], "attach-m2m",
        "the service_account client scope marks the service account"
    );

    // attach-agent exchanges alice's token: same subject, azp the agent, no act.
    let exchanged = kc
        .exchange(
            AGENT_CLIENT,
            AGENT_SECRET,
            &kc.token_for("alice").await.unwrap(),
            AUDIENCE,
        )
        .await
        .unwrap();
    let exchanged = verify(&exchanged, &keys, &issuer).unwrap();
    assert_eq!(exchanged["sub"], alice["sub"]);
    assert_eq!(exchanged["azp"], AGENT_CLIENT);
    assert!(exchanged.get("act").is_none());

    // A person whose user name looks like a service account's.
    let lookalike = verify(&kc.token_for(LOOKALIKE_USER).await.unwrap(), &keys, &issuer).unwrap();
    assert_eq!(lookalike["preferred_username"], LOOKALIKE_USER);
    assert!(lookalike.get("client_id").is_none());
}

#[tokio::test]
async fn tampered_and_foreign_keycloak_tokens_do_not_verify() {
    let world = common::world();
    let kc = world.keycloak().unwrap();
    let issuer = kc.issuer(REALM);
    let keys = jwks(world, REALM).await;
    let token = kc.token_for("bob").await.unwrap();

    // Bob makes himself a power user: same header and signature, new payload.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["groups"] = serde_json::json!(["ai-power-users"]);
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let err = verify(&forged, &keys, &issuer).unwrap_err();
    assert_eq!(
        err.kind(),
        &jsonwebtoken::errors::ErrorKind::InvalidSignature
    );

    // One flipped signature character.
    let mut sig = parts[2].to_owned();
    let flipped = if sig.ends_with('A') { 'B' } else { 'A' };
    sig.pop();
    sig.push(flipped);
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], sig);
    assert!(verify(&bad_sig, &keys, &issuer).is_err());

    // A token from the second realm: its key is not in this realm's JWKS, and
    // even checked against its own keys its issuer is not this realm's.
    let foreign = kc.password_token(OTHER_REALM, "mallory").await.unwrap();
    assert!(verify(&foreign, &keys, &issuer).is_err());
    let foreign_keys = jwks(world, OTHER_REALM).await;
    let err = verify(&foreign, &foreign_keys, &issuer).unwrap_err();
    assert_eq!(err.kind(), &jsonwebtoken::errors::ErrorKind::InvalidIssuer);

    // And the untouched token still verifies, so the failures above are the
    // tampering's doing.
    assert!(verify(&token, &keys, &issuer).is_ok());
}

#[tokio::test]
async fn redis_answers_ping_and_keeps_values() {
    let world = common::world();
    let client = redis::Client::open(world.redis_url().unwrap()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    let key = format!("harness-test-{}", rand::random::<u32>());
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("42")
        .query_async(&mut conn)
        .await
        .unwrap();
    let value: i64 = redis::cmd("INCR")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, 43);
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

async fn wait_gone(pids: &[u32]) -> Vec<u32> {
    for _ in 0..200 {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pids.iter().copied().filter(|p| alive(*p)).collect()
}

#[tokio::test]
async fn a_private_world_stops_every_process_when_its_owner_goes_away() {
    let world = World::start_private(
        env!("CARGO_BIN_EXE_attach-harness"),
        &["control-plane", "redis"],
    )
    .unwrap();
    let pids: Vec<u32> = world.info.processes.values().copied().collect();
    assert_eq!(
        pids.len(),
        4,
        "etcd, apiserver, controller manager, redis: {pids:?}"
    );
    assert!(pids.iter().all(|p| alive(*p)));
    let state_dir = world.info.state_dir.clone();

    // Closing the lifeline is what the kernel does when a test process dies.
    let status = world.shutdown().unwrap();
    assert!(status.success(), "supervisor exited with {status}");
    assert_eq!(
        wait_gone(&pids).await,
        Vec::<u32>::new(),
        "orphans left behind"
    );
    assert!(!state_dir.exists(), "state folder removed");
    assert!(processes_mentioning(&state_dir.display().to_string()).is_empty());
}

#[tokio::test]
async fn a_killed_supervisor_takes_its_processes_with_it_and_the_janitor_cleans_up() {
    let world = World::start_private(
        env!("CARGO_BIN_EXE_attach-harness"),
        &["control-plane", "redis"],
    )
    .unwrap();
    let pids: Vec<u32> = world.info.processes.values().copied().collect();
    let state_dir = world.info.state_dir.clone();
    let supervisor = i32::try_from(world.info.supervisor_pid).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = world.shutdown(); // reaps the killed supervisor

    assert_eq!(
        wait_gone(&pids).await,
        Vec::<u32>::new(),
        "orphans after SIGKILL"
    );
    assert!(
        state_dir.exists(),
        "nobody tore down, so the folder is still there"
    );
    supervisor::reap_stale_worlds(state_dir.parent().unwrap());
    assert!(!state_dir.exists(), "the janitor removed the stale folder");
}
