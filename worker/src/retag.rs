//! Registry-side tags: when may a tag be written by putting the manifest the target
//! repository already holds under it (`PUT /v2/<repo>/manifests/<tag>`, no daemon push)?
//! The decisions here are pure; the pipeline does the I/O.
//!
//! Correctness comes first, so every doubt sends the job to the daemon's push, which is
//! always right, and never to a silent wrong tag:
//!
//! 1. [`held_digest`]: the daemon's `RepoDigests` of the source image must name exactly one
//!    digest for the target repository (the manifest a push of this image there produced).
//!    None, or several different ones, and the job pushes.
//! 2. The registry must serve that digest (`GET` by digest; 404 pushes), and
//!    [`check_manifest`] must accept the answer: its bytes hash to the digest (byte-identical),
//!    its media type is a single-image Docker v2 or OCI manifest (schema 1, manifest lists
//!    and indexes, anything unknown push), its body agrees with that type, and its config
//!    digest is the source image's id (so the manifest is this very image, not just a
//!    manifest the daemon once saw).
//! 3. The exact bytes are put under each tag with that media type, and the registry's
//!    `Docker-Content-Digest` answer must be the digest. A retried or redelivered job first
//!    `HEAD`s each tag: already at the digest is `noop` (its earlier attempt may have written
//!    it); a first delivery skips that request, as the `PUT` of the same bytes is harmless.
//!
//! A multi-tag job whose image the repository does not hold yet pushes its first tag through
//! the daemon and writes the others this way, from the manifest that push produced.
//!
//! Manifests that passed step 2 are kept in a [`ManifestCache`] per registry, repository and
//! digest, so the next job retagging the same image skips the `GET`: a digest names its
//! bytes forever. What the cache cannot know is that the registry lost the manifest (deleted,
//! garbage-collected): a failed `PUT` from a cached manifest drops the entry, and the job
//! reads the manifest again (step 2) before it decides.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

use pushfleet_shared::ImageRef;
use sha2::{Digest, Sha256};

use crate::registry::Manifest;

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 1 (unsigned), never written registry-side.
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker schema 1, signed, never written registry-side.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What the daemon's repo digests say about the target repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldDigest {
    /// No push of this image to the repository is known.
    None,
    /// Exactly this digest.
    One(String),
    /// Several different digests: which one the repository holds is uncertain.
    Several,
}

/// The digest of the manifest the target repository `target_name` (`host/repo`, as
/// [`ImageRef::name`]) holds for this image, from the daemon's `RepoDigests`
/// (`<name>@sha256:...`).
pub fn held_digest(repo_digests: &[String], target_name: &str) -> HeldDigest {
    let mut found: Option<&str> = None;
    for entry in repo_digests {
        let Some((name, digest)) = entry.rsplit_once('@') else {
            continue;
        };
        let same_repository = ImageRef::parse(name)
            .ok()
            .is_some_and(|r| r.name() == target_name);
        if !same_repository {
            continue;
        }
        match found {
            Some(d) if d != digest => return HeldDigest::Several,
            _ => found = Some(digest),
        }
    }
    match found {
        Some(d) => HeldDigest::One(d.to_owned()),
        None => HeldDigest::None,
    }
}

/// How many manifests a [`ManifestCache`] keeps by default.
pub const MANIFEST_CACHE_ENTRIES: usize = 256;
/// The largest manifest a [`ManifestCache`] keeps (single-image manifests are a few KiB).
pub const MANIFEST_CACHE_MAX_BYTES: usize = 64 * 1024;

/// Manifests found usable for registry-side tags, by registry key, repository and digest;
/// the least recently used go first. Shared by all jobs of a worker.
pub struct ManifestCache {
    entries: Mutex<LruCache<(String, String, String), Arc<Manifest>>>,
}

impl fmt::Debug for ManifestCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.entries.lock().map_or(0, |e| e.len());
        f.debug_struct("ManifestCache")
            .field("entries", &len)
            .finish()
    }
}

impl Default for ManifestCache {
    fn default() -> Self {
        Self::with_capacity(NonZeroUsize::new(MANIFEST_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN))
    }
}

