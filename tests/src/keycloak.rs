//! A real Keycloak, the OIDC provider of the test world.
//!
//! Each world copies the cached server distribution into its own state dir
//! (so parallel worlds never share files), drops the committed realm fixtures
//! into `data/import`, and runs `kc.sh start-dev --import-realm` on a loopback
//! port with an in-memory database.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::HarnessError;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::tools::Tools;
use crate::wait::until_http_ok;

/// Keycloak boots in 20-60 s on two cores.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The realm the fixtures define for the gateway's tests.
pub const REALM: &str = "attach";
/// A second realm with its own keys: its tokens must never pass for `attach`'s.
pub const OTHER_REALM: &str = "other";
/// The audience the fixture's audience mappers put in access tokens.
pub const AUDIENCE: &str = "attach-gateway";
/// The public client users log in with (password grant).
pub const USER_CLIENT: &str = "attach-cli";
/// The confidential machine-to-machine client (`client_credentials`).
pub const M2M_CLIENT: &str = "attach-m2m";
/// `attach-m2m`'s secret in the fixture.
pub const M2M_SECRET: &str = "attach-m2m-secret";
/// The confidential client allowed RFC 8693 token exchange.
pub const EXCHANGE_CLIENT: &str = "attach-gateway";
/// `attach-gateway`'s secret in the fixture.
pub const EXCHANGE_SECRET: &str = "attach-gateway-secret";
/// An agent backend: a confidential client with its own service account
/// that may exchange user and `attach-m2m` tokens (both carry it in `aud`).
pub const AGENT_CLIENT: &str = "attach-agent";
/// `attach-agent`'s secret in the fixture.
pub const AGENT_SECRET: &str = "attach-agent-secret";
/// A person whose user name looks like a service account's
/// (`service-account-attach-cli`): member of `staff`, tenant `acme`.
pub const LOOKALIKE_USER: &str = "service-account-attach-cli";

/// Where the committed realm fixtures live.
pub fn fixtures_dir() -> PathBuf {
    crate::source_tree::tests_dir()
        .join("fixtures")
        .join("keycloak")
}

/// The running Keycloak. Dropping it stops the server.
#[derive(Debug)]
pub struct Keycloak {
    process: Supervised,
    /// How to reach it; also what tests receive through `world.json`.
    pub info: KeycloakInfo,
}

/// Clients made by [`KeycloakInfo::resource_clients`].
#[derive(Debug, Clone)]
pub struct ResourceClients {
    /// The public client people log in with.
    pub user: String,
    /// The confidential client that acts for itself.
    pub machine: String,
    pub secret: String,
}

/// Everything a test needs to talk to Keycloak.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeycloakInfo {
    /// `http://<host>:<port>`: loopback, or a node's bridge address.
    pub base_url: String,
    /// The temporary admin account in the master realm.
    pub admin_user: String,
    pub admin_password: String,
}

impl Keycloak {
    /// Starts Keycloak under `dir` and waits for the `attach` realm's
    /// discovery document.
    pub async fn start(tools: &Tools, dir: &Path) -> Result<Self, HarnessError> {
        Self::start_serving(tools, dir, std::net::IpAddr::from([127, 0, 0, 1])).await
    }

