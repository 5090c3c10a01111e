#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The `attach` CLI against the real Keycloak and a real gateway: a device
//! login (RFC 8628) found from the gateway's RFC 9728 metadata and approved
//! in Keycloak's own login and consent pages, the token printed for any
//! client and accepted by the gateway, `whoami` as the gateway maps it, a
//! renewal with the refresh token, a session ended at the IdP (a clear
//! error, no token), a refused approval, and a logout that revokes the
//! refresh token. No command prints a token anywhere but `attach token`'s
//! stdout, and the credentials file is the user's alone.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use attach_tests::device_approval::{self, Decision};
use attach_tests::keycloak::{AUDIENCE, USER_CLIENT};
use attach_tests::mock_model::MockModel;
use common::clients::{attach, cli, people_may_use, sse_events};
use tokio::io::{AsyncBufReadExt, BufReader};

const USER: &str = "dana";

/// `attach login <args>`, with the person doing `decision` in the browser:
/// status and stderr.
async fn login(dir: &Path, args: &[&str], decision: Decision) -> (bool, String) {
    let mut child = tokio::process::Command::new(cli())
        .arg("--config-dir")
        .arg(dir)
        .arg("login")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = String::new();
    let address = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no address: {said}"));
        said += &line;
        said.push('\n');
        if let Some(address) = line.strip_prefix("To log in, open ") {
            break address.to_owned();
        }
    };
    assert!(address.contains("user_code="), "{address}");
    device_approval::approve(&address, USER, &format!("{USER}-password"), decision)
        .await
        .unwrap();
    while let Some(line) = lines.next_line().await.unwrap() {
        said += &line;
        said.push('\n');
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    (status.success(), said)
}

