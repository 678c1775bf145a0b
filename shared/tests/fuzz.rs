//! Property tests (fuzzing on stable Rust, with proptest) of the two parsers that read hostile
//! input: job messages (`PushJob::from_message` / `from_slice`) and image references
//! (`ImageRef::parse`, `source_reference`).
//!
//! Every property checks that the parser never panics, and more: an accepted reference is
//! ASCII, canonical and round-trips through `to_string()` and `familiar()`; an accepted job
//! agrees with an independent oracle of the job rules, re-serialises to an equal job, and
//! `peek_job_id` / `peek_metadata` read the same values; a refused job has an
//! `invalid_message`/`invalid_reference` code, and a `Shape`/`NotJson` error never repeats a
//! string value of the message (the scrub).
//!
//! Cases per property come from `PROPTEST_CASES` (default [`DEFAULT_CASES`], sized for CI);
//! each test prints how many cases it ran (`-- --nocapture` to see it). A long run:
//!
//! ```sh
//! PROPTEST_CASES=1000000 cargo test --release -p pushfleet-shared --test fuzz -- --nocapture
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use pushfleet_shared::ErrorCode;
use pushfleet_shared::job::{
    JobError, MAX_JOB_BYTES, MAX_JOB_ID_LEN, MAX_TAGS, MAX_TIMEOUT_S, PushJob, ValidJob,
    peek_job_id, peek_metadata,
};
use pushfleet_shared::reference::{ImageRef, ReferenceError, source_reference};
use serde_json::{Map, Value, json};

/// Cases per property when `PROPTEST_CASES` is not set: a few seconds in a debug build.
const DEFAULT_CASES: u32 = 5_000;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// What one property saw: how many inputs it ran and how many the parser accepted (a property
/// whose inputs are all refused would test little).
#[derive(Debug, Default)]
struct Tally {
    cases: AtomicU64,
    accepted: AtomicU64,
    /// The number of the first case that failed (0: none did); the cases after it are
    /// proptest shrinking the failure.
    first_failure: AtomicU64,
}

