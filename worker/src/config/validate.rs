//! What the file and the environment deserialize into ([`RawConfig`]: every value already of
//! its type and checked on its own, by serde), and the one pass that checks the rest and
//! builds the [`Config`]: defaults that depend on the environment, keys that exclude or need
//! each other, files that must be readable, credentials that must resolve, the catalogue's
//! aliases. Every problem is reported, with its key, through the [`Loader`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pushfleet_shared::reference::{DOCKER_HUB, ReferenceError, is_docker_hub, validate_repository};

use crate::registry::check_base_url;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use url::Url;

use super::load::Loader;
use super::{
    AmqpConfig, AmqpUrl, Catalogue, Config, DEFAULT_AMQP_URL, DockerConfig, ENV_PREFIX,
    ENV_SEPARATOR, MAX_CONCURRENCY, MAX_PUBLISH_FRAME_MAX, MAX_QUORUM_REPLICAS,
    MIN_PUBLISH_FRAME_MAX, Registry, WorkerConfig, read_signing_key,
};
use crate::credentials::{
    CredentialError, DockerConfigSource, EnvSource, Login, PasswordSource, docker_credential_key,
};

/// The whole file. Each section is optional; unknown keys are refused at every level.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    amqp: RawAmqp,
    #[serde(default = "WorkerConfig::defaults")]
    worker: WorkerConfig,
    docker: Option<DockerConfig>,
    registries: Option<BTreeMap<String, RawRegistry>>,
}

/// `[amqp]`, before `url` and `urls` are reconciled and the signing key is read.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAmqp {
    url: Option<AmqpUrl>,
    urls: Option<Vec<AmqpUrl>>,
    password_file: Option<NonEmpty>,
    topology_prefix: Option<TopologyPrefix>,
    #[serde(deserialize_with = "super::de::some_within::<_, _, 1, MAX_QUORUM_REPLICAS>")]
    quorum_replicas: Option<u8>,
    signing_key_file: Option<NonEmpty>,
    #[serde(
        deserialize_with = "super::de::some_within::<_, _, MIN_PUBLISH_FRAME_MAX, MAX_PUBLISH_FRAME_MAX>"
    )]
    publish_frame_max: Option<u32>,
}

/// `[registries.<key>]`, before the password source is checked. (An inline `password` is
/// refused as an unknown key with its own message: see `de`.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    url: Option<RegistryUrl>,
    username: Option<NonEmpty>,
    password_file: Option<NonEmpty>,
    password_env: Option<EnvVarName>,
    docker_config: Option<DockerConfigFile>,
    ca_file: Option<NonEmpty>,
    #[serde(default)]
    aliases: Vec<Alias>,
    namespaces: Option<Vec<Namespace>>,
    #[serde(default)]
    anonymous: bool,
    #[serde(
        default,
        deserialize_with = "super::de::some_within::<_, _, 1, { MAX_CONCURRENCY as u64 }>"
    )]
    max_concurrent_pushes: Option<u16>,
}

/// Builds the configuration from what deserialized, reporting what is wrong; None when
/// something required is missing (then a problem says what).
pub(super) fn validate(loader: &mut Loader, raw: RawConfig) -> Option<Config> {
    let amqp = amqp(loader, raw.amqp);
    let mut worker = raw.worker;
    if worker.id.is_empty() {
        worker.id = default_worker_id(&loader.env);
    }
    check_pools(loader, &worker.pools);
    let registries = catalogue(loader, raw.registries.unwrap_or_default());
    Some(Config {
        amqp: amqp?,
        worker,
        docker: raw.docker,
        registries,
    })
}

/// `worker.pools`: at least one, each once (each name is checked when it deserializes).
fn check_pools(loader: &mut Loader, pools: &[pushfleet_shared::Pool]) {
    if loader.reported("worker.pools") {
        return;
    }
    if pools.is_empty() {
        loader.report(
            "worker.pools",
            "the list is empty: name at least one pool (\"default\" for jobs that name none)",
        );
    }
    for (i, pool) in pools.iter().enumerate() {
        if pools[..i].contains(pool) {
            loader.report("worker.pools", format!("pool {pool} is listed twice"));
        }
    }
}

