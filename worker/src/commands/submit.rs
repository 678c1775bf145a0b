//! `pushfleet submit`: build a job (from flags, a JSON file, or the Django step parameters),
//! then publish it and optionally follow its events, or with `--dry-run` only show the plan.
//!
//! The job is published with its pool's routing key into its pool's queue, which `submit`
//! declares (as the workers of that pool do), so a job of a pool no worker serves yet waits
//! there, visibly, instead of being dropped; `submit` says so when the queue has no consumer.
//!
//! Exit codes: 0 the job succeeded (or, without `--wait`, was published; with `--dry-run`, is
//! valid); 1 the job failed or could not be published; 2 the job is invalid for this
//! configuration (dry run) or the command line is; 3 `--wait` gave up before a terminal event.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use pushfleet_shared::django::DjangoPushStep;
use pushfleet_shared::event::{Event, JobState};
use pushfleet_shared::job::{JOB_VERSION, JobOptions, JobTarget, PushJob, ValidJob};
use pushfleet_shared::signature::{self, SIGNATURE_HEADER};
use pushfleet_shared::topology::Topology;
use serde_json::{Map, Value};

use super::render::{Renderer, Style};
use crate::broker::{self, ConfirmedPublisher};
use crate::config::{self, Config};
use crate::failure::Coded;
use crate::plan::plan;

/// Where the job comes from and what to do with it.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The configuration file (for the broker address, the topology prefix and, with
    /// --dry-run, the registry catalogue).
    #[arg(short, long, env = "PUSHFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// A job as a JSON file (`-` for standard input).
    #[arg(long, conflicts_with_all = ["source", "django"])]
    file: Option<PathBuf>,
    /// The Django step parameters as JSON, e.g. '{"image":"myapp","tag":"0722","registry_id":5}'.
    #[arg(long, requires = "project", conflicts_with = "source")]
    django: Option<String>,
    /// With --django: the project path pushed into, e.g. `production`.
    #[arg(long)]
    project: Option<String>,
    /// The source image: in the worker's Docker daemon (`myapp:0722`), or with
    /// --from-registry a repository in that registry with a tag or digest (`ci/myapp:0722`).
    #[arg(long, requires_all = ["registry", "repository"])]
    source: Option<String>,
    /// Copy the image from this registry (a key or alias of the catalogue) instead of pushing
    /// it from a Docker daemon: no daemon is involved.
    #[arg(long, requires = "source")]
    from_registry: Option<String>,
    /// The target registry: a key or alias of the catalogue.
    #[arg(long)]
    registry: Option<String>,
    /// The target repository, e.g. `production/myapp`.
    #[arg(long)]
    repository: Option<String>,
    /// A target tag (repeatable). Default: the source's tag.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Remove the local target tags after the push.
    #[arg(long)]
    remove_local_tag: bool,
    /// The job's time limit in seconds.
    #[arg(long)]
    timeout_s: Option<u32>,
    /// The pool (build host) whose Docker daemon holds the source image. Default: the default
    /// pool. (With --file and --django the job's own `pool` / `build_host` says it.)
    #[arg(long, conflicts_with_all = ["file", "django"])]
    pool: Option<String>,
    /// The job id (default: a new UUID).
    #[arg(long)]
    job_id: Option<String>,
    /// Caller metadata as a JSON object, echoed in every event.
    #[arg(long)]
    metadata: Option<String>,
    /// Validate against the configuration and print the plan; publish nothing, touch no network.
    #[arg(long, conflicts_with = "wait")]
    dry_run: bool,
    /// Follow the job until its terminal event (readable lines and a progress bar on a
    /// terminal); exit 0 only on success.
    #[arg(long)]
    wait: bool,
    /// With --wait: print the events as JSON, one per line, instead.
    #[arg(long, requires = "wait")]
    json: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    wait_timeout_s: u64,
}

