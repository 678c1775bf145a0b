//! The workloads: what each job pushes, the images made for it in the daemon before the timed
//! part, and their removal afterwards.
//!
//! - **W1 retag**: one small image (a one-file layer of a few bytes), pushed under a new tag
//!   per job into one repository. The registry has every blob after the warm-up push, so a
//!   job's push is a manifest upload: what a retag costs.
//! - **W2 fresh**: a new image per job, each with one 1 MiB layer of random bytes (nothing to
//!   deduplicate, nothing to compress), all made before the timed part.
//! - **W3 five tags**: the small image of W1 pushed under five new tags by one job.
//!
//! Every run gets its own repository (`bench/<run>`) and its own images
//! (`pushfleet-bench-<run>:<tag>`), removed with every tag they got when the run ends.

use std::fmt;

use anyhow::{Context, Result};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};

/// The layer size of W2's images.
pub(crate) const FRESH_LAYER_BYTES: usize = 1024 * 1024;

/// How many images W2 creates at once before a run.
const CREATE_PARALLELISM: usize = 4;

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub(crate) enum Workload {
    /// W1: one small image under a new tag per job.
    #[value(name = "w1")]
    Retag,
    /// W2: a new 1 MiB random layer per job.
    #[value(name = "w2")]
    Fresh,
    /// W3: one job, five new tags of the small image.
    #[value(name = "w3")]
    FiveTags,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Workload {
    /// The name in tables.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Workload::Retag => "W1 retag",
            Workload::Fresh => "W2 fresh 1 MiB",
            Workload::FiveTags => "W3 5 tags",
        }
    }

    /// A short id for repository and image names.
    pub(crate) fn id(self) -> &'static str {
        match self {
            Workload::Retag => "w1",
            Workload::Fresh => "w2",
            Workload::FiveTags => "w3",
        }
    }

    /// The jobs of one run at concurrency `c` by default: `base × √c`, so each run takes a few
    /// seconds whatever the concurrency, and every parallel slot runs several jobs.
    /// `quick` is the smoke run's smaller base; `scale` multiplies it.
    pub(crate) fn default_jobs(self, concurrency: u16, quick: bool, scale: f64) -> usize {
        let base = match (self, quick) {
            (Workload::Retag, false) => 80.0,
            (Workload::Fresh, false) => 30.0,
            (Workload::FiveTags, false) => 24.0,
            (Workload::Retag, true) => 8.0,
            (Workload::Fresh, true) => 4.0,
            (Workload::FiveTags, true) => 3.0,
        };
        let jobs = (base * scale * f64::from(concurrency).sqrt()).round();
        // At least one job per parallel slot.
        (jobs as usize).max(usize::from(concurrency)).max(1)
    }

    /// The target tags of job `index` (`j<index>`, or `j<index>-a` to `-e` for W3).
    pub(crate) fn tags(self, index: usize) -> Vec<String> {
        self.tags_named(&format!("j{index}"))
    }

    /// The target tags of the warm-up job (`warmup`, or `warmup-a` to `-e` for W3).
    pub(crate) fn warmup_tags(self) -> Vec<String> {
        self.tags_named("warmup")
    }

    fn tags_named(self, stem: &str) -> Vec<String> {
        match self {
            Workload::FiveTags => ["a", "b", "c", "d", "e"]
                .iter()
                .map(|s| format!("{stem}-{s}"))
                .collect(),
            Workload::Retag | Workload::Fresh => vec![stem.to_owned()],
        }
    }
}

/// The images of one run, made in the daemon.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// The registry repository of the run (`bench/<run>`).
    pub(crate) repository: String,
    /// The source reference of each job (Docker's familiar name with a tag).
    pub(crate) sources: Vec<String>,
    /// The warm-up job's source (pushed once before the timed part).
    pub(crate) warmup_source: String,
    /// Every image id made, to remove afterwards.
    pub(crate) image_ids: Vec<String>,
}

impl Prepared {
    /// Job `index`'s source.
    pub(crate) fn source(&self, index: usize) -> &str {
        self.sources
            .get(index)
            .map_or(self.warmup_source.as_str(), String::as_str)
    }
}

