//! The worker image, run as a container: built by `deploy/image/build.sh` from the current
//! worker binary (no registry pull), started in the stack's Docker daemon the way the
//! deployment files run it (configuration and password files mounted read-only, the daemon's
//! socket mounted, host network, the image's non-root user), once directly and once as
//! deploy/compose.yaml's `worker` service through Debian's docker-compose. Each time it becomes
//! ready, pushes a real job, and on SIGTERM drains and exits with status 0 within its
//! shutdown grace.
//!
//! The daemon's socket belongs to `root:docker` with mode 0660, so the image's user (10001)
//! is given the socket's group explicitly (`--group-add <gid>`; compose.yaml's `group_add`
//! from `DOCKER_GID`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, LogsOptions, RemoveContainerOptions,
    RemoveImageOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use pushfleet_shared::event::JobState;
use pushfleet_shared::topology::Topology;
use pushfleet_tests::fleet::{
    Broker, basic_auth, job, make_image, registry_digest, registry_toml, terminal,
};
use pushfleet_tests::process::{WorkerSettings, delete_topology, pushfleet_binary, worker_toml};
use pushfleet_tests::{StackEnv, docker, unique};

/// The image's user and group (deploy/Dockerfile, deploy/image/build.sh).
const IMAGE_UID: u32 = 10_001;
/// How long building the image may take (a first run downloads three Debian packages).
const BUILD_LIMIT: Duration = Duration::from_secs(600);
/// How long the container may take to answer 200 on `/readyz`.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// The worker's `shutdown_grace_s` in this test.
const SHUTDOWN_GRACE_S: u64 = 10;
/// Where the configuration, the password files and the daemon's socket appear in the
/// container (as in deploy/compose.yaml and deploy/k8s/worker.yaml).
const CONFIG_DIR: &str = "/etc/pushfleet";
const SECRETS_DIR: &str = "/run/secrets/pushfleet";
const SOCKET: &str = "/var/run/docker.sock";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_owned)
}

/// Runs deploy/image/build.sh for `binary` as image `tag` in the stack's daemon; returns the
/// image id.
async fn build_image(env: &StackEnv, binary: &Path, tag: &str) -> Result<String> {
    let script = workspace_root().join("deploy/image/build.sh");
    let run = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("--binary")
        .arg(binary)
        .args(["--tag", tag])
        .env("DOCKER_HOST", env.get("PUSHFLEET_DOCKER_HOST")?)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BUILD_LIMIT, run)
        .await
        .map_err(|_| anyhow!("{} took longer than {BUILD_LIMIT:?}", script.display()))??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{} failed ({}):\n{stderr}",
        script.display(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .filter(|id| id.starts_with("sha256:"))
        .map(str::to_owned)
        .with_context(|| format!("build.sh printed no image id:\n{stderr}"))
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The configuration folder and the password folder mounted into the container: readable by
/// the image's user only where they hold a secret (like a Secret volume with an fsGroup).
struct Mounts {
    root: tempfile::TempDir,
    config: PathBuf,
    secrets: PathBuf,
}

impl Mounts {
    /// The folders, with the basic registry's `password` as `basic-password`.
    fn new(password: &str) -> Result<Self> {
        let root = tempfile::tempdir()?;
        let config = root.path().join("config");
        let secrets = root.path().join("secrets");
        std::fs::create_dir(&config)?;
        std::fs::create_dir(&secrets)?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o755))?;
        let file = secrets.join("basic-password");
        std::fs::write(&file, password)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400))?;
        std::os::unix::fs::chown(&file, Some(IMAGE_UID), Some(IMAGE_UID))?;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o500))?;
        std::os::unix::fs::chown(&secrets, Some(IMAGE_UID), Some(IMAGE_UID))?;
        Ok(Self {
            root,
            config,
            secrets,
        })
    }

    /// Where the compose test writes its override file.
    fn override_file(&self) -> PathBuf {
        self.root.path().join("compose.override.yaml")
    }

    /// The password file, as this host sees it.
    fn host_password_file(&self) -> PathBuf {
        self.secrets.join("basic-password")
    }

    /// Writes `pushfleet.toml`, with the password file's host path replaced by its path in
    /// the container (the host path lets the worker's loader check the file here first).
    fn write_config(&self, toml: &str) -> Result<()> {
        let host = self.host_password_file().display().to_string();
        ensure!(
            toml.contains(&host),
            "the configuration does not name {host}"
        );
        let toml = toml.replace(&host, &format!("{SECRETS_DIR}/basic-password"));
        let file = self.config.join("pushfleet.toml");
        std::fs::write(&file, toml)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
        Ok(())
    }
}

