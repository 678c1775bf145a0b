//! [`super::Config::describe`]: the summary `pushfleet check-config` prints. Every setting,
//! and for each password source whether it can be read now; never a password.

use std::fmt;

use super::{Config, redact_parsed};
use crate::credentials::PasswordSource;

pub(super) struct Description<'a>(pub(super) &'a Config);

impl fmt::Display for Description<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        writeln!(f, "amqp")?;
        if c.amqp.other_urls.is_empty() {
            writeln!(f, "  url:              {}", c.amqp.url)?;
        } else {
            writeln!(f, "  urls:             {}", c.amqp.nodes())?;
        }
        let amqp_password = match &c.amqp.password_file {
            Some(path) => {
                let source = PasswordSource::File(path.clone());
                match source.resolve() {
                    Ok(_) => format!("{source} (readable)"),
                    Err(e) => format!("{source} (NOT USABLE: {e})"),
                }
            }
            None if c.amqp.url.has_password() => "in the URL (hidden)".to_owned(),
            None => "none".to_owned(),
        };
        writeln!(f, "  password:         {amqp_password}")?;
        writeln!(f, "  topology prefix:  {}", c.amqp.topology_prefix)?;
        let replicas = c
            .amqp
            .quorum_replicas
            .map_or_else(|| "the broker's default".to_owned(), |n| n.to_string());
        writeln!(f, "  queue replicas:   {replicas}")?;
        let frames = c.amqp.publish_frame_max.map_or_else(
            || "the broker's frame_max".to_owned(),
            |n| format!("at most {n} bytes"),
        );
        writeln!(f, "  publish frames:   {frames}")?;
        let signing = if c.amqp.signing_key.is_some() {
            "required (signing_key_file)"
        } else {
            "not required"
        };
        writeln!(f, "  job signatures:   {signing}")?;
        writeln!(f, "docker")?;
        match &c.docker {
            Some(docker) => writeln!(f, "  host:             {}", docker.host)?,
            None => writeln!(
                f,
                "  host:             none (no [docker] section): registry-source jobs only; \
                 a job whose source is in a daemon fails with daemon_not_configured"
            )?,
        }
        writeln!(f, "worker")?;
        writeln!(f, "  id:               {}", c.worker.id)?;
        writeln!(
            f,
            "  concurrency:      {} (AMQP prefetch {})",
            c.worker.concurrency,
            c.worker.prefetch()
        )?;
        let pools: Vec<&str> = c.worker.pools.iter().map(|p| p.as_str()).collect();
        writeln!(f, "  pools:            {}", pools.join(", "))?;
        writeln!(f, "  job timeout:      {} s", c.worker.job_timeout_s)?;
        writeln!(f, "  shutdown grace:   {} s", c.worker.shutdown_grace_s)?;
        writeln!(
            f,
            "  retries:          {} attempts, delay {} ms doubling up to {} s",
            c.worker.max_attempts, c.worker.retry_min_delay_ms, c.worker.retry_max_delay_s
        )?;
        writeln!(f, "registries ({})", c.registries.len())?;
        for r in c.registries.iter() {
            writeln!(f, "  {}", r.key)?;
            writeln!(f, "    url:        {}", redact_parsed(&r.url))?;
            writeln!(f, "    host:       {}", r.host)?;
            match &r.login {
                None => writeln!(f, "    auth:       anonymous (no credentials)")?,
                Some(login) => {
                    // One lookup (it may run a credential helper) gives both lines; only a
                    // Docker config gives the user.
                    let ok = match login.password {
                        PasswordSource::File(_) => "readable",
                        PasswordSource::Env(_) => "set",
                        PasswordSource::DockerConfig(_) => "resolved",
                    };
                    let (user, status) = match login.resolve() {
                        Ok(found) => (
                            format!("{} (from the docker config)", found.username),
                            ok.to_owned(),
                        ),
                        Err(e) => (
                            "(from the docker config, not known now)".to_owned(),
                            format!("NOT USABLE: {e}"),
                        ),
                    };
                    let user = login.username.clone().unwrap_or(user);
                    writeln!(f, "    username:   {user}")?;
                    writeln!(f, "    password:   {} ({status})", login.password)?;
                }
            }
            if let Some(ca) = &r.ca_file {
                writeln!(f, "    ca_file:    {}", ca.display())?;
            }
            if !r.aliases.is_empty() {
                writeln!(f, "    aliases:    {}", r.aliases.join(", "))?;
            }
            writeln!(f, "    namespaces: {}", r.namespaces.join(", "))?;
            if let Some(n) = r.max_concurrent_pushes {
                writeln!(f, "    max concurrent pushes: {n}")?;
            }
        }
        Ok(())
    }
}
