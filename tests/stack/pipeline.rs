//! The push pipeline end to end: a worker in this process, the real broker, daemon and
//! registries. Every test has its own topology prefix, image names and repositories.

use anyhow::{Context, Result};
use pushfleet_shared::django::DjangoPushStep;
use pushfleet_shared::event::{JobState, TagPath};
use pushfleet_shared::topology::Topology;
use pushfleet_shared::{PreflightMethod, PushJob};
use pushfleet_tests::config::WorkerSettings;
use pushfleet_tests::fleet::{
    Broker, TestWorker, base_registries, basic_auth, bearer_auth, expect_failed, job, make_image,
    registry_digest, registry_toml, terminal, worker_config_with,
};
use pushfleet_tests::{StackEnv, docker, unique};
use serde_json::{Map, Value, json};

/// Everything one test needs: the stack, a worker on a fresh prefix, a broker view.
struct Harness {
    env: StackEnv,
    broker: Broker,
    worker: TestWorker,
}

impl Harness {
    async fn start(extra_registries: &str) -> Result<Self> {
        Self::start_with(extra_registries, WorkerSettings::default()).await
    }

    async fn start_with(extra_registries: &str, settings: WorkerSettings) -> Result<Self> {
        let env = StackEnv::load()?;
        let prefix = unique("pipe");
        let registries = format!("{}\n{extra_registries}", base_registries(&env)?);
        let config = worker_config_with(&env, &prefix, &registries, settings)?;
        let broker = Broker::connect(&env, &Topology::new(&prefix)).await?;
        let worker = TestWorker::start(config).await?;
        Ok(Self {
            env,
            broker,
            worker,
        })
    }

    async fn run(&mut self, job: &Value) -> Result<Vec<pushfleet_shared::Event>> {
        let id = job["job_id"].as_str().context("job_id")?.to_owned();
        self.broker.publish_job(job).await?;
        self.broker.wait_for(&id).await
    }

    fn basic_url(&self) -> Result<String> {
        Ok(format!(
            "http://{}",
            self.env.get("PUSHFLEET_BASIC_REGISTRY")?
        ))
    }

    fn basic_auth(&self) -> Result<String> {
        Ok(basic_auth(
            &self.env.get("PUSHFLEET_BASIC_USER")?,
            &self.env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?,
        ))
    }

    async fn stop(self) -> Result<()> {
        self.worker.stop().await
    }
}

#[tokio::test]
async fn happy_path_to_the_basic_auth_registry() -> Result<()> {
    let mut h = Harness::start("").await?;
    let name = unique("myapp");
    make_image(&docker(&h.env)?, &[&format!("{name}:0722")]).await?;
    let events = h
        .run(&job(
            &format!("{name}:0722"),
            "basic",
            &format!("production/{name}"),
            &["0722", "stable"],
        ))
        .await?;

    let states: Vec<_> = events.iter().map(|e| e.state).collect();
    assert_eq!(states.first(), Some(&JobState::Accepted), "{events:#?}");
    let done = terminal(&events)?;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let basic = h.env.get("PUSHFLEET_BASIC_REGISTRY")?;
    assert_eq!(
        done.targets,
        [
            format!("{basic}/production/{name}:0722"),
            format!("{basic}/production/{name}:stable")
        ]
    );
    assert_eq!(done.registry.as_deref(), Some("basic"));
    assert_eq!(done.metadata["pipeline_run"], 812, "metadata is echoed");
    assert!(events.iter().all(|e| e.metadata["step"] == 129));
    let phases = done.phases.as_ref().context("phases")?;
    assert!(
        phases.push_ms.is_some() && phases.preflight_ms.is_some() && phases.verify_ms.is_some()
    );
    assert_eq!(done.already_present, Some(false));
    // A fresh image: the daemon pushes the first tag, the second is written registry-side.
    assert_eq!(done.path, Some(TagPath::Push));
    assert_eq!(
        done.tag_paths.values().copied().collect::<Vec<_>>(),
        [TagPath::Push, TagPath::Retag],
        "{done:#?}"
    );
    // A Basic-auth registry: the push right was proven by a (completed) upload.
    assert_eq!(
        done.preflight.as_ref().map(|p| p.method),
        Some(PreflightMethod::UploadProbe),
        "{done:#?}"
    );

    // The registry itself, asked without the worker, holds the reported digest under both tags.
    let digest = done.digest.clone().context("digest")?;
    for tag in ["0722", "stable"] {
        let in_registry = registry_digest(
            &h.basic_url()?,
            &format!("production/{name}"),
            tag,
            &h.basic_auth()?,
        )
        .await?;
        assert_eq!(in_registry.as_deref(), Some(digest.as_str()), "tag {tag}");
    }
    h.stop().await
}

