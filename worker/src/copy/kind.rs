//! What a manifest read from the source is: an image manifest (config and layers to copy) or
//! an index / manifest list (child manifests to copy first), read with `oci-spec`'s types.
//! Pure, so every refusal is unit-tested.

use std::fmt;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

pub use crate::retag::{DOCKER_MANIFEST_V2 as DOCKER_MANIFEST, OCI_MANIFEST};
use crate::retag::{DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED};

/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const SCHEMA1: [&str; 2] = [DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED];

/// A blob an image manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:...`.
    pub digest: String,
    /// Its size in bytes, as the manifest says.
    pub size: u64,
}

/// What a manifest holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An image manifest: its config, then its layers (foreign layers left out: they live
    /// outside the registry and are not copied by any registry client).
    Image {
        /// The manifest's media type.
        media_type: String,
        /// Config and layers, in manifest order.
        blobs: Vec<BlobRef>,
    },
    /// An index or manifest list.
    Index {
        /// The index's media type.
        media_type: String,
        /// The child manifests, in index order.
        children: Vec<BlobRef>,
    },
}

/// Why a manifest is not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Docker schema 1: its signature names the repository and tag, so a byte-for-byte copy
    /// elsewhere is not a valid manifest.
    SchemaOne,
    /// A media type this engine does not copy (or none at all).
    Unsupported(String),
    /// The body does not read as a manifest of its media type.
    Malformed(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::SchemaOne => f.write_str("a Docker schema 1 manifest"),
            Refusal::Unsupported(t) if t.is_empty() => f.write_str("a manifest without media type"),
            Refusal::Unsupported(t) => write!(f, "media type {t:?} is not copied"),
            Refusal::Malformed(why) => write!(f, "not a well-formed manifest: {why}"),
        }
    }
}

/// The media type the manifest is: the `Content-Type` the registry sent when it names a
/// manifest type, else the body's `mediaType` field, else (schema 1 has neither) the body's
/// `schemaVersion`.
pub fn media_type_of(content_type: &str, body: &[u8]) -> String {
    if [
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
        OCI_MANIFEST,
        OCI_INDEX,
    ]
    .contains(&content_type)
        || SCHEMA1.contains(&content_type)
    {
        return content_type.to_owned();
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        schema_version: Option<u32>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe {
            media_type: Some(t),
            ..
        }) => t,
        Ok(Probe {
            schema_version: Some(1),
            ..
        }) => SCHEMA1[0].to_owned(),
        _ => content_type.to_owned(),
    }
}

/// Reads `body` as a manifest of `media_type` (see [`media_type_of`]).
pub fn classify(media_type: &str, body: &[u8]) -> Result<Kind, Refusal> {
    let malformed = |e: serde_json::Error| Refusal::Malformed(e.to_string());
    match media_type {
        DOCKER_MANIFEST | OCI_MANIFEST => {
            let manifest: ImageManifest = serde_json::from_slice(body).map_err(malformed)?;
            check_schema_version(manifest.schema_version())?;
            check_declared(
                manifest.media_type().as_ref().map(AsRef::as_ref),
                media_type,
            )?;
            let blobs = std::iter::once(manifest.config())
                .chain(manifest.layers().iter().filter(|l| !is_foreign(l)))
                .map(blob_ref)
                .collect();
            Ok(Kind::Image {
                media_type: media_type.to_owned(),
                blobs,
            })
        }
        DOCKER_MANIFEST_LIST | OCI_INDEX => {
            let index: ImageIndex = serde_json::from_slice(body).map_err(malformed)?;
            check_schema_version(index.schema_version())?;
            check_declared(index.media_type().as_ref().map(AsRef::as_ref), media_type)?;
            let mut children = Vec::with_capacity(index.manifests().len());
            for child in index.manifests() {
                let child_type: &str = child.media_type().as_ref();
                if ![DOCKER_MANIFEST, OCI_MANIFEST].contains(&child_type) {
                    return Err(Refusal::Unsupported(format!(
                        "{child_type} (as a child of an index)"
                    )));
                }
                children.push(blob_ref(child));
            }
            Ok(Kind::Index {
                media_type: media_type.to_owned(),
                children,
            })
        }
        t if SCHEMA1.contains(&t) => Err(Refusal::SchemaOne),
        other => Err(Refusal::Unsupported(other.to_owned())),
    }
}

