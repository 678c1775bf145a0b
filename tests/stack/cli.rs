//! The CLI as people and scripts read it, against a worker process: `submit --wait` on a
//! pseudo-terminal (util-linux `script`) draws a progress bar and readable lines; piped, it
//! prints the same lines with no terminal codes; `--json` prints events; a failure ends with
//! the code, message and hint and exit code 1; `pushfleet events` follows a job live.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use pushfleet_shared::event::{Event, JobState};
use pushfleet_shared::topology::Topology;
use pushfleet_tests::fleet::base_registries;
use pushfleet_tests::process::{
    EventLog, Logs, WorkerProcess, WorkerSettings, delete_topology, make_large_image,
    pushfleet_binary, worker_toml,
};
use pushfleet_tests::{StackEnv, docker, unique};
use tokio::io::{AsyncBufReadExt, BufReader};

const WITHIN: Duration = Duration::from_secs(120);

async fn run(args: &[&str]) -> Result<std::process::Output> {
    let out = tokio::time::timeout(
        WITHIN,
        tokio::process::Command::new(pushfleet_binary()?)
            .args(args)
            .env_remove("PUSHFLEET_CONFIG")
            .output(),
    )
    .await
    .context("the command did not finish")??;
    Ok(out)
}

#[tokio::test]
async fn submit_wait_reads_well_on_a_terminal_piped_and_as_json() -> Result<()> {
    let env = StackEnv::load()?;
    let logs = Logs::new("cli")?;
    let prefix = unique("t-cli");
    // The event log declares the topology before anything is published.
    let events = EventLog::start(&env, &Topology::new(&prefix)).await?;
    let id = format!("{prefix}-w");
    let toml = worker_toml(
        &env,
        &prefix,
        &id,
        WorkerSettings::default(),
        &base_registries(&env)?,
    )?;
    let mut worker = WorkerProcess::spawn(&logs, &id, &toml).await?;
    worker.wait_ready(WITHIN).await?;
    let config = worker.config.display().to_string();

    // Large enough for the push to report progress for a few seconds.
    let name = unique("cli");
    make_large_image(&docker(&env)?, &format!("{name}:big"), 64 * 1024 * 1024).await?;
    let repository = format!("production/{name}");
    let submit = |tag: &str, extra: &[&str]| {
        let mut args = vec![
            "submit".to_owned(),
            "-c".into(),
            config.clone(),
            "--source".into(),
            format!("{name}:big"),
            "--registry".into(),
            "basic".into(),
            "--repository".into(),
            repository.clone(),
            "--tag".into(),
            tag.to_owned(),
            "--wait".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };

    let result = async {
        // `pushfleet events` for the first job, started (and subscribed) before it.
        let job_id = unique("cli-job");
        let mut follower = tokio::process::Command::new(pushfleet_binary()?)
            .args([
                "events", "-c", &config, "--job-id", &job_id, "--state", "accepted",
            ])
            .args(["--max-events", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = follower.stderr.take().context("stderr")?;
        let mut err_lines = BufReader::new(stderr).lines();
        tokio::time::timeout(WITHIN, async {
            while let Some(line) = err_lines.next_line().await? {
                if line.starts_with("following") {
                    return Ok(());
                }
            }
            anyhow::bail!("pushfleet events ended before subscribing")
        })
        .await??;

        // On a pseudo-terminal.
        let mut args = submit("tty", &[]);
        args.extend(["--job-id".to_owned(), job_id.clone()]);
        let command = std::iter::once(pushfleet_binary()?.display().to_string())
            .chain(args)
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let typescript = logs.fresh("tty", "out");
        let out = tokio::time::timeout(
            WITHIN,
            tokio::process::Command::new("script")
                .args(["-qec", &command])
                .arg(&typescript)
                .stdout(Stdio::null())
                .output(),
        )
        .await??;
        ensure!(out.status.success(), "submit on a terminal failed: {out:?}");
        let screen = std::fs::read_to_string(&typescript)?;
        ensure!(screen.contains("accepted   by"), "{screen}");
        ensure!(screen.contains("succeeded  sha256:"), "{screen}");
        ensure!(
            screen.contains("\u{1b}[") && screen.contains("MiB/") && screen.contains("[=="),
            "no live progress bar on the terminal: {screen}"
        );
        println!(
            "terminal: {} bytes of output, {} bar redraws",
            screen.len(),
            screen.matches("MiB/").count()
        );

        // `pushfleet events` saw the job's accepted event and exited.
        let followed = tokio::time::timeout(WITHIN, follower.wait_with_output()).await??;
        let text = String::from_utf8_lossy(&followed.stdout);
        ensure!(followed.status.success(), "{followed:?}");
        ensure!(
            text.starts_with("accepted   by") && text.contains(":tty") && !text.contains("\u{1b}["),
            "pushfleet events printed: {text}"
        );

        // Piped: the same lines, no terminal codes.
        let out = run(&submit("plain", &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>())
        .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "{out:?}");
        ensure!(
            !stdout.contains('\u{1b}'),
            "terminal codes in piped output: {stdout:?}"
        );
        let first = stdout.lines().next().unwrap_or_default();
        ensure!(first.starts_with("accepted   by"), "{stdout}");
        ensure!(stdout.contains("succeeded  sha256:"), "{stdout}");

        // --json: one event per line, the last one the success.
        let out = run(&submit("json", &["--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>())
        .await?;
        ensure!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed: Vec<Event> = stdout
            .lines()
            .map(|l| Event::from_slice(l.as_bytes()).with_context(|| l.to_owned()))
            .collect::<Result<_>>()?;
        ensure!(
            parsed
                .last()
                .is_some_and(|e| e.state == JobState::Succeeded),
            "{stdout}"
        );

        // A failure: code, message, hint, exit code 1.
        let out = run(&[
            "submit",
            "-c",
            &config,
            "--source",
            &format!("{name}:nope"),
            "--registry",
            "basic",
            "--repository",
            &repository,
            "--tag",
            "x",
            "--wait",
        ])
        .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.code() == Some(1), "{out:?}");
        ensure!(
            stdout.contains("failed     source_image_missing: no image")
                && stdout.contains("hint: "),
            "{stdout}"
        );
        Ok(())
    }
    .await;
    let _ = worker.terminate().await;
    events.close().await;
    if result.is_err() {
        logs.dump(30);
    } else {
        logs.remove();
    }
    delete_topology(&env, &prefix).await;
    result
}
