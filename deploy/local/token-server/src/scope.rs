//! Scopes of the Docker registry token protocol.
//!
//! A client asks for `scope=<type>:<name>:<action>[,<action>...]`, for example
//! `repository:team-a/app:pull,push`. The name may itself contain `:` (a registry host with a
//! port, `repository:localhost:5000/app:pull`), so the type ends at the first `:` and the
//! actions start after the last one. The type may carry a class, `repository(plugin)`.
//! The JWT `access` claim lists [`Access`] entries: the granted part of what was asked.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One requested scope, as parsed from a `scope` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    /// Resource type, e.g. `repository` or `registry` (class suffix kept as sent).
    pub(crate) kind: String,
    /// Resource name, e.g. `team-a/app` or `catalog`.
    pub(crate) name: String,
    /// Requested actions in request order, without duplicates, e.g. `["push", "pull"]`.
    pub(crate) actions: Vec<String>,
}

/// Why a scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScopeError {
    scope: String,
    reason: &'static str,
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid scope {:?}: {}", self.scope, self.reason)
    }
}

impl std::error::Error for ScopeError {}

impl Scope {
    /// Parses one `type:name:actions` scope.
    pub(crate) fn parse(text: &str) -> Result<Self, ScopeError> {
        let fail = |reason| ScopeError {
            scope: text.to_owned(),
            reason,
        };
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| fail("expected type:name:actions"))?;
        let (name, actions) = rest
            .rsplit_once(':')
            .ok_or_else(|| fail("expected type:name:actions"))?;
        if kind.is_empty()
            || !kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "()_-.".contains(c))
        {
            return Err(fail("bad resource type"));
        }
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("bad resource name"));
        }
        let mut parsed: Vec<String> = Vec::new();
        for action in actions.split(',') {
            if action.is_empty()
                || !action
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '*')
            {
                return Err(fail("bad action"));
            }
            if !parsed.iter().any(|a| a == action) {
                parsed.push(action.to_owned());
            }
        }
        Ok(Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: parsed,
        })
    }

    /// Parses every scope in the values of the `scope` parameters. A value may hold several
    /// scopes separated by spaces (the OAuth2 form of `POST /token` does that).
    pub(crate) fn parse_all<'a>(
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Self>, ScopeError> {
        values
            .into_iter()
            .flat_map(str::split_whitespace)
            .map(Self::parse)
            .collect()
    }
}

/// One entry of the JWT `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Access {
    /// Resource type (`repository`, ...).
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// Resource name.
    pub(crate) name: String,
    /// Granted actions.
    pub(crate) actions: Vec<String>,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Scope {
        match Scope::parse(text) {
            Ok(scope) => scope,
            Err(e) => panic!("{text} should parse: {e}"),
        }
    }

    #[test]
    fn parses_repository_scope_with_two_actions() {
        let scope = ok("repository:team-a/app:pull,push");
        assert_eq!(scope.kind, "repository");
        assert_eq!(scope.name, "team-a/app");
        assert_eq!(scope.actions, ["pull", "push"]);
    }

    #[test]
    fn keeps_colons_of_the_name_and_drops_duplicate_actions() {
        let scope = ok("repository:localhost:5000/team-a/app:push,pull,push");
        assert_eq!(scope.name, "localhost:5000/team-a/app");
        assert_eq!(scope.actions, ["push", "pull"]);
    }

    #[test]
    fn parses_star_action_and_type_class() {
        let scope = ok("repository(plugin):x/y:*");
        assert_eq!(scope.kind, "repository(plugin)");
        assert_eq!(scope.actions, ["*"]);
        assert_eq!(ok("registry:catalog:*").name, "catalog");
    }

    #[test]
    fn refuses_malformed_scopes() {
        for bad in [
            "",
            "repository",
            "repository:team-a/app",
            "repository:team-a/app:",
            "repository::pull",
            ":team-a/app:pull",
            "repository:team-a/app:pull,,push",
            "repository:team-a/app:pu ll",
            "repo sitory:x:pull",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn parses_repeated_and_space_separated_scopes() {
        let scopes = Scope::parse_all([
            "repository:team-a/app:push,pull",
            "repository:team-b/base:pull registry:catalog:*",
        ])
        .unwrap_or_else(|e| panic!("should parse: {e}"));
        let names: Vec<&str> = scopes.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["team-a/app", "team-b/base", "catalog"]);
        assert!(Scope::parse_all(["repository:a:pull", "bad"]).is_err());
        assert_eq!(Scope::parse_all(Vec::<&str>::new()), Ok(vec![]));
    }

    #[test]
    fn access_serialises_like_the_registry_expects() {
        let access = Access {
            kind: "repository".into(),
            name: "team-a/app".into(),
            actions: vec!["pull".into()],
        };
        let json = serde_json::to_value(&access).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"type": "repository", "name": "team-a/app", "actions": ["pull"]})
        );
        assert_eq!(access.to_string(), "repository:team-a/app:pull");
    }
}
