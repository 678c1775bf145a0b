//! Users, their passwords and their grants, read from a JSON file written by
//! `deploy/local/start.sh` (kept in the 0600 state directory; plaintext is fine for a test tool).
//!
//! ```json
//! {"users": [
//!   {"name": "pusher", "password": "...", "grants": [
//!     {"name": "team-a/*", "actions": ["pull", "push"]},
//!     {"name": "*", "actions": ["pull"]}]},
//!   {"name": "admin", "password": "...", "grants": [
//!     {"name": "*", "actions": ["*"]},
//!     {"type": "registry", "name": "catalog", "actions": ["*"]}]}
//! ]}
//! ```
//!
//! A grant's `type` defaults to `repository`. Its `name` is `*` (every name), `<prefix>/*`
//! (every name below that namespace: `team-a/*` matches `team-a/app` and `team-a/x/y` but not
//! `team-ab/x` nor `team-a` itself) or an exact name. The action `*` in a grant allows every
//! action, `*` included (the registry asks for `*` or `delete` to delete).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::scope::{Access, Scope};

/// The parsed users file.
#[derive(Debug, Deserialize)]
struct UsersFile {
    users: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
struct UserEntry {
    name: String,
    password: String,
    #[serde(default)]
    grants: Vec<Grant>,
}

/// One permission: actions on the resources whose name matches a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Grant {
    #[serde(rename = "type", default = "default_kind")]
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) actions: Vec<String>,
}

fn default_kind() -> String {
    "repository".to_owned()
}

impl Grant {
    /// Whether this grant covers resource `name` of type `kind`.
    fn matches(&self, kind: &str, name: &str) -> bool {
        if self.kind != kind {
            return false;
        }
        if self.name == "*" {
            return true;
        }
        match self.name.strip_suffix('*') {
            // `team-a/*`: the prefix keeps its slash, so `team-ab/x` cannot match, and the
            // name must be longer than the prefix (`team-a/` alone is no repository).
            Some(prefix) if prefix.ends_with('/') => {
                name.len() > prefix.len() && name.starts_with(prefix)
            }
            _ => self.name == name,
        }
    }

    /// Whether this grant allows `action`.
    fn allows(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == "*" || a == action)
    }
}

/// A known user.
#[derive(Debug, Clone)]
pub(crate) struct User {
    password: String,
    grants: Vec<Grant>,
}

impl User {
    /// A user with the given password and grants.
    pub(crate) fn new(password: impl Into<String>, grants: Vec<Grant>) -> Self {
        Self {
            password: password.into(),
            grants,
        }
    }

    /// The part of `requested` this user may have, one [`Access`] per resource (repeated
    /// requests for one resource are merged); resources with nothing granted are left out.
    pub(crate) fn grant(&self, requested: &[Scope]) -> Vec<Access> {
        grant(&self.grants, requested)
    }
}

/// The subset of `requested` that `grants` allow; see [`User::grant`].
pub(crate) fn grant(grants: &[Grant], requested: &[Scope]) -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    for scope in requested {
        let matching: Vec<&Grant> = grants
            .iter()
            .filter(|g| g.matches(&scope.kind, &scope.name))
            .collect();
        let allowed = scope
            .actions
            .iter()
            .filter(|a| matching.iter().any(|g| g.allows(a)));
        let entry = match out
            .iter_mut()
            .position(|e| e.kind == scope.kind && e.name == scope.name)
        {
            Some(i) => &mut out[i],
            None => {
                out.push(Access {
                    kind: scope.kind.clone(),
                    name: scope.name.clone(),
                    actions: Vec::new(),
                });
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        for action in allowed {
            if !entry.actions.contains(action) {
                entry.actions.push(action.clone());
            }
        }
    }
    out.retain(|e| !e.actions.is_empty());
    out
}

/// All users, by name.
#[derive(Debug, Default)]
pub(crate) struct Users {
    by_name: HashMap<String, User>,
}

impl Users {
    /// Reads and checks the users file.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("bad users file {}", path.display()))
    }

    /// Parses the users file format (see the module docs).
    pub(crate) fn from_json(text: &str) -> Result<Self> {
        let file: UsersFile = serde_json::from_str(text)?;
        let mut by_name = HashMap::new();
        for entry in file.users {
            if entry.name.is_empty() || entry.name.contains(':') {
                bail!("user name {:?} is empty or contains ':'", entry.name);
            }
            if entry.password.is_empty() {
                bail!("user {} has an empty password", entry.name);
            }
            for g in &entry.grants {
                if g.name.is_empty() || g.actions.is_empty() {
                    bail!("user {} has a grant without name or actions", entry.name);
                }
            }
            let name = entry.name.clone();
            if by_name
                .insert(entry.name, User::new(entry.password, entry.grants))
                .is_some()
            {
                bail!("user {name} is listed twice");
            }
        }
        Ok(Self { by_name })
    }

    /// Adds or replaces a user (tests).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, name: &str, user: User) {
        self.by_name.insert(name.to_owned(), user);
    }

    /// The user named `name` if `password` is right.
    pub(crate) fn authenticate(&self, name: &str, password: &str) -> Option<&User> {
        let user = self.by_name.get(name)?;
        constant_time_eq(user.password.as_bytes(), password.as_bytes()).then_some(user)
    }

    /// The user named `name`, without a password check (refresh tokens).
    pub(crate) fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// How many users there are.
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }
}