/// Runs `pushfleet submit`.
pub async fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let config = match config::load(args.config.as_deref(), None) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let job = match build_job(&args) {
        Ok(job) => job,
        Err(BuildError::Invalid {
            code,
            message,
            hint,
        }) => {
            print_error(code.as_str(), &message, &hint);
            return Ok(ExitCode::from(2));
        }
        Err(BuildError::Usage(e)) => return Err(e),
    };
    if args.dry_run {
        return Ok(dry_run(&job, &config));
    }
    let wait = args.wait.then(|| {
        (
            Style::choose(args.json),
            Duration::from_secs(args.wait_timeout_s),
        )
    });
    publish(&job, &config, wait).await
}

enum BuildError {
    Invalid {
        code: pushfleet_shared::ErrorCode,
        message: String,
        hint: String,
    },
    Usage(anyhow::Error),
}

impl From<anyhow::Error> for BuildError {
    fn from(e: anyhow::Error) -> Self {
        BuildError::Usage(e)
    }
}

fn build_job(args: &SubmitArgs) -> Result<ValidJob, BuildError> {
    let job_id = args
        .job_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let metadata: Map<String, Value> = match &args.metadata {
        Some(text) => serde_json::from_str(text).context("--metadata must be a JSON object")?,
        None => Map::new(),
    };
    let invalid = |e: pushfleet_shared::JobError| BuildError::Invalid {
        code: e.code(),
        message: e.to_string(),
        hint: e.hint(),
    };
    if let Some(path) = &args.file {
        let body = read_input(path)?;
        return PushJob::from_slice(&body).map_err(invalid);
    }
    if let Some(params) = &args.django {
        let step: DjangoPushStep = serde_json::from_str(params)
            .context("--django must be the step's parameters as JSON")?;
        let project = args.project.as_deref().unwrap_or_default();
        return step
            .to_job(project, &job_id, metadata)
            .map_err(|e| BuildError::Invalid {
                code: e.code(),
                message: e.to_string(),
                hint: match &e {
                    pushfleet_shared::django::DjangoMappingError::Job(job) => job.hint(),
                    _ => "check the step's image, tag, registry_id and build_host".to_owned(),
                },
            });
    }
    let (Some(source), Some(registry), Some(repository)) =
        (&args.source, &args.registry, &args.repository)
    else {
        return Err(BuildError::Usage(anyhow::anyhow!(
            "give a job: --file, --django with --project, or --source with --registry and --repository"
        )));
    };
    let tags = if args.tags.is_empty() {
        let source_error = |e| {
            invalid(pushfleet_shared::JobError::Reference {
                field: "source".into(),
                source: e,
            })
        };
        let tag = match &args.from_registry {
            None => pushfleet_shared::ImageRef::parse(source)
                .map_err(source_error)?
                .tag_or_latest()
                .to_owned(),
            Some(_) => pushfleet_shared::ImageRef::parse_in_registry(source)
                .map_err(source_error)?
                .tag
                .unwrap_or_else(|| "latest".to_owned()),
        };
        vec![tag]
    } else {
        args.tags.clone()
    };
    let job = PushJob {
        version: JOB_VERSION,
        job_id,
        source: source.clone(),
        source_registry: args.from_registry.clone(),
        pool: args.pool.clone(),
        target: JobTarget {
            registry: registry.clone(),
            repository: repository.clone(),
            tags,
        },
        options: JobOptions {
            remove_local_tag: args.remove_local_tag,
            timeout_s: args.timeout_s,
        },
        metadata,
    };
    job.validate().map_err(invalid)
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut body).context("reading stdin")?;
        Ok(body)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

fn print_error(code: &str, message: &str, hint: &str) {
    eprintln!("error[{code}]: {message}");
    eprintln!("hint: {hint}");
}

