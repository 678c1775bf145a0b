//! `pushfleet check-registries`: tests each catalogue registry for real (see [`crate::check`])
//! and prints a readable table, or `--json`; exit code 0 only when every check passes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use pushfleet_shared::check::{CheckReport, StepStatus};

use crate::check;
use crate::config;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// Which registries to check, and how to print the result.
#[derive(Debug, Args)]
pub struct CheckRegistriesArgs {
    /// The configuration file with the registry catalogue.
    #[arg(short, long, env = "PUSHFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// The registries to check (keys or aliases); default: all.
    keys: Vec<String>,
    /// The repository to check in a registry whose namespaces are `*`.
    #[arg(long)]
    repository: Option<String>,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the check; exit code 0 when all pass, 1 when one fails, 2 for a bad configuration or
/// an unknown registry.
pub async fn run(args: CheckRegistriesArgs) -> anyhow::Result<ExitCode> {
    let config = match config::load(args.config.as_deref(), None) {
        Ok(c) => Arc::new(c),
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut selected = Vec::new();
    for key in &args.keys {
        match config.registries.get(key) {
            Some(r) => selected.push(r),
            None => {
                eprintln!("error: registry {key:?} is not in the catalogue");
                return Ok(ExitCode::from(2));
            }
        }
    }
    if selected.is_empty() {
        selected = config.registries.iter().collect();
    }
    let pipeline = Pipeline::new(Arc::clone(&config), Arc::new(Metrics::default()))?;
    let mut reports = Vec::new();
    for registry in selected {
        let Some(client) = pipeline.registry_client(&registry.key) else {
            continue;
        };
        let report = check::check(
            registry,
            client,
            pipeline.daemon(),
            args.repository.as_deref(),
        )
        .await;
        if !args.json {
            print_report(&report);
        }
        reports.push(report);
    }
    let failed = reports.iter().filter(|r| !r.ok).count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else if failed == 0 {
        println!("all {} registries pass", reports.len());
    } else {
        println!("{failed} of {} registries fail", reports.len());
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &CheckReport) {
    println!("{}  {}", report.registry, report.url);
    let width = report.steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for step in &report.steps {
        let status = match step.status {
            StepStatus::Pass => "pass",
            StepStatus::Fail => "FAIL",
            StepStatus::Skip => "skip",
        };
        let detail = match step.code {
            Some(code) => format!("{}: {}", code.as_str(), step.detail),
            None => step.detail.clone(),
        };
        println!("  {status}  {:<width$}  {detail}", step.name);
        if let Some(hint) = &step.hint {
            println!("        {:<width$}  hint: {hint}", "");
        }
    }
}