#[tokio::test]
async fn happy_path_to_the_token_registry_then_redelivery_pushes_nothing() -> Result<()> {
    let mut h = Harness::start("").await?;
    let name = unique("tokapp");
    make_image(&docker(&h.env)?, &[&format!("{name}:1.0")]).await?;
    let repo = format!("team-a/{name}");
    let first = h
        .run(&job(&format!("{name}:1.0"), "token", &repo, &["1.0"]))
        .await?;
    let done = terminal(&first)?;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    // The token's access claim granted push: no upload was needed to know.
    assert_eq!(
        done.preflight.as_ref().map(|p| p.method),
        Some(PreflightMethod::TokenClaims),
        "{done:#?}"
    );

    let admin = h.env.get("PUSHFLEET_TOKEN_ADMIN_USER")?;
    let admin_pw = h.env.read_file_at("PUSHFLEET_TOKEN_ADMIN_PASSWORD_FILE")?;
    let auth = bearer_auth(
        &h.env,
        &admin,
        &admin_pw,
        &format!("repository:{repo}:pull"),
    )
    .await?;
    let base = format!("http://{}", h.env.get("PUSHFLEET_TOKEN_REGISTRY")?);
    let in_registry = registry_digest(&base, &repo, "1.0", &auth).await?;
    assert_eq!(
        in_registry, done.digest,
        "the registry holds the digest the event reports"
    );

    // The same job as a first delivery: the daemon knows the image's digest in this
    // repository, so nothing is pushed; the tag is written registry-side without looking
    // first (the same bytes again).
    let fresh = h
        .run(&job(&format!("{name}:1.0"), "token", &repo, &["1.0"]))
        .await?;
    let done_fresh = terminal(&fresh)?;
    assert_eq!(done_fresh.state, JobState::Succeeded, "{done_fresh:#?}");
    assert_eq!(done_fresh.already_present, Some(false));
    assert_eq!(done_fresh.path, Some(TagPath::Retag));
    assert_eq!(done_fresh.digest, done.digest);
    assert_eq!(
        done_fresh.preflight.as_ref().map(|p| p.method),
        Some(PreflightMethod::Cached),
        "the same repository right after: {done_fresh:#?}"
    );
    assert!(
        done_fresh
            .phases
            .as_ref()
            .is_some_and(|p| p.push_ms.is_none()),
        "nothing was pushed: {done_fresh:#?}"
    );

    // The same job as a retry (attempt 2; after a crash before the ack the broker marks it
    // redelivered, which counts the same): one HEAD, no push.
    let retried = job(&format!("{name}:1.0"), "token", &repo, &["1.0"]);
    let retried_id = retried["job_id"].as_str().context("job_id")?.to_owned();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-pushfleet-attempt".into(),
        lapin::types::AMQPValue::LongLongInt(2),
    );
    h.broker
        .publish_raw(
            &serde_json::to_vec(&retried)?,
            lapin::BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(headers),
        )
        .await?;
    let again = h.broker.wait_for(&retried_id).await?;
    let done_again = terminal(&again)?;
    assert_eq!(done_again.state, JobState::Succeeded, "{done_again:#?}");
    assert_eq!(done_again.already_present, Some(true));
    assert_eq!(done_again.path, Some(TagPath::Noop));
    assert_eq!(done_again.digest, done.digest);
    assert!(
        done_again
            .phases
            .as_ref()
            .is_some_and(|p| p.push_ms.is_none()),
        "nothing was pushed"
    );
    h.stop().await
}

