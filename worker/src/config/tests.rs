//! The configuration's tests: loading, every problem at once, the environment rules, the
//! catalogue, and that no secret is ever shown.

use std::collections::HashMap;

use super::validate::RegistryUrl;
use super::*;
use crate::credentials::{DockerConfigSource, PasswordSource};

const SECRET: &str = "S3cr3t-Pa55-zz9";

/// A temporary directory with the files a configuration points to.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn file(&self, name: &str, content: &[u8]) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write fixture file");
        path.display().to_string()
    }

    fn config(&self, toml: &str) -> PathBuf {
        let path = self.dir.path().join("pushfleet.toml");
        std::fs::write(&path, toml).expect("write config");
        path
    }
}

fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// A valid single-registry file, with a readable password file.
fn minimal(fx: &Fixture) -> String {
    let pw = fx.file("harbor-pw", format!("{SECRET}\n").as_bytes());
    format!(
        r#"
[registries.harbor]
url = "https://reg.example.com"
username = "robot$ci"
password_file = "{pw}"
namespaces = ["production"]
"#
    )
}

fn load_ok(path: &Path, env: Option<HashMap<String, String>>) -> Config {
    match load(Some(path), env) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid configuration, got:\n{e}"),
    }
}

fn load_err(path: &Path, env: Option<HashMap<String, String>>) -> ConfigErrors {
    match load(Some(path), env) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(e) => e,
    }
}

fn problem_for<'e>(errors: &'e ConfigErrors, key: &str) -> &'e ConfigProblem {
    errors
        .problems()
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem for `{key}` in:\n{errors}"))
}

#[test]
fn a_signing_key_is_read_at_load_and_never_printed() {
    let fx = Fixture::new();
    let key = "k3y-".repeat(10);
    let key_file = fx.file("signing.key", format!("{key}\n").as_bytes());
    let text = format!(
        "[amqp]\nsigning_key_file = \"{key_file}\"\n{}",
        minimal(&fx)
    );
    let config = load_ok(&fx.config(&text), Some(HashMap::new()));
    let signing = config.amqp.signing_key.as_ref().expect("key loaded");
    assert_eq!(
        signing.expose(),
        key.as_bytes(),
        "one trailing newline removed"
    );
    assert!(config.describe().contains("job signatures:   required"));
    assert_eq!(config.amqp.publish_frame_max, None, "the broker's offer");
    assert!(!config.describe().contains(&key) && !format!("{config:?}").contains(&key));

    let short = fx.file("short.key", b"too-short\n");
    let text = format!("[amqp]\nsigning_key_file = \"{short}\"\n{}", minimal(&fx));
    let errors = load_err(&fx.config(&text), Some(HashMap::new()));
    let problem = problem_for(&errors, "amqp.signing_key_file");
    assert!(
        problem.message.contains("at least 32"),
        "{}",
        problem.message
    );
    assert!(!errors.to_string().contains("too-short"));
}

#[test]
fn max_concurrent_pushes_is_optional_and_bounded() {
    let fx = Fixture::new();
    let config = load_ok(&fx.config(&minimal(&fx)), Some(HashMap::new()));
    assert_eq!(
        config
            .registries
            .get("harbor")
            .and_then(|r| r.max_concurrent_pushes),
        None
    );

    let limited = format!("{}max_concurrent_pushes = 2\n", minimal(&fx));
    let config = load_ok(&fx.config(&limited), Some(HashMap::new()));
    assert_eq!(
        config
            .registries
            .get("harbor")
            .and_then(|r| r.max_concurrent_pushes),
        Some(2)
    );
    assert!(config.describe().contains("max concurrent pushes: 2"));

    for bad in ["0", "257", "\"many\""] {
        let text = format!("{}max_concurrent_pushes = {bad}\n", minimal(&fx));
        let errors = load_err(&fx.config(&text), Some(HashMap::new()));
        problem_for(&errors, "registries.harbor.max_concurrent_pushes");
    }
}

#[test]
fn full_file_round_trip() {
    let fx = Fixture::new();
    let amqp_pw = fx.file("amqp-pw", b"amqp-secret\n");
    let harbor_pw = fx.file("harbor-pw", format!("{SECRET}\r\n").as_bytes());
    let ca = fx.file("ca.crt", b"-----BEGIN CERTIFICATE-----\n");
    let path = fx.config(&format!(
        r#"
[amqp]
url = "amqp://pushfleet@rabbit:5672/%2f"
password_file = "{amqp_pw}"
topology_prefix = "pf-test"

[worker]
id = "worker-1"
concurrency = 8
job_timeout_s = 600
shutdown_grace_s = 30

[docker]
host = "tcp://dind:2375"

[registries.harbor]
url = "https://reg.example.com:10443"
username = "robot$ci"
password_file = "{harbor_pw}"
ca_file = "{ca}"
aliases = ["5", "harbor-prod"]
namespaces = ["production", "team-a"]

[registries.gitlab]
url = "https://registry.gitlab.example.com"
username = "deploy"
password_env = "GITLAB_PASSWORD"
aliases = [7]
namespaces = ["*"]

[registries.local]
url = "http://127.0.0.1:5000"
anonymous = true
namespaces = ["scratch"]
"#
    ));
    let config = load_ok(&path, env(&[("GITLAB_PASSWORD", "glpat-xyz")]));

    assert_eq!(
        config.amqp.url.redacted(),
        "amqp://pushfleet@rabbit:5672/%2f"
    );
    assert_eq!(config.amqp.topology_prefix, "pf-test");
    let url = config.amqp.url_with_password().expect("amqp password");
    assert_eq!(
        url.expose_secret(),
        "amqp://pushfleet:amqp-secret@rabbit:5672/%2f"
    );

    assert_eq!(
        config.worker,
        WorkerConfig {
            id: "worker-1".into(),
            concurrency: 8,
            pools: vec![pushfleet_shared::Pool::default()],
            job_timeout_s: 600,
            shutdown_grace_s: 30,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_min_delay_ms: DEFAULT_RETRY_MIN_DELAY_MS,
            retry_max_delay_s: DEFAULT_RETRY_MAX_DELAY_S,
        }
    );
    assert_eq!(config.worker.job_timeout(), Duration::from_secs(600));
    assert_eq!(config.worker.shutdown_grace(), Duration::from_secs(30));
    assert_eq!(config.worker.prefetch(), 8);
    let docker = config.docker.as_ref().expect("[docker] is configured");
    assert_eq!(
        DockerEndpoint::parse(&docker.host).expect("valid"),
        DockerEndpoint::Http("http://dind:2375".into())
    );

    assert_eq!(config.registries.len(), 3);
    let harbor = config.registries.get("harbor").expect("harbor");
    assert_eq!(harbor.url.as_str(), "https://reg.example.com:10443/");
    assert_eq!(harbor.host, "reg.example.com:10443");
    let login = harbor.login.as_ref().expect("not anonymous");
    assert_eq!(login.username.as_deref(), Some("robot$ci"));
    assert_eq!(
        login.password,
        PasswordSource::File(harbor_pw.clone().into())
    );
    assert_eq!(harbor.ca_file, Some(PathBuf::from(&ca)));
    assert_eq!(harbor.aliases, ["5", "harbor-prod"]);
    assert_eq!(harbor.namespaces, ["production", "team-a"]);
    let creds = harbor
        .credentials()
        .expect("readable")
        .expect("not anonymous");
    assert_eq!(creds.username, "robot$ci");
    assert_eq!(creds.password.expose_secret(), SECRET);

    let gitlab = config.registries.get("7").expect("gitlab by alias");
    assert_eq!(gitlab.key, "gitlab");
    assert_eq!(gitlab.host, "registry.gitlab.example.com");
    let creds = gitlab.credentials().expect("set").expect("not anonymous");
    assert_eq!(creds.password.expose_secret(), "glpat-xyz");

    let local = config.registries.get("local").expect("local");
    assert_eq!(local.host, "127.0.0.1:5000");
    assert!(local.login.is_none());
    assert!(local.credentials().expect("anonymous").is_none());

    let keys: Vec<&str> = config.registries.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["gitlab", "harbor", "local"]);
}

