//! Worker *processes* for the fault tests (`tests/faults`): the real `pushfleet` binary run as
//! `pushfleet worker -c <toml>`, its output in a log file, stopped with SIGTERM or killed with
//! SIGKILL; an event log that survives broker restarts; outages of stack components that always
//! end, even when the test fails.
//!
//! # The binary
//!
//! [`pushfleet_binary`] returns this package's binary target `pushfleet-e2e` (the `pushfleet`
//! program, see `bin/pushfleet.rs`), next to the running test binary, or `$PUSHFLEET_BIN` when
//! set. Cargo builds a package's binaries before its integration tests, so a test never runs
//! a stale worker.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use pushfleet_shared::event::{Event, JobState};
use pushfleet_shared::topology::{JOB_ROUTING_KEY, Topology};
use pushfleet_worker::broker::{ConfirmedPublisher, connect, declare_topology};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::config::TestConfig;
pub use crate::config::WorkerSettings;
use crate::fleet::{basic_auth, registry_digest};
use crate::{StackEnv, unique};

// ---------------------------------------------------------------------------------------------
// The binary

/// The worker program to run as processes: `PUSHFLEET_BIN` when set, else this package's own
/// binary target `pushfleet-e2e` (the `pushfleet` program; Cargo builds it, fresh, before it
/// runs the package's integration tests), next to the test binary's `deps` folder.
pub fn pushfleet_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PUSHFLEET_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("PUSHFLEET_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    // <target>/<profile>/deps/stack-<hash> -> <target>/<profile>/pushfleet-e2e
    let exe = std::env::current_exe().context("cannot locate the test binary")?;
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not in <target>/<profile>/deps")?
        .join("pushfleet-e2e");
    if !binary.is_file() {
        bail!(
            "{} does not exist: run the tests through cargo (`cargo test -p pushfleet-tests`), \
             which builds it, or set PUSHFLEET_BIN",
            binary.display()
        );
    }
    Ok(binary)
}

// ---------------------------------------------------------------------------------------------
// Logs

/// A folder of log files for one test: worker logs, stack script output. Removed when the test
/// passes ([`Logs::remove`]); kept and printed when it fails ([`Logs::dump`]).
#[derive(Debug)]
pub struct Logs {
    dir: PathBuf,
}

