//! Repository names and references go into URL paths: only Docker's grammar is let through.

use super::error::{RegistryError, Target};

/// Repository names go into URL paths: only Docker's grammar is accepted
/// (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` components joined by `/`).
pub(super) fn validate_repository(target: &Target, repository: &str) -> Result<(), RegistryError> {
    let fail = |reason: &'static str| {
        Err(RegistryError::InvalidName {
            target: target.boxed(),
            what: "repository name",
            value: repository.to_owned(),
            reason,
        })
    };
    if repository.is_empty() || repository.len() > 255 {
        return fail("must be 1 to 255 characters");
    }
    for component in repository.split('/') {
        let bytes = component.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return fail("empty path component");
        };
        if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
        {
            return fail("only lowercase letters, digits, `.`, `_`, `-` and `/` are allowed");
        }
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return fail("each path component must start and end with a letter or digit");
        }
        if component.contains("..")
            || component.contains("___")
            || component.contains("._")
            || component.contains("_.")
        {
            return fail("separators `.`, `_`, `__` and `-` must stand between letters or digits");
        }
    }
    Ok(())
}

/// A tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`) or a digest (`algorithm:hex`).
pub(super) fn validate_reference(target: &Target, reference: &str) -> Result<(), RegistryError> {
    let fail = |reason: &'static str| {
        Err(RegistryError::InvalidName {
            target: target.boxed(),
            what: "tag or digest",
            value: reference.to_owned(),
            reason,
        })
    };
    if let Some((algorithm, encoded)) = reference.split_once(':') {
        let algorithm_ok = !algorithm.is_empty()
            && algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        let encoded_ok = encoded.len() >= 32
            && encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b));
        return if algorithm_ok && encoded_ok {
            Ok(())
        } else {
            fail("not a valid digest")
        };
    }
    let bytes = reference.as_bytes();
    match bytes.first() {
        None => fail("empty"),
        Some(_) if bytes.len() > 128 => fail("longer than 128 characters"),
        Some(first) if !(first.is_ascii_alphanumeric() || *first == b'_') => {
            fail("must start with a letter, digit or `_`")
        }
        Some(_)
            if !bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b)) =>
        {
            fail("only letters, digits, `_`, `.` and `-` are allowed")
        }
        Some(_) => Ok(()),
    }
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
}