#[tokio::test]
async fn seed_000_django_image_and_tag_push_the_exact_tag_via_the_registry_id_alias() -> Result<()>
{
    let mut h = Harness::start("").await?;
    let name = unique("myapp");
    // Only myapp:0722 exists locally: `myapp:latest` must never be looked for.
    make_image(&docker(&h.env)?, &[&format!("{name}:0722")]).await?;
    let step: DjangoPushStep = serde_json::from_value(json!({
        "tag": "0722", "image": name, "project_id": 5, "registry_id": 5, "docker_config": {}
    }))?;
    let valid = step.to_job("production", &unique("django"), Map::new())?;
    let events = h.run(&serde_json::to_value(&valid.job)?).await?;
    let done = terminal(&events)?;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let basic = h.env.get("PUSHFLEET_BASIC_REGISTRY")?;
    assert_eq!(done.targets, [format!("{basic}/production/{name}:0722")]);
    assert_eq!(
        done.registry.as_deref(),
        Some("basic"),
        "alias 5 resolves to the basic registry"
    );
    assert_eq!(done.metadata["django"]["registry_id"], 5);

    // Seed 001: it landed in that registry and nowhere else.
    let admin = h.env.get("PUSHFLEET_TOKEN_ADMIN_USER")?;
    let admin_pw = h.env.read_file_at("PUSHFLEET_TOKEN_ADMIN_PASSWORD_FILE")?;
    let repo = format!("production/{name}");
    let auth = bearer_auth(
        &h.env,
        &admin,
        &admin_pw,
        &format!("repository:{repo}:pull"),
    )
    .await?;
    let token_base = format!("http://{}", h.env.get("PUSHFLEET_TOKEN_REGISTRY")?);
    assert_eq!(
        registry_digest(&token_base, &repo, "0722", &auth).await?,
        None
    );
    assert_eq!(
        registry_digest(&h.basic_url()?, &repo, "0722", &h.basic_auth()?).await?,
        done.digest
    );
    h.stop().await
}

#[tokio::test]
async fn seed_000_missing_source_names_the_tags_that_exist() -> Result<()> {
    let mut h = Harness::start("").await?;
    let name = unique("myapp");
    make_image(&docker(&h.env)?, &[&format!("{name}:0722")]).await?;
    // No tag given: Docker reads `name` as `name:latest`, which does not exist.
    let events = h
        .run(&job(
            &name,
            "basic",
            &format!("production/{name}"),
            &["0722"],
        ))
        .await?;
    let failed = expect_failed(&events, "source_image_missing")?;
    let error = failed.error.as_ref().context("error")?;
    assert!(!error.retryable);
    assert!(
        error.hint.contains("0722"),
        "hint names the tag that exists: {}",
        error.hint
    );
    assert_eq!(
        registry_digest(
            &h.basic_url()?,
            &format!("production/{name}"),
            "0722",
            &h.basic_auth()?
        )
        .await?,
        None,
        "nothing was pushed"
    );
    h.stop().await
}

#[tokio::test]
async fn seed_000_a_source_with_a_registry_port_is_not_mistaken_for_a_tag() -> Result<()> {
    let mut h = Harness::start("").await?;
    let name = unique("myapp");
    make_image(&docker(&h.env)?, &[&format!("localhost:5000/{name}:0722")]).await?;
    let step: DjangoPushStep = serde_json::from_value(json!({
        "tag": "0722", "image": format!("localhost:5000/{name}"), "registry_id": 5
    }))?;
    let valid = step.to_job("production", &unique("django"), Map::new())?;
    assert_eq!(
        valid.source.to_string(),
        format!("localhost:5000/{name}:0722")
    );
    let events = h.run(&serde_json::to_value(&valid.job)?).await?;
    let done = terminal(&events)?;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let basic = h.env.get("PUSHFLEET_BASIC_REGISTRY")?;
    assert_eq!(done.targets, [format!("{basic}/production/{name}:0722")]);
    h.stop().await
}

#[tokio::test]
async fn seed_002_wrong_password_fails_auth_before_any_push() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n")?;
    let env = StackEnv::load()?;
    let extra = registry_toml(
        "basic-wrong",
        &format!("http://{}", env.get("PUSHFLEET_BASIC_REGISTRY")?),
        &env.get("PUSHFLEET_BASIC_USER")?,
        &wrong,
        &["production"],
    );
    let mut h = Harness::start(&extra).await?;
    let name = unique("myapp");
    make_image(&docker(&h.env)?, &[&format!("{name}:1")]).await?;
    let events = h
        .run(&job(
            &format!("{name}:1"),
            "basic-wrong",
            &format!("production/{name}"),
            &["1"],
        ))
        .await?;
    let failed = expect_failed(&events, "registry_auth_failed")?;
    assert!(
        failed
            .phases
            .as_ref()
            .is_some_and(|p| p.push_ms.is_none() && p.tag_ms.is_none())
    );
    assert_eq!(
        registry_digest(
            &h.basic_url()?,
            &format!("production/{name}"),
            "1",
            &h.basic_auth()?
        )
        .await?,
        None
    );
    h.stop().await
}

