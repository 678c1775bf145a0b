//! The registry-to-registry copy engine (`pushfleet_worker::copy`) against the stack's real
//! registries. Source images are built directly over the registry API by the test
//! (`pushfleet_tests::oci`), never by the code under test.
//!
//! - a multi-arch OCI index (two platform manifests) in the token registry, copied to the
//!   basic registry: the index digest and both children are identical and fetchable;
//! - a copy inside one registry mounts every blob: the registry's access log shows the
//!   mounts and not one blob upload into the target repository (basic registry, and the
//!   token registry, where the mount needs a token for both repositories);
//! - a mount the registry declines (202) leaves an upload session that takes the blob; bytes
//!   that do not match the digest are `blob_upload_invalid`;
//! - a missing source (tag, repository) is `source_image_missing`; a target the account may
//!   only read is `registry_insufficient_scope`, before anything is written.
//!
//! A 200 MiB layer streamed in bounded memory is measured on a real worker process, in
//! `registry_source.rs`.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use pushfleet_shared::ErrorCode;
use pushfleet_tests::StackEnv;
use pushfleet_tests::oci::{self, OCI_INDEX, OCI_MANIFEST, RawRepo, basic_repo, token_repo};
use pushfleet_worker::copy::{BlobPath, CopyError, CopyProgress, ProgressFn, Side, copy_image};
use pushfleet_worker::failure::Coded;
use pushfleet_worker::registry::{
    Credentials, Mount, PROBE_DIGEST, RegistryClient, RegistryEndpoint,
};
use reqwest::Url;

/// Every test here finishes within this.
const LIMIT: Duration = Duration::from_secs(240);

fn client(env: &StackEnv, which: &str) -> Result<RegistryClient> {
    let host = env.get(&format!("PUSHFLEET_{which}_REGISTRY"))?;
    Ok(RegistryClient::new(RegistryEndpoint {
        key: which.to_ascii_lowercase(),
        base_url: Url::parse(&format!("http://{host}"))?,
        ca_pem: None,
    })?)
}

fn login(env: &StackEnv, prefix: &str) -> Result<(Credentials, String)> {
    let user = env.get(&format!("PUSHFLEET_{prefix}_USER"))?;
    let password = env.read_file_at(&format!("PUSHFLEET_{prefix}_PASSWORD_FILE"))?;
    Ok((Credentials::new(user, password.clone()), password))
}

fn team_a_repo(env: &StackEnv) -> Result<String> {
    let namespace = env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?;
    Ok(format!("{namespace}/{}", pushfleet_tests::unique("copy")))
}

/// A progress callback that counts reports and keeps the last.
fn recorder() -> (ProgressFn, Arc<AtomicU64>, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let (c, d) = (count.clone(), done.clone());
    let f: ProgressFn = Arc::new(move |p: &CopyProgress| {
        c.fetch_add(1, Ordering::Relaxed);
        d.store(p.bytes_done, Ordering::Relaxed);
    });
    (f, count, done)
}

async fn bounded<F: std::future::Future<Output = Result<()>>>(test: F) -> Result<()> {
    tokio::time::timeout(LIMIT, test)
        .await
        .context("the test did not finish in time")?
}