impl Logs {
    /// A fresh folder under the system's temp dir, named after `test`.
    pub fn new(test: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(unique(&format!("pushfleet-faults-{test}")));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A path in the folder that does not exist yet: `<stem>.<ext>`, else `<stem>-2.<ext>`...
    pub fn fresh(&self, stem: &str, ext: &str) -> PathBuf {
        let mut path = self.dir.join(format!("{stem}.{ext}"));
        let mut n = 2;
        while path.exists() {
            path = self.dir.join(format!("{stem}-{n}.{ext}"));
            n += 1;
        }
        path
    }

    fn log_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Prints the last `tail` lines of every log file to stderr.
    pub fn dump(&self, tail: usize) {
        for file in self.log_files() {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(tail);
            eprintln!(
                "----- {} (last {} of {} lines) -----",
                file.display(),
                lines.len() - from,
                lines.len()
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
        }
    }

    /// Every log line containing `needle`, as `<file name>: <line>`.
    pub fn grep(&self, needle: &str) -> Vec<String> {
        let mut found = Vec::new();
        for file in self.log_files() {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains(needle)) {
                found.push(format!("{name}: {line}"));
            }
        }
        found
    }

    /// Deletes the folder (the test passed).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Worker configuration

/// A worker's TOML configuration: the stack's broker and daemon, topology `prefix`, worker
/// `id`, `settings`, and `registries` (`[registries.*]` tables, e.g.
/// [`crate::fleet::base_registries`]). Validated with the worker's own loader before it is
/// returned, so a typo fails here rather than in a process's log.
pub fn worker_toml(
    env: &StackEnv,
    prefix: &str,
    id: &str,
    settings: WorkerSettings,
    registries: &str,
) -> Result<String> {
    worker_toml_in(
        env,
        prefix,
        id,
        settings,
        registries,
        "PUSHFLEET_DOCKER_HOST",
        &[],
    )
}

/// Like [`worker_toml`], for a worker on the daemon whose host is the value of `docker_key` in
/// the stack's env file, serving `pools` (`worker.pools`; none: the default).
pub fn worker_toml_in(
    env: &StackEnv,
    prefix: &str,
    id: &str,
    settings: WorkerSettings,
    registries: &str,
    docker_key: &str,
    pools: &[&str],
) -> Result<String> {
    let mut config = TestConfig::new(env, prefix, registries)?
        .with_id(id)
        .with_settings(settings);
    config.docker_host = Some(env.get(docker_key)?);
    config.pools = pools.iter().map(|p| (*p).to_owned()).collect();
    config.toml()
}

/// A push job as JSON.
pub fn job_json(
    job_id: &str,
    source: &str,
    registry: &str,
    repository: &str,
    tags: &[&str],
) -> Value {
    json!({
        "version": 1,
        "job_id": job_id,
        "source": source,
        "target": {"registry": registry, "repository": repository, "tags": tags},
        "metadata": {"suite": "pushfleet-tests"}
    })
}

// ---------------------------------------------------------------------------------------------
// Worker processes

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One `pushfleet worker` process. Killed (SIGKILL) when dropped while it still runs.
#[derive(Debug)]
pub struct WorkerProcess {
    /// The worker id (`[worker] id`), as its events report it.
    pub id: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// Where it serves `/healthz` and `/readyz`.
    pub health: std::net::SocketAddr,
    child: Child,
    exited: Option<ExitStatus>,
}

impl WorkerProcess {
    /// Starts `pushfleet worker -c <config>` with its output in a fresh log file of `logs`
    /// named after `id`. `toml` comes from [`worker_toml`] (its `[worker] id` should be `id`).
    pub async fn spawn(logs: &Logs, id: &str, toml: &str) -> Result<Self> {
        let binary = pushfleet_binary()?;
        let config = logs.path().join(format!("{id}.toml"));
        std::fs::write(&config, toml)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let log = logs.fresh(id, "log");
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let health = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut cmd = Command::new(&binary);
        cmd.arg("worker")
            .arg("-c")
            .arg(&config)
            .arg("--health-listen")
            .arg(health.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        // Nothing of the test's own environment may reconfigure the worker.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("PUSHFLEET__")
                || k == "PUSHFLEET_CONFIG"
                || k == "PUSHFLEET_HEALTH_LISTEN"
            {
                cmd.env_remove(&key);
            }
        }
        // Plain text: the logs are files, read by people and grepped for job ids.
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("PUSHFLEET_LOG_FORMAT");
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Self {
            id: id.to_owned(),
            config,
            log,
            health,
            child,
            exited: None,
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, then waits for the process to be gone.
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        self.child.start_kill().context("SIGKILL")?;
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// Sends SIGTERM (the worker drains and exits).
    pub async fn terminate(&mut self) -> Result<()> {
        let pid = self.pid().context("the worker already exited")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed: {status}");
        }
        Ok(())
    }

    /// Waits at most `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow!("worker {} still runs after {limit:?}", self.id))??;
        self.exited = Some(status);
        Ok(status)
    }

    /// Whether `/readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        let client = match reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
        {
            Ok(c) => c,
            Err(_) => return false,
        };
        client
            .get(format!("http://{}/readyz", self.health))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Polls `/readyz` until it answers 200; returns how long that took.
    pub async fn wait_ready(&self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.is_ready().await {
                return Ok(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("worker {} not ready within {limit:?}", self.id)
    }

    /// Polls `/readyz` until it answers anything but 200 (not ready, or not serving).
    pub async fn wait_not_ready(&self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if !self.is_ready().await {
                return Ok(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("worker {} still ready after {limit:?}", self.id)
    }
}

/// Runs `pushfleet cancel -c <config> <job_id>` and returns its exit status.
pub async fn run_cancel(config: &Path, job_id: &str, logs: &Logs) -> Result<ExitStatus> {
    let binary = pushfleet_binary()?;
    let log = logs.fresh("cancel", "log");
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let mut child = Command::new(binary)
        .arg("cancel")
        .arg("-c")
        .arg(config)
        .arg(job_id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()?;
    Ok(tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .map_err(|_| anyhow!("pushfleet cancel did not finish within 30 s"))??)
}

// ---------------------------------------------------------------------------------------------
// Events

#[derive(Debug)]
struct Seen {
    events: Vec<Event>,
    ids: HashSet<uuid::Uuid>,
    sessions: u32,
    errors: Vec<String>,
    /// Told the number of events each time one is stored, so waiters wake on news.
    stored: tokio::sync::watch::Sender<usize>,
}

impl Default for Seen {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            ids: HashSet::new(),
            sessions: 0,
            errors: Vec::new(),
            stored: tokio::sync::watch::channel(0).0,
        }
    }
}

/// Every event of one topology, collected through a durable queue of the test's own, so that
/// no event is lost while the broker restarts: the collector reconnects by itself and acks an
/// event only once it is stored (duplicates of one `event_id` are stored once).
///
/// It also publishes jobs (with confirms) on a second connection, which does not reconnect:
/// publish before disrupting the broker.
pub struct EventLog {
    topology: Topology,
    queue: String,
    conn: Connection,
    publisher: ConfirmedPublisher,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("topology", &self.topology)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventLog {
    /// Declares `topology` and the collector's queue (`<prefix>.test-events.<random>`, durable,
    /// deleted by the broker after ten unused minutes; [`close`](Self::close) deletes it at
    /// once), then collects in the background.
    pub async fn start(env: &StackEnv, topology: &Topology) -> Result<Self> {
        Self::start_on(vec![env.get("PUSHFLEET_AMQP_URL")?], topology).await
    }

    /// Like [`start`](Self::start), on the nodes of a cluster: the publisher connects to the
    /// first node that answers, the collector reconnects to the next node when its node is
    /// lost, and its queue is a quorum queue (replicated, so no event is lost with a node).
    pub async fn start_on(urls: Vec<String>, topology: &Topology) -> Result<Self> {
        let secrets: Vec<SecretString> = urls
            .iter()
            .map(|u| SecretString::from(u.as_str()))
            .collect();
        let (conn, _) =
            pushfleet_worker::broker::connect_any(&secrets, 0, "pushfleet-faults publisher", None)
                .await?;
        let publisher = ConfirmedPublisher::open(&conn).await?;
        declare_topology(publisher.channel(), topology).await?;
        // One queue per collector: two collectors of one topology each see every event.
        let queue = format!(
            "{}.test-events.{}",
            topology.prefix(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
        if urls.len() > 1 {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        publisher
            .channel()
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        publisher
            .channel()
            .queue_bind(
                queue.as_str().into(),
                topology.events_exchange().as_str().into(),
                "job.*".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(collect(urls, queue.clone(), Arc::clone(&seen)));
        Ok(Self {
            topology: topology.clone(),
            queue,
            conn,
            publisher,
            seen,
            task,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes a job to the jobs exchange and waits for the broker's confirm.
    pub async fn publish_job(&self, job: &Value) -> Result<()> {
        self.publish_job_with_key(job, JOB_ROUTING_KEY).await
    }

    /// Publishes a job with `routing_key` (a pool's key: `job.<pool>`) and waits for the
    /// broker's confirm. The publish is mandatory: a key no queue is bound for is an error,
    /// not a job silently dropped.
    pub async fn publish_job_with_key(&self, job: &Value, routing_key: &str) -> Result<()> {
        let properties = BasicProperties::default().with_content_type("application/json".into());
        let confirm = self
            .publisher
            .channel()
            .basic_publish(
                self.topology.jobs_exchange().as_str().into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &serde_json::to_vec(job)?,
                properties.with_delivery_mode(2),
            )
            .await?
            .await?;
        let acked = confirm.is_ack();
        let returned = confirm.take_message().map(|m| m.reply_text.to_string());
        ensure!(
            acked && returned.is_none(),
            "the broker did not take the job with key {routing_key} (acked: {acked}, returned: {returned:?})"
        );
        Ok(())
    }

    /// Publishes `body` as it is, with `properties`, to the jobs exchange (default pool's
    /// key) and waits for the broker's confirm.
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) -> Result<()> {
        self.publisher
            .publish_raw(
                &self.topology.jobs_exchange(),
                JOB_ROUTING_KEY,
                body,
                properties,
            )
            .await?;
        Ok(())
    }

    /// The publishing connection (e.g. for a channel of a test's own).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Every event stored so far, in arrival order.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// How many consumer sessions the collector opened (1 without broker trouble) and the
    /// errors that ended the others.
    pub fn sessions(&self) -> (u32, Vec<String>) {
        let seen = self.lock();
        (seen.sessions, seen.errors.clone())
    }

    /// Waits until `done(events)` holds; fails after `limit`, describing `what`.
    pub async fn wait_until(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[Event]) -> bool,
    ) -> Result<Vec<Event>> {
        let deadline = tokio::time::Instant::now() + limit;
        // Subscribed before looking, so an event stored in between still wakes the wait.
        let mut stored = self.lock().stored.subscribe();
        loop {
            let events = self.events();
            if done(&events) {
                return Ok(events);
            }
            if tokio::time::timeout_at(deadline, stored.changed())
                .await
                .is_err()
            {
                bail!(
                    "{what}: not reached within {limit:?} ({} events seen)",
                    events.len()
                );
            }
        }
    }

    /// Waits until every job of `job_ids` has a terminal event.
    pub async fn wait_terminal(&self, job_ids: &[String], limit: Duration) -> Result<Vec<Event>> {
        let wanted: HashSet<&str> = job_ids.iter().map(String::as_str).collect();
        let result = self
            .wait_until(limit, "every job terminal", |events| {
                let done: HashSet<&str> = events
                    .iter()
                    .filter(|e| e.state.is_terminal())
                    .filter_map(|e| e.job_id.as_deref())
                    .filter(|id| wanted.contains(id))
                    .collect();
                done.len() == wanted.len()
            })
            .await;
        result.map_err(|e| {
            let out = outcome(&self.events(), job_ids);
            anyhow!("{e}; jobs without a terminal event: {:?}", out.lost)
        })
    }

    /// Takes every message of the dead-letter queue (acking them).
    pub async fn take_dead_letters(&self) -> Result<Vec<lapin::message::Delivery>> {
        let channel = self.conn.create_channel().await?;
        let mut dead = Vec::new();
        while let Some(got) = channel
            .basic_get(
                self.topology.dead_letter_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await?
        {
            dead.push(got.delivery);
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(dead)
    }

    /// How many messages wait in queue `name` (a passive declare).
    pub async fn queue_depth(&self, name: &str) -> Result<u32> {
        Ok(queue_counts(&self.conn, name).await?.messages)
    }

    /// Stops collecting, deletes the collector's queue and closes the publishing connection.
    pub async fn close(self) {
        self.task.abort();
        if let Ok(channel) = self.conn.create_channel().await {
            let _ = channel
                .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// What a passive declare says of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready in the queue.
    pub messages: u32,
    /// Consumers subscribed to it.
    pub consumers: u32,
}

/// Declares queue `name` passively on a new channel of `conn` and returns its counts.
pub async fn queue_counts(conn: &lapin::Connection, name: &str) -> Result<QueueCounts> {
    let channel = conn.create_channel().await?;
    let q = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let counts = QueueCounts {
        messages: q.message_count(),
        consumers: q.consumer_count(),
    };
    let _ = channel.close(200, "done".into()).await;
    Ok(counts)
}

/// Deletes every queue and exchange of topology `prefix`, with the delay queues (best effort,
/// on a fresh connection). RabbitMQ answers the deletion of a queue or exchange that does not
/// exist with success and keeps the channel open, so one channel serves them all.
pub async fn delete_topology(env: &StackEnv, prefix: &str) {
    delete_pool_queues(env, prefix, &[]).await;
}

/// [`delete_topology`] through the broker at `url` (e.g. a node of a cluster).
pub async fn delete_topology_on(url: &str, prefix: &str) {
    delete_topology_with_pools(url, prefix, &[]).await;
}

/// [`delete_topology`], and the queues of `pools` (each pool's queue and delay queues).
pub async fn delete_pool_queues(env: &StackEnv, prefix: &str, pools: &[&str]) {
    if let Ok(url) = env.get("PUSHFLEET_AMQP_URL") {
        delete_topology_with_pools(&url, prefix, pools).await;
    }
}

async fn delete_topology_with_pools(url: &str, prefix: &str, pools: &[&str]) {
    let Ok(conn) = connect(url, "pushfleet-tests cleanup").await else {
        return;
    };
    let Ok(channel) = conn.create_channel().await else {
        return;
    };
    let topology = Topology::new(prefix);
    let buckets = 0..=pushfleet_shared::topology::MAX_RETRY_BUCKET;
    let mut queues: Vec<String> = topology.queues().into_iter().map(|q| q.name).collect();
    // Delay queues are declared on first use, one per bucket.
    queues.extend(buckets.clone().map(|k| topology.retry_queue(k)));
    for pool in pools
        .iter()
        .filter_map(|p| pushfleet_shared::Pool::parse(p).ok())
    {
        queues.push(topology.pool_queue(&pool));
        queues.extend(buckets.clone().map(|k| topology.pool_retry_queue(&pool, k)));
    }
    for q in queues {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in topology.exchanges() {
        let _ = channel
            .exchange_delete(e.name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

async fn collect(urls: Vec<String>, queue: String, seen: Arc<Mutex<Seen>>) {
    for node in (0..urls.len()).cycle() {
        let error = collect_once(&urls[node], &queue, &seen).await;
        {
            let mut s = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.errors.push(format!("{error:#}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One consumer session; returns why it ended.
async fn collect_once(url: &str, queue: &str, seen: &Arc<Mutex<Seen>>) -> anyhow::Error {
    let conn = match connect(url, "pushfleet-faults events").await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let session = async {
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(500, BasicQosOptions { global: false })
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sessions += 1;
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                next = consumer.next() => {
                    let delivery = match next {
                        Some(d) => d?,
                        None => bail!("the consumer ended"),
                    };
                    if let Ok(event) = Event::from_slice(&delivery.data) {
                        let mut s = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        if s.ids.insert(event.event_id) {
                            s.events.push(event);
                            let stored = s.events.len();
                            s.stored.send_replace(stored);
                        }
                    }
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                _ = check.tick() => {
                    if !conn.status().connected() {
                        bail!("the connection is gone");
                    }
                }
            }
        }
    };
    let result: Result<()> = session.await;
    let _ = conn.close(200, "reconnecting".into()).await;
    match result {
        Ok(()) => anyhow!("the consumer session ended"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Outcomes

/// What happened to a set of jobs, from their events.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// How many jobs were published.
    pub jobs: usize,
    /// Jobs without any terminal event.
    pub lost: Vec<String>,
    /// Terminal events beyond the first, summed over the jobs.
    pub duplicates: usize,
    /// Jobs with more than one terminal event, with the states of those events.
    pub duplicate_jobs: BTreeMap<String, Vec<JobState>>,
    /// Jobs whose first terminal event is not `succeeded`, with its state and error code.
    pub not_succeeded: BTreeMap<String, String>,
    /// `accepted` events beyond one per job (redeliveries and retries).
    pub extra_accepts: usize,
    /// The number of attempts (`accepted` events) per job.
    pub attempts: BTreeMap<String, usize>,
    /// Jobs whose first `succeeded` event says `already_present` (a redelivered job whose
    /// push had already landed).
    pub already_present: usize,
}

impl Outcome {
    /// One line of figures.
    pub fn figures(&self) -> String {
        format!(
            "jobs={} lost={} duplicates={} (jobs with >1 terminal: {}) not_succeeded={} extra_accepted={} already_present={}",
            self.jobs,
            self.lost.len(),
            self.duplicates,
            self.duplicate_jobs.len(),
            self.not_succeeded.len(),
            self.extra_accepts,
            self.already_present
        )
    }
}

/// Sums up the events of `job_ids` (other jobs' events are ignored).
pub fn outcome(events: &[Event], job_ids: &[String]) -> Outcome {
    let mut per_job: BTreeMap<&str, Vec<&Event>> =
        job_ids.iter().map(|id| (id.as_str(), Vec::new())).collect();
    for e in events {
        if let Some(list) = e.job_id.as_deref().and_then(|id| per_job.get_mut(id)) {
            list.push(e);
        }
    }
    let mut out = Outcome {
        jobs: job_ids.len(),
        ..Default::default()
    };
    for (id, list) in per_job {
        let terminal: Vec<&Event> = list
            .iter()
            .copied()
            .filter(|e| e.state.is_terminal())
            .collect();
        let accepted = list
            .iter()
            .filter(|e| e.state == JobState::Accepted)
            .count();
        out.attempts.insert(id.to_owned(), accepted);
        out.extra_accepts += accepted.saturating_sub(1);
        match terminal.first() {
            None => out.lost.push(id.to_owned()),
            Some(first) if first.state != JobState::Succeeded => {
                let code = first
                    .error
                    .as_ref()
                    .map_or("-", |e| e.code.as_str())
                    .to_owned();
                out.not_succeeded
                    .insert(id.to_owned(), format!("{}/{code}", first.state.as_str()));
            }
            Some(first) => {
                if first.already_present == Some(true) {
                    out.already_present += 1;
                }
            }
        }
        if terminal.len() > 1 {
            out.duplicates += terminal.len() - 1;
            out.duplicate_jobs
                .insert(id.to_owned(), terminal.iter().map(|e| e.state).collect());
        }
    }
    out
}

/// A compact line per event of `job_id`: state, attempt, worker, time, code, digest.
pub fn describe_job(events: &[Event], job_id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.job_id.as_deref() == Some(job_id) && e.state != JobState::Progress)
        .map(|e| {
            format!(
                "{} {:<9} attempt={} worker={} code={} already_present={:?} digest={}",
                e.at,
                e.state.as_str(),
                e.attempt,
                e.worker,
                e.error.as_ref().map_or("-", |x| x.code.as_str()),
                e.already_present,
                e.digest.as_deref().unwrap_or("-")
            )
        })
        .collect()
}

/// Checks, for every job of `job_ids`, that all its `succeeded` events report one digest and
/// that the basic registry, asked directly, holds that digest under every reported target.
/// Returns how many tags were checked.
pub async fn verify_in_basic_registry(
    env: &StackEnv,
    events: &[Event],
    job_ids: &[String],
) -> Result<usize> {
    let host = env.get("PUSHFLEET_BASIC_REGISTRY")?;
    let base = format!("http://{host}");
    let auth = basic_auth(
        &env.get("PUSHFLEET_BASIC_USER")?,
        &env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?,
    );
    let mut checked = 0;
    for id in job_ids {
        let succeeded: Vec<&Event> = events
            .iter()
            .filter(|e| e.job_id.as_deref() == Some(id.as_str()) && e.state == JobState::Succeeded)
            .collect();
        let first = succeeded
            .first()
            .with_context(|| format!("job {id} has no succeeded event"))?;
        let digest = first
            .digest
            .as_deref()
            .with_context(|| format!("job {id}: succeeded without a digest"))?;
        if let Some(other) = succeeded
            .iter()
            .find(|e| e.digest.as_deref() != Some(digest))
        {
            bail!(
                "job {id}: two succeeded events with different digests: {digest} and {:?}",
                other.digest
            );
        }
        if first.targets.is_empty() {
            bail!("job {id}: succeeded without targets");
        }
        for target in &first.targets {
            let path = target
                .strip_prefix(&format!("{host}/"))
                .with_context(|| format!("job {id}: target {target} is not on {host}"))?;
            let (repository, tag) = path
                .rsplit_once(':')
                .with_context(|| format!("job {id}: target {target} has no tag"))?;
            let found = registry_digest(&base, repository, tag, &auth).await?;
            if found.as_deref() != Some(digest) {
                bail!(
                    "job {id}: the event reports {digest} for {target}, the registry holds {found:?}"
                );
            }
            checked += 1;
        }
    }
    Ok(checked)
}

/// Seconds between two wall-clock instants (`later - earlier`, negative if reversed).
pub fn seconds_between(earlier: SystemTime, later_unix_nanos: i128) -> f64 {
    let earlier = earlier
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let earlier = i128::try_from(earlier).unwrap_or(i128::MAX);
    // f64 precision is ample for test durations.
    (later_unix_nanos - earlier) as f64 / 1e9
}

// ---------------------------------------------------------------------------------------------
// Outages

/// A component of the stack taken down on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `deploy/local/stop.sh <name>`, undone by `deploy/local/start.sh <name>`.
    Component(&'static str),
    /// `rabbitmqctl stop_app`, undone by `rabbitmqctl start_app`.
    RabbitApp,
}

impl Fault {
    fn commands(self) -> ([String; 2], [String; 2]) {
        match self {
            Fault::Component(c) => (["stop.sh".into(), c.into()], ["start.sh".into(), c.into()]),
            Fault::RabbitApp => (
                ["rabbitmqctl.sh".into(), "stop_app".into()],
                ["rabbitmqctl.sh".into(), "start_app".into()],
            ),
        }
    }

    fn name(self) -> String {
        match self {
            Fault::Component(c) => c.to_owned(),
            Fault::RabbitApp => "rabbitmq-app".to_owned(),
        }
    }
}

/// How long a stack script may take.
pub const SCRIPT_LIMIT: Duration = Duration::from_secs(120);

/// An outage of one stack component. [`Outage::end`] brings it back; when the outage is dropped
/// without that (a failed or timed-out test), `Drop` brings it back synchronously, so the stack
/// is always restored for the tests that follow.
#[derive(Debug)]
pub struct Outage {
    fault: Fault,
    deploy: PathBuf,
    log: PathBuf,
    ended: bool,
    /// When the stop command was issued.
    pub began: Instant,
}

impl Outage {
    /// Takes the component down (the stop script's output goes to `logs`).
    pub async fn begin(env: &StackEnv, logs: &Logs, fault: Fault) -> Result<Self> {
        let deploy = PathBuf::from(env.get("PUSHFLEET_DEPLOY_DIR")?);
        let outage = Self {
            fault,
            deploy,
            log: logs.fresh(&format!("stack-{}", fault.name()), "log"),
            ended: false,
            began: Instant::now(),
        };
        // A failure here drops `outage`, which restores the component.
        let (stop, _) = fault.commands();
        outage.script(&stop).await?;
        Ok(outage)
    }

    async fn script(&self, args: &[String; 2]) -> Result<Duration> {
        let start = Instant::now();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let err = out.try_clone()?;
        let mut child = Command::new("bash")
            .arg(self.deploy.join(&args[0]))
            .arg(&args[1])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", args.join(" ")))?;
        let status = tokio::time::timeout(SCRIPT_LIMIT, child.wait())
            .await
            .map_err(|_| anyhow!("{} took longer than {SCRIPT_LIMIT:?}", args.join(" ")))??;
        if !status.success() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("{} failed ({status}):\n{text}", args.join(" "));
        }
        Ok(start.elapsed())
    }

    /// Brings the component back; returns how long the start command took.
    pub async fn end(mut self) -> Result<Duration> {
        let (_, start) = self.fault.commands();
        let took = self.script(&start).await;
        // Even if it failed, Drop would only run the same command again.
        self.ended = true;
        took
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (_, start) = self.fault.commands();
        eprintln!(
            "restoring the stack after a failed test: {}",
            start.join(" ")
        );
        let status = std::process::Command::new("timeout")
            .arg(SCRIPT_LIMIT.as_secs().to_string())
            .arg("bash")
            .arg(self.deploy.join(&start[0]))
            .arg(&start[1])
            .stdin(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => eprintln!(
                "COULD NOT RESTORE {} ({other:?}): run deploy/local/start.sh by hand",
                self.fault.name()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Images

/// Creates a one-layer image of `bytes` pseudo-random (incompressible) bytes in the stack's
/// daemon, tagged as `reference` (`name:tag`), so that pushing it takes a while.
pub async fn make_large_image(
    docker: &bollard::Docker,
    reference: &str,
    bytes: usize,
) -> Result<String> {
    let seed = uuid::Uuid::new_v4().as_u128();
    let mut state = u64::try_from(seed & u128::from(u64::MAX)).unwrap_or(1) | 1;
    let mut content = Vec::with_capacity(bytes + 8);
    while content.len() < bytes {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        content.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    content.truncate(bytes);
    crate::fleet::import_file_image(docker, reference, "pushfleet-large.bin", &content).await
}

/// Removes images by id from the stack's daemon, with every tag (best effort).
pub async fn remove_images(docker: &bollard::Docker, ids: &[String]) {
    for id in ids {
        let options = bollard::query_parameters::RemoveImageOptions {
            force: true,
            noprune: false,
            ..Default::default()
        };
        let _ = docker.remove_image(id, Some(options), None).await;
    }
}
