//! The deployment files pass `deploy/check.sh`: deploy/compose.yaml through Debian's
//! docker-compose, deploy/k8s/ against the Kubernetes schemas (kubernetes-validate) and KEDA's
//! CRD schemas, and both against pushfleet's rules; and the check fails, naming the problem,
//! for each kind of mistake it is there to catch (so a passing check means something).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};

/// How long one check may take (the first one creates its Python environment with pip).
const CHECK_LIMIT: Duration = Duration::from_secs(600);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs `deploy/check.sh ARGS`; returns whether it passed and its output.
async fn check(args: &[&Path]) -> Result<(bool, String)> {
    let script = deploy_dir().join("check.sh");
    let run = tokio::process::Command::new("bash")
        .arg(&script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CHECK_LIMIT, run)
        .await
        .map_err(|_| anyhow!("{} took longer than {CHECK_LIMIT:?}", script.display()))??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        matches!(out.status.code(), Some(0 | 1)),
        "deploy/check.sh could not check ({}):\n{text}",
        out.status
    );
    Ok((out.status.success(), text))
}

#[tokio::test]
async fn the_compose_file_and_the_kubernetes_manifests_pass_their_checks() -> Result<()> {
    let (passed, out) = check(&[]).await?;
    ensure!(passed, "deploy/check.sh found problems:\n{out}");
    ensure!(
        out.contains("compose.yaml (compose)") && out.contains("k8s (k8s)"),
        "deploy/check.sh did not check both:\n{out}"
    );
    println!("{}", out.trim());
    Ok(())
}

/// A copy of one deployment file with the first `from` replaced by `to` (spell `from` with its
/// indentation: the files' comments mention the same keys).
struct Mistake {
    file: &'static str,
    from: &'static str,
    to: &'static str,
    /// What the check must say about it.
    expect: &'static str,
}

const MISTAKES: &[Mistake] = &[
    Mistake {
        file: "k8s/scaledobject.yaml",
        from: "        protocol: http\n",
        to: "        protocol: amqp\n",
        expect: "must use protocol: http and mode: QueueLength",
    },
    Mistake {
        file: "k8s/scaledobject.yaml",
        from: "queueName: pushfleet.jobs\n",
        to: "queueName: pushfleet.jobs\n        excludeUnacknowledged: \"true\"\n",
        expect: "excludeUnacknowledged would not count running jobs",
    },
    Mistake {
        file: "k8s/scaledobject.yaml",
        from: "        value: \"4\"\n",
        to: "        value: \"8\"\n",
        expect: "value '8' must be a number of jobs per worker from 1 to the workers' concurrency (4)",
    },
    Mistake {
        file: "k8s/scaledobject.yaml",
        from: "cooldownPeriod: 300",
        to: "cooldownPeriod: soon",
        expect: "spec.cooldownPeriod: 'soon' is not of type 'integer'",
    },
    Mistake {
        file: "k8s/scaledobject.yaml",
        from: "  minReplicaCount: 1\n",
        to: "  minReplicas: 1\n",
        expect: "'minReplicas' was unexpected",
    },
    Mistake {
        file: "k8s/worker.yaml",
        from: "terminationGracePeriodSeconds: 90",
        to: "terminationGracePeriodSeconds: 60",
        expect: "must be at least the worker's shutdown grace (60 s) + 10 s",
    },
    Mistake {
        file: "k8s/worker.yaml",
        from: "replicas: 2",
        to: "replicas: two",
        expect: "spec.replicas: 'two' is not of type",
    },
    Mistake {
        file: "k8s/worker.yaml",
        from: "path: /readyz",
        to: "path: /healthz",
        expect: "worker readinessProbe must GET /readyz",
    },
    Mistake {
        file: "k8s/worker.yaml",
        from: "kind: PodDisruptionBudget",
        to: "kind: PodDisruptionBudgets",
        expect: "no schema for policy/v1 PodDisruptionBudgets",
    },
    Mistake {
        file: "k8s/copy-worker.yaml",
        from: "queueName: pushfleet.jobs.copy\n",
        to: "queueName: pushfleet.jobs\n",
        expect: "queueName 'pushfleet.jobs' is the queue of pool 'default', which 'pushfleet-copy-worker' does not serve (its pools: copy)",
    },
    Mistake {
        file: "compose.yaml",
        from: "user: \"10001:10001\"",
        to: "user: \"0\"",
        expect: "runs as root",
    },
    Mistake {
        file: "compose.yaml",
        from: "stop_grace_period: 90s",
        to: "stop_grace_period: 30s",
        expect: "the time to stop (30 s) must be at least the worker's shutdown grace (60 s)",
    },
];

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to.join(&name))?;
        } else {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_checks_catch_each_kind_of_mistake() -> Result<()> {
    let deploy = deploy_dir();
    for mistake in MISTAKES {
        let dir = tempfile::tempdir()?;
        std::fs::copy(deploy.join("compose.yaml"), dir.path().join("compose.yaml"))?;
        copy_dir(&deploy.join("k8s"), &dir.path().join("k8s"))?;
        let file = dir.path().join(mistake.file);
        let text = std::fs::read_to_string(&file)?;
        ensure!(
            text.contains(mistake.from),
            "{} no longer contains {:?}: update this test",
            mistake.file,
            mistake.from
        );
        std::fs::write(&file, text.replacen(mistake.from, mistake.to, 1))?;
        let (kind, target) = if mistake.file == "compose.yaml" {
            ("compose", file)
        } else {
            ("k8s", dir.path().join("k8s"))
        };
        let (passed, out) = check(&[Path::new(kind), &target])
            .await
            .with_context(|| format!("{} with {:?}", mistake.file, mistake.to))?;
        ensure!(
            !passed && out.contains(mistake.expect),
            "{} with {:?} instead of {:?}: expected a failure saying {:?}, got:\n{out}",
            mistake.file,
            mistake.to,
            mistake.from,
            mistake.expect
        );
    }
    println!("{} mistakes caught", MISTAKES.len());
    Ok(())
}
