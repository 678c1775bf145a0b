//! `pushfleet check-registries` against the real registries: good credentials pass every
//! step, and a wrong password, a read-only user, an unreachable port and an untrusted
//! certificate each fail at the step where a job would, with the job's code and a hint. No
//! password shows in any output.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use base64::Engine;
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
    let run = |args: Vec<String>| {
        let config_file = config_file.clone();
        async move {
            tokio::time::timeout(
                std::time::Duration::from_secs(120),
                tokio::process::Command::new(pushfleet_binary()?)
                    .arg("check-registries")
                    .arg("-c")
                    .arg(&config_file)
                    .args(args)
                    .env_remove("PUSHFLEET_CONFIG")
                    .output(),
            )
            .await
            .context("check-registries did not finish")?
            .map_err(anyhow::Error::from)
        }
    };

    let out = run(vec!["--json".into()]).await?;
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
    let table = run(vec!["read-only".into()]).await?;
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    ensure!(table.status.code() == Some(1), "{table:?}");
    ensure!(
        text.contains("FAIL  push production/pushfleet-check") && text.contains("hint: "),
        "{text}"
    );
    let good = run(vec!["good".into(), "tls".into()]).await?;
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