impl Tally {
    fn saw(&self, accepted: bool) {
        self.cases.fetch_add(1, Ordering::Relaxed);
        if accepted {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn failed(&self) {
        let at = self.cases.load(Ordering::Relaxed);
        let _ = self
            .first_failure
            .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Runs `property` over `cases()` inputs of `strategy`, prints the count, panics on a failure
/// (a panic inside the parser is caught by proptest, shrunk, and reported as a failure).
fn check<S: Strategy>(
    name: &str,
    strategy: S,
    property: impl Fn(S::Value, &Tally) -> Result<(), TestCaseError>,
) {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..Config::default()
    };
    let wanted = config.cases;
    let mut runner = TestRunner::new(config);
    let tally = Tally::default();
    let started = Instant::now();
    let result = runner.run(&strategy, |value| {
        let outcome = property(value, &tally);
        if outcome.is_err() {
            tally.failed();
        }
        outcome
    });
    let cases = tally.cases.load(Ordering::Relaxed);
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    match tally.first_failure.load(Ordering::Relaxed) {
        0 => println!(
            "fuzz {name}: {cases} cases passed ({wanted} requested), {accepted} accepted, \
             {elapsed:.1?}"
        ),
        at => println!(
            "fuzz {name}: case {at} failed ({} passed before it), then {} shrinking steps, \
             {elapsed:.1?}",
            at - 1,
            cases - at
        ),
    }
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Generators.

/// Characters that tend to break parsers: the reference alphabet, separators, whitespace,
/// controls, invisible and bidi characters, look-alikes of ASCII letters and punctuation.
const ODD_CHARS: &[char] = &[
    'a',
    'z',
    '0',
    '9',
    'A',
    'Z',
    '.',
    '_',
    '-',
    '/',
    ':',
    '@',
    '[',
    ']',
    '%',
    '\\',
    ' ',
    '\t',
    '\n',
    '\r',
    '\0',
    '\u{7}',
    '\u{1b}',
    '\u{7f}',
    '\u{85}',
    '\u{a0}',
    '\u{ad}',
    '\u{200b}',
    '\u{200d}',
    '\u{202e}',
    '\u{2028}',
    '\u{feff}',
    '\u{ff1a}',
    '\u{ff0f}',
    '\u{2024}',
    '\u{2215}',
    '\u{430}',
    '\u{3bf}',
    '\u{131}',
    '\u{17f}',
    '\u{212a}',
    '\u{130}',
    'ß',
    '\u{301}',
    '\u{fffd}',
    '\u{10ffff}',
    '\u{1f600}',
    '"',
    '\'',
    '{',
    '}',
    ',',
];

fn odd_char() -> BoxedStrategy<char> {
    prop_oneof![3 => select(ODD_CHARS), 1 => any::<char>()].boxed()
}

fn odd_string(max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(odd_char(), 0..max)
        .prop_map(String::from_iter)
        .boxed()
}

/// Strings seen in attacks on this kind of service.
const NASTY: &[&str] = &[
    "../../etc/passwd",
    "production/../x",
    "production/%2e%2e/x",
    "%2e%2e/",
    "..%2f..%2fetc",
    "production/./x",
    "production//x",
    "/production/x",
    "..",
    "my\u{430}pp",
    "myapp\u{ff1a}1",
    "\u{202e}ppaym",
    "my\u{200b}app",
    "myapp\u{0}",
    "myapp\n",
    "\u{feff}myapp",
    "\u{ff4d}\u{ff59}app",
    "MyApp",
    "myapp:0722",
    "myapp:latest",
    "0722",
    "latest",
    "basic",
    "harbor",
    "5",
    "",
    " ",
    "\\",
    "\"",
    "production/myapp",
    "localhost:5000/myapp",
    "docker.io/library/myapp",
    "${jndi:ldap://x.example.com/a}",
    "'; DROP TABLE jobs; --",
    "<script>alert(1)</script>",
    "\u{1b}[31mred",
    "C:\\Windows\\system32",
    "file:///etc/passwd",
    "https://evil.example.com/x",
    "null",
    "true",
    "1e999",
    "\u{10ffff}",
    "\u{fffd}",
];

/// A string from every family above, and now and then a huge one (up to 70,000 characters, so
/// a message can cross [`MAX_JOB_BYTES`]).
fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        10 => select(NASTY).prop_map(str::to_owned),
        8 => "[a-z0-9._/:-]{0,24}",
        8 => odd_string(32),
        4 => any::<String>(),
        1 => (odd_char(), 1usize..70_000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

/// A registry part, as written before a `/`.
fn registry_part() -> BoxedStrategy<String> {
    prop_oneof![
        select(vec![
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "localhost",
            "Docker.io",
            "localhost:5000",
            "127.0.0.1:5001",
            "[::1]:5443",
            "[::1]",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9]{1,8}(\\.[a-z0-9-]{1,8}){0,3}(:[0-9]{1,5})?",
        "[a-zA-Z0-9-]{1,10}:[0-9]{0,5}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(:[0-9]{1,5})?",
        "\\[[0-9a-fA-F:]{0,12}\\]?(:[0-9a-z]{0,5})?",
        "[a-zA-Z0-9._:\\[\\]-]{0,12}",
    ]
    .boxed()
}

/// One path component: mostly valid, sometimes traversal, encoded, uppercase or an image ID.
fn path_component() -> BoxedStrategy<String> {
    prop_oneof![
        8 => "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}",
        2 => select(vec![
            "..", ".", "%2e%2e", "library", "docker.io", "localhost", "a..b", "-a", "a-",
        ])
        .prop_map(str::to_owned),
        2 => "[a-zA-Z0-9._-]{0,8}",
        1 => "[0-9a-f]{64}",
        1 => "[a-z]{100,260}",
    ]
    .boxed()
}

fn tag_part() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
        1 => "[A-Za-z0-9_][A-Za-z0-9_.-]{120,135}",
        2 => "[A-Za-z0-9_.:-]{0,6}",
        2 => odd_string(6),
    ]
    .boxed()
}

fn digest_part() -> BoxedStrategy<String> {
    prop_oneof![
        "sha256:[0-9a-f]{64}",
        "sha384:[0-9a-f]{96}",
        "sha512:[0-9a-f]{128}",
        "sha256:[0-9a-fA-F]{60,66}",
        "[a-z0-9+._-]{1,8}:[0-9a-f]{0,70}",
        "[0-9a-f]{0,10}",
    ]
    .boxed()
}

/// An edit of a string: insert, delete or replace a character at a position.
type Edit = (usize, u8, char);

fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(at, kind, c) in edits {
        let at = if chars.is_empty() {
            0
        } else {
            at % (chars.len() + 1)
        };
        match kind % 3 {
            0 => chars.insert(at, c),
            1 if at < chars.len() => {
                chars.remove(at);
            }
            _ if at < chars.len() => chars[at] = c,
            _ => chars.push(c),
        }
    }
    chars.into_iter().collect()
}

/// A reference shaped like Docker's grammar, `[registry/]path[:tag][@digest]`, then edited at
/// random in about half the cases.
fn grammar_reference() -> BoxedStrategy<String> {
    (
        prop::option::of(registry_part()),
        prop::collection::vec(path_component(), 1..4),
        prop::option::of(tag_part()),
        prop::option::weighted(0.2, digest_part()),
        prop_oneof![
            Just(Vec::new()),
            prop::collection::vec((any::<usize>(), any::<u8>(), odd_char()), 1..3),
        ],
    )
        .prop_map(|(registry, path, tag, digest, edits)| {
            let mut out = String::new();
            if let Some(registry) = registry {
                out.push_str(&registry);
                out.push('/');
            }
            out.push_str(&path.join("/"));
            if let Some(tag) = tag {
                out.push(':');
                out.push_str(&tag);
            }
            if let Some(digest) = digest {
                out.push('@');
                out.push_str(&digest);
            }
            apply_edits(&out, &edits)
        })
        .boxed()
}

fn any_reference_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => grammar_reference(),
        1 => "[a-zA-Z0-9:/@._\\[\\]-]{0,40}",
        1 => odd_string(40),
        1 => any::<String>(),
        1 => hostile_string(),
    ]
    .boxed()
}

/// A JSON value of any shape: scalars (huge and odd numbers included), hostile strings, small
/// nested arrays and objects, and now and then one nested 100 to 200 levels deep (serde_json's
/// limit is 128).
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        select(vec![
            0_i64,
            1,
            2,
            -1,
            1700,
            1701,
            4_294_967_295,
            4_294_967_296
        ])
        .prop_map(Value::from),
        hostile_string().prop_map(Value::String),
    ];
    let nested = leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..5)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    });
    prop_oneof![
        20 => nested,
        1 => (100usize..200, any::<bool>()).prop_map(|(depth, arrays)| deep(depth, arrays)),
    ]
    .boxed()
}

