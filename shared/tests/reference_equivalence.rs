//! `ImageRef::parse` checks Docker's reference grammar with hand-written rules. Before that, it
//! matched the grammar with `oci_spec::distribution::Reference` (one large regular expression)
//! and closed that crate's gaps with checks of its own. That earlier parser is kept here,
//! unchanged, as an oracle ([`old`]), and both are run on the same generated inputs:
//!
//! - every sequence of up to three fragments of [`FRAGMENTS`] (characters and pieces that sit
//!   on the grammar's edges: separators, ports, hosts, digests, uppercase, non-ASCII, a long
//!   component), and
//! - [`RANDOM_CASES`] longer sequences drawn with a fixed seed (deterministic; proptest shrinks
//!   a failure to its fewest fragments).
//!
//! Both must accept the same inputs, give equal registry, repository, tag and digest when they
//! accept, and return the same error (variant and fields) when they refuse, except for the
//! documented differences of [`too_long_either_way`]. Repository paths given on their own
//! (`validate_repository`, which also used oci-spec) are compared the same way.

use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use pushfleet_shared::reference::{ImageRef, ReferenceError, validate_repository};

const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Sequences drawn at random, on top of the exhaustive ones.
const RANDOM_CASES: u32 = 30_000;

/// The pieces inputs are built from.
fn fragments() -> Vec<String> {
    let mut fragments: Vec<String> = [
        // Path alphabet and separators.
        "a",
        "b9",
        "0",
        "A",
        ".",
        "_",
        "__",
        "-",
        "--",
        "/", // Tag, digest and port marks.
        ":",
        "@",
        "5000", // Hosts and Docker Hub's names.
        "localhost",
        "Localhost",
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        "library",
        "x.y",
        "foo_bar.com",
        "[::1]",
        "[",
        "]",
        "https://",
        // Characters outside the grammar.
        "å",
        "\u{212a}",
        "$",
        " ",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    fragments.extend([
        format!("sha256:{HEX64}"),
        format!("sha512:{HEX64}{HEX64}"),
        format!("sha256:{}", HEX64.to_uppercase()),
        format!("sha256:{}", &HEX64[..40]),
        format!("md5:{}", &HEX64[..32]),
        "sha256".to_owned(),
        // A bare image ID.
        HEX64.to_owned(),
        // Long pieces, for the 255-character name and 128-character tag limits.
        "a".repeat(120),
        "t".repeat(127),
    ]);
    fragments
}

/// Path fragments for repositories given on their own.
fn path_fragments() -> Vec<String> {
    [
        "a", "b9", "0", "A", ".", "_", "__", "___", "-", "--", "/", ":", "@", "å", "$",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(["a".repeat(130)])
    .collect()
}

/// What a parse gave: the parts, or the error.
type Outcome = Result<(String, String, Option<String>, Option<String>), ReferenceError>;

fn new_parse(input: &str) -> Outcome {
    ImageRef::parse(input).map(|image| {
        (
            image.registry().to_owned(),
            image.repository().to_owned(),
            image.tag().map(str::to_owned),
            image.digest().map(str::to_owned),
        )
    })
}

/// The accepted differences, both about names over 255 characters that also break another
/// rule; both parsers refuse them, and both errors are true:
///
/// - The old parser had two length checks, oci-spec's (on the path alone, inside the grammar
///   match) and its own (on the normalised `registry/repository`, last); the new one has only
///   the second. So one may say "too long" where the other names the other problem.
/// - For a path the grammar refused, the old parser said "must be lowercase" only when oci-spec
///   accepted the lowercased path, and oci-spec refuses a path over 255 characters: `A` followed
///   by 300 `t` was "`A` is not allowed". The new parser says "must be lowercase", as Docker
///   does (it checks case before the grammar).
fn too_long_either_way(old: &ReferenceError, new: &ReferenceError) -> bool {
    match (old, new) {
        (ReferenceError::NameTooLong { .. }, _) | (_, ReferenceError::NameTooLong { .. }) => true,
        (
            ReferenceError::InvalidFormat { .. },
            ReferenceError::UppercaseRepository { repository, .. },
        ) => repository.len() > 255,
        _ => false,
    }
}

fn compare(input: &str) -> Result<(), String> {
    let old = old::parse(input);
    let new = new_parse(input);
    match (&old, &new) {
        (Ok(o), Ok(n)) if o == n => Ok(()),
        (Err(o), Err(n)) if o == n || too_long_either_way(o, n) => Ok(()),
        _ => Err(format!("{input:?}: old {old:?}, new {new:?}")),
    }
}

fn compare_repository(repository: &str) -> Result<(), String> {
    let old = old::validate_repository(repository);
    let new = validate_repository(repository);
    if old == new {
        Ok(())
    } else {
        Err(format!("{repository:?}: old {old:?}, new {new:?}"))
    }
}

/// Every sequence of up to `depth` pieces.
fn exhaustive(pieces: &[String], depth: usize) -> Vec<String> {
    let mut all = vec![String::new()];
    let mut layer = vec![String::new()];
    for _ in 0..depth {
        layer = layer
            .iter()
            .flat_map(|prefix| pieces.iter().map(move |piece| format!("{prefix}{piece}")))
            .collect();
        all.extend(layer.iter().cloned());
    }
    all
}

/// Runs `check` on every input and fails with the first few differences.
fn all_agree(inputs: &[String], check: fn(&str) -> Result<(), String>) -> usize {
    let differences: Vec<String> = inputs.iter().filter_map(|i| check(i).err()).collect();
    assert!(
        differences.is_empty(),
        "{} of {} inputs differ, e.g.:\n{}",
        differences.len(),
        inputs.len(),
        differences[..differences.len().min(20)].join("\n")
    );
    inputs.len()
}

#[test]
fn exhaustive_short_references_agree() {
    let pieces = fragments();
    let inputs = exhaustive(&pieces, 3);
    let ran = all_agree(&inputs, compare);
    assert_eq!(
        ran,
        1 + pieces.len() + pieces.len().pow(2) + pieces.len().pow(3)
    );
    // Not a vacuous comparison: many inputs are accepted, many refused.
    let accepted = inputs.iter().filter(|i| ImageRef::parse(i).is_ok()).count();
    assert!(accepted > 1_000, "only {accepted} of {ran} accepted");
    assert!(ran - accepted > 10_000, "only {} refused", ran - accepted);
}

#[test]
fn random_longer_references_agree() {
    let config = Config {
        cases: RANDOM_CASES,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = prop::collection::vec(select(fragments()), 4..=9).prop_map(|p| p.concat());
    let (ran, accepted) = (Cell::new(0u32), Cell::new(0u32));
    let result = runner.run(&strategy, |input| {
        ran.set(ran.get() + 1);
        accepted.set(accepted.get() + u32::from(ImageRef::parse(&input).is_ok()));
        compare(&input).map_err(TestCaseError::fail)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    let (ran, accepted) = (ran.get(), accepted.get());
    assert!(ran >= RANDOM_CASES, "{ran} cases");
    assert!(accepted > 500, "only {accepted} of {ran} accepted");
}

/// Inputs that stand for each rule and each gap the old parser closed: the generated ones must
/// not be the only evidence.
#[test]
fn chosen_references_agree() {
    let long = "a".repeat(240);
    let inputs = [
        "myapp",
        "MyOrg/app:1",
        "Localhost/x",
        "localhost/X",
        "foo_bar.com/x",
        "registry-1.docker.io/myapp",
        "index.docker.io/x/y",
        "myapp:tåg",
        "[::1]:5443/x:1",
        "[::1]/A",
        "[zz]//x",
        "a\u{212a}/b",
        "A\u{212a}",
        "localhost:5000",
        "a.b:5000/c:d/e",
        "a-b--c__d.e/f",
        "a---b",
        "a-_b",
        "x/y:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "https://harbor.example.com/team/app",
        &format!("registry.example.com/{long}"),
        &format!("index.docker.io/{long}{long}"),
        &format!("foo_bar.com/{long}{long}"),
        &format!("MyOrg/{long}{long}"),
    ]
    .map(str::to_owned);
    all_agree(&inputs, compare);
}

#[test]
fn repositories_given_alone_agree() {
    let inputs = exhaustive(&path_fragments(), 4);
    let ran = all_agree(&inputs, compare_repository);
    assert!(ran > 60_000, "{ran}");
    let accepted = inputs
        .iter()
        .filter(|i| validate_repository(i).is_ok())
        .count();
    assert!(accepted > 500, "only {accepted} of {ran} accepted");
}

/// The parser as it was when it matched the grammar with oci-spec's `Reference`, with the
/// checks it added, copied from `shared/src/reference.rs` before the grammar was written out.
/// Only what a test needs was changed: it returns the parts instead of an `ImageRef`.
mod old {
    use std::borrow::Cow;

    use oci_spec::distribution::{ParseError, Reference};
    use pushfleet_shared::reference::ReferenceError;

    use super::Outcome;

    const DOCKER_HUB: &str = "docker.io";
    const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];
    const OFFICIAL_PREFIX: &str = "library/";
    const TAG_MAX_LEN: usize = 128;
    const NAME_MAX_LEN: usize = 255;
    const DIGEST_ALGORITHMS: [(&str, usize); 3] = [("sha256", 64), ("sha384", 96), ("sha512", 128)];

    pub(super) fn parse(input: &str) -> Outcome {
        check_characters(input)?;
        let parts = Parts::split(input)?;
        if let Some(digest) = parts.digest {
            validate_digest(input, digest)?;
        }
        if let Some(tag) = parts.tag {
            validate_tag(input, tag)?;
        }
        if parts.name.is_empty() {
            return Err(invalid_format(
                input,
                "there is no repository name before the `:` or `@`",
            ));
        }
        if is_image_id(input) {
            return Err(invalid_format(
                input,
                "a 64-character hex string is an image ID, not a repository name",
            ));
        }

        let (ipv6_registry, oci_input) = match parts.name.split_once('/') {
            Some((host, _)) if host.starts_with('[') => {
                validate_host(host).map_err(|reason| ReferenceError::InvalidRegistry {
                    input: input.to_owned(),
                    registry: host.to_owned(),
                    reason,
                })?;
                let rest = &input[host.len() + 1..];
                (Some(host), Cow::Owned(format!("localhost/{rest}")))
            }
            _ => (None, Cow::Borrowed(input)),
        };

        let reference = Reference::try_from(oci_input.as_ref())
            .map_err(|error| diagnose(input, parts.name, &error))?;
        if reference.digest() != parts.digest {
            return Err(invalid_format(
                input,
                "the digest could not be located unambiguously",
            ));
        }
        if let Some(tag) = parts.tag
            && reference.tag() != Some(tag)
        {
            return Err(invalid_format(
                input,
                "the tag could not be located unambiguously",
            ));
        }

        if reference
            .repository()
            .bytes()
            .any(|b| b.is_ascii_uppercase())
        {
            return Err(ReferenceError::UppercaseRepository {
                input: input.to_owned(),
                repository: split_registry(parts.name).1.to_owned(),
            });
        }
        let registry = ipv6_registry.unwrap_or(reference.registry());
        if ipv6_registry.is_none() && registry != DOCKER_HUB {
            validate_host(registry).map_err(|reason| ReferenceError::InvalidRegistry {
                input: input.to_owned(),
                registry: registry.to_owned(),
                reason,
            })?;
        }
        // `ImageRef::normalised` and `check_name_length`.
        let registry = if DOCKER_HUB_ALIASES.contains(&registry) {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = reference.repository();
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("{OFFICIAL_PREFIX}{repository}")
        } else {
            repository.to_owned()
        };
        let name = format!("{registry}/{repository}");
        if name.len() > NAME_MAX_LEN {
            return Err(ReferenceError::NameTooLong {
                length: name.len(),
                name,
            });
        }
        Ok((
            registry.to_owned(),
            repository,
            parts.tag.map(str::to_owned),
            parts.digest.map(str::to_owned),
        ))
    }

    fn invalid_format(input: &str, reason: &str) -> ReferenceError {
        ReferenceError::InvalidFormat {
            input: input.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn check_characters(input: &str) -> Result<(), ReferenceError> {
        let (Some(first), Some(last)) = (input.chars().next(), input.chars().next_back()) else {
            return Err(ReferenceError::Empty);
        };
        if first.is_whitespace() || last.is_whitespace() {
            return Err(ReferenceError::SurroundingWhitespace {
                input: input.to_owned(),
            });
        }
        if let Some((position, character)) = input
            .chars()
            .enumerate()
            .find(|(_, c)| c.is_whitespace() || c.is_control())
        {
            return Err(ReferenceError::InvalidCharacter {
                input: input.to_owned(),
                character,
                position,
            });
        }
        Ok(())
    }

    struct Parts<'a> {
        name: &'a str,
        tag: Option<&'a str>,
        digest: Option<&'a str>,
    }

    impl<'a> Parts<'a> {
        fn split(input: &'a str) -> Result<Self, ReferenceError> {
            let (name_and_tag, digest) = match input.split_once('@') {
                Some((before, after)) => (before, Some(after)),
                None => (input, None),
            };
            if name_and_tag.starts_with('[') && !name_and_tag.contains('/') {
                return Err(invalid_format(
                    input,
                    "a registry alone is not an image: add the repository, e.g. `[::1]:5443/myapp`",
                ));
            }
            let last_component = name_and_tag.rfind('/').map_or(0, |slash| slash + 1);
            let (name, tag) = match name_and_tag[last_component..].find(':') {
                Some(colon) => {
                    let colon = last_component + colon;
                    (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
                }
                None => (name_and_tag, None),
            };
            Ok(Self { name, tag, digest })
        }
    }

    fn split_registry(name: &str) -> (Option<&str>, &str) {
        match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':', '[']) || first == "localhost" => {
                (Some(first), rest)
            }
            _ => (None, name),
        }
    }

    fn is_image_id(input: &str) -> bool {
        input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    fn validate_tag(input: &str, tag: &str) -> Result<(), ReferenceError> {
        let invalid = |reason: String| ReferenceError::InvalidTag {
            input: input.to_owned(),
            tag: tag.to_owned(),
            reason,
        };
        let Some(first) = tag.chars().next() else {
            return Err(invalid("the tag is empty".to_owned()));
        };
        if tag.contains(':') {
            return Err(invalid(
                "a reference has at most one `:tag`, and a tag cannot contain `:`".to_owned(),
            ));
        }
        if let Some(c) = tag.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!(
                "{c:?} is not allowed: a tag has no whitespace or control characters"
            )));
        }
        if matches!(first, '.' | '-') {
            return Err(invalid("a tag cannot start with `.` or `-`".to_owned()));
        }
        if let Some(c) = tag
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(invalid(format!(
                "`{c}` is not allowed in a tag (allowed: ASCII letters, digits, `_`, `.`, `-`)"
            )));
        }
        if tag.len() > TAG_MAX_LEN {
            return Err(ReferenceError::TagTooLong {
                input: input.to_owned(),
                tag: tag.to_owned(),
                length: tag.len(),
            });
        }
        Ok(())
    }

    fn validate_digest(input: &str, digest: &str) -> Result<(), ReferenceError> {
        let invalid = |reason: String| ReferenceError::InvalidDigest {
            input: input.to_owned(),
            digest: digest.to_owned(),
            reason,
        };
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return Err(invalid(
                "expected `algorithm:hex`, e.g. `sha256:<64 hex>`".to_owned(),
            ));
        };
        let Some(&(_, expected_len)) = DIGEST_ALGORITHMS
            .iter()
            .find(|(name, _)| *name == algorithm)
        else {
            return Err(invalid(format!(
                "unsupported digest algorithm `{algorithm}` (supported: sha256, sha384, sha512)"
            )));
        };
        if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(invalid(format!("`{c}` is not a hex digit")));
        }
        if hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("the hex part must be lowercase".to_owned()));
        }
        if hex.len() != expected_len {
            return Err(invalid(format!(
                "a {algorithm} digest has {expected_len} hex characters, this one has {}",
                hex.len()
            )));
        }
        Ok(())
    }

    fn validate_host(registry: &str) -> Result<(), String> {
        if registry.is_empty() {
            return Err("the registry is empty".to_owned());
        }
        if registry.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err("a registry has no whitespace or control characters".to_owned());
        }
        if registry.contains("://") {
            return Err("a registry is `host[:port]`, without a URL scheme".to_owned());
        }
        if registry.contains('/') {
            return Err("a registry is `host[:port]`, without a path".to_owned());
        }
        let (host, port) = if let Some(bracketed) = registry.strip_prefix('[') {
            let Some((address, after)) = bracketed.split_once(']') else {
                return Err("`[` opens an IPv6 address that is never closed with `]`".to_owned());
            };
            if address.is_empty() || !address.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                return Err(format!("`[{address}]` is not an IPv6 address"));
            }
            match after {
                "" => return Ok(()),
                _ => match after.strip_prefix(':') {
                    Some(port) => (None, Some(port)),
                    None => return Err("only `:port` may follow an IPv6 address".to_owned()),
                },
            }
        } else {
            match registry.split_once(':') {
                Some((host, port)) => (Some(host), Some(port)),
                None => (Some(registry), None),
            }
        };
        if let Some(port) = port
            && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!("the port `{port}` is not a number"));
        }
        if let Some(host) = host {
            for component in host.split('.') {
                let valid = !component.is_empty()
                    && component
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !component.starts_with('-')
                    && !component.ends_with('-');
                if !valid {
                    return Err(format!(
                        "`{host}` is not a host name: each `.`-separated part is ASCII letters, \
                         digits and inner `-`"
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn validate_repository(repository: &str) -> Result<(), ReferenceError> {
        let invalid = |reason: &str| ReferenceError::InvalidRepository {
            repository: repository.to_owned(),
            reason: reason.to_owned(),
        };
        if repository.is_empty() {
            return Err(invalid("the repository is empty"));
        }
        if repository.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "a repository has no whitespace or control characters",
            ));
        }
        if repository.contains([':', '@']) {
            return Err(invalid(
                "a repository has no tag or digest: pass the tag separately",
            ));
        }
        if let Some(reason) = path_shape_problem(repository) {
            return Err(invalid(reason));
        }
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::UppercaseRepository {
                input: repository.to_owned(),
                repository: repository.to_owned(),
            });
        }
        match Reference::try_from(format!("localhost/{repository}")) {
            Ok(parsed) if parsed.registry() == "localhost" && parsed.repository() == repository => {
                Ok(())
            }
            Err(ParseError::NameTooLong) => Ok(()),
            _ => Err(invalid(&path_grammar_reason(repository))),
        }
    }

    fn path_shape_problem(path: &str) -> Option<&'static str> {
        if path.starts_with('/') {
            Some("it starts with `/`")
        } else if path.ends_with('/') {
            Some("it ends with `/`")
        } else if path.contains("//") {
            Some("it has an empty path component (`//`)")
        } else {
            None
        }
    }

    fn path_grammar_reason(path: &str) -> String {
        let rule = "each `/`-separated component is lowercase letters and digits, joined by one \
                    `.`, one or two `_`, or dashes";
        match path.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/'))
        }) {
            Some(c) => format!("`{c}` is not allowed in a repository path: {rule}"),
            None => format!("`{path}` is not a valid repository path: {rule}"),
        }
    }

    fn diagnose(input: &str, name: &str, error: &ParseError) -> ReferenceError {
        match error {
            ParseError::NameEmpty => ReferenceError::Empty,
            ParseError::NameTooLong => {
                let (registry, path) = split_registry(name);
                let registry = registry.unwrap_or(DOCKER_HUB);
                let full = format!("{registry}/{path}");
                ReferenceError::NameTooLong {
                    length: full.len(),
                    name: full,
                }
            }
            ParseError::NameContainsUppercase => ReferenceError::UppercaseRepository {
                input: input.to_owned(),
                repository: split_registry(name).1.to_owned(),
            },
            ParseError::TagInvalidFormat => ReferenceError::InvalidTag {
                input: input.to_owned(),
                tag: input
                    .rsplit_once(':')
                    .map(|(_, t)| t)
                    .unwrap_or_default()
                    .to_owned(),
                reason: error.to_string(),
            },
            ParseError::DigestInvalidFormat
            | ParseError::DigestInvalidLength
            | ParseError::DigestUnsupported => ReferenceError::InvalidDigest {
                input: input.to_owned(),
                digest: input
                    .split_once('@')
                    .map(|(_, d)| d)
                    .unwrap_or_default()
                    .to_owned(),
                reason: error.to_string(),
            },
            ParseError::ReferenceInvalidFormat => diagnose_name(input, name),
        }
    }

    fn diagnose_name(input: &str, name: &str) -> ReferenceError {
        if input.contains("://") {
            return invalid_format(input, "a reference has no URL scheme (`https://`)");
        }
        if let Some(reason) = path_shape_problem(name) {
            return invalid_format(input, reason);
        }
        let (registry, path) = split_registry(name);
        if let Some(registry) = registry
            && let Err(reason) = validate_host(registry)
        {
            return ReferenceError::InvalidRegistry {
                input: input.to_owned(),
                registry: registry.to_owned(),
                reason,
            };
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            let lowered = format!("localhost/{}", path.to_lowercase());
            if Reference::try_from(lowered.as_str()).is_ok() {
                return ReferenceError::UppercaseRepository {
                    input: input.to_owned(),
                    repository: path.to_owned(),
                };
            }
        }
        ReferenceError::InvalidFormat {
            input: input.to_owned(),
            reason: path_grammar_reason(path),
        }
    }
}
