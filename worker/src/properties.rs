//! A job message's AMQP properties: which the worker refuses, and how a copy it publishes (to
//! the dead-letter queue, or back through a delay queue for a retry) keeps them.
//!
//! - **Strings that are not UTF-8.** AMQP says short strings (`message_id`, `type`, header
//!   names, ...) are UTF-8, but RabbitMQ forwards whatever a publisher sends. The AMQP parser
//!   (amq-protocol-types, patched in `vendor/`) decodes such bytes as U+FFFD instead of failing
//!   the frame, which used to take the worker's connection down with every job prefetched on
//!   it. A short string holding U+FFFD is refused here as `invalid_message`: it came from bytes
//!   that were not UTF-8 (no publisher has a reason to send U+FFFD itself).
//! - **Content encoding.** The body is read as plain UTF-8 JSON. `content_encoding` may be
//!   absent, `identity` or `utf-8` (what kombu sets for JSON); anything else (`gzip`, ...)
//!   is refused rather than read as if it were plain.
//! - **Copies keep everything.** A dead-letter or retry copy carries every property and header
//!   of the original, plus the worker's own headers, except `expiration` (it would expire the
//!   copy; a retry sets its own delay) and `user_id` (RabbitMQ refuses a publish whose
//!   `user_id` is not the publishing connection's user; it is kept as the header
//!   `x-pushfleet-original-user-id`). A content header cannot be split over frames and a
//!   publish with one larger than the connection's `frame_max` gets the connection closed, so
//!   when the copy would not fit, the largest original headers are left out, largest first, and
//!   their names listed in `x-pushfleet-dropped-headers`.

use cookie_factory::r#gen as encode;
use lapin::BasicProperties;
use lapin::protocol::basic::gen_properties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use pushfleet_shared::ErrorCode;

use crate::failure::Coded;

/// Header naming the original headers left out of a copy to keep it within one frame.
pub const DROPPED_HEADERS_HEADER: &str = "x-pushfleet-dropped-headers";
/// Header keeping the original `user_id` property, which a copy cannot carry as a property.
pub const ORIGINAL_USER_ID_HEADER: &str = "x-pushfleet-original-user-id";
/// Content encodings under which the body is plain UTF-8 JSON.
const PLAIN_ENCODINGS: [&str; 3] = ["identity", "utf-8", "utf8"];
/// The longest piece of a property quoted in an error message.
const MAX_QUOTED_CHARS: usize = 64;

/// Why a message's properties are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    /// A short string (property or header name) was not UTF-8 on the wire.
    #[error(
        "AMQP property {property} is not valid UTF-8 (the broker forwarded bytes AMQP does not allow in short strings)"
    )]
    NotUtf8 {
        /// Which property: `message_id`, `headers["x-a"]`, `headers["x-a"]["�k"]`, ...
        property: String,
    },
    /// The body is declared in an encoding the worker does not decode.
    #[error(
        "content_encoding {found:?} is not supported: the worker reads the body as plain UTF-8 JSON"
    )]
    UnsupportedEncoding {
        /// The declared encoding (cut to 64 characters).
        found: String,
    },
}

impl Coded for PropertyError {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidMessage
    }

    fn hint(&self) -> String {
        match self {
            PropertyError::NotUtf8 { .. } => {
                "publish property values and header names as UTF-8 text".to_owned()
            }
            PropertyError::UnsupportedEncoding { .. } => {
                "publish the JSON body uncompressed, with no content_encoding (or `utf-8`)"
                    .to_owned()
            }
        }
    }
}

