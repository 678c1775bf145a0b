//! Reading credentials, at the moment they are needed, from where the configuration says
//! they are.
//!
//! The configuration (`crate::config`) only describes: a registry's [`Login`] is a user name
//! and a [`PasswordSource`]; the AMQP URL may have a `password_file`. This module reads them:
//! [`Login::resolve`], [`url_with_password`]. A password is never written in the
//! configuration file. The file says where to find it, a [`PasswordSource`]:
//!
//! - a file (a Kubernetes secret volume, a Docker secret);
//! - an environment variable;
//! - Docker's own `config.json` ([`DockerConfigSource`]): its `auths` entries and its
//!   credential helpers (`credHelpers`, `credsStore`), read with the `docker_credential`
//!   crate. That source gives the user name too.
//!
//! The password itself is read into a [`SecretString`], which does not print, and is zeroed
//! when dropped.
//!
//! Rotation: a password file and a Docker config are read again on every resolve, so a worker
//! picks up a rotated Kubernetes secret without a restart (the kubelet swaps the files of a
//! secret volume atomically; note that a secret mounted with `subPath` is *not* updated by
//! Kubernetes). An environment variable cannot change inside a running process, so rotating a
//! `password_env` secret needs a restart.
//!
//! Blocking: a credential helper is a process (`docker-credential-<name>`, found on `PATH`),
//! and the `docker_credential` crate waits for it synchronously. Resolving a Docker config
//! source therefore blocks; it is bounded by [`DOCKER_CREDENTIAL_TIMEOUT`], and async code
//! goes through [`Login::resolve_async`] (via `config::Registry::credentials_async`), which
//! runs every lookup, file reads included, on tokio's blocking pool.
//!
//! Errors name the file, the variable, the Docker credential key or the helper, never what was
//! read from them (a failing helper's output is not repeated either: it may hold a secret).

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// The largest password file read, in bytes. A password is short; a bigger file is almost
/// certainly the wrong path (a certificate bundle, a log), and is refused rather than read.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 64 * 1024;

/// The largest Docker `config.json` read, in bytes.
pub const MAX_DOCKER_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// How long a Docker config lookup (in practice: a credential helper) may take before it is
/// given up. The helper process is not killed (the `docker_credential` crate owns it); it is
/// left to finish on its own thread.
pub const DOCKER_CREDENTIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The key Docker stores Docker Hub credentials under, in `auths` and `credHelpers`, and what
/// it passes to credential helpers.
pub const DOCKER_HUB_CREDENTIAL_KEY: &str = "https://index.docker.io/v1/";

/// The user name a credential helper answers with when its secret is an identity token.
const IDENTITY_TOKEN_USER: &str = "<token>";

/// The key Docker looks credentials up by for a registry whose image references use `host`
/// (`host[:port]`, as in `reg.example.com:5000/team/app`): [`DOCKER_HUB_CREDENTIAL_KEY`] for
/// Docker Hub (`docker.io`, `index.docker.io`, `registry-1.docker.io`), else `host` itself.
pub fn docker_credential_key(host: &str) -> String {
    if pushfleet_shared::reference::is_docker_hub(host) {
        DOCKER_HUB_CREDENTIAL_KEY.to_owned()
    } else {
        host.to_owned()
    }
}

/// Who a registry logs in as and where the password is, as the configuration says: nothing is
/// read until [`resolve`](Self::resolve), and everything is read again at every call (so a
/// rotated password file or Docker config is picked up).
#[derive(Debug, Clone)]
pub struct Login {
    /// The user name. None only with a Docker config, which gives it; when set there, it must
    /// be the Docker config's user.
    pub username: Option<String>,
    /// Where the password (and, for a Docker config, the user) comes from.
    pub password: PasswordSource,
    /// Where `password_env` is looked up: the environment the configuration was loaded from.
    env: EnvSource,
}

/// Reading a catalogue registry's secret: the configuration says where it is
/// ([`Registry::login`](crate::config::Registry::login)); this module reads it.
impl crate::config::Registry {
    /// The credentials to push with, read now (see [`Login::resolve`]): None for an
    /// anonymous registry. Blocking; from async code, use
    /// [`credentials_async`](Self::credentials_async).
    pub fn credentials(&self) -> Result<Option<Credentials>, CredentialError> {
        self.login.as_ref().map(Login::resolve).transpose()
    }

    /// As [`credentials`](Self::credentials), read on tokio's blocking pool (see
    /// [`Login::resolve_async`]), so a slow credential helper does not stall other jobs.
    pub async fn credentials_async(&self) -> Result<Option<Credentials>, CredentialError> {
        match &self.login {
            Some(login) => login.resolve_async().await.map(Some),
            None => Ok(None),
        }
    }
}

impl Login {
    pub(crate) fn new(username: Option<String>, password: PasswordSource, env: EnvSource) -> Self {
        Self {
            username,
            password,
            env,
        }
    }

    /// The user name and password, read now.
    ///
    /// Blocking: with a Docker config, a credential helper may run (for at most
    /// [`DOCKER_CREDENTIAL_TIMEOUT`]). From async code, use
    /// [`resolve_async`](Self::resolve_async).
    pub fn resolve(&self) -> Result<Credentials, CredentialError> {
        let source = match &self.password {
            PasswordSource::DockerConfig(source) => source,
            other => {
                let password = other.resolve_with(&|name: &str| self.env.get(name))?;
                let username = self
                    .username
                    .clone()
                    .ok_or(CredentialError::NotConfigured {
                        what: "a login without a username".to_owned(),
                    })?;
                return Ok(Credentials { username, password });
            }
        };
        let login = source.resolve()?;
        match &self.username {
            Some(configured) if *configured != login.username => {
                Err(CredentialError::DockerConfigUserMismatch {
                    server: source.server.clone(),
                    path: source.path.clone(),
                    configured: configured.clone(),
                })
            }
            _ => Ok(login),
        }
    }

