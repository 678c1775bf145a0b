//! Property tests (fuzzing on stable Rust, with proptest) of the two parsers that read hostile
//! input: job messages (`PushJob::from_message` / `from_slice`) and image references
//! (`ImageRef::parse`, `source_reference`).
//!
//! Every property checks that the parser never panics, and more: an accepted reference is
//! ASCII, canonical and round-trips through `to_string()` and `familiar()`; an accepted job
//! agrees with an independent oracle of the job rules, re-serialises to an equal job, and
//! `peek_job_id` / `peek_metadata` read the same values; a refused job has an
//! `invalid_message`/`invalid_reference` code, and a `Shape`/`NotJson`/duplicate/credential
//! error never repeats a string value of the message (the scrub). A key repeated anywhere in the
//! message is refused with the path the oracle expects.
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
    JobError, JobSource, MAX_JOB_BYTES, MAX_JOB_ID_LEN, MAX_TAGS, MAX_TIMEOUT_S, PushJob, ValidJob,
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

/// Strings shaped like credentials, and near misses of each shape (docs/jobs.md, "No
/// credentials in jobs").
const CREDENTIALISH: &[&str] = &[
    "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----",
    " -----BEGIN CERTIFICATE-----",
    "-----BEGIN",
    "-- BEGIN --",
    "x\n-----BEGIN OPENSSH PRIVATE KEY-----",
    "b3BlbnNzaC1rZXktdjEAAAAA",
    "PuTTY-User-Key-File-3: ssh-rsa",
    "{\"auths\":{\"r\":{\"auth\":\"eDp5\"}}}",
    "{\"auths\":{}}",
    "apiVersion: v1\nkind: Config\nusers: []",
    "apiVersion: v1\nkind: ConfigMap\nusers: []",
    "{\"kind\":\"Config\",\"apiVersion\":\"v1\",\"users\":[]}",
    "Bearer 0123456789abcdefXYZ",
    "Bearer token",
    "Authorization: Basic cm9ib3QkY2k6UzNjcjN0LVBhNTU=",
    "Basic dGVzdA==",
    "cm9ib3QkY2k6UzNjcjN0LVBhNTU=",
    "dGVzdA==",
    "aHR0cHM6Ly9leGFtcGxlLmNvbQ==",
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    "eyJhbGciOiJIUzI1NiJ9",
    "dckr_pat_0123456789abcdefABCD",
    "glpat-short",
    "3f786850e387550fdab836ed7e6dc881de23001b",
    "123e4567-e89b-12d3-a456-426614174000",
];

/// Standard base64 with padding, for generated credentials.
fn to_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A credential-shaped string: one of [`CREDENTIALISH`], or generated around each shape.
fn credential_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => select(CREDENTIALISH).prop_map(str::to_owned),
        1 => "(Bearer|bearer|Basic|Token) {1,2}[A-Za-z0-9+/=._-]{4,24}",
        1 => "[a-z$+.@-]{0,6}:[!-~]{0,10}".prop_map(|pair| to_base64(pair.as_bytes())),
        1 => "[ -~]{0,12}".prop_map(|text| to_base64(text.as_bytes())),
        1 => "(dckr_pat_|glpat-|ghp_|github_pat_)[A-Za-z0-9_-]{10,20}",
        1 => "eyJ[A-Za-z0-9_-]{0,6}\\.(eyJ)?[A-Za-z0-9_-]{0,6}\\.[A-Za-z0-9_-]{0,4}",
        1 => "[A-Za-z0-9+/_-]{6,14}={0,2}",
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
        credential_string().prop_map(Value::String),
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
            "p\u{430}ssword", "", "__proto__", "private_key", "sshKey", "id_ed25519",
            ".dockerconfigjson", "dockercfg", "KUBECONFIG", "Authorization", "bearer",
            "docker_config", "auths", "authors", "token_count", "tokens", "keyboard", "monkey",
            "a.b", "oauth",
        ])
        .prop_map(str::to_owned),
        2 => "[a-z_]{1,10}",
        1 => "([a-z]{1,8}[_.-]?){1,4}",
        1 => hostile_string(),
        1 => credential_string(),
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
        // Credential-shaped strings and near misses in metadata, alone or nested.
        2 => (json_key(), credential_string(), any::<bool>()).prop_map(|(k, v, nested)| {
            let v = if nested { json!({ "deploy": [1, { "key": v }] }) } else { json!(v) };
            Mutation::Extra(&["metadata"], k, v)
        }),
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
    /// The first key of one object (the n-th non-empty object in document order, the root
    /// included) given twice, first with another value: refused as a duplicate.
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
        Encoding::DuplicateKey(n, first) => {
            let objects = count_objects(value);
            if objects == 0 {
                return (compact, true);
            }
            let mut out = Vec::new();
            let mut counter = 0;
            write_with_duplicate(value, n % objects, first, &mut counter, &mut out);
            (out, false)
        }
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

