//! Prometheus metrics, served as OpenMetrics text on the health listener's `/metrics`.
//!
//! Names follow Prometheus conventions: base units (seconds, bytes), `_total` on counters, and
//! labels of small, bounded sets only (outcome, error code, phase, registry key, status
//! class): never job ids, repositories, tags or digests.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `pushfleet_jobs_total` | counter | `outcome` (succeeded, failed, dead, retrying), `code` (error code; empty on success) |
//! | `pushfleet_job_duration_seconds` | histogram | `outcome` |
//! | `pushfleet_phase_duration_seconds` | histogram | `phase` (resolve, preflight, retag, tag, push, verify, untag) |
//! | `pushfleet_queue_wait_seconds` | histogram | - (publish time, the AMQP `timestamp`, to start) |
//! | `pushfleet_jobs_in_progress` | gauge | - |
//! | `pushfleet_pushed_bytes_total` | counter | - |
//! | `pushfleet_tags_total` | counter | `path` (push, retag, noop): how each target tag of a succeeded job got there |
//! | `pushfleet_registry_requests_total` | counter | `registry` (catalogue key), `class` (2xx, 3xx, 4xx, 5xx, error) |
//! | `pushfleet_preflight_total` | counter | `cache` (hit, miss) |
//! | `pushfleet_broker_connected` | gauge | - (1 while a broker session is open) |
//! | `pushfleet_broker_reconnects_total` | counter | - |
//! | `pushfleet_build_info` | info | `version` |

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use pushfleet_shared::event::{PhaseTimings, TagPath};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket bounds of job and phase durations: a retag takes tens of milliseconds, a large push
/// up to the 30-minute time limit.
const DURATION_BUCKETS: [f64; 17] = [
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0,
    1200.0, 1800.0,
];
/// Bucket bounds of queue waits (the AMQP timestamp has whole seconds).
const WAIT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    outcome: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    registry: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of one worker process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    job_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    phase_duration: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    queue_wait: Histogram,
    in_progress: Gauge,
    pushed_bytes: Counter,
    tags: Family<PathLabels, Counter>,
    registry_requests: RegistryRequests,
    preflight: Family<CacheLabels, Counter>,
    broker_connected: Gauge,
    broker_reconnects: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register(
            "pushfleet_jobs",
            "Job attempts by outcome and error code",
            jobs.clone(),
        );
        let job_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "pushfleet_job_duration",
            "Time from the start of an attempt to its outcome",
            Unit::Seconds,
            job_duration.clone(),
        );
        let phase_duration: Family<PhaseLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "pushfleet_phase_duration",
            "Time spent in each stage of a job",
            Unit::Seconds,
            phase_duration.clone(),
        );
        let queue_wait = Histogram::new(WAIT_BUCKETS);
        registry.register_with_unit(
            "pushfleet_queue_wait",
            "Time from a job's publication (its AMQP timestamp) to the start of an attempt",
            Unit::Seconds,
            queue_wait.clone(),
        );
        let in_progress = Gauge::default();
        registry.register(
            "pushfleet_jobs_in_progress",
            "Jobs this worker is running",
            in_progress.clone(),
        );
        let pushed_bytes = Counter::default();
        registry.register_with_unit(
            "pushfleet_pushed",
            "Bytes uploaded by the daemon for this worker's pushes (approximate)",
            Unit::Bytes,
            pushed_bytes.clone(),
        );
        let tags = Family::<PathLabels, Counter>::default();
        registry.register(
            "pushfleet_tags",
            "Target tags of succeeded jobs, by how they got there: daemon push, registry-side retag, or already in place",
            tags.clone(),
        );
        let registry_requests = RegistryRequests::default();
        registry.register(
            "pushfleet_registry_requests",
            "HTTP requests of the worker's own registry client, by registry and status class",
            registry_requests.0.clone(),
        );
        let preflight = Family::<CacheLabels, Counter>::default();
        registry.register(
            "pushfleet_preflight",
            "Push-rights checks, answered from the cache or not",
            preflight.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register(
            "pushfleet_broker_connected",
            "1 while a broker session is open",
            broker_connected.clone(),
        );
        let broker_reconnects = Counter::default();
        registry.register(
            "pushfleet_broker_reconnects",
            "Broker sessions opened after a lost one",
            broker_reconnects.clone(),
        );
        registry.register(
            "pushfleet_build",
            "The worker's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry,
            jobs,
            job_duration,
            phase_duration,
            queue_wait,
            in_progress,
            pushed_bytes,
            tags,
            registry_requests,
            preflight,
            broker_connected,
            broker_reconnects,
        }
    }
}