/// The container's output (stdout and stderr), for failure messages and checks.
async fn container_logs(docker: &Docker, id: &str) -> String {
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut stream = docker.logs(id, Some(options));
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => text.push_str(&String::from_utf8_lossy(&chunk.into_bytes())),
            Err(e) => {
                text.push_str(&format!("\n(logs ended: {e})"));
                break;
            }
        }
    }
    text
}

/// Polls `/readyz` on `health` until 200; fails at once if the container stops.
async fn wait_ready(docker: &Docker, id: &str, health: u16) -> Result<Duration> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://127.0.0.1:{health}/readyz");
    let start = Instant::now();
    while start.elapsed() < READY_LIMIT {
        if client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(start.elapsed());
        }
        let state = docker.inspect_container(id, None).await?.state;
        if !state.as_ref().and_then(|s| s.running).unwrap_or(false) {
            bail!("the container stopped before it was ready: {state:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{url} did not answer 200 within {READY_LIMIT:?}")
}

/// The `Uid:` and `Gid:` lines of the host's /proc for `pid`.
fn process_ids(pid: i64) -> Result<(String, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((line("Uid:")?, line("Gid:")?))
}

/// What both ways of running the image share: the image built from the current binary, the
/// mounted folders with a worker configuration on a fresh topology, a free health port.
struct Setup {
    env: StackEnv,
    docker: Docker,
    tag: String,
    image: String,
    prefix: String,
    worker_id: String,
    mounts: Mounts,
    health: u16,
    /// The stack daemon's socket on this host, and its group.
    socket: String,
    socket_gid: u32,
}

impl Setup {
    async fn new(label: &str) -> Result<Self> {
        let env = StackEnv::load()?;
        let docker = docker(&env)?;
        let binary = tokio::task::spawn_blocking(pushfleet_binary).await??;
        let tag = format!("{}:test", unique(&format!("pushfleet-{label}")));
        let image = match build_image(&env, &binary, &tag).await {
            Ok(id) => id,
            Err(e) => {
                // The script may have failed after tagging.
                let _ = docker
                    .remove_image(&tag, Some(RemoveImageOptions::default()), None)
                    .await;
                return Err(e);
            }
        };

        let prefix = unique(&format!("t-{label}"));
        let worker_id = format!("{prefix}-worker");
        let mounts = Mounts::new(&env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?)?;
        let registries = registry_toml(
            "basic",
            &format!("http://{}", env.get("PUSHFLEET_BASIC_REGISTRY")?),
            &env.get("PUSHFLEET_BASIC_USER")?,
            &mounts.host_password_file(),
            &["production"],
        );
        let settings = WorkerSettings {
            shutdown_grace_s: SHUTDOWN_GRACE_S,
            ..WorkerSettings::default()
        };
        let toml = worker_toml(&env, &prefix, &worker_id, settings, &registries)?;
        mounts.write_config(&toml)?;

        let stack_host = env.get("PUSHFLEET_DOCKER_HOST")?;
        let socket = stack_host
            .strip_prefix("unix://")
            .context("the stack's daemon is not on a unix socket")?
            .to_owned();
        let socket_gid = std::fs::metadata(&socket)?.gid();
        Ok(Self {
            env,
            docker,
            tag,
            image,
            prefix,
            worker_id,
            mounts,
            health: free_port()?,
            socket,
            socket_gid,
        })
    }

