//! `attach`: sign in at the identity provider once, then hand any client a
//! fresh access token (`attach token`, for `apiKeyHelper`, `key_cmd`, a
//! callable `api_key` or `$(attach token)`).

mod device;
mod endpoints;
mod error;
mod keys;
mod session;
mod store;
mod tokens;
mod whoami;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use attach_sidecar::claims::Preset;
use attach_sidecar::idp_client::IdpClient;
use clap::{Parser, Subcommand};

use crate::error::CliError;
use crate::store::{Login, Store};

#[derive(Debug, Parser)]
#[command(name = "attach", version, about)]
struct Cli {
    /// Where logins are kept (default: $ATTACH_CONFIG_DIR, else
    /// $XDG_CONFIG_HOME/attach, else ~/.config/attach).
    #[arg(long, global = true)]
    config_dir: Option<PathBuf>,
    /// The login to use: one per IdP or client.
    #[arg(long, global = true, default_value = "default")]
    profile: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in with the device authorization grant (RFC 8628): open the
    /// printed address in any browser and approve the code.
    Login {
        /// A backend (its RFC 9728 metadata names the IdP), e.g.
        /// https://llm.example.com.
        resource: Option<String>,
        /// The issuer to log in at (required without a backend; with one,
        /// picks among the issuers it trusts).
        #[arg(long)]
        issuer: Option<String>,
        /// The public client to log in through.
        #[arg(long, default_value = "attach-cli")]
        client_id: String,
        /// The scopes asked for.
        #[arg(long, default_value = "openid")]
        scope: String,
        /// How the gateway reads this IdP's claims (for `whoami`).
        #[arg(long, default_value = "generic")]
        preset: Preset,
    },
    /// Print a valid access token on stdout, renewing it first if it has
    /// less than --min-valid left.
    Token {
        /// Use the login whose token is for this audience.
        #[arg(long)]
        audience: Option<String>,
        /// Seconds the printed token stays valid at least.
        #[arg(long, default_value_t = 60)]
        min_valid: u64,
    },
    /// Show the identity the gateway will see: user, groups, roles, scopes,
    /// tenant, client, and whether it is a person.
    Whoami,
    /// Revoke the login's refresh token at the IdP and forget the login.
    Logout,
    /// Personal API keys, for clients that take only a static key.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Mint a key acting as you; printed once, on stdout.
    Create {
        /// The backend's URL, e.g. https://llm.example.com.
        #[arg(long)]
        backend: String,
        /// A name to recognise it by.
        #[arg(long)]
        name: Option<String>,
        /// Its lifetime, e.g. 30d (default: the backend's).
        #[arg(long)]
        expires: Option<String>,
        /// The only models it may use, comma-separated names or globs.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
    /// List your keys (every user's with --all, for administrators).
    List {
        #[arg(long)]
        backend: String,
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key by its id.
    Revoke {
        #[arg(long)]
        backend: String,
        id: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attach: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let dir = match cli.config_dir {
        Some(dir) => dir,
        None => Store::default_dir(|key| std::env::var(key).ok())?,
    };
    let store = Store::new(dir);
    let http = IdpClient::new();
    match cli.command {
        Command::Login {
            resource,
            issuer,
            client_id,
            scope,
            preset,
        } => {
            let issuer = match (resource, issuer) {
                (Some(resource), wanted) => {
                    endpoints::issuer_of_resource(&http, &resource, wanted.as_deref()).await?
                }
                (None, Some(issuer)) => issuer,
                (None, None) => {
                    return Err(CliError::Metadata(
                        "name a backend (attach login https://llm.example.com) or --issuer".into(),
                    ));
                }
            };
            login(
                &http,
                &store,
                &cli.profile,
                &issuer,
                &client_id,
                &scope,
                preset,
            )
            .await
        }
        Command::Token {
            audience,
            min_valid,
        } => {
            let mut credentials = store.load()?;
            let profile = match &audience {
                None => cli.profile.clone(),
                Some(audience) => credentials
                    .profiles
                    .iter()
                    .find(|(_, login)| {
                        whoami::claims(&login.access_token)
                            .is_ok_and(|claims| whoami::has_audience(&claims, audience))
                    })
                    .map(|(name, _)| name.clone())
                    .ok_or_else(|| CliError::NoTokenFor(audience.clone()))?,
            };
            let login = credentials
                .profiles
                .get_mut(&profile)
                .ok_or(CliError::NotLoggedIn { profile })?;
            let renewed = session::keep_fresh(&http, login, Duration::from_secs(min_valid)).await?;
            let token = login.access_token.clone();
            if renewed {
                store.save(&credentials)?;
            }
            println!("{token}");
            Ok(())
        }
        Command::Whoami => {
            let credentials = store.load()?;
            let login =
                credentials
                    .profiles
                    .get(&cli.profile)
                    .ok_or_else(|| CliError::NotLoggedIn {
                        profile: cli.profile.clone(),
                    })?;
            let who = whoami::identity(&whoami::claims(&login.access_token)?, login.preset)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&who).unwrap_or_else(|_| who.to_string())
            );
            Ok(())
        }
        Command::Keys(command) => {
            let mut credentials = store.load()?;
            let login = credentials.profiles.get_mut(&cli.profile).ok_or_else(|| {
                CliError::NotLoggedIn {
                    profile: cli.profile.clone(),
                }
            })?;
            let renewed = session::keep_fresh(&http, login, Duration::from_secs(60)).await?;
            let token = login.access_token.clone();
            if renewed {
                store.save(&credentials)?;
            }
            run_keys(&http, &token, command).await
        }
        Command::Logout => {
            let mut credentials = store.load()?;
            let Some(login) = credentials.profiles.remove(&cli.profile) else {
                eprintln!("not logged in (profile {})", cli.profile);
                return Ok(());
            };
            // Forgotten here whatever the IdP says; a refusal is reported.
            store.save(&credentials)?;
            session::revoke(&http, &login).await?;
            eprintln!("logged out of {} (profile {})", login.issuer, cli.profile);
            Ok(())
        }
    }
}

/// One `attach keys` command, with `token`.
async fn run_keys(http: &IdpClient, token: &str, command: KeysCommand) -> Result<(), CliError> {
    match command {
        KeysCommand::Create {
            backend,
            name,
            expires,
            models,
        } => {
            let body = keys::mint_request(name.as_deref(), expires.as_deref(), &models);
            let url = keys::collection(&backend);
            let minted = keys::send(http, http::Method::POST, &url, token, Some(&body)).await?;
            let key = minted["key"].as_str().ok_or_else(|| CliError::BadAnswer {
                endpoint: "/.attach/keys",
                problem: "no key in the answer".into(),
            })?;
            eprintln!(
                "key {} minted; it is shown only this once",
                minted["id"].as_str().unwrap_or("?")
            );
            println!("{key}");
        }
        KeysCommand::List { backend, all } => {
            let mut url = keys::collection(&backend);
            if all {
                url.push_str("?all=true");
            }
            let listed = keys::send(http, http::Method::GET, &url, token, None).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&listed["keys"]).unwrap_or_default()
            );
        }
        KeysCommand::Revoke { backend, id } => {
            let url = format!("{}/{id}", keys::collection(&backend));
            keys::send(http, http::Method::DELETE, &url, token, None).await?;
            eprintln!("key {id} revoked");
        }
    }
    Ok(())
}

