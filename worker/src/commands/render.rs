//! How the CLI shows events to a person: one readable line per state, a live progress bar
//! (bytes and rate) while a push runs on a terminal, and a last line with the digest, or the
//! error code, message and hint. `--json` prints the events as they come, one per line, for
//! scripts; output that is not a terminal gets the plain lines and no bar.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pushfleet_shared::event::{Event, JobState, TagPath};

/// How events are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// The events as JSON, one per line.
    Json,
    /// Readable lines; progress as a line now and then.
    Plain,
    /// Readable lines and a live progress bar.
    Terminal,
}

impl Style {
    /// `Json` when asked for, else `Terminal` when standard output is one, else `Plain`.
    pub fn choose(json: bool) -> Self {
        if json {
            Style::Json
        } else if std::io::stdout().is_terminal() {
            Style::Terminal
        } else {
            Style::Plain
        }
    }
}

/// Prints a stream of events in one [`Style`].
#[derive(Debug)]
pub struct Renderer {
    style: Style,
    /// The live bar of a running push (terminal only).
    bar: Option<ProgressBar>,
    /// With `Plain`: the last progress printed, to print at most every 10%.
    last_tenth: Option<u64>,
    /// Whether lines start with the job id (when following many jobs).
    with_job_id: bool,
}

impl Renderer {
    /// A renderer in `style`; `with_job_id` for streams of many jobs (`pushfleet events`).
    pub fn new(style: Style, with_job_id: bool) -> Self {
        Self {
            style,
            bar: None,
            last_tenth: None,
            with_job_id,
        }
    }

    /// Shows one event.
    pub fn show(&mut self, event: &Event) {
        match self.style {
            Style::Json => println!("{}", String::from_utf8_lossy(&event.to_json())),
            Style::Plain | Style::Terminal => {
                if event.state == JobState::Progress {
                    self.progress(event);
                    return;
                }
                self.finish_bar();
                for line in lines(event, self.with_job_id) {
                    println!("{line}");
                }
            }
        }
    }