#[tokio::test]
async fn seed_002_a_password_file_gone_after_start_is_credentials_missing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pw = dir.path().join("password");
    let env = StackEnv::load()?;
    std::fs::write(&pw, env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?)?;
    let extra = registry_toml(
        "basic-gone",
        &format!("http://{}", env.get("PUSHFLEET_BASIC_REGISTRY")?),
        &env.get("PUSHFLEET_BASIC_USER")?,
        &pw,
        &["production"],
    );
    let mut h = Harness::start(&extra).await?;
    std::fs::write(&pw, "")?; // emptied after the worker validated its configuration
    let name = unique("myapp");
    make_image(&docker(&h.env)?, &[&format!("{name}:1")]).await?;
    let events = h
        .run(&job(
            &format!("{name}:1"),
            "basic-gone",
            &format!("production/{name}"),
            &["1"],
        ))
        .await?;
    let failed = expect_failed(&events, "registry_credentials_missing")?;
    let message = &failed.error.as_ref().context("error")?.message;
    assert!(
        message.contains("basic-gone"),
        "the message names the registry: {message}"
    );
    h.stop().await
}

#[tokio::test]
async fn seed_002_an_unreachable_registry_is_retried_through_the_delay_queue_then_dead()
-> Result<()> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = closed.local_addr()?.port();
    drop(closed);
    let dir = tempfile::tempdir()?;
    let pw = dir.path().join("password");
    std::fs::write(&pw, "x")?;
    let extra = registry_toml(
        "down",
        &format!("http://127.0.0.1:{port}"),
        "u",
        &pw,
        &["production"],
    );
    let retries = WorkerSettings {
        max_attempts: 3,
        retry_min_delay_ms: 200,
        retry_max_delay_s: 1,
        ..WorkerSettings::default()
    };
    let mut h = Harness::start_with(&extra, retries).await?;
    let name = unique("myapp");
    make_image(&docker(&h.env)?, &[&format!("{name}:1")]).await?;
    let j = job(
        &format!("{name}:1"),
        "down",
        &format!("production/{name}"),
        &["1"],
    );
    let id = j["job_id"].as_str().context("id")?.to_owned();
    let events = h.run(&j).await?;

    let retrying: Vec<_> = events
        .iter()
        .filter(|e| e.state == JobState::Retrying)
        .collect();
    assert_eq!(
        retrying.len(),
        2,
        "attempts 1 and 2 are retried: {events:#?}"
    );
    for (i, e) in retrying.iter().enumerate() {
        let error = e.error.as_ref().context("error")?;
        assert_eq!(error.code.as_str(), "registry_unreachable");
        assert!(error.retryable);
        let retry = e.retry.as_ref().context("retry info")?;
        assert_eq!(retry.next_attempt as usize, i + 2);
        assert!(
            retry.delay_ms >= 200 * (1 << i),
            "growing delays: {retry:?}"
        );
        assert!(
            e.targets
                .iter()
                .all(|t| t.starts_with(&format!("127.0.0.1:{port}/"))),
            "the target stays on the named registry: {:?}",
            e.targets
        );
    }
    let accepted: Vec<_> = events
        .iter()
        .filter(|e| e.state == JobState::Accepted)
        .map(|e| e.attempt)
        .collect();
    assert_eq!(
        accepted,
        [1, 2, 3],
        "the delay queue brought the job back twice"
    );
    let dead = terminal(&events)?;
    assert_eq!(dead.state, JobState::Dead, "{dead:#?}");
    assert_eq!(dead.attempt, 3);
    assert_eq!(
        dead.error.as_ref().map(|e| e.code.as_str()),
        Some("registry_unreachable")
    );
    let letter = h
        .broker
        .take_dead_letter()
        .await?
        .context("the dead job is kept")?;
    assert!(PushJob::from_slice(&letter.data).is_ok_and(|v| v.job.job_id == id));
    h.stop().await
}