    /// [`Keycloak::start`] on `host` (a node's bridge address, so that pods
    /// and the host see the same issuer URL).
    pub async fn start_serving(
        tools: &Tools,
        dir: &Path,
        host: std::net::IpAddr,
    ) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        let home = dir.join("home");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&tools.keycloak_home)
            .arg(&home)
            .status()
            .map_err(|source| HarnessError::Spawn {
                program: "cp".into(),
                source,
            })?;
        if !status.success() {
            return Err(HarnessError::Other(format!(
                "copying {} failed",
                tools.keycloak_home.display()
            )));
        }
        let import = home.join("data").join("import");
        std::fs::create_dir_all(&import).map_err(HarnessError::io(&import))?;
        let fixtures = fixtures_dir();
        for realm in [REALM, OTHER_REALM] {
            let file = format!("{realm}-realm.json");
            std::fs::copy(fixtures.join(&file), import.join(&file))
                .map_err(HarnessError::io(fixtures.join(&file)))?;
        }

        let port = free_port()?;
        let management_port = free_port()?;
        let admin_password = format!("admin-{:016x}", rand::random::<u64>());
        let mut cmd = process::command(home.join("bin").join("kc.sh"));
        cmd.arg("start-dev")
            .arg(format!("--http-host={host}"))
            .arg(format!("--http-port={port}"))
            .arg(format!("--http-management-port={management_port}"))
            .arg("--import-realm")
            .arg("--db=dev-mem")
            // Standard token exchange (v2) stays on for Keycloak's own
            // tokens; the legacy one (v1, with its fine-grained permissions)
            // is what exchanges an external token, such as a workload's
            // ServiceAccount token, for a Keycloak token.
            .arg("--features=token-exchange:v1,admin-fine-grained-authz:v1")
            .env("JAVA_HOME", &tools.java_home)
            .env("JAVA_OPTS_KC_HEAP", "-Xms128m -Xmx768m")
            .env("KC_BOOTSTRAP_ADMIN_USERNAME", "admin")
            .env("KC_BOOTSTRAP_ADMIN_PASSWORD", &admin_password);
        let mut process = Supervised::spawn("keycloak", cmd, dir.join("keycloak.log"))?;

        let info = KeycloakInfo {
            base_url: format!("http://{host}:{port}"),
            admin_user: "admin".into(),
            admin_password,
        };
        let discovery = format!("{}/.well-known/openid-configuration", info.issuer(REALM));
        until_http_ok(
            &mut process,
            &discovery,
            READY_TIMEOUT,
            Duration::from_millis(500),
        )
        .await?;
        Ok(Self { process, info })
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        self.process.stop(process::DEFAULT_GRACE);
    }
}

/// A token response from Keycloak's token endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
    #[serde(default)]
    pub token_type: String,
}

impl KeycloakInfo {
    /// The issuer URL of `realm`, exactly as it appears in `iss`.
    pub fn issuer(&self, realm: &str) -> String {
        format!("{}/realms/{realm}", self.base_url)
    }