/// Checks what the worker requires of a job message's properties (see the module doc).
pub fn check(properties: &BasicProperties) -> Result<(), PropertyError> {
    let strings: [(&str, Option<&ShortString>); 10] = [
        ("content_type", properties.content_type().as_ref()),
        ("content_encoding", properties.content_encoding().as_ref()),
        ("correlation_id", properties.correlation_id().as_ref()),
        ("reply_to", properties.reply_to().as_ref()),
        ("expiration", properties.expiration().as_ref()),
        ("message_id", properties.message_id().as_ref()),
        ("type", properties.kind().as_ref()),
        ("user_id", properties.user_id().as_ref()),
        ("app_id", properties.app_id().as_ref()),
        ("cluster_id", properties.cluster_id().as_ref()),
    ];
    for (name, value) in strings {
        if value.is_some_and(|v| was_not_utf8(v.as_str())) {
            return Err(PropertyError::NotUtf8 {
                property: name.to_owned(),
            });
        }
    }
    if let Some(headers) = properties.headers() {
        check_table(headers, "headers")?;
    }
    if let Some(encoding) = properties.content_encoding() {
        let encoding = encoding.as_str().trim();
        if !PLAIN_ENCODINGS
            .iter()
            .any(|plain| encoding.eq_ignore_ascii_case(plain))
        {
            return Err(PropertyError::UnsupportedEncoding {
                found: encoding.chars().take(MAX_QUOTED_CHARS).collect(),
            });
        }
    }
    Ok(())
}

/// U+FFFD is what the AMQP parser puts where a short string's bytes were not UTF-8.
fn was_not_utf8(s: &str) -> bool {
    s.contains(char::REPLACEMENT_CHARACTER)
}

fn check_table(table: &FieldTable, path: &str) -> Result<(), PropertyError> {
    for (key, value) in table {
        let here = format!(
            "{path}[{:?}]",
            key.as_str()
                .chars()
                .take(MAX_QUOTED_CHARS)
                .collect::<String>()
        );
        if was_not_utf8(key.as_str()) {
            return Err(PropertyError::NotUtf8 { property: here });
        }
        check_value(value, &here)?;
    }
    Ok(())
}

fn check_value(value: &AMQPValue, path: &str) -> Result<(), PropertyError> {
    match value {
        AMQPValue::ShortString(s) if was_not_utf8(s.as_str()) => Err(PropertyError::NotUtf8 {
            property: path.to_owned(),
        }),
        AMQPValue::FieldTable(t) => check_table(t, path),
        AMQPValue::FieldArray(items) => items
            .as_slice()
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_value(v, &format!("{path}[{i}]"))),
        _ => Ok(()),
    }
}