fn deep(depth: usize, arrays: bool) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = if arrays {
            Value::Array(vec![v])
        } else {
            json!({ "a": v })
        };
    }
    v
}

/// Keys: the job's own field names, credential-looking names, and anything else.
fn json_key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(vec![
            "version", "job_id", "source", "target", "options", "metadata", "registry",
            "repository", "tags", "remove_local_tag", "timeout_s", "password", "Password",
            "x-token", "docker_auth", "auth_config", "SECRET", "accessToken", "pipeline_run",
            "p\u{430}ssword", "", "__proto__",
        ])
        .prop_map(str::to_owned),
        2 => "[a-z_]{1,10}",
        1 => hostile_string(),
    ]
    .boxed()
}

/// A plausible value for one field of a job: often valid, often just wrong.
fn field_value(path: &[&str]) -> BoxedStrategy<Value> {
    match path {
        ["version"] => prop_oneof![
            select(vec![
                json!(1),
                json!(0),
                json!(2),
                json!(-1),
                json!(1.0),
                json!("1"),
                json!(4_294_967_297_u64),
                json!(null)
            ]),
            any_json(),
        ]
        .boxed(),
        ["job_id"] => {
            prop_oneof!["[A-Za-z0-9._:-]{0,130}".prop_map(Value::String), any_json(),].boxed()
        }
        ["source"] => prop_oneof![
            3 => any_reference_text().prop_map(Value::String),
            1 => any_json(),
        ]
        .boxed(),
        ["target", "repository"] => prop_oneof![
            3 => prop::collection::vec(path_component(), 1..4)
                .prop_map(|p| Value::String(p.join("/"))),
            1 => hostile_string().prop_map(Value::String),
            1 => any_json(),
        ]
        .boxed(),
        ["target", "tags"] => prop_oneof![
            3 => prop::collection::vec(tag_part(), 0..20)
                .prop_map(|tags| Value::Array(tags.into_iter().map(Value::String).collect())),
            1 => prop::collection::vec(any_json(), 0..4).prop_map(Value::Array),
            1 => any_json(),
        ]
        .boxed(),
        ["options", "timeout_s"] => prop_oneof![
            select(vec![
                json!(0),
                json!(1),
                json!(1700),
                json!(1701),
                json!(4_294_967_295_u64),
                json!(4_294_967_296_u64),
                json!(-1),
                json!(null),
                json!(900.5)
            ]),
            any_json(),
        ]
        .boxed(),
        ["options", "remove_local_tag"] => {
            prop_oneof![any::<bool>().prop_map(Value::Bool), any_json()].boxed()
        }
        _ => any_json(),
    }
}

const PATHS: &[&[&str]] = &[
    &[],
    &["version"],
    &["job_id"],
    &["source"],
    &["target"],
    &["target", "registry"],
    &["target", "repository"],
    &["target", "tags"],
    &["options"],
    &["options", "remove_local_tag"],
    &["options", "timeout_s"],
    &["metadata"],
];

const OBJECTS: &[&[&str]] = &[&[], &["target"], &["options"], &["metadata"]];

/// One change to a valid job.
#[derive(Debug, Clone)]
enum Mutation {
    Set(&'static [&'static str], Value),
    Remove(&'static [&'static str]),
    Extra(&'static [&'static str], String, Value),
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        4 => select(PATHS)
            .prop_flat_map(|path| field_value(path).prop_map(move |v| Mutation::Set(path, v))),
        1 => select(PATHS).prop_map(Mutation::Remove),
        2 => (select(OBJECTS), json_key(), any_json())
            .prop_map(|(p, k, v)| Mutation::Extra(p, k, v)),
    ]
    .boxed()
}

fn object_at<'a>(root: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut cur = root;
    for key in path {
        cur = cur.as_object_mut()?.get_mut(*key)?;
    }
    cur.as_object_mut()
}