    /// The token endpoint of `realm`.
    pub fn token_endpoint(&self, realm: &str) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer(realm))
    }

    /// The JWKS endpoint of `realm`.
    pub fn jwks_uri(&self, realm: &str) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer(realm))
    }

    /// An access token for a fixture user of the `attach` realm (password grant;
    /// each user's password is `<name>-password`).
    pub async fn token_for(&self, user: &str) -> Result<String, HarnessError> {
        self.password_token(REALM, user).await
    }

    /// An access token for `user` of any fixture realm.
    pub async fn password_token(&self, realm: &str, user: &str) -> Result<String, HarnessError> {
        let password = format!("{user}-password");
        let form = [
            ("grant_type", "password"),
            ("client_id", USER_CLIENT),
            ("username", user),
            ("password", password.as_str()),
            ("scope", "openid"),
        ];
        self.token(realm, &form).await.map(|t| t.access_token)
    }

    /// A `client_credentials` token for the machine-to-machine client.
    pub async fn m2m_token(&self) -> Result<String, HarnessError> {
        self.client_token(M2M_CLIENT, M2M_SECRET).await
    }

    /// A `client_credentials` token (a service account's) of the `attach`
    /// realm.
    pub async fn client_token(&self, client: &str, secret: &str) -> Result<String, HarnessError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", secret),
        ];
        self.token(REALM, &form).await.map(|t| t.access_token)
    }

    /// `subject_token` exchanged by `client` (RFC 8693, Keycloak's standard
    /// token exchange) for an access token for `audience`.
    pub async fn exchange(
        &self,
        client: &str,
        secret: &str,
        subject_token: &str,
        audience: &str,
    ) -> Result<String, HarnessError> {
        let form = [
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("client_id", client),
            ("client_secret", secret),
            ("subject_token", subject_token),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("audience", audience),
        ];
        self.token(REALM, &form).await.map(|t| t.access_token)
    }

    /// Posts `form` to `realm`'s token endpoint.
    pub async fn token(
        &self,
        realm: &str,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, HarnessError> {
        let endpoint = self.token_endpoint(realm);
        let http_err = |source| HarnessError::Http {
            what: endpoint.clone(),
            source,
        };
        let response = reqwest::Client::new()
            .post(&endpoint)
            .form(form)
            .send()
            .await
            .map_err(http_err)?;
        let status = response.status();
        let body = response.text().await.map_err(http_err)?;
        if !status.is_success() {
            return Err(HarnessError::Status {
                what: endpoint,
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_str(&body).map_err(|source| HarnessError::Json {
            what: "token response".into(),
            source,
        })
    }

    /// Creates this run's clients in the `attach` realm for `resource` (an
    /// MCP server's resource URI, RFC 8707): a public one for people
    /// (password grant) and a confidential one for a machine (client
    /// credentials), both putting `resource` in `aud` and the groups in
    /// `groups`, with `scopes` as optional client scopes (in a token only
    /// when asked for; created in the realm when missing).
    pub async fn resource_clients(
        &self,
        resource: &str,
        scopes: &[&str],
    ) -> Result<ResourceClients, HarnessError> {
        use reqwest::Method;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let run = format!("{:x}{nanos:x}", std::process::id());
        let existing = self
            .admin(Method::GET, &format!("/{REALM}/client-scopes"), None)
            .await?;
        for scope in scopes {
            let known = existing
                .as_array()
                .is_some_and(|all| all.iter().any(|s| s["name"] == *scope));
            if !known {
                let body = serde_json::json!({"name": scope, "protocol": "openid-connect",
                    "attributes": {"include.in.token.scope": "true", "display.on.consent.screen": "false"}});
                self.admin(
                    Method::POST,
                    &format!("/{REALM}/client-scopes"),
                    Some(&body),
                )
                .await?;
            }
        }
        let all_scopes = self
            .admin(Method::GET, &format!("/{REALM}/client-scopes"), None)
            .await?;
        let mappers = serde_json::json!([
            {"name": "audience-resource", "protocol": "openid-connect", "protocolMapper": "oidc-audience-mapper",
             "config": {"included.custom.audience": resource, "access.token.claim": "true", "id.token.claim": "false"}},
            {"name": "groups", "protocol": "openid-connect", "protocolMapper": "oidc-group-membership-mapper",
             "config": {"claim.name": "groups", "full.path": "false", "access.token.claim": "true"}},
        ]);
        let clients = ResourceClients {
            user: format!("resource-cli-{run}"),
            machine: format!("resource-agent-{run}"),
            secret: format!("resource-agent-secret-{run}"),
        };
        for client in [
            serde_json::json!({"clientId": clients.user, "publicClient": true,
                "directAccessGrantsEnabled": true, "standardFlowEnabled": false,
                "fullScopeAllowed": true, "protocolMappers": mappers}),
            serde_json::json!({"clientId": clients.machine, "publicClient": false,
                "secret": clients.secret, "serviceAccountsEnabled": true,
                "standardFlowEnabled": false, "fullScopeAllowed": true, "protocolMappers": mappers}),
        ] {
            self.admin(Method::POST, &format!("/{REALM}/clients"), Some(&client))
                .await?;
            let client_id = client["clientId"].as_str().unwrap_or_default();
            let id = self.client(REALM, client_id).await?.0;
            for scope in scopes {
                let scope_id = all_scopes
                    .as_array()
                    .and_then(|all| all.iter().find(|s| s["name"] == *scope))
                    .and_then(|s| s["id"].as_str())
                    .unwrap_or_default();
                self.admin(
                    Method::PUT,
                    &format!("/{REALM}/clients/{id}/optional-client-scopes/{scope_id}"),
                    None,
                )
                .await?;
            }
        }
        Ok(clients)
    }

    /// `user`'s token from `clients`' public client, asking for `scope`.
    pub async fn resource_user_token(
        &self,
        clients: &ResourceClients,
        user: &str,
        scope: &str,
    ) -> Result<String, HarnessError> {
        let password = format!("{user}-password");
        let form = [
            ("grant_type", "password"),
            ("client_id", clients.user.as_str()),
            ("username", user),
            ("password", password.as_str()),
            ("scope", scope),
        ];
        self.token(REALM, &form).await.map(|t| t.access_token)
    }

    /// The machine client's own token (client credentials), asking for `scope`.
    pub async fn resource_machine_token(
        &self,
        clients: &ResourceClients,
        scope: &str,
    ) -> Result<String, HarnessError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", clients.machine.as_str()),
            ("client_secret", clients.secret.as_str()),
            ("scope", scope),
        ];
        self.token(REALM, &form).await.map(|t| t.access_token)
    }

    /// An admin access token (master realm, `admin-cli`).
    pub async fn admin_token(&self) -> Result<String, HarnessError> {
        let form = [
            ("grant_type", "password"),
            ("client_id", "admin-cli"),
            ("username", self.admin_user.as_str()),
            ("password", self.admin_password.as_str()),
        ];
        self.token("master", &form).await.map(|t| t.access_token)
    }

    /// Calls the admin REST API: `method` on `/admin/realms{path}`.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, HarnessError> {
        let url = format!("{}/admin/realms{path}", self.base_url);
        let token = self.admin_token().await?;
        let http_err = |source| HarnessError::Http {
            what: url.clone(),
            source,
        };
        let mut request = reqwest::Client::new()
            .request(method, &url)
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(http_err)?;
        let status = response.status();
        let text = response.text().await.map_err(http_err)?;
        if !status.is_success() {
            return Err(HarnessError::Status {
                what: url,
                status: status.as_u16(),
                body: text,
            });
        }
        if text.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).map_err(|source| HarnessError::Json { what: url, source })
    }

    /// Creates a small realm `name` with one user (`<user>`/`<user>-password`)
    /// and the public `attach-cli` client whose tokens carry `aud:
    /// attach-gateway`. Tests that change a realm (key rotation) use their own.
    pub async fn create_realm(&self, name: &str, user: &str) -> Result<(), HarnessError> {
        let realm = serde_json::json!({
            "realm": name, "enabled": true, "sslRequired": "none",
            "clients": [{
                "clientId": USER_CLIENT, "enabled": true, "publicClient": true,
                "directAccessGrantsEnabled": true, "standardFlowEnabled": false,
                "protocolMappers": [{
                    "name": "audience", "protocol": "openid-connect",
                    "protocolMapper": "oidc-audience-mapper",
                    "config": {"included.custom.audience": AUDIENCE, "access.token.claim": "true"},
                }],
            }],
            "users": [{
                "username": user, "enabled": true, "emailVerified": true,
                "email": format!("{user}@example.test"), "firstName": user, "lastName": "Test",
                "credentials": [{"type": "password", "value": format!("{user}-password"), "temporary": false}],
            }],
        });
        self.admin(reqwest::Method::POST, "", Some(&realm))
            .await
            .map(|_| ())
    }

    /// Creates realm `name` that exchanges tokens of a foreign `issuer`
    /// (Keycloak's external-to-internal token exchange): an OIDC identity
    /// provider `alias` that checks their signatures with `public_key_pem`
    /// (the issuer's key; a cluster's JWKS is not public) and no `typ` claim
    /// (ServiceAccount tokens have none), the client
    /// [`Federation::EXCHANGER`] allowed to exchange them for tokens of the
    /// client [`Federation::AUDIENCE`], and the client
    /// [`Federation::UNTRUSTED`], which may not.
    pub async fn federate(
        &self,
        name: &str,
        alias: &str,
        issuer: &str,
        public_key_pem: &str,
    ) -> Result<Federation, HarnessError> {
        use reqwest::Method;
        let secret = format!("exchanger-{:016x}", rand::random::<u64>());
        let clients = [
            Federation::EXCHANGER,
            Federation::UNTRUSTED,
            Federation::AUDIENCE,
        ]
        .map(|client| {
            serde_json::json!({
                "clientId": client, "enabled": true, "publicClient": false, "secret": secret,
                "standardFlowEnabled": false, "directAccessGrantsEnabled": false,
            })
        });
        let realm = serde_json::json!({
            "realm": name, "enabled": true, "sslRequired": "none",
            "clients": clients,
            "identityProviders": [{
                "alias": alias, "providerId": "oidc", "enabled": true,
                "config": {
                    "issuer": issuer, "validateSignature": "true", "useJwksUrl": "false",
                    "publicKeySignatureVerifier": public_key_pem, "disableTypeClaimCheck": "true",
                    "syncMode": "IMPORT", "clientId": "unused", "clientSecret": "unused",
                    "clientAuthMethod": "client_secret_post",
                    // Never used: nobody signs in through the cluster.
                    "authorizationUrl": format!("{issuer}/unused"), "tokenUrl": format!("{issuer}/unused"),
                },
            }],
        });
        self.admin(Method::POST, "", Some(&realm)).await?;
        let exchanger = self.client(name, Federation::EXCHANGER).await?.0;
        let audience = self.client(name, Federation::AUDIENCE).await?.0;
        let management = self.client(name, "realm-management").await?.0;
        let authz = format!("/{name}/clients/{management}/authz/resource-server");
        // The exchanger may exchange the provider's tokens, and for the
        // audience client: both are `token-exchange` permissions, made when
        // permissions are turned on for each (which also makes the
        // authorization server the policy lives in).
        let mut permissions = Vec::new();
        for resource in [
            format!("/{name}/identity-provider/instances/{alias}"),
            format!("/{name}/clients/{audience}"),
        ] {
            let made = self
                .admin(
                    Method::PUT,
                    &format!("{resource}/management/permissions"),
                    Some(&serde_json::json!({"enabled": true})),
                )
                .await?;
            let Some(id) = made["scopePermissions"]["token-exchange"].as_str() else {
                return Err(HarnessError::Other(format!(
                    "{resource}: no token-exchange permission"
                )));
            };
            permissions.push(format!("{authz}/permission/scope/{id}"));
        }
        let policy = self
            .admin(
                Method::POST,
                &format!("{authz}/policy/client"),
                Some(&serde_json::json!({"name": "the-gateway", "clients": [exchanger]})),
            )
            .await?;
        for path in permissions {
            let mut permission = self.admin(Method::GET, &path, None).await?;
            permission["policies"] = serde_json::json!([policy["id"]]);
            self.admin(Method::PUT, &path, Some(&permission)).await?;
        }
        Ok(Federation {
            token_endpoint: self.token_endpoint(name),
            issuer: self.issuer(name),
            alias: alias.to_owned(),
            secret,
        })
    }

    /// The client `client_id` of `realm`: Keycloak's id for it, and its
    /// representation.
    async fn client(
        &self,
        realm: &str,
        client_id: &str,
    ) -> Result<(String, serde_json::Value), HarnessError> {
        let found = self
            .admin(
                reqwest::Method::GET,
                &format!("/{realm}/clients?clientId={client_id}"),
                None,
            )
            .await?;
        let rep = found[0].clone();
        match rep["id"].as_str() {
            Some(id) => Ok((id.to_owned(), rep)),
            None => Err(HarnessError::Other(format!(
                "realm {realm} has no client {client_id}"
            ))),
        }
    }

    /// Lets `client` of `realm` log people in with the device authorization
    /// grant (RFC 8628), as a CLI does.
    pub async fn enable_device_grant(&self, realm: &str, client: &str) -> Result<(), HarnessError> {
        use reqwest::Method;
        let (id, mut rep) = self.client(realm, client).await?;
        rep["attributes"]["oauth2.device.authorization.grant.enabled"] = "true".into();
        self.admin(Method::PUT, &format!("/{realm}/clients/{id}"), Some(&rep))
            .await
            .map(|_| ())
    }

    /// Ends every session of `user` in `realm`: its refresh tokens stop
    /// working, as when a session times out or an administrator signs the
    /// user out.
    pub async fn end_sessions(&self, realm: &str, user: &str) -> Result<(), HarnessError> {
        use reqwest::Method;
        let found = self
            .admin(
                Method::GET,
                &format!("/{realm}/users?username={user}&exact=true"),
                None,
            )
            .await?;
        let Some(id) = found[0]["id"].as_str() else {
            return Err(HarnessError::Other(format!(
                "realm {realm} has no user {user}"
            )));
        };
        self.admin(Method::POST, &format!("/{realm}/users/{id}/logout"), None)
            .await
            .map(|_| ())
    }

    /// Adds a new generated RSA signing key to `realm` with a priority above
    /// every existing one, so new tokens are signed with it (a key rotation).
    pub async fn rotate_key(&self, realm: &str) -> Result<(), HarnessError> {
        let realm_rep = self
            .admin(reqwest::Method::GET, &format!("/{realm}"), None)
            .await?;
        let Some(realm_id) = realm_rep["id"].as_str() else {
            return Err(HarnessError::Other(format!("realm {realm} has no id")));
        };
        let component = serde_json::json!({
            "name": format!("rotated-{}", rand::random::<u32>()),
            "providerId": "rsa-generated",
            "providerType": "org.keycloak.keys.KeyProvider",
            "parentId": realm_id,
            "config": {"priority": ["1000"], "keySize": ["2048"], "algorithm": ["RS256"],
                       "active": ["true"], "enabled": ["true"]},
        });
        self.admin(
            reqwest::Method::POST,
            &format!("/{realm}/components"),
            Some(&component),
        )
        .await
        .map(|_| ())
    }
}

/// A realm that exchanges a foreign issuer's tokens: see
/// [`KeycloakInfo::federate`].
#[derive(Debug, Clone)]
pub struct Federation {
    /// The realm's token endpoint.
    pub token_endpoint: String,
    /// The realm's issuer: what exchanged tokens carry in `iss`.
    pub issuer: String,
    /// The identity provider's alias: the exchange's `subject_issuer`.
    pub alias: String,
    /// The secret of every client of the realm.
    pub secret: String,
}

impl Federation {
    /// The client allowed to exchange the foreign tokens.
    pub const EXCHANGER: &'static str = "attach-exchanger";
    /// A client of the same realm that may not.
    pub const UNTRUSTED: &'static str = "untrusted";
    /// The client exchanged tokens are for: their `aud`.
    pub const AUDIENCE: &'static str = "llm-downstream";
}
