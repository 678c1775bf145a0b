//! A strict serde `Deserializer` over the `config` crate's merged value tree, and the checked
//! readers the configuration's fields use.
//!
//! Why not the `config` crate's own deserializer: it converts loosely (`2.5` rounds to `3`,
//! `"yes"` or `1` is `true`, `true` is the string `"true"`), cannot split a comma-separated
//! list for keys it does not know in advance (registry keys), and its errors name no key for an
//! unknown one. This one converts only what a person means: where the target wants a whole
//! number, a boolean or a list, a string is parsed (environment variables are always strings:
//! `"8"`, `"true"`, `"a,b"`), and an integer is taken as text where a string is wanted
//! (`aliases = [5]`). Anything else of the wrong kind is an error. Every error carries its key
//! ([`DeError::path`]), so the loader can report it and deserialize again without that key.

use std::fmt;

use config::{Value, ValueKind};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer};

/// What failed to deserialize, and at which key (path segments; empty until known).
#[derive(Debug)]
pub(super) struct DeError {
    pub(super) path: Vec<String>,
    pub(super) message: String,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        let message = message.to_string();
        Self {
            path: Vec::new(),
            message,
        }
    }

    /// Names the kind found, never the value (it could be a secret in the wrong place).
    fn invalid_type(found: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        use de::Unexpected as U;
        let found = match found {
            U::Bool(_) => "a boolean",
            U::Signed(_) | U::Unsigned(_) => "an integer",
            U::Float(_) => "a float",
            U::Str(_) | U::Char(_) => "a string",
            U::Seq => "an array",
            U::Map => "a table",
            _ => "something else",
        };
        Self::custom(format_args!("expected {expected}, found {found}"))
    }

    /// `deny_unknown_fields` lands here, with the fields the table has.
    fn unknown_field(field: &str, known: &'static [&'static str]) -> Self {
        if field == "password" && known.contains(&"password_env") {
            return Self::custom(
                "an inline password is not accepted: put the password in a file and set \
                 password_file, or in an environment variable and set password_env",
            );
        }
        let known = known.join(", ");
        Self::custom(format_args!(
            "unknown key `{field}` (known keys here: {known})"
        ))
    }
}

/// A value of the tree, and its key.
pub(super) struct Node {
    value: Value,
    path: Vec<String>,
}

impl Node {
    pub(super) fn root(value: Value) -> Self {
        Self {
            value,
            path: Vec::new(),
        }
    }

    fn fail<T>(&self, message: impl fmt::Display) -> Result<T, DeError> {
        let message = message.to_string();
        Err(DeError {
            path: self.path.clone(),
            message,
        })
    }

    fn expected<T>(&self, what: &str) -> Result<T, DeError> {
        self.fail(format_args!(
            "expected {what}, found {}",
            kind_name(&self.value.kind)
        ))
    }

    /// A whole number: an integer of at least 0, or a string holding one.
    fn unsigned(&self) -> Result<u64, DeError> {
        match &self.value.kind {
            ValueKind::String(s) => (s.trim().parse())
                .or_else(|_| self.fail(format_args!("expected a whole number, found {s:?}"))),
            ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
                (self.value.clone().into_uint())
                    .or_else(|_| self.fail("expected a whole number of at least 0"))
            }
            _ => self.expected("a whole number"),
        }
    }
}

