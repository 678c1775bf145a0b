//! `pushfleet check-registries` against the real registries: good credentials pass every
//! step, and a wrong password, a read-only user, an unreachable port and an untrusted
//! certificate each fail at the step where a job would, with the job's code and a hint. No
//! password shows in any output.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use pushfleet_tests::forward::TcpForwarder;
use pushfleet_tests::process::pushfleet_binary;
use pushfleet_tests::{StackEnv, unique};
use serde_json::Value;

#[tokio::test]
async fn each_registry_failure_is_reported_at_its_step_with_its_code() -> Result<()> {
    let env = StackEnv::load()?;
    let dir = tempfile::tempdir()?;
    let wrong = dir.path().join("wrong.password");
    let wrong_password = format!("{}-not-it", unique("pw"));
    std::fs::write(&wrong, &wrong_password)?;
    let basic_user = env.get("PUSHFLEET_BASIC_USER")?;
    let basic_pw = env.get("PUSHFLEET_BASIC_PASSWORD_FILE")?;
    let registry = |key: &str, url: &str, user: &str, pw: &str, extra: &str| {
        format!(
            "[registries.{key}]\nurl = {url:?}\nusername = {user:?}\npassword_file = {pw:?}\nnamespaces = [\"production\", \"team-a\"]\n{extra}\n"
        )
    };
    let basic_url = format!("http://{}", env.get("PUSHFLEET_BASIC_REGISTRY")?);
    let token_url = format!("http://{}", env.get("PUSHFLEET_TOKEN_REGISTRY")?);
    let tls_url = env.get("PUSHFLEET_TLS_REGISTRY_URL")?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let closed_url = format!("http://{}", closed.local_addr()?);
    drop(closed);
    let config = [
        format!("[docker]\nhost = {:?}\n", env.get("PUSHFLEET_DOCKER_HOST")?),
        registry("good", &basic_url, &basic_user, &basic_pw, ""),
        registry(
            "wrong-password",
            &basic_url,
            &basic_user,
            &wrong.display().to_string(),
            "",
        ),
        registry(
            "read-only",
            &token_url,
            &env.get("PUSHFLEET_TOKEN_READER_USER")?,
            &env.get("PUSHFLEET_TOKEN_READER_PASSWORD_FILE")?,
            "",
        ),
        registry("unreachable", &closed_url, &basic_user, &basic_pw, ""),
        registry(
            "untrusted",
            &tls_url,
            &basic_user,
            &basic_pw,
            &format!("ca_file = {:?}", env.get("PUSHFLEET_TLS_WRONG_CA_FILE")?),
        ),
        registry(
            "tls",
            &tls_url,
            &basic_user,
            &basic_pw,
            &format!("ca_file = {:?}", env.get("PUSHFLEET_TLS_CA_FILE")?),
        ),
    ]
    .concat();
    let config_file = dir.path().join("pushfleet.toml");
    std::fs::write(&config_file, config)?;
    let run = |args: Vec<&'static str>| check_registries(&config_file, args);

    let out = run(vec!["--json"]).await?;
    ensure!(out.status.code() == Some(1), "exit code: {out:?}");
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let by_key: BTreeMap<&str, &Value> = reports
        .iter()
        .filter_map(|r| Some((r["registry"].as_str()?, r)))
        .collect();
    let failed_step = |key: &str| -> Option<(String, String)> {
        let steps = by_key.get(key)?["steps"].as_array()?;
        let step = steps.iter().find(|s| s["status"] == "fail")?;
        Some((
            step["name"].as_str()?.to_owned(),
            step["code"].as_str()?.to_owned(),
        ))
    };
    for key in ["good", "tls"] {
        ensure!(
            by_key.get(key).is_some_and(|r| r["ok"] == true),
            "{key}: {:#?}",
            by_key.get(key)
        );
        let steps = by_key[key]["steps"].as_array().context("steps")?;
        ensure!(
            steps
                .iter()
                .any(|s| s["name"] == "daemon" && s["status"] == "pass"),
            "{key}: the daemon step ran and passed: {steps:#?}"
        );
    }
    let expected = [
        (
            "wrong-password",
            "pull production/pushfleet-check",
            "registry_auth_failed",
        ),
        (
            "read-only",
            "push production/pushfleet-check",
            "registry_insufficient_scope",
        ),
        ("unreachable", "tcp", "registry_unreachable"),
        (
            "untrusted",
            "pull production/pushfleet-check",
            "registry_tls_failed",
        ),
    ];
    for (key, step, code) in expected {
        ensure!(
            failed_step(key) == Some((step.to_owned(), code.to_owned())),
            "{key}: expected {step} to fail with {code}: {:#?}",
            by_key.get(key)
        );
        let hint = by_key[key]["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["status"] == "fail"))
            .and_then(|s| s["hint"].as_str())
            .unwrap_or_default();
        ensure!(!hint.is_empty(), "{key}: no hint");
    }

    // The readable table, for one registry by its key, and a good one alone exits 0.
    let table = run(vec!["read-only"]).await?;
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    ensure!(table.status.code() == Some(1), "{table:?}");
    ensure!(
        text.contains("FAIL  push production/pushfleet-check") && text.contains("hint: "),
        "{text}"
    );
    let good = run(vec!["good", "tls"]).await?;
    ensure!(good.status.success(), "{good:?}");

    // No password, plain or as a Basic header, anywhere.
    let everything = [
        &out.stdout,
        &out.stderr,
        &table.stdout,
        &table.stderr,
        &good.stdout,
        &good.stderr,
    ]
    .iter()
    .map(|b| String::from_utf8_lossy(b).into_owned())
    .collect::<String>();
    let basic_password = env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?;
    let reader_password = env.read_file_at("PUSHFLEET_TOKEN_READER_PASSWORD_FILE")?;
    for secret in [
        basic_password.as_str(),
        reader_password.as_str(),
        wrong_password.as_str(),
    ] {
        let b64 =
            base64::engine::general_purpose::STANDARD.encode(format!("{basic_user}:{secret}"));
        ensure!(!everything.contains(secret), "a password is in the output");
        ensure!(
            !everything.contains(&b64),
            "a Basic header is in the output"
        );
    }
    Ok(())
}

/// Runs `pushfleet check-registries -c CONFIG ARGS...`, at most two minutes.
async fn check_registries(config: &Path, args: Vec<&str>) -> Result<Output> {
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(pushfleet_binary()?)
            .arg("check-registries")
            .arg("-c")
            .arg(config)
            .args(args)
            .env_remove("PUSHFLEET_CONFIG")
            .output(),
    )
    .await
    .context("check-registries did not finish")?
    .map_err(anyhow::Error::from)
}