/// How many non-empty objects `value` holds, itself included.
fn count_objects(value: &Value) -> usize {
    match value {
        Value::Object(map) => {
            usize::from(!map.is_empty()) + map.values().map(count_objects).sum::<usize>()
        }
        Value::Array(items) => items.iter().map(count_objects).sum(),
        _ => 0,
    }
}

/// Writes `value` as JSON, the `target`-th non-empty object (document order) starting with its
/// first key bound to `first`, before its own entries.
fn write_with_duplicate(
    value: &Value,
    target: usize,
    first: &Value,
    counter: &mut usize,
    out: &mut Vec<u8>,
) {
    match value {
        Value::Object(map) => {
            out.push(b'{');
            if !map.is_empty() {
                if *counter == target
                    && let Some(key) = map.keys().next()
                {
                    out.extend(serde_json::to_vec(key).expect("string"));
                    out.push(b':');
                    out.extend(serde_json::to_vec(first).expect("json"));
                    out.push(b',');
                }
                *counter += 1;
            }
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(key).expect("string"));
                out.push(b':');
                write_with_duplicate(item, target, first, counter, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_with_duplicate(item, target, first, counter, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).expect("json")),
    }
}

/// The path the duplicate of [`write_with_duplicate`] should be reported at, written by the
/// documented rule (docs/jobs.md): `a.b`, `[i]` for array items, `["…"]` for keys that are not
/// 1 to 64 of `[A-Za-z0-9_-]` (escaped, cut to 32 characters and `...`), `<withheld>` for a key
/// shaped like a credential.
fn duplicate_path(value: &Value, target: usize) -> Option<String> {
    fn walk(value: &Value, target: usize, counter: &mut usize, path: &str) -> Option<String> {
        match value {
            Value::Object(map) => {
                if !map.is_empty() {
                    if *counter == target {
                        let key = map.keys().next()?;
                        return Some(join_key(path, key));
                    }
                    *counter += 1;
                }
                map.iter()
                    .find_map(|(k, v)| walk(v, target, counter, &join_key(path, k)))
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, target, counter, &format!("{path}[{i}]"))),
            _ => None,
        }
    }
    walk(value, target, &mut 0, "")
}

fn join_key(path: &str, key: &str) -> String {
    let dot = if path.is_empty() { "" } else { "." };
    if oracle_credentials::shape(key) {
        return format!("{path}{dot}<withheld>");
    }
    let plain = !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        return format!("{path}{dot}{key}");
    }
    let shown: String = key.chars().take(32).collect();
    let more = if key.chars().count() > 32 { "..." } else { "" };
    format!("{path}[\"{}{more}\"]", shown.escape_default())
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

/// The documented credential rule (docs/jobs.md, "No credentials in jobs"), written
/// independently of `pushfleet_shared::credential`.
mod oracle_credentials {
    use serde_json::Value;

