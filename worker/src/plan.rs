//! The part of a job decided by the message and the configuration alone: which registry,
//! which exact references, and whether policy allows them. No I/O happens here, so the same
//! function serves the worker (before it touches the daemon or the network) and
//! `pushfleet submit --dry-run` (which touches nothing).

use pushfleet_shared::job::{JobError, JobSource, ValidJob};
use pushfleet_shared::reference::InRegistry;
use pushfleet_shared::{ErrorCode, ImageRef};
use serde::Serialize;

use crate::config::{Catalogue, Registry};
use crate::failure::{Coded, JobFailure};

/// What a job will do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The job's id.
    pub job_id: String,
    /// The catalogue key of the target registry (even when the job named an alias).
    pub registry: String,
    /// The registry's API URL.
    pub registry_url: String,
    /// The source image, its tag always written out: in the daemon, normalised
    /// (`docker.io/library/myapp:latest` for `myapp`); in a source registry, on that
    /// registry's host (`ci.example.com/ci/myapp:0722`).
    pub source: String,
    /// The catalogue key of the registry the image is copied from (`source_registry`); absent
    /// when the source is in the worker's Docker daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_registry: Option<String>,
    /// What a person should know before this runs (e.g. that the source's tag was Docker's
    /// default).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The exact references that will be tagged and pushed.
    pub targets: Vec<String>,
    /// Whether the local target tags are removed afterwards.
    pub remove_local_tag: bool,
    #[serde(skip)]
    target_refs: Vec<ImageRef>,
}

impl Plan {
    /// The target references, parsed.
    pub fn target_refs(&self) -> &[ImageRef] {
        &self.target_refs
    }
}

/// The catalogue entries a plan uses.
#[derive(Debug, Clone, Copy)]
pub struct PlannedRegistries<'c> {
    /// The registry pushed to.
    pub target: &'c Registry,
    /// The registry copied from, with the image in it (`source_registry` jobs).
    pub source: Option<(&'c Registry, &'c InRegistry)>,
}

/// Why a job cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `target.registry` or `source_registry` is not in the catalogue.
    #[error("{field}: registry {name:?} is not in this worker's catalogue (known: {known})")]
    UnknownRegistry {
        /// Which field named it: `target.registry` or `source_registry`.
        field: &'static str,
        /// The name the job gave.
        name: String,
        /// The catalogue's keys and aliases.
        known: String,
    },
    /// The target repository is outside the registry's allowed namespaces.
    #[error(
        "repository {repository:?} is outside the namespaces allowed for registry {registry} ({allowed})"
    )]
    NamespaceNotAllowed {
        /// The catalogue key.
        registry: String,
        /// The repository.
        repository: String,
        /// The allowed namespaces.
        allowed: String,
        /// The references the job would have pushed.
        targets: Vec<String>,
    },
    /// The target is a Docker Hub root repository.
    #[error("{target} is a Docker Hub root repository, which cannot be pushed to")]
    RootRepositoryOnDockerHub {
        /// The catalogue key.
        registry: String,
        /// The target reference.
        target: String,
        /// The references the job would have pushed.
        targets: Vec<String>,
    },
    /// A target reference is invalid.
    #[error(transparent)]
    Job(#[from] JobError),
}

impl PlanError {
    /// The catalogue key of the job's registry, when the job named one of the catalogue.
    pub fn registry_key(&self) -> Option<&str> {
        match self {
            PlanError::NamespaceNotAllowed { registry, .. }
            | PlanError::RootRepositoryOnDockerHub { registry, .. } => Some(registry),
            PlanError::UnknownRegistry { .. } | PlanError::Job(_) => None,
        }
    }

    /// The exact references policy refused, when they were worked out (an unknown registry
    /// has no host to build them on).
    pub fn refused_targets(&self) -> Vec<String> {
        match self {
            PlanError::NamespaceNotAllowed { targets, .. }
            | PlanError::RootRepositoryOnDockerHub { targets, .. } => targets.clone(),
            PlanError::UnknownRegistry { .. } | PlanError::Job(_) => Vec::new(),
        }
    }
}

impl Coded for PlanError {
    fn code(&self) -> ErrorCode {
        match self {
            PlanError::UnknownRegistry { .. } => ErrorCode::UnknownRegistry,
            PlanError::NamespaceNotAllowed { .. } => ErrorCode::NamespaceNotAllowed,
            PlanError::RootRepositoryOnDockerHub { .. } => ErrorCode::RootRepositoryOnDockerHub,
            PlanError::Job(e) => e.code(),
        }
    }

    fn hint(&self) -> String {
        match self {
            PlanError::Job(e) => e.hint(),
            PlanError::RootRepositoryOnDockerHub { target, .. } => {
                let name = target.rsplit('/').next().unwrap_or(target);
                format!("Docker Hub needs a namespace: push to docker.io/<user-or-org>/{name}")
            }
            other => other.code().default_hint().to_owned(),
        }
    }
}

impl From<PlanError> for JobFailure {
    fn from(e: PlanError) -> Self {
        JobFailure::from(&e)
    }
}

