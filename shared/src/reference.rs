//! Image references (`myapp:0722`, `localhost:5000/myapp`, `docker.io/library/nginx@sha256:…`),
//! parsed and normalised exactly once, with Docker's grammar.
//!
//! Seed 000 is what happens without this: the Django code built `docker tag myapp …` from
//! `image: "myapp", tag: "0722"`, Docker read it as `myapp:latest`, and the "fix"
//! (`':' not in image`) then broke `localhost:5000/myapp`, whose port colon is not a tag. Seed
//! 004 adds Docker Hub's quirks: `myapp`, `library/myapp` and `docker.io/library/myapp` are one
//! repository, and that "root" repository cannot be pushed to. So every reference in pushfleet
//! is an [`ImageRef`], never a string that someone slices.
//!
//! # Docker's grammar, written here
//!
//! The grammar of Docker's `distribution/reference` is small, and it is written out here, one
//! function per rule, rather than taken from a crate:
//!
//! ```text
//! reference        := name [ ':' tag ] [ '@' digest ]
//! name             := [ domain '/' ] path-component ( '/' path-component )*
//! domain           := ( domain-component ( '.' domain-component )* | '[' ipv6 ']' ) [ ':' port ]
//! domain-component := [a-zA-Z0-9] | [a-zA-Z0-9] [a-zA-Z0-9-]* [a-zA-Z0-9]
//! path-component   := [a-z0-9]+ ( separator [a-z0-9]+ )*
//! separator        := [_.] | '__' | [-]+
//! tag              := [\w] [\w.-]{0,127}            (\w is ASCII: [A-Za-z0-9_])
//! digest           := algorithm ':' hex             (lowercase hex of the algorithm's length)
//! ```
//!
//! `Parts` cuts a reference into name, tag and digest; `validate_host` is `domain`,
//! `is_path_component` is `path-component`, [`validate_tag`] and [`validate_digest`] are `tag`
//! and `digest`, and [`validate_repository`] is a path given on its own. Every other place in
//! pushfleet that checks a piece of a reference (the registry client's URL paths, the worker's
//! configured namespaces, the digest the Docker daemon reports) calls these functions.
//!
//! Why not a crate: the crates that carry this grammar (oci-spec among them) match it with one
//! large regular expression, compiled at first use, which costs a worker about 14 MiB of
//! resident memory on its first job; the rules above need none. The parser that used oci-spec's
//! `Reference` is kept as an oracle in `shared/tests/reference_equivalence.rs`, which checks
//! that this one decides every generated input the same way.
//!
//! The grammar alone, with the normalisation oci-spec applied after it, gets these wrong; the
//! rules here close each gap, each checked by a test below:
//!
//! - **uppercase repository paths are accepted** when the first component could be a domain
//!   name: `MyOrg/app:1`, `Uppercase/lowercase` and `Localhost/x` match, as Docker Hub
//!   repositories with uppercase letters, which no registry accepts. We reject them
//!   ([`ReferenceError::UppercaseRepository`]). (Docker itself has changed its mind here: old
//!   releases said "repository name must be lowercase"; distribution/reference 0.6 reads an
//!   uppercase first component as a *registry host*. Pushing to a host called `MyOrg` is never
//!   what a pipeline meant, so we keep the older, stricter answer.)
//! - **`registry-1.docker.io` is not folded** into `docker.io`, so `registry-1.docker.io/x/y` and
//!   `docker.io/x/y` would compare unequal and the first would escape the Docker Hub checks. We
//!   fold both `registry-1.docker.io` and `index.docker.io`, and add `library/` to a
//!   single-component path, as Docker does for `docker.io`.
//! - **tags matched with a Unicode `\w`** let `myapp:tåg` pass; Docker's `\w` is ASCII. Tags
//!   are checked here against `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
//! - **digests in uppercase hex** (`sha256:ABC…`) match `[[:xdigit:]]`; Docker's `go-digest`
//!   wants lowercase hex of the algorithm's exact length. Checked here.
//! - **a bare 64-hex image ID matches as a repository name**; Docker refuses it ("cannot
//!   specify 64-byte hexadecimal strings"), since it is an image ID. Refused here too.
//! - **IPv6 registries (`[::1]:5443/x`)** are missing from older copies of the grammar (oci-spec's
//!   among them); Docker's grammar allows them, and so do we.
//! - **the 255-character limit counts only the repository path**, not the registry. We apply it
//!   to the whole normalised name `registry/repository`, as Docker's `NameTotalLengthMax` did
//!   for years: slightly stricter than today's Docker, never looser.
//! - **a registry that is not a host name is accepted** when it contains a dot:
//!   `foo_bar.com/x` matches as a two-component path and Docker then reads `foo_bar.com` as the
//!   registry. We reject it.
//! - **an absent tag becomes `latest`**. Here [`ImageRef::tag`] stays `None` so callers can tell
//!   "no tag given" from "`latest` given" (seed 000); [`ImageRef::tag_or_latest`] is the explicit
//!   fallback.
//! - **every failure is `invalid reference format`**. Here each one is a typed
//!   [`ReferenceError`] that names the offending input and has a [`ReferenceError::hint`].
//!
//! Inputs are never cleaned up silently: leading or trailing whitespace and control characters
//! are errors, not trimmed, so what was validated is what Docker will be given.
//!
//! Registry host names keep the case they were written in, as Docker keeps them:
//! `Docker.io/library/nginx` is accepted, but it names a registry called `Docker.io`, not Docker
//! Hub (Docker compares `docker.io` case-sensitively, too).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// Other names of Docker Hub that are folded into [`DOCKER_HUB`].
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];

/// Whether `host` names Docker Hub: [`DOCKER_HUB`] or one of its aliases
/// (`index.docker.io`, `registry-1.docker.io`, the registry API's host).
pub fn is_docker_hub(host: &str) -> bool {
    host == DOCKER_HUB || DOCKER_HUB_ALIASES.contains(&host)
}
/// The Docker Hub namespace of official images, which nobody else may push into.
const OFFICIAL_PREFIX: &str = "library/";
/// The tag Docker assumes when none is written.
const DEFAULT_TAG: &str = "latest";
/// The longest tag Docker accepts.
const TAG_MAX_LEN: usize = 128;
/// The longest `registry/repository` name accepted.
const NAME_MAX_LEN: usize = 255;
/// The shortest registry host [`ImageRef::for_registry`] accepts: 3 characters (`a.b`, `a:1`,
/// `[1]`), since Docker reads a host only when it has a `.`, a `:port` or brackets, or is
/// `localhost`.
const SHORTEST_HOST_LEN: usize = 3;
/// The longest repository path that fits behind any registry host within the 255 characters
/// of `registry/repository` (the shortest host and its `/` take 4). Longer ones cannot be
/// pushed anywhere; shorter ones fit or not depending on the host.
pub const REPOSITORY_MAX_LEN: usize = NAME_MAX_LEN - SHORTEST_HOST_LEN - 1;
/// Digest algorithms Docker registers, with the length of their hex encoding.
const DIGEST_ALGORITHMS: [(&str, usize); 3] = [("sha256", 64), ("sha384", 96), ("sha512", 128)];