fn apply(mut job: Value, mutations: &[Mutation]) -> Value {
    for m in mutations {
        match m {
            Mutation::Set([], v) => job = v.clone(),
            Mutation::Set(path, v) => {
                let (last, parent) = path.split_last().expect("non-empty path");
                if let Some(obj) = object_at(&mut job, parent) {
                    obj.insert((*last).to_owned(), v.clone());
                }
            }
            Mutation::Remove([]) => job = Value::Null,
            Mutation::Remove(path) => {
                let (last, parent) = path.split_last().expect("non-empty path");
                if let Some(obj) = object_at(&mut job, parent) {
                    obj.remove(*last);
                }
            }
            Mutation::Extra(path, key, v) => {
                if let Some(obj) = object_at(&mut job, path) {
                    obj.insert(key.clone(), v.clone());
                }
            }
        }
    }
    job
}

fn good_job() -> Value {
    json!({
        "version": 1,
        "job_id": "b7c1e2a4-0722",
        "source": "myapp:0722",
        "target": { "registry": "harbor", "repository": "production/myapp", "tags": ["0722"] },
        "options": { "remove_local_tag": true, "timeout_s": 900 },
        "metadata": { "pipeline_run": 812, "step": 129 }
    })
}

/// How the mutated job becomes bytes. Only the first three are exact JSON for the value.
#[derive(Debug, Clone)]
enum Encoding {
    Compact,
    Pretty,
    /// A repeated root key, given first with another value (the later one wins in serde_json).
    DuplicateKey(usize, Value),
    /// Leading whitespace up to a total length: valid JSON, maybe over the size limit.
    Padded(usize),
    /// A UTF-8 byte order mark before the JSON.
    Bom,
    /// Non-whitespace after the JSON.
    Trailing(&'static str),
    /// A strict prefix of the JSON.
    Truncated(usize),
}

fn encoding() -> BoxedStrategy<Encoding> {
    prop_oneof![
        8 => Just(Encoding::Compact),
        2 => Just(Encoding::Pretty),
        2 => (any::<usize>(), any_json()).prop_map(|(i, v)| Encoding::DuplicateKey(i, v)),
        1 => (MAX_JOB_BYTES - 64..MAX_JOB_BYTES + 64).prop_map(Encoding::Padded),
        1 => Just(Encoding::Bom),
        1 => select(vec!["x", "}", "]", "{}", ",", "\0", "/*c*/", "null", "\u{feff}"])
            .prop_map(Encoding::Trailing),
        2 => any::<usize>().prop_map(Encoding::Truncated),
    ]
    .boxed()
}

/// The bytes, and whether they mean exactly the JSON of `value` (so the oracle applies).
fn encode(value: &Value, encoding: &Encoding) -> (Vec<u8>, bool) {
    let compact = serde_json::to_vec(value).expect("serialisable");
    match encoding {
        Encoding::Compact => (compact, true),
        Encoding::Pretty => (
            serde_json::to_vec_pretty(value).expect("serialisable"),
            true,
        ),
        Encoding::DuplicateKey(i, first) => match value.as_object() {
            Some(root) if !root.is_empty() => {
                let key = root.keys().nth(i % root.len()).expect("in range");
                let mut out =
                    serde_json::to_vec(&json!({ key.as_str(): first })).expect("serialisable");
                out.pop(); // the closing `}`
                out.push(b',');
                out.extend_from_slice(&compact[1..]);
                // The repeated value is parsed too, so its nesting counts against the limit.
                (out, json_depth(first) < 127)
            }
            _ => (compact, true),
        },
        Encoding::Padded(total) => {
            let mut out = vec![b' '; total.saturating_sub(compact.len())];
            out.extend_from_slice(&compact);
            (out, true)
        }
        Encoding::Bom => {
            let mut out = "\u{feff}".as_bytes().to_vec();
            out.extend_from_slice(&compact);
            (out, false)
        }
        Encoding::Trailing(junk) => {
            let mut out = compact;
            out.extend_from_slice(junk.as_bytes());
            (out, false)
        }
        Encoding::Truncated(at) => {
            let mut out = compact;
            let len = out.len();
            out.truncate(at % len.max(1));
            (out, false)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Oracles and invariants.

fn is_tag_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

fn is_valid_tag(tag: &str) -> bool {
    (1..=128).contains(&tag.len()) && tag.bytes().all(is_tag_byte) && !tag.starts_with(['.', '-'])
}

/// Docker's path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(component: &str) -> bool {
    let b = component.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.first().is_none_or(|&x| !alnum(x)) || b.last().is_none_or(|&x| !alnum(x)) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' if b.get(i + 1) == Some(&b'_') => i += 2,
            b'_' => i += 1,
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if !b.get(i).is_some_and(|&x| alnum(x)) {
            return false;
        }
    }
    true
}

fn is_valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Everything an accepted reference promises.
fn check_accepted_reference(input: &str, r: &ImageRef) -> Result<(), TestCaseError> {
    prop_assert!(input.is_ascii(), "accepted non-ASCII input {input:?}");
    let full = r.to_string();
    prop_assert!(full.is_ascii(), "{input:?} -> {full:?}");
    prop_assert!(
        !full.contains(|c: char| c.is_whitespace() || c.is_control()),
        "{input:?} -> {full:?}"
    );
    prop_assert_eq!(
        ImageRef::parse(&full),
        Ok(r.clone()),
        "to_string round trip of {:?}",
        input
    );
    let familiar = r.familiar();
    prop_assert_eq!(
        ImageRef::parse(&familiar),
        Ok(r.clone()),
        "familiar round trip of {:?} via {:?}",
        input,
        familiar
    );
    let registry = r.registry();
    prop_assert!(
        !registry.is_empty()
            && registry.is_ascii()
            && !registry.contains(['/', '@'])
            && !registry.contains(|c: char| c.is_whitespace() || c.is_control()),
        "registry {registry:?} of {input:?}"
    );
    prop_assert!(
        r.repository().split('/').all(is_path_component),
        "repository {:?} of {input:?} is not lowercase path components",
        r.repository()
    );
    if let Some(tag) = r.tag() {
        prop_assert!(is_valid_tag(tag), "tag {tag:?} of {input:?}");
        prop_assert!(
            input.contains(&format!(":{tag}")),
            "tag {tag:?} of {input:?}"
        );
    }
    if let Some(digest) = r.digest() {
        prop_assert!(is_valid_digest(digest), "digest {digest:?} of {input:?}");
        prop_assert!(
            input.ends_with(&format!("@{digest}")),
            "digest of {input:?}"
        );
    } else {
        prop_assert!(!input.contains('@'), "{input:?} lost its digest");
    }
    prop_assert!(r.name().len() <= 255, "name of {input:?} is too long");
    prop_assert_eq!(r.tag_or_latest(), r.tag().unwrap_or("latest"));
    if r.is_docker_hub_root() {
        prop_assert!(r.is_docker_hub());
    }
    Ok(())
}

fn check_reference_error(input: &str, e: &ReferenceError) -> Result<(), TestCaseError> {
    let message = e.to_string();
    prop_assert!(!message.is_empty());
    prop_assert!(!e.hint().is_empty());
    // Every message names the input at most a few times, each escaped at most 10 bytes a char.
    prop_assert!(
        message.len() <= 32 * input.len() + 1024,
        "{} bytes of message for {} bytes of input",
        message.len(),
        input.len()
    );
    Ok(())
}

/// The documented credential rule, written independently: a key is a credential when it is
/// not plain ASCII, or when one of its words (split at non-alphanumerics and at camelCase
/// humps, lowercased) is a credential word, or when its words run together end with a long
/// one (`registrytoken`), at any depth.
fn has_credential_key(value: &Value) -> bool {
    const WORDS: [&str; 13] = [
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "identitytoken",
        "registrytoken",
        "apikey",
        "passphrase",
    ];
    fn words(key: &str) -> Vec<String> {
        // Insert a separator before every upper-case letter that follows a lower-case letter or
        // digit, then split on anything that is not alphanumeric.
        let mut spaced = String::new();
        let mut prev: Option<char> = None;
        for c in key.chars() {
            if c.is_uppercase() && prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit()) {
                spaced.push(' ');
            }
            spaced.push(c);
            prev = Some(c);
        }
        spaced
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| {
            let w = words(k);
            let whole = w.concat();
            !k.is_ascii()
                || w.iter().any(|x| WORDS.contains(&x.as_str()))
                || WORDS.iter().any(|c| c.len() > 4 && whole.ends_with(c))
                || has_credential_key(v)
        }),
        Value::Array(items) => items.iter().any(has_credential_key),
        _ => false,
    }
}

