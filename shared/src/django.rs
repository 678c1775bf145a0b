//! The mapping from the Django pipeline's docker-push step parameters to a v1 [`PushJob`].
//!
//! The Django step carries `image`, `tag`, `registry_id` and `project_id` (plus a
//! `docker_config` that once held credentials), and the step's project supplies the path
//! pushed into (e.g. `production`). The mapping keeps the seeds' semantics, and fixes what they
//! got wrong:
//!
//! - `image` without a tag takes `tag` as the source tag: `myapp` + `0722` -> `myapp:0722`
//!   (never `myapp:latest`). A registry port is not a tag: `localhost:5000/myapp` + `0722` ->
//!   `localhost:5000/myapp:0722`.
//! - `image` that already carries a tag (or digest) keeps it as the source, and `tag` names the
//!   target tag: `myapp:latest` + `0722` pushes the local `myapp:latest` as `...:0722`.
//! - With no `tag` at all, the source's own tag is the target tag (`latest` when it has none,
//!   as in Docker).
//! - The target repository is `<project path>/<last component of the image name>`:
//!   `production` + `myapp` -> `production/myapp`.
//! - `registry_id` becomes `target.registry` as a string (`5` -> `"5"`); the worker's catalogue
//!   lists Django ids as aliases, so the job lands in that registry and no other.
//! - `build_host`, when given (not null, not empty), becomes the job's `pool`: the job goes to
//!   the workers on the build host whose daemon holds the image. It must be a pool name
//!   (lowercase letters, digits, `-`: see [`crate::pool`]); without it the job is in the
//!   default pool.
//! - Nothing is lost: every step parameter but the credentials is echoed under
//!   `metadata.django` (with the project path), beside any caller metadata.
//! - Credentials never travel: a `docker_config` with credential-like keys is refused.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::job::{
    JOB_VERSION, JobError, JobOptions, JobTarget, PushJob, ValidJob, find_credential_key,
};
use crate::reference::{ReferenceError, source_reference};

/// The parameters of a Django docker-push step, as stored on the step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DjangoPushStep {
    /// The local image name, with or without a tag (`myapp`, `myapp:1.2`, `localhost:5000/myapp`).
    pub image: String,
    /// The tag: the source tag when `image` has none, and the target tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Django's registry id (number or string); an alias in the worker's catalogue.
    pub registry_id: Value,
    /// Django's project id, echoed in metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<Value>,
    /// The build host (pool) whose Docker daemon holds the image; null or empty: the default
    /// pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_host: Option<String>,
    /// The old per-step Docker configuration; must not carry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_config: Option<Value>,
    /// Any other step parameter, echoed in metadata.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Why step parameters cannot become a job.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DjangoMappingError {
    /// `image` plus `tag` is not a valid reference.
    #[error("image/tag: {0}")]
    Reference(#[from] ReferenceError),
    /// `registry_id` is neither a non-empty string nor a non-negative integer.
    #[error("registry_id must be a registry id (integer or non-empty string)")]
    RegistryId,
    /// The project path is empty or not a lowercase repository path.
    #[error("project path {0:?} is not a valid repository namespace")]
    ProjectPath(String),
    /// The mapped job does not validate.
    #[error(transparent)]
    Job(#[from] JobError),
}

impl DjangoMappingError {
    /// The stable code a failed event would carry for this error.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            DjangoMappingError::Reference(_) | DjangoMappingError::ProjectPath(_) => {
                crate::ErrorCode::InvalidReference
            }
            DjangoMappingError::RegistryId => crate::ErrorCode::InvalidMessage,
            DjangoMappingError::Job(e) => e.code(),
        }
    }
}