fn stored(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("credentials.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn a_person_logs_in_once_and_every_client_gets_a_fresh_token() {
    let kc = common::world().keycloak().unwrap();
    let realm = format!("cli-{:08x}", rand::random::<u32>());
    kc.create_realm(&realm, USER).await.unwrap();
    kc.enable_device_grant(&realm, USER_CLIENT).await.unwrap();
    let issuer = kc.issuer(&realm);

    let model = MockModel::start().await.unwrap();
    let config = people_may_use(&issuer, &model, &["*"]);
    let gw = attach_tests::gateway::GatewayProcess::start(config)
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("attach");

    // Logged in through the gateway's metadata, approved in Keycloak.
    let (ok, said) = login(&dir, &[&gw.url, "--preset", "keycloak"], Decision::Accept).await;
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!("logged in as {USER} at {issuer}")),
        "{said}"
    );
    let mode = std::fs::metadata(dir.join("credentials.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let first = stored(&dir);
    let refresh = first["profiles"]["default"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();

    // The token, for any client; the gateway takes it.
    let (ok, token, err) = attach(&dir, &["token"]).await;
    assert!(ok, "{err}");
    assert_eq!(token, first["profiles"]["default"]["accessToken"]);
    let http = reqwest::Client::new();
    let tags = |token: String| {
        let http = http.clone();
        let url = format!("{}/api/tags", gw.url);
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(tags(token.clone()).await, 200, "{}", gw.log());
    let sub = model.last().await.unwrap().headers["x-attach-user"]
        .to_str()
        .unwrap()
        .to_owned();
    // With an audience it carries, and one it does not.
    assert_eq!(
        attach(&dir, &["token", "--audience", AUDIENCE]).await.1,
        token
    );
    let (ok, out, err) = attach(&dir, &["token", "--audience", "another-backend"]).await;
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("no stored login has a token for audience another-backend"),
        "{err}"
    );

    // The cookbook's snippets, run as they are with the official SDKs:
    // each reaches the model as the person who logged in.
    let clients_python = attach_tests::engines::built().unwrap().clients_python;
    let docs = attach_tests::source_tree::repo_root().join("docs/clients");
    let path = format!(
        "{}:{}",
        cli().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (program, snippet) in [
        (clients_python.as_path(), "openai_sdk.py"),
        (clients_python.as_path(), "ollama_sdk.py"),
        (clients_python.as_path(), "langchain_chat.py"),
        (Path::new("bash"), "curl.sh"),
    ] {
        let before = model.request_count();
        let out = tokio::process::Command::new(program)
            .arg(docs.join(snippet))
            .env("PATH", &path)
            .env("ATTACH_CONFIG_DIR", &dir)
            .env("ATTACH_BACKEND", &gw.url)
            .output()
            .await
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "{snippet}: {stdout}\n{stderr}\n{}",
            gw.log()
        );
        assert!(stdout.contains("hello"), "{snippet}: {stdout}");
        assert_eq!(model.request_count(), before + 1, "{snippet}");
        assert_eq!(
            model.last().await.unwrap().headers["x-attach-user"],
            sub.as_str()
        );
    }

    // Claude Code: its settings file parsed, its `apiKeyHelper` run as it
    // runs it (`/bin/sh -c`), and the request it then sends replayed: the
    // Messages API, the key in both `X-Api-Key` and `Authorization`.
    let settings: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(docs.join("claude-code-settings.json")).unwrap(),
    )
    .unwrap();
    let helper = settings["apiKeyHelper"].as_str().unwrap();
    let out = tokio::process::Command::new("/bin/sh")
        .args(["-c", helper])
        .env("PATH", &path)
        .env("ATTACH_CONFIG_DIR", &dir)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let model_name = settings["env"]["ANTHROPIC_MODEL"].as_str().unwrap();
    assert!(settings["env"]["ANTHROPIC_BASE_URL"].is_string());
    let before = model.request_count();
    let answer = http
        .post(format!("{}/v1/messages?beta=true", gw.url))
        .header("x-api-key", &key)
        .bearer_auth(&key)
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({"model": model_name, "max_tokens": 32,
            "messages": [{"role": "user", "content": "Say hello."}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", gw.log());
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["content"][0]["type"], "text", "{answer}");
    assert_eq!(model.request_count(), before + 1);
    let seen = model.last().await.unwrap();
    assert_eq!(seen.headers["x-attach-user"], sub.as_str());
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "the key reached the model"
    );
    assert!(seen.headers.get("authorization").is_none());

    // Continue: its config.yaml parsed, and the chat request it sends for
    // that model replayed (its openai adapter: `POST {apiBase}/chat/completions`
    // with the key as `Authorization: Bearer`, streamed, usage asked for).
    // The key, a secret in the file, is the token from the login; the
    // example backend's URL is swapped for the gateway's.
    let continue_config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(docs.join("continue-config.yaml")).unwrap())
            .unwrap();
    assert_eq!(continue_config["schema"], "v1");
    let entry = &continue_config["models"][0];
    assert_eq!(entry["provider"], "openai");
    assert_eq!(entry["apiKey"], "${{ secrets.ATTACH_API_KEY }}");
    let api_base = entry["apiBase"]
        .as_str()
        .unwrap()
        .replace("https://llm.example.com", &gw.url);
    assert!(api_base.ends_with("/v1"), "{api_base}");
    let model_name = entry["model"].as_str().unwrap();
    let before = model.request_count();
    let answer = http
        .post(format!("{api_base}/chat/completions"))
        .bearer_auth(&token)
        .json(
            &serde_json::json!({"model": model_name, "max_tokens": 32, "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Say hello."}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", gw.log());
    let (events, answer) = sse_events(answer).await;
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{answer}"
    );
    assert!(answer.contains("hello"), "{answer}");
    assert_eq!(model.request_count(), before + 1);
    let seen = model.last().await.unwrap();
    assert_eq!(seen.headers["x-attach-user"], sub.as_str());
    assert!(seen.headers.get("authorization").is_none());

    // whoami: the identity as the gateway maps it.
    let (ok, who, err) = attach(&dir, &["whoami"]).await;
    assert!(ok, "{err}");
    let who: serde_json::Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["user"], sub.as_str());
    assert_eq!(who["iss"], issuer.as_str());
    assert_eq!(who["client"], USER_CLIENT);
    assert_eq!(who["human"], true);

    // An access token about to expire is renewed with the refresh token.
    let (ok, renewed, err) = attach(&dir, &["token", "--min-valid", "100000"]).await;
    assert!(ok, "{err}");
    assert_ne!(renewed, token, "a new access token");
    assert_eq!(
        stored(&dir)["profiles"]["default"]["accessToken"],
        renewed.as_str()
    );
    assert_eq!(tags(renewed.clone()).await, 200);

    // The session ended at the IdP: the refresh fails, clearly, and no token
    // is printed.
    kc.end_sessions(&realm, USER).await.unwrap();
    let (ok, out, err) = attach(&dir, &["token", "--min-valid", "100000"]).await;
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("has ended (invalid_grant): run `attach login` again"),
        "{err}"
    );

    // A refused approval: no login is stored under that profile.
    let (ok, said) = login(
        &dir,
        &["--issuer", &issuer, "--profile", "refused"],
        Decision::Refuse,
    )
    .await;
    assert!(!ok);
    assert!(
        said.contains("the login was not approved: the request was denied"),
        "{said}"
    );
    assert!(stored(&dir)["profiles"].get("refused").is_none());

    // Log in again as another profile, then out: the refresh token is
    // revoked at the IdP, and the profile forgotten.
    let (ok, said) = login(
        &dir,
        &["--issuer", &issuer, "--profile", "second"],
        Decision::Accept,
    )
    .await;
    assert!(ok, "{said}");
    let second = stored(&dir)["profiles"]["second"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, _, err) = attach(&dir, &["--profile", "second", "logout"]).await;
    assert!(ok, "{err}");
    assert!(stored(&dir)["profiles"].get("second").is_none());
    let refreshed = http
        .post(kc.token_endpoint(&realm))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", second.as_str()),
            ("client_id", USER_CLIENT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 400, "a revoked refresh token");
    let (ok, _, err) = attach(&dir, &["--profile", "second", "token"]).await;
    assert!(
        !ok && err.contains("not logged in (profile second)"),
        "{err}"
    );

    // No token was ever written to stderr.
    for secret in [&token, &renewed, &refresh, &second] {
        assert!(!said.contains(secret.as_str()) && !err.contains(secret.as_str()));
    }
}
