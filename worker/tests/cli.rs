//! The `pushfleet` binary as a user meets it: `check-config`, `worker` start-up refusals,
//! `submit --dry-run`, `schemas`, `topology`. No network: every case here fails or finishes
//! before a connection would be made.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_pushfleet");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PUSHFLEET_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
        }
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {name}: {e}"));
        path.display().to_string()
    }

    /// A valid configuration whose one registry (`harbor`, alias `5`) uses `password_file`.
    fn config(&self, registry_extra: &str) -> String {
        let pw = self.write("harbor.pw", "Sup3r-Secret-Harbor-pw\n");
        self.write(
            "pushfleet.toml",
            &format!(
                "[amqp]\nurl = \"amqp://pushfleet:AmqpS3cret@127.0.0.1:1/%2f\"\n\n\
                 [registries.harbor]\nurl = \"https://reg.example.com:10443\"\nusername = \"robot\"\n\
                 password_file = \"{pw}\"\naliases = [\"5\"]\nnamespaces = [\"production\"]\n{registry_extra}"
            ),
        )
    }
}

#[test]
fn check_config_prints_a_valid_configuration_redacted() {
    let f = Files::new();
    let config = f.config("");
    let out = run(&["check-config", "-c", &config]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("harbor") && stdout.contains("reg.example.com:10443"),
        "{stdout}"
    );
    assert!(stdout.contains("configuration OK"));
    for secret in ["Sup3r-Secret-Harbor-pw", "AmqpS3cret"] {
        assert!(
            !stdout.contains(secret),
            "check-config printed a secret: {stdout}"
        );
    }
}

#[test]
fn bad_configurations_fail_check_config_and_worker_start_naming_the_key() {
    let f = Files::new();
    let cases = [
        (
            "unknown key",
            "colour = \"blue\"\n",
            "registries.harbor.colour",
        ),
        ("bad url", "", "registries.harbor.url"),
    ];
    for (what, extra, key) in cases {
        let mut config_text = std::fs::read_to_string(f.config(extra)).unwrap_or_default();
        if what == "bad url" {
            config_text = config_text.replace("https://reg.example.com:10443", "ftp://nope");
        }
        let config = f.write("case.toml", &config_text);
        for command in ["check-config", "worker"] {
            let out = run(&[command, "-c", &config]);
            let stderr = text(&out.stderr);
            assert!(!out.status.success(), "{what}: `{command}` succeeded");
            assert!(
                stderr.contains(key),
                "{what}: `{command}` does not name {key}: {stderr}"
            );
        }
    }

    // Seed 002: a registry with no password source is an error, not a warning.
    let no_source = f.write(
        "no-source.toml",
        "[registries.harbor]\nurl = \"https://harbor.example.com\"\nusername = \"admin\"\nnamespaces = [\"production\"]\n",
    );
    for command in ["check-config", "worker"] {
        let out = run(&[command, "-c", &no_source]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("registries.harbor") && stderr.contains("password"),
            "{stderr}"
        );
    }

    // An unreadable password file names the key and never its content.
    let gone = f.write(
        "gone.toml",
        "[registries.harbor]\nurl = \"https://harbor.example.com\"\nusername = \"admin\"\n\
         password_file = \"/nonexistent/harbor.pw\"\nnamespaces = [\"production\"]\n",
    );
    let out = run(&["worker", "-c", &gone]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("registries.harbor.password_file"));
}

#[test]
fn dry_run_prints_the_exact_plan_or_a_coded_error_and_touches_nothing() {
    let f = Files::new();
    let config = f.config("");
    let out = run(&[
        "submit",
        "-c",
        &config,
        "--dry-run",
        "--django",
        r#"{"tag":"0722","image":"myapp","registry_id":5,"project_id":5,"docker_config":{}}"#,
        "--project",
        "production",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
    assert_eq!(plan["source"], "docker.io/library/myapp:0722");
    assert_eq!(
        plan["targets"][0],
        "reg.example.com:10443/production/myapp:0722"
    );
    assert_eq!(plan["registry"], "harbor");
    assert!(plan.get("notes").is_none(), "a tagged source needs no note");

    // Seed 000's trap: no tag means Docker's `latest`, written out with a note.
    let out = run(&[
        "submit",
        "-c",
        &config,
        "--dry-run",
        "--source",
        "myapp",
        "--registry",
        "harbor",
        "--repository",
        "production/myapp",
        "--tag",
        "0722",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
    assert_eq!(plan["source"], "docker.io/library/myapp:latest");
    let note = plan["notes"][0].as_str().unwrap_or_default();
    assert!(
        note.contains("Docker's default `latest`") && note.contains("\"myapp\""),
        "{stdout}"
    );

    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--source",
                "MyApp:1",
                "--registry",
                "harbor",
                "--repository",
                "production/x",
            ],
            "invalid_reference",
        ),
        (
            &[
                "--source",
                "myapp:1",
                "--registry",
                "dockerhub",
                "--repository",
                "production/x",
            ],
            "unknown_registry",
        ),
        (
            &[
                "--source",
                "myapp:1",
                "--registry",
                "5",
                "--repository",
                "elsewhere/x",
            ],
            "namespace_not_allowed",
        ),
        (
            &[
                "--source",
                "myapp:1:extra",
                "--registry",
                "5",
                "--repository",
                "production/x",
            ],
            "invalid_reference",
        ),
    ];
    for (args, code) in cases {
        let mut all = vec!["submit", "-c", &config, "--dry-run"];
        all.extend_from_slice(args);
        let out = run(&all);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("error[{code}]")),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("hint: "), "{args:?}: {stderr}");
    }
}

#[test]
fn the_pool_of_a_job_is_in_its_plan_and_a_bad_one_is_refused() {
    let f = Files::new();
    let config = f.config("");
    let django = |build_host: &str| {
        format!(r#"{{"image":"myapp","tag":"0722","registry_id":5,"build_host":"{build_host}"}}"#)
    };
    let good = django("build-01");
    let out = run(&[
        "submit",
        "-c",
        &config,
        "--dry-run",
        "--django",
        &good,
        "--project",
        "production",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
    assert_eq!(plan["pool"], "build-01");

    let bad = django("Build01.example.com");
    let args: [&[&str]; 2] = [
        &["--django", &bad, "--project", "production"],
        &[
            "--source",
            "myapp:1",
            "--registry",
            "5",
            "--repository",
            "production/x",
            "--pool",
            "build_01",
        ],
    ];
    for args in args {
        let mut all = vec!["submit", "-c", &config, "--dry-run"];
        all.extend_from_slice(args);
        let out = run(&all);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error[invalid_message]") && stderr.contains("is not a pool name"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("hint: name the pool"), "{args:?}: {stderr}");
    }
}

#[test]
fn schemas_and_topology_print_json() {
    let out = run(&["schemas"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("pushfleet push job, version 1"));
    let out = run(&["topology", "--prefix", "acme"]);
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(t["jobs_queue"], "acme.jobs");
    assert_eq!(t["events_exchange"], "acme.events");
    let out = run(&["topology", "--prefix", "acme", "--pool", "build-01"]);
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(t["pools"][0]["queue"], "acme.jobs");
    assert_eq!(t["pools"][1]["queue"], "acme.jobs.build-01");
    assert_eq!(t["pools"][1]["routing_key"], "job.build-01");
    let out = run(&["topology", "--pool", "Build.01"]);
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = run(&["schemas", "--write", &dir.path().display().to_string()]);
    assert!(out.status.success());
    assert!(Path::new(&dir.path().join("job.schema.json")).exists());
}