#[tokio::test]
async fn multi_arch_index_from_token_to_basic_keeps_every_digest() -> Result<()> {
    bounded(async {
        let env = StackEnv::load()?;
        let source_repo = team_a_repo(&env)?;
        let raw_source = token_repo(&env, &source_repo).await?;
        let mut children = Vec::new();
        for arch in ["amd64", "arm64"] {
            let layer = format!("layer of {source_repo} for {arch}").into_bytes();
            let (body, digest) = raw_source.push_image(arch, layer, None).await?;
            children.push((body, digest, arch));
        }
        let refs: Vec<(&[u8], &str, &str)> = children
            .iter()
            .map(|(b, d, a)| (b.as_slice(), d.as_str(), *a))
            .collect();
        let index = oci::index(&refs)?;
        let index_digest = raw_source.push_manifest("multi", OCI_INDEX, &index).await?;

        let source = client(&env, "TOKEN")?;
        let target = client(&env, "BASIC")?;
        // The source is read with a pull-only account.
        let (reader, _) = login(&env, "TOKEN_READER")?;
        let (pusher, _) = login(&env, "BASIC")?;
        let target_repo = format!("copy/{}", pushfleet_tests::unique("multi"));
        let tags = vec!["1.0".to_owned(), "latest".to_owned()];
        let (progress, reports, done) = recorder();
        let report = copy_image(
            Side {
                client: &source,
                repository: &source_repo,
                login: Some(&reader),
            },
            "multi",
            Side {
                client: &target,
                repository: &target_repo,
                login: Some(&pusher),
            },
            &tags,
            progress,
        )
        .await
        .map_err(|e| anyhow::anyhow!("copy failed: {e}"))?;
        println!(
            "multi-arch copy: digest {}, children {:?}, {} blobs ({} streamed, {} mounted, {} skipped), {} of {} bytes streamed, {} progress reports",
            report.digest,
            report.children,
            report.blobs.len(),
            report.count(BlobPath::Streamed),
            report.count(BlobPath::Mounted),
            report.count(BlobPath::Skipped),
            report.bytes_streamed,
            report.bytes_total,
            reports.load(Ordering::Relaxed),
        );

        ensure!(report.digest == index_digest, "index digest changed");
        ensure!(report.media_type == OCI_INDEX, "{}", report.media_type);
        let expected_children: Vec<String> = children.iter().map(|c| c.1.clone()).collect();
        ensure!(report.children == expected_children, "{:?}", report.children);
        // Two configs and two layers, all different, all streamed across registries.
        ensure!(report.count(BlobPath::Streamed) == 4, "{:?}", report.blobs);
        ensure!(report.bytes_streamed == report.bytes_total);
        ensure!(done.load(Ordering::Relaxed) == report.bytes_total);

        let raw_target = basic_repo(&env, &target_repo)?;
        for tag in &tags {
            let (media_type, body) = raw_target
                .manifest(tag)
                .await?
                .with_context(|| format!("no manifest under {tag} in the target"))?;
            ensure!(media_type == OCI_INDEX, "{media_type}");
            ensure!(body == index, "the index under {tag} is not byte-identical");
        }
        for (body, digest, arch) in &children {
            let (media_type, fetched) = raw_target
                .manifest(digest)
                .await?
                .with_context(|| format!("child {arch} ({digest}) missing in the target"))?;
            ensure!(media_type == OCI_MANIFEST, "{media_type}");
            ensure!(&fetched == body, "child {arch} is not byte-identical");
        }
        for blob in &report.blobs {
            ensure!(
                raw_target.has_blob(&blob.digest).await?,
                "blob {} missing",
                blob.digest
            );
        }
        // A second copy finds everything in place.
        let (progress, _, _) = recorder();
        let again = copy_image(
            Side {
                client: &source,
                repository: &source_repo,
                login: Some(&reader),
            },
            &index_digest,
            Side {
                client: &target,
                repository: &target_repo,
                login: Some(&pusher),
            },
            &tags,
            progress,
        )
        .await
        .map_err(|e| anyhow::anyhow!("second copy failed: {e}"))?;
        ensure!(again.count(BlobPath::Skipped) == 4, "{:?}", again.blobs);
        ensure!(again.bytes_streamed == 0);
        Ok(())
    })
    .await
}

/// The lines of the registry log `name` (`registry-basic.log`) written after `offset`.
fn log_since(env: &StackEnv, name: &str, offset: u64) -> Result<String> {
    let path = format!("{}/{name}", env.get("PUSHFLEET_LOGS_DIR")?);
    let mut file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    file.seek(SeekFrom::Start(offset))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

fn log_len(env: &StackEnv, name: &str) -> Result<u64> {
    let path = format!("{}/{name}", env.get("PUSHFLEET_LOGS_DIR")?);
    Ok(std::fs::metadata(&path)?.len())
}

/// Access log request lines (`"METHOD /path HTTP/1.1" STATUS`) for `method` and `prefix`.
fn requests<'a>(log: &'a str, method: &str, prefix: &str) -> Vec<&'a str> {
    let needle = format!("\"{method} {prefix}");
    log.lines()
        .filter(|l| l.contains(&needle) && l.contains(" HTTP/1.1\" "))
        .collect()
}

