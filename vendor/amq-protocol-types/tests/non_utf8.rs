//! pushfleet patch: short strings that are not UTF-8 parse (as U+FFFD) instead of failing the
//! frame. RabbitMQ forwards such strings from any publisher; failing here killed the consumer's
//! connection. See `make_str` in src/parsing.rs.

use amq_protocol_types::{
    generation::{gen_field_table, gen_short_string},
    parsing::{parse_field_table, parse_short_string},
    *,
};
use cookie_factory::r#gen as cf_gen;

const EMPTY: &[u8] = b"";

/// The wire form of a short string: one length octet, then the octets.
fn short(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::try_from(bytes.len()).expect("test strings are short")];
    out.extend_from_slice(bytes);
    out
}

/// The wire form of a field table: a 4-octet length, then the entries.
fn table(entries: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(entries.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(entries);
    out
}

#[test]
fn valid_utf8_is_unchanged() {
    let wire = short("héllo".as_bytes());
    assert_eq!(
        parse_short_string(&wire[..]),
        Ok((EMPTY, ShortString::from("héllo")))
    );
}

#[test]
fn invalid_octets_become_replacement_characters() {
    let wire = short(b"\xff\xfek");
    let (rest, parsed) = parse_short_string(&wire[..]).expect("parses");
    assert!(rest.is_empty());
    assert_eq!(parsed.as_str(), "\u{fffd}\u{fffd}k");
}

#[test]
fn a_truncated_multibyte_sequence_is_replaced_too() {
    // "é" is C3 A9; a lone C3 at the end is not UTF-8.
    let wire = short(b"caf\xc3");
    let (_, parsed) = parse_short_string(&wire[..]).expect("parses");
    assert_eq!(parsed.as_str(), "caf\u{fffd}");
}

#[test]
fn the_next_field_is_still_read_after_a_bad_string() {
    let mut wire = short(b"\x80");
    wire.extend(short(b"next"));
    let (rest, first) = parse_short_string(&wire[..]).expect("first");
    assert_eq!(first.as_str(), "\u{fffd}");
    let (rest, second) = parse_short_string(rest).expect("second");
    assert!(rest.is_empty());
    assert_eq!(second.as_str(), "next");
}

#[test]
fn a_long_invalid_string_stays_within_the_short_string_limit_and_encodes_again() {
    // 255 invalid octets would grow to 765 bytes of U+FFFD.
    let wire = short(&[0xff; 255]);
    let (rest, parsed) = parse_short_string(&wire[..]).expect("parses");
    assert!(rest.is_empty());
    assert!(parsed.as_str().len() <= MAX_SHORT_STRING_LENGTH);
    assert_eq!(parsed.as_str(), "\u{fffd}".repeat(85));
    let mut buf = vec![0u8; 512];
    let (_, written) = cf_gen(gen_short_string(parsed.as_str()), &mut buf[..]).expect("encodes");
    let written = usize::try_from(written).expect("fits");
    assert_eq!(
        parse_short_string(&buf[..written]),
        Ok((EMPTY, parsed.clone()))
    );
}

#[test]
fn a_table_with_a_non_utf8_key_parses_with_its_other_entries() {
    // {"\xff\xfek": S "v", "ok": t true}
    let mut entries = short(b"\xff\xfek");
    entries.extend(b"S\x00\x00\x00\x01v");
    entries.extend(short(b"ok"));
    entries.extend(b"t\x01");
    let wire = table(&entries);
    let (rest, parsed) = parse_field_table(&wire[..]).expect("parses");
    assert!(rest.is_empty());
    let inner = parsed.inner();
    assert_eq!(inner.len(), 2);
    assert_eq!(
        inner.get("\u{fffd}\u{fffd}k"),
        Some(&AMQPValue::LongString("v".into()))
    );
    assert_eq!(inner.get("ok"), Some(&AMQPValue::Boolean(true)));
}

#[test]
fn a_non_utf8_key_in_a_nested_table_parses() {
    // {"outer": F {"\xc0": b 1}}
    let mut nested = short(b"\xc0");
    nested.extend(b"b\x01");
    let mut entries = short(b"outer");
    entries.push(b'F');
    entries.extend(table(&nested));
    let wire = table(&entries);
    let (_, parsed) = parse_field_table(&wire[..]).expect("parses");
    let Some(AMQPValue::FieldTable(inner)) = parsed.inner().get("outer") else {
        panic!("outer is a table: {parsed:?}");
    };
    assert_eq!(
        inner.inner().get("\u{fffd}"),
        Some(&AMQPValue::ShortShortInt(1))
    );
}

#[test]
fn a_parsed_table_with_replaced_keys_encodes_again() {
    let mut entries = short(&[0xfe; 200]);
    entries.extend(b"t\x00");
    let wire = table(&entries);
    let (_, parsed) = parse_field_table(&wire[..]).expect("parses");
    let mut buf = vec![0u8; 1024];
    let (_, written) = cf_gen(gen_field_table(&parsed), &mut buf[..]).expect("encodes");
    let written = usize::try_from(written).expect("fits");
    assert_eq!(parse_field_table(&buf[..written]), Ok((EMPTY, parsed)));
}