impl DjangoPushStep {
    /// Builds the v1 job for this step pushing into `project_path` (e.g. `production`).
    ///
    /// `metadata` is the caller's own (e.g. `pipeline_run`, `step`); the step parameters are
    /// added under `metadata.django`.
    pub fn to_job(
        &self,
        project_path: &str,
        job_id: &str,
        mut metadata: Map<String, Value>,
    ) -> Result<ValidJob, DjangoMappingError> {
        let tag = self.tag.as_deref().filter(|t| !t.is_empty());
        let source = source_reference(&self.image, tag)?;
        let target_tag = match tag {
            Some(t) => t.to_owned(),
            None => source.tag_or_latest().to_owned(),
        };
        let project = project_path.trim_matches('/');
        if project.is_empty() {
            return Err(DjangoMappingError::ProjectPath(project_path.to_owned()));
        }
        let name = source
            .repository()
            .rsplit('/')
            .next()
            .unwrap_or(source.repository());
        let registry = match &self.registry_id {
            Value::Number(n) if n.is_u64() => n.to_string(),
            Value::String(s) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => return Err(DjangoMappingError::RegistryId),
        };
        if let Some(Value::Object(cfg)) = &self.docker_config
            && let Some(path) = find_credential_key(cfg, "docker_config")
        {
            return Err(JobError::CredentialField { path }.into());
        }
        let mut django = Map::new();
        django.insert("image".into(), self.image.clone().into());
        if let Some(t) = &self.tag {
            django.insert("tag".into(), t.clone().into());
        }
        django.insert("registry_id".into(), self.registry_id.clone());
        if let Some(p) = &self.project_id {
            django.insert("project_id".into(), p.clone());
        }
        django.insert("project_path".into(), project_path.into());
        if let Some(cfg) = &self.docker_config {
            django.insert("docker_config".into(), cfg.clone());
        }
        if let Some(host) = &self.build_host {
            django.insert("build_host".into(), host.clone().into());
        }
        for (k, v) in &self.other {
            django.insert(k.clone(), v.clone());
        }
        metadata.insert("django".into(), Value::Object(django));

        let job = PushJob {
            version: JOB_VERSION,
            job_id: job_id.to_owned(),
            source: source.familiar(),
            source_registry: None,
            pool: self.build_host.clone().filter(|h| !h.is_empty()),
            target: JobTarget {
                registry,
                repository: format!("{project}/{name}"),
                tags: vec![target_tag],
            },
            options: JobOptions::default(),
            metadata,
        };
        job.validate().map_err(|e| match e {
            JobError::Reference { field, .. } if field == "target.repository" => {
                DjangoMappingError::ProjectPath(project_path.to_owned())
            }
            other => other.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(v: Value) -> DjangoPushStep {
        serde_json::from_value(v).expect("step parses")
    }

    fn map(image: &str, tag: Option<&str>) -> Result<ValidJob, DjangoMappingError> {
        let mut v = json!({"image": image, "registry_id": 5, "project_id": 5, "docker_config": {}});
        if let Some(t) = tag {
            v["tag"] = json!(t);
        }
        step(v).to_job("production", "job-1", Map::new())
    }

    #[test]
    fn seed_000_image_without_tag_takes_the_tag() {
        let job = map("myapp", Some("0722")).expect("maps");
        assert_eq!(job.source.to_string(), "docker.io/library/myapp:0722");
        assert_eq!(job.job.source, "myapp:0722");
        assert_eq!(job.job.target.registry, "5");
        assert_eq!(job.job.target.repository, "production/myapp");
        assert_eq!(job.job.target.tags, ["0722"]);
        let targets = job.targets_at("reg.cyfee.com:10443").expect("targets");
        assert_eq!(
            targets[0].to_string(),
            "reg.cyfee.com:10443/production/myapp:0722"
        );
    }

    #[test]
    fn seed_000_registry_port_is_not_a_tag() {
        let job = map("localhost:5000/myapp", Some("0722")).expect("maps");
        assert_eq!(job.source.to_string(), "localhost:5000/myapp:0722");
        assert_eq!(job.job.target.repository, "production/myapp");
    }

    #[test]
    fn an_image_with_a_tag_keeps_it_and_tag_names_the_target() {
        let job = map("myapp:latest", Some("0722")).expect("maps");
        assert_eq!(job.source.to_string(), "docker.io/library/myapp:latest");
        assert_eq!(job.job.target.tags, ["0722"]);
    }

    #[test]
    fn no_tag_at_all_pushes_the_sources_own_tag() {
        assert_eq!(
            map("myapp:1.2", None).expect("maps").job.target.tags,
            ["1.2"]
        );
        assert_eq!(
            map("myapp", None).expect("maps").job.target.tags,
            ["latest"]
        );
        assert_eq!(
            map("myapp", Some("")).expect("maps").job.target.tags,
            ["latest"]
        );
    }

    #[test]
    fn nothing_is_lost_in_metadata() {
        let s = step(json!({
            "image": "myapp", "tag": "0722", "registry_id": 5, "project_id": 5,
            "docker_config": {}, "dockerfile": "Dockerfile"
        }));
        let mut caller = Map::new();
        caller.insert("pipeline_run".into(), json!(812));
        let job = s
            .to_job("production", "run-812-step-129", caller)
            .expect("maps");
        let m = &job.job.metadata;
        assert_eq!(m["pipeline_run"], 812);
        assert_eq!(
            m["django"],
            json!({"image": "myapp", "tag": "0722", "registry_id": 5, "project_id": 5,
                   "project_path": "production", "docker_config": {}, "dockerfile": "Dockerfile"})
        );
    }

    #[test]
    fn the_build_host_names_the_pool() {
        let s =
            step(json!({"image": "myapp", "tag": "1", "registry_id": 5, "build_host": "build-01"}));
        let job = s.to_job("team-a", "j", Map::new()).expect("maps");
        assert_eq!(job.job.pool.as_deref(), Some("build-01"));
        assert_eq!(job.pool.as_str(), "build-01");
        assert_eq!(job.job.metadata["django"]["build_host"], "build-01");
        for absent in [json!(""), Value::Null] {
            let s =
                step(json!({"image": "myapp", "tag": "1", "registry_id": 5, "build_host": absent}));
            let job = s.to_job("team-a", "j", Map::new()).expect("maps");
            assert_eq!(job.job.pool, None);
            assert!(job.pool.is_default());
        }
        let s = step(
            json!({"image": "myapp", "tag": "1", "registry_id": 5, "build_host": "Build.example.com"}),
        );
        let e = s.to_job("team-a", "j", Map::new()).expect_err("refused");
        assert!(
            matches!(e, DjangoMappingError::Job(JobError::InvalidPool(_))),
            "{e}"
        );
        assert_eq!(e.code(), crate::ErrorCode::InvalidMessage);
    }

    #[test]
    fn string_registry_ids_are_kept() {
        let s = step(json!({"image": "myapp", "tag": "1", "registry_id": " harbor "}));
        assert_eq!(
            s.to_job("team-a", "j", Map::new())
                .expect("maps")
                .job
                .target
                .registry,
            "harbor"
        );
    }

    #[test]
    fn bad_parameters_are_refused_with_codes() {
        let e = map("MyApp", Some("0722")).expect_err("uppercase");
        assert_eq!(e.code(), crate::ErrorCode::InvalidReference);
        let e = map("myapp", Some("bad tag")).expect_err("bad tag");
        assert_eq!(e.code(), crate::ErrorCode::InvalidReference);
        let s = step(json!({"image": "myapp", "registry_id": -1}));
        assert_eq!(
            s.to_job("p", "j", Map::new()),
            Err(DjangoMappingError::RegistryId)
        );
        let s = step(json!({"image": "myapp", "registry_id": 5}));
        assert!(matches!(
            s.to_job("", "j", Map::new()),
            Err(DjangoMappingError::ProjectPath(_))
        ));
        assert!(matches!(
            s.to_job("Production", "j", Map::new()),
            Err(DjangoMappingError::ProjectPath(_))
        ));
    }

    #[test]
    fn credentials_in_docker_config_are_refused() {
        let s = step(json!({"image": "myapp", "tag": "1", "registry_id": 5,
                             "docker_config": {"auth_config": {"username": "u", "password": "p"}}}));
        let e = s
            .to_job("production", "j", Map::new())
            .expect_err("refused");
        assert!(e.to_string().contains("docker_config.auth_config"), "{e}");
        assert!(!e.to_string().contains("\"p\""));
    }
}