fn check_schema_version(version: u32) -> Result<(), Refusal> {
    match version {
        2 => Ok(()),
        1 => Err(Refusal::SchemaOne),
        v => Err(Refusal::Malformed(format!("schemaVersion {v}"))),
    }
}

/// A `mediaType` field in the body must agree with the type the manifest is stored as.
fn check_declared(declared: Option<&str>, media_type: &str) -> Result<(), Refusal> {
    match declared {
        Some(d) if d != media_type => Err(Refusal::Malformed(format!(
            "the body says mediaType {d:?}, the registry {media_type:?}"
        ))),
        _ => Ok(()),
    }
}

/// Foreign (non-distributable) layers are fetched by clients from their `urls`, never pushed.
fn is_foreign(layer: &Descriptor) -> bool {
    let t: &str = layer.media_type().as_ref();
    t.contains(".foreign.") || t.contains(".nondistributable.")
}

fn blob_ref(d: &Descriptor) -> BlobRef {
    BlobRef {
        digest: d.digest().to_string(),
        size: d.size(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn image(media_type: &str, layers: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":10}},"layers":[{layers}]}}"#
        )
    }

    #[test]
    fn image_manifests_list_config_then_layers_without_foreign_ones() {
        let layers = format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":20}},
               {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D3}","size":30,"urls":["https://example.com/x"]}}"#
        );
        for t in [OCI_MANIFEST, DOCKER_MANIFEST] {
            let body = image(t, &layers);
            let kind = classify(t, body.as_bytes()).expect("an image");
            let Kind::Image { blobs, media_type } = kind else {
                panic!("not an image: {kind:?}");
            };
            assert_eq!(media_type, t);
            let digests: Vec<_> = blobs.iter().map(|b| (b.digest.as_str(), b.size)).collect();
            assert_eq!(digests, [(D1, 10), (D2, 20)]);
        }
    }

    #[test]
    fn indexes_list_their_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":5,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":6,"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#
        );
        let kind = classify(OCI_INDEX, body.as_bytes()).expect("an index");
        assert_eq!(
            kind,
            Kind::Index {
                media_type: OCI_INDEX.into(),
                children: vec![
                    BlobRef {
                        digest: D1.into(),
                        size: 5
                    },
                    BlobRef {
                        digest: D2.into(),
                        size: 6
                    }
                ],
            }
        );
        let nested = body.replace(
            &format!(r#""mediaType":"{OCI_MANIFEST}","digest":"{D2}""#),
            &format!(r#""mediaType":"{OCI_INDEX}","digest":"{D2}""#),
        );
        assert!(matches!(
            classify(OCI_INDEX, nested.as_bytes()),
            Err(Refusal::Unsupported(_))
        ));
    }

    #[test]
    fn schema_one_and_unknown_types_are_refused() {
        let v1 = br#"{"schemaVersion":1,"name":"a/b","tag":"1","fsLayers":[],"signatures":[]}"#;
        let t = media_type_of(
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            v1,
        );
        assert_eq!(classify(&t, v1), Err(Refusal::SchemaOne));
        let t = media_type_of("application/json", v1);
        assert_eq!(classify(&t, v1), Err(Refusal::SchemaOne));
        assert!(matches!(
            classify("application/vnd.cncf.helm.chart", b"{}"),
            Err(Refusal::Unsupported(_))
        ));
        assert!(matches!(
            classify(OCI_MANIFEST, b"not json"),
            Err(Refusal::Malformed(_))
        ));
        // A body that contradicts the Content-Type is not copied under that type.
        let body = image(DOCKER_MANIFEST, "");
        assert!(matches!(
            classify(OCI_MANIFEST, body.as_bytes()),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn media_type_falls_back_to_the_body() {
        let body = image(OCI_MANIFEST, "");
        assert_eq!(media_type_of("text/plain", body.as_bytes()), OCI_MANIFEST);
        assert_eq!(media_type_of(OCI_INDEX, body.as_bytes()), OCI_INDEX);
        assert_eq!(media_type_of("", b"{}"), "");
    }
}