    fn topology(&self) -> Topology {
        Topology::new(&self.prefix)
    }

    /// Checks that the container's worker process runs as the image's user and group.
    async fn check_user(&self, container: &str) -> Result<()> {
        let pid = self
            .docker
            .inspect_container(container, None)
            .await?
            .state
            .and_then(|s| s.pid)
            .context("a running container without a pid")?;
        let (uid, gid) = process_ids(pid)?;
        let want = format!("{IMAGE_UID} {IMAGE_UID} {IMAGE_UID} {IMAGE_UID}");
        ensure!(uid == want, "the worker runs as uid {uid}, not {IMAGE_UID}");
        ensure!(gid == want, "the worker runs as gid {gid}, not {IMAGE_UID}");
        Ok(())
    }

    /// Publishes a job for a fresh image of the stack's daemon and checks that the worker of
    /// this setup pushed it: its `succeeded` event, and the digest in the registry.
    async fn push_one_job(&self, broker: &mut Broker) -> Result<String> {
        let source = unique("image");
        make_image(&self.docker, &[&format!("{source}:1")]).await?;
        let repository = format!("production/{source}");
        let job = job(&format!("{source}:1"), "basic", &repository, &["1"]);
        let job_id = job["job_id"].as_str().context("job_id")?.to_owned();
        broker.publish_job(&job).await?;
        let events = broker.wait_for(&job_id).await?;
        let done = terminal(&events)?;
        ensure!(
            done.state == JobState::Succeeded,
            "the job did not succeed: {events:#?}"
        );
        ensure!(
            done.worker == self.worker_id,
            "the job was done by {}, not by the container's worker {}",
            done.worker,
            self.worker_id
        );
        let digest = done.digest.clone().context("succeeded without a digest")?;
        let basic = self.env.get("PUSHFLEET_BASIC_REGISTRY")?;
        let auth = basic_auth(
            &self.env.get("PUSHFLEET_BASIC_USER")?,
            &self.env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?,
        );
        let found = registry_digest(&format!("http://{basic}"), &repository, "1", &auth).await?;
        ensure!(
            found.as_deref() == Some(digest.as_str()),
            "the registry holds {found:?} under {repository}:1, the event says {digest}"
        );
        Ok(format!("{repository}:1 ({digest})"))
    }

    /// Checks that the container, sent SIGTERM, ended by itself with status 0 (not killed
    /// after a stop timeout, which gives 137) and logged the signal.
    async fn check_clean_exit(&self, container: &str) -> Result<()> {
        let state = self
            .docker
            .inspect_container(container, None)
            .await?
            .state
            .context("no container state")?;
        ensure!(
            state.running == Some(false)
                && state.exit_code == Some(0)
                && state.oom_killed != Some(true),
            "after SIGTERM the container ended with {state:?}"
        );
        let logs = container_logs(&self.docker, container).await;
        ensure!(
            logs.contains("SIGTERM received"),
            "the worker did not log the SIGTERM it got:\n{logs}"
        );
        Ok(())
    }

    /// Removes the image and the topology (best effort).
    async fn clean_up(&self) {
        if let Err(e) = self
            .docker
            .remove_image(&self.tag, Some(RemoveImageOptions::default()), None)
            .await
        {
            eprintln!("could not remove image {}: {e}", self.tag);
        }
        delete_topology(&self.env, &self.prefix).await;
    }
}

/// How long the worker may take to exit after SIGTERM: its grace, plus time for the
/// container's teardown.
fn stop_limit() -> Duration {
    Duration::from_secs(SHUTDOWN_GRACE_S + 20)
}