impl Metrics {
    /// Everything, as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing into a String cannot fail; an empty answer is all that is left.
            out.clear();
        }
        out
    }

    /// Counts an attempt's outcome (`succeeded`, `failed`, `dead`, `retrying`) with its error
    /// code (`""` on success) and how long it took, when known.
    pub fn job_finished(&self, outcome: &str, code: &str, took: Option<Duration>) {
        self.jobs
            .get_or_create(&JobLabels {
                outcome: outcome.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        if let Some(took) = took {
            self.job_duration
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.to_owned(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// Records the stage timings of an attempt.
    pub fn phases(&self, phases: &PhaseTimings) {
        let stages = [
            ("resolve", phases.resolve_ms),
            ("preflight", phases.preflight_ms),
            ("retag", phases.retag_ms),
            ("tag", phases.tag_ms),
            ("push", phases.push_ms),
            ("copy", phases.copy_ms),
            ("verify", phases.verify_ms),
            ("untag", phases.untag_ms),
        ];
        for (phase, ms) in stages {
            if let Some(ms) = ms {
                self.phase_duration
                    .get_or_create(&PhaseLabels { phase })
                    .observe(Duration::from_millis(ms).as_secs_f64());
            }
        }
    }

    /// Records how long a job waited in the queue, from its AMQP timestamp (seconds).
    pub fn queue_wait(&self, published_at_s: u64, now_s: u64) {
        self.queue_wait
            .observe(now_s.saturating_sub(published_at_s) as f64);
    }

    /// Marks a job as running until the returned guard is dropped.
    pub fn job_started(self: &Arc<Self>) -> InProgress {
        self.in_progress.inc();
        InProgress(Arc::clone(self))
    }

    /// Adds uploaded bytes.
    pub fn pushed(&self, bytes: u64) {
        self.pushed_bytes.inc_by(bytes);
    }

    /// Counts the target tags of a succeeded job by path.
    pub fn tags(&self, paths: impl IntoIterator<Item = TagPath>) {
        for path in paths {
            self.tags
                .get_or_create(&PathLabels {
                    path: path.as_str(),
                })
                .inc();
        }
    }

    /// The counter registry clients record their requests into.
    pub fn registry_requests(&self) -> RegistryRequests {
        self.registry_requests.clone()
    }

    /// Counts a push-rights check answered from the cache (`true`) or not.
    pub fn preflight(&self, cached: bool) {
        let cache = if cached { "hit" } else { "miss" };
        self.preflight.get_or_create(&CacheLabels { cache }).inc();
    }

    /// Records that a broker session opened (`reconnect`: after a lost one) or was lost.
    pub fn broker_session(&self, open: bool, reconnect: bool) {
        self.broker_connected.set(i64::from(open));
        if open && reconnect {
            self.broker_reconnects.inc();
        }
    }
}

/// Keeps `pushfleet_jobs_in_progress` up while a job runs.
#[derive(Debug)]
pub struct InProgress(Arc<Metrics>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.dec();
    }
}

/// `pushfleet_registry_requests_total`, handed to each registry client.
#[derive(Debug, Clone, Default)]
pub struct RegistryRequests(Family<RequestLabels, Counter>);

impl RegistryRequests {
    /// Counts one request to `registry` (catalogue key) that got HTTP `status`, or none
    /// (`None`: no answer).
    pub fn record(&self, registry: &str, status: Option<u16>) {
        let class = match status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) | None => "error",
        };
        self.0
            .get_or_create(&RequestLabels {
                registry: registry.to_owned(),
                class,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_every_family_with_prometheus_names() {
        let metrics = Arc::new(Metrics::default());
        metrics.job_finished("succeeded", "", Some(Duration::from_millis(120)));
        metrics.job_finished("failed", "namespace_not_allowed", None);
        metrics.phases(&PhaseTimings {
            push_ms: Some(80),
            ..PhaseTimings::default()
        });
        metrics.queue_wait(100, 103);
        metrics.pushed(2048);
        metrics.tags([TagPath::Push, TagPath::Retag, TagPath::Retag]);
        metrics.registry_requests().record("harbor", Some(401));
        metrics.registry_requests().record("harbor", None);
        metrics.preflight(true);
        metrics.broker_session(true, false);
        let running = metrics.job_started();
        let text = metrics.encode();
        for line in [
            "pushfleet_jobs_total{outcome=\"succeeded\",code=\"\"} 1",
            "pushfleet_jobs_total{outcome=\"failed\",code=\"namespace_not_allowed\"} 1",
            "pushfleet_job_duration_seconds_count{outcome=\"succeeded\"} 1",
            "pushfleet_phase_duration_seconds_bucket{le=\"0.1\",phase=\"push\"} 1",
            "pushfleet_queue_wait_seconds_sum 3.0",
            "pushfleet_jobs_in_progress 1",
            "pushfleet_pushed_bytes_total 2048",
            "pushfleet_tags_total{path=\"retag\"} 2",
            "pushfleet_tags_total{path=\"push\"} 1",
            "pushfleet_registry_requests_total{registry=\"harbor\",class=\"4xx\"} 1",
            "pushfleet_registry_requests_total{registry=\"harbor\",class=\"error\"} 1",
            "pushfleet_preflight_total{cache=\"hit\"} 1",
            "pushfleet_broker_connected 1",
            "pushfleet_broker_reconnects_total 0",
            "pushfleet_build_info{version=\"",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        drop(running);
        assert!(metrics.encode().contains("pushfleet_jobs_in_progress 0"));
    }
}