fn amqp(loader: &mut Loader, raw: RawAmqp) -> Option<AmqpConfig> {
    let urls = match (raw.url, raw.urls) {
        (Some(_), Some(_)) => {
            loader.report(
                "amqp.urls",
                "set either amqp.url (one node) or amqp.urls (the nodes of a cluster), not both",
            );
            None
        }
        (None, Some(urls)) if urls.is_empty() => {
            loader.report("amqp.urls", "the list is empty: name at least one node");
            None
        }
        (None, Some(urls)) => Some(urls),
        (Some(url), None) => Some(vec![url]),
        (None, None) => loader
            .check("amqp.url", AmqpUrl::parse(DEFAULT_AMQP_URL))
            .map(|url| vec![url]),
    };
    let password_file = raw.password_file.map(|path| PathBuf::from(path.0));
    if let Some(path) = &password_file {
        if urls.iter().flatten().any(|url| url.username().is_empty()) {
            loader.report(
                "amqp.password_file",
                "amqp.url has no user name, so there is no user for this password: write the \
                 user in the URL, e.g. amqp://pushfleet@rabbitmq:5672/%2f",
            );
        }
        let readable = PasswordSource::File(path.clone()).resolve();
        loader.check("amqp.password_file", readable);
    }
    let signing_key = match raw.signing_key_file {
        Some(path) => {
            let key = read_signing_key(Path::new(&path.0));
            Some(loader.check("amqp.signing_key_file", key)?)
        }
        None => None,
    };
    let mut urls = urls?.into_iter();
    Some(AmqpConfig {
        url: urls.next()?,
        other_urls: urls.collect(),
        password_file,
        topology_prefix: raw.topology_prefix.map_or_else(
            || pushfleet_shared::topology::DEFAULT_PREFIX.to_owned(),
            |prefix| prefix.0,
        ),
        quorum_replicas: raw.quorum_replicas,
        signing_key,
        publish_frame_max: raw.publish_frame_max,
    })
}

fn catalogue(loader: &mut Loader, raw: BTreeMap<String, RawRegistry>) -> Catalogue {
    if raw.is_empty() && !loader.reported("registries") {
        loader.report(
            "registries",
            "no registries are configured: a worker with an empty catalogue can push nowhere; \
             add a [registries.<key>] table",
        );
    }
    let mut catalogue = Catalogue::default();
    for (key, raw) in raw {
        if let Some(registry) = registry(loader, &key, raw) {
            catalogue.registries.insert(key, registry);
        }
    }
    for registry in catalogue.registries.values() {
        let key = format!("registries.{}.aliases", registry.key);
        for alias in &registry.aliases {
            let owner = catalogue.aliases.get(alias);
            if catalogue.registries.contains_key(alias) {
                loader.report(
                    &key,
                    format!(
                        "alias `{alias}` is also a registry key: a job naming it would be \
                         ambiguous"
                    ),
                );
            } else if owner == Some(&registry.key) {
                loader.report(&key, format!("alias `{alias}` is listed twice"));
            } else if let Some(owner) = owner {
                loader.report(
                    &key,
                    format!("alias `{alias}` is already an alias of registry `{owner}`"),
                );
            } else {
                catalogue
                    .aliases
                    .insert(alias.clone(), registry.key.clone());
            }
        }
    }
    catalogue
}