fn only_keys(map: &Map<String, Value>, allowed: &[&str]) -> bool {
    map.keys().all(|k| allowed.contains(&k.as_str()))
}

/// How many arrays or objects are nested at the deepest point (a scalar is 0).
fn json_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// An independent reading of the job rules (README, module docs of `job`): whether `value`,
/// sent as exact JSON within the size limit, is a valid job.
fn oracle_accepts(value: &Value) -> bool {
    // serde_json refuses more than 127 nested arrays or objects (its recursion limit).
    if json_depth(value) > 127 {
        return false;
    }
    let Some(root) = value.as_object() else {
        return false;
    };
    if !only_keys(
        root,
        &[
            "version", "job_id", "source", "target", "options", "metadata",
        ],
    ) {
        return false;
    }
    if root.get("version").and_then(Value::as_u64) != Some(1) {
        return false;
    }
    let job_id_ok = root
        .get("job_id")
        .and_then(Value::as_str)
        .is_some_and(|id| {
            (1..=MAX_JOB_ID_LEN).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        });
    if !job_id_ok {
        return false;
    }
    let source_ok = root
        .get("source")
        .and_then(Value::as_str)
        .is_some_and(|s| ImageRef::parse(s).is_ok());
    if !source_ok {
        return false;
    }
    let Some(target) = root.get("target").and_then(Value::as_object) else {
        return false;
    };
    if !only_keys(target, &["registry", "repository", "tags"])
        || !target.get("registry").is_some_and(Value::is_string)
    {
        return false;
    }
    let Some(repository) = target.get("repository").and_then(Value::as_str) else {
        return false;
    };
    let Some(tags) = target.get("tags").and_then(Value::as_array) else {
        return false;
    };
    let tags: Option<Vec<&str>> = tags.iter().map(Value::as_str).collect();
    let Some(tags) = tags else {
        return false;
    };
    if tags.is_empty() || tags.len() > MAX_TAGS {
        return false;
    }
    if tags.iter().collect::<HashSet<_>>().len() != tags.len() {
        return false;
    }
    if !tags
        .iter()
        .all(|t| ImageRef::for_registry("registry.invalid", repository, t).is_ok())
    {
        return false;
    }
    match root.get("options") {
        None => {}
        Some(Value::Object(options)) => {
            if !only_keys(options, &["remove_local_tag", "timeout_s"]) {
                return false;
            }
            if !options
                .get("remove_local_tag")
                .is_none_or(Value::is_boolean)
            {
                return false;
            }
            match options.get("timeout_s") {
                None | Some(Value::Null) => {}
                Some(t) => {
                    if !t
                        .as_u64()
                        .is_some_and(|t| (1..=u64::from(MAX_TIMEOUT_S)).contains(&t))
                    {
                        return false;
                    }
                }
            }
        }
        Some(_) => return false,
    }
    match root.get("metadata") {
        None => true,
        Some(m @ Value::Object(_)) => !has_credential_key(m),
        Some(_) => false,
    }
}

