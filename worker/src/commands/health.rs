//! `pushfleet health`: asks a running worker's health listener whether it is ready (or alive),
//! for container health checks in images without an HTTP client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// How long the probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Arguments of `pushfleet health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The worker's health listener (the worker's own `PUSHFLEET_HEALTH_LISTEN`; an
    /// unspecified address such as `0.0.0.0` is asked on loopback).
    #[arg(
        long,
        env = "PUSHFLEET_HEALTH_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// Ask `/healthz` (the process answers) instead of `/readyz` (it serves jobs).
    #[arg(long)]
    pub live: bool,
}

/// Exits 0 when the endpoint answers 200, 1 otherwise, with one line saying what it got.
pub async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let url = probe_url(args.listen, args.live);
    let client = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?;
    match client.get(&url).send().await {
        Ok(response) if response.status() == reqwest::StatusCode::OK => {
            println!("{url}: {}", response.status());
            Ok(ExitCode::SUCCESS)
        }
        Ok(response) => {
            println!("{url}: {}", response.status());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            println!("{url}: no answer ({e})");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The URL to ask: loopback for an unspecified listen address.
fn probe_url(listen: SocketAddr, live: bool) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let path = if live { "healthz" } else { "readyz" };
    format!("http://{}/{path}", SocketAddr::new(ip, listen.port()))
}

#[cfg(test)]
mod tests {
    use super::probe_url;

    #[test]
    fn unspecified_addresses_are_asked_on_loopback() {
        let at = |s: &str| s.parse().expect("addr");
        assert_eq!(
            probe_url(at("0.0.0.0:8080"), false),
            "http://127.0.0.1:8080/readyz"
        );
        assert_eq!(probe_url(at("[::]:9"), true), "http://[::1]:9/healthz");
        assert_eq!(
            probe_url(at("10.1.2.3:8080"), false),
            "http://10.1.2.3:8080/readyz"
        );
    }
}