    /// As [`resolve`](Self::resolve), on tokio's blocking pool, so the runtime's worker
    /// threads are never held up by a file read or a credential helper. Needs a tokio runtime.
    pub async fn resolve_async(&self) -> Result<Credentials, CredentialError> {
        let login = self.clone();
        tokio::task::spawn_blocking(move || login.resolve())
            .await
            .map_err(|e| CredentialError::Interrupted {
                how: if e.is_panic() {
                    "panicked"
                } else {
                    "was cancelled"
                },
            })?
    }
}

/// `url` to connect with: with `password_file`, its content (read now, so a rotated secret is
/// picked up at the next connection) as the URL's password, percent-encoded; else `url` as it
/// is. Expose it only where the connection is made.
pub fn url_with_password(
    url: &Url,
    password_file: Option<&Path>,
) -> Result<SecretString, CredentialError> {
    let Some(path) = password_file else {
        return Ok(SecretString::from(url.to_string()));
    };
    let password = read_password_file(path)?;
    let mut url = url.clone();
    url.set_password(Some(password.expose_secret()))
        .map_err(|()| CredentialError::NotConfigured {
            what: "the AMQP URL (it cannot carry a password)".to_owned(),
        })?;
    Ok(SecretString::from(String::from(url)))
}

/// Where environment variables are read: the process's environment, or a map given to
/// `config::load` (tests), for overrides and for `password_env`, then and later.
#[derive(Clone)]
pub(crate) enum EnvSource {
    Process,
    Map(Arc<HashMap<String, String>>),
}

impl EnvSource {
    pub(crate) fn new(map: Option<HashMap<String, String>>) -> Self {
        map.map_or(Self::Process, |map| Self::Map(Arc::new(map)))
    }

    pub(crate) fn get(&self, name: &str) -> Option<String> {
        match self {
            Self::Process => std::env::var(name).ok(),
            Self::Map(map) => map.get(name).cloned(),
        }
    }

    /// Every variable whose name is Unicode; None for a value that is not.
    pub(crate) fn all(&self) -> Vec<(String, Option<String>)> {
        match self {
            Self::Process => std::env::vars_os()
                .filter_map(|(name, value)| {
                    Some((name.into_string().ok()?, value.into_string().ok()))
                })
                .collect(),
            Self::Map(map) => map
                .iter()
                .map(|(name, value)| (name.clone(), Some(value.clone())))
                .collect(),
        }
    }
}

impl fmt::Debug for EnvSource {
    // Never the values: the environment holds passwords.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Process => f.write_str("ProcessEnvironment"),
            Self::Map(map) => write!(f, "InjectedEnvironment({} variables)", map.len()),
        }
    }
}

/// Where a password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// The contents of this file, read on every resolve (so rotation is picked up).
    File(PathBuf),
    /// The value of this environment variable.
    Env(String),
    /// Docker's `config.json`, which also gives the user name.
    DockerConfig(DockerConfigSource),
}

impl PasswordSource {
    /// Reads the password from the process environment, the file or the Docker config.
    ///
    /// One trailing newline (`\n` or `\r\n`) is removed from a file or variable, since `echo`
    /// and most editors add one; nothing else is trimmed. An empty result is an error: an
    /// empty password only ever leads to a confusing authentication failure later.
    ///
    /// Blocks while a Docker credential helper runs (see [`DockerConfigSource::resolve`]).
    pub fn resolve(&self) -> Result<SecretString, CredentialError> {
        self.resolve_with(&|name: &str| std::env::var(name).ok())
    }

    /// As [`resolve`](Self::resolve), looking environment variables up with `env` instead of
    /// the process environment (tests, and a configuration loaded from an injected map).
    pub fn resolve_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SecretString, CredentialError> {
        match self {
            Self::File(path) => read_password_file(path),
            Self::Env(name) => {
                let value =
                    env(name).ok_or_else(|| CredentialError::EnvUnset { name: name.clone() })?;
                let value = strip_one_newline(value);
                if value.is_empty() {
                    return Err(CredentialError::EnvEmpty { name: name.clone() });
                }
                Ok(SecretString::from(value))
            }
            Self::DockerConfig(source) => source.resolve().map(|login| login.password),
        }
    }
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(name) => write!(f, "env {name}"),
            Self::DockerConfig(source) => write!(f, "{source}"),
        }
    }
}

/// Credentials from Docker's `config.json`: the entry for [`server`](Self::server) in `auths`,
/// or what the credential helper named by `credHelpers` (for that key) or `credsStore` answers.
///
/// The key is matched as Docker does: exactly for `credHelpers`; for `auths`, a key written
/// with a scheme or path (`https://reg.example.com`, `https://index.docker.io/v1/`) also
/// matches its host, and `docker.io`, `registry-1.docker.io` and `index.docker.io` are one.
/// An identity token (an OAuth refresh token, e.g. from `az acr login`) is refused: pushfleet
/// logs in with a user name and a password or access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfigSource {
    /// The `config.json` file, read on every resolve.
    pub path: PathBuf,
    /// The credential key: [`DOCKER_HUB_CREDENTIAL_KEY`] for Docker Hub, else `host[:port]`
    /// (see [`docker_credential_key`]).
    pub server: String,
}

impl fmt::Display for DockerConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "docker config {} (key {})",
            self.path.display(),
            self.server
        )
    }
}