    const TERMS: [&str; 24] = [
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "auth",
        "authorization",
        "bearer",
        "credential",
        "credentials",
        "identitytoken",
        "registrytoken",
        "apikey",
        "privatekey",
        "privkey",
        "sshkey",
        "idrsa",
        "iddsa",
        "idecdsa",
        "ided25519",
        "dockercfg",
        "dockerconfigjson",
        "kubeconfig",
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

    fn is_term(text: &str) -> bool {
        TERMS.contains(&text)
            || text
                .strip_suffix('s')
                .is_some_and(|t| t.len() >= 5 && TERMS.contains(&t))
    }

    /// A key named like a credential: not ASCII, a term spelt by one word or consecutive
    /// words (long terms also plural), or a long term ending the words run together.
    pub(super) fn name(key: &str) -> bool {
        if !key.is_ascii() {
            return true;
        }
        let w = words(key);
        for i in 0..w.len() {
            let mut len = 0;
            for j in i..w.len() {
                len += w[j].len();
                if len > 17 {
                    break;
                }
                if is_term(&w[i..=j].concat()) {
                    return true;
                }
            }
        }
        let whole = w.concat();
        let whole = whole.strip_suffix('s').unwrap_or(&whole);
        TERMS.iter().any(|t| t.len() >= 5 && whole.ends_with(t))
    }

    fn sextet(c: char) -> Option<u32> {
        const STANDARD: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        match c {
            '-' => Some(62),
            '_' => Some(63),
            _ => STANDARD.find(c).and_then(|i| u32::try_from(i).ok()),
        }
    }

    /// Base64 text (one alphabet, standard or URL-safe; padded to a multiple of 4 or unpadded)
    /// of at least 8 characters, not only hex digits and dashes, decoded to UTF-8.
    fn base64(text: &str) -> Option<String> {
        if text.chars().count() < 8 || text.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return None;
        }
        let body = text.trim_end_matches('=');
        let pad = text.len() - body.len();
        if pad > 2 || (pad > 0 && !text.len().is_multiple_of(4)) || body.len() % 4 == 1 {
            return None;
        }
        let has = |set: &str| body.chars().any(|c| set.contains(c));
        if has("+/") && has("-_") {
            return None;
        }
        let values: Option<Vec<u32>> = body.chars().map(sextet).collect();
        let values = values?;
        let mut bytes = Vec::new();
        for group in values.chunks(4) {
            let n = group
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, v)| n | v << (18 - 6 * i));
            let count = group.len() * 6 / 8;
            for i in 0..count {
                bytes.push(((n >> (16 - 8 * i)) & 0xff) as u8);
            }
        }
        String::from_utf8(bytes).ok()
    }

    fn kind_config(text: &str) -> bool {
        // `kind`, an optional quote, blanks, `:`, blanks, an optional quote, `Config`, and no
        // letter or digit after it.
        text.char_indices().any(|(start, _)| {
            let Some(rest) = text[start..].strip_prefix("kind") else {
                return false;
            };
            let rest = rest.strip_prefix(['"', '\'']).unwrap_or(rest);
            let rest = rest.trim_start_matches([' ', '\t']);
            let Some(rest) = rest.strip_prefix(':') else {
                return false;
            };
            let rest = rest.trim_start_matches([' ', '\t']);
            let rest = rest.strip_prefix(['"', '\'']).unwrap_or(rest);
            match rest.strip_prefix("Config") {
                Some(after) => after
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_ascii_alphanumeric()),
                None => false,
            }
        })
    }

    fn readable(text: &str) -> bool {
        (text.contains("-----BEGIN") && text.contains("PRIVATE KEY"))
            || text.starts_with("-----BEGIN")
            || text.starts_with("PuTTY-User-Key-File-")
            || (text.contains("\"auths\"")
                && [
                    "\"auth\"",
                    "\"password\"",
                    "\"identitytoken\"",
                    "\"registrytoken\"",
                ]
                .iter()
                .any(|f| text.contains(f)))
            || (text.contains("apiVersion") && text.contains("users") && kind_config(text))
    }

    fn pair(text: &str) -> bool {
        let Some(colon) = text.find(':') else {
            return false;
        };
        let (user, password) = (&text[..colon], &text[colon + 1..]);
        !user.is_empty()
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@+$".contains(c))
            && !password.is_empty()
            && password.chars().all(|c| ('!'..='~').contains(&c))
            && !password.starts_with("//")
    }

    fn authorization(text: &str) -> bool {
        let lower = text.to_ascii_lowercase();
        let text = if lower.starts_with("authorization:") {
            text["authorization:".len()..].trim_start()
        } else {
            text
        };
        let mut parts = text.splitn(2, char::is_whitespace);
        let (Some(scheme), Some(rest)) = (parts.next(), parts.next()) else {
            return false;
        };
        let token = rest.trim_start();
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            return false;
        }
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                let body = token.trim_end_matches('=');
                body.len() >= 16
                    && body
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._~+/".contains(c))
                    && body.chars().any(|c| c.is_ascii_digit())
                    && body.chars().any(|c| c.is_ascii_alphabetic())
            }
            "basic" => base64(token).is_some_and(|t| pair(&t)),
            _ => false,
        }
    }

    /// A string shaped like a credential.
    pub(super) fn shape(text: &str) -> bool {
        let t = text.trim();
        let url_safe = |p: &str| {
            p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        let jwt = {
            let parts: Vec<&str> = t.split('.').collect();
            parts.len() == 3
                && parts[0].starts_with("eyJ")
                && parts[1].starts_with("eyJ")
                && parts.iter().all(|p| url_safe(p))
        };
        let prefixed = [
            "dckr_pat_",
            "dckr_oat_",
            "glpat-",
            "github_pat_",
            "ghp_",
            "gho_",
            "ghu_",
            "ghs_",
            "ghr_",
        ]
        .iter()
        .any(|p| {
            t.strip_prefix(p)
                .is_some_and(|r| r.len() >= 16 && url_safe(r))
        });
        readable(t)
            || t.starts_with("b3BlbnNzaC1rZXktdjE")
            || authorization(t)
            || jwt
            || prefixed
            || base64(t).is_some_and(|d| {
                readable(d.trim())
                    || (d.contains("\"payload\"") && d.contains("\"datakey\""))
                    || pair(&d)
            })
    }

    /// Whether `value` (metadata) holds a credential: a key named or shaped like one, or a
    /// string value shaped like one, at any depth.
    pub(super) fn any(value: &Value) -> bool {
        match value {
            Value::Object(map) => map.iter().any(|(k, v)| name(k) || shape(k) || any(v)),
            Value::Array(items) => items.iter().any(any),
            Value::String(s) => shape(s),
            _ => false,
        }
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
        // Validation knows no host: a target is fine when it fits behind the shortest host
        // (`a:1`), whatever the catalogue's host then allows.
        .all(|t| ImageRef::for_registry("a:1", repository, t).is_ok())
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
        Some(m @ Value::Object(_)) => !oracle_credentials::any(m),
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
    prop_assert!(!oracle_credentials::any(&Value::Object(
        job.metadata.clone()
    )));
    match &valid.source {
        JobSource::Daemon(image) => {
            prop_assert_eq!(ImageRef::parse(&job.source), Ok(image.clone()));
            check_accepted_reference(&job.source, image)?;
        }
        JobSource::Registry { registry, image } => {
            prop_assert_eq!(job.source_registry.as_ref(), Some(registry));
            prop_assert_eq!(ImageRef::parse_in_registry(&job.source), Ok(image.clone()));
        }
    }
    let targets = valid
        .targets_at("a:1")
        .map_err(|e| TestCaseError::fail(format!("accepted job has bad targets: {e}")))?;
    // Behind a real host, the only new refusal is the length of `registry/repository`.
    for host in ["127.0.0.1:5001", "registry.example.com:10443", LONG_HOST] {
        let fits = host.len() + 1 + job.target.repository.len() <= 255;
        match valid.targets_at(host) {
            Ok(_) => prop_assert!(fits, "{} accepted behind {host}", job.target.repository),
            Err(JobError::Reference {
                field,
                source: ReferenceError::NameTooLong { .. },
            }) => {
                prop_assert!(!fits, "{} refused behind {host}", job.target.repository);
                prop_assert_eq!(field, "target.repository");
            }
            Err(e) => return Err(TestCaseError::fail(format!("behind {host}: {e}"))),
        }
    }
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

/// A registry host near the longest a catalogue would hold.
const LONG_HOST: &str = "registry-with-a-long-name.build-cluster.internal.example.com:10443";

/// Words the serde messages and our own messages may print: a string value equal to one of
/// them is not a leak.
const VOCABULARY: &str = "version job_id source target options metadata registry repository \
    tags remove_local_tag timeout_s invalid type expected struct PushJob JobTarget JobOptions \
    a sequence a boolean a string unknown field missing field one of floating point integer \
    recursion limit exceeded trailing characters EOF while parsing a value a list an object \
    map characters withheld appears twice in the same JSON object holds what looks like \
    looks like a credential; jobs must not carry credentials a PEM block a private key \
    a Docker config with credentials a kubeconfig an HTTP Authorization value \
    a base64 user:password pair a JSON Web Token an access token <withheld>";

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
    let scrubbed = matches!(
        e,
        JobError::Shape { .. }
            | JobError::NotJson { .. }
            | JobError::DuplicateKey { .. }
            | JobError::CredentialField { .. }
            | JobError::CredentialValue { .. }
    );
    if let (true, Some(value)) = (scrubbed, parsed) {
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
            if let Encoding::DuplicateKey(n, _) = &encoding {
                check_duplicate(&body, &value, *n, &result)?;
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

/// A message with a repeated key is refused as such, at the path the oracle computes, unless
/// it is too large or not JSON at all (checked first).
fn check_duplicate(
    body: &[u8],
    value: &Value,
    n: usize,
    result: &Result<ValidJob, JobError>,
) -> Result<(), TestCaseError> {
    let objects = count_objects(value);
    if objects == 0 {
        return Ok(());
    }
    let expected = if body.len() > MAX_JOB_BYTES {
        "TooLarge"
    } else if serde_json::from_slice::<Value>(body).is_err() {
        "NotJson"
    } else {
        "DuplicateKey"
    };
    match (expected, result) {
        ("TooLarge", Err(JobError::TooLarge { .. }))
        | ("NotJson", Err(JobError::NotJson { .. })) => Ok(()),
        ("DuplicateKey", Err(JobError::DuplicateKey { path })) => {
            let want = duplicate_path(value, n % objects);
            prop_assert_eq!(Some(path.clone()), want);
            Ok(())
        }
        (want, got) => Err(TestCaseError::fail(format!(
            "a repeated key: wanted {want}, got {got:?}"
        ))),
    }
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