/// The daemon's own view: the TLS registry through a second port is trusted by the worker
/// (its `ca_file`) but not by the daemon, whose CA is installed for `registry.test:5443`
/// only. Every step passes but `daemon`, which fails with the TLS code and names the
/// daemon's certificate path for that port.
#[tokio::test]
async fn a_certificate_only_the_worker_trusts_fails_the_daemon_step() -> Result<()> {
    let env = StackEnv::load()?;
    let port: u16 = env.get("PUSHFLEET_TLS_REGISTRY_PORT")?.parse()?;
    let upstream = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let forwarder =
        TcpForwarder::start(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)), upstream).await?;
    let host = format!("registry.test:{}", forwarder.addr().port());
    let dir = tempfile::tempdir()?;
    let config_file = dir.path().join("pushfleet.toml");
    std::fs::write(
        &config_file,
        format!(
            "[docker]\nhost = {:?}\n[registries.other-port]\nurl = {:?}\nusername = {:?}\npassword_file = {:?}\nnamespaces = [\"production\"]\nca_file = {:?}\n",
            env.get("PUSHFLEET_DOCKER_HOST")?,
            format!("https://{host}"),
            env.get("PUSHFLEET_BASIC_USER")?,
            env.get("PUSHFLEET_BASIC_PASSWORD_FILE")?,
            env.get("PUSHFLEET_TLS_CA_FILE")?,
        ),
    )?;
    let out = check_registries(&config_file, vec!["--json"]).await?;
    ensure!(out.status.code() == Some(1), "exit code: {out:?}");
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let steps = reports
        .first()
        .and_then(|r| r["steps"].as_array())
        .context("one report with steps")?;
    let status = |name: &str| {
        steps
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["status"].as_str().unwrap_or_default().to_owned())
    };
    for name in [
        "pull production/pushfleet-check",
        "push production/pushfleet-check",
    ] {
        ensure!(
            status(name).as_deref() == Some("pass"),
            "{name}: {steps:#?}"
        );
    }
    let daemon = steps
        .iter()
        .find(|s| s["name"] == "daemon")
        .context("a daemon step")?;
    ensure!(
        daemon["status"] == "fail" && daemon["code"] == "registry_tls_failed",
        "{daemon:#?}"
    );
    let hint = daemon["hint"].as_str().unwrap_or_default();
    ensure!(
        hint.contains(&format!("/etc/docker/certs.d/{host}/ca.crt")),
        "the hint names the daemon's CA path for this port: {hint}"
    );
    Ok(())
}