/// Only the parts of a Docker config that name helpers (for messages); never a secret.
#[derive(Debug, Default, serde::Deserialize)]
struct HelperNames {
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers")]
    cred_helpers: Option<HashMap<String, String>>,
}

impl HelperNames {
    /// The helper the lookup of `server` may run: its `credHelpers` entry, else `credsStore`.
    fn helper_for(&self, server: &str) -> Option<String> {
        self.cred_helpers
            .as_ref()
            .and_then(|helpers| helpers.get(server))
            .filter(|name| !name.is_empty())
            .or(self.creds_store.as_ref().filter(|name| !name.is_empty()))
            .map(|name| format!("docker-credential-{name}"))
    }
}

impl DockerConfigSource {
    /// The user name and password for [`server`](Self::server), read now, waiting at most
    /// [`DOCKER_CREDENTIAL_TIMEOUT`] for a credential helper. Blocks the calling thread: from
    /// async code, use [`Login::resolve_async`].
    pub fn resolve(&self) -> Result<Credentials, CredentialError> {
        self.resolve_within(DOCKER_CREDENTIAL_TIMEOUT)
    }

    /// As [`resolve`](Self::resolve) with another time limit. The lookup runs on its own
    /// thread, which is left behind if it does not finish in time.
    pub fn resolve_within(&self, timeout: Duration) -> Result<Credentials, CredentialError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let source = self.clone();
        std::thread::Builder::new()
            .name("docker-credential".to_owned())
            .spawn(move || {
                // The receiver is gone only after a timeout, which is already reported.
                let _ = tx.send(source.lookup());
            })
            .map_err(|e| CredentialError::DockerCredentialHelper {
                helper: "(lookup thread)".to_owned(),
                server: self.server.clone(),
                problem: format!("cannot start a thread for the lookup: {e}"),
            })?;
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(CredentialError::DockerCredentialTimeout {
                    server: self.server.clone(),
                    path: self.path.clone(),
                    after: timeout,
                })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(CredentialError::DockerCredentialHelper {
                    helper: "(lookup thread)".to_owned(),
                    server: self.server.clone(),
                    problem: "the lookup ended without an answer".to_owned(),
                })
            }
        }
    }

    /// The lookup itself: read and check the file, then let `docker_credential` find the
    /// entry (running a helper if the file says so). Blocking, without a time limit.
    fn lookup(&self) -> Result<Credentials, CredentialError> {
        let mut bytes = self.read()?;
        let result = self.lookup_in(&bytes);
        secrecy::zeroize::Zeroize::zeroize(&mut bytes);
        result
    }

    fn read(&self) -> Result<Vec<u8>, CredentialError> {
        let unreadable = |error| CredentialError::DockerConfigUnreadable {
            path: self.path.clone(),
            error,
        };
        let file = std::fs::File::open(&self.path).map_err(unreadable)?;
        let mut bytes = Vec::new();
        file.take(MAX_DOCKER_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > MAX_DOCKER_CONFIG_BYTES {
            secrecy::zeroize::Zeroize::zeroize(&mut bytes);
            return Err(self.invalid(format!(
                "is larger than {MAX_DOCKER_CONFIG_BYTES} bytes: is it the right file?"
            )));
        }
        Ok(bytes)
    }

    fn invalid(&self, problem: String) -> CredentialError {
        CredentialError::DockerConfigInvalid {
            path: self.path.clone(),
            problem,
        }
    }

    fn unusable(&self, problem: &str) -> CredentialError {
        CredentialError::DockerCredentialUnusable {
            server: self.server.clone(),
            path: self.path.clone(),
            problem: problem.to_owned(),
        }
    }

    fn none_found(&self, detail: String) -> CredentialError {
        CredentialError::NoDockerCredential {
            server: self.server.clone(),
            path: self.path.clone(),
            detail,
        }
    }

    fn lookup_in(&self, bytes: &[u8]) -> Result<Credentials, CredentialError> {
        use docker_credential::{CredentialRetrievalError as E, DockerCredential};

        // Syntax first, reported by position only: serde_json's messages can quote a value.
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            return Err(self.invalid(format!(
                "is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            )));
        }
        let shape = || {
            self.invalid(
                "is not a Docker config.json (auths must be an object of objects, credHelpers \
                 an object of strings, credsStore a string)"
                    .to_owned(),
            )
        };
        let names: HelperNames = serde_json::from_slice(bytes).map_err(|_| shape())?;
        let helper = || {
            names
                .helper_for(&self.server)
                .unwrap_or_else(|| "docker-credential-(unknown)".to_owned())
        };
        let helper_error = |problem: &str| CredentialError::DockerCredentialHelper {
            helper: helper(),
            server: self.server.clone(),
            problem: problem.to_owned(),
        };
        let found = docker_credential::get_credential_from_reader(bytes, &self.server);
        let (username, password) = match found {
            Ok(DockerCredential::UsernamePassword(username, password)) => (username, password),
            Ok(DockerCredential::IdentityToken(mut token)) => {
                secrecy::zeroize::Zeroize::zeroize(&mut token);
                return Err(self.unusable(
                    "it holds an identity token (an OAuth refresh token), and pushfleet logs in \
                     with a user name and a password or access token: log in with those \
                     (`docker login -u <user>`)",
                ));
            }
            Err(E::NoCredentialConfigured) => {
                let detail = match &names.creds_store {
                    Some(store) if !store.is_empty() => format!(
                        "no auths or credHelpers entry for it, and credsStore \
                         `docker-credential-{store}` was asked"
                    ),
                    _ => "no auths or credHelpers entry for it, and no credsStore".to_owned(),
                };
                return Err(self.none_found(detail));
            }
            Err(E::HelperFailure { stdout, stderr, .. }) => {
                // The output is never repeated: a helper may print anything, a secret too.
                let not_found = [&stdout, &stderr]
                    .iter()
                    .any(|out| out.to_ascii_lowercase().contains("credentials not found"));
                if not_found {
                    return Err(self.none_found(format!("{} has none for it", helper())));
                }
                return Err(helper_error(
                    "it exited with an error (its output is not shown: it may hold a secret)",
                ));
            }
            Err(E::HelperCommunicationError) => {
                return Err(helper_error(
                    "cannot run it, or talk to it: is it installed, executable and on the \
                     worker's PATH?",
                ));
            }
            Err(E::MalformedHelperResponse) => {
                return Err(helper_error(
                    "its answer is not the JSON a credential helper gives \
                     ({\"Username\": .., \"Secret\": ..})",
                ));
            }
            Err(E::CredentialDecodingError) => {
                return Err(self.unusable(
                    "its `auth` field is not base64 of `user:password` (as `docker login` \
                     writes it)",
                ));
            }
            Err(E::CredentialMismatchError) => {
                return Err(
                    self.unusable("its `auth` field disagrees with its username/password fields")
                );
            }
            Err(E::ConfigReadError | E::ConfigNotFound) => return Err(shape()),
        };
        let password = SecretString::from(password);
        if username == IDENTITY_TOKEN_USER {
            return Err(self.unusable(
                "the credential helper answered with an identity token (user `<token>`), and \
                 pushfleet logs in with a user name and a password or access token",
            ));
        }
        if username.is_empty() {
            return Err(self.unusable("its user name is empty"));
        }
        if password.expose_secret().is_empty() {
            return Err(self.unusable("its password is empty"));
        }
        Ok(Credentials { username, password })
    }
}

fn read_password_file(path: &Path) -> Result<SecretString, CredentialError> {
    let unreadable = |error| CredentialError::FileUnreadable {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    // Read one byte past the limit to tell "exactly at the limit" from "too large".
    file.take(MAX_PASSWORD_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_PASSWORD_FILE_BYTES {
        secrecy::zeroize::Zeroize::zeroize(&mut bytes);
        return Err(CredentialError::FileTooLarge {
            path: path.to_path_buf(),
            limit: MAX_PASSWORD_FILE_BYTES,
        });
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            secrecy::zeroize::Zeroize::zeroize(&mut error.into_bytes());
            return Err(CredentialError::FileNotUtf8 {
                path: path.to_path_buf(),
            });
        }
    };
    let text = strip_one_newline(text);
    if text.is_empty() {
        return Err(CredentialError::FileEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(SecretString::from(text))
}

/// Removes one trailing `\n` or `\r\n`, and nothing else: spaces may be part of a password.
fn strip_one_newline(mut value: String) -> String {
    if value.ends_with("\r\n") {
        value.truncate(value.len() - 2);
    } else if value.ends_with('\n') {
        value.truncate(value.len() - 1);
    }
    value
}

/// Why a password could not be read. Names the file or variable, never the content.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The password file could not be opened or read (missing, permissions, a directory).
    #[error("cannot read password file {}: {error}", path.display())]
    FileUnreadable {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The password file is larger than [`MAX_PASSWORD_FILE_BYTES`].
    #[error("password file {} is larger than {limit} bytes: is it the right file?", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The password file is not UTF-8 text.
    #[error("password file {} is not UTF-8 text", path.display())]
    FileNotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// The password file is empty, or holds only a newline.
    #[error("password file {} is empty", path.display())]
    FileEmpty {
        /// The file.
        path: PathBuf,
    },
    /// The environment variable is not set (or its value is not valid Unicode).
    #[error("environment variable {name} is not set")]
    EnvUnset {
        /// The variable's name.
        name: String,
    },
    /// The environment variable is set but empty.
    #[error("environment variable {name} is empty")]
    EnvEmpty {
        /// The variable's name.
        name: String,
    },
    /// Something that needs credentials has no complete source for them (a login without a
    /// username, a URL that cannot carry a password). `config::load` refuses such a
    /// configuration, so this is only seen for values changed after loading.
    #[error("{what}: no usable credentials are configured")]
    NotConfigured {
        /// What lacks credentials, e.g. "registry `harbor`".
        what: String,
    },
    /// The Docker config file could not be opened or read.
    #[error("cannot read docker config {}: {error}", path.display())]
    DockerConfigUnreadable {
        /// The `config.json` file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The Docker config file is too large, not JSON, or not shaped like a `config.json`.
    #[error("docker config {} {problem}", path.display())]
    DockerConfigInvalid {
        /// The `config.json` file.
        path: PathBuf,
        /// What is wrong (never a value from the file).
        problem: String,
    },
    /// Nothing in the Docker config resolves to credentials for the key: no `auths` entry, no
    /// `credHelpers` entry, and no `credsStore` (or the helper has none for it).
    #[error(
        "no usable credentials for `{server}` in docker config {}: {detail}; log in with \
         `DOCKER_CONFIG=<the file's directory> docker login` for that registry, or use \
         password_file or password_env",
        path.display()
    )]
    NoDockerCredential {
        /// The credential key looked up, e.g. `https://index.docker.io/v1/` or
        /// `reg.example.com:5000`.
        server: String,
        /// The `config.json` file.
        path: PathBuf,
        /// Where it was looked for.
        detail: String,
    },
    /// The entry for the key exists but cannot be used (an identity token, an `auth` field
    /// that does not decode, an empty user or password).
    #[error("the docker config entry for `{server}` in {} cannot be used: {problem}", path.display())]
    DockerCredentialUnusable {
        /// The credential key.
        server: String,
        /// The `config.json` file.
        path: PathBuf,
        /// Why (never the entry's content).
        problem: String,
    },
    /// A credential helper could not be run, failed, or answered nonsense.
    #[error("credential helper {helper} (for `{server}`): {problem}")]
    DockerCredentialHelper {
        /// The helper's program name, e.g. `docker-credential-pass`.
        helper: String,
        /// The credential key it was asked for.
        server: String,
        /// What went wrong (never the helper's output).
        problem: String,
    },
    /// The lookup (a credential helper, in practice) did not finish in time.
    #[error(
        "looking up `{server}` in docker config {} took longer than {} s (a credential helper \
         waiting for input?)",
        path.display(),
        after.as_secs()
    )]
    DockerCredentialTimeout {
        /// The credential key.
        server: String,
        /// The `config.json` file.
        path: PathBuf,
        /// The time limit.
        after: Duration,
    },
    /// The registry's configured `username` is not the user the Docker config holds for it.
    #[error(
        "the docker config {} holds credentials for `{server}` of another user than the \
         configured username `{configured}`: log in as `{configured}` there, or remove \
         username to take the docker config's user",
        path.display()
    )]
    DockerConfigUserMismatch {
        /// The credential key.
        server: String,
        /// The `config.json` file.
        path: PathBuf,
        /// The `username` of the registry's configuration.
        configured: String,
    },
    /// The lookup on tokio's blocking pool did not finish (it panicked, or the runtime is
    /// shutting down).
    #[error("the credential lookup {how}")]
    Interrupted {
        /// What happened to it.
        how: &'static str,
    },
}