#[tokio::test]
async fn a_pull_only_user_is_refused_at_preflight() -> Result<()> {
    let mut h = Harness::start("").await?;
    let name = unique("scoped");
    make_image(&docker(&h.env)?, &[&format!("{name}:1")]).await?;
    // The reader may only pull; the pusher may push in team-a only, not team-b.
    for (registry, repo) in [
        ("token-reader", format!("team-a/{name}")),
        ("token", format!("team-b/{name}")),
    ] {
        let events = h
            .run(&job(&format!("{name}:1"), registry, &repo, &["1"]))
            .await?;
        let failed = expect_failed(&events, "registry_insufficient_scope")?;
        assert!(
            failed
                .phases
                .as_ref()
                .is_some_and(|p| p.tag_ms.is_none() && p.push_ms.is_none()),
            "refused before tagging or pushing: {failed:#?}"
        );
    }
    h.stop().await
}

#[tokio::test]
async fn seed_004_a_docker_hub_root_repository_is_refused_without_network() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pw = dir.path().join("password");
    std::fs::write(&pw, "x")?;
    // Docker Hub cannot be reached from here: a network attempt would say registry_unreachable.
    let extra = registry_toml(
        "hub",
        "https://registry-1.docker.io",
        "someone",
        &pw,
        &["*"],
    );
    let mut h = Harness::start(&extra).await?;
    let events = h
        .run(&job(
            "scaler-operator:v1",
            "hub",
            "scaler-operator",
            &["v1"],
        ))
        .await?;
    let failed = expect_failed(&events, "root_repository_on_docker_hub")?;
    assert_eq!(
        failed.targets,
        vec!["docker.io/library/scaler-operator:v1".to_owned()],
        "the event names the refused reference"
    );
    assert_eq!(failed.registry.as_deref(), Some("hub"));
    assert!(
        failed
            .phases
            .as_ref()
            .is_none_or(|p| p.resolve_ms.is_none() && p.preflight_ms.is_none()),
        "refused at planning, before any I/O: {failed:#?}"
    );
    assert!(
        failed
            .error
            .as_ref()
            .is_some_and(|e| e.hint.contains("docker.io/<user-or-org>/scaler-operator"))
    );
    h.stop().await
}

#[tokio::test]
async fn unknown_registry_and_forbidden_namespace_are_refused() -> Result<()> {
    let mut h = Harness::start("").await?;
    let events = h
        .run(&job("myapp:1", "harbor-typo", "production/myapp", &["1"]))
        .await?;
    let failed = expect_failed(&events, "unknown_registry")?;
    assert!(
        failed
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("basic")),
        "lists known registries"
    );
    // Named by its alias: the events name the catalogue key and the refused reference.
    let events = h
        .run(&job("myapp:1", "5", "elsewhere/myapp", &["1"]))
        .await?;
    let failed = expect_failed(&events, "namespace_not_allowed")?;
    let host = StackEnv::load()?.get("PUSHFLEET_BASIC_REGISTRY")?;
    assert_eq!(failed.registry.as_deref(), Some("basic"));
    assert_eq!(failed.targets, vec![format!("{host}/elsewhere/myapp:1")]);
    let accepted = events
        .iter()
        .find(|e| e.state == JobState::Accepted)
        .context("no accepted event")?;
    assert_eq!(accepted.registry.as_deref(), Some("basic"));
    assert_eq!(accepted.targets, failed.targets);
    h.stop().await
}