    /// Ends a live bar, if one is drawn (before other output).
    pub fn finish_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.last_tenth = None;
    }

    fn progress(&mut self, event: &Event) {
        let Some(p) = &event.progress else {
            return;
        };
        match self.style {
            Style::Terminal => {
                let bar = self.bar.get_or_insert_with(|| {
                    let bar = ProgressBar::with_draw_target(
                        Some(p.bytes_total),
                        ProgressDrawTarget::stdout(),
                    );
                    bar.set_style(
                        ProgressStyle::with_template(
                            "  {msg:<9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.enable_steady_tick(Duration::from_millis(200));
                    bar
                });
                bar.set_message(p.phase.clone());
                bar.set_length(p.bytes_total.max(p.bytes_done));
                bar.set_position(p.bytes_done);
            }
            Style::Plain => {
                let tenth = (p.bytes_done * 10).checked_div(p.bytes_total).unwrap_or(0);
                if self.last_tenth != Some(tenth) {
                    self.last_tenth = Some(tenth);
                    println!(
                        "{}{:<10} {} of {}",
                        self.prefix(event),
                        p.phase,
                        bytes(p.bytes_done),
                        bytes(p.bytes_total)
                    );
                }
            }
            Style::Json => {}
        }
    }

    fn prefix(&self, event: &Event) -> String {
        if self.with_job_id {
            format!("{} ", event.job_id.as_deref().unwrap_or("-"))
        } else {
            String::new()
        }
    }
}

/// The readable lines of an event that is not `progress`.
pub fn lines(event: &Event, with_job_id: bool) -> Vec<String> {
    let id = if with_job_id {
        format!("{} ", event.job_id.as_deref().unwrap_or("-"))
    } else {
        String::new()
    };
    let state = event.state.as_str();
    let targets = event.targets.join(", ");
    let mut out = Vec::new();
    match event.state {
        JobState::Accepted => out.push(format!(
            "{id}{state:<10} by {} (attempt {}): {} -> {}",
            event.worker,
            event.attempt,
            event.source.as_deref().unwrap_or("?"),
            if targets.is_empty() { "?" } else { &targets },
        )),
        JobState::Succeeded => {
            let digest = event.digest.as_deref().unwrap_or("?");
            let took = event
                .phases
                .as_ref()
                .and_then(|p| p.total_ms)
                .map(|ms| format!(" in {}", seconds(ms)))
                .unwrap_or_default();
            let how = match (event.path, &event.copy) {
                (Some(TagPath::Copy), Some(c)) => format!(
                    " (copied from registry {}: {} blobs streamed, {} mounted, {} already there)",
                    c.source_registry, c.blobs_streamed, c.blobs_mounted, c.blobs_skipped
                ),
                (Some(TagPath::Noop), _) => " (already there: nothing pushed)".to_owned(),
                (Some(TagPath::Retag), _) => " (tagged in the registry: nothing pushed)".to_owned(),
                _ if event.already_present == Some(true) => {
                    " (already there: nothing pushed)".to_owned()
                }
                _ => String::new(),
            };
            out.push(format!("{id}{state:<10} {digest}{took}{how}"));
            if !targets.is_empty() {
                out.push(format!("{id}{:<10} {targets}", ""));
            }
        }
        JobState::Retrying | JobState::Failed | JobState::Dead => {
            if let Some(e) = &event.error {
                let mut first = format!("{id}{state:<10} {}: {}", e.code.as_str(), e.message);
                if let Some(r) = &event.retry {
                    first.push_str(&format!(
                        "; attempt {} in {}",
                        r.next_attempt,
                        seconds(r.delay_ms)
                    ));
                }
                out.push(first);
                if !e.hint.is_empty() {
                    out.push(format!("{id}{:<10} hint: {}", "", e.hint));
                }
            } else {
                out.push(format!("{id}{state}"));
            }
        }
        JobState::Progress => {}
    }
    out
}

/// `1.23 s` or `850 ms`.
fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

/// `12.3 MiB`, `512 B`.
fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushfleet_shared::ErrorCode;
    use pushfleet_shared::event::{EventError, PhaseTimings, RetryInfo};

    fn event(state: JobState) -> Event {
        let mut e = Event::new(state, Some("job-1".into()), 1, "w1");
        e.source = Some("docker.io/library/myapp:0722".into());
        e.targets = vec!["reg.example.com/production/myapp:0722".into()];
        e
    }

    #[test]
    fn each_state_reads_as_a_sentence() {
        let accepted = lines(&event(JobState::Accepted), false);
        assert_eq!(
            accepted,
            [
                "accepted   by w1 (attempt 1): docker.io/library/myapp:0722 -> reg.example.com/production/myapp:0722"
            ]
        );

        let mut done = event(JobState::Succeeded);
        done.digest = Some("sha256:abc".into());
        done.phases = Some(PhaseTimings {
            total_ms: Some(1234),
            ..PhaseTimings::default()
        });
        assert_eq!(
            lines(&done, true),
            [
                "job-1 succeeded  sha256:abc in 1.23 s",
                "job-1            reg.example.com/production/myapp:0722"
            ]
        );

        let mut copied = event(JobState::Succeeded);
        copied.digest = Some("sha256:abc".into());
        copied.path = Some(TagPath::Copy);
        copied.copy = Some(pushfleet_shared::event::CopyInfo {
            source_registry: "ci".into(),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            children: Vec::new(),
            blobs_skipped: 1,
            blobs_mounted: 0,
            blobs_streamed: 3,
            bytes_total: 10,
            bytes_streamed: 8,
        });
        assert_eq!(
            lines(&copied, false)[0],
            "succeeded  sha256:abc (copied from registry ci: 3 blobs streamed, 0 mounted, 1 already there)"
        );

        let mut failed = event(JobState::Failed);
        failed.error = Some(EventError::new(
            ErrorCode::RegistryAuthFailed,
            "registry `harbor`: login failed",
            "check the password",
        ));
        assert_eq!(
            lines(&failed, false),
            [
                "failed     registry_auth_failed: registry `harbor`: login failed",
                "           hint: check the password"
            ]
        );

        let mut retrying = event(JobState::Retrying);
        retrying.error = Some(EventError::new(
            ErrorCode::RegistryUnreachable,
            "GET /v2/: refused",
            "",
        ));
        retrying.retry = Some(RetryInfo {
            delay_ms: 5200,
            next_attempt: 2,
            next_attempt_at: time::OffsetDateTime::UNIX_EPOCH,
        });
        assert_eq!(
            lines(&retrying, false),
            ["retrying   registry_unreachable: GET /v2/: refused; attempt 2 in 5.20 s"]
        );
    }
}