/// A parsed, normalised image reference: registry, repository, optional tag, optional digest.
///
/// Normalised like Docker does: `myapp` is `docker.io/library/myapp`, `user/app` is
/// `docker.io/user/app`, and `index.docker.io` or `registry-1.docker.io` become `docker.io`.
/// Two references to the same image compare equal whatever way they were written.
///
/// `Display` (and serde) give the fully-qualified form, `docker.io/library/myapp:0722`, which
/// parses back to an equal value; [`ImageRef::familiar`] gives the short form `docker images`
/// shows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference written the way the `docker` CLI takes it and normalises it.
    ///
    /// The tag stays `None` when none is written (no implicit `latest`). A reference may carry a
    /// tag and a digest together (`myapp:1@sha256:…`), as Docker allows.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let parts = Parts::checked(input)?;
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

        let (registry, repository) = split_name(input, parts.name)?;
        let image = Self::normalised(
            registry.unwrap_or(DOCKER_HUB),
            repository,
            parts.tag.map(str::to_owned),
            parts.digest.map(str::to_owned),
        );
        image.check_name_length()?;
        Ok(image)
    }

    /// Builds the reference a job pushes to, from a registry host (`harbor.example.com:10443`,
    /// `127.0.0.1:5001`, `[::1]:5443`), a repository path (`production/myapp`) and a tag.
    ///
    /// Each part is validated on its own, so an error says which one is wrong. The registry is
    /// used as given, with no Docker Hub guessing, and therefore must be one Docker reads as a
    /// host: it needs a `.`, a `:port`, brackets, or to be `localhost` (`harbor` alone would be
    /// read as a Docker Hub namespace). Docker Hub's own names are the one normalisation:
    /// `index.docker.io` and `registry-1.docker.io` become `docker.io`, and a single-component
    /// repository there becomes `library/…`, so the result always equals
    /// `ImageRef::parse(&result.to_string())`.
    pub fn for_registry(
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Self, ReferenceError> {
        let invalid_registry = |reason: String| ReferenceError::InvalidRegistry {
            input: registry.to_owned(),
            registry: registry.to_owned(),
            reason,
        };
        validate_host(registry).map_err(invalid_registry)?;
        if split_registry(&format!("{registry}/x")).0.is_none() {
            return Err(invalid_registry(format!(
                "Docker would read `{registry}` as a Docker Hub namespace, not as a registry host"
            )));
        }
        validate_repository(repository)?;
        validate_tag(tag, tag)?;
        let image = Self::normalised(registry, repository, Some(tag.to_owned()), None);
        image.check_name_length()?;
        Ok(image)
    }

    /// Checks what [`ImageRef::for_registry`] checks that does not depend on the registry host:
    /// the repository path's grammar, the tag, and the repository's own length bound
    /// ([`REPOSITORY_MAX_LEN`]). A job is checked with this before the catalogue has given its
    /// host; `for_registry` then applies the 255-character limit to the real
    /// `host/repository`.
    pub fn check_target(repository: &str, tag: &str) -> Result<(), ReferenceError> {
        validate_repository(repository)?;
        validate_tag(tag, tag)?;
        if repository.len() > REPOSITORY_MAX_LEN {
            return Err(ReferenceError::RepositoryTooLong {
                repository: repository.to_owned(),
                length: repository.len(),
            });
        }
        Ok(())
    }

    /// Reads a reference to an image inside a registry already known by other means (a job's
    /// `source` with `source_registry`): `repository[:tag][@digest]`, no host. Each part is
    /// checked as in [`ImageRef::check_target`]; the digest as in [`ImageRef::parse`].
    pub fn parse_in_registry(input: &str) -> Result<InRegistry, ReferenceError> {
        let parts = Parts::checked(input)?;
        validate_repository(parts.name)?;
        if parts.name.len() > REPOSITORY_MAX_LEN {
            return Err(ReferenceError::RepositoryTooLong {
                repository: parts.name.to_owned(),
                length: parts.name.len(),
            });
        }
        Ok(InRegistry {
            repository: parts.name.to_owned(),
            tag: parts.tag.map(str::to_owned),
            digest: parts.digest.map(str::to_owned),
        })
    }

    /// The registry: `docker.io`, `localhost:5000`, `127.0.0.1:5001`, `[::1]:5443`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry: `library/myapp`, `production/myapp`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag as written, or `None` when the reference has none (no implicit `latest`).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`sha256:<64 hex>`), when the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The tag, or `latest` when none was written: what Docker uses for a reference without a
    /// tag. A digest-only reference also answers `latest`; check [`ImageRef::digest`] first if
    /// that matters.
    pub fn tag_or_latest(&self) -> &str {
        self.tag().unwrap_or(DEFAULT_TAG)
    }

    /// Whether the reference points at Docker Hub.
    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }

    /// Whether this is a Docker Hub repository without a user namespace: `library/x`, whether
    /// written `x`, `library/x` or `docker.io/library/x`. Docker Hub refuses pushes there ("You
    /// cannot push a \"root\" repository", seed 004), so a push must be refused before it starts.
    pub fn is_docker_hub_root(&self) -> bool {
        self.is_docker_hub()
            && self
                .repository
                .strip_prefix(OFFICIAL_PREFIX)
                .is_some_and(|rest| !rest.contains('/'))
    }

    /// The same repository with `tag` instead of the current tag; any digest is dropped, since
    /// it belonged to the old tag's image.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        validate_tag(tag, tag)?;
        Ok(Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        })
    }

    /// `registry/repository`, fully qualified, without tag or digest: the name Docker lists for
    /// an image of a registry other than Docker Hub, and what credentials and scopes refer to.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Docker's familiar form, as `docker images` shows it: `docker.io/` and an official image's
    /// `library/` are dropped (`myapp:0722`, `user/app:1`); other registries stay
    /// (`localhost:5000/myapp:0722`).
    ///
    /// Unlike Docker, `docker.io/` is kept when the path's first component would itself be read
    /// as a registry (`docker.io/docker.io/x`, seed 004), or when the path is a 64-hex string
    /// that alone would be read as an image ID, so the familiar form always parses back to this
    /// same reference.
    pub fn familiar(&self) -> String {
        let mut out = if self.is_docker_hub() {
            let path = match self.repository.strip_prefix(OFFICIAL_PREFIX) {
                Some(rest) if !rest.contains('/') => rest,
                _ => &self.repository,
            };
            if split_registry(path).0.is_some() || is_image_id(path) {
                self.name()
            } else {
                path.to_owned()
            }
        } else {
            self.name()
        };
        self.push_tag_and_digest(&mut out);
        out
    }

    /// Builds a value in normal form from parts that are already valid.
    fn normalised(
        registry: &str,
        repository: &str,
        tag: Option<String>,
        digest: Option<String>,
    ) -> Self {
        let registry = if DOCKER_HUB_ALIASES.contains(&registry) {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("{OFFICIAL_PREFIX}{repository}")
        } else {
            repository.to_owned()
        };
        Self {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        }
    }

    /// Applies the 255-character limit to the normalised `registry/repository`.
    fn check_name_length(&self) -> Result<(), ReferenceError> {
        let name = self.name();
        if name.len() > NAME_MAX_LEN {
            return Err(ReferenceError::NameTooLong {
                length: name.len(),
                name,
            });
        }
        Ok(())
    }

    fn push_tag_and_digest(&self, out: &mut String) {
        push_tag_and_digest(out, self.tag.as_deref(), self.digest.as_deref());
    }
}

/// Appends `:tag` and `@digest`, each when given.
fn push_tag_and_digest(out: &mut String, tag: Option<&str>, digest: Option<&str>) {
    if let Some(tag) = tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
}