impl ManifestCache {
    /// A cache of at most `capacity` manifests.
    pub fn with_capacity(capacity: NonZeroUsize) -> Self {
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn key(registry: &str, repository: &str, digest: &str) -> (String, String, String) {
        (
            registry.to_owned(),
            repository.to_owned(),
            digest.to_owned(),
        )
    }

    /// The manifest kept for `digest` in `registry`'s `repository`.
    pub fn get(&self, registry: &str, repository: &str, digest: &str) -> Option<Arc<Manifest>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&Self::key(registry, repository, digest))
            .cloned()
    }

    /// Keeps `manifest` (unless it is larger than [`MANIFEST_CACHE_MAX_BYTES`]).
    pub fn put(&self, registry: &str, repository: &str, manifest: Arc<Manifest>) {
        if manifest.body.len() > MANIFEST_CACHE_MAX_BYTES {
            return;
        }
        let key = Self::key(registry, repository, &manifest.digest);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.put(key, manifest);
    }

    /// Drops what is kept for `digest` in `registry`'s `repository`.
    pub fn forget(&self, registry: &str, repository: &str, digest: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.pop(&Self::key(registry, repository, digest));
    }
}

/// Why a manifest is not written registry-side (the job pushes instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsure {
    /// The bytes do not hash to the digest they were asked by.
    BytesDiffer {
        /// `sha256:` of the bytes received.
        computed: String,
    },
    /// A Docker schema 1 manifest: its signature names the repository and tag, so it cannot
    /// be copied to another tag byte for byte.
    SchemaOne,
    /// A manifest list or image index: not the single image the daemon has.
    Index(String),
    /// Any other media type (or none).
    UnknownMediaType(String),
    /// The body is not a manifest of its media type (unreadable, `schemaVersion` not 2, or a
    /// `mediaType` field that contradicts the `Content-Type`).
    Malformed(String),
    /// The manifest describes another image than the source (its config digest differs from
    /// the image id).
    OtherImage {
        /// The manifest's config digest.
        config: String,
    },
}

impl fmt::Display for Unsure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsure::BytesDiffer { computed } => {
                write!(f, "the manifest's bytes hash to {computed}")
            }
            Unsure::SchemaOne => f.write_str("a schema 1 manifest"),
            Unsure::Index(t) => write!(f, "a manifest list or index ({t})"),
            Unsure::UnknownMediaType(t) if t.is_empty() => f.write_str("no media type"),
            Unsure::UnknownMediaType(t) => write!(f, "media type {t:?} is not handled"),
            Unsure::Malformed(why) => write!(f, "not a well-formed manifest: {why}"),
            Unsure::OtherImage { config } => {
                write!(f, "the manifest's config {config} is not the source image")
            }
        }
    }
}

/// Whether `manifest` (as served for its digest) may be put under other tags as the image
/// whose id is `image_id`; see the module documentation.
pub fn check_manifest(manifest: &Manifest, image_id: &str) -> Result<(), Unsure> {
    let computed = format!("sha256:{:x}", Sha256::digest(&manifest.body));
    if computed != manifest.digest {
        return Err(Unsure::BytesDiffer { computed });
    }
    let media_type = manifest.media_type.as_str();
    match media_type {
        DOCKER_MANIFEST_V2 | OCI_MANIFEST => {}
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => return Err(Unsure::SchemaOne),
        "application/vnd.docker.distribution.manifest.list.v2+json"
        | "application/vnd.oci.image.index.v1+json" => {
            return Err(Unsure::Index(media_type.to_owned()));
        }
        other => return Err(Unsure::UnknownMediaType(other.to_owned())),
    }

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        schema_version: u32,
        #[serde(default)]
        media_type: Option<String>,
        config: Descriptor,
    }
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
    }
    let body: Body = serde_json::from_slice(&manifest.body).map_err(|e| {
        Unsure::Malformed(format!(
            "line {}, column {}: {}",
            e.line(),
            e.column(),
            e.classify_name()
        ))
    })?;
    if body.schema_version != 2 {
        return Err(Unsure::Malformed(format!(
            "schemaVersion {}",
            body.schema_version
        )));
    }
    match body.media_type.as_deref() {
        Some(declared) if declared != media_type => {
            return Err(Unsure::Malformed(format!(
                "the body says mediaType {declared:?}, the registry {media_type:?}"
            )));
        }
        // Docker v2 manifests always carry their type; OCI manifests may leave it out.
        None if media_type == DOCKER_MANIFEST_V2 => {
            return Err(Unsure::Malformed(
                "no mediaType in a Docker v2 manifest".to_owned(),
            ));
        }
        _ => {}
    }
    if body.config.digest != image_id {
        return Err(Unsure::OtherImage {
            config: body.config.digest,
        });
    }
    Ok(())
}