#[tokio::test]
async fn the_image_runs_a_job_as_non_root_and_drains_on_sigterm() -> Result<()> {
    let setup = Setup::new("image").await?;
    let docker = &setup.docker;
    let body = ContainerCreateBody {
        image: Some(setup.image.clone()),
        env: Some(vec![
            // As deploy/compose.yaml does: the file names the stack's socket path, the
            // environment the one mounted here.
            format!("PUSHFLEET__DOCKER__HOST=unix://{SOCKET}"),
            format!("PUSHFLEET_HEALTH_LISTEN=127.0.0.1:{}", setup.health),
        ]),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            binds: Some(vec![
                format!("{}:{CONFIG_DIR}:ro", setup.mounts.config.display()),
                format!("{}:{SECRETS_DIR}:ro", setup.mounts.secrets.display()),
                format!("{}:{SOCKET}", setup.socket),
            ]),
            group_add: Some(vec![setup.socket_gid.to_string()]),
            // As deploy/k8s/worker.yaml runs it.
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = format!("{}-worker", setup.prefix);
    let options = CreateContainerOptions {
        name: Some(name.clone()),
        ..Default::default()
    };
    let created = docker.create_container(Some(options), body).await;
    let container = match created {
        Ok(c) => c.id,
        Err(e) => {
            setup.clean_up().await;
            return Err(e.into());
        }
    };

    let result = async {
        // Subscribed to the events before the worker starts, so that none is missed.
        let mut broker = Broker::connect(&setup.env, &setup.topology()).await?;
        docker.start_container(&container, None).await?;
        let took = wait_ready(docker, &container, setup.health).await?;
        println!("container {name} ready in {took:?}");
        let health = exec(docker, &container, &["/usr/local/bin/pushfleet", "health"]).await?;
        ensure!(
            health.0 == 0 && health.1.contains("/readyz: 200"),
            "the image's health check command inside the container: {health:?}"
        );
        setup.check_user(&container).await?;
        let pushed = setup.push_one_job(&mut broker).await?;

        // SIGTERM, as `docker stop` and the kubelet send it.
        let stopped = Instant::now();
        let kill = KillContainerOptions {
            signal: "SIGTERM".into(),
        };
        docker.kill_container(&container, Some(kill)).await?;
        let mut wait = docker.wait_container(&container, None::<WaitContainerOptions>);
        tokio::time::timeout(stop_limit(), wait.next())
            .await
            .map_err(|_| anyhow!("the container still runs {:?} after SIGTERM", stop_limit()))?;
        setup.check_clean_exit(&container).await?;
        println!(
            "pushed {pushed}; exited with 0 {:?} after SIGTERM",
            stopped.elapsed()
        );
        Ok(())
    }
    .await;

    if result.is_err() {
        eprintln!(
            "----- container {name} -----\n{}",
            container_logs(docker, &container).await
        );
    }
    let remove = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    if let Err(e) = docker.remove_container(&container, Some(remove)).await {
        eprintln!("could not remove container {name}: {e}");
    }
    setup.clean_up().await;
    result
}

/// Runs `cmd` inside the running container `id` (as the image's user); returns its exit code
/// and output. At most 30 s.
async fn exec(docker: &Docker, id: &str, cmd: &[&str]) -> Result<(i64, String)> {
    let config = bollard::models::ExecConfig {
        cmd: Some(cmd.iter().map(|c| (*c).to_owned()).collect()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let created = docker.create_exec(id, config).await?;
    let mut output = String::new();
    let run = async {
        if let bollard::exec::StartExecResults::Attached {
            output: mut out, ..
        } = docker.start_exec(&created.id, None).await?
        {
            while let Some(chunk) = out.next().await {
                output.push_str(&chunk?.to_string());
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .context("the command in the container did not finish within 30 s")??;
    let code = docker
        .inspect_exec(&created.id)
        .await?
        .exit_code
        .context("no exit code")?;
    Ok((code, output))
}

/// Runs `docker-compose -p <project> -f deploy/compose.yaml -f <override> ARGS` against the
/// stack's daemon, within `limit`; returns its stdout.
async fn compose(setup: &Setup, project: &str, args: &[&str], limit: Duration) -> Result<String> {
    let compose_file = workspace_root().join("deploy/compose.yaml");
    let run = tokio::process::Command::new("docker-compose")
        .args(["-p", project, "-f"])
        .arg(&compose_file)
        .arg("-f")
        .arg(setup.mounts.override_file())
        .args(args)
        .env("DOCKER_HOST", setup.env.get("PUSHFLEET_DOCKER_HOST")?)
        .env("DOCKER_GID", setup.socket_gid.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, run)
        .await
        .map_err(|_| anyhow!("docker-compose {args:?} took longer than {limit:?}"))?
        .context("cannot run docker-compose (deploy/local/start.sh installs it)")?;
    ensure!(
        out.status.success(),
        "docker-compose {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn docker_compose_runs_the_worker_service_and_stops_it_cleanly() -> Result<()> {
    let setup = Setup::new("compose").await?;
    // deploy/compose.yaml's worker service as it is (user, group_add, read-only root, dropped
    // capabilities, socket, stop grace), pointed at this stack: its image, host network, the
    // stack's broker and daemon, this test's configuration and password folder.
    let override_yaml = format!(
        r#"services:
  worker:
    image: {image}
    network_mode: host
    environment:
      PUSHFLEET__AMQP__URL: "{amqp}"
      PUSHFLEET_HEALTH_LISTEN: 127.0.0.1:{health}
    volumes:
      - {config}/pushfleet.toml:{CONFIG_DIR}/pushfleet.toml:ro
      - {secrets}:{SECRETS_DIR}:ro
      - {socket}:{SOCKET}
"#,
        image = setup.tag,
        amqp = setup.env.get("PUSHFLEET_AMQP_URL")?,
        health = setup.health,
        config = setup.mounts.config.display(),
        secrets = setup.mounts.secrets.display(),
        socket = setup.socket,
    );
    std::fs::write(setup.mounts.override_file(), override_yaml)?;
    // Compose project names: lower-case letters, digits, '-' and '_'.
    let project = setup.prefix.replace('.', "-");
    let limit = Duration::from_secs(60);

    let result = async {
        let mut broker = Broker::connect(&setup.env, &setup.topology()).await?;
        compose(
            &setup,
            &project,
            &["up", "-d", "--no-deps", "--no-build", "worker"],
            limit,
        )
        .await?;
        let ids = compose(&setup, &project, &["ps", "-q", "worker"], limit).await?;
        let container = ids
            .lines()
            .next()
            .context("docker-compose ps shows no worker container")?
            .to_owned();
        let took = wait_ready(&setup.docker, &container, setup.health).await?;
        println!("compose service worker ready in {took:?}");
        setup.check_user(&container).await?;
        let pushed = setup.push_one_job(&mut broker).await?;

        // `stop` sends SIGTERM and waits up to the service's stop_grace_period (90 s) before
        // SIGKILL; the worker must be gone long before.
        let stopped = Instant::now();
        compose(&setup, &project, &["stop", "worker"], stop_limit()).await?;
        setup.check_clean_exit(&container).await?;
        println!(
            "pushed {pushed}; docker-compose stop took {:?}, exit status 0",
            stopped.elapsed()
        );
        Ok::<_, anyhow::Error>(container)
    }
    .await;

    if result.is_err()
        && let Ok(ids) = compose(&setup, &project, &["ps", "-q", "worker"], limit).await
        && let Some(id) = ids.lines().next()
    {
        eprintln!(
            "----- compose worker {id} -----\n{}",
            container_logs(&setup.docker, id).await
        );
    }
    if let Err(e) = compose(&setup, &project, &["down"], limit).await {
        eprintln!("docker-compose down failed: {e:#}");
    }
    setup.clean_up().await;
    result.map(|_| ())
}