impl<'de> de::Deserializer<'de> for Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value.kind {
            ValueKind::Nil => visitor.visit_unit(),
            ValueKind::Boolean(b) => visitor.visit_bool(b),
            ValueKind::I64(n) => visitor.visit_i64(n),
            ValueKind::I128(n) => visitor.visit_i128(n),
            ValueKind::U64(n) => visitor.visit_u64(n),
            ValueKind::U128(n) => visitor.visit_u128(n),
            ValueKind::Float(n) => visitor.visit_f64(n),
            ValueKind::String(s) => visitor.visit_string(s),
            ValueKind::Array(_) => self.deserialize_seq(visitor),
            ValueKind::Table(_) => self.deserialize_map(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value.kind {
            ValueKind::Boolean(b) => visitor.visit_bool(*b),
            ValueKind::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => visitor.visit_bool(true),
                "false" => visitor.visit_bool(false),
                _ => self.fail(format_args!("expected true or false, found {s:?}")),
            },
            _ => self.expected("true or false"),
        }
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_u64(self.unsigned()?)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value.kind {
            ValueKind::String(s) => visitor.visit_string(s),
            ValueKind::I64(n) => visitor.visit_string(n.to_string()),
            ValueKind::U64(n) => visitor.visit_string(n.to_string()),
            _ => self.expected("a string"),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value.kind {
            ValueKind::Nil => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let items = match self.value.kind {
            ValueKind::Array(items) => items,
            // From the environment: comma-separated.
            ValueKind::String(s) => s.split(',').map(|i| Value::new(None, i.trim())).collect(),
            ValueKind::I64(_) | ValueKind::U64(_) => vec![self.value],
            _ => return self.expected("a list"),
        };
        let items = items.into_iter().enumerate();
        visitor.visit_seq(Seq {
            items,
            path: self.path,
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let ValueKind::Table(table) = self.value.kind else {
            return self.expected("a table");
        };
        // Sorted, so problems are found in the same order every run.
        let mut entries: Vec<(String, Value)> = table.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let entries = entries.into_iter();
        visitor.visit_map(Map {
            entries,
            next: None,
            path: self.path,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u128 f32 f64 char bytes byte_buf unit unit_struct
        tuple tuple_struct enum identifier ignored_any
    }
}

/// A list's entries: an error in one is the list's, naming the entry.
struct Seq {
    items: std::iter::Enumerate<std::vec::IntoIter<Value>>,
    path: Vec<String>,
}

impl<'de> de::SeqAccess<'de> for Seq {
    type Error = DeError;

    fn next_element_seed<T>(&mut self, seed: T) -> Result<Option<T::Value>, DeError>
    where
        T: DeserializeSeed<'de>,
    {
        let Some((i, value)) = self.items.next() else {
            return Ok(None);
        };
        let node = Node {
            value,
            path: self.path.clone(),
        };
        if matches!(&node.value.kind, ValueKind::String(s) if s.trim().is_empty()) {
            return node.fail(format_args!("entry {} of the list is empty", i + 1));
        }
        let path = self.path.clone();
        seed.deserialize(node).map(Some).map_err(|e| {
            let message = format!("entry {}: {e}", i + 1);
            DeError { path, message }
        })
    }
}

/// A table's entries: an error gets the key of the entry it came from.
struct Map {
    entries: std::vec::IntoIter<(String, Value)>,
    next: Option<Node>,
    path: Vec<String>,
}

impl<'de> de::MapAccess<'de> for Map {
    type Error = DeError;

    fn next_key_seed<K>(&mut self, seed: K) -> Result<Option<K::Value>, DeError>
    where
        K: DeserializeSeed<'de>,
    {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let mut path = self.path.clone();
        path.push(key.clone());
        let key = seed.deserialize(key.into_deserializer());
        let node = self.next.insert(Node { value, path });
        key.map(Some).map_err(|e: DeError| at(e, &node.path))
    }

    fn next_value_seed<V>(&mut self, seed: V) -> Result<V::Value, DeError>
    where
        V: DeserializeSeed<'de>,
    {
        let node = self
            .next
            .take()
            .ok_or_else(|| de::Error::custom("no key"))?;
        let path = node.path.clone();
        seed.deserialize(node).map_err(|e| at(e, &path))
    }
}

/// Gives the error a key, unless a deeper one already did.
fn at(mut error: DeError, path: &[String]) -> DeError {
    if error.path.is_empty() {
        error.path = path.to_vec();
    }
    error
}

/// How a value's kind is named in messages.
fn kind_name(kind: &ValueKind) -> &'static str {
    match kind {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            "an integer"
        }
        ValueKind::Float(_) => "a float",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "an array",
    }
}

// --- Checked readers, for `#[serde(deserialize_with)]` ---

fn in_range<E: de::Error>(n: u64, min: u64, max: u64, why: &str) -> Result<u64, E> {
    if !(min..=max).contains(&n) {
        return Err(E::custom(format_args!(
            "must be between {min} and {max}, got {n}{why}"
        )));
    }
    Ok(n)
}

/// A whole number in `MIN..=MAX`, as `T`.
pub(super) fn within<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let n = in_range(u64::deserialize(d)?, MIN, MAX, "")?;
    T::try_from(n).map_err(|_| de::Error::custom(format_args!("must be at most {MAX}")))
}

/// As [`within`], for an optional key.
pub(super) fn some_within<'de, D, T, const MIN: u64, const MAX: u64>(
    d: D,
) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    within::<D, T, MIN, MAX>(d).map(Some)
}

/// `worker.job_timeout_s`: at most [`super::MAX_JOB_TIMEOUT_S`], and why.
pub(super) fn job_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let why = ": a job holds its message unacked while it runs, and RabbitMQ closes the channel \
               of a delivery unacked longer than its consumer_timeout (30 minutes by default)";
    in_range(u64::deserialize(d)?, 1, super::MAX_JOB_TIMEOUT_S, why)
}

/// `worker.id`: 1 to 128 characters, no spaces.
pub(super) fn worker_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = String::deserialize(d)?;
    if id.trim().is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    if id.len() > 128 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(de::Error::custom(
            "must be at most 128 characters, without spaces",
        ));
    }
    Ok(id)
}