/// Copies `source_repo:1` to `target_repo:1` inside one registry (`which`, logging to
/// `log_name`) as `login`, and checks from the report and the registry's access log that
/// both blobs were mounted and none uploaded.
async fn copy_inside(
    env: &StackEnv,
    which: &str,
    log_name: &str,
    login: &Credentials,
    raw_source: &RawRepo,
    target_repo: &str,
) -> Result<()> {
    let source_repo = raw_source.repository();
    let layer = format!("layer of {source_repo}").into_bytes();
    let (_, digest) = raw_source.push_image("amd64", layer, Some("1")).await?;

    let registry = client(env, which)?;
    let offset = log_len(env, log_name)?;
    let (progress, _, _) = recorder();
    let report = copy_image(
        Side {
            client: &registry,
            repository: source_repo,
            login: Some(login),
        },
        "1",
        Side {
            client: &registry,
            repository: target_repo,
            login: Some(login),
        },
        &["1".to_owned()],
        progress,
    )
    .await
    .map_err(|e| anyhow::anyhow!("copy failed: {e}"))?;
    ensure!(report.digest == digest);
    ensure!(report.count(BlobPath::Mounted) == 2, "{:?}", report.blobs);
    ensure!(report.bytes_streamed == 0);

    // The manifest PUT is the copy's last write: once its line is in the log, so are the
    // blob requests before it.
    let manifest_put = format!("/v2/{target_repo}/manifests/1 ");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = log_since(env, log_name, offset)?;
        if !requests(&log, "PUT", &manifest_put).is_empty() {
            break log;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the manifest PUT never reached {log_name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let uploads = format!("/v2/{target_repo}/blobs/uploads/");
    let mounts: Vec<&str> = requests(&log, "POST", &uploads)
        .into_iter()
        .filter(|l| l.contains("?mount=") && l.contains("\" 201 "))
        .collect();
    // Blob writes of the image; the preflight's push-right probe (a Basic-auth registry has
    // no token claims to read) completes one upload of the 2-byte `{}` blob, which is not
    // the image's.
    let probe_digest = format!("digest={}", PROBE_DIGEST.replace(':', "%3A"));
    let blob_writes: Vec<&str> = ["PUT", "PATCH"]
        .iter()
        .flat_map(|m| requests(&log, m, &uploads))
        .filter(|l| !l.contains(&probe_digest) && !l.contains(PROBE_DIGEST))
        .collect();
    println!(
        "copy inside the {which} registry: {} mounts (201), {} blob uploads (PUT/PATCH) into {target_repo}",
        mounts.len(),
        blob_writes.len()
    );
    ensure!(mounts.len() == 2, "mount lines: {mounts:#?}");
    ensure!(blob_writes.is_empty(), "blob uploads: {blob_writes:#?}");
    Ok(())
}

#[tokio::test]
async fn a_copy_inside_one_registry_mounts_instead_of_uploading() -> Result<()> {
    bounded(async {
        let env = StackEnv::load()?;
        let source_repo = format!("copy/{}", pushfleet_tests::unique("mount-src"));
        let target_repo = format!("copy/{}", pushfleet_tests::unique("mount-dst"));
        let raw_source = basic_repo(&env, &source_repo)?;
        let (pusher, _) = login(&env, "BASIC")?;
        copy_inside(
            &env,
            "BASIC",
            "registry-basic.log",
            &pusher,
            &raw_source,
            &target_repo,
        )
        .await?;
        let raw_target = basic_repo(&env, &target_repo)?;
        let (_, body) = raw_target.manifest("1").await?.context("no manifest")?;
        let (_, source_body) = raw_source.manifest("1").await?.context("no source")?;
        ensure!(body == source_body, "the manifest is not byte-identical");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_copy_inside_the_token_registry_mounts_with_a_token_for_both_repositories() -> Result<()>
{
    bounded(async {
        let env = StackEnv::load()?;
        let source_repo = team_a_repo(&env)?;
        let target_repo = team_a_repo(&env)?;
        let raw_source = token_repo(&env, &source_repo).await?;
        let (pusher, _) = login(&env, "TOKEN_PUSHER")?;
        copy_inside(
            &env,
            "TOKEN",
            "registry-token.log",
            &pusher,
            &raw_source,
            &target_repo,
        )
        .await?;
        let raw_target = token_repo(&env, &target_repo).await?;
        let (_, body) = raw_target.manifest("1").await?.context("no manifest")?;
        let (_, source_body) = raw_source.manifest("1").await?.context("no source")?;
        ensure!(body == source_body, "the manifest is not byte-identical");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_target_the_account_may_only_read_is_refused_with_a_code() -> Result<()> {
    bounded(async {
        let env = StackEnv::load()?;
        let source_repo = team_a_repo(&env)?;
        let raw_source = token_repo(&env, &source_repo).await?;
        let layer = format!("layer of {source_repo}").into_bytes();
        raw_source.push_image("amd64", layer, Some("1")).await?;
        let source = client(&env, "TOKEN")?;
        let target = client(&env, "TOKEN")?;
        let (reader, reader_password) = login(&env, "TOKEN_READER")?;
        let target_repo = team_a_repo(&env)?;
        let (progress, _, _) = recorder();
        let refused = copy_image(
            Side {
                client: &source,
                repository: &source_repo,
                login: Some(&reader),
            },
            "1",
            Side {
                client: &target,
                repository: &target_repo,
                login: Some(&reader),
            },
            &["1".to_owned()],
            progress,
        )
        .await;
        let err = match refused {
            Ok(r) => bail!("a copy into a read-only target succeeded: {r:?}"),
            Err(e) => e,
        };
        let event = err.to_event_error();
        println!("read-only target: {} ({})", event.message, err.code());
        ensure!(err.code() == ErrorCode::RegistryInsufficientScope, "{err}");
        ensure!(event.message.contains(&target_repo), "{}", event.message);
        ensure!(!event.message.contains(reader_password.as_str()));
        ensure!(!format!("{err:?}").contains(reader_password.as_str()));
        // Nothing was written.
        let raw_target = token_repo(&env, &target_repo).await?;
        ensure!(raw_target.manifest("1").await?.is_none());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_declined_mount_leaves_an_upload_session_and_a_wrong_digest_is_refused() -> Result<()> {
    bounded(async {
        let env = StackEnv::load()?;
        let registry = client(&env, "BASIC")?;
        let (pusher, password) = login(&env, "BASIC")?;
        let repository = format!("copy/{}", pushfleet_tests::unique("session"));
        let data = format!("blob of {repository}").into_bytes();
        let digest = oci::sha256(&data);
        let size = data.len() as u64;
        ensure!(
            !registry
                .blob_exists(&repository, &digest, Some(&pusher))
                .await?
        );

        // No repository holds the blob: the registry answers 202 and the session takes it.
        let from = format!("copy/{}", pushfleet_tests::unique("empty"));
        let mount = registry
            .mount_blob(&repository, &digest, &from, Some(&pusher))
            .await?;
        let Mount::Upload(session) = mount else {
            bail!("a blob no repository holds was mounted: {mount:?}");
        };
        registry
            .finish_upload(session, &digest, size, data.clone().into(), Some(&pusher))
            .await?;
        ensure!(
            registry
                .blob_exists(&repository, &digest, Some(&pusher))
                .await?
        );

        // Bytes that are not the digest: the registry refuses them, as blob_upload_invalid.
        let other = format!("sha256:{}", "0".repeat(64));
        let session = registry.open_upload(&repository, Some(&pusher)).await?;
        let err = match registry
            .finish_upload(session, &other, size, data.into(), Some(&pusher))
            .await
        {
            Ok(()) => bail!("the registry stored bytes under a digest they do not have"),
            Err(e) => e,
        };
        println!("wrong digest: {err} ({})", err.code());
        ensure!(err.code() == ErrorCode::BlobUploadInvalid, "{err}");
        ensure!(!format!("{err} {err:?}").contains(password.as_str()));
        ensure!(
            !registry
                .blob_exists(&repository, &other, Some(&pusher))
                .await?
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_missing_source_is_source_image_missing() -> Result<()> {
    bounded(async {
        let env = StackEnv::load()?;
        let source = client(&env, "TOKEN")?;
        let target = client(&env, "BASIC")?;
        let (reader, reader_password) = login(&env, "TOKEN_READER")?;
        let (pusher, basic_password) = login(&env, "BASIC")?;
        // An existing repository without the tag, and a repository that does not exist.
        let existing = team_a_repo(&env)?;
        token_repo(&env, &existing)
            .await?
            .push_image("amd64", b"present".to_vec(), Some("present"))
            .await?;
        let absent = team_a_repo(&env)?;
        let target_repo = format!("copy/{}", pushfleet_tests::unique("missing"));
        for (repository, reference) in [(existing.as_str(), "absent"), (absent.as_str(), "1.0")] {
            let (progress, _, _) = recorder();
            let result = copy_image(
                Side {
                    client: &source,
                    repository,
                    login: Some(&reader),
                },
                reference,
                Side {
                    client: &target,
                    repository: &target_repo,
                    login: Some(&pusher),
                },
                &["1.0".to_owned()],
                progress,
            )
            .await;
            let err: CopyError = match result {
                Ok(r) => bail!("copying a missing source succeeded: {r:?}"),
                Err(e) => e,
            };
            let event = err.to_event_error();
            println!("missing source: {} ({})", event.message, err.code());
            ensure!(err.code() == ErrorCode::SourceImageMissing, "{err}");
            ensure!(!err.code().retryable(), "{err}");
            ensure!(event.message.contains(repository), "{}", event.message);
            ensure!(event.message.contains(reference), "{}", event.message);
            for secret in [&reader_password, &basic_password] {
                ensure!(!event.message.contains(secret.as_str()));
                ensure!(!format!("{err:?}").contains(secret.as_str()));
            }
        }
        // Nothing was written to the target.
        ensure!(
            basic_repo(&env, &target_repo)?
                .manifest("1.0")
                .await?
                .is_none()
        );
        Ok(())
    })
    .await
}
