//! `pushfleet events`: follows the events exchange live, as `tail -f` would, through a private
//! queue that disappears with the command; filters by job id, state and registry; readable
//! lines, or `--json`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use futures_util::StreamExt;
use pushfleet_shared::event::{Event, JobState};

use super::render::{Renderer, Style};
use crate::broker;
use crate::config;

/// What to follow.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The configuration file (for the broker address and the topology prefix).
    #[arg(short, long, env = "PUSHFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Only this job's events (repeatable).
    #[arg(long = "job-id")]
    job_ids: Vec<String>,
    /// Only events in this state (repeatable): accepted, progress, retrying, succeeded,
    /// failed, dead.
    #[arg(long = "state", value_parser = parse_state)]
    states: Vec<JobState>,
    /// Only events of jobs for this registry (its catalogue key; repeatable).
    #[arg(long = "registry")]
    registries: Vec<String>,
    /// Print the events as JSON, one per line.
    #[arg(long)]
    json: bool,
    /// Exit after this many matching events.
    #[arg(long)]
    max_events: Option<u64>,
}

fn parse_state(s: &str) -> Result<JobState, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        format!("unknown state {s:?} (accepted, progress, retrying, succeeded, failed, dead)")
    })
}

impl EventsArgs {
    fn wants(&self, event: &Event) -> bool {
        (self.job_ids.is_empty()
            || event
                .job_id
                .as_ref()
                .is_some_and(|id| self.job_ids.contains(id)))
            && (self.states.is_empty() || self.states.contains(&event.state))
            && (self.registries.is_empty()
                || event
                    .registry
                    .as_ref()
                    .is_some_and(|r| self.registries.contains(r)))
    }

    /// The binding key: one state's key when a single state is asked for, else every event.
    fn binding_key(&self) -> String {
        match self.states.as_slice() {
            [one] => format!("job.{}", one.as_str()),
            _ => "job.*".to_owned(),
        }
    }
}

/// Runs `pushfleet events` until interrupted, or until `--max-events` matched.
pub async fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let config = match config::load(args.config.as_deref(), None) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let topology = config.amqp.topology();
    let conn = super::connect_broker(&config, "pushfleet events").await?;
    let channel = conn.create_channel().await?;
    let mut consumer =
        broker::subscribe_exclusive(&channel, &topology.events_exchange(), &args.binding_key())
            .await?;
    eprintln!("following {} (Ctrl-C to stop)", topology.events_exchange());
    let mut renderer = Renderer::new(Style::choose(args.json), args.job_ids.len() != 1);
    let mut shown = 0;
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            _ = tokio::signal::ctrl_c() => {
                renderer.finish_bar();
                return Ok(ExitCode::SUCCESS);
            }
        };
        let delivery = match next {
            None => bail!("the broker closed the event stream"),
            Some(d) => d?,
        };
        let Ok(event) = Event::from_slice(&delivery.data) else {
            continue;
        };
        if !args.wants(&event) {
            continue;
        }
        renderer.show(&event);
        shown += 1;
        if args.max_events.is_some_and(|max| shown >= max) {
            renderer.finish_bar();
            return Ok(ExitCode::SUCCESS);
        }
    }
}