/// Makes the images of a run named `run` with `jobs` jobs of `workload`.
pub(crate) async fn prepare(
    docker: &Docker,
    workload: Workload,
    run: &str,
    jobs: usize,
) -> Result<Prepared> {
    let repository = format!("bench/{run}");
    let image = format!("pushfleet-bench-{run}");
    match workload {
        Workload::Retag | Workload::FiveTags => {
            let source = format!("{image}:src");
            let content = format!("pushfleet bench {run} {}\n", uuid::Uuid::new_v4());
            let id = import_one_file(docker, &source, "bench.txt", content.into_bytes()).await?;
            Ok(Prepared {
                repository,
                sources: vec![source.clone(); jobs],
                warmup_source: source,
                image_ids: vec![id],
            })
        }
        Workload::Fresh => {
            // Job i's image is `:f<i>`; the warm-up's is `:f<jobs>`.
            let references: Vec<String> = (0..=jobs).map(|i| format!("{image}:f{i}")).collect();
            let made: Vec<Result<String>> = futures_util::stream::iter(references.iter())
                .map(|reference| async move {
                    let content = random_bytes(FRESH_LAYER_BYTES);
                    import_one_file(docker, reference, "layer.bin", content).await
                })
                .buffered(CREATE_PARALLELISM)
                .collect()
                .await;
            let mut image_ids = Vec::with_capacity(made.len());
            let mut first_error = None;
            for result in made {
                match result {
                    Ok(id) => image_ids.push(id),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            let mut references = references;
            let warmup_source = references.pop().unwrap_or_default();
            let prepared = Prepared {
                repository,
                sources: references,
                warmup_source,
                image_ids,
            };
            if let Some(e) = first_error {
                remove_images(docker, &prepared.image_ids).await;
                return Err(e.context("making W2's images"));
            }
            Ok(prepared)
        }
    }
}

/// `n` pseudo-random bytes (xorshift64*, seeded from a fresh UUID): incompressible and
/// different for every image.
fn random_bytes(n: usize) -> Vec<u8> {
    let seed = uuid::Uuid::new_v4().as_u128();
    let mut state = (seed as u64 ^ (seed >> 64) as u64) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Imports a one-layer image holding one file (`docker import` of a tarball) as `reference`
/// (`name:tag`) and returns its id.
async fn import_one_file(
    docker: &Docker,
    reference: &str,
    file_name: &str,
    content: Vec<u8>,
) -> Result<String> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, file_name, content.as_slice())?;
    let tarball = builder.into_inner()?;
    let (repo, tag) = reference
        .rsplit_once(':')
        .with_context(|| format!("{reference} has no tag"))?;
    let options = bollard::query_parameters::CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.to_owned()),
        tag: Some(tag.to_owned()),
        ..Default::default()
    };
    docker
        .create_image(
            Some(options),
            Some(bollard::body_full(bytes::Bytes::from(tarball))),
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .with_context(|| format!("importing {reference}"))?;
    let inspect = docker
        .inspect_image(reference)
        .await
        .with_context(|| format!("inspecting {reference}"))?;
    inspect
        .id
        .with_context(|| format!("{reference} has no image id"))
}

/// Removes images by id with every tag they got (best effort: a failure is printed).
pub(crate) async fn remove_images(docker: &Docker, ids: &[String]) {
    for id in ids {
        let options = bollard::query_parameters::RemoveImageOptions {
            force: true,
            noprune: false,
            ..Default::default()
        };
        match docker.remove_image(id, Some(options), None).await {
            Ok(_)
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => eprintln!("warning: could not remove image {id}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_counts_grow_with_concurrency() {
        assert_eq!(Workload::Retag.default_jobs(1, false, 1.0), 80);
        assert_eq!(Workload::Retag.default_jobs(4, false, 1.0), 160);
        assert_eq!(Workload::Retag.default_jobs(16, false, 1.0), 320);
        assert_eq!(Workload::Fresh.default_jobs(4, false, 0.5), 30);
        assert_eq!(Workload::FiveTags.default_jobs(16, true, 1.0), 16);
        assert_eq!(Workload::Fresh.default_jobs(1, true, 0.01), 1);
    }

    #[test]
    fn tags_per_job() {
        assert_eq!(Workload::Retag.tags(3), ["j3"]);
        assert_eq!(Workload::FiveTags.tags(0).len(), 5);
        assert_eq!(Workload::FiveTags.tags(2)[4], "j2-e");
        assert_eq!(Workload::Retag.warmup_tags(), ["warmup"]);
    }

    #[test]
    fn random_layers_differ() {
        let a = random_bytes(1000);
        let b = random_bytes(1000);
        assert_eq!(a.len(), 1000);
        assert_ne!(a, b);
    }
}