#[test]
fn defaults_apply_when_sections_are_absent() {
    let fx = Fixture::new();
    let config = load_ok(&fx.config(&minimal(&fx)), env(&[("HOSTNAME", "pod-7")]));
    assert_eq!(
        config.amqp.url.expose().expose_secret(),
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );
    assert_eq!(
        config.amqp.url.to_string(),
        "amqp://guest:***@127.0.0.1:5672/%2f"
    );
    assert_eq!(config.amqp.topology_prefix, "pushfleet");
    assert_eq!(config.amqp.password_file, None);
    assert_eq!(config.worker.id, format!("pod-7-{}", std::process::id()));
    assert_eq!(config.worker.concurrency, DEFAULT_CONCURRENCY);
    assert_eq!(config.worker.job_timeout(), Duration::from_secs(900));
    assert_eq!(config.worker.shutdown_grace(), Duration::from_secs(60));
    // No [docker] section: a daemon-free worker (registry-source jobs only).
    assert_eq!(config.docker, None);
    let harbor = config.registries.get("harbor").expect("harbor");
    assert_eq!(harbor.host, "reg.example.com");
    assert!(harbor.aliases.is_empty());
}

#[test]
fn environment_overrides_with_double_underscore() {
    let fx = Fixture::new();
    let path = fx.config(&format!("[worker]\nconcurrency = 2\n{}", minimal(&fx)));
    let config = load_ok(
        &path,
        env(&[
            ("PUSHFLEET__WORKER__CONCURRENCY", "8"),
            (
                "PUSHFLEET__AMQP__URL",
                &format!("amqp://pf:{SECRET}@rabbit:5672/%2f"),
            ),
            ("PUSHFLEET__WORKER__JOB_TIMEOUT_S", "1200"),
            // Not ours (single underscore): ignored, like Kubernetes service variables.
            ("PUSHFLEET_SERVICE_HOST", "10.0.0.1"),
        ]),
    );
    assert_eq!(config.worker.concurrency, 8);
    assert_eq!(config.worker.job_timeout(), Duration::from_secs(1200));
    assert_eq!(
        config.amqp.url.expose().expose_secret(),
        format!("amqp://pf:{SECRET}@rabbit:5672/%2f")
    );
    assert_eq!(config.amqp.url.to_string(), "amqp://pf:***@rabbit:5672/%2f");
    assert_eq!(
        config
            .amqp
            .url_with_password()
            .expect("url")
            .expose_secret(),
        format!("amqp://pf:{SECRET}@rabbit:5672/%2f")
    );
}

#[test]
fn environment_values_are_not_reparsed() {
    let fx = Fixture::new();
    let config = load_ok(
        &fx.config(&minimal(&fx)),
        env(&[
            // try_parsing would turn this into 123.
            ("PUSHFLEET__WORKER__ID", "0123"),
            (
                "PUSHFLEET__REGISTRIES__HARBOR__NAMESPACES",
                "production, team-a",
            ),
            ("PUSHFLEET__REGISTRIES__HARBOR__ALIASES", "5"),
            ("PUSHFLEET__REGISTRIES__HARBOR__USERNAME", "true"),
            // Empty counts as unset.
            ("PUSHFLEET__DOCKER__HOST", ""),
        ]),
    );
    assert_eq!(config.worker.id, "0123");
    let harbor = config.registries.get("5").expect("alias from env");
    assert_eq!(harbor.namespaces, ["production", "team-a"]);
    let login = harbor.login.as_ref().expect("login");
    assert_eq!(login.username.as_deref(), Some("true"));
    assert_eq!(config.docker, None, "an empty variable creates no [docker]");
}

#[test]
fn an_empty_docker_section_means_the_default_socket_and_none_means_no_daemon() {
    let fx = Fixture::new();
    let with = load_ok(&fx.config(&format!("[docker]\n{}", minimal(&fx))), env(&[]));
    let docker = with.docker.as_ref().expect("an empty [docker] is a daemon");
    assert_eq!(&*docker.host, DEFAULT_DOCKER_HOST);
    assert_eq!(
        DockerEndpoint::parse(&docker.host).expect("valid"),
        DockerEndpoint::Unix("/var/run/docker.sock".into())
    );
    let from_env = load_ok(
        &fx.config(&minimal(&fx)),
        env(&[("PUSHFLEET__DOCKER__HOST", "tcp://dind:2375")]),
    );
    assert_eq!(
        from_env.docker.as_ref().map(|d| &*d.host),
        Some("tcp://dind:2375"),
        "a variable alone configures the daemon"
    );
    let without = load_ok(&fx.config(&minimal(&fx)), env(&[]));
    assert_eq!(without.docker, None);
    let described = without.describe();
    assert!(described.contains("no [docker] section"), "{described}");
}

