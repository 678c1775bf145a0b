//! Metrics as operators get them: a real Prometheus (Debian's package, installed by the
//! stack's start script) scrapes a worker process under load, and PromQL through its HTTP API
//! must give back the counts the test knows. The shipped alert rules pass `promtool check
//! rules` and their unit test, and the Grafana dashboard only queries metrics that exist.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pushfleet_shared::event::JobState;
use pushfleet_shared::topology::Topology;
use pushfleet_tests::fleet::{base_registries, make_image};
use pushfleet_tests::process::{
    EventLog, Logs, WorkerProcess, WorkerSettings, delete_topology, job_json, worker_toml,
};
use pushfleet_tests::{StackEnv, docker, unique};

/// How long Prometheus may take to start, and to show a scraped value.
const WITHIN: Duration = Duration::from_secs(60);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn tool(name: &str) -> Result<PathBuf> {
    let path = PathBuf::from("/usr/bin").join(name);
    ensure!(
        path.is_file(),
        "{} is missing: deploy/local/start.sh installs Debian's prometheus package",
        path.display()
    );
    Ok(path)
}

/// A Prometheus server on loopback scraping one target every second.
struct Prometheus {
    base: String,
    client: reqwest::Client,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: pushfleet\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = tokio::process::Command::new(tool("prometheus")?)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting prometheus")?;
        let this = Self {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder().no_proxy().build()?,
            _child: child,
            _dir: dir,
        };
        let deadline = Instant::now() + WITHIN;
        loop {
            let ready = this
                .client
                .get(format!("{}/-/ready", this.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(this);
            }
            if Instant::now() > deadline {
                bail!("prometheus did not get ready within {WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of an instant `query` that yields one sample, or `None` for no sample.
    async fn value(&self, query: &str) -> Result<Option<f64>> {
        let answer: serde_json::Value = self
            .client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", query)])
            .send()
            .await?
            .json()
            .await?;
        ensure!(answer["status"] == "success", "{query}: {answer}");
        let result = answer["data"]["result"].as_array().context("no result")?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => Ok(one["value"][1].as_str().and_then(|v| v.parse::<f64>().ok())),
            more => bail!("{query}: {} samples", more.len()),
        }
    }

    /// Waits (scrapes come every second) until `query` gives `expected`.
    async fn expect(&self, query: &str, expected: f64) -> Result<()> {
        let deadline = Instant::now() + WITHIN;
        loop {
            let got = self.value(query).await?;
            if got == Some(expected) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{query} = {got:?}, expected {expected} (after {WITHIN:?})");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_counts_of_a_loaded_worker() -> Result<()> {
    let env = StackEnv::load()?;
    let logs = Logs::new("metrics")?;
    let prefix = unique("t-metrics");
    let events = EventLog::start(&env, &Topology::new(&prefix)).await?;
    let id = format!("{prefix}-w");
    let toml = worker_toml(
        &env,
        &prefix,
        &id,
        WorkerSettings::default(),
        &base_registries(&env)?,
    )?;
    let mut worker = WorkerProcess::spawn(&logs, &id, &toml).await?;
    worker.wait_ready(WITHIN).await?;
    let prometheus = Prometheus::start(worker.health).await?;

    const GOOD: usize = 12;
    const REFUSED: usize = 3;
    let name = unique("metrics");
    let image = format!("{name}:1");
    make_image(&docker(&env)?, &[&image]).await?;
    let mut ids = Vec::new();
    for i in 0..GOOD {
        let job_id = format!("{prefix}-ok-{i}");
        let tag = format!("t{i}");
        events
            .publish_job(&job_json(
                &job_id,
                &image,
                "basic",
                &format!("production/{name}"),
                &[&tag],
            ))
            .await?;
        ids.push(job_id);
    }
    for i in 0..REFUSED {
        let job_id = format!("{prefix}-no-{i}");
        events
            .publish_job(&job_json(&job_id, &image, "basic", "elsewhere/x", &["1"]))
            .await?;
        ids.push(job_id);
    }
    let seen = events.wait_terminal(&ids, WITHIN).await?;
    let succeeded = seen
        .iter()
        .filter(|e| e.state == JobState::Succeeded)
        .count();
    ensure!(succeeded == GOOD, "{succeeded} of {GOOD} succeeded");

    let result = async {
        let up = format!("up{{instance=\"{}\"}}", worker.health);
        prometheus.expect(&up, 1.0).await?;
        let good = GOOD as f64;
        prometheus
            .expect(r#"sum(pushfleet_jobs_total{outcome="succeeded"})"#, good)
            .await?;
        prometheus
            .expect(
                r#"sum(pushfleet_jobs_total{outcome="failed",code="namespace_not_allowed"})"#,
                REFUSED as f64,
            )
            .await?;
        prometheus
            .expect(
                r#"sum(pushfleet_job_duration_seconds_count{outcome="succeeded"})"#,
                good,
            )
            .await?;
        // Every good job has a new tag of one image: the first ones are pushed by the daemon,
        // those started once the repository holds the image are written registry-side.
        prometheus
            .expect(
                r#"sum(pushfleet_tags_total{path=~"push|retag"})"#,
                good,
            )
            .await?;
        let pushed = prometheus
            .value(r#"sum(pushfleet_phase_duration_seconds_count{phase="push"})"#)
            .await?
            .unwrap_or(0.0);
        let retagged = prometheus
            .value(r#"sum(pushfleet_tags_total{path="retag"})"#)
            .await?
            .unwrap_or(0.0);
        ensure!(
            pushed >= 1.0 && retagged >= 1.0 && pushed + retagged >= good,
            "{pushed} pushes and {retagged} registry-side tags for {GOOD} jobs"
        );
        prometheus.expect("pushfleet_jobs_in_progress", 0.0).await?;
        prometheus.expect("pushfleet_broker_connected", 1.0).await?;
        prometheus
            .expect("pushfleet_broker_reconnects_total", 0.0)
            .await?;
        prometheus
            .expect("count(pushfleet_build_info)", 1.0)
            .await?;
        // Every job of the worker's own client went to `basic` and was answered.
        let requests = prometheus
            .value(r#"sum(pushfleet_registry_requests_total{registry="basic",class="2xx"})"#)
            .await?
            .unwrap_or(0.0);
        ensure!(requests >= good, "{requests} 2xx registry requests for {GOOD} jobs");
        let hits = prometheus
            .value(r#"sum(pushfleet_preflight_total)"#)
            .await?
            .unwrap_or(0.0);
        ensure!(hits == good, "{hits} preflights for {GOOD} pushed jobs");
        println!(
            "prometheus: {GOOD} succeeded, {REFUSED} namespace_not_allowed, {requests} registry 2xx answers"
        );
        Ok(())
    }
    .await;
    let _ = worker.terminate().await;
    events.close().await;
    if result.is_err() {
        logs.dump(30);
    } else {
        logs.remove();
    }
    delete_topology(&env, &prefix).await;
    result
}

#[test]
fn the_alert_rules_check_and_pass_their_unit_test() -> Result<()> {
    let promtool = tool("promtool")?;
    let dir = deploy_dir().join("prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()?;
        ensure!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Every `pushfleet_*` name a panel or rule queries is one the worker exports.
#[test]
fn dashboards_and_rules_query_only_exported_metrics() -> Result<()> {
    // Label families appear once they have a member: give each one.
    let metrics = pushfleet_worker::metrics::Metrics::default();
    metrics.job_finished("succeeded", "", Some(Duration::from_millis(10)));
    metrics.phases(&pushfleet_shared::event::PhaseTimings {
        push_ms: Some(10),
        ..Default::default()
    });
    metrics.registry_requests().record("r", Some(200));
    metrics.preflight(false);
    let exported = metrics.encode();
    let mut names = BTreeSet::new();
    for line in exported.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => names.insert(format!("{name}_total")),
            "histogram" => {
                for suffix in ["_bucket", "_count", "_sum"] {
                    names.insert(format!("{name}{suffix}"));
                }
                true
            }
            "info" => names.insert(format!("{name}_info")),
            _ => names.insert(name.to_owned()),
        };
    }
    let dashboard = std::fs::read_to_string(deploy_dir().join("grafana/pushfleet.json"))?;
    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yml"))?;
    let parsed: serde_json::Value = serde_json::from_str(&dashboard)?;
    ensure!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let mut used = BTreeSet::new();
    for text in [&dashboard, &rules] {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("pushfleet_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            used.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    ensure!(used.len() >= 8, "only {used:?} found");
    let unknown: Vec<&String> = used.difference(&names).collect();
    ensure!(
        unknown.is_empty(),
        "not exported: {unknown:?} (exported: {names:?})"
    );
    Ok(())
}