/// The device flow at `issuer`, stored as `profile`.
async fn login(
    http: &IdpClient,
    store: &Store,
    profile: &str,
    issuer: &str,
    client_id: &str,
    scope: &str,
    preset: Preset,
) -> Result<(), CliError> {
    let endpoints = endpoints::of_issuer(http, issuer).await?;
    let started = device::start(http, &endpoints.device_authorization, client_id, scope).await?;
    match &started.verification_uri_complete {
        Some(complete) => eprintln!(
            "To log in, open {complete}\n(or {} and enter the code {})",
            started.verification_uri, started.user_code
        ),
        None => eprintln!(
            "To log in, open {} and enter the code {}",
            started.verification_uri, started.user_code
        ),
    }
    let tokens = device::wait(http, &endpoints.token, client_id, &started).await?;
    let login = Login {
        issuer: endpoints.issuer,
        client_id: client_id.to_owned(),
        preset,
        token_endpoint: endpoints.token,
        revocation_endpoint: endpoints.revocation,
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_at: session::now().saturating_add(tokens.lifetime.as_secs()),
    };
    let who = whoami::claims(&login.access_token)
        .ok()
        .and_then(|claims| {
            claims
                .get("preferred_username")
                .or_else(|| claims.get("sub"))
                .and_then(|v| v.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| "(an opaque token)".into());
    let mut credentials = store.load()?;
    credentials.profiles.insert(profile.to_owned(), login);
    store.save(&credentials)?;
    eprintln!("logged in as {who} at {issuer} (profile {profile})");
    Ok(())
}
