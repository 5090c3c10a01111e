//! The logins kept on this machine: one file, `credentials.json`, in the
//! user's config directory, readable by the user alone (0600 in a 0700
//! directory), replaced whole on every write so that a crash never leaves
//! half a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// The file's name in the config directory.
pub const FILE: &str = "credentials.json";

/// One login: where it came from and the tokens it holds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Login {
    /// The issuer, exactly as its tokens name it.
    pub issuer: String,
    /// The public client the login went through.
    pub client_id: String,
    /// How the gateway reads this issuer's claims (for `whoami`).
    #[serde(default)]
    pub preset: attach_sidecar::claims::Preset,
    pub token_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the access token expires (seconds since the epoch).
    pub expires_at: u64,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Every login, by profile name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    pub profiles: BTreeMap<String, Login>,
}

/// The credentials file in `dir`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default directory: `$ATTACH_CONFIG_DIR`, else
    /// `$XDG_CONFIG_HOME/attach`, else `$HOME/.config/attach`.
    pub fn default_dir(var: impl Fn(&str) -> Option<String>) -> Result<PathBuf, CliError> {
        let set = |key: &str| var(key).filter(|v| !v.is_empty()).map(PathBuf::from);
        set("ATTACH_CONFIG_DIR")
            .or_else(|| set("XDG_CONFIG_HOME").map(|d| d.join("attach")))
            .or_else(|| set("HOME").map(|d| d.join(".config").join("attach")))
            .ok_or(CliError::NoConfigDir)
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Reads the logins; none when the file does not exist. A file others
    /// can read is made the user's alone again, and said so.
    pub fn load(&self) -> Result<Credentials, CliError> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Credentials::default());
            }
            Err(source) => return Err(CliError::Store { path, source }),
        };
        let mode = std::fs::metadata(&path)
            .map_err(|source| CliError::Store {
                path: path.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: {} was readable by others (mode {:o}); made it 0600",
                path.display(),
                mode & 0o777
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| CliError::Store {
                    path: path.clone(),
                    source,
                },
            )?;
        }
        serde_json::from_str(&text).map_err(|e| CliError::StoreFormat {
            path,
            message: e.to_string(),
        })
    }

    /// Replaces the file with `credentials`: written to a new 0600 file
    /// beside it, synced, then renamed over it.
    pub fn save(&self, credentials: &Credentials) -> Result<(), CliError> {
        let store_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CliError::Store { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(store_err(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(store_err(&self.dir))?;
        let path = self.path();
        let temp = self.dir.join(format!(".{FILE}.{}", std::process::id()));
        let text = serde_json::to_vec_pretty(credentials).map_err(|e| CliError::StoreFormat {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(&text)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temp, &path));
        if let Err(source) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(CliError::Store { path, source });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    fn login() -> Login {
        Login {
            issuer: "https://idp.example".into(),
            client_id: "attach-cli".into(),
            preset: attach_sidecar::claims::Preset::Keycloak,
            token_endpoint: "https://idp.example/token".into(),
            revocation_endpoint: None,
            access_token: "access-secret".into(),
            refresh_token: Some("refresh-secret".into()),
            expires_at: 100,
        }
    }

    #[test]
    fn logins_round_trip_in_a_file_only_the_user_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("attach"));
        assert_eq!(store.load().unwrap(), Credentials::default());
        let mut credentials = Credentials::default();
        credentials.profiles.insert("default".into(), login());
        store.save(&credentials).unwrap();
        assert_eq!(store.load().unwrap(), credentials);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.path()), 0o600);
        assert_eq!(mode(&dir.path().join("attach")), 0o700);
        // Nothing but the file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("attach"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE]);
        // A file made readable by others is closed again on the next read.
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(store.load().unwrap(), credentials);
        assert_eq!(mode(&store.path()), 0o600);
    }

    #[test]
    fn a_foreign_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::write(store.path(), r#"{"tokens": []}"#).unwrap();
        assert!(matches!(store.load(), Err(CliError::StoreFormat { .. })));
    }

    #[test]
    fn tokens_stay_out_of_debug() {
        let text = format!("{:?}", login());
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn the_directory_follows_the_usual_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        type Vars = &'static [(&'static str, &'static str)];
        let cases: [(Vars, Option<&str>); 4] = [
            (&[("ATTACH_CONFIG_DIR", "/a"), ("HOME", "/h")], Some("/a")),
            (
                &[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")],
                Some("/x/attach"),
            ),
            (
                &[("HOME", "/h"), ("XDG_CONFIG_HOME", "")],
                Some("/h/.config/attach"),
            ),
            (&[], None),
        ];
        for (pairs, want) in cases {
            let got = Store::default_dir(env(pairs)).ok();
            assert_eq!(got, want.map(PathBuf::from), "{pairs:?}");
        }
    }
}