#[test]
fn a_registry_can_come_from_the_environment_alone() {
    let config = load(
        None,
        env(&[
            (
                "PUSHFLEET__REGISTRIES__HUB__URL",
                "https://registry-1.docker.io",
            ),
            ("PUSHFLEET__REGISTRIES__HUB__USERNAME", "ci"),
            ("PUSHFLEET__REGISTRIES__HUB__PASSWORD_ENV", "HUB_TOKEN"),
            ("PUSHFLEET__REGISTRIES__HUB__NAMESPACES", "mycompany"),
            ("HUB_TOKEN", "dckr_pat"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hub = config.registries.get("hub").expect("hub");
    assert_eq!(hub.host, "docker.io");
    assert_eq!(hub.url.as_str(), "https://registry-1.docker.io/");
}

#[test]
fn unknown_keys_are_all_named() {
    let fx = Fixture::new();
    let path = fx.config(&format!(
        "extra = 1\n[worker]\nconcurency = 3\n{}passwd_file = \"/x\"\n",
        minimal(&fx)
    ));
    let errors = load_err(&path, env(&[("PUSHFLEET__DOCKER__SOCKET", "/x.sock")]));
    let shown = errors.to_string();
    for key in [
        "extra",
        "worker.concurency",
        "registries.harbor.passwd_file",
    ] {
        let problem = problem_for(&errors, key);
        assert!(problem.message.contains("unknown key"), "{problem}");
        assert_eq!(problem.origin, Some(Origin::File(path.clone())));
    }
    let env_problem = problem_for(&errors, "docker.socket");
    assert_eq!(
        env_problem.origin,
        Some(Origin::Environment {
            variable: "PUSHFLEET__DOCKER__SOCKET".into()
        })
    );
    assert!(
        shown
            .contains("environment variable PUSHFLEET__DOCKER__SOCKET: docker.socket: unknown key"),
        "{shown}"
    );
    assert_eq!(errors.problems().len(), 4, "{shown}");
}

#[test]
fn missing_password_source_names_the_registry_and_the_file() {
    let fx = Fixture::new();
    let path = fx.config(
        "[registries.harbor]\nurl = \"https://reg.example.com\"\nusername = \"u\"\n\
         namespaces = [\"production\"]\n",
    );
    let errors = load_err(&path, env(&[]));
    let problem = problem_for(&errors, "registries.harbor");
    assert!(problem.message.contains("empty credentials"), "{problem}");
    let shown = errors.to_string();
    assert!(
        shown.contains(&format!("{}: registries.harbor: ", path.display())),
        "{shown}"
    );
    assert!(shown.contains("pushfleet.toml"), "{shown}");
}

#[test]
fn inline_password_is_refused_and_not_repeated() {
    let fx = Fixture::new();
    let path = fx.config(&format!("{}password = \"{SECRET}\"\n", minimal(&fx)));
    let errors = load_err(&path, env(&[]));
    let problem = problem_for(&errors, "registries.harbor.password");
    assert!(problem.message.contains("password_file"), "{problem}");
    assert!(problem.message.contains("password_env"), "{problem}");
    assert!(!errors.to_string().contains(SECRET));
    assert!(!format!("{errors:?}").contains(SECRET));
}

#[test]
fn unreadable_password_file_names_the_key_not_the_content() {
    let fx = Fixture::new();
    let mut not_utf8 = SECRET.as_bytes().to_vec();
    not_utf8.push(0xff);
    let bad = fx.file("bad-pw", &not_utf8);
    let missing = fx.dir.path().join("absent").display().to_string();
    let path = fx.config(&format!(
        r#"
[registries.a]
url = "https://a.example.com"
username = "u"
password_file = "{bad}"
namespaces = ["x"]
[registries.b]
url = "https://b.example.com"
username = "u"
password_file = "{missing}"
namespaces = ["x"]
[registries.c]
url = "https://c.example.com"
username = "u"
password_file = "{empty}"
namespaces = ["x"]
"#,
        empty = fx.file("empty-pw", b"\n"),
    ));
    let errors = load_err(&path, env(&[]));
    assert!(
        problem_for(&errors, "registries.a.password_file")
            .message
            .contains("UTF-8")
    );
    assert!(
        problem_for(&errors, "registries.b.password_file")
            .message
            .contains(&missing)
    );
    assert!(
        problem_for(&errors, "registries.c.password_file")
            .message
            .contains("empty")
    );
    assert!(!errors.to_string().contains(SECRET), "{errors}");
}

#[test]
fn password_env_must_be_set() {
    let fx = Fixture::new();
    let path = fx.config(
        "[registries.harbor]\nurl = \"https://reg.example.com\"\nusername = \"u\"\n\
         password_env = \"HARBOR_PASSWORD\"\nnamespaces = [\"production\"]\n",
    );
    let errors = load_err(&path, env(&[("OTHER", "x")]));
    let problem = problem_for(&errors, "registries.harbor.password_env");
    assert!(problem.message.contains("HARBOR_PASSWORD"), "{problem}");
    assert!(problem.message.contains("not set"), "{problem}");
    let errors = load_err(&path, env(&[("HARBOR_PASSWORD", "")]));
    assert!(
        problem_for(&errors, "registries.harbor.password_env")
            .message
            .contains("empty")
    );
    load_ok(&path, env(&[("HARBOR_PASSWORD", "pw")]));
}

#[test]
fn password_sources_exclude_each_other() {
    let fx = Fixture::new();
    let path = fx.config(&format!(
        "{}password_env = \"HARBOR_PASSWORD\"\n",
        minimal(&fx)
    ));
    let errors = load_err(&path, env(&[("HARBOR_PASSWORD", "pw")]));
    assert!(
        problem_for(&errors, "registries.harbor")
            .message
            .contains("exactly one")
    );
}

#[test]
fn anonymous_registries_take_no_credentials() {
    let fx = Fixture::new();
    let path = fx.config(&format!("{}anonymous = true\n", minimal(&fx)));
    let errors = load_err(&path, env(&[]));
    for key in [
        "registries.harbor.username",
        "registries.harbor.password_file",
    ] {
        assert!(problem_for(&errors, key).message.contains("anonymous"));
    }
}

#[test]
fn bad_registry_urls_are_refused() {
    let cases = [
        ("not a url", "not a valid URL"),
        ("ftp://reg.example.com", "scheme"),
        ("https://reg.example.com/v2/", "path"),
        ("https://reg.example.com/team", "path"),
        ("https://reg.example.com/?x=1", "query"),
        ("https://user:pass@reg.example.com", "credentials"),
    ];
    for (url, expected) in cases {
        let errors = load_from_str(
            &format!("[registries.r]\nurl = \"{url}\"\nanonymous = true\nnamespaces = [\"*\"]\n"),
            env(&[]),
        )
        .expect_err(url);
        let problem = problem_for(&errors, "registries.r.url");
        assert!(problem.message.contains(expected), "{url}: {problem}");
        assert!(!problem.message.contains("pass@"), "{problem}");
    }
}

#[test]
fn registry_host_is_what_image_references_use() {
    let cases = [
        ("https://reg.example.com", "reg.example.com"),
        ("https://reg.example.com:443", "reg.example.com"),
        ("https://reg.example.com:10443/", "reg.example.com:10443"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("http://[::1]:5000", "[::1]:5000"),
        ("https://REG.Example.com", "reg.example.com"),
        ("https://registry-1.docker.io", "docker.io"),
        ("https://index.docker.io", "docker.io"),
    ];
    for (url, host) in cases {
        let got = RegistryUrl::try_from(url.to_owned()).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(got.host, host, "{url}");
    }
}

#[test]
fn aliases_must_be_unique_across_the_catalogue() {
    let toml = r#"
[registries.a]
url = "https://a.example.com"
anonymous = true
aliases = ["5", "b"]
namespaces = ["*"]
[registries.b]
url = "https://b.example.com"
anonymous = true
aliases = ["5", "6", "6"]
namespaces = ["*"]
"#;
    let errors = load_from_str(toml, env(&[])).expect_err("duplicates");
    let messages: Vec<String> = errors.problems().iter().map(|p| p.to_string()).collect();
    let joined = messages.join("\n");
    assert!(
        joined.contains("registries.a.aliases: alias `b` is also a registry key"),
        "{joined}"
    );
    assert!(
        joined.contains("registries.b.aliases: alias `5` is already an alias of registry `a`"),
        "{joined}"
    );
    assert!(joined.contains("alias `6` is listed twice"), "{joined}");
    assert_eq!(messages.len(), 3, "{joined}");
}

#[test]
fn lookup_by_key_or_alias() {
    let toml = r#"
[registries.harbor]
url = "https://reg.example.com"
anonymous = true
aliases = ["5"]
namespaces = ["*"]
"#;
    let config = load_from_str(toml, env(&[])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.registries.get("harbor").map(|r| r.key.as_str()),
        Some("harbor")
    );
    assert_eq!(
        config.registries.get("5").map(|r| r.key.as_str()),
        Some("harbor")
    );
    assert!(config.registries.get("6").is_none());
    assert!(config.registries.get("Harbor").is_none());
    assert!(!config.registries.is_empty());
}

#[test]
fn allows_repository_only_strictly_inside_a_namespace() {
    let toml = r#"
[registries.r]
url = "https://r.example.com"
anonymous = true
namespaces = ["team-a", "org/team"]
[registries.any]
url = "https://any.example.com"
anonymous = true
namespaces = ["*"]
"#;
    let config = load_from_str(toml, env(&[])).unwrap_or_else(|e| panic!("{e}"));
    let r = config.registries.get("r").expect("r");
    let cases = [
        ("team-a/app", true),
        ("team-a/sub/app", true),
        ("org/team/app", true),
        ("team-a", false),
        ("team-ab/app", false),
        ("team-a-b/app", false),
        ("team-a/", false),
        ("team-a//app", false),
        ("org/team", false),
        ("org/other/app", false),
        ("/team-a/app", false),
        ("", false),
        ("app", false),
    ];
    for (repo, allowed) in cases {
        assert_eq!(r.allows_repository(repo), allowed, "{repo}");
    }
    let any = config.registries.get("any").expect("any");
    assert!(any.allows_repository("app"));
    assert!(any.allows_repository("x/y/z"));
    assert!(!any.allows_repository(""));
    assert!(!any.allows_repository("x//y"));
}

#[test]
fn namespaces_are_required_and_checked() {
    let toml = r#"
[registries.a]
url = "https://a.example.com"
anonymous = true
[registries.b]
url = "https://b.example.com"
anonymous = true
namespaces = []
[registries.c]
url = "https://c.example.com"
anonymous = true
namespaces = ["team-a/", "Team"]
"#;
    let errors = load_from_str(toml, env(&[])).expect_err("namespaces");
    assert!(
        problem_for(&errors, "registries.a.namespaces")
            .message
            .contains("missing")
    );
    assert!(
        problem_for(&errors, "registries.b.namespaces")
            .message
            .contains("at least one")
    );
    assert!(
        problem_for(&errors, "registries.c.namespaces")
            .message
            .contains("team-a/")
    );
}

#[test]
fn pools_default_to_the_default_pool_and_are_checked() {
    let fx = Fixture::new();
    let base = minimal(&fx);
    let names = |c: &Config| {
        c.worker
            .pools
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&load_ok(&fx.config(&base), env(&[]))), ["default"]);
    let listed = fx.config(&format!(
        "[worker]\npools = [\"default\", \"build-01\"]\n{base}"
    ));
    assert_eq!(names(&load_ok(&listed, env(&[]))), ["default", "build-01"]);
    let from_env = load_ok(
        &fx.config(&base),
        env(&[("PUSHFLEET__WORKER__POOLS", "build-01,build-02")]),
    );
    assert_eq!(names(&from_env), ["build-01", "build-02"]);

    for (pools, says) in [
        ("[]", "empty"),
        ("[\"a\", \"a\"]", "listed twice"),
        ("[\"Build.01\"]", "not a pool name"),
    ] {
        let path = fx.config(&format!("[worker]\npools = {pools}\n{base}"));
        let errors = load_err(&path, env(&[]));
        let problem = problem_for(&errors, "worker.pools");
        assert!(problem.message.contains(says), "{pools}: {problem}");
    }
}

#[test]
fn worker_limits_are_enforced() {
    let fx = Fixture::new();
    let base = minimal(&fx);
    let cases = [
        (
            "[worker]\nconcurrency = 0\n",
            "worker.concurrency",
            "between 1 and 256",
        ),
        (
            "[worker]\nconcurrency = 257\n",
            "worker.concurrency",
            "between 1 and 256",
        ),
        (
            "[worker]\nconcurrency = -1\n",
            "worker.concurrency",
            "whole number",
        ),
        (
            "[worker]\njob_timeout_s = 1800\n",
            "worker.job_timeout_s",
            "consumer_timeout",
        ),
        (
            "[worker]\njob_timeout_s = 0\n",
            "worker.job_timeout_s",
            "between",
        ),
        ("[worker]\nid = \"a b\"\n", "worker.id", "spaces"),
        (
            "[docker]\nhost = \"ssh://docker\"\n",
            "docker.host",
            "unsupported scheme",
        ),
        (
            "[docker]\nhost = \"unix://docker.sock\"\n",
            "docker.host",
            "absolute",
        ),
        ("[docker]\nhost = \"tcp://docker\"\n", "docker.host", "port"),
        (
            "[amqp]\nurl = \"http://rabbit\"\n",
            "amqp.url",
            "amqp or amqps",
        ),
        (
            "[amqp]\ntopology_prefix = \"amq.x\"\n",
            "amqp.topology_prefix",
            "amq.",
        ),
        ("amqp = 5\n", "amqp", "expected a table"),
    ];
    for (section, key, expected) in cases {
        let errors = load_from_str(&format!("{section}{base}"), env(&[])).expect_err(section);
        let problem = problem_for(&errors, key);
        assert!(problem.message.contains(expected), "{section}: {problem}");
    }
    let errors = load_err(
        &fx.config(&base),
        env(&[("PUSHFLEET__WORKER__JOB_TIMEOUT_S", "1701")]),
    );
    let problem = problem_for(&errors, "worker.job_timeout_s");
    assert_eq!(
        problem.origin,
        Some(Origin::Environment {
            variable: "PUSHFLEET__WORKER__JOB_TIMEOUT_S".into()
        })
    );
    let errors = load_err(
        &fx.config(&base),
        env(&[("PUSHFLEET__WORKER__CONCURRENCY", "eight")]),
    );
    assert!(
        problem_for(&errors, "worker.concurrency")
            .message
            .contains("\"eight\"")
    );
}

#[test]
fn docker_hosts() {
    let cases = [
        (
            "unix:///var/run/docker.sock",
            Some(DockerEndpoint::Unix("/var/run/docker.sock".into())),
        ),
        (
            "tcp://127.0.0.1:2375",
            Some(DockerEndpoint::Http("http://127.0.0.1:2375".into())),
        ),
        (
            "http://dind:2375",
            Some(DockerEndpoint::Http("http://dind:2375".into())),
        ),
        (
            "http://dind",
            Some(DockerEndpoint::Http("http://dind:80".into())),
        ),
        ("https://dind:2376", None),
        ("tcp://dind:2375/x", None),
        ("/var/run/docker.sock", None),
        ("", None),
    ];
    for (host, expected) in cases {
        assert_eq!(DockerEndpoint::parse(host).ok(), expected, "{host}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let toml = r#"
[worker]
concurrency = 0
job_timeout_s = 99999
[docker]
host = "ftp://x"
[registries.a]
url = "ftp://a"
namespaces = []
[registries.B]
url = "https://b.example.com"
anonymous = true
namespaces = ["*"]
"#;
    let errors = load_from_str(toml, env(&[])).expect_err("many problems");
    for key in [
        "worker.concurrency",
        "worker.job_timeout_s",
        "docker.host",
        "registries.a.url",
        "registries.a.namespaces",
        "registries.a.username",
        "registries.a",
        "registries.B",
    ] {
        problem_for(&errors, key);
    }
    // No origin without a file: just `key: message`.
    assert!(
        errors
            .to_string()
            .lines()
            .any(|l| l.starts_with("worker.concurrency: "))
    );
}

#[test]
fn an_empty_catalogue_is_an_error() {
    let errors = load_from_str("[worker]\nconcurrency = 2\n", env(&[])).expect_err("empty");
    assert!(
        problem_for(&errors, "registries")
            .message
            .contains("no registries")
    );
}

#[test]
fn missing_or_malformed_files_are_problems() {
    let fx = Fixture::new();
    let missing = fx.dir.path().join("absent.toml");
    let errors = load_err(&missing, env(&[]));
    assert_eq!(errors.problems().len(), 1);
    assert!(
        errors
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display()))
    );

    let path = fx.config(&format!("[amqp]\nurl = \"amqp://u:{SECRET}@h\n"));
    let errors = load_err(&path, env(&[]));
    let shown = errors.to_string();
    assert!(
        shown.contains("not valid TOML at line 2, column"),
        "{shown}"
    );
    assert!(!shown.contains(SECRET), "{shown}");
}

#[test]
fn malformed_override_names_are_reported() {
    let fx = Fixture::new();
    let errors = load_err(
        &fx.config(&minimal(&fx)),
        env(&[
            ("PUSHFLEET__WORKER__", "1"),
            ("PUSHFLEET__WORKER__A.B", "1"),
        ]),
    );
    assert_eq!(errors.problems().len(), 2, "{errors}");
    assert!(
        errors
            .to_string()
            .contains("environment variable PUSHFLEET__WORKER__:")
    );
}

#[test]
fn registry_keys_must_be_lowercase() {
    let errors = load_from_str(
        "[registries.Harbor]\nurl = \"https://h\"\nanonymous = true\nnamespaces = [\"*\"]\n",
        env(&[]),
    )
    .expect_err("uppercase key");
    assert!(
        problem_for(&errors, "registries.Harbor")
            .message
            .contains("lowercase")
    );
}

#[test]
fn credentials_are_read_again_after_rotation() {
    let fx = Fixture::new();
    let config = load_ok(&fx.config(&minimal(&fx)), env(&[]));
    let harbor = config.registries.get("harbor").expect("harbor");
    fx.file("harbor-pw", b"rotated\n");
    let creds = harbor.credentials().expect("readable").expect("creds");
    assert_eq!(creds.password.expose_secret(), "rotated");
}

#[test]
fn amqp_urls_name_the_nodes_of_a_cluster_in_order() {
    let fx = Fixture::new();
    let pw = fx.file("amqp-pw", b"s3cret\n");
    let toml = format!(
        "[amqp]\nurls = [\"amqp://pf@n1:5672/%2f\", \"amqp://pf@n2:5672/%2f\", \"amqp://pf@n3/%2f\"]\npassword_file = \"{pw}\"\nquorum_replicas = 3\npublish_frame_max = 32768\n{}",
        minimal(&fx)
    );
    let config = load_from_str(&toml, env(&[])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.amqp.url.to_string(), "amqp://pf@n1:5672/%2f");
    let urls = config.amqp.urls_with_password().expect("urls");
    let exposed: Vec<&str> = urls.iter().map(|u| u.expose_secret()).collect();
    assert_eq!(
        exposed,
        [
            "amqp://pf:s3cret@n1:5672/%2f",
            "amqp://pf:s3cret@n2:5672/%2f",
            "amqp://pf:s3cret@n3/%2f"
        ]
    );
    assert_eq!(config.amqp.quorum_replicas, Some(3));
    assert_eq!(config.amqp.publish_frame_max, Some(32768));
    let described = config.describe();
    assert!(described.contains("n2:5672"), "{described}");
    assert!(!described.contains("s3cret"), "{described}");
    let queues = config.amqp.topology().queues();
    assert!(queues.iter().all(|q| {
        q.arguments
            .iter()
            .any(|(k, _)| k == "x-quorum-initial-group-size" || k == "x-initial-cluster-size")
    }));

    // From the environment, comma-separated, over the file's single url.
    let toml = format!("[amqp]\nurl = \"amqp://a\"\n{}", minimal(&fx));
    let errors = load_from_str(
        &toml,
        env(&[("PUSHFLEET__AMQP__URLS", "amqp://n1, amqp://n2")]),
    )
    .expect_err("url and urls");
    assert!(
        problem_for(&errors, "amqp.urls")
            .message
            .contains("not both")
    );
    let config = load_from_str(
        &minimal(&fx),
        env(&[("PUSHFLEET__AMQP__URLS", "amqp://n1, amqp://n2")]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.amqp.nodes(), "amqp://n1, amqp://n2");
}

#[test]
fn bad_amqp_urls_and_replica_counts_are_problems() {
    let fx = Fixture::new();
    for (amqp, key, needle) in [
        ("urls = []", "amqp.urls", "empty"),
        (
            "urls = [\"amqp://n1\", \"http://n2\"]",
            "amqp.urls",
            "entry 2",
        ),
        ("urls = [\"amqp://n1\", \"\"]", "amqp.urls", "entry 2"),
        (
            "quorum_replicas = 0",
            "amqp.quorum_replicas",
            "between 1 and 9",
        ),
        (
            "quorum_replicas = 10",
            "amqp.quorum_replicas",
            "between 1 and 9",
        ),
        (
            "publish_frame_max = 4096",
            "amqp.publish_frame_max",
            "between 8192 and 1048576",
        ),
    ] {
        let toml = format!("[amqp]\n{amqp}\n{}", minimal(&fx));
        let errors = load_from_str(&toml, env(&[])).expect_err(amqp);
        let problem = problem_for(&errors, key);
        assert!(
            problem.message.contains(needle),
            "{amqp}: {}",
            problem.message
        );
    }
}

#[test]
fn amqp_password_file_is_percent_encoded_into_the_url() {
    let fx = Fixture::new();
    let pw = fx.file("amqp-pw", b"p@ss/w:rd\n");
    let toml = format!(
        "[amqp]\nurl = \"amqps://pf@rabbit/vhost\"\npassword_file = \"{pw}\"\n{}",
        minimal(&fx)
    );
    let config = load_from_str(&toml, env(&[])).unwrap_or_else(|e| panic!("{e}"));
    let url = config.amqp.url_with_password().expect("url");
    assert_eq!(
        url.expose_secret(),
        "amqps://pf:p%40ss%2Fw%3Ard@rabbit/vhost"
    );
    assert_eq!(config.amqp.url.to_string(), "amqps://pf@rabbit/vhost");

    let toml = format!(
        "[amqp]\nurl = \"amqp://rabbit\"\npassword_file = \"{pw}\"\n{}",
        minimal(&fx)
    );
    let errors = load_from_str(&toml, env(&[])).expect_err("no user");
    assert!(
        problem_for(&errors, "amqp.password_file")
            .message
            .contains("no user name")
    );
}

#[test]
fn secrets_never_appear_in_describe_debug_or_errors() {
    let fx = Fixture::new();
    let amqp_pw = fx.file("amqp-pw", SECRET.as_bytes());
    let toml = format!(
        "[amqp]\nurl = \"amqp://pf:{SECRET}@rabbit/%2f\"\n{}\n\
         [registries.gitlab]\nurl = \"https://gl.example.com\"\nusername = \"u\"\n\
         password_env = \"GL_PW\"\nnamespaces = [\"*\"]\n",
        minimal(&fx)
    );
    let environment = env(&[
        ("GL_PW", SECRET),
        ("PUSHFLEET__AMQP__PASSWORD_FILE", &amqp_pw),
    ]);
    let config = load_from_str(&toml, environment.clone()).unwrap_or_else(|e| panic!("{e}"));
    let described = config.describe();
    for shown in [
        described.clone(),
        format!("{config:?}"),
        format!("{config:#?}"),
    ] {
        assert!(!shown.contains(SECRET), "{shown}");
    }
    assert!(
        described.contains("amqp://pf:***@rabbit/%2f"),
        "{described}"
    );
    assert!(
        described.contains(&format!("file {amqp_pw} (readable)")),
        "{described}"
    );
    assert!(described.contains("env GL_PW (set)"), "{described}");
    assert!(described.contains("harbor"), "{described}");
    assert!(described.contains("namespaces: production"), "{described}");

    // The same configuration, broken in every secret-adjacent way.
    let broken = format!(
        "{toml}password = \"{SECRET}\"\n[registries.bad]\nurl = \"https://u:{SECRET}@x\"\n\
         namespaces = [\"*\"]\nanonymous = true\n[amqp2]\nx = \"{SECRET}\"\n"
    );
    let errors = load_from_str(&broken, environment).expect_err("broken");
    assert!(errors.problems().len() >= 3, "{errors}");
    assert!(!errors.to_string().contains(SECRET), "{errors}");
    assert!(!format!("{errors:?}").contains(SECRET), "{errors:?}");
}

#[test]
fn describe_reports_unusable_sources() {
    let fx = Fixture::new();
    let config = load_ok(&fx.config(&minimal(&fx)), env(&[]));
    std::fs::remove_file(fx.dir.path().join("harbor-pw")).expect("remove");
    let described = config.describe();
    assert!(described.contains("NOT USABLE"), "{described}");
}

#[test]
fn redact_url_cases() {
    let cases = [
        (
            "amqp://user:pw@rabbit:5672/%2f",
            "amqp://user:***@rabbit:5672/%2f",
        ),
        ("amqp://user@rabbit:5672/%2f", "amqp://user@rabbit:5672/%2f"),
        ("amqp://rabbit", "amqp://rabbit"),
        ("amqp://:pw@rabbit", "amqp://:***@rabbit"),
        (
            "https://u:p%40ss@reg.example.com/",
            "https://u:***@reg.example.com/",
        ),
        ("not a url with:secret@stuff", "<invalid URL>"),
        ("", "<invalid URL>"),
    ];
    for (input, expected) in cases {
        assert_eq!(redact_url(input), expected, "{input}");
    }
}

#[test]
fn the_example_file_is_valid() {
    let fx = Fixture::new();
    let example = include_str!("../../../deploy/config/pushfleet.example.toml");
    let amqp_pw = fx.file("amqp", b"amqp-pw\n");
    let harbor_pw = fx.file("harbor", b"harbor-pw\n");
    let ca = fx.file("harbor-ca.crt", b"-----BEGIN CERTIFICATE-----\n");
    let hub = docker_config_file(
        &fx,
        ".dockerconfigjson",
        &[("https://index.docker.io/v1/", "mycompany-ci:dckr_pat")],
    );
    let config = load_from_str(
        example,
        env(&[
            ("PUSHFLEET__AMQP__PASSWORD_FILE", &amqp_pw),
            ("PUSHFLEET__REGISTRIES__HARBOR__PASSWORD_FILE", &harbor_pw),
            ("PUSHFLEET__REGISTRIES__HARBOR__CA_FILE", &ca),
            ("PUSHFLEET__REGISTRIES__DOCKERHUB__DOCKER_CONFIG", &hub),
            ("GITLAB_REGISTRY_TOKEN", "glpat"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dockerhub = config.registries.get("dockerhub").expect("dockerhub");
    let login = dockerhub.credentials().expect("resolved").expect("creds");
    assert_eq!(login.username, "mycompany-ci");
    assert!(config.registries.get("harbor").is_some());
    assert!(config.registries.len() >= 2);
    assert!(!example.contains("password ="));
}

// --- docker_config ---

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A Docker `config.json` in the fixture directory with `auths` entries `(key, user:pw)`.
fn docker_config_file(fx: &Fixture, name: &str, auths: &[(&str, &str)]) -> String {
    let entries: Vec<String> = auths
        .iter()
        .map(|(key, login)| format!(r#""{key}": {{"auth": "{}"}}"#, b64(login)))
        .collect();
    fx.file(
        name,
        format!(r#"{{"auths": {{{}}}}}"#, entries.join(", ")).as_bytes(),
    )
}

fn registry_toml(key: &str, url: &str, extra: &str) -> String {
    format!("[registries.{key}]\nurl = \"{url}\"\nnamespaces = [\"team\"]\n{extra}\n")
}

#[tokio::test]
async fn docker_config_gives_user_and_password() {
    let fx = Fixture::new();
    let dc = docker_config_file(
        &fx,
        "config.json",
        &[
            ("https://index.docker.io/v1/", &format!("hubuser:{SECRET}")),
            ("reg.example.com:5000", "robot:reg-pw"),
        ],
    );
    let toml = format!(
        "{}{}{}",
        registry_toml(
            "hub",
            "https://registry-1.docker.io",
            &format!("docker_config = \"{dc}\"")
        ),
        registry_toml(
            "reg",
            "https://reg.example.com:5000",
            &format!("username = \"robot\"\ndocker_config = \"{dc}\"")
        ),
        registry_toml(
            "index",
            "https://index.docker.io",
            &format!("docker_config = \"{dc}\"")
        ),
    );
    let config = load_from_str(&toml, env(&[])).unwrap_or_else(|e| panic!("{e}"));
    let hub = config.registries.get("hub").expect("hub");
    assert_eq!(hub.host, "docker.io");
    let login = hub.login.as_ref().expect("login");
    assert_eq!(login.username, None);
    assert_eq!(
        login.password,
        PasswordSource::DockerConfig(DockerConfigSource {
            path: dc.clone().into(),
            server: "https://index.docker.io/v1/".into(),
        })
    );
    for registry in [hub, config.registries.get("index").expect("index")] {
        let login = registry.credentials().expect("resolved").expect("creds");
        assert_eq!(login.username, "hubuser");
        assert_eq!(login.password.expose_secret(), SECRET);
        let login = registry
            .credentials_async()
            .await
            .expect("resolved")
            .expect("creds");
        assert_eq!(login.username, "hubuser");
    }
    let reg = config.registries.get("reg").expect("reg");
    let login = reg.credentials_async().await.expect("ok").expect("creds");
    assert_eq!(
        (login.username.as_str(), login.password.expose_secret()),
        ("robot", "reg-pw")
    );

    let described = config.describe();
    assert!(
        described.contains(&format!(
            "docker config {dc} (key https://index.docker.io/v1/) (resolved)"
        )),
        "{described}"
    );
    assert!(
        described.contains("hubuser (from the docker config)"),
        "{described}"
    );
    assert!(!described.contains(SECRET), "{described}");
    assert!(!format!("{config:?}").contains(SECRET));

    // Another user logs in there later: jobs fail rather than push as someone else.
    std::fs::write(
        &dc,
        format!(
            r#"{{"auths": {{"reg.example.com:5000": {{"auth": "{}"}}}}}}"#,
            b64(&format!("intruder:{SECRET}"))
        ),
    )
    .expect("rewrite");
    let err = reg.credentials_async().await.expect_err("other user");
    assert!(
        matches!(err, CredentialError::DockerConfigUserMismatch { .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains(SECRET), "{err}");
    // And the Hub entry is gone: the one error naming the key.
    let err = hub.credentials().expect_err("gone");
    assert!(
        matches!(err, CredentialError::NoDockerCredential { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("`https://index.docker.io/v1/`"),
        "{err}"
    );
}

#[test]
fn docker_config_true_is_dockers_own_default() {
    let fx = Fixture::new();
    let dir = fx.dir.path().join("dockercfg");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"auths": {{"reg.example.com": {{"auth": "{}"}}}}}}"#,
            b64("u:pw")
        ),
    )
    .expect("write");
    let home = fx.dir.path().join("home");
    std::fs::create_dir_all(home.join(".docker")).expect("mkdir");
    std::fs::copy(dir.join("config.json"), home.join(".docker/config.json")).expect("copy");
    let toml = registry_toml("reg", "https://reg.example.com", "docker_config = true");
    let dir_s = dir.display().to_string();
    let home_s = home.display().to_string();
    let cases = [
        (
            vec![("DOCKER_CONFIG", dir_s.as_str()), ("HOME", home_s.as_str())],
            dir.join("config.json"),
        ),
        (
            vec![("HOME", home_s.as_str())],
            home.join(".docker/config.json"),
        ),
    ];
    for (vars, expected) in cases {
        let config = load_from_str(&toml, env(&vars)).unwrap_or_else(|e| panic!("{e}"));
        let reg = config.registries.get("reg").expect("reg");
        match reg.login.as_ref().map(|login| &login.password) {
            Some(PasswordSource::DockerConfig(source)) => {
                assert_eq!(source.path, expected);
                assert_eq!(source.server, "reg.example.com");
            }
            other => panic!("{other:?}"),
        }
    }
    // From the environment alone, as text.
    let config = load(
        None,
        env(&[
            ("PUSHFLEET__REGISTRIES__REG__URL", "https://reg.example.com"),
            ("PUSHFLEET__REGISTRIES__REG__DOCKER_CONFIG", "true"),
            ("PUSHFLEET__REGISTRIES__REG__NAMESPACES", "team"),
            ("DOCKER_CONFIG", dir_s.as_str()),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let login = config
        .registries
        .get("reg")
        .expect("reg")
        .credentials()
        .expect("ok")
        .expect("creds");
    assert_eq!(login.username, "u");

    let errors = load_from_str(&toml, env(&[])).expect_err("no HOME");
    assert!(
        problem_for(&errors, "registries.reg.docker_config")
            .message
            .contains("neither DOCKER_CONFIG nor HOME"),
        "{errors}"
    );
    // false is no source at all.
    let errors = load_from_str(
        &registry_toml("reg", "https://reg.example.com", "docker_config = false"),
        env(&[]),
    )
    .expect_err("no source");
    assert!(
        problem_for(&errors, "registries.reg")
            .message
            .contains("no password source")
    );
}

#[test]
fn docker_config_problems_are_found_at_load() {
    let fx = Fixture::new();
    let dc = docker_config_file(&fx, "config.json", &[("other.example.com", "u:pw")]);
    let missing = fx.dir.path().join("absent.json").display().to_string();
    let broken = fx.file("broken.json", format!("{{\"auths\": \"{SECRET}").as_bytes());
    let pw = fx.file("pw", b"pw\n");
    let toml = [
        // No entry for the key: the seed-002 error, naming the key.
        registry_toml(
            "none",
            "https://reg.example.com:5000",
            &format!("docker_config = \"{dc}\""),
        ),
        registry_toml(
            "missing",
            "https://reg.example.com",
            &format!("docker_config = \"{missing}\""),
        ),
        registry_toml(
            "broken",
            "https://reg.example.com",
            &format!("docker_config = \"{broken}\""),
        ),
        registry_toml(
            "both",
            "https://other.example.com",
            &format!("username = \"u\"\npassword_file = \"{pw}\"\ndocker_config = \"{dc}\""),
        ),
        registry_toml(
            "mismatch",
            "https://other.example.com",
            &format!("username = \"someone-else\"\ndocker_config = \"{dc}\""),
        ),
        registry_toml(
            "anon",
            "https://other.example.com",
            &format!("anonymous = true\ndocker_config = \"{dc}\""),
        ),
        registry_toml("number", "https://other.example.com", "docker_config = 5"),
        registry_toml(
            "hubroot",
            "https://docker.io",
            &format!("docker_config = \"{dc}\""),
        ),
    ]
    .concat();
    let errors = load_from_str(&toml, env(&[])).expect_err("problems");
    let none = problem_for(&errors, "registries.none.docker_config");
    assert!(
        none.message
            .starts_with("no usable credentials for `reg.example.com:5000` in docker config"),
        "{none}"
    );
    assert!(
        problem_for(&errors, "registries.missing.docker_config")
            .message
            .contains("absent.json")
    );
    assert!(
        problem_for(&errors, "registries.broken.docker_config")
            .message
            .contains("not valid JSON (line 1")
    );
    assert!(
        problem_for(&errors, "registries.both")
            .message
            .contains("exactly one")
    );
    assert!(
        problem_for(&errors, "registries.mismatch.username")
            .message
            .contains("another user than the configured username `someone-else`")
    );
    assert!(
        problem_for(&errors, "registries.anon.docker_config")
            .message
            .contains("anonymous")
    );
    assert!(
        problem_for(&errors, "registries.number.docker_config")
            .message
            .contains("or true")
    );
    assert!(
        problem_for(&errors, "registries.hubroot.url")
            .message
            .contains("https://registry-1.docker.io")
    );
    // A docker_config registry needs no username; the others still do.
    assert!(
        !errors
            .problems()
            .iter()
            .any(|p| p.key == "registries.none.username"),
        "{errors}"
    );
    let shown = format!("{errors}\n{errors:?}");
    assert!(!shown.contains(SECRET), "{shown}");
}

#[test]
fn the_amqp_password_is_never_shown() {
    // Describe, Debug and the error of every AMQP URL problem, from the file and the
    // environment, with the password in the URL.
    let fx = Fixture::new();
    let base = minimal(&fx);
    let config = load_from_str(
        &format!("[amqp]\nurl = \"amqps://pf:{SECRET}@rabbit:5671/vh\"\n{base}"),
        env(&[]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for shown in [
        config.describe(),
        format!("{config:?}"),
        config.amqp.url.to_string(),
        format!("{:?}", config.amqp.url),
        config.amqp.url.redacted(),
    ] {
        assert!(!shown.contains(SECRET), "{shown}");
    }
    assert!(config.describe().contains("amqps://pf:***@rabbit:5671/vh"));
    for url in [
        format!("http://pf:{SECRET}@rabbit"),
        format!("amqp://pf:{SECRET}@"),
        format!("amqp://pf:{SECRET}@[rabbit"),
        format!("amqp://pf:{SECRET}@rabbit:99999"),
        format!("pf:{SECRET}@rabbit"),
    ] {
        let from_file =
            load_from_str(&format!("[amqp]\nurl = \"{url}\"\n{base}"), env(&[])).expect_err(&url);
        let from_env =
            load_from_str(&base, env(&[("PUSHFLEET__AMQP__URL", &url)])).expect_err(&url);
        for errors in [from_file, from_env] {
            problem_for(&errors, "amqp.url");
            let shown = format!("{errors}\n{errors:?}");
            assert!(!shown.contains(SECRET), "{url}: {shown}");
        }
    }
}

#[test]
fn problems_in_one_table_do_not_hide_each_other() {
    // Several values of one table that do not deserialize, and an unknown key among them:
    // each is reported (deserialization runs again without the one that failed).
    let fx = Fixture::new();
    let toml = format!(
        "[amqp]\nurl = \"http://pf:{SECRET}@rabbit\"\ncolour = 1\nquorum_replicas = 0\n\
         topology_prefix = \"amq.x\"\n[worker]\nconcurrency = \"many\"\nid = \"a b\"\n{}",
        minimal(&fx)
    );
    let errors = load_from_str(&toml, env(&[])).expect_err("problems");
    let keys: Vec<&str> = errors.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "amqp.colour",
            "amqp.quorum_replicas",
            "amqp.topology_prefix",
            "amqp.url",
            "worker.concurrency",
            "worker.id"
        ],
        "{errors}"
    );
    assert!(!errors.to_string().contains(SECRET), "{errors}");
}

#[test]
fn values_of_the_wrong_kind_are_not_converted() {
    // What a looser reader would turn into something else (2.5 into 3, 1 into true, true into
    // "true", "yes" into 1) is an error naming the key.
    let fx = Fixture::new();
    let base = minimal(&fx);
    let cases = [
        (
            "[worker]\nconcurrency = 2.5\n",
            "worker.concurrency",
            "found a float",
        ),
        (
            "[worker]\nconcurrency = true\n",
            "worker.concurrency",
            "found a boolean",
        ),
        ("[worker]\nid = true\n", "worker.id", "found a boolean"),
        (
            "[registries.x]\nurl = \"https://x\"\nanonymous = 1\nnamespaces = [\"*\"]\n",
            "registries.x.anonymous",
            "found an integer",
        ),
    ];
    for (toml, key, expected) in cases {
        let errors = load_from_str(&format!("{toml}{base}"), env(&[])).expect_err(toml);
        let problem = problem_for(&errors, key);
        assert!(problem.message.contains(expected), "{toml}: {problem}");
    }
    let errors =
        load_from_str(&base, env(&[("PUSHFLEET__WORKER__CONCURRENCY", "yes")])).expect_err("yes");
    assert!(
        problem_for(&errors, "worker.concurrency")
            .message
            .contains("expected a whole number, found \"yes\""),
        "{errors}"
    );
    // A list from the environment names its empty entry.
    let errors = load_from_str(
        &base,
        env(&[("PUSHFLEET__REGISTRIES__HARBOR__NAMESPACES", "a,,b")]),
    )
    .expect_err("empty entry");
    let problem = problem_for(&errors, "registries.harbor.namespaces");
    assert_eq!(problem.message, "entry 2 of the list is empty");
    assert_eq!(
        problem.origin,
        Some(Origin::Environment {
            variable: "PUSHFLEET__REGISTRIES__HARBOR__NAMESPACES".into()
        })
    );
}

#[test]
fn a_missing_url_does_not_hide_the_password_file_problem() {
    let fx = Fixture::new();
    let missing = fx.dir.path().join("absent").display().to_string();
    let toml = format!(
        "[registries.r]\nusername = \"u\"\npassword_file = \"{missing}\"\nnamespaces = [\"x\"]\n"
    );
    let errors = load_from_str(&toml, env(&[])).expect_err("problems");
    assert!(
        problem_for(&errors, "registries.r.url")
            .message
            .contains("missing")
    );
    assert!(
        problem_for(&errors, "registries.r.password_file")
            .message
            .contains(&missing)
    );
}