#[tokio::test]
async fn a_malformed_message_is_dead_lettered_and_the_next_job_succeeds() -> Result<()> {
    let mut h = Harness::start("").await?;
    h.broker
        .publish_raw(
            b"{\"version\": 1, \"job_id\": \"broken-1\", \"source\": ",
            Default::default(),
        )
        .await?;
    let failed = h
        .broker
        .wait_until(|e| {
            e.state == JobState::Failed
                && e.error
                    .as_ref()
                    .is_some_and(|x| x.code.as_str() == "invalid_message")
        })
        .await?;
    assert_eq!(failed.job_id, None, "truncated JSON: no job id can be read");
    let bad_ref = job("MyApp:1", "basic", "production/myapp", &["1"]);
    let events = h.run(&bad_ref).await?;
    expect_failed(&events, "invalid_reference")?;

    let mut dead = Vec::new();
    while let Some(d) = h.broker.take_dead_letter().await? {
        dead.push(d);
    }
    assert_eq!(
        dead.len(),
        2,
        "both refused messages are kept in the dead-letter queue"
    );
    let codes: Vec<String> = dead
        .iter()
        .filter_map(|d| {
            let headers = d.properties.headers().as_ref()?;
            match headers.inner().get("x-pushfleet-error-code")? {
                lapin::types::AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            }
        })
        .collect();
    assert_eq!(codes, ["invalid_message", "invalid_reference"]);
    assert!(
        dead[0].data.starts_with(b"{\"version\": 1"),
        "the body is kept unchanged"
    );

    let name = unique("myapp");
    make_image(&docker(&h.env)?, &[&format!("{name}:1")]).await?;
    let events = h
        .run(&job(
            &format!("{name}:1"),
            "basic",
            &format!("production/{name}"),
            &["1"],
        ))
        .await?;
    assert_eq!(terminal(&events)?.state, JobState::Succeeded);
    h.stop().await
}

#[tokio::test]
async fn a_password_that_base64_encodes_with_plus_and_slash_pushes_fine() -> Result<()> {
    use base64::Engine;
    let env = StackEnv::load()?;
    let user = env.get("PUSHFLEET_ODD_USER")?;
    let password = env.read_file_at("PUSHFLEET_ODD_PASSWORD_FILE")?;
    let auth_json = serde_json::to_string(&json!({"username": user, "password": password}))?;
    let standard = base64::engine::general_purpose::STANDARD.encode(auth_json);
    assert!(
        standard.contains('+') || standard.contains('/'),
        "the test password must exercise the bug"
    );
    let extra = registry_toml(
        "odd",
        &format!("http://{}", env.get("PUSHFLEET_BASIC_REGISTRY")?),
        &user,
        std::path::Path::new(&env.get("PUSHFLEET_ODD_PASSWORD_FILE")?),
        &["production"],
    );
    let mut h = Harness::start(&extra).await?;
    let name = unique("odd");
    make_image(&docker(&h.env)?, &[&format!("{name}:1")]).await?;
    let events = h
        .run(&job(
            &format!("{name}:1"),
            "odd",
            &format!("production/{name}"),
            &["1"],
        ))
        .await?;
    let done = terminal(&events)?;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    h.stop().await
}

#[tokio::test]
async fn a_running_job_is_cancelled_and_not_reported_as_a_success() -> Result<()> {
    // A "registry" that accepts connections and never answers: preflight hangs until cancelled.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = silent.local_addr()?.port();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let dir = tempfile::tempdir()?;
    let pw = dir.path().join("password");
    std::fs::write(&pw, "x")?;
    let extra = registry_toml(
        "silent",
        &format!("http://127.0.0.1:{port}"),
        "u",
        &pw,
        &["production"],
    );
    let mut h = Harness::start(&extra).await?;
    let name = unique("myapp");
    make_image(&docker(&h.env)?, &[&format!("{name}:1")]).await?;
    let j = job(
        &format!("{name}:1"),
        "silent",
        &format!("production/{name}"),
        &["1"],
    );
    let id = j["job_id"].as_str().context("id")?.to_owned();
    h.broker.publish_job(&j).await?;
    h.broker
        .wait_until(|e| e.job_id.as_deref() == Some(id.as_str()) && e.state == JobState::Accepted)
        .await?;

    let control = pushfleet_shared::control::ControlMessage::cancel(&id);
    let channel = h.broker.conn().create_channel().await?;
    channel
        .basic_publish(
            h.worker.topology.control_exchange().as_str().into(),
            "".into(),
            Default::default(),
            &control.to_json(),
            Default::default(),
        )
        .await?
        .await?;
    let events = h.broker.wait_for(&id).await?;
    let failed = expect_failed(&events, "cancelled")?;
    assert!(!failed.error.as_ref().is_some_and(|e| e.retryable));
    assert!(events.iter().all(|e| e.state != JobState::Succeeded));
    hold.abort();
    h.stop().await
}
