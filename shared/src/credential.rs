//! What counts as a credential in a job, so that none travels through the broker, the events
//! or the dead-letter queue.
//!
//! A job names a registry of the worker's catalogue and never carries credentials, yet people
//! paste them: a `docker_password` next to the pipeline run, a whole `~/.docker/config.json`,
//! a kubeconfig, an `Authorization: Bearer …` header, a deploy key. The rule here (written out
//! for humans in `docs/jobs.md`, "No credentials in jobs") looks at the **names** of keys and at
//! the **shapes** of string values, never at where they sit: `metadata` is opaque caller data,
//! so a secret can be anywhere in it.
//!
//! The value shapes are chosen to be distinctive, so ordinary metadata (words, ids, commit
//! SHAs, UUIDs, digests, image references, URLs, paths, base64 of plain text) passes: a refused
//! job costs a person a resubmission, a leaked password costs a rotation, and both are worth
//! avoiding. Each shape and its known false positives and negatives are tested in `job.rs`.
//!
//! Paths in error messages name where a credential was found, never the value. A key that is
//! itself shaped like a credential value is shown as `<withheld>`.

use std::fmt;
use std::sync::LazyLock;

use serde_json::{Map, Value};

/// What a credential-looking string was recognised as (named in the error, never shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A PEM block (`-----BEGIN …`): a certificate, or a key.
    PemBlock,
    /// A private key: PEM (`-----BEGIN … PRIVATE KEY`), an OpenSSH key body
    /// (`b3BlbnNzaC1rZXktdjE…`, base64 of `openssh-key-v1`) or a PuTTY key file.
    PrivateKey,
    /// A Docker config (`config.json`, `.dockerconfigjson`) with credentials in it.
    DockerConfig,
    /// A kubeconfig.
    Kubeconfig,
    /// An HTTP `Authorization` value: `Bearer <token>` or `Basic <base64 user:password>`.
    AuthorizationHeader,
    /// A base64 `user:password` pair, as in a Docker config's `auth` field.
    Base64UserPassword,
    /// A JSON Web Token (`eyJ….eyJ….…`), as registries' token servers issue them.
    JsonWebToken,
    /// A registry or forge access token: Docker Hub (`dckr_pat_`, `dckr_oat_`), GitLab
    /// (`glpat-`), GitHub (`ghp_`, `github_pat_`, …), or an Amazon ECR password.
    AccessToken,
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialKind::PemBlock => "a PEM block",
            CredentialKind::PrivateKey => "a private key",
            CredentialKind::DockerConfig => "a Docker config with credentials",
            CredentialKind::Kubeconfig => "a kubeconfig",
            CredentialKind::AuthorizationHeader => "an HTTP Authorization value",
            CredentialKind::Base64UserPassword => "a base64 user:password pair",
            CredentialKind::JsonWebToken => "a JSON Web Token",
            CredentialKind::AccessToken => "an access token",
        })
    }
}

/// Where a credential was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finding {
    /// A key whose name marks it as a credential (the path ends with that key).
    Key(String),
    /// A string value, or a key, shaped like a credential.
    Value {
        /// The path; a key that is itself the credential is shown as `<withheld>`.
        path: String,
        /// What it looks like.
        kind: CredentialKind,
    },
}

/// The credential vocabulary, from `schemas/credential-terms.json` (shared with the Python
/// client).
#[derive(Default, serde::Deserialize)]
struct Vocabulary {
    /// Terms that mark a key as a credential when one of its words, or a run of consecutive
    /// words, spells one: `docker_password`, `accessToken`, `ssh_private_key`, `id_rsa`,
    /// `.dockerconfigjson`, `KUBECONFIG`. Words are split at anything that is not a letter or
    /// digit and at camelCase humps, and lowercased. Terms of [`LONG_TERM_LEN`] characters or
    /// more also count with a plural `s` (`passwords`, `tokens`) and at the end of the words
    /// run together (`registrytoken`, `dockerpassword`, `mykubeconfig`).
    terms: Vec<String>,
    /// Prefixes of access tokens that registries and forges issue (`glpat-`, `dckr_pat_`, ...).
    token_prefixes: Vec<String>,
}