/// The properties of a copy of `original` (see the module doc): every property but
/// `expiration` and `user_id`, every original header, then `extra` headers (which win over
/// originals of the same name), all within `frame_max`.
pub fn copy_of(original: &BasicProperties, extra: FieldTable, frame_max: u32) -> BasicProperties {
    let copy = without_expiration_and_user(original);

    let mut mine = extra;
    if let Some(user) = original.user_id() {
        mine.insert(
            ORIGINAL_USER_ID_HEADER.into(),
            AMQPValue::LongString(LongString::from(user.as_str())),
        );
    }
    let mut originals: Vec<(ShortString, AMQPValue)> = original
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| !mine.inner().contains_key(k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    // The content header frame: 7 bytes of frame header, 14 of class/weight/body size, the
    // properties, 1 frame end. Keep a margin for the dropped-headers list itself.
    let budget = usize::try_from(frame_max)
        .unwrap_or(usize::MAX)
        .saturating_sub(22 + 512);
    let mut dropped: Vec<String> = Vec::new();
    loop {
        let mut headers = mine.clone();
        for (k, v) in &originals {
            headers.insert(k.clone(), v.clone());
        }
        if !dropped.is_empty() {
            headers.insert(
                DROPPED_HEADERS_HEADER.into(),
                AMQPValue::LongString(LongString::from(dropped.join(","))),
            );
        }
        let candidate = copy.clone().with_headers(headers);
        if encoded_len(&candidate) <= budget || originals.is_empty() {
            return candidate;
        }
        // Leave out the largest original header and try again.
        let Some((largest, _)) = originals
            .iter()
            .enumerate()
            .max_by_key(|(_, (k, v))| k.as_str().len() + value_len(v))
        else {
            return candidate;
        };
        let (name, _) = originals.swap_remove(largest);
        dropped.push(name.as_str().chars().take(MAX_QUOTED_CHARS).collect());
    }
}

/// `p` without `expiration`, `user_id` and headers (the builder cannot unset a property, so
/// this starts from nothing and sets the others).
fn without_expiration_and_user(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

/// The encoded size of `properties` (flags and values), as they go into a content header.
fn encoded_len(properties: &BasicProperties) -> usize {
    match encode(gen_properties(properties), Vec::new()) {
        Ok((buf, _)) => buf.len(),
        Err(_) => usize::MAX,
    }
}

/// The encoded size of one header value.
fn value_len(value: &AMQPValue) -> usize {
    let mut table = FieldTable::default();
    table.insert("".into(), value.clone());
    encoded_len(&BasicProperties::default().with_headers(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(table: &mut FieldTable, key: &str, value: &str) {
        table.insert(key.into(), AMQPValue::LongString(value.into()));
    }

    #[test]
    fn replacement_characters_anywhere_are_refused_with_the_property_named() {
        let bad = "\u{fffd}\u{fffd}k";
        let cases: Vec<(BasicProperties, &str)> = vec![
            (
                BasicProperties::default().with_message_id(bad.into()),
                "message_id",
            ),
            (
                BasicProperties::default().with_content_type(bad.into()),
                "content_type",
            ),
            (BasicProperties::default().with_type(bad.into()), "type"),
            (
                BasicProperties::default().with_content_encoding(bad.into()),
                "content_encoding",
            ),
            (
                BasicProperties::default().with_correlation_id(bad.into()),
                "correlation_id",
            ),
            (BasicProperties::default().with_app_id(bad.into()), "app_id"),
            (
                BasicProperties::default().with_reply_to(bad.into()),
                "reply_to",
            ),
            (
                BasicProperties::default().with_cluster_id(bad.into()),
                "cluster_id",
            ),
            (
                {
                    let mut t = FieldTable::default();
                    header(&mut t, bad, "v");
                    BasicProperties::default().with_headers(t)
                },
                "headers[\"\u{fffd}\u{fffd}k\"]",
            ),
            (
                {
                    let mut inner = FieldTable::default();
                    inner.insert(bad.into(), AMQPValue::Boolean(true));
                    let mut t = FieldTable::default();
                    t.insert("outer".into(), AMQPValue::FieldTable(inner));
                    BasicProperties::default().with_headers(t)
                },
                "headers[\"outer\"][\"\u{fffd}\u{fffd}k\"]",
            ),
            (
                {
                    let mut inner = FieldTable::default();
                    inner.insert(bad.into(), AMQPValue::Boolean(true));
                    let mut t = FieldTable::default();
                    t.insert(
                        "list".into(),
                        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(inner)].into()),
                    );
                    BasicProperties::default().with_headers(t)
                },
                "headers[\"list\"][0][\"\u{fffd}\u{fffd}k\"]",
            ),
        ];
        for (props, property) in cases {
            assert_eq!(
                check(&props),
                Err(PropertyError::NotUtf8 {
                    property: property.to_owned()
                }),
                "{property}"
            );
        }
    }

    #[test]
    fn ordinary_properties_pass() {
        let mut t = FieldTable::default();
        header(&mut t, "traceparent", "00-abc-def-01");
        header(
            &mut t,
            "x-ünïcode",
            "binary \u{fffd} in a long string is fine",
        );
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("m-1".into())
            .with_type("push".into())
            .with_headers(t);
        assert_eq!(check(&props), Ok(()));
    }

    #[test]
    fn only_plain_encodings_are_read() {
        for ok in ["utf-8", "UTF-8", "utf8", "identity", " utf-8 "] {
            let props = BasicProperties::default().with_content_encoding(ok.into());
            assert_eq!(check(&props), Ok(()), "{ok}");
        }
        for bad in ["gzip", "deflate", "br", "base64", "binary", "utf-16"] {
            let props = BasicProperties::default().with_content_encoding(bad.into());
            assert_eq!(
                check(&props),
                Err(PropertyError::UnsupportedEncoding {
                    found: bad.to_owned()
                }),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_copy_keeps_every_property_and_header_but_expiration_and_user_id() {
        let mut original_headers = FieldTable::default();
        header(&mut original_headers, "traceparent", "00-abc-def-01");
        header(&mut original_headers, "x-pushfleet-attempt", "old");
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(original_headers)
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("corr".into())
            .with_reply_to("replies".into())
            .with_expiration("5000".into())
            .with_message_id("msg-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("push".into())
            .with_user_id("django".into())
            .with_app_id("ci".into())
            .with_cluster_id("c".into());
        let mut extra = FieldTable::default();
        header(&mut extra, "x-pushfleet-attempt", "new");
        let copy = copy_of(&original, extra, 131_072);

        assert_eq!(copy.content_type(), original.content_type());
        assert_eq!(copy.content_encoding(), original.content_encoding());
        assert_eq!(copy.delivery_mode(), original.delivery_mode());
        assert_eq!(copy.priority(), original.priority());
        assert_eq!(copy.correlation_id(), original.correlation_id());
        assert_eq!(copy.reply_to(), original.reply_to());
        assert_eq!(copy.message_id(), original.message_id());
        assert_eq!(copy.timestamp(), original.timestamp());
        assert_eq!(copy.kind(), original.kind());
        assert_eq!(copy.app_id(), original.app_id());
        assert_eq!(copy.cluster_id(), original.cluster_id());
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.user_id(), &None);
        let headers = copy.headers().clone().unwrap_or_default();
        let get = |k: &str| headers.inner().get(k).cloned();
        assert_eq!(
            get("traceparent"),
            Some(AMQPValue::LongString("00-abc-def-01".into()))
        );
        assert_eq!(
            get("x-pushfleet-attempt"),
            Some(AMQPValue::LongString("new".into())),
            "the worker's header wins"
        );
        assert_eq!(
            get(ORIGINAL_USER_ID_HEADER),
            Some(AMQPValue::LongString("django".into()))
        );
        assert_eq!(get(DROPPED_HEADERS_HEADER), None);
    }

    #[test]
    fn a_copy_that_would_not_fit_a_frame_leaves_out_the_largest_headers() {
        let mut original_headers = FieldTable::default();
        header(&mut original_headers, "small", "kept");
        header(&mut original_headers, "huge", &"x".repeat(6000));
        header(&mut original_headers, "big", &"y".repeat(3000));
        let original = BasicProperties::default().with_headers(original_headers);
        let mut extra = FieldTable::default();
        header(&mut extra, "x-pushfleet-error-code", "invalid_message");
        let frame_max = 8192;
        let copy = copy_of(&original, extra, frame_max);

        assert!(encoded_len(&copy) + 22 <= 8192, "{}", encoded_len(&copy));
        let headers = copy.headers().clone().unwrap_or_default();
        let inner = headers.inner();
        assert!(inner.contains_key("small"));
        assert!(
            inner.contains_key("big"),
            "only as much as needed is dropped"
        );
        assert!(!inner.contains_key("huge"));
        assert!(inner.contains_key("x-pushfleet-error-code"));
        assert_eq!(
            inner.get(DROPPED_HEADERS_HEADER),
            Some(&AMQPValue::LongString("huge".into()))
        );
    }

    #[test]
    fn the_worker_headers_are_kept_even_when_originals_must_go() {
        let mut original_headers = FieldTable::default();
        for i in 0..40 {
            header(&mut original_headers, &format!("h{i}"), &"z".repeat(1000));
        }
        let original = BasicProperties::default().with_headers(original_headers);
        let mut extra = FieldTable::default();
        header(&mut extra, "x-pushfleet-error-code", "invalid_message");
        let copy = copy_of(&original, extra, 16_384);
        assert!(encoded_len(&copy) + 22 <= 16_384);
        let headers = copy.headers().clone().unwrap_or_default();
        assert!(headers.inner().contains_key("x-pushfleet-error-code"));
        assert!(headers.inner().contains_key(DROPPED_HEADERS_HEADER));
    }
}
