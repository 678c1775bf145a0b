//! Logging: one `tracing` subscriber for the whole process.
//!
//! `RUST_LOG` filters as usual (default `info`); `PUSHFLEET_LOG_FORMAT=json` switches to one
//! JSON object per line for log shippers. Logs go to stderr so that commands which print
//! results (`submit`, `check-config`) keep stdout clean.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("PUSHFLEET_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