/// Compares without stopping at the first difference (length still leaks; fine here).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str, actions: &[&str]) -> Grant {
        Grant {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    fn scopes(texts: &[&str]) -> Vec<Scope> {
        Scope::parse_all(texts.iter().copied()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn granted(grants: &[Grant], texts: &[&str]) -> Vec<String> {
        grant(grants, &scopes(texts))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn pusher() -> Vec<Grant> {
        vec![g("team-a/*", &["pull", "push"]), g("*", &["pull"])]
    }

    #[test]
    fn pusher_may_push_in_its_namespace() {
        assert_eq!(
            granted(&pusher(), &["repository:team-a/app:pull,push"]),
            ["repository:team-a/app:pull,push"]
        );
        assert_eq!(
            granted(&pusher(), &["repository:team-a/x/y:push"]),
            ["repository:team-a/x/y:push"]
        );
    }

    #[test]
    fn namespace_prefix_does_not_match_a_longer_namespace() {
        assert_eq!(
            granted(&pusher(), &["repository:team-ab/x:push,pull"]),
            ["repository:team-ab/x:pull"]
        );
        assert_eq!(
            granted(&pusher(), &["repository:team-a:push,pull"]),
            ["repository:team-a:pull"]
        );
        assert_eq!(
            granted(&pusher(), &["repository:team-a/:push"]),
            Vec::<String>::new()
        );
        let only_ns = [g("team-a/*", &["push"])];
        assert!(granted(&only_ns, &["repository:team-ab/x:push"]).is_empty());
        assert!(granted(&only_ns, &["repository:xteam-a/x:push"]).is_empty());
    }

    #[test]
    fn reader_gets_pull_only_and_nothing_left_is_omitted() {
        let reader = [g("*", &["pull"])];
        assert_eq!(
            granted(&reader, &["repository:team-a/app:push,pull"]),
            ["repository:team-a/app:pull"]
        );
        assert!(granted(&reader, &["repository:team-a/app:push,delete"]).is_empty());
    }

    #[test]
    fn star_grant_allows_every_action_including_star() {
        let admin = [g("*", &["*"])];
        assert_eq!(
            granted(&admin, &["repository:any/thing:pull,push,delete,*"]),
            ["repository:any/thing:pull,push,delete,*"]
        );
        // A grant listing actions does not give `*` itself.
        assert_eq!(
            granted(&pusher(), &["repository:team-a/app:*,pull"]),
            ["repository:team-a/app:pull"]
        );
    }

    #[test]
    fn several_scopes_are_granted_each_and_merged_per_resource() {
        assert_eq!(
            granted(
                &pusher(),
                &[
                    "repository:team-a/app:push",
                    "repository:team-b/base:pull,push",
                    "repository:team-a/app:pull",
                ]
            ),
            [
                "repository:team-a/app:push,pull",
                "repository:team-b/base:pull"
            ]
        );
    }

    #[test]
    fn grants_only_apply_to_their_type() {
        let admin = [
            g("*", &["*"]),
            Grant {
                kind: "registry".into(),
                name: "catalog".into(),
                actions: vec!["*".into()],
            },
        ];
        assert_eq!(
            granted(&admin, &["registry:catalog:*"]),
            ["registry:catalog:*"]
        );
        assert!(granted(&pusher(), &["registry:catalog:*"]).is_empty());
        assert_eq!(
            granted(
                &[g("exact/name", &["pull"])],
                &["repository:exact/name:pull"]
            )
            .len(),
            1
        );
        assert!(
            granted(
                &[g("exact/name", &["pull"])],
                &["repository:exact/names:pull"]
            )
            .is_empty()
        );
    }

    #[test]
    fn users_file_is_parsed_and_passwords_checked() {
        let users = Users::from_json(
            r#"{"users": [
                {"name": "pusher", "password": "pw1", "grants": [
                    {"name": "team-a/*", "actions": ["pull", "push"]}]},
                {"name": "nobody", "password": "pw2"}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(users.len(), 2);
        assert!(users.authenticate("pusher", "pw1").is_some());
        assert!(users.authenticate("pusher", "pw2").is_none());
        assert!(users.authenticate("pusher", "pw").is_none());
        assert!(users.authenticate("stranger", "pw1").is_none());
        let nobody = users
            .get("nobody")
            .map(|u| u.grant(&scopes(&["repository:a/b:pull"])));
        assert_eq!(nobody, Some(vec![]));
    }

    #[test]
    fn bad_users_files_are_refused() {
        for bad in [
            r#"{"users": [{"name": "a", "password": ""}]}"#,
            r#"{"users": [{"name": "a:b", "password": "x"}]}"#,
            r#"{"users": [{"name": "a", "password": "x"}, {"name": "a", "password": "y"}]}"#,
            r#"{"users": [{"name": "a", "password": "x", "grants": [{"name": "*", "actions": []}]}]}"#,
            r#"{"users": {}}"#,
        ] {
            assert!(Users::from_json(bad).is_err(), "{bad} must be refused");
        }
    }
}