fn dry_run(job: &ValidJob, config: &Config) -> ExitCode {
    match plan(job, &config.registries) {
        Ok((plan, registries)) => {
            let mut value = serde_json::to_value(&plan).unwrap_or_default();
            if let Some(obj) = value.as_object_mut() {
                obj.insert("dry_run".into(), true.into());
                obj.insert("pool".into(), job.pool.as_str().into());
                let creds = |registry: &crate::config::Registry| match registry.credentials() {
                    Ok(Some(_)) => "resolved",
                    Ok(None) => "anonymous",
                    Err(_) => "missing",
                };
                obj.insert("credentials".into(), creds(registries.target).into());
                if let Some((source, _)) = registries.source {
                    obj.insert("source_credentials".into(), creds(source).into());
                }
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_error(e.code().as_str(), &e.to_string(), &e.hint());
            ExitCode::from(2)
        }
    }
}

/// How many consumers `queue` has (a passive declare, on a channel of its own: a failed
/// passive declare closes its channel).
async fn consumers(conn: &lapin::Connection, queue: &str) -> anyhow::Result<u32> {
    let channel = conn.create_channel().await?;
    let state = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "done".into()).await;
    Ok(state.consumer_count())
}

/// Publishes `job`; with `wait` (how to show events, how long to wait), follows it to its end.
async fn publish(
    job: &ValidJob,
    config: &Config,
    wait: Option<(Style, Duration)>,
) -> anyhow::Result<ExitCode> {
    let topology = config.amqp.topology();
    let conn = super::connect_broker(config, "pushfleet submit").await?;
    let publisher = ConfirmedPublisher::open(&conn).await?;
    broker::declare_topology(publisher.channel(), &topology).await?;
    for queue in topology.pool_queues(&job.pool) {
        broker::declare_queue(publisher.channel(), &queue).await?;
    }

    // Subscribe before publishing, so no event can be missed.
    let events = if wait.is_some() {
        let channel = conn.create_channel().await?;
        Some(broker::subscribe_exclusive(&channel, &topology.events_exchange(), "job.*").await?)
    } else {
        None
    };

    let body = job.job.to_json();
    // The publication time, in whole seconds (AMQP's timestamp): the worker's queue-wait
    // metric reads it.
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
    let mut properties = lapin::BasicProperties::default()
        .with_message_id(job.job.job_id.as_str().into())
        .with_timestamp(now);
    if let Some(key) = &config.amqp.signing_key {
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            SIGNATURE_HEADER.into(),
            lapin::types::AMQPValue::LongString(signature::sign(key.expose(), &body).into()),
        );
        properties = properties.with_headers(headers);
    }
    let routing_key = Topology::pool_routing_key(&job.pool);
    publisher
        .publish_raw(
            &topology.jobs_exchange(),
            &routing_key,
            &body,
            crate::broker::json(properties),
        )
        .await?;
    let queue = topology.pool_queue(&job.pool);
    eprintln!(
        "published job {} to {} (pool {}, queue {queue})",
        job.job.job_id,
        topology.jobs_exchange(),
        job.pool
    );
    match consumers(&conn, &queue).await {
        Ok(0) => eprintln!(
            "warning: no worker consumes {queue}: the job waits there until a worker with pool \
             {} in its worker.pools starts",
            job.pool
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot tell whether a worker consumes {queue}: {e:#}"),
    }
    let (Some(mut consumer), Some((style, wait_timeout))) = (events, wait) else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut renderer = Renderer::new(style, false);

    let deadline = tokio::time::Instant::now() + wait_timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let delivery = match next {
            Err(_) => {
                renderer.finish_bar();
                eprintln!("gave up waiting after {wait_timeout:?}; the job may still finish");
                return Ok(ExitCode::from(3));
            }
            Ok(None) => bail!("the broker closed the event stream"),
            Ok(Some(d)) => d?,
        };
        let Ok(event) = Event::from_slice(&delivery.data) else {
            continue;
        };
        if event.job_id.as_deref() != Some(job.job.job_id.as_str()) {
            continue;
        }
        renderer.show(&event);
        match event.state {
            JobState::Succeeded => return Ok(ExitCode::SUCCESS),
            JobState::Failed | JobState::Dead => {
                // Readable lines already carry the code, message and hint.
                if let (Style::Json, Some(e)) = (style, &event.error) {
                    print_error(e.code.as_str(), &e.message, &e.hint);
                }
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
    }
}
