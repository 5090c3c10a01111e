//! What can go wrong, each with the message a person reads and acts on.

use std::path::PathBuf;

/// Why a command failed. Messages never carry a token or a secret.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No login is stored under this profile.
    #[error("not logged in (profile {profile}): run `attach login`")]
    NotLoggedIn { profile: String },
    /// The refresh token was refused: the session at the IdP has ended.
    #[error("the session at {issuer} has ended ({code}): run `attach login` again")]
    SessionEnded { issuer: String, code: String },
    /// The person refused the login, or it timed out.
    #[error("the login was not approved: {0}")]
    LoginNotApproved(&'static str),
    /// The IdP answered an OAuth error.
    #[error("{endpoint} refused: {code}")]
    Refused {
        endpoint: &'static str,
        code: String,
    },
    /// The backend's gateway refused a key request.
    #[error("the gateway answered {status} {code}: {message}")]
    Gateway {
        status: u16,
        code: String,
        message: String,
    },
    /// The IdP's answer is not what the protocol says.
    #[error("{endpoint} answered something unusable: {problem}")]
    BadAnswer {
        endpoint: &'static str,
        problem: String,
    },
    /// The IdP or the backend could not be reached, or refused a document.
    #[error(transparent)]
    Fetch(#[from] attach_sidecar::idp_client::FetchError),
    /// Discovery found no usable endpoint.
    #[error(transparent)]
    Discovery(#[from] attach_sidecar::discovery::DiscoveryError),
    /// The backend's metadata does not settle which IdP to use.
    #[error("{0}")]
    Metadata(String),
    /// The stored token carries none of the audiences asked for.
    #[error(
        "no stored login has a token for audience {0}: log in with a client whose tokens carry it"
    )]
    NoTokenFor(String),
    /// The token's claims cannot be read as the gateway reads them.
    #[error("the token's identity cannot be read: {0}")]
    Identity(String),
    /// The credentials file could not be read or written.
    #[error("{}: {source}", path.display())]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The credentials file is not ours.
    #[error("{}: not a credentials file: {message}", path.display())]
    StoreFormat { path: PathBuf, message: String },
    /// No place for the credentials file.
    #[error("no config directory: set ATTACH_CONFIG_DIR, XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
}

impl CliError {
    /// An OAuth error answer, by its code only (never its description,
    /// which may echo input).
    pub fn refused(endpoint: &'static str, body: &serde_json::Value) -> Self {
        Self::Refused {
            endpoint,
            code: oauth_code(body),
        }
    }
}

/// The OAuth `error` code of an answer, kept to its safe characters.
pub use attach_sidecar::oauth_answer::error_code as oauth_code;