/// Plans `job` against `catalogue`: resolves the registry (key or alias), and the source
/// registry of a registry-source job, builds each exact target reference on the registry's
/// host, and applies policy. Never consults a default registry.
pub fn plan<'a>(
    job: &'a ValidJob,
    catalogue: &'a Catalogue,
) -> Result<(Plan, PlannedRegistries<'a>), PlanError> {
    let lookup = |field: &'static str, name: &str| {
        catalogue
            .get(name)
            .ok_or_else(|| PlanError::UnknownRegistry {
                field,
                name: name.to_owned(),
                known: known_names(catalogue),
            })
    };
    let registry = lookup("target.registry", &job.job.target.registry)?;
    let source_registry = match &job.source {
        JobSource::Registry { registry, image } => {
            Some((lookup("source_registry", registry)?, image))
        }
        JobSource::Daemon(_) => None,
    };
    // The 255-character limit of `registry/repository` counts this registry's real host: the
    // job's own validation could not know it.
    let targets = job.targets_at(&registry.host)?;
    let target_names: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let repository = &job.job.target.repository;
    if !registry.allows_repository(repository) {
        return Err(PlanError::NamespaceNotAllowed {
            registry: registry.key.clone(),
            repository: repository.clone(),
            allowed: registry.namespaces.join(", "),
            targets: target_names,
        });
    }
    if let Some(root) = targets.iter().find(|t| t.is_docker_hub_root()) {
        return Err(PlanError::RootRepositoryOnDockerHub {
            registry: registry.key.clone(),
            target: root.to_string(),
            targets: target_names,
        });
    }
    let mut notes = Vec::new();
    let mut untagged = |explicit: &str| {
        notes.push(format!(
            "the source {:?} names no tag: Docker's default `latest` is used ({explicit}); name the tag if another was meant",
            job.job.source
        ));
    };
    let source = match (&job.source, source_registry) {
        (JobSource::Registry { .. }, Some((from, image))) => {
            if image.tag.is_none() && image.digest.is_none() {
                let explicit = format!("{}:latest", image.at(&from.host));
                untagged(&explicit);
                explicit
            } else {
                image.at(&from.host)
            }
        }
        (JobSource::Daemon(image), _) if image.tag().is_none() && image.digest().is_none() => {
            let explicit = format!("{image}:{}", image.tag_or_latest());
            untagged(&explicit);
            explicit
        }
        (source, _) => source.to_string(),
    };
    let plan = Plan {
        job_id: job.job.job_id.clone(),
        registry: registry.key.clone(),
        registry_url: registry.url.to_string(),
        source,
        source_registry: source_registry.map(|(from, _)| from.key.clone()),
        notes,
        targets: target_names,
        remove_local_tag: job.job.options.remove_local_tag,
        target_refs: targets,
    };
    Ok((
        plan,
        PlannedRegistries {
            target: registry,
            source: source_registry,
        },
    ))
}

fn known_names(catalogue: &Catalogue) -> String {
    let mut names: Vec<String> = catalogue
        .iter()
        .flat_map(|r| std::iter::once(r.key.clone()).chain(r.aliases.iter().cloned()))
        .collect();
    names.sort();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use pushfleet_shared::PushJob;
    use pushfleet_shared::reference::{REPOSITORY_MAX_LEN, ReferenceError};

    use super::*;
    use crate::config::load_from_str;

    const SHORT_HOST: &str = "r.example.com";
    const LONG_HOST: &str = "registry-with-a-long-name.build-cluster.internal.example.com:10443";

    fn catalogue() -> Catalogue {
        let toml = format!(
            r#"
[registries.short]
url = "https://{SHORT_HOST}"
anonymous = true
namespaces = ["team-a"]
[registries.long]
url = "https://{LONG_HOST}"
anonymous = true
namespaces = ["team-a"]
"#
        );
        load_from_str(&toml, Some(HashMap::new()))
            .unwrap_or_else(|e| panic!("{e}"))
            .registries
    }

    fn job(registry: &str, repository: &str) -> ValidJob {
        let body = serde_json::json!({
            "version": 1, "job_id": "j-1", "source": "myapp:1",
            "target": { "registry": registry, "repository": repository, "tags": ["1"] }
        });
        PushJob::from_slice(body.to_string().as_bytes()).expect("a valid job")
    }

    #[test]
    fn the_name_length_counts_the_registrys_real_host() {
        let catalogue = catalogue();
        assert_eq!(
            catalogue.get("short").map(|r| r.host.as_str()),
            Some(SHORT_HOST)
        );
        assert_eq!(
            catalogue.get("long").map(|r| r.host.as_str()),
            Some(LONG_HOST)
        );
        // Exactly 255 characters behind the short host. The job's own validation once measured
        // it behind a placeholder host (`registry.invalid`, 16 characters) and refused it.
        let repository = format!("team-a/{}", "a".repeat(255 - SHORT_HOST.len() - 1 - 7));

        let (planned, _) = plan(&job("short", &repository), &catalogue).expect("fits");
        assert_eq!(planned.targets, [format!("{SHORT_HOST}/{repository}:1")]);
        assert_eq!(planned.target_refs()[0].name().len(), 255);

        let err = plan(&job("long", &repository), &catalogue).expect_err("too long");
        assert!(
            matches!(
                &err,
                PlanError::Job(JobError::Reference {
                    field,
                    source: ReferenceError::NameTooLong { name, .. },
                }) if field == "target.repository" && name.starts_with(LONG_HOST)
            ),
            "{err:?}"
        );
        assert_eq!(err.code(), ErrorCode::InvalidReference);
        assert!(err.hint().contains("255"), "{}", err.hint());
    }

    #[test]
    fn a_repository_that_fits_the_long_host_fits_both() {
        let catalogue = catalogue();
        let repository = format!("team-a/{}", "a".repeat(255 - LONG_HOST.len() - 1 - 7));
        for registry in ["short", "long"] {
            assert!(
                plan(&job(registry, &repository), &catalogue).is_ok(),
                "{registry}"
            );
        }
        // One more character: still fine behind the short host only.
        let longer = format!("{repository}a");
        assert!(plan(&job("short", &longer), &catalogue).is_ok());
        assert!(plan(&job("long", &longer), &catalogue).is_err());
        // The bound that needs no host is far above both.
        assert!(longer.len() < REPOSITORY_MAX_LEN);
    }
}
