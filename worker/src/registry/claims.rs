//! Push rights read from a Bearer token's own claims, so a preflight needs no upload session.
//!
//! Token servers in the Docker token format (distribution's, Harbor, GitLab) answer a request
//! for `repository:<repo>:pull,push` with a JWT whose `access` claim lists what was actually
//! granted, which may be less than what was asked. Reading that claim tells the preflight
//! whether the push will be allowed without opening (and leaving behind) an upload session.
//!
//! The payload is decoded **without verifying the signature**: the worker is not the audience
//! the token is meant for and has no key to check it with; the registry verifies it on every
//! request. A forged or altered token therefore gains nothing here: at worst the preflight
//! passes and the registry refuses the push itself, which is reported with its own code.
//! Tokens that are not such JWTs (opaque tokens, as GHCR's) give [`PushClaim::Unknown`], and
//! the caller falls back to a probe.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;

/// JWT segments are base64url without padding; padded ones are accepted too.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What a token's claims say about pushing to one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PushClaim {
    /// The `access` claim grants `push` (or `*`) on the repository.
    Granted,
    /// The token has an `access` claim, and it does not grant `push` on the repository.
    NotGranted,
    /// The token is not a JWT with an `access` claim: its claims say nothing.
    Unknown,
}

#[derive(Deserialize)]
struct Payload {
    access: Option<Vec<Access>>,
}

#[derive(Deserialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

/// Reads `token`'s `access` claim for push rights on `repository`. Never fails: anything that
/// is not a readable Docker-format JWT is [`PushClaim::Unknown`].
pub(super) fn push_claim(token: &str, repository: &str) -> PushClaim {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return PushClaim::Unknown;
    };
    let Ok(bytes) = BASE64URL.decode(payload) else {
        return PushClaim::Unknown;
    };
    let Ok(Payload {
        access: Some(access),
    }) = serde_json::from_slice::<Payload>(&bytes)
    else {
        return PushClaim::Unknown;
    };
    let granted = access.iter().any(|a| {
        a.kind == "repository"
            && a.name == repository
            && a.actions
                .iter()
                .any(|action| action == "push" || action == "*")
    });
    if granted {
        PushClaim::Granted
    } else {
        PushClaim::NotGranted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &serde_json::Value) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            enc.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            enc.encode(payload.to_string()),
            enc.encode(b"signature")
        )
    }

    #[test]
    fn push_in_the_access_claim_is_granted() {
        let token = jwt(&serde_json::json!({
            "iss": "i", "access": [
                {"type": "repository", "name": "team-a/other", "actions": ["pull"]},
                {"type": "repository", "name": "team-a/app", "actions": ["push", "pull"]}
            ]
        }));
        assert_eq!(push_claim(&token, "team-a/app"), PushClaim::Granted);
        assert_eq!(push_claim(&token, "team-a/other"), PushClaim::NotGranted);
        assert_eq!(push_claim(&token, "team-a/ap"), PushClaim::NotGranted);
    }

    #[test]
    fn wildcard_grants_and_other_types_do_not() {
        let star = jwt(&serde_json::json!({"access": [
            {"type": "repository", "name": "x/y", "actions": ["*"]}
        ]}));
        assert_eq!(push_claim(&star, "x/y"), PushClaim::Granted);
        let registry = jwt(&serde_json::json!({"access": [
            {"type": "registry", "name": "x/y", "actions": ["push"]}
        ]}));
        assert_eq!(push_claim(&registry, "x/y"), PushClaim::NotGranted);
    }

    #[test]
    fn reduced_or_empty_access_is_not_granted() {
        let pull = jwt(&serde_json::json!({"access": [
            {"type": "repository", "name": "x/y", "actions": ["pull"]}
        ]}));
        assert_eq!(push_claim(&pull, "x/y"), PushClaim::NotGranted);
        let empty = jwt(&serde_json::json!({"access": []}));
        assert_eq!(push_claim(&empty, "x/y"), PushClaim::NotGranted);
        let no_actions =
            jwt(&serde_json::json!({"access": [{"type": "repository", "name": "x/y"}]}));
        assert_eq!(push_claim(&no_actions, "x/y"), PushClaim::NotGranted);
    }

    #[test]
    fn anything_else_is_unknown() {
        for token in [
            "opaque-token",
            "",
            "a.b",
            "a.b.c.d",
            "a.!!!.c",
            "e30.e30.e30", // {} everywhere: no access claim
        ] {
            assert_eq!(push_claim(token, "x/y"), PushClaim::Unknown, "{token}");
        }
        let null_access = jwt(&serde_json::json!({"access": null}));
        assert_eq!(push_claim(&null_access, "x/y"), PushClaim::Unknown);
        let not_a_list = jwt(&serde_json::json!({"access": "push"}));
        assert_eq!(push_claim(&not_a_list, "x/y"), PushClaim::Unknown);
        let padded = format!(
            "h.{}.s",
            base64::engine::general_purpose::URL_SAFE
                .encode(r#"{"access":[{"type":"repository","name":"x/y","actions":["push"]}]}"#)
        );
        assert_eq!(push_claim(&padded, "x/y"), PushClaim::Granted);
    }
}