/// `schemas/credential-terms.json`: the file is part of this crate's source (compiled in); a
/// test parses it.
static VOCABULARY: LazyLock<Vocabulary> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../schemas/credential-terms.json")).unwrap_or_default()
});

/// Terms this long also count in the plural and at the end of a run-together word; shorter ones
/// (`auth`, `pwd`) only as they are, so that `oauth`, `cwd` and a Docker config's `auths` map
/// pass (each entry's `auth` or `password` inside it does not).
const LONG_TERM_LEN: usize = 5;

/// Splits a key into lowercase words at non-alphanumeric characters and at camelCase humps.
fn key_words(key: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in key.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

fn is_term(run: &str) -> bool {
    VOCABULARY.terms.iter().any(|t| t == run) || run.strip_suffix('s').is_some_and(is_long_term)
}

fn is_long_term(word: &str) -> bool {
    word.len() >= LONG_TERM_LEN && VOCABULARY.terms.iter().any(|t| t == word)
}

/// Whether a key's name marks it as a credential. Keys that are not plain ASCII count too: a
/// look-alike (`pаssword` with a Cyrillic `а`) must not smuggle a secret past the check.
///
/// `docker_config` is deliberately not a credential name: in the worker's configuration it is
/// the *location* of a Docker config, and the Django step parameter of that name is echoed
/// under `metadata.django`; what it holds is judged like any other value.
pub(crate) fn is_credential_key(key: &str) -> bool {
    if !key.is_ascii() {
        return true;
    }
    let words = key_words(key);
    // A run longer than the longest term (plus its plural `s`) cannot spell one: stopping there
    // keeps a hostile key of thousands of one-letter words linear.
    let longest = VOCABULARY.terms.iter().map(|t| t.len()).max().unwrap_or(0) + 1;
    let runs = (0..words.len()).any(|start| {
        let mut run = String::new();
        for word in &words[start..] {
            run.push_str(word);
            if run.len() > longest {
                return false;
            }
            if is_term(&run) {
                return true;
            }
        }
        false
    });
    let whole = words.concat();
    let whole = whole.strip_suffix('s').unwrap_or(&whole);
    runs || VOCABULARY
        .terms
        .iter()
        .any(|t| t.len() >= LONG_TERM_LEN && whole.ends_with(t))
}

/// Recognises a string shaped like a credential, whatever key holds it.
pub(crate) fn credential_value(text: &str) -> Option<CredentialKind> {
    let trimmed = text.trim();
    if let Some(kind) = text_shape(trimmed) {
        return Some(kind);
    }
    if trimmed.starts_with(OPENSSH_KEY_BASE64) {
        return Some(CredentialKind::PrivateKey);
    }
    if is_authorization_value(trimmed) {
        return Some(CredentialKind::AuthorizationHeader);
    }
    if is_json_web_token(trimmed) {
        return Some(CredentialKind::JsonWebToken);
    }
    if is_prefixed_access_token(trimmed) {
        return Some(CredentialKind::AccessToken);
    }
    let decoded = decode_base64_text(trimmed)?;
    if let Some(kind) = text_shape(decoded.trim()) {
        return Some(kind);
    }
    if decoded.contains("\"payload\"") && decoded.contains("\"datakey\"") {
        // `aws ecr get-login-password`: base64 of a JSON envelope.
        return Some(CredentialKind::AccessToken);
    }
    is_user_password_pair(&decoded).then_some(CredentialKind::Base64UserPassword)
}

/// `openssh-key-v1` in base64: how the body of an OpenSSH private key starts, with or without
/// its `-----BEGIN OPENSSH PRIVATE KEY-----` line.
const OPENSSH_KEY_BASE64: &str = "b3BlbnNzaC1rZXktdjE";

/// Shapes readable as text, checked on the value and on its base64 decoding.
fn text_shape(text: &str) -> Option<CredentialKind> {
    if text.contains("-----BEGIN") && text.contains("PRIVATE KEY") {
        return Some(CredentialKind::PrivateKey);
    }
    if text.starts_with("-----BEGIN") {
        return Some(CredentialKind::PemBlock);
    }
    if text.starts_with("PuTTY-User-Key-File-") {
        return Some(CredentialKind::PrivateKey);
    }
    if is_docker_config_text(text) {
        return Some(CredentialKind::DockerConfig);
    }
    if is_kubeconfig_text(text) {
        return Some(CredentialKind::Kubeconfig);
    }
    None
}

/// A Docker config as JSON text: an `"auths"` map and a field that holds a secret. A config
/// with only `credsStore`/`credHelpers`, or an empty `auths`, holds none and passes.
fn is_docker_config_text(text: &str) -> bool {
    text.contains("\"auths\"")
        && [
            "\"auth\"",
            "\"password\"",
            "\"identitytoken\"",
            "\"registrytoken\"",
        ]
        .iter()
        .any(|field| text.contains(field))
}

/// A kubeconfig, as YAML or JSON: `apiVersion`, `kind: Config` (not `ConfigMap`) and `users`.
fn is_kubeconfig_text(text: &str) -> bool {
    text.contains("apiVersion") && text.contains("users") && has_kind_config(text)
}

fn has_kind_config(text: &str) -> bool {
    let blanks: &[char] = &[' ', '\t'];
    let quotes: &[char] = &['"', '\''];
    text.match_indices("kind").any(|(at, word)| {
        let rest = &text[at + word.len()..];
        let rest = rest.strip_prefix(quotes).unwrap_or(rest);
        let Some(rest) = rest.trim_start_matches(blanks).strip_prefix(':') else {
            return false;
        };
        let rest = rest.trim_start_matches(blanks);
        let rest = rest.strip_prefix(quotes).unwrap_or(rest);
        rest.strip_prefix("Config")
            .is_some_and(|after| !after.starts_with(|c: char| c.is_ascii_alphanumeric()))
    })
}

/// `Bearer <token>` or `Basic <base64 user:password>`, the scheme in any case, optionally
/// after `Authorization:`. A bearer token is one word of at least 16 token characters with a
/// letter and a digit, so `Bearer tokens expire` or `Bearer token` pass.
fn is_authorization_value(text: &str) -> bool {
    let text = match text.get(..14) {
        Some(head) if head.eq_ignore_ascii_case("authorization:") => text[14..].trim_start(),
        _ => text,
    };
    let Some((scheme, credentials)) = text.split_once(char::is_whitespace) else {
        return false;
    };
    let credentials = credentials.trim_start();
    if credentials.is_empty() || credentials.contains(char::is_whitespace) {
        return false;
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        let body = credentials.trim_end_matches('=');
        body.len() >= 16
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
            && body.bytes().any(|b| b.is_ascii_digit())
            && body.bytes().any(|b| b.is_ascii_alphabetic())
    } else if scheme.eq_ignore_ascii_case("basic") {
        decode_base64_text(credentials).is_some_and(|pair| is_user_password_pair(&pair))
    } else {
        false
    }
}

/// Three base64url segments separated by dots, the first two starting `eyJ` (`{"` encoded):
/// a JSON header and payload, and a signature (empty for `alg: none`).
fn is_json_web_token(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts[0].starts_with("eyJ")
        && parts[1].starts_with("eyJ")
        && parts.iter().all(|part| {
            part.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn is_prefixed_access_token(text: &str) -> bool {
    // Prefixes of access tokens that registries and forges issue (`schemas/credential-terms.json`),
    // each followed by at least 16 characters of `[A-Za-z0-9_-]`.
    VOCABULARY.token_prefixes.iter().any(|prefix| {
        text.strip_prefix(prefix).is_some_and(|rest| {
            rest.len() >= 16
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
    })
}

/// `user:password` as a Docker config's `auth` field holds it once decoded: a user name of
/// letters, digits and `.`, `_`, `-`, `@`, `+`, `$` (Harbor's `robot$ci`, Quay's `org+bot`, an
/// e-mail), a `:`, and a non-empty password of printable ASCII without spaces. A URL
/// (`https://…`) and compact JSON (`{"a":1}`) are not pairs.
fn is_user_password_pair(text: &str) -> bool {
    let Some((user, password)) = text.split_once(':') else {
        return false;
    };
    !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@+$".contains(&b))
        && !password.is_empty()
        && password.bytes().all(|b| b.is_ascii_graphic())
        && !password.starts_with("//")
}

/// The shortest text read as base64.
const BASE64_MIN_LEN: usize = 8;

/// Decodes `text` as base64 (standard or URL-safe alphabet, padded or not) when it is at least
/// [`BASE64_MIN_LEN`] characters and decodes to UTF-8. Hex digits and dashes alone are never
/// read as base64: those are commit SHAs, digests, image ids and UUIDs.
fn decode_base64_text(text: &str) -> Option<String> {
    if text.len() < BASE64_MIN_LEN || text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return None;
    }
    let body = text.trim_end_matches('=');
    let padding = text.len() - body.len();
    if padding > 2 || (padding > 0 && !text.len().is_multiple_of(4)) || body.len() % 4 == 1 {
        return None;
    }
    let standard = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    let url_safe = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !standard && !url_safe {
        return None;
    }
    let mut bytes = Vec::with_capacity(body.len() * 3 / 4);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for b in body.bytes() {
        let sextet = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            _ => 63, // `/` or `_`: the alphabet was checked above
        };
        buffer = ((buffer << 6) | u32::from(sextet)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // The mask keeps the low 8 bits, so the cast cannot truncate anything else.
            bytes.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    String::from_utf8(bytes).ok()
}

/// Appends `key` to a JSON path: `.key` for a plain key (ASCII letters, digits, `_`, `-`, at
/// most 64), `["…"]` escaped and cut to 32 characters for any other, and `<withheld>` for a key
/// that is itself shaped like a credential. The first key of a path has no dot.
pub(crate) fn push_key(path: &mut String, key: &str) {
    let plain = (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if credential_value(key).is_some() {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str("<withheld>");
    } else if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push_str("[\"");
        let mut chars = key.chars();
        for c in chars.by_ref().take(32) {
            path.extend(c.escape_default());
        }
        if chars.next().is_some() {
            path.push_str("...");
        }
        path.push_str("\"]");
    }
}

/// Finds the first credential (depth-first, in key order) in `map`: a key named like one, or a
/// string value (or a key) shaped like one. Paths start with `prefix` (`metadata`).
pub(crate) fn find_credential(map: &Map<String, Value>, prefix: &str) -> Option<Finding> {
    map.iter().find_map(|(key, value)| {
        let mut path = prefix.to_owned();
        push_key(&mut path, key);
        if is_credential_key(key) {
            return Some(Finding::Key(path));
        }
        if let Some(kind) = credential_value(key) {
            return Some(Finding::Value { path, kind });
        }
        find_in_value(value, &path)
    })
}

fn find_in_value(value: &Value, path: &str) -> Option<Finding> {
    match value {
        Value::String(text) => credential_value(text).map(|kind| Finding::Value {
            path: path.to_owned(),
            kind,
        }),
        Value::Object(map) => find_credential(map, path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_in_value(item, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Finds the first key (depth-first) whose *name* marks it as a credential, returning its
/// path. Values are not looked at: [`find_credential`] does both.
pub(crate) fn find_credential_key(map: &Map<String, Value>, prefix: &str) -> Option<String> {
    fn in_value(value: &Value, path: &str) -> Option<String> {
        match value {
            Value::Object(map) => find_credential_key(map, path),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| in_value(item, &format!("{path}[{i}]"))),
            _ => None,
        }
    }
    map.iter().find_map(|(key, value)| {
        let mut path = prefix.to_owned();
        push_key(&mut path, key);
        if is_credential_key(key) {
            Some(path)
        } else {
            in_value(value, &path)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::VOCABULARY;

    #[test]
    fn the_terms_file_is_read() {
        assert_eq!(VOCABULARY.token_prefixes.len(), 9);
        assert!(VOCABULARY.token_prefixes.iter().any(|p| p == "glpat-"));
        assert_eq!(VOCABULARY.terms.len(), 24);
        assert!(VOCABULARY.terms.iter().any(|t| t == "password"));
        assert!(VOCABULARY.terms.iter().any(|t| t == "kubeconfig"));
    }
}