/// The same check as a message: a "Test connection" button publishes a check request, and a
/// worker answers with a `registry.checked` event; a bad request and an unknown registry get
/// an answer with the error.
#[tokio::test]
async fn a_check_request_is_answered_with_a_registry_checked_event() -> Result<()> {
    use futures_util::StreamExt;
    use pushfleet_shared::check::{
        CHECK_ROUTING_KEY, CHECKED_ROUTING_KEY, CheckRequest, RegistryChecked, StepStatus,
    };
    use pushfleet_tests::fleet::{TestWorker, base_registries, worker_config};
    use pushfleet_worker::broker::{
        ConfirmedPublisher, connect, declare_topology, subscribe_exclusive,
    };

    let env = StackEnv::load()?;
    let worker = TestWorker::start(worker_config(
        &env,
        &unique("t-check"),
        &base_registries(&env)?,
    )?)
    .await?;
    let conn = connect(&env.get("PUSHFLEET_AMQP_URL")?, "pushfleet-tests checks").await?;
    let publisher = ConfirmedPublisher::open(&conn).await?;
    declare_topology(publisher.channel(), &worker.topology).await?;
    let channel = conn.create_channel().await?;
    let mut answers = subscribe_exclusive(
        &channel,
        &worker.topology.events_exchange(),
        CHECKED_ROUTING_KEY,
    )
    .await?;
    let request = |id: &str, registry: &str| CheckRequest {
        version: 1,
        request_id: id.to_owned(),
        registry: registry.to_owned(),
        repository: None,
    };
    let bodies = [
        request("good", "5").to_json(),
        request("read-only", "token-reader").to_json(),
        request("unknown", "harbor-typo").to_json(),
        b"{\"version\":1,\"registry\":\"5\"}".to_vec(),
    ];
    for body in &bodies {
        publisher
            .publish_raw(
                &worker.topology.jobs_exchange(),
                CHECK_ROUTING_KEY,
                body,
                pushfleet_worker::broker::json(lapin::BasicProperties::default()),
            )
            .await?;
    }
    let mut got = BTreeMap::new();
    while got.len() < bodies.len() {
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(60), answers.next())
            .await
            .context("no answer within 60 s")?
            .context("the answer stream ended")??;
        let answer = RegistryChecked::from_slice(&delivery.data)?;
        got.insert(
            answer.request_id.clone().unwrap_or_else(|| "-".into()),
            answer,
        );
    }
    let good = &got["good"];
    ensure!(good.ok(), "{good:#?}");
    ensure!(
        good.report.as_ref().is_some_and(|r| r.registry == "basic"),
        "{good:#?}"
    );
    let read_only = got["read-only"].report.as_ref().context("a report")?;
    ensure!(
        read_only.steps.iter().any(|s| s.status == StepStatus::Fail
            && s.code == Some(pushfleet_shared::ErrorCode::RegistryInsufficientScope)),
        "{read_only:#?}"
    );
    let unknown = got["unknown"].error.as_ref().context("an error")?;
    ensure!(
        unknown.code == pushfleet_shared::ErrorCode::UnknownRegistry,
        "{unknown:?}"
    );
    let bad = got["-"].error.as_ref().context("an error")?;
    ensure!(
        bad.code == pushfleet_shared::ErrorCode::InvalidMessage,
        "{bad:?}"
    );
    let _ = conn.close(200, "done".into()).await;
    worker.stop().await
}
