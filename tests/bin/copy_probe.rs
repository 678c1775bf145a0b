//! Runs one registry-to-registry copy (`pushfleet_worker::copy::copy_image`) in a process of
//! its own, so a test can measure the copy's peak memory: prints one JSON line with the
//! report and the process's `VmHWM` (peak resident set) before and after the copy.
//!
//! Argument: a JSON object `{"source": SIDE, "reference": "..", "target": SIDE, "tags": [..]}`
//! with SIDE = `{"url": "http://host:port", "repository": "..", "user": "..",
//! "password_file": ".."}`. Passwords are read from their files, never from the command line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use pushfleet_worker::copy::{CopyProgress, Side, copy_image};
use pushfleet_worker::registry::{Credentials, RegistryClient, RegistryEndpoint};
use serde::Deserialize;

#[derive(Deserialize)]
struct Args {
    source: SideArgs,
    reference: String,
    target: SideArgs,
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct SideArgs {
    url: String,
    repository: String,
    user: String,
    password_file: String,
}

impl SideArgs {
    fn open(&self, key: &str) -> Result<(RegistryClient, Credentials)> {
        let client = RegistryClient::new(RegistryEndpoint {
            key: key.to_owned(),
            base_url: url::Url::parse(&self.url)?,
            ca_pem: None,
        })?;
        let password = std::fs::read_to_string(&self.password_file)
            .with_context(|| format!("cannot read {}", self.password_file))?;
        let login = Credentials::new(self.user.clone(), password.trim_end().to_owned());
        Ok((client, login))
    }
}

/// `VmHWM` of this process, in KiB.
fn vm_hwm_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .context("VmHWM without a value")?;
    Ok(kib.parse()?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let raw = std::env::args()
        .nth(1)
        .context("usage: copy-probe '<json>'")?;
    let args: Args = serde_json::from_str(&raw).context("the argument is not the expected JSON")?;
    let (source, source_login) = args.source.open("source")?;
    let (target, target_login) = args.target.open("target")?;
    let reports = Arc::new(AtomicU64::new(0));
    let last_done = Arc::new(AtomicU64::new(0));
    let progress = {
        let reports = reports.clone();
        let last_done = last_done.clone();
        Arc::new(move |p: &CopyProgress| {
            reports.fetch_add(1, Ordering::Relaxed);
            last_done.store(p.bytes_done, Ordering::Relaxed);
        })
    };
    let before = vm_hwm_kib()?;
    let report = copy_image(
        Side {
            client: &source,
            repository: &args.source.repository,
            login: Some(&source_login),
        },
        &args.reference,
        Side {
            client: &target,
            repository: &args.target.repository,
            login: Some(&target_login),
        },
        &args.tags,
        progress,
    )
    .await?;
    let after = vm_hwm_kib()?;
    println!(
        "{}",
        serde_json::json!({
            "report": report,
            "vm_hwm_kib_before": before,
            "vm_hwm_kib_after": after,
            "progress_reports": reports.load(Ordering::Relaxed),
            "progress_bytes_done": last_done.load(Ordering::Relaxed),
        })
    );
    Ok(())
}