/// An image inside a registry named elsewhere: `repository[:tag][@digest]`
/// ([`ImageRef::parse_in_registry`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InRegistry {
    /// The repository path, e.g. `ci/myapp`.
    pub repository: String,
    /// The tag, when one is written.
    pub tag: Option<String>,
    /// The manifest digest, when one is written.
    pub digest: Option<String>,
}

impl InRegistry {
    /// What a registry is asked for: the digest when one is written, else the tag (`latest`
    /// when none is, as in Docker).
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The image written out on `host`: `host/repository[:tag][@digest]`.
    pub fn at(&self, host: &str) -> String {
        format!("{host}/{self}")
    }
}

/// `repository[:tag][@digest]`, as written in a job.
impl fmt::Display for InRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.repository.clone();
        push_tag_and_digest(&mut out, self.tag.as_deref(), self.digest.as_deref());
        f.write_str(&out)
    }
}

/// The fully-qualified form: `docker.io/library/myapp:0722`, with `@digest` when present.
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        self.push_tag_and_digest(&mut out);
        f.write_str(&out)
    }
}

/// Same as [`ImageRef::parse`].
impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Serialised as the fully-qualified string.
impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Deserialised from a string through [`ImageRef::parse`], so a value that deserialises is valid.
impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A string in the schema: the fully-qualified reference.
impl schemars::JsonSchema for ImageRef {
    fn schema_name() -> Cow<'static, str> {
        "ImageRef".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "An image reference in Docker's grammar: \
                [registry[:port]/]repository[:tag][@algorithm:hex].",
            "examples": ["docker.io/library/myapp:0722", "localhost:5000/myapp:0722"]
        })
    }
}

/// The source image of a push, with the seeds' Django semantics: an `image` without a tag or
/// digest takes `tag` (`myapp` + `0722` -> `myapp:0722`, `localhost:5000/myapp` + `0722` ->
/// `localhost:5000/myapp:0722`); an `image` that already carries a tag or digest keeps it
/// (`myapp:latest` + `0722` -> `myapp:latest`). With neither, the tag stays `None`.
///
/// `tag` is validated only when it is used: an empty or malformed tag that would be applied is
/// an error, never a silent fallback to `latest`.
pub fn source_reference(image: &str, tag: Option<&str>) -> Result<ImageRef, ReferenceError> {
    let image = ImageRef::parse(image)?;
    match tag {
        Some(tag) if image.tag.is_none() && image.digest.is_none() => image.with_tag(tag),
        _ => Ok(image),
    }
}

/// Why a string is not a valid image reference, or part of one.
///
/// Every variant maps to the stable error code `invalid_reference`. The message names the
/// offending input; [`ReferenceError::hint`] says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The reference is the empty string.
    #[error("the image reference is empty")]
    Empty,
    /// The reference starts or ends with whitespace. It is not trimmed: what was validated must
    /// be exactly what Docker gets.
    #[error("the image reference {input:?} starts or ends with whitespace")]
    SurroundingWhitespace {
        /// The whole input.
        input: String,
    },
    /// The reference contains whitespace or a control character.
    #[error(
        "the image reference {input:?} contains {character:?} at position {position}; \
         whitespace and control characters are not allowed"
    )]
    InvalidCharacter {
        /// The whole input.
        input: String,
        /// The first offending character.
        character: char,
        /// Its position, counted in characters from 0.
        position: usize,
    },
    /// The reference does not follow Docker's grammar
    /// `[registry[:port]/]repository[:tag][@algorithm:hex]`.
    #[error("invalid image reference `{input}`: {reason}")]
    InvalidFormat {
        /// The whole input.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The repository path contains uppercase letters (`MyApp`): registries accept lowercase only.
    #[error("invalid image reference `{input}`: repository name `{repository}` must be lowercase")]
    UppercaseRepository {
        /// The whole input (the repository itself, when it was given alone).
        input: String,
        /// The repository path as written.
        repository: String,
    },
    /// A repository given on its own (to [`ImageRef::for_registry`]) is not a valid path.
    #[error("invalid repository `{repository}`: {reason}")]
    InvalidRepository {
        /// The repository as given.
        repository: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tag is empty or uses characters a tag cannot have.
    #[error("invalid tag `{tag}`{}: {reason}", context(.input, .tag))]
    InvalidTag {
        /// The whole input (the tag itself, when it was given alone).
        input: String,
        /// The tag as written.
        tag: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tag is longer than 128 characters.
    #[error(
        "tag `{tag}`{} is {length} characters long; a tag has at most 128",
        context(.input, .tag)
    )]
    TagTooLong {
        /// The whole input (the tag itself, when it was given alone).
        input: String,
        /// The tag as written.
        tag: String,
        /// Its length in characters.
        length: usize,
    },
    /// The digest is not `algorithm:hex` with a supported algorithm and lowercase hex of the
    /// right length.
    #[error("invalid digest `{digest}`{}: {reason}", context(.input, .digest))]
    InvalidDigest {
        /// The whole input.
        input: String,
        /// The digest as written (after `@`).
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The normalised `registry/repository` is longer than 255 characters.
    #[error("image name `{name}` is {length} characters long; at most 255 are allowed")]
    NameTooLong {
        /// The normalised `registry/repository`.
        name: String,
        /// Its length.
        length: usize,
    },
    /// A repository given on its own (to [`ImageRef::check_target`]) is so long that no
    /// registry host leaves room for it within the 255 characters of `registry/repository`.
    #[error(
        "repository `{repository}` is {length} characters long; behind any registry host \
         `registry/repository` would exceed 255 characters (a repository has at most \
         {REPOSITORY_MAX_LEN})"
    )]
    RepositoryTooLong {
        /// The repository as given.
        repository: String,
        /// Its length.
        length: usize,
    },
    /// The registry is not a `host[:port]`.
    #[error("invalid registry `{registry}`{}: {reason}", context(.input, .registry))]
    InvalidRegistry {
        /// The whole input (the registry itself, when it was given alone).
        input: String,
        /// The registry as written.
        registry: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ReferenceError {
    /// One line of advice for the person who wrote the reference, e.g.
    /// "repository names must be lowercase: try `myapp`".
    pub fn hint(&self) -> String {
        match self {
            ReferenceError::Empty => {
                "give an image reference such as `myapp:0722` or `harbor.example.com/team/app:1`"
                    .to_owned()
            }
            ReferenceError::SurroundingWhitespace { input } => match input.trim() {
                "" => "give an image reference such as `myapp:0722`, not whitespace".to_owned(),
                trimmed => format!("remove the surrounding whitespace: try `{trimmed}`"),
            },
            ReferenceError::InvalidCharacter {
                character,
                position,
                ..
            } => format!(
                "remove the {character:?} at position {position}: a reference is one word without \
                 whitespace or control characters"
            ),
            ReferenceError::InvalidFormat { input, .. } if input.contains("://") => {
                "drop the URL scheme: a reference looks like `harbor.example.com/team/myapp:0722`"
                    .to_owned()
            }
            ReferenceError::InvalidFormat { .. } => {
                "write it as `[registry[:port]/]repository[:tag][@sha256:<hex>]`, e.g. \
                 `localhost:5000/myapp:0722`"
                    .to_owned()
            }
            ReferenceError::UppercaseRepository { repository, .. } => format!(
                "repository names must be lowercase: try `{}`",
                repository.to_lowercase()
            ),
            ReferenceError::InvalidRepository { .. } => {
                "a repository is lowercase path components joined by `/`, without registry, tag \
                 or digest, e.g. `production/myapp`"
                    .to_owned()
            }
            ReferenceError::InvalidTag { .. } => {
                "a tag is 1 to 128 characters from `A-Z a-z 0-9 _ . -`, not starting with `.` or \
                 `-`, e.g. `0722` or `v1.2.3`"
                    .to_owned()
            }
            ReferenceError::TagTooLong { .. } => {
                "shorten the tag to at most 128 characters".to_owned()
            }
            ReferenceError::InvalidDigest { .. } => {
                "a digest is `sha256:` followed by 64 lowercase hex characters (sha384: 96, \
                 sha512: 128)"
                    .to_owned()
            }
            ReferenceError::NameTooLong { .. } | ReferenceError::RepositoryTooLong { .. } => {
                "shorten the repository path: `registry/repository` must fit in 255 characters"
                    .to_owned()
            }
            ReferenceError::InvalidRegistry { registry, .. } => registry_hint(registry),
        }
    }
}

/// ` in `input`` when the faulty part is not the whole input, for error messages.
fn context(input: &str, part: &str) -> String {
    if input == part {
        String::new()
    } else {
        format!(" in `{input}`")
    }
}

fn invalid_format(input: &str, reason: &str) -> ReferenceError {
    ReferenceError::InvalidFormat {
        input: input.to_owned(),
        reason: reason.to_owned(),
    }
}

fn registry_hint(registry: &str) -> String {
    if let Some((_, rest)) = registry.split_once("://") {
        let host = rest.split('/').next().unwrap_or_default();
        return format!("drop the scheme: try `{host}`");
    }
    if let Some((host, _)) = registry.split_once('/') {
        return format!(
            "a registry is only `host[:port]`: try `{host}` and move the path into the repository"
        );
    }
    if !registry.is_empty() && split_registry(&format!("{registry}/x")).0.is_none() {
        return format!(
            "add the port or the full domain (`{registry}:5000`, `{registry}.example.com`): Docker \
             reads a bare `{registry}` as a Docker Hub namespace"
        );
    }
    "a registry is `host[:port]`, e.g. `harbor.example.com:10443`, `127.0.0.1:5001` or `[::1]:5443`"
        .to_owned()
}

/// Rejects empty input, surrounding whitespace and control characters up front, so none of
/// them ever reaches the grammar (or gets trimmed by anyone).
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

/// A reference cut into name, tag and digest the way Docker's grammar cuts it: the digest
/// follows the first `@`, the tag follows a `:` in the last path component (a `:` before the
/// last `/` is a registry port).
#[derive(Debug)]
struct Parts<'a> {
    name: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

impl<'a> Parts<'a> {
    /// [`Parts::split`] of an input whose characters, digest and tag are checked.
    fn checked(input: &'a str) -> Result<Self, ReferenceError> {
        check_characters(input)?;
        let parts = Self::split(input)?;
        if let Some(digest) = parts.digest {
            validate_digest(input, digest)?;
        }
        if let Some(tag) = parts.tag {
            validate_tag(input, tag)?;
        }
        Ok(parts)
    }

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

/// Checks the name part of a reference (`[domain '/'] path-component ('/' path-component)*`)
/// and splits it into registry and repository path the way Docker does ([`split_registry`]).
///
/// Beyond the grammar, the repository path must be lowercase (Docker's grammar lets an
/// uppercase first component through as a domain, which then names a Docker Hub repository
/// that no registry accepts), and a registry must be a host name: `foo_bar.com/x` matches the
/// grammar as a two-component path whose first component Docker then takes for a registry.
fn split_name<'a>(
    input: &str,
    name: &'a str,
) -> Result<(Option<&'a str>, &'a str), ReferenceError> {
    let invalid_registry = |registry: &str, reason: String| ReferenceError::InvalidRegistry {
        input: input.to_owned(),
        registry: registry.to_owned(),
        reason,
    };
    let (registry, path) = split_registry(name);
    // A bracketed first component can only be an IPv6 host: it is judged as one first.
    if let Some(host) = registry.filter(|host| host.starts_with('[')) {
        validate_host(host).map_err(|reason| invalid_registry(host, reason))?;
    }
    if !is_name(name) {
        return Err(diagnose(input, name));
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::UppercaseRepository {
            input: input.to_owned(),
            repository: path.to_owned(),
        });
    }
    if let Some(registry) = registry {
        validate_host(registry).map_err(|reason| invalid_registry(registry, reason))?;
    }
    Ok((registry, path))
}

