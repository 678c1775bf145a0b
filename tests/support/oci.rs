//! Building images directly in a registry over its HTTP API (no daemon, no code under test):
//! blobs, image manifests and indexes, as the copy tests need them as sources.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::StackEnv;
use crate::fleet::{basic_auth, bearer_auth};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer (the registry does not look inside).
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The `sha256:` digest of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// One repository of a registry, with a ready `Authorization` header value.
#[derive(Debug, Clone)]
pub struct RawRepo {
    http: reqwest::Client,
    base: String,
    repository: String,
    auth: String,
}

impl RawRepo {
    /// `base` like `http://127.0.0.1:5001`; `auth` a full header value (Basic or Bearer).
    pub fn new(base: &str, repository: &str, auth: String) -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(std::time::Duration::from_secs(300))
                .build()?,
            base: base.to_owned(),
            repository: repository.to_owned(),
            auth,
        })
    }

    /// The repository name.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Uploads `data` as a blob in one request; returns its digest.
    pub async fn push_blob(&self, data: Vec<u8>) -> Result<String> {
        let digest = sha256(&data);
        let location = self.open_upload().await?;
        let response = self
            .http
            .put(&location)
            .query(&[("digest", digest.as_str())])
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/octet-stream")
            .body(data)
            .send()
            .await?;
        ensure!(
            response.status().as_u16() == 201,
            "blob PUT answered {}",
            response.status()
        );
        Ok(digest)
    }

    /// Uploads the bytes of `chunks` as one blob without holding them: a streamed `PATCH`
    /// hashing on the way, then the closing `PUT ?digest=`. Returns digest and size.
    pub async fn push_blob_stream<S>(&self, chunks: S) -> Result<(String, u64)>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let location = self.open_upload().await?;
        let hasher = Arc::new(Mutex::new((Sha256::new(), 0u64)));
        let seen = hasher.clone();
        let body = chunks.map(move |chunk| {
            let mut h = seen.lock().unwrap_or_else(PoisonError::into_inner);
            h.0.update(&chunk);
            h.1 += chunk.len() as u64;
            Ok::<_, std::io::Error>(chunk)
        });
        let response = self
            .http
            .patch(&location)
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await?;
        ensure!(
            response.status().as_u16() == 202,
            "blob PATCH answered {}",
            response.status()
        );
        let location = self.location(&response)?;
        let (digest, size) = {
            let mut h = hasher.lock().unwrap_or_else(PoisonError::into_inner);
            let state = std::mem::take(&mut h.0);
            (format!("sha256:{:x}", state.finalize()), h.1)
        };
        let response = self
            .http
            .put(&location)
            .query(&[("digest", digest.as_str())])
            .header("Authorization", &self.auth)
            .send()
            .await?;
        ensure!(
            response.status().as_u16() == 201,
            "blob PUT answered {}",
            response.status()
        );
        Ok((digest, size))
    }

    /// Puts a manifest under `reference`; returns the digest of its bytes.
    pub async fn push_manifest(
        &self,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String> {
        let response = self
            .http
            .put(format!(
                "{}/v2/{}/manifests/{reference}",
                self.base, self.repository
            ))
            .header("Authorization", &self.auth)
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await?;
        let status = response.status();
        if status.as_u16() != 201 {
            let text = response.text().await.unwrap_or_default();
            bail!("manifest PUT answered {status}: {text}");
        }
        Ok(sha256(body))
    }

    /// The manifest under `reference`: media type and bytes, or None on 404.
    pub async fn manifest(&self, reference: &str) -> Result<Option<(String, Vec<u8>)>> {
        let response = self
            .http
            .get(format!(
                "{}/v2/{}/manifests/{reference}",
                self.base, self.repository
            ))
            .header("Authorization", &self.auth)
            .header(
                "Accept",
                format!(
                    "{OCI_MANIFEST}, {OCI_INDEX}, \
                     application/vnd.docker.distribution.manifest.v2+json, \
                     application/vnd.docker.distribution.manifest.list.v2+json"
                ),
            )
            .send()
            .await?;
        match response.status().as_u16() {
            404 => Ok(None),
            200 => {
                let media_type = response
                    .headers()
                    .get("Content-Type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                Ok(Some((media_type, response.bytes().await?.to_vec())))
            }
            other => bail!("manifest GET answered {other}"),
        }
    }

    /// Whether the repository has blob `digest`.
    pub async fn has_blob(&self, digest: &str) -> Result<bool> {
        let response = self
            .http
            .head(format!(
                "{}/v2/{}/blobs/{digest}",
                self.base, self.repository
            ))
            .header("Authorization", &self.auth)
            .send()
            .await?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            other => bail!("blob HEAD answered {other}"),
        }
    }

    /// Pushes a single-platform image of one layer (`layer` bytes) for `architecture`; returns
    /// the manifest's bytes and digest (pushed by digest, and under `tag` when given).
    pub async fn push_image(
        &self,
        architecture: &str,
        layer: Vec<u8>,
        tag: Option<&str>,
    ) -> Result<(Vec<u8>, String)> {
        let layer_size = layer.len();
        let layer_digest = self.push_blob(layer).await?;
        let config = serde_json::to_vec(&json!({
            "architecture": architecture,
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
            "config": {}
        }))?;
        let config_size = config.len();
        let config_digest = self.push_blob(config).await?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size },
            "layers": [ { "mediaType": OCI_LAYER, "digest": layer_digest, "size": layer_size } ]
        }))?;
        let digest = sha256(&manifest);
        self.push_manifest(&digest, OCI_MANIFEST, &manifest).await?;
        if let Some(tag) = tag {
            self.push_manifest(tag, OCI_MANIFEST, &manifest).await?;
        }
        Ok((manifest, digest))
    }

    async fn open_upload(&self) -> Result<String> {
        let response = self
            .http
            .post(format!(
                "{}/v2/{}/blobs/uploads/",
                self.base, self.repository
            ))
            .header("Authorization", &self.auth)
            .send()
            .await?;
        ensure!(
            response.status().as_u16() == 202,
            "upload POST answered {}",
            response.status()
        );
        self.location(&response)
    }

    fn location(&self, response: &reqwest::Response) -> Result<String> {
        let location = response
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .context("no Location")?;
        Ok(if location.starts_with("http") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base)
        })
    }
}

