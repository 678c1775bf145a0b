//! Finds a key that appears twice in one JSON object of a message.
//!
//! serde_json, like most parsers, keeps the *last* of two equal keys, while others keep the
//! first or refuse the document. A job with two `target` objects (or two `registry` keys inside
//! one) would then push wherever the last one says, while a proxy, a log reader or a person
//! reading the message sees the first. Such a message is refused instead: RFC 8259 says names
//! within an object SHOULD be unique, and a job has no reason to repeat one.
//!
//! The check walks the raw message once with serde's visitor API, remembering the keys of each
//! object (decoded, so `"a"` and `"\u0061"` are the same key), and stops at the first repeat.
//! It reads through serde_json's own parser, so nesting is bounded by serde_json's recursion
//! limit (128) and nothing here tokenises JSON by hand.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::credential::push_key;

/// Which duplicates count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A duplicate anywhere in the message.
    Everywhere,
    /// Only a duplicate at or under this top-level key (e.g. `metadata`).
    Under(&'static str),
}

/// The path of the first key repeated within one object of `body`, in document order, e.g.
/// `target.registry`, `metadata.a.b` or `metadata.list[2].x` (see
/// [`push_key`](crate::credential::push_key) for how odd keys are written).
///
/// `body` must already be known to be JSON: a body that is not JSON has no duplicate.
pub(crate) fn first_duplicate_key(body: &[u8], scope: Scope) -> Option<String> {
    let mut walk = Walk {
        path: Vec::new(),
        scope,
        found: None,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    // An error is either the stop at a duplicate (then `found` is set) or a parse error, which
    // the caller has already reported.
    let _ = Node { walk: &mut walk }.deserialize(&mut deserializer);
    walk.found
}

/// One step of a path: an object key or an array index.
#[derive(Debug)]
enum Step {
    Key(String),
    Index(usize),
}

#[derive(Debug)]
struct Walk {
    path: Vec<Step>,
    scope: Scope,
    found: Option<String>,
}

impl Walk {
    fn in_scope(&self) -> bool {
        match self.scope {
            Scope::Everywhere => true,
            Scope::Under(top) => matches!(self.path.first(), Some(Step::Key(k)) if k == top),
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for step in &self.path {
            match step {
                Step::Key(key) => push_key(&mut out, key),
                Step::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

/// The seed and visitor for one JSON value at the current path.
#[derive(Debug)]
struct Node<'w> {
    walk: &'w mut Walk,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let walk = self.walk;
        for index in 0.. {
            walk.path.push(Step::Index(index));
            let more = seq.next_element_seed(Node { walk: &mut *walk })?;
            walk.path.pop();
            if more.is_none() {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let walk = self.walk;
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let repeated = !seen.insert(key.clone());
            walk.path.push(Step::Key(key));
            if repeated && walk.in_scope() {
                walk.found = Some(walk.render());
                // Stop here: the first duplicate is the one reported.
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(Node { walk: &mut *walk })?;
            walk.path.pop();
        }
        Ok(())
    }
}