fn registry(loader: &mut Loader, key: &str, raw: RawRegistry) -> Option<Registry> {
    let table = format!("registries.{key}");
    let at = |field: &str| format!("{table}.{field}");
    let mut missing = |field: &str, message: &str| {
        if !loader.reported(&at(field)) {
            loader.report(&at(field), message);
        }
    };
    if raw.url.is_none() {
        missing("url", "missing: the registry's https:// (or http://) URL");
    }
    match &raw.namespaces {
        Some(namespaces) if namespaces.is_empty() => {
            missing("namespaces", "must list at least one namespace (or \"*\")");
        }
        Some(_) => {}
        None => missing(
            "namespaces",
            "missing: the namespaces jobs may push into, e.g. [\"team-a\"], or [\"*\"] for any",
        ),
    }
    let key_ok = key.starts_with(|c: char| c.is_ascii_lowercase())
        && key.len() <= 64
        && key
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'));
    if !key_ok {
        loader.report(
            &table,
            "registry keys must start with a lowercase letter and use only a-z, 0-9, `-` and `_` \
             (environment overrides are lowercased, so other keys could not be overridden)",
        );
    }
    let ca_file = raw.ca_file.map(|path| PathBuf::from(path.0));
    if let Some(path) = &ca_file {
        let shown = path.display();
        match std::fs::read(path) {
            Ok(bytes) if bytes.is_empty() => {
                loader.report(&at("ca_file"), format!("CA file {shown} is empty"));
            }
            Ok(_) => {}
            Err(e) => loader.report(&at("ca_file"), format!("cannot read CA file {shown}: {e}")),
        }
        if raw
            .url
            .as_ref()
            .is_some_and(|url| url.url.scheme() == "http")
        {
            loader.report(
                &at("ca_file"),
                "a CA file is only used with an https:// url",
            );
        }
    }
    let docker_config = match raw.docker_config {
        Some(DockerConfigFile::Default) => {
            let path = default_docker_config(&loader.env);
            loader.check(&at("docker_config"), path)
        }
        Some(DockerConfigFile::Path(path)) => Some(path),
        Some(DockerConfigFile::Off) | None => None,
    };
    let server = raw.url.as_ref().map(|url| docker_credential_key(&url.host));
    let mut sources: Vec<(&str, PasswordSource)> = [
        raw.password_file
            .map(|path| ("password_file", PasswordSource::File(path.0.into()))),
        raw.password_env
            .map(|name| ("password_env", PasswordSource::Env(name.0))),
        docker_config.map(|path| {
            let server = server.unwrap_or_default();
            let source = PasswordSource::DockerConfig(DockerConfigSource { path, server });
            ("docker_config", source)
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    let username = raw.username.map(|name| name.0);
    let login = if raw.anonymous {
        let username = username.is_some().then_some("username");
        for field in username
            .into_iter()
            .chain(sources.iter().map(|(field, _)| *field))
        {
            loader.report(&at(field), "must not be set for an anonymous registry");
        }
        None
    } else if loader.reported(&at("anonymous")) {
        None
    } else {
        let reported = |field: &str| loader.reported(&at(field));
        let with_docker_config =
            reported("docker_config") || sources.iter().any(|(field, _)| *field == "docker_config");
        if username.is_none() && !with_docker_config && !reported("username") {
            loader.report(
                &at("username"),
                "missing: a registry needs a username (or docker_config, which brings its own, \
                 or anonymous = true if it needs no login)",
            );
        }
        let tried = ["password", "password_file", "password_env", "docker_config"];
        if sources.is_empty() && !tried.iter().any(|field| loader.reported(&at(field))) {
            loader.report(
                &table,
                "no password source: set password_file, password_env or docker_config (or \
                 anonymous = true if the registry needs no login); without one, pushing would \
                 fail with empty credentials",
            );
        }
        if sources.len() > 1 {
            let fields: Vec<&str> = sources.iter().map(|(field, _)| *field).collect();
            loader.report(
                &table,
                format!(
                    "{} are all set: keep exactly one of password_file, password_env and \
                     docker_config",
                    fields.join(" and ")
                ),
            );
        }
        match (sources.len() == 1).then(|| sources.remove(0)) {
            // Without a url, there is no credential key to look a Docker config up by.
            Some(("docker_config", _)) if raw.url.is_none() => None,
            Some((field, source)) => {
                let login = Login::new(username, source, loader.env.clone());
                // Checked now, helpers included: a registry without usable credentials stops
                // the worker at start-up (seed 002), not a push later.
                match login.resolve() {
                    // No username: reported above.
                    Ok(_) | Err(CredentialError::NotConfigured { .. }) => {}
                    Err(e @ CredentialError::DockerConfigUserMismatch { .. }) => {
                        loader.report(&at("username"), e);
                    }
                    Err(e) => loader.report(&at(field), e),
                }
                Some(login)
            }
            None => None,
        }
    };
    let (url, namespaces) = (raw.url?, raw.namespaces?);
    (key_ok && !namespaces.is_empty()).then(|| Registry {
        key: key.to_owned(),
        url: url.url,
        host: url.host,
        login,
        ca_file,
        aliases: raw.aliases.into_iter().map(|alias| alias.0).collect(),
        namespaces: namespaces.into_iter().map(|ns| ns.0).collect(),
        max_concurrent_pushes: raw.max_concurrent_pushes,
    })
}

/// `<hostname>-<pid>`: the pod name on Kubernetes (`HOSTNAME`), else `/etc/hostname`.
fn default_worker_id(env: &EnvSource) -> String {
    let non_empty = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let host = env
        .get("HOSTNAME")
        .and_then(non_empty)
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .and_then(non_empty)
        })
        .unwrap_or_else(|| "pushfleet".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Where Docker itself looks: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`
/// (in the environment the configuration is loaded from).
fn default_docker_config(env: &EnvSource) -> Result<PathBuf, &'static str> {
    let non_empty = |name: &str| env.get(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("DOCKER_CONFIG") {
        return Ok(PathBuf::from(dir).join("config.json"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(PathBuf::from(home).join(".docker").join("config.json"));
    }
    Err(
        "docker_config = true means $DOCKER_CONFIG/config.json, else \
         $HOME/.docker/config.json, and neither DOCKER_CONFIG nor HOME is set: give the \
         file's path instead",
    )
}

// --- Values checked on their own, as they deserialize ---

/// Newtypes over a string that `$check` accepts, so serde reports a bad value at its key.
macro_rules! checked_strings {
    ($($(#[$doc:meta])* $name:ident = $check:expr;)*) => {$(
        $(#[$doc])*
        #[derive(Deserialize)]
        #[serde(try_from = "String")]
        struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(value: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&value).map(|()| Self(value))
            }
        }
    )*};
}

checked_strings! {
    /// A string that is not blank.
    NonEmpty = |value| match value.trim() {
        "" => Err("must not be empty".to_owned()),
        _ => Ok(()),
    };
    /// `amqp.topology_prefix`: 1 to 64 of `A-Z a-z 0-9 . _ -`, not RabbitMQ's `amq.`.
    TopologyPrefix = |prefix| {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if prefix.is_empty() || prefix.len() > 64 || !prefix.chars().all(valid) {
            return Err("must be 1 to 64 characters of letters, digits, `.`, `_` and `-`".into());
        }
        match prefix.starts_with("amq.") {
            true => Err("must not start with `amq.`: RabbitMQ reserves those names".into()),
            false => Ok(()),
        }
    };
    /// `password_env`: a variable name, and not one of the configuration's overrides.
    EnvVarName = |name| {
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "{name:?} is not an environment variable name (letters, digits and `_`)"
            ));
        }
        let reserved = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
        match name.to_ascii_uppercase().starts_with(&reserved) {
            true => Err(format!(
                "variables starting with {reserved} are configuration overrides; name the \
                 password variable differently, e.g. HARBOR_PASSWORD"
            )),
            false => Ok(()),
        }
    };
    /// An entry of `aliases`.
    Alias = |alias| match alias.contains(char::is_whitespace) {
        true => Err(format!("alias {alias:?} contains whitespace")),
        false => Ok(()),
    };
    /// An entry of `namespaces`: `*`, or a repository path in Docker's grammar (lowercase
    /// path components joined by `/`, [`validate_repository`]).
    Namespace = |ns| match ns {
        "*" => Ok(()),
        _ => validate_repository(ns).map_err(|error| match error {
            ReferenceError::UppercaseRepository { .. } => {
                format!("namespace {ns:?} must be lowercase, as repository paths are")
            }
            ReferenceError::InvalidRepository { reason, .. } => {
                format!("namespace {ns:?} is not a repository path: {reason}")
            }
            other => format!("namespace {ns:?}: {other}"),
        }),
    };
}

/// A registry's URL, and the `host[:port]` image references use for it.
#[derive(Deserialize)]
#[serde(try_from = "String")]
pub(super) struct RegistryUrl {
    pub(super) url: Url,
    pub(super) host: String,
}

impl TryFrom<String> for RegistryUrl {
    type Error = String;

    fn try_from(input: String) -> Result<Self, String> {
        let url = Url::parse(&input).map_err(|e| format!("not a valid URL ({e})"))?;
        check_base_url(&url)?;
        let name = url.host_str().unwrap_or_default();
        if name == DOCKER_HUB {
            return Err(
                "`docker.io` is Docker Hub's name in image references, not its registry \
                        API host: use url = \"https://registry-1.docker.io\""
                    .to_owned(),
            );
        }
        let host = match (name, url.port()) {
            (name, None) if is_docker_hub(name) => DOCKER_HUB.to_owned(),
            (name, None) => name.to_owned(),
            (name, Some(port)) => format!("{name}:{port}"),
        };
        Ok(Self { url, host })
    }
}

/// `docker_config`: a path to a `config.json`; `true` for Docker's own default; `false` for
/// none (as if absent). From the environment, `"true"` and `"false"` are those.
enum DockerConfigFile {
    Default,
    Path(PathBuf),
    Off,
}

impl<'de> Deserialize<'de> for DockerConfigFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DockerConfigVisitor)
    }
}

struct DockerConfigVisitor;

impl Visitor<'_> for DockerConfigVisitor {
    type Value = DockerConfigFile;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the path of a Docker config.json, or true")
    }

    fn visit_bool<E: de::Error>(self, on: bool) -> Result<DockerConfigFile, E> {
        Ok(if on {
            DockerConfigFile::Default
        } else {
            DockerConfigFile::Off
        })
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<DockerConfigFile, E> {
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "false" => self.visit_bool(value.trim().eq_ignore_ascii_case("true")),
            "" => Err(E::custom("must not be empty")),
            _ => Ok(DockerConfigFile::Path(PathBuf::from(value))),
        }
    }
}
