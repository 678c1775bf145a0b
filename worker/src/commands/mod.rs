//! The binary's commands, one function (or module) each, returning an exit code.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use pushfleet_shared::Pool;
use pushfleet_shared::schema::schema_files;
use pushfleet_shared::topology::Topology;

use crate::config;

pub mod check_registries;
pub mod events;
pub mod health;
pub mod render;
pub mod submit;
pub mod worker;

/// `pushfleet check-config`: loads and validates the configuration without network I/O and
/// prints it redacted, or prints every problem with the key that causes it.
pub fn check_config(file: Option<&Path>) -> anyhow::Result<ExitCode> {
    match config::load(file, None) {
        Ok(config) => {
            println!("{}", config.describe());
            println!("configuration OK");
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Connects a command to the first broker node of the configuration that answers; the
/// connection is named `name` (shown in the management UI).
pub(crate) async fn connect_broker(
    config: &config::Config,
    name: &str,
) -> anyhow::Result<lapin::Connection> {
    let urls = config
        .amqp
        .urls_with_password()
        .context("amqp.password_file")?;
    let (conn, _) = crate::broker::connect_any(&urls, 0, name, None)
        .await
        .with_context(|| format!("cannot reach the broker at {}", config.amqp.nodes()))?;
    Ok(conn)
}

/// `pushfleet cancel`: asks every worker to cancel `job_id` (queued or running).
pub async fn cancel(file: Option<&Path>, job_id: &str) -> anyhow::Result<ExitCode> {
    let config = match config::load(file, None) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let topology = config.amqp.topology();
    let conn = connect_broker(&config, "pushfleet cancel").await?;
    let publisher = crate::broker::ConfirmedPublisher::open(&conn).await?;
    crate::broker::declare_topology(publisher.channel(), &topology).await?;
    let message = pushfleet_shared::control::ControlMessage::cancel(job_id);
    publisher
        .publish_raw(
            &topology.control_exchange(),
            "",
            &message.to_json(),
            crate::broker::json(Default::default()),
        )
        .await?;
    eprintln!(
        "asked every worker to cancel job {job_id} (kept for {} in {}: workers that start later \
         honour it too)",
        pushfleet_shared::topology::CONTROL_MAX_AGE,
        topology.control_queue()
    );
    let _ = conn.close(200, "done".into()).await;
    Ok(ExitCode::SUCCESS)
}

/// `pushfleet schemas`: prints the schemas, or writes them into `dir`.
pub fn schemas(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    for (name, text) in schema_files() {
        match dir {
            Some(dir) => {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            None => print!("{text}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `pushfleet topology`: prints the topology for `prefix` as JSON, with the names of each of
/// `pools` (the default pool's always).
pub fn topology(prefix: &str, pools: &[String]) -> anyhow::Result<ExitCode> {
    let t = Topology::new(prefix);
    let mut listed = vec![Pool::default()];
    for name in pools {
        match Pool::parse(name) {
            Ok(pool) if !listed.contains(&pool) => listed.push(pool),
            Ok(_) => {}
            Err(e) => {
                eprintln!("error[invalid_message]: --pool: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let pools: Vec<_> = listed
        .iter()
        .map(|pool| {
            serde_json::json!({
                "name": pool.as_str(),
                "queue": t.pool_queue(pool),
                "routing_key": Topology::pool_routing_key(pool),
                "retry_queue_example": t.pool_retry_queue(pool, 2),
                "retry_routing_key_example": Topology::pool_retry_routing_key(pool, 2),
                "queues": t.pool_queues(pool),
            })
        })
        .collect();
    let json = serde_json::json!({
        "prefix": t.prefix(),
        "jobs_exchange": t.jobs_exchange(),
        "jobs_queue": t.jobs_queue(),
        "job_routing_key": pushfleet_shared::topology::JOB_ROUTING_KEY,
        "retry_exchange": t.retry_exchange(),
        "retry_queues": format!("{}.retry.<k> (declared on first use; k = floor(log2(delay s)))", t.prefix()),
        "dead_letter_exchange": t.dead_letter_exchange(),
        "dead_letter_queue": t.dead_letter_queue(),
        "events_exchange": t.events_exchange(),
        "event_routing_keys": "job.<state>",
        "control_exchange": t.control_exchange(),
        "exchanges": t.exchanges(),
        "queues": t.queues(),
        "pool_queues": format!("{}.jobs.<pool> (the default pool: {})", t.prefix(), t.jobs_queue()),
        "pool_routing_keys": "job.<pool> (the default pool: job)",
        "pool_retry_queues": format!("{}.retry.<pool>.<k> (the default pool: {}.retry.<k>)", t.prefix(), t.prefix()),
        "pools": pools,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(ExitCode::SUCCESS)
}