/// Raw API access to `repository` of the stack's basic (htpasswd) registry, as its user.
pub fn basic_repo(env: &StackEnv, repository: &str) -> Result<RawRepo> {
    let user = env.get("PUSHFLEET_BASIC_USER")?;
    let password = env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?;
    let base = format!("http://{}", env.get("PUSHFLEET_BASIC_REGISTRY")?);
    RawRepo::new(&base, repository, basic_auth(&user, &password))
}

/// Raw API access to `repository` of the stack's token registry, as the pusher (pull and
/// push, in its namespace).
pub async fn token_repo(env: &StackEnv, repository: &str) -> Result<RawRepo> {
    let user = env.get("PUSHFLEET_TOKEN_PUSHER_USER")?;
    let password = env.read_file_at("PUSHFLEET_TOKEN_PUSHER_PASSWORD_FILE")?;
    let base = format!("http://{}", env.get("PUSHFLEET_TOKEN_REGISTRY")?);
    let auth = bearer_auth(
        env,
        &user,
        &password,
        &format!("repository:{repository}:pull,push"),
    )
    .await?;
    RawRepo::new(&base, repository, auth)
}

/// An OCI index of `(manifest bytes, digest, architecture)` entries.
pub fn index(children: &[(&[u8], &str, &str)]) -> Result<Vec<u8>> {
    let manifests: Vec<Value> = children
        .iter()
        .map(|(body, digest, arch)| {
            json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": body.len(),
                "platform": { "architecture": arch, "os": "linux" }
            })
        })
        .collect();
    Ok(serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests
    }))?)
}

/// `n` MiB of pseudo-random bytes (xorshift from `seed`), generated chunk by chunk: a large
/// layer for [`RawRepo::push_blob_stream`] that is never held whole. One seed gives the same
/// bytes on every run.
pub fn random_chunks(n: usize, seed: u64) -> impl Stream<Item = Bytes> + Send {
    let mut state = seed | 1;
    futures_util::stream::iter((0..n).map(move |_| {
        let mut chunk = Vec::with_capacity(1024 * 1024);
        for _ in 0..(1024 * 1024 / 8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.extend_from_slice(&state.to_le_bytes());
        }
        Bytes::from(chunk)
    }))
}