/// A short name of a serde_json error's category, without the input.
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "missing or mistyped field",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn manifest(media_type: &str, body: &str) -> Manifest {
        Manifest {
            digest: format!("sha256:{:x}", Sha256::digest(body.as_bytes())),
            media_type: media_type.to_owned(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn v2_body(media_type: &str, config: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"{config}"}},"layers":[]}}"#
        )
    }

    #[test]
    fn held_digest_reads_only_the_target_repository() {
        let a = "sha256:aaaa";
        let b = "sha256:bbbb";
        let digests = vec![
            format!("127.0.0.1:5001/production/app@{a}"),
            format!("127.0.0.1:5002/team-a/app@{b}"),
            "garbage-without-at".to_owned(),
        ];
        assert_eq!(
            held_digest(&digests, "127.0.0.1:5001/production/app"),
            HeldDigest::One(a.to_owned())
        );
        assert_eq!(
            held_digest(&digests, "127.0.0.1:5002/team-a/app"),
            HeldDigest::One(b.to_owned())
        );
        assert_eq!(
            held_digest(&digests, "127.0.0.1:5001/production/other"),
            HeldDigest::None
        );
        assert_eq!(held_digest(&[], "x/y"), HeldDigest::None);
        // The same digest twice is one; two different ones are uncertain.
        let twice = vec![
            format!("127.0.0.1:5001/production/app@{a}"),
            format!("127.0.0.1:5001/production/app@{a}"),
        ];
        assert_eq!(
            held_digest(&twice, "127.0.0.1:5001/production/app"),
            HeldDigest::One(a.to_owned())
        );
        let two = vec![
            format!("127.0.0.1:5001/production/app@{a}"),
            format!("127.0.0.1:5001/production/app@{b}"),
        ];
        assert_eq!(
            held_digest(&two, "127.0.0.1:5001/production/app"),
            HeldDigest::Several
        );
    }

    #[test]
    fn docker_v2_and_oci_manifests_of_the_image_are_accepted() {
        let m = manifest(DOCKER_MANIFEST_V2, &v2_body(DOCKER_MANIFEST_V2, IMAGE));
        assert_eq!(check_manifest(&m, IMAGE), Ok(()));
        let m = manifest(OCI_MANIFEST, &v2_body(OCI_MANIFEST, IMAGE));
        assert_eq!(check_manifest(&m, IMAGE), Ok(()));
        // OCI without a mediaType field is fine.
        let oci = format!(r#"{{"schemaVersion":2,"config":{{"digest":"{IMAGE}"}},"layers":[]}}"#);
        assert_eq!(check_manifest(&manifest(OCI_MANIFEST, &oci), IMAGE), Ok(()));
    }

    #[test]
    fn schema_one_never_takes_the_registry_side_path() {
        let body = r#"{"schemaVersion":1,"name":"production/app","tag":"1","fsLayers":[],"signatures":[]}"#;
        for media_type in [DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED] {
            assert_eq!(
                check_manifest(&manifest(media_type, body), IMAGE),
                Err(Unsure::SchemaOne)
            );
        }
        // A schema 1 body served under a v2 content type is caught by its schemaVersion.
        let err = check_manifest(&manifest(DOCKER_MANIFEST_V2, body), IMAGE).unwrap_err();
        assert!(matches!(err, Unsure::Malformed(_)), "{err:?}");
    }

    #[test]
    fn indexes_unknown_types_and_other_images_push() {
        let index = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let err = check_manifest(
            &manifest("application/vnd.oci.image.index.v1+json", index),
            IMAGE,
        )
        .unwrap_err();
        assert!(matches!(err, Unsure::Index(_)), "{err:?}");
        let err = check_manifest(
            &manifest(
                "application/vnd.docker.distribution.manifest.list.v2+json",
                index,
            ),
            IMAGE,
        )
        .unwrap_err();
        assert!(matches!(err, Unsure::Index(_)), "{err:?}");
        let err =
            check_manifest(&manifest("", &v2_body(DOCKER_MANIFEST_V2, IMAGE)), IMAGE).unwrap_err();
        assert!(matches!(err, Unsure::UnknownMediaType(_)), "{err:?}");
        assert_eq!(err.to_string(), "no media type");

        let other = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        let m = manifest(DOCKER_MANIFEST_V2, &v2_body(DOCKER_MANIFEST_V2, other));
        assert_eq!(
            check_manifest(&m, IMAGE),
            Err(Unsure::OtherImage {
                config: other.to_owned()
            })
        );
    }

    #[test]
    fn bytes_must_hash_to_the_digest_and_agree_with_the_content_type() {
        let mut m = manifest(DOCKER_MANIFEST_V2, &v2_body(DOCKER_MANIFEST_V2, IMAGE));
        m.body.push(b' ');
        assert!(matches!(
            check_manifest(&m, IMAGE),
            Err(Unsure::BytesDiffer { .. })
        ));
        let m = manifest(OCI_MANIFEST, &v2_body(DOCKER_MANIFEST_V2, IMAGE));
        assert!(matches!(
            check_manifest(&m, IMAGE),
            Err(Unsure::Malformed(_))
        ));
        let m = manifest(DOCKER_MANIFEST_V2, "not json");
        let err = check_manifest(&m, IMAGE).unwrap_err();
        assert!(!err.to_string().contains("not json"), "{err}");
        let no_type = format!(r#"{{"schemaVersion":2,"config":{{"digest":"{IMAGE}"}}}}"#);
        assert!(matches!(
            check_manifest(&manifest(DOCKER_MANIFEST_V2, &no_type), IMAGE),
            Err(Unsure::Malformed(_))
        ));
    }

    #[test]
    fn the_manifest_cache_is_keyed_by_registry_repository_and_digest_and_bounded() {
        let cache = ManifestCache::with_capacity(NonZeroUsize::new(2).expect("2"));
        let a = Arc::new(manifest(
            DOCKER_MANIFEST_V2,
            &v2_body(DOCKER_MANIFEST_V2, IMAGE),
        ));
        let b = Arc::new(manifest(OCI_MANIFEST, &v2_body(OCI_MANIFEST, IMAGE)));
        cache.put("basic", "production/app", Arc::clone(&a));
        assert_eq!(
            cache.get("basic", "production/app", &a.digest),
            Some(Arc::clone(&a))
        );
        // Another repository or registry holds nothing yet, even for the same digest.
        assert_eq!(cache.get("basic", "production/other", &a.digest), None);
        assert_eq!(cache.get("token", "production/app", &a.digest), None);

        cache.put("basic", "production/other", Arc::clone(&a));
        cache.put("basic", "production/app", Arc::clone(&b));
        // Capacity 2: the least recently used entry went.
        assert_eq!(cache.get("basic", "production/app", &a.digest), None);
        assert!(cache.get("basic", "production/other", &a.digest).is_some());
        assert!(cache.get("basic", "production/app", &b.digest).is_some());

        cache.forget("basic", "production/app", &b.digest);
        assert_eq!(cache.get("basic", "production/app", &b.digest), None);

        let big = Arc::new(Manifest {
            digest: "sha256:big".to_owned(),
            media_type: OCI_MANIFEST.to_owned(),
            body: vec![b' '; MANIFEST_CACHE_MAX_BYTES + 1],
        });
        cache.put("basic", "production/app", big);
        assert_eq!(cache.get("basic", "production/app", "sha256:big"), None);
    }
}