/// Everything an accepted job promises.
fn check_accepted_job(body: &[u8], valid: &ValidJob) -> Result<(), TestCaseError> {
    let job = &valid.job;
    prop_assert!(body.len() <= MAX_JOB_BYTES);
    prop_assert_eq!(job.version, 1);
    prop_assert!((1..=MAX_JOB_ID_LEN).contains(&job.job_id.len()));
    let tags = &job.target.tags;
    prop_assert!(!tags.is_empty() && tags.len() <= MAX_TAGS);
    prop_assert_eq!(tags.iter().collect::<HashSet<_>>().len(), tags.len());
    prop_assert!(tags.iter().all(|t| is_valid_tag(t)), "tags {:?}", tags);
    if let Some(t) = job.options.timeout_s {
        prop_assert!((1..=MAX_TIMEOUT_S).contains(&t));
    }
    prop_assert!(!has_credential_key(&Value::Object(job.metadata.clone())));
    prop_assert_eq!(ImageRef::parse(&job.source), Ok(valid.source.clone()));
    check_accepted_reference(&job.source, &valid.source)?;
    let targets = valid
        .targets_at("registry.invalid")
        .map_err(|e| TestCaseError::fail(format!("accepted job has bad targets: {e}")))?;
    prop_assert_eq!(targets.len(), tags.len());
    for target in &targets {
        prop_assert_eq!(target.repository(), job.target.repository.as_str());
        check_accepted_reference(&target.to_string(), target)?;
    }
    // Re-serialised, it reads back the same.
    let again = PushJob::from_slice(&job.to_json());
    prop_assert_eq!(again, Ok(valid.clone()), "re-serialised job differs");
    // What a refused message's event would read agrees with the parse.
    prop_assert_eq!(peek_job_id(body), Some(job.job_id.clone()));
    prop_assert_eq!(&peek_metadata(body), &job.metadata);
    Ok(())
}

/// Words the serde messages and our own messages may print: a string value equal to one of
/// them is not a leak.
const VOCABULARY: &str = "version job_id source target options metadata registry repository \
    tags remove_local_tag timeout_s invalid type expected struct PushJob JobTarget JobOptions \
    a sequence a boolean a string unknown field missing field one of floating point integer \
    recursion limit exceeded trailing characters EOF while parsing a value a list an object \
    map characters withheld";

fn collect_strings<'a>(value: &'a Value, values: &mut Vec<&'a str>, keys: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => values.push(s),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, values, keys)),
        Value::Object(map) => {
            for (k, v) in map {
                keys.push(k);
                collect_strings(v, values, keys);
            }
        }
        _ => {}
    }
}

