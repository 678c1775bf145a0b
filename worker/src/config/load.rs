//! Loading: the file, then the `PUSHFLEET__*` environment variables, merged by the `config`
//! crate into one value tree; deserialized with serde until every value that does not fit
//! has been reported; then the validation pass (`validate`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Environment, FileFormat, Value, ValueKind};
use serde::Deserialize;

use super::de::Node;
use super::validate::RawConfig;
use super::{Config, ENV_PREFIX, ENV_SEPARATOR};
use crate::credentials::EnvSource;

/// The origin the `config` crate gives every value that came from an `Environment` source.
const ENV_ORIGIN: &str = "the environment";

/// Where a problem's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file.
    File(PathBuf),
    /// An environment variable (for a table only set from the environment: `PREFIX__*`).
    Environment {
        /// The variable's name, e.g. `PUSHFLEET__WORKER__CONCURRENCY`.
        variable: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Environment { variable } => write!(f, "environment variable {variable}"),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where the value came from, when known.
    pub origin: Option<Origin>,
    /// The dotted key, e.g. `registries.harbor.password_file` (empty for the whole file).
    pub key: String,
    /// What is wrong, and what to do.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration; `Display` puts one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl ConfigErrors {
    /// The problems, in file order: environment variable names, amqp, worker, docker,
    /// registries (by key), then other keys.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads the configuration: `file` (TOML) if given, then environment overrides
/// `PUSHFLEET__<SECTION>__<KEY>` on top, then validates everything.
///
/// `env: None` reads the process environment; `Some(map)` reads only the map, both for
/// overrides and for `password_env`, `HOSTNAME` and `DOCKER_CONFIG` lookups (then and later,
/// in [`super::Registry::credentials`]), so tests never touch the process environment.
pub fn load(
    file: Option<&Path>,
    env: Option<HashMap<String, String>>,
) -> Result<Config, ConfigErrors> {
    let loader = Loader::new(file, env);
    let text = match file.map(std::fs::read_to_string).transpose() {
        Ok(text) => text,
        Err(e) => return Err(loader.fail(format!("cannot read the configuration file: {e}"))),
    };
    loader.load(text.as_deref())
}

/// As [`load`], with the TOML given as a string (tests, and callers that build it).
pub fn load_from_str(
    toml: &str,
    env: Option<HashMap<String, String>>,
) -> Result<Config, ConfigErrors> {
    Loader::new(None, env).load(Some(toml))
}

/// One load: the merged tree, and the problems found so far.
#[derive(Debug)]
pub(super) struct Loader {
    file: Option<PathBuf>,
    pub(super) env: EnvSource,
    tree: Value,
    problems: Vec<ConfigProblem>,
}

impl Loader {
    fn new(file: Option<&Path>, env: Option<HashMap<String, String>>) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            env: EnvSource::new(env),
            tree: Value::new(None, ValueKind::Table(Default::default())),
            problems: Vec::new(),
        }
    }

    fn load(mut self, text: Option<&str>) -> Result<Config, ConfigErrors> {
        let mut builder = config::Config::builder();
        if let Some(text) = text {
            let text = text.strip_prefix('\u{feff}').unwrap_or(text);
            // Checked here first because the toml error's Display quotes the offending line,
            // and that line may hold a secret: only the position and the description are
            // reported.
            if let Err(e) = toml::de::DeTable::parse(text) {
                let at = e
                    .span()
                    .map(|span| {
                        let (line, column) = line_column(text, span.start);
                        format!(" at line {line}, column {column}")
                    })
                    .unwrap_or_default();
                return Err(self.fail(format!("not valid TOML{at}: {}", e.message())));
            }
            builder = builder.add_source(config::File::from_str(text, FileFormat::Toml));
        }
        let overrides = self.overrides();
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .try_parsing(false)
                .ignore_empty(true)
                .source(Some(overrides)),
        );
        match builder.build() {
            Ok(merged) if matches!(merged.cache.kind, ValueKind::Table(_)) => {
                self.tree = merged.cache;
            }
            // Nothing set at all: the empty tree stands.
            Ok(_) => {}
            // The file was parsed and the variables screened above, so this is not expected;
            // the crate's error is not shown as it may quote a value.
            Err(_) => return Err(self.fail("the file and the environment could not be merged")),
        }
        let config = self
            .deserialize()
            .and_then(|raw| super::validate::validate(&mut self, raw));
        match config {
            Some(config) if self.problems.is_empty() => Ok(config),
            _ if self.problems.is_empty() => Err(self.fail("the configuration is incomplete")),
            _ => Err(self.errors()),
        }
    }

    /// Every problem so far, and `message` about the whole file.
    fn fail(mut self, message: impl Into<String>) -> ConfigErrors {
        self.report("", message.into());
        self.errors()
    }

    /// Every problem, sorted into file order.
    fn errors(mut self) -> ConfigErrors {
        let rank = |key: &str| {
            let section = key.split('.').next().unwrap_or_default();
            ["", "amqp", "worker", "docker", "registries"]
                .iter()
                .position(|s| *s == section)
                .unwrap_or(5)
        };
        self.problems
            .sort_by(|a, b| (rank(&a.key), &a.key).cmp(&(rank(&b.key), &b.key)));
        ConfigErrors(self.problems)
    }

    /// Deserializes the tree. A value that does not fit is reported with its key and taken
    /// out of the tree, and deserialization runs again: each pass gets further, so every
    /// problem is reported once and none hides another (an absent key takes its default, or
    /// is reported missing unless its problem already was).
    fn deserialize(&mut self) -> Option<RawConfig> {
        loop {
            let error = match RawConfig::deserialize(Node::root(self.tree.clone())) {
                Ok(raw) => return Some(raw),
                Err(error) => error,
            };
            self.report(&error.path.join("."), error.message);
            if !remove(&mut self.tree, &error.path) {
                return None;
            }
        }
    }

    pub(super) fn report(&mut self, key: &str, message: impl fmt::Display) {
        let origin = self.origin(key);
        self.problems.push(ConfigProblem {
            origin,
            key: key.to_owned(),
            message: message.to_string(),
        });
    }

    /// Whether a problem was already reported for this key (so a derived one is not).
    pub(super) fn reported(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key == key)
    }

    /// The value, or None with the error reported at `key`.
    pub(super) fn check<T>(
        &mut self,
        key: &str,
        result: Result<T, impl fmt::Display>,
    ) -> Option<T> {
        result.map_err(|e| self.report(key, e)).ok()
    }

    /// Where `key` came from: the environment variable when its value (for a table: all of
    /// it) came from the environment, else the file. An absent key is where its table is.
    fn origin(&self, key: &str) -> Option<Origin> {
        let path: Vec<&str> = key.split('.').filter(|s| !s.is_empty()).collect();
        let mut node = &self.tree;
        let mut depth = 0;
        while let (ValueKind::Table(table), Some(segment)) = (&node.kind, path.get(depth)) {
            let Some(child) = table.get(*segment) else {
                break;
            };
            node = child;
            depth += 1;
        }
        if depth == 0 || !from_env_only(node) {
            return self.file.clone().map(Origin::File);
        }
        let mut variable = String::from(ENV_PREFIX);
        for segment in &path[..depth] {
            variable.push_str(ENV_SEPARATOR);
            variable.push_str(&segment.to_uppercase());
        }
        if matches!(node.kind, ValueKind::Table(_)) {
            variable.push_str("__*");
        }
        Some(Origin::Environment { variable })
    }

    /// The `PUSHFLEET__*` variables, screened: a non-Unicode value or a malformed name is a
    /// problem naming the variable, and is left out (the `config` crate would otherwise fail
    /// with a message quoting the value).
    fn overrides(&mut self) -> HashMap<String, String> {
        let pattern = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_lowercase();
        let mut out = HashMap::new();
        for (name, value) in self.env.all() {
            if !name.to_lowercase().starts_with(&pattern) {
                continue;
            }
            let well_formed = name[pattern.len()..].split(ENV_SEPARATOR).all(|segment| {
                !segment.is_empty()
                    && segment
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
            let message = match value {
                Some(value) if well_formed => {
                    out.insert(name, value);
                    continue;
                }
                Some(_) => {
                    "not a configuration key: overrides are named PUSHFLEET__<SECTION>__<KEY>, \
                     e.g. PUSHFLEET__WORKER__CONCURRENCY"
                }
                None => "the value is not valid Unicode",
            };
            self.problems.push(ConfigProblem {
                origin: Some(Origin::Environment { variable: name }),
                key: String::new(),
                message: message.to_owned(),
            });
        }
        out
    }
}

/// Takes the value at `path` out of the tree; false when there is none (the loop must end).
fn remove(tree: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = tree;
    for segment in parents {
        match &mut node.kind {
            ValueKind::Table(table) => match table.get_mut(segment) {
                Some(child) => node = child,
                None => return false,
            },
            _ => return false,
        }
    }
    match &mut node.kind {
        ValueKind::Table(table) => table.remove(last).is_some(),
        _ => false,
    }
}

/// Whether a value (for a table: everything in it) was set from the environment.
fn from_env_only(value: &Value) -> bool {
    match &value.kind {
        ValueKind::Table(table) => !table.is_empty() && table.values().all(from_env_only),
        _ => value.origin() == Some(ENV_ORIGIN),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}