/// A username and its password, ready to hand to a registry or the Docker daemon.
#[derive(Clone)]
pub struct Credentials {
    /// The user name (not secret: it appears in `check-config` output and logs).
    pub username: String,
    /// The password or token.
    pub password: SecretString,
}

impl Credentials {
    /// Credentials from a user name and a password (a `String`, `&str` or `SecretString`).
    pub fn new(username: impl Into<String>, password: impl Into<SecretString>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &format_args!("<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret;

    use super::*;

    const SECRET: &str = "S3cr3t-Pa55-zz9";

    fn file_with(dir: &tempfile::TempDir, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write test file");
        path
    }

    /// A password file with `content`; the directory lives as long as the returned guard.
    fn file_source(content: &[u8]) -> (tempfile::TempDir, PasswordSource) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file_with(&dir, "pw", content);
        (dir, PasswordSource::File(path))
    }

    #[test]
    fn file_strips_exactly_one_trailing_newline() {
        let cases: &[(&[u8], &str)] = &[
            (b"pw", "pw"),
            (b"pw\n", "pw"),
            (b"pw\r\n", "pw"),
            (b"pw\n\n", "pw\n"),
            (b" pw \n", " pw "),
            (b"p\nw", "p\nw"),
        ];
        for (content, expected) in cases {
            let (_dir, source) = file_source(content);
            let got = source.resolve().expect("readable password file");
            assert_eq!(got.expose_secret(), *expected, "content {content:?}");
        }
    }

    #[test]
    fn empty_file_or_lone_newline_is_an_error() {
        for content in [&b""[..], b"\n", b"\r\n"] {
            let (_dir, source) = file_source(content);
            let err = source.resolve().expect_err("empty password");
            assert!(matches!(err, CredentialError::FileEmpty { .. }), "{err:?}");
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent");
        let err = PasswordSource::File(path.clone())
            .resolve()
            .expect_err("missing file");
        assert!(matches!(err, CredentialError::FileUnreadable { .. }));
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn errors_never_contain_the_content() {
        let mut too_large = SECRET.as_bytes().to_vec();
        too_large.resize(MAX_PASSWORD_FILE_BYTES as usize + 1, b'x');
        let mut not_utf8 = SECRET.as_bytes().to_vec();
        not_utf8.push(0xff);
        for content in [too_large, not_utf8] {
            let (_dir, source) = file_source(&content);
            let err = source.resolve().expect_err("refused");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(SECRET), "{shown}");
        }
    }

    #[test]
    fn file_of_exactly_the_limit_is_accepted() {
        let content = vec![b'a'; MAX_PASSWORD_FILE_BYTES as usize];
        let (_dir, source) = file_source(&content);
        let got = source.resolve().expect("at the limit");
        assert_eq!(got.expose_secret().len(), content.len());
    }

    #[test]
    fn file_is_read_again_on_every_resolve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file_with(&dir, "pw", b"first\n");
        let source = PasswordSource::File(path.clone());
        assert_eq!(source.resolve().expect("first").expose_secret(), "first");
        std::fs::write(&path, b"rotated\n").expect("rotate");
        assert_eq!(source.resolve().expect("second").expose_secret(), "rotated");
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn env_variable_is_read_through_the_lookup() {
        let env = env_of(&[("PF_TEST_PW", "tok\n")]);
        let got = PasswordSource::Env("PF_TEST_PW".into())
            .resolve_with(&env)
            .expect("set");
        assert_eq!(got.expose_secret(), "tok");
    }

    #[test]
    fn env_variable_unset_or_empty_is_an_error_naming_it() {
        let env = env_of(&[("PF_TEST_EMPTY", ""), ("PF_TEST_NL", "\n")]);
        let unset = PasswordSource::Env("PF_TEST_UNSET".into())
            .resolve_with(&env)
            .expect_err("unset");
        assert!(matches!(unset, CredentialError::EnvUnset { .. }));
        assert!(unset.to_string().contains("PF_TEST_UNSET"), "{unset}");
        for name in ["PF_TEST_EMPTY", "PF_TEST_NL"] {
            let err = PasswordSource::Env(name.into())
                .resolve_with(&env)
                .expect_err("empty");
            assert!(matches!(err, CredentialError::EnvEmpty { .. }), "{err:?}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn resolve_uses_the_process_environment() {
        // Reads only: PATH is set in any environment the tests run in. Mutating the process
        // environment is `unsafe` in edition 2024, and forbidden here.
        let got = PasswordSource::Env("PATH".into()).resolve().expect("PATH");
        assert!(!got.expose_secret().is_empty());
    }

    #[test]
    fn source_display_says_where_not_what() {
        assert_eq!(
            PasswordSource::File("/run/secrets/harbor".into()).to_string(),
            "file /run/secrets/harbor"
        );
        assert_eq!(
            PasswordSource::Env("HARBOR_PASSWORD".into()).to_string(),
            "env HARBOR_PASSWORD"
        );
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let creds = Credentials {
            username: "robot$ci".into(),
            password: SecretString::from(SECRET),
        };
        let shown = format!("{creds:?} {creds:#?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("robot$ci"), "{shown}");
    }

    // --- Docker config.json ---

    fn b64(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    /// A `config.json` with `json` in a fresh directory; the source looks up `server`.
    fn docker_source(json: &str, server: &str) -> (tempfile::TempDir, DockerConfigSource) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file_with(&dir, "config.json", json.as_bytes());
        let source = DockerConfigSource {
            path,
            server: server.to_owned(),
        };
        (dir, source)
    }

    /// Every way the source shows itself and `err`, which must not contain `secret`.
    fn assert_hidden(err: &CredentialError, secret: &str) {
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains(&b64(secret)), "{shown}");
    }

    #[test]
    fn docker_credential_keys_are_what_docker_stores() {
        let cases = [
            ("docker.io", DOCKER_HUB_CREDENTIAL_KEY),
            ("index.docker.io", DOCKER_HUB_CREDENTIAL_KEY),
            ("registry-1.docker.io", DOCKER_HUB_CREDENTIAL_KEY),
            ("reg.example.com", "reg.example.com"),
            ("reg.example.com:5000", "reg.example.com:5000"),
            ("127.0.0.1:5001", "127.0.0.1:5001"),
        ];
        for (host, key) in cases {
            assert_eq!(docker_credential_key(host), key, "{host}");
        }
        assert_eq!(DOCKER_HUB_CREDENTIAL_KEY, "https://index.docker.io/v1/");
    }

    #[test]
    fn docker_config_auths_entries_resolve() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{hub}"}},
                "reg.example.com:5000": {{"auth": "{reg}"}},
                "https://other.example.com": {{"auth": "{other}"}},
                "fields.example.com": {{"username": "fielduser", "password": "{SECRET}"}}
            }}}}"#,
            hub = b64(&format!("hubuser:{SECRET}")),
            reg = b64("robot$ci:pw:with:colons"),
            other = b64("otheruser:other-pw"),
        );
        let cases = [
            (DOCKER_HUB_CREDENTIAL_KEY, "hubuser", SECRET),
            ("reg.example.com:5000", "robot$ci", "pw:with:colons"),
            // Written with a scheme (older `docker login`), still found by host.
            ("other.example.com", "otheruser", "other-pw"),
            ("fields.example.com", "fielduser", SECRET),
        ];
        for (server, user, password) in cases {
            let (_dir, source) = docker_source(&json, server);
            let login = source.resolve().unwrap_or_else(|e| panic!("{server}: {e}"));
            assert_eq!(login.username, user, "{server}");
            assert_eq!(login.password.expose_secret(), password, "{server}");
            assert!(!format!("{login:?}").contains(password));
        }
    }

    #[test]
    fn docker_config_without_an_entry_names_the_key() {
        let json = format!(
            r#"{{"auths": {{"reg.example.com": {{"auth": "{}"}}}}}}"#,
            b64(&format!("u:{SECRET}"))
        );
        for server in [DOCKER_HUB_CREDENTIAL_KEY, "reg.example.com:5000"] {
            let (_dir, source) = docker_source(&json, server);
            let err = source.resolve().expect_err("no entry");
            assert!(
                matches!(err, CredentialError::NoDockerCredential { .. }),
                "{err:?}"
            );
            let shown = err.to_string();
            assert!(shown.contains("no usable credentials"), "{shown}");
            assert!(shown.contains(&format!("`{server}`")), "{shown}");
            assert!(
                shown.contains(&source.path.display().to_string()),
                "{shown}"
            );
            assert_hidden(&err, SECRET);
        }
        // An empty entry (what `docker login` leaves with a credsStore) and no store: none.
        let (_dir, source) =
            docker_source(r#"{"auths": {"reg.example.com": {}}}"#, "reg.example.com");
        let err = source.resolve().expect_err("empty entry");
        assert!(
            matches!(err, CredentialError::NoDockerCredential { .. }),
            "{err:?}"
        );
        let (_dir, source) = docker_source("{}", "reg.example.com");
        assert!(matches!(
            source.resolve(),
            Err(CredentialError::NoDockerCredential { .. })
        ));
    }

    #[test]
    fn docker_config_problems_never_show_the_content() {
        let secret_auth = b64(&format!("u:{SECRET}"));
        let cases = [
            // Not JSON: only the position is reported.
            (
                format!(r#"{{"auths": {{"r": {{"auth": "{secret_auth}"}} "#),
                "not valid JSON",
            ),
            (
                format!(r#"{{"auths": "{SECRET}"}}"#),
                "not a Docker config.json",
            ),
            (
                format!(r#"{{"credsStore": ["{SECRET}"]}}"#),
                "not a Docker config.json",
            ),
            // An auth field that is not base64 of user:password.
            (
                format!(r#"{{"auths": {{"r": {{"auth": "{SECRET}!"}}}}}}"#),
                "not base64",
            ),
            (
                format!(r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#, b64(SECRET)),
                "not base64",
            ),
            // auth and the username/password fields disagree.
            (
                format!(
                    r#"{{"auths": {{"r": {{"auth": "{secret_auth}", "username": "u", "password": "other"}}}}}}"#
                ),
                "disagrees",
            ),
            (
                format!(r#"{{"auths": {{"r": {{"identitytoken": "{SECRET}"}}}}}}"#),
                "identity token",
            ),
            (
                format!(r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#, b64("u:")),
                "password is empty",
            ),
            (
                format!(
                    r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#,
                    b64(&format!(":{SECRET}"))
                ),
                "user name is empty",
            ),
        ];
        for (json, expected) in cases {
            let (_dir, source) = docker_source(&json, "r");
            let err = source.resolve().expect_err(expected);
            assert!(err.to_string().contains(expected), "{expected}: {err}");
            assert_hidden(&err, SECRET);
        }
    }

    #[test]
    fn docker_config_file_problems_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = DockerConfigSource {
            path: dir.path().join("absent.json"),
            server: "r".into(),
        };
        let err = missing.resolve().expect_err("missing");
        assert!(
            matches!(err, CredentialError::DockerConfigUnreadable { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("absent.json"), "{err}");

        let mut big = format!(
            r#"{{"auths": {{"r": {{"auth": "{}"}}}}, "x": ""#,
            b64(&format!("u:{SECRET}"))
        );
        big.push_str(&"a".repeat(MAX_DOCKER_CONFIG_BYTES as usize));
        big.push_str("\"}");
        let (_dir, source) = docker_source(&big, "r");
        let err = source.resolve().expect_err("too large");
        assert!(err.to_string().contains("larger than"), "{err}");
        assert_hidden(&err, SECRET);
    }

    #[test]
    fn docker_config_is_read_again_on_every_resolve() {
        let (_dir, source) = docker_source(
            &format!(r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#, b64("u:first")),
            "r",
        );
        assert_eq!(
            source.resolve().expect("first").password.expose_secret(),
            "first"
        );
        std::fs::write(
            &source.path,
            format!(
                r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#,
                b64("u:rotated")
            ),
        )
        .expect("rotate");
        assert_eq!(
            source.resolve().expect("second").password.expose_secret(),
            "rotated"
        );
        // Through the PasswordSource too.
        let password = PasswordSource::DockerConfig(source.clone())
            .resolve()
            .expect("as a password source");
        assert_eq!(password.expose_secret(), "rotated");
        assert_eq!(
            PasswordSource::DockerConfig(source.clone()).to_string(),
            format!("docker config {} (key r)", source.path.display())
        );
    }

    #[tokio::test]
    async fn logins_resolve_off_the_runtime_and_check_the_user() {
        let (_dir, source) = docker_source(
            &format!(
                r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#,
                b64(&format!("u:{SECRET}"))
            ),
            "r",
        );
        let env = || {
            EnvSource::new(Some(HashMap::from([(
                "PW".to_owned(),
                format!("{SECRET}\n"),
            )])))
        };
        let docker = |user: Option<&str>| {
            Login::new(
                user.map(str::to_owned),
                PasswordSource::DockerConfig(source.clone()),
                env(),
            )
        };
        for user in [None, Some("u")] {
            let login = docker(user).resolve_async().await.expect("resolved");
            assert_eq!(login.username, "u");
            assert_eq!(login.password.expose_secret(), SECRET);
        }
        let err = docker(Some("other")).resolve().expect_err("another user");
        assert!(
            matches!(err, CredentialError::DockerConfigUserMismatch { .. }),
            "{err:?}"
        );
        assert_hidden(&err, SECRET);

        // A variable is looked up in the environment the login was given.
        let by_env = Login::new(Some("me".into()), PasswordSource::Env("PW".into()), env());
        let login = by_env.resolve_async().await.expect("set");
        assert_eq!(
            (login.username.as_str(), login.password.expose_secret()),
            ("me", SECRET)
        );
        let no_user = Login::new(None, PasswordSource::Env("PW".into()), env());
        assert!(matches!(
            no_user.resolve(),
            Err(CredentialError::NotConfigured { .. })
        ));
        assert!(!format!("{by_env:?}").contains(SECRET), "{by_env:?}");
    }

    #[test]
    fn url_with_password_reads_the_file_and_percent_encodes_it() {
        let url = Url::parse("amqps://pf@rabbit/vhost").expect("url");
        let (_dir, source) = file_source(b"p@ss/w:rd\n");
        let PasswordSource::File(path) = source else {
            unreachable!()
        };
        let with = url_with_password(&url, Some(&path)).expect("readable");
        assert_eq!(
            with.expose_secret(),
            "amqps://pf:p%40ss%2Fw%3Ard@rabbit/vhost"
        );
        let without = url_with_password(&url, None).expect("as is");
        assert_eq!(without.expose_secret(), "amqps://pf@rabbit/vhost");
        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(
            url_with_password(&url, Some(&path)),
            Err(CredentialError::FileUnreadable { .. })
        ));
    }

    // --- Credential helpers ---
    //
    // `docker_credential` runs `docker-credential-<name>` looked up on PATH, and PATH is
    // process-wide (and changing it is `unsafe` in edition 2024, which this crate forbids). So
    // the test runs itself again as a child process whose PATH starts with a directory holding
    // a fake helper, and the helper cases run there.

    /// Set in the child process: the directory holding the fake helpers.
    const HELPER_DIR_VAR: &str = "PUSHFLEET_TEST_CREDENTIAL_HELPER_DIR";

    /// The fake helper `docker-credential-pftest`: answers for `127.0.0.1:5999` and Docker
    /// Hub, says "not found" for `absent.example.com`, fails printing the secret for
    /// `leaky.example.com`, answers an identity token for `token.example.com`, nonsense for
    /// `garbled.example.com`, and hangs for `slow.example.com`.
    const HELPER_SCRIPT: &str = r#"#!/bin/sh
[ "$1" = get ] || exit 3
server=$(cat)
case "$server" in
  127.0.0.1:5999) echo '{"ServerURL":"127.0.0.1:5999","Username":"helper-user","Secret":"S3cr3t-Pa55-zz9"}' ;;
  https://index.docker.io/v1/) echo '{"ServerURL":"https://index.docker.io/v1/","Username":"hub-user","Secret":"S3cr3t-Pa55-zz9"}' ;;
  absent.example.com) echo 'credentials not found in native keychain'; exit 1 ;;
  leaky.example.com) echo 'oops S3cr3t-Pa55-zz9'; echo 'S3cr3t-Pa55-zz9' >&2; exit 1 ;;
  token.example.com) echo '{"ServerURL":"token.example.com","Username":"<token>","Secret":"S3cr3t-Pa55-zz9"}' ;;
  garbled.example.com) echo 'S3cr3t-Pa55-zz9' ;;
  slow.example.com) exec sleep 5 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"#;

    #[test]
    fn credential_helpers_are_run_from_path() {
        if let Some(dir) = std::env::var_os(HELPER_DIR_VAR) {
            helper_cases(Path::new(&dir));
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let helper = file_with(&dir, "docker-credential-pftest", HELPER_SCRIPT.as_bytes());
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = match std::env::var_os("PATH") {
            Some(path) => {
                let mut dirs = vec![dir.path().to_path_buf()];
                dirs.extend(std::env::split_paths(&path));
                std::env::join_paths(dirs).expect("PATH")
            }
            None => dir.path().as_os_str().to_owned(),
        };
        let exe = std::env::current_exe().expect("the test binary");
        let output = std::process::Command::new(exe)
            .args([
                "credentials::tests::credential_helpers_are_run_from_path",
                "--exact",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("PATH", path)
            .env(HELPER_DIR_VAR, dir.path())
            .output()
            .expect("run the test binary again");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "helper cases failed:\n{stdout}\n{stderr}"
        );
        // The child really ran the cases (a filter matching nothing would pass too).
        assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
        assert!(stdout.contains("helper cases: 9 checked"), "{stdout}");
    }

    /// Runs in the child process, with the fake helper first on PATH.
    fn helper_cases(dir: &Path) {
        let write = |name: &str, json: &str| {
            let path = dir.join(name);
            std::fs::write(&path, json).expect("write config");
            path
        };
        let helpers = write(
            "helpers.json",
            r#"{"auths": {"127.0.0.1:5999": {}}, "credHelpers": {
                "127.0.0.1:5999": "pftest", "https://index.docker.io/v1/": "pftest",
                "absent.example.com": "pftest", "leaky.example.com": "pftest",
                "token.example.com": "pftest", "garbled.example.com": "pftest",
                "slow.example.com": "pftest", "missing.example.com": "not-installed-xyz"}}"#,
        );
        let store = write("store.json", r#"{"credsStore": "pftest"}"#);
        let source = |path: &Path, server: &str| DockerConfigSource {
            path: path.to_path_buf(),
            server: server.to_owned(),
        };
        let mut checked = 0;

        // credHelpers, and credsStore, both answer.
        for (path, server, user) in [
            (&helpers, "127.0.0.1:5999", "helper-user"),
            (&helpers, DOCKER_HUB_CREDENTIAL_KEY, "hub-user"),
            (&store, "127.0.0.1:5999", "helper-user"),
        ] {
            let login = source(path, server)
                .resolve()
                .unwrap_or_else(|e| panic!("{server}: {e}"));
            assert_eq!(login.username, user);
            assert_eq!(login.password.expose_secret(), SECRET);
            checked += 1;
        }
        // "credentials not found" from the helper is "no credentials for the key".
        for path in [&helpers, &store] {
            let err = source(path, "absent.example.com")
                .resolve()
                .expect_err("absent");
            assert!(
                matches!(err, CredentialError::NoDockerCredential { .. }),
                "{err:?}"
            );
            assert!(
                err.to_string().contains("docker-credential-pftest"),
                "{err}"
            );
            checked += 1;
        }
        let cases = [
            ("leaky.example.com", "exited with an error"),
            ("token.example.com", "identity token"),
            ("garbled.example.com", "not the JSON"),
            ("missing.example.com", "docker-credential-not-installed-xyz"),
        ];
        for (server, expected) in cases {
            let err = source(&helpers, server).resolve().expect_err(server);
            assert!(err.to_string().contains(expected), "{server}: {err}");
            assert_hidden(&err, SECRET);
            checked += 1;
        }
        assert_eq!(checked, 9);
        // A helper that hangs is given up after the time limit.
        let started = std::time::Instant::now();
        let err = source(&helpers, "slow.example.com")
            .resolve_within(Duration::from_millis(300))
            .expect_err("slow");
        assert!(
            matches!(err, CredentialError::DockerCredentialTimeout { .. }),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
        println!("helper cases: {checked} checked");
    }
}
