//! Repository names and references go into URL paths: only Docker's grammar is let through,
//! as `pushfleet_shared::reference` defines it.

use pushfleet_shared::reference::{self, ReferenceError};

use super::error::{ErrorKind, RegistryError, Target};

/// The longest repository path a registry accepts (Docker's `NameTotalLengthMax`, which
/// registries apply to the path).
const REPOSITORY_MAX_LEN: usize = 255;

/// Repository names go into URL paths: only Docker's grammar is accepted
/// ([`reference::validate_repository`]: lowercase path components joined by `/`), up to 255
/// characters.
pub(super) fn validate_repository(target: &Target, repository: &str) -> Result<(), RegistryError> {
    let fail = |reason| invalid(target, "repository name", repository, reason);
    match reference::validate_repository(repository) {
        Ok(()) if repository.len() > REPOSITORY_MAX_LEN => fail("longer than 255 characters"),
        Ok(()) => Ok(()),
        Err(ReferenceError::UppercaseRepository { .. }) => {
            fail("must be lowercase: registries accept lowercase repository names only")
        }
        Err(_) => fail(
            "not a repository path: lowercase letters and digits joined by one `.`, one or two \
             `_`, or dashes, in components joined by `/`",
        ),
    }
}

/// A tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, [`reference::validate_tag`]) or, when it has a
/// `:`, a digest (`sha256:` and 64 lowercase hex, or sha384/sha512,
/// [`reference::validate_digest`]).
pub(super) fn validate_reference(target: &Target, value: &str) -> Result<(), RegistryError> {
    let fail = |reason| invalid(target, "tag or digest", value, reason);
    if value.contains(':') {
        return match reference::validate_digest(value, value) {
            Ok(()) => Ok(()),
            Err(_) => fail(
                "not a digest: `sha256:` and 64 lowercase hex characters (sha384: 96, sha512: 128)",
            ),
        };
    }
    match reference::validate_tag(value, value) {
        Ok(()) => Ok(()),
        Err(ReferenceError::TagTooLong { .. }) => fail("longer than 128 characters"),
        Err(_) => fail(
            "not a tag: 1 to 128 of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`",
        ),
    }
}

/// The refusal of `value` (a `what`) for `reason`.
fn invalid(
    target: &Target,
    what: &'static str,
    value: &str,
    reason: &'static str,
) -> Result<(), RegistryError> {
    let kind = ErrorKind::InvalidName {
        what,
        value: value.to_owned(),
    };
    Err(RegistryError::new(kind, target).with_detail(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Coded;
    use pushfleet_shared::ErrorCode;

    fn t() -> Target {
        Target {
            registry: "r".into(),
            repository: None,
        }
    }

    #[test]
    fn repository_names() {
        for good in [
            "a",
            "production/myapp",
            "team-a/app_1",
            "a/b/c",
            "a__b",
            "a--b",
            "x.y",
        ] {
            assert!(validate_repository(&t(), good).is_ok(), "{good}");
        }
        for bad in [
            "", "A/b", "a//b", "/a", "a/", "../x", "a/../b", "a?b", "a b", "-a", "a.", "a..b",
            "a%2f",
        ] {
            let e = validate_repository(&t(), bad).expect_err(bad);
            assert_eq!(e.code(), ErrorCode::InvalidReference);
        }
    }

    #[test]
    fn references() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for good in ["latest", "0722", "_x", "v1.2-rc", digest.as_str()] {
            assert!(validate_reference(&t(), good).is_ok(), "{good}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "a?b",
            long.as_str(),
            "sha256:abc",
            ":x",
        ] {
            assert!(validate_reference(&t(), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_rules_are_the_shared_grammar() {
        // Separators stand alone between letters or digits; digests are Docker's.
        for bad in ["a___b", "a._b", "a-.b", "a_-b"] {
            assert!(validate_repository(&t(), bad).is_err(), "{bad}");
        }
        let upper = format!("sha256:{}", "A".repeat(64));
        let md5 = format!("md5:{}", "a".repeat(32));
        let short = format!("sha256:{}", "a".repeat(63));
        for bad in [upper.as_str(), md5.as_str(), short.as_str()] {
            let e = validate_reference(&t(), bad).expect_err(bad);
            assert!(e.to_string().contains("not a digest"), "{e}");
        }
        let sha512 = format!("sha512:{}", "a".repeat(128));
        assert!(validate_reference(&t(), &sha512).is_ok());
        let e = validate_repository(&t(), "Team/app").expect_err("uppercase");
        assert!(e.to_string().contains("lowercase"), "{e}");
        let long = format!("team/{}", "a".repeat(251));
        assert!(validate_repository(&t(), &long).is_err());
        assert!(validate_repository(&t(), &long[1..]).is_ok());
    }
}