/// Docker's `name`: `[domain '/'] path-component ('/' path-component)*`, where `domain` is a
/// registry host ([`validate_host`]). The first component may read as either; which one it is
/// is [`split_registry`]'s decision, not the grammar's.
fn is_name(name: &str) -> bool {
    is_path(name)
        || name
            .split_once('/')
            .is_some_and(|(domain, path)| validate_host(domain).is_ok() && is_path(path))
}

/// A repository path: one or more [path components](is_path_component) joined by `/`.
fn is_path(path: &str) -> bool {
    path.split('/').all(is_path_component)
}

/// Docker's `path-component`: `[a-z0-9]+ (separator [a-z0-9]+)*`, where a separator is one
/// `.`, one `_`, `__`, or any number of `-`.
fn is_path_component(component: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut rest = component;
    loop {
        let run = rest.find(|c| !alphanumeric(c)).unwrap_or(rest.len());
        if run == 0 {
            return false;
        }
        rest = &rest[run..];
        if rest.is_empty() {
            return true;
        }
        let separator_len = rest.find(alphanumeric).unwrap_or(rest.len());
        let separator = &rest[..separator_len];
        if !(matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-')) {
            return false;
        }
        rest = &rest[separator_len..];
    }
}

/// Splits a name into registry and path with Docker's rule (`splitDockerDomain`): the first
/// component is a registry when it contains `.` or `:`, is bracketed, or is `localhost`.
/// Whether that registry is a valid host is [`validate_host`]'s question.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':', '[']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// Docker refuses a bare image ID where a repository name is expected.
fn is_image_id(input: &str) -> bool {
    input.len() == 64
        && input
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a tag against Docker's grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, with `\w`
/// meaning ASCII as in Docker (Go).
///
/// `input` is the text the tag was taken from, which errors name (`myapp:tåg`); pass the tag
/// itself when it stands alone. Errors: [`ReferenceError::InvalidTag`],
/// [`ReferenceError::TagTooLong`].
pub fn validate_tag(input: &str, tag: &str) -> Result<(), ReferenceError> {
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

/// Checks a digest: `algorithm:hex` with an algorithm Docker registers (`sha256`, `sha384`,
/// `sha512`) and lowercase hex of its exact length, as `go-digest` validates them.
///
/// `input` is the text the digest was taken from, which errors name (`myapp@sha256:…`); pass
/// the digest itself when it stands alone. Error: [`ReferenceError::InvalidDigest`].
pub fn validate_digest(input: &str, digest: &str) -> Result<(), ReferenceError> {
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

/// A registry host as Docker's grammar has it: a domain name (components of ASCII letters,
/// digits and inner `-`, joined by `.`), an IPv4 address, or an IPv6 address in brackets;
/// optionally followed by `:port`. Returns the reason when it is not one.
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

/// Checks a repository path given on its own (`production/myapp`): Docker's path components
/// (lowercase letters and digits joined by one `.`, one or two `_`, or dashes) joined by `/`,
/// with no registry, tag or digest.
///
/// Length is not checked here: the 255-character limit applies to `registry/repository`
/// ([`ImageRef::for_registry`], [`ImageRef::check_target`]). Errors:
/// [`ReferenceError::InvalidRepository`], [`ReferenceError::UppercaseRepository`].
pub fn validate_repository(repository: &str) -> Result<(), ReferenceError> {
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
    if !is_path(repository) {
        return Err(invalid(&path_grammar_reason(repository)));
    }
    Ok(())
}

/// Slash problems in a path, which are easy to name precisely.
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
    let rule = "each `/`-separated component is lowercase letters and digits, joined by one `.`, \
                one or two `_`, or dashes";
    match path.chars().find(|c| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/'))
    }) {
        Some(c) => format!("`{c}` is not allowed in a repository path: {rule}"),
        None => format!("`{path}` is not a valid repository path: {rule}"),
    }
}

/// Says what is wrong with the name part (registry and path) of a reference the grammar refused.
fn diagnose(input: &str, name: &str) -> ReferenceError {
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
    if path.bytes().any(|b| b.is_ascii_uppercase()) && is_path(&path.to_lowercase()) {
        return ReferenceError::UppercaseRepository {
            input: input.to_owned(),
            repository: path.to_owned(),
        };
    }
    ReferenceError::InvalidFormat {
        input: input.to_owned(),
        reason: path_grammar_reason(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// What a parse should give: the fully-qualified string, or the name of the error variant.
    #[derive(Debug, Clone, Copy)]
    enum Want {
        Ok(&'static str),
        Err(&'static str),
    }
    use Want::{Err as E, Ok as O};

    fn kind(error: &ReferenceError) -> &'static str {
        match error {
            ReferenceError::Empty => "Empty",
            ReferenceError::SurroundingWhitespace { .. } => "SurroundingWhitespace",
            ReferenceError::InvalidCharacter { .. } => "InvalidCharacter",
            ReferenceError::InvalidFormat { .. } => "InvalidFormat",
            ReferenceError::UppercaseRepository { .. } => "UppercaseRepository",
            ReferenceError::InvalidRepository { .. } => "InvalidRepository",
            ReferenceError::InvalidTag { .. } => "InvalidTag",
            ReferenceError::TagTooLong { .. } => "TagTooLong",
            ReferenceError::InvalidDigest { .. } => "InvalidDigest",
            ReferenceError::NameTooLong { .. } => "NameTooLong",
            ReferenceError::RepositoryTooLong { .. } => "RepositoryTooLong",
            ReferenceError::InvalidRegistry { .. } => "InvalidRegistry",
        }
    }

    /// Rows built at run time (long strings, digests).
    fn parse_cases() -> Vec<(String, Want)> {
        let s = |x: &str| x.to_owned();
        let tag128 = "t".repeat(128);
        let tag129 = "t".repeat(129);
        let up64 = HEX64.to_uppercase();
        let mut rows: Vec<(String, Want)> = vec![
            // Docker Hub normalisation (seed 004).
            (s("myapp"), O("docker.io/library/myapp")),
            (s("myapp:0722"), O("docker.io/library/myapp:0722")),
            (s("myapp:latest"), O("docker.io/library/myapp:latest")),
            (s("library/myapp"), O("docker.io/library/myapp")),
            (s("docker.io/myapp"), O("docker.io/library/myapp")),
            (s("docker.io/library/nginx"), O("docker.io/library/nginx")),
            (s("user/app:1"), O("docker.io/user/app:1")),
            (
                s("biaoxyz/scaler-operator:v1"),
                O("docker.io/biaoxyz/scaler-operator:v1"),
            ),
            (
                s("docker.io/docker.io/scaler-operator:v1"),
                O("docker.io/docker.io/scaler-operator:v1"),
            ),
            (s("index.docker.io/x/y"), O("docker.io/x/y")),
            (s("index.docker.io/myapp"), O("docker.io/library/myapp")),
            // oci-spec leaves these as registry `registry-1.docker.io`.
            (s("registry-1.docker.io/x/y:1"), O("docker.io/x/y:1")),
            (
                s("registry-1.docker.io/myapp"),
                O("docker.io/library/myapp"),
            ),
            // Registry names keep their case, as in Docker: this is not Docker Hub.
            (s("Docker.io/library/nginx"), O("Docker.io/library/nginx")),
            // Other registries (seed 000: the port colon is not a tag).
            (s("localhost:5000/myapp"), O("localhost:5000/myapp")),
            (
                s("localhost:5000/myapp:0722"),
                O("localhost:5000/myapp:0722"),
            ),
            (s("localhost/myapp"), O("localhost/myapp")),
            (
                s("127.0.0.1:5001/production/myapp:0722"),
                O("127.0.0.1:5001/production/myapp:0722"),
            ),
            (
                s("reg.cyfee.com:10443/production/myapp:0722"),
                O("reg.cyfee.com:10443/production/myapp:0722"),
            ),
            (
                s("quay.io/biaoxyz/scaler-operator:v1"),
                O("quay.io/biaoxyz/scaler-operator:v1"),
            ),
            (
                s("sub-dom1.foo.com/bar/baz/quux:some-long-tag"),
                O("sub-dom1.foo.com/bar/baz/quux:some-long-tag"),
            ),
            // A bare `name:port` is an image and a tag, as Docker reads it.
            (s("localhost:5000"), O("docker.io/library/localhost:5000")),
            // IPv6 registries, which oci-spec rejects.
            (s("[::1]:5443/x"), O("[::1]:5443/x")),
            (
                s("[2001:db8::1]/team/app:v1"),
                O("[2001:db8::1]/team/app:v1"),
            ),
            // Path separators and tag alphabet.
            (
                s("a__b/c-d--e.f_g:TAG_1.0-rc"),
                O("docker.io/a__b/c-d--e.f_g:TAG_1.0-rc"),
            ),
            (s("myapp:_private"), O("docker.io/library/myapp:_private")),
            (
                format!("myapp:{tag128}"),
                Want::Ok(leak(format!("docker.io/library/myapp:{tag128}"))),
            ),
            // Digests, with and without tag.
            (
                format!("x@sha256:{HEX64}"),
                Want::Ok(leak(format!("docker.io/library/x@sha256:{HEX64}"))),
            ),
            (
                format!("x:1@sha256:{HEX64}"),
                Want::Ok(leak(format!("docker.io/library/x:1@sha256:{HEX64}"))),
            ),
            (
                format!("localhost:5000/x@sha512:{HEX64}{HEX64}"),
                Want::Ok(leak(format!("localhost:5000/x@sha512:{HEX64}{HEX64}"))),
            ),
            // Only a bare image ID is refused; as a name with a tag Docker takes it.
            (
                format!("{HEX64}:1"),
                Want::Ok(leak(format!("docker.io/library/{HEX64}:1"))),
            ),
            // Empty, whitespace, control characters: never trimmed.
            (s(""), E("Empty")),
            (s(" myapp"), E("SurroundingWhitespace")),
            (s("myapp\n"), E("SurroundingWhitespace")),
            (s("myapp:0722 "), E("SurroundingWhitespace")),
            (s("   "), E("SurroundingWhitespace")),
            (s("my app"), E("InvalidCharacter")),
            (s("my\u{7}app"), E("InvalidCharacter")),
            (s("myapp:07\t22"), E("InvalidCharacter")),
            // Uppercase repository paths (the first three pass oci-spec).
            (s("MyApp"), E("UppercaseRepository")),
            (s("MyOrg/app:1"), E("UppercaseRepository")),
            (s("Uppercase/lowercase"), E("UppercaseRepository")),
            (s("Localhost/x"), E("UppercaseRepository")),
            (
                s("test:5000/Uppercase/lowercase:tag"),
                E("UppercaseRepository"),
            ),
            (s("docker.io/library/MyApp"), E("UppercaseRepository")),
            // Tags.
            (s("myapp:"), E("InvalidTag")),
            (format!("myapp:{tag129}"), E("TagTooLong")),
            (s("myapp:tag:extra"), E("InvalidTag")),
            (s("localhost:5000/myapp:0722:x"), E("InvalidTag")),
            (s("myapp:-x"), E("InvalidTag")),
            (s("myapp:.x"), E("InvalidTag")),
            (s("myapp:tåg"), E("InvalidTag")),
            (s("myapp:v1+build"), E("InvalidTag")),
            // Path shape and grammar.
            (s("a//b"), E("InvalidFormat")),
            (s("/myapp"), E("InvalidFormat")),
            (s("myapp/"), E("InvalidFormat")),
            (s("-a"), E("InvalidFormat")),
            (s("a-"), E("InvalidFormat")),
            (s("a..b"), E("InvalidFormat")),
            (s("a___b"), E("InvalidFormat")),
            (s("my$app"), E("InvalidFormat")),
            (s("myäpp"), E("InvalidFormat")),
            (s(":0722"), E("InvalidFormat")),
            (format!("@sha256:{HEX64}"), E("InvalidFormat")),
            (s(HEX64), E("InvalidFormat")),
            (s("https://harbor.example.com/team/app"), E("InvalidFormat")),
            (s("[::1]:5443"), E("InvalidFormat")),
            // Digests.
            (format!("x@sha256:{}", &HEX64[..63]), E("InvalidDigest")),
            (format!("x@sha256:{HEX64}0"), E("InvalidDigest")),
            (format!("x@sha256:{up64}"), E("InvalidDigest")),
            (format!("x@sha256:{}", "g".repeat(64)), E("InvalidDigest")),
            (format!("x@md5:{}", &HEX64[..32]), E("InvalidDigest")),
            (s("x@sha256"), E("InvalidDigest")),
            (s("x@"), E("InvalidDigest")),
            (
                format!("x@sha256:{HEX64}@sha256:{HEX64}"),
                E("InvalidDigest"),
            ),
            // Registries.
            (s("foo_bar.com/x"), E("InvalidRegistry")),
            (s("localhost:50a0/x"), E("InvalidRegistry")),
            (s("[zz::1]:5443/x"), E("InvalidRegistry")),
            (s("[::1/x"), E("InvalidRegistry")),
            // Length: oci-spec counts only the path, so the first passes it.
            (
                format!("registry.example.com/{}", "a".repeat(240)),
                E("NameTooLong"),
            ),
            (
                format!("{}/{}", "a".repeat(200), "b".repeat(60)),
                E("NameTooLong"),
            ),
        ];
        // Exactly at the limit: 255 characters of `registry/repository`.
        let at_limit = format!("registry.example.com/{}", "a".repeat(255 - 21));
        rows.push((at_limit.clone(), Want::Ok(leak(at_limit))));
        rows
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    #[test]
    fn parse_table() {
        let rows = parse_cases();
        assert!(rows.len() >= 40, "only {} rows", rows.len());
        for (input, want) in rows {
            let got = ImageRef::parse(&input);
            match (want, &got) {
                (Want::Ok(expected), Ok(image)) => {
                    assert_eq!(image.to_string(), expected, "input {input:?}");
                }
                (Want::Err(expected), Err(error)) => {
                    assert_eq!(kind(error), expected, "input {input:?}: {error}");
                    let message = error.to_string();
                    if !matches!(
                        error,
                        ReferenceError::Empty | ReferenceError::NameTooLong { .. }
                    ) {
                        assert!(
                            message.contains(&input) || message.contains(&format!("{input:?}")),
                            "message does not name the input {input:?}: {message}"
                        );
                    }
                    assert!(!error.hint().is_empty(), "input {input:?} has no hint");
                }
                _ => panic!("input {input:?}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn display_parse_and_familiar_round_trip_for_every_valid_case() {
        for (input, want) in parse_cases() {
            if let Want::Ok(_) = want {
                let image = ImageRef::parse(&input).expect("valid row");
                assert_eq!(
                    ImageRef::parse(&image.to_string()),
                    Ok(image.clone()),
                    "{input}"
                );
                assert_eq!(
                    ImageRef::parse(&image.familiar()),
                    Ok(image.clone()),
                    "{input}"
                );
                assert_eq!(
                    image.to_string().parse::<ImageRef>(),
                    Ok(image.clone()),
                    "{input}"
                );
                let json = serde_json::to_string(&image).expect("serialises");
                assert_eq!(json, format!("\"{image}\""));
                let back: ImageRef = serde_json::from_str(&json).expect("deserialises");
                assert_eq!(back, image, "{input}");
            }
        }
    }

    #[test]
    fn parts_of_a_parsed_reference() {
        // (input, registry, repository, tag, digest, tag_or_latest)
        type Row = (
            &'static str,
            &'static str,
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
            &'static str,
        );
        let rows: [Row; 6] = [
            ("myapp", "docker.io", "library/myapp", None, None, "latest"),
            (
                "myapp:0722",
                "docker.io",
                "library/myapp",
                Some("0722"),
                None,
                "0722",
            ),
            (
                "127.0.0.1:5001/production/myapp:0722",
                "127.0.0.1:5001",
                "production/myapp",
                Some("0722"),
                None,
                "0722",
            ),
            (
                "localhost:5000/myapp",
                "localhost:5000",
                "myapp",
                None,
                None,
                "latest",
            ),
            ("[::1]:5443/x:1", "[::1]:5443", "x", Some("1"), None, "1"),
            (
                "x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "docker.io",
                "library/x",
                None,
                Some("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
                "latest",
            ),
        ];
        for (input, registry, repository, tag, digest, tag_or_latest) in rows {
            let image = ImageRef::parse(input).expect("valid");
            assert_eq!(image.registry(), registry, "{input}");
            assert_eq!(image.repository(), repository, "{input}");
            assert_eq!(image.tag(), tag, "{input}");
            assert_eq!(image.digest(), digest, "{input}");
            assert_eq!(image.tag_or_latest(), tag_or_latest, "{input}");
            assert_eq!(image.name(), format!("{registry}/{repository}"), "{input}");
        }
    }

    #[test]
    fn familiar_form() {
        let digest = format!("x@sha256:{HEX64}");
        let rows: [(&str, &str); 11] = [
            ("myapp:0722", "myapp:0722"),
            ("docker.io/library/myapp:0722", "myapp:0722"),
            ("myapp", "myapp"),
            ("user/app:1", "user/app:1"),
            ("docker.io/user/app:1", "user/app:1"),
            ("registry-1.docker.io/user/app:1", "user/app:1"),
            ("localhost:5000/myapp:0722", "localhost:5000/myapp:0722"),
            ("docker.io/library/a/b", "library/a/b"),
            ("Docker.io/library/nginx", "Docker.io/library/nginx"),
            // Docker would print `docker.io/scaler-operator`, which reads back differently.
            (
                "docker.io/docker.io/scaler-operator:v1",
                "docker.io/docker.io/scaler-operator:v1",
            ),
            (leak(digest.clone()), leak(digest)),
        ];
        for (input, familiar) in rows {
            let image = ImageRef::parse(input).expect("valid");
            assert_eq!(image.familiar(), familiar, "{input}");
        }
    }

    #[test]
    fn docker_hub_and_root_repositories() {
        // (input, is_docker_hub, is_docker_hub_root)
        let rows = [
            ("myapp", true, true),
            ("myapp:0722", true, true),
            ("library/myapp", true, true),
            ("docker.io/library/myapp", true, true),
            ("docker.io/myapp", true, true),
            ("index.docker.io/myapp", true, true),
            ("registry-1.docker.io/library/myapp:1", true, true),
            ("user/app", true, false),
            ("docker.io/library/a/b", true, false),
            ("localhost:5000/myapp", false, false),
            ("harbor.example.com/library/myapp", false, false),
            ("Docker.io/library/nginx", false, false),
        ];
        for (input, hub, root) in rows {
            let image = ImageRef::parse(input).expect("valid");
            assert_eq!(image.is_docker_hub(), hub, "{input}");
            assert_eq!(image.is_docker_hub_root(), root, "{input}");
        }
    }

    #[test]
    fn source_reference_follows_the_django_step_semantics() {
        let digest = leak(format!("x@sha256:{HEX64}"));
        let digest_out = leak(format!("docker.io/library/x@sha256:{HEX64}"));
        let rows: [(&str, Option<&str>, Want); 13] = [
            // Seed 000.
            ("myapp", Some("0722"), O("docker.io/library/myapp:0722")),
            (
                "localhost:5000/myapp",
                Some("0722"),
                O("localhost:5000/myapp:0722"),
            ),
            (
                "myapp:latest",
                Some("0722"),
                O("docker.io/library/myapp:latest"),
            ),
            ("nginx", Some("alpine"), O("docker.io/library/nginx:alpine")),
            (
                "registry.com/myapp",
                Some("v1.0"),
                O("registry.com/myapp:v1.0"),
            ),
            (
                "127.0.0.1:5001/production/myapp",
                Some("0722"),
                O("127.0.0.1:5001/production/myapp:0722"),
            ),
            ("myapp", None, O("docker.io/library/myapp")),
            (digest, Some("0722"), O(digest_out)),
            // A tag that would be used must be valid: no silent fallback to `latest`.
            ("myapp", Some(""), E("InvalidTag")),
            ("myapp", Some("bad tag"), E("InvalidTag")),
            ("myapp", Some(" 0722"), E("InvalidTag")),
            ("MyApp", Some("0722"), E("UppercaseRepository")),
            ("myapp:", Some("0722"), E("InvalidTag")),
        ];
        for (image, tag, want) in rows {
            let got = source_reference(image, tag);
            match (want, &got) {
                (Want::Ok(expected), Ok(r)) => {
                    assert_eq!(r.to_string(), expected, "{image} {tag:?}")
                }
                (Want::Err(expected), Err(e)) => assert_eq!(kind(e), expected, "{image} {tag:?}"),
                _ => panic!("{image} {tag:?}: wanted {want:?}, got {got:?}"),
            }
        }
        let untagged = source_reference("myapp", None).expect("valid");
        assert_eq!(untagged.tag(), None);
        assert_eq!(untagged.tag_or_latest(), "latest");
    }

    #[test]
    fn for_registry_table() {
        let tag129 = leak("t".repeat(129));
        let rows: [(&str, &str, &str, Want); 27] = [
            (
                "harbor.example.com:10443",
                "production/myapp",
                "0722",
                O("harbor.example.com:10443/production/myapp:0722"),
            ),
            (
                "127.0.0.1:5001",
                "production/myapp",
                "0722",
                O("127.0.0.1:5001/production/myapp:0722"),
            ),
            (
                "localhost:5000",
                "myapp",
                "0722",
                O("localhost:5000/myapp:0722"),
            ),
            ("localhost", "myapp", "1", O("localhost/myapp:1")),
            ("[::1]:5443", "x", "1", O("[::1]:5443/x:1")),
            ("[::1]", "x", "1", O("[::1]/x:1")),
            (
                "registry.invalid",
                "production/myapp",
                "0722",
                O("registry.invalid/production/myapp:0722"),
            ),
            ("docker.io", "user/app", "1", O("docker.io/user/app:1")),
            ("docker.io", "myapp", "1", O("docker.io/library/myapp:1")),
            (
                "registry-1.docker.io",
                "user/app",
                "1",
                O("docker.io/user/app:1"),
            ),
            (
                "index.docker.io",
                "user/app",
                "1",
                O("docker.io/user/app:1"),
            ),
            (
                "Harbor.Example.com",
                "team/app",
                "V1",
                O("Harbor.Example.com/team/app:V1"),
            ),
            // Repository.
            (
                "harbor.example.com",
                "Production/myapp",
                "1",
                E("UppercaseRepository"),
            ),
            ("harbor.example.com", "a//b", "1", E("InvalidRepository")),
            ("harbor.example.com", "/myapp", "1", E("InvalidRepository")),
            ("harbor.example.com", "", "1", E("InvalidRepository")),
            ("harbor.example.com", "myapp:1", "1", E("InvalidRepository")),
            ("harbor.example.com", "my app", "1", E("InvalidRepository")),
            ("harbor.example.com", "a..b", "1", E("InvalidRepository")),
            // Tag.
            ("harbor.example.com", "myapp", "bad tag", E("InvalidTag")),
            ("harbor.example.com", "myapp", "", E("InvalidTag")),
            ("harbor.example.com", "myapp", tag129, E("TagTooLong")),
            // Registry.
            ("", "myapp", "1", E("InvalidRegistry")),
            ("https://x", "myapp", "1", E("InvalidRegistry")),
            (
                "harbor.example.com/production",
                "myapp",
                "1",
                E("InvalidRegistry"),
            ),
            ("harbor", "myapp", "1", E("InvalidRegistry")),
            (
                "harbor.example.com:https",
                "myapp",
                "1",
                E("InvalidRegistry"),
            ),
        ];
        for (registry, repository, tag, want) in rows {
            let got = ImageRef::for_registry(registry, repository, tag);
            match (want, &got) {
                (Want::Ok(expected), Ok(image)) => {
                    assert_eq!(image.to_string(), expected, "{registry} {repository} {tag}");
                    assert_eq!(
                        ImageRef::parse(expected),
                        Ok(image.clone()),
                        "round trip {expected}"
                    );
                }
                (Want::Err(expected), Err(error)) => {
                    assert_eq!(
                        kind(error),
                        expected,
                        "{registry} {repository} {tag}: {error}"
                    );
                    assert!(!error.hint().is_empty());
                }
                _ => panic!("{registry} {repository} {tag}: wanted {want:?}, got {got:?}"),
            }
        }
        // The registry is exactly the one given: no Docker Hub guessing.
        let target = ImageRef::for_registry("harbor.example.com:10443", "production/myapp", "0722")
            .expect("valid");
        assert_eq!(target.registry(), "harbor.example.com:10443");
        assert_eq!(target.repository(), "production/myapp");
        assert_eq!(target.tag(), Some("0722"));
        assert!(!target.is_docker_hub());
        assert!(
            ImageRef::for_registry("docker.io", "myapp", "1")
                .expect("valid")
                .is_docker_hub_root()
        );
        let long = ImageRef::for_registry("registry.example.com", &"a".repeat(240), "1");
        assert!(
            matches!(long, Err(ReferenceError::NameTooLong { length: 261, .. })),
            "{long:?}"
        );
    }

    #[test]
    fn check_target_checks_everything_but_the_host() {
        assert_eq!(ImageRef::check_target("production/myapp", "0722"), Ok(()));
        let cases = [
            ("Production/myapp", "1", "UppercaseRepository"),
            ("a//b", "1", "InvalidRepository"),
            ("production/myapp", "bad tag", "InvalidTag"),
            ("production/myapp", &*"t".repeat(129), "TagTooLong"),
        ];
        for (repository, tag, want) in cases {
            let got = ImageRef::check_target(repository, tag).expect_err(repository);
            assert_eq!(kind(&got), want, "{repository} {tag}: {got}");
            assert!(!got.hint().is_empty());
        }
        // The own bound of a repository is exact: at the bound it fits behind the shortest
        // hosts, one more character fits behind none.
        let at_bound = format!("team/{}", "a".repeat(REPOSITORY_MAX_LEN - 5));
        assert_eq!(ImageRef::check_target(&at_bound, "1"), Ok(()));
        for host in ["a.b", "a:1", "[1]"] {
            assert!(
                ImageRef::for_registry(host, &at_bound, "1").is_ok(),
                "{host}"
            );
        }
        let over = format!("{at_bound}a");
        let err = ImageRef::check_target(&over, "1").expect_err("too long");
        assert!(
            matches!(err, ReferenceError::RepositoryTooLong { length, .. } if length == REPOSITORY_MAX_LEN + 1),
            "{err:?}"
        );
        assert!(err.to_string().contains("255"), "{err}");
    }

    #[test]
    fn no_registry_host_is_shorter_than_three_characters() {
        // What REPOSITORY_MAX_LEN rests on: every 1- and 2-character host is refused.
        let printable: Vec<char> = (' '..='~').collect();
        let mut hosts: Vec<String> = printable.iter().map(char::to_string).collect();
        for a in &printable {
            for b in &printable {
                hosts.push(format!("{a}{b}"));
            }
        }
        for host in hosts {
            assert!(
                ImageRef::for_registry(&host, "x", "1").is_err(),
                "{host:?} is accepted as a registry host"
            );
        }
    }

    #[test]
    fn with_tag_replaces_the_tag_and_drops_the_digest() {
        let pinned =
            ImageRef::parse(&format!("localhost:5000/myapp:1@sha256:{HEX64}")).expect("valid");
        let retagged = pinned.with_tag("0722").expect("valid tag");
        assert_eq!(retagged.to_string(), "localhost:5000/myapp:0722");
        assert_eq!(retagged.digest(), None);
        assert!(matches!(
            pinned.with_tag(""),
            Err(ReferenceError::InvalidTag { .. })
        ));
        assert!(matches!(
            pinned.with_tag("a:b"),
            Err(ReferenceError::InvalidTag { .. })
        ));
        assert!(matches!(
            pinned.with_tag(&"t".repeat(129)),
            Err(ReferenceError::TagTooLong { length: 129, .. })
        ));
    }

    #[test]
    fn messages_and_hints_name_the_problem() {
        let error = ImageRef::parse("MyApp").expect_err("uppercase");
        assert_eq!(
            error.hint(),
            "repository names must be lowercase: try `myapp`"
        );
        assert!(error.to_string().contains("must be lowercase"), "{error}");
        let error = ImageRef::parse("MyOrg/app:1").expect_err("uppercase");
        assert_eq!(
            error.hint(),
            "repository names must be lowercase: try `myorg/app`"
        );

        let error = ImageRef::parse("myapp:tag:extra").expect_err("two tags");
        assert_eq!(
            error.to_string(),
            "invalid tag `tag:extra` in `myapp:tag:extra`: a reference has at most one `:tag`, \
             and a tag cannot contain `:`"
        );
        let error = ImageRef::parse(" myapp").expect_err("whitespace");
        assert_eq!(
            error.hint(),
            "remove the surrounding whitespace: try `myapp`"
        );
        let error = ImageRef::parse("myapp\n").expect_err("newline");
        assert!(error.to_string().contains(r#""myapp\n""#), "{error}");

        let error =
            ImageRef::for_registry("https://harbor.example.com", "myapp", "1").expect_err("scheme");
        assert_eq!(error.hint(), "drop the scheme: try `harbor.example.com`");
        let error = ImageRef::for_registry("harbor", "myapp", "1").expect_err("bare word");
        assert!(error.hint().contains("`harbor:5000`"), "{}", error.hint());
        let error = ImageRef::with_tag(&ImageRef::parse("x").expect("valid"), "bad tag")
            .expect_err("space");
        assert!(
            error.to_string().starts_with("invalid tag `bad tag`: "),
            "{error}"
        );
        let error = ImageRef::parse(&format!("x@sha256:{}", HEX64.to_uppercase()))
            .expect_err("uppercase hex");
        assert!(error.to_string().contains("must be lowercase"), "{error}");
    }

    #[test]
    fn deserialising_goes_through_parse() {
        let image: ImageRef = serde_json::from_str("\"myapp:0722\"").expect("valid");
        assert_eq!(image.to_string(), "docker.io/library/myapp:0722");
        let error = serde_json::from_str::<ImageRef>("\"MyApp\"").expect_err("uppercase");
        assert!(error.to_string().contains("must be lowercase"), "{error}");
        assert!(serde_json::from_str::<ImageRef>("\" myapp\"").is_err());
        assert!(serde_json::from_str::<ImageRef>("42").is_err());
    }

    #[test]
    fn schema_is_a_string() {
        let schema = schemars::schema_for!(ImageRef);
        assert_eq!(schema.get("type"), Some(&serde_json::json!("string")));
    }

    #[test]
    fn a_reference_inside_a_registry_has_no_host_and_checks_each_part() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let tagged = ImageRef::parse_in_registry("ci/myapp:0722").expect("valid");
        assert_eq!(tagged.repository, "ci/myapp");
        assert_eq!(tagged.tag.as_deref(), Some("0722"));
        assert_eq!(tagged.reference(), "0722");
        assert_eq!(
            tagged.at("r.example.com:5000"),
            "r.example.com:5000/ci/myapp:0722"
        );

        let pinned = ImageRef::parse_in_registry(&format!("ci/myapp@{digest}")).expect("valid");
        assert_eq!(pinned.tag, None);
        assert_eq!(pinned.reference(), digest);
        assert_eq!(pinned.at("h"), format!("h/ci/myapp@{digest}"));

        let bare = ImageRef::parse_in_registry("myapp").expect("valid");
        assert_eq!(bare.reference(), "latest");
        // A first component with a dot is a path component here, not a host.
        let dotted = ImageRef::parse_in_registry("ci.team/app:1").expect("valid");
        assert_eq!(dotted.repository, "ci.team/app");

        for bad in [
            "",
            "CI/app:1",
            "ci/app:",
            "ci/app:-x",
            "ci//app:1",
            "/ci/app",
            "ci/app@sha256:abc",
            "ci/app:1 ",
            "localhost:5000/ci/app:1",
        ] {
            assert!(
                ImageRef::parse_in_registry(bad).is_err(),
                "{bad:?} must be refused"
            );
        }
    }
}