/// A refused job: a message-level code, a hint, and (for Shape/NotJson) no string value of the
/// message in the error text.
fn check_job_error(body: &[u8], parsed: Option<&Value>, e: &JobError) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(
            e.code(),
            ErrorCode::InvalidMessage | ErrorCode::InvalidReference
        ),
        "code {}",
        e.code()
    );
    prop_assert!(!e.hint().is_empty());
    let message = e.to_string();
    prop_assert!(!message.is_empty());
    if body.len() > MAX_JOB_BYTES && !matches!(e, JobError::WrongContentType { .. }) {
        prop_assert!(
            matches!(e, JobError::TooLarge { size } if *size == body.len()),
            "{} bytes: {e}",
            body.len()
        );
    }
    if let (JobError::Shape { .. } | JobError::NotJson { .. }, Some(value)) = (e, parsed) {
        let (mut values, mut keys) = (Vec::new(), Vec::new());
        collect_strings(value, &mut values, &mut keys);
        for s in values {
            // Keys are printed by name (`unknown field`): a value inside one is not a leak.
            if s.chars().count() <= 8
                || keys.iter().any(|k| k.contains(s))
                || VOCABULARY.contains(s)
            {
                continue;
            }
            prop_assert!(
                !message.contains(s),
                "error text repeats the string value {s:?}: {message}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reference properties.

#[test]
fn reference_parse_arbitrary_strings() {
    let strategy = prop_oneof![
        any::<String>(),
        odd_string(64),
        "[a-zA-Z0-9:/@._\\[\\]-]{0,40}",
        hostile_string(),
    ];
    check("ImageRef::parse(arbitrary)", strategy, |input, tally| {
        let result = ImageRef::parse(&input);
        tally.saw(result.is_ok());
        match &result {
            Ok(r) => check_accepted_reference(&input, r),
            Err(e) => check_reference_error(&input, e),
        }
    });
}

#[test]
fn reference_parse_grammar_shaped() {
    check(
        "ImageRef::parse(grammar)",
        grammar_reference(),
        |input, tally| {
            let result = ImageRef::parse(&input);
            tally.saw(result.is_ok());
            match &result {
                Ok(r) => check_accepted_reference(&input, r),
                Err(e) => check_reference_error(&input, e),
            }
        },
    );
}

#[test]
fn source_reference_follows_parse_and_the_tag_rule() {
    let strategy = (
        any_reference_text(),
        prop::option::of(prop_oneof![tag_part(), hostile_string()]),
    );
    check("source_reference", strategy, |(image, tag), tally| {
        let result = source_reference(&image, tag.as_deref());
        tally.saw(result.is_ok());
        let parsed = ImageRef::parse(&image);
        match (&parsed, &result) {
            (Err(pe), Err(e)) => {
                prop_assert_eq!(pe, e, "an unparsable image is that parse error");
                check_reference_error(&image, e)
            }
            (Err(_), Ok(r)) => Err(TestCaseError::fail(format!(
                "{image:?} does not parse but source_reference gave {r}"
            ))),
            (Ok(p), _) => {
                let applies = p.tag().is_none() && p.digest().is_none();
                match (applies, tag.as_deref(), &result) {
                    (true, Some(t), Ok(r)) => {
                        prop_assert!(is_valid_tag(t), "bad tag {t:?} applied");
                        prop_assert_eq!(r.tag(), Some(t));
                        prop_assert_eq!(r.name(), p.name());
                        prop_assert_eq!(r.digest(), None);
                    }
                    (true, Some(t), Err(e)) => {
                        prop_assert!(!is_valid_tag(t), "valid tag {t:?} refused: {e}");
                        prop_assert!(
                            matches!(
                                e,
                                ReferenceError::InvalidTag { .. }
                                    | ReferenceError::TagTooLong { .. }
                            ),
                            "{e:?}"
                        );
                    }
                    (_, _, Ok(r)) => prop_assert_eq!(r, p, "the image's own tag or digest stays"),
                    (_, _, Err(e)) => {
                        return Err(TestCaseError::fail(format!(
                            "{image:?} parses, the tag does not apply, yet: {e}"
                        )));
                    }
                }
                if let Ok(r) = &result {
                    check_accepted_reference(&r.to_string(), r)?;
                }
                Ok(())
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Job properties.

/// JSON-ish token soup: mostly near-JSON that breaks the parser in many different places.
fn token_soup() -> BoxedStrategy<Vec<u8>> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        " ",
        "\"version\"",
        "1",
        "\"job_id\"",
        "\"a-1\"",
        "\"source\"",
        "\"myapp:1\"",
        "\"target\"",
        "\"tags\"",
        "\"\\u0000\"",
        "\\",
        "\"\\ud800\"",
        "1e999",
        "-",
        "-0",
        "1.5e308",
        "18446744073709551616",
        "true",
        "null",
        "NaN",
        "\u{feff}",
        "\u{0}",
        "\n",
        "'",
        "/*",
        "*/",
        "\"\\u202e\"",
        "\"metadata\"",
        "{\"password\":1}",
    ];
    prop::collection::vec(select(TOKENS), 0..40)
        .prop_map(|tokens| tokens.concat().into_bytes())
        .boxed()
}

fn any_content_type() -> BoxedStrategy<Option<String>> {
    prop::option::of(prop_oneof![
        select(vec![
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            " application/json ;x=y",
            "text/plain",
            "application/jsonx",
            "application/json-patch+json",
            "application/xml; x=application/json",
            "",
            ";application/json",
            "application/\u{0}json",
            "applicat\u{131}on/json",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,80}",
        odd_string(100),
    ])
    .boxed()
}

#[test]
fn job_from_message_arbitrary_bytes() {
    let body = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..512),
        3 => token_soup(),
        1 => any::<String>().prop_map(String::into_bytes),
        1 => (any::<u8>(), MAX_JOB_BYTES - 2..MAX_JOB_BYTES + 2).prop_map(|(b, n)| vec![b; n]),
    ];
    let strategy = (body, any_content_type());
    check(
        "PushJob::from_message(bytes)",
        strategy,
        |(body, ct), tally| {
            let result = PushJob::from_message(&body, ct.as_deref());
            tally.saw(result.is_ok());
            // The peeks run on every refused message in the worker: they must not panic either.
            let id = peek_job_id(&body);
            let _ = peek_metadata(&body);
            prop_assert!(id.is_none_or(|id| (1..=MAX_JOB_ID_LEN).contains(&id.len())));
            check_content_type(&body, ct.as_deref(), &result)?;
            match &result {
                Ok(valid) => check_accepted_job(&body, valid),
                Err(e) => {
                    let parsed = serde_json::from_slice::<Value>(&body).ok();
                    check_job_error(&body, parsed.as_ref(), e)
                }
            }
        },
    );
}

/// `from_message` refuses a content type that is set and not `application/json`, before
/// anything else, and is `from_slice` otherwise.
fn check_content_type(
    body: &[u8],
    ct: Option<&str>,
    result: &Result<ValidJob, JobError>,
) -> Result<(), TestCaseError> {
    let json = ct.is_none_or(|ct| {
        ct.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case("application/json")
    });
    if json {
        prop_assert_eq!(result, &PushJob::from_slice(body));
    } else {
        match result {
            Err(JobError::WrongContentType { found }) => {
                prop_assert!(found.chars().count() <= 64);
                prop_assert!(ct.is_some_and(|ct| ct.starts_with(found.as_str())));
            }
            other => {
                return Err(TestCaseError::fail(format!(
                    "content type {ct:?} gave {other:?}"
                )));
            }
        }
    }
    Ok(())
}

#[test]
fn job_from_slice_near_valid_jobs() {
    let strategy = (
        prop::collection::vec(mutation(), 0..4),
        encoding(),
        any_content_type(),
    );
    check(
        "PushJob::from_slice(mutated jobs)",
        strategy,
        |(mutations, encoding, ct), tally| {
            let value = apply(good_job(), &mutations);
            let (body, exact) = encode(&value, &encoding);
            let result = PushJob::from_slice(&body);
            tally.saw(result.is_ok());
            let expected = exact && body.len() <= MAX_JOB_BYTES && oracle_accepts(&value);
            prop_assert_eq!(
                result.is_ok(),
                expected,
                "oracle disagrees on {} ({:?}): {:?}",
                String::from_utf8_lossy(&body[..body.len().min(2000)]),
                encoding,
                result.as_ref().err()
            );
            if let Encoding::DuplicateKey(..) = encoding {
                let plain = PushJob::from_slice(&serde_json::to_vec(&value).expect("json"));
                if let (Ok(a), Ok(b)) = (&result, &plain) {
                    prop_assert_eq!(a, b, "a duplicate key: the last one wins");
                }
            }
            check_content_type(
                &body,
                ct.as_deref(),
                &PushJob::from_message(&body, ct.as_deref()),
            )?;
            match &result {
                Ok(valid) => check_accepted_job(&body, valid),
                Err(e) => check_job_error(&body, exact.then_some(&value), e),
            }
        },
    );
}

/// Found by `job_from_slice_near_valid_jobs`: serde's derived structs read a JSON array as
/// positional fields, so these were accepted as jobs.
#[test]
fn arrays_are_not_jobs_targets_or_options() {
    let bodies = [
        r#"[1, "j-1", "myapp:1", ["harbor", "production/myapp", ["1"]]]"#,
        r#"{"version": 1, "job_id": "j-1", "source": "myapp:1",
            "target": ["harbor", "production/myapp", ["1"]]}"#,
        r#"{"version": 1, "job_id": "j-1", "source": "myapp:1", "options": [true, 900],
            "target": {"registry": "harbor", "repository": "production/myapp", "tags": ["1"]}}"#,
        r#"{"version": 1, "job_id": "j-1", "source": "myapp:1", "options": [],
            "target": {"registry": "harbor", "repository": "production/myapp", "tags": ["1"]}}"#,
    ];
    for body in bodies {
        let error = PushJob::from_slice(body.as_bytes()).expect_err(body);
        assert!(matches!(error, JobError::Shape { .. }), "{body}: {error}");
        assert_eq!(error.code(), ErrorCode::InvalidMessage);
    }
}
