//! Where passwords come from, and reading them at the moment they are needed.
//!
//! A password is never written in the configuration file. The file says where to find it: a
//! file (a Kubernetes secret volume, a Docker secret) or an environment variable, a
//! [`PasswordSource`]. The password itself is read into a [`SecretString`], which does not
//! print, and is zeroed when dropped.
//!
//! Rotation: a password file is read again on every [`PasswordSource::resolve`], so a worker
//! picks up a rotated Kubernetes secret without a restart (the kubelet swaps the files of a
//! secret volume atomically; note that a secret mounted with `subPath` is *not* updated by
//! Kubernetes). An environment variable cannot change inside a running process, so rotating a
//! `password_env` secret needs a restart.
//!
//! Errors name the file or the variable, never what was read from it.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use secrecy::SecretString;

/// The largest password file read, in bytes. A password is short; a bigger file is almost
/// certainly the wrong path (a certificate bundle, a log), and is refused rather than read.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 64 * 1024;

/// Where a password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// The contents of this file, read on every resolve (so rotation is picked up).
    File(PathBuf),
    /// The value of this environment variable.
    Env(String),
}

impl PasswordSource {
    /// Reads the password from the process environment or the file.
    ///
    /// One trailing newline (`\n` or `\r\n`) is removed, since `echo` and most editors add
    /// one; nothing else is trimmed. An empty result is an error: an empty password only ever
    /// leads to a confusing authentication failure later.
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
        }
    }
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(name) => write!(f, "env {name}"),
        }
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
    /// Something that needs credentials has no complete source for them (a registry without a
    /// username or password source). `config::load` refuses such a configuration, so this is
    /// only seen for values changed after loading.
    #[error("{what}: no usable credentials are configured")]
    NotConfigured {
        /// What lacks credentials, e.g. "registry `harbor`".
        what: String,
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
}
