//! Hostile input over the real broker: more than a thousand malformed or malicious messages,
//! generated deterministically from a seed, are published to a worker running in this process.
//! Each must end as exactly one `failed` event with the code this file predicts, and as one copy
//! in the dead-letter queue carrying `x-pushfleet-error-code`; the worker must survive it all
//! and then push a good job.
//!
//! Every message is built so that its code is known in advance: `invalid_message` or
//! `invalid_reference` for what the parser refuses (checked against `PushJob::from_message` as
//! the messages are built), `unknown_registry` or `namespace_not_allowed` for well-formed jobs
//! that name a registry or namespace outside the worker's policy.
//!
//! Two categories aim at the broker's frame size (a content header, unlike a body, cannot be
//! split over frames): "amplifying strings", messages within the 64 KiB limit whose error
//! text is far longer (Rust's `{:?}` turns a 3-byte U+200B into the 8 bytes `\u{200b}`; a
//! tag is quoted twice), and "oversized headers", messages whose own headers nearly fill a
//! frame. The dead-letter copy of each must still be publishable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use futures_util::{StreamExt, stream};
use lapin::BasicProperties;
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable};
use pushfleet_shared::event::JobState;
use pushfleet_shared::job::{MAX_JOB_BYTES, PushJob, peek_job_id};
use pushfleet_shared::topology::Topology;
use pushfleet_tests::fleet::{
    Broker, TestWorker, base_registries, make_image, terminal, worker_config,
};
use pushfleet_tests::{StackEnv, docker, unique};
use pushfleet_worker::broker::connect;
use serde_json::{Map, Value, json};

/// The seed of every generated message: the same run every time.
const SEED: u64 = 0x5eed_0722_badc_0ffe;
/// How long the worker may take over all the hostile messages.
const ALL_FAILED_WITHIN: Duration = Duration::from_secs(60);
/// How long any other single step may take (publishing everything, one read of the
/// dead-letter queue, making an image, the good job, stopping the worker).
const STEP_WITHIN: Duration = Duration::from_secs(60);
/// How many publishes are in flight at once (each waits for its broker confirm).
const PUBLISH_CONCURRENCY: usize = 32;

/// The code a message must fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Code {
    InvalidMessage,
    InvalidReference,
    UnknownRegistry,
    NamespaceNotAllowed,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::InvalidMessage => "invalid_message",
            Code::InvalidReference => "invalid_reference",
            Code::UnknownRegistry => "unknown_registry",
            Code::NamespaceNotAllowed => "namespace_not_allowed",
        }
    }

    /// Whether the job parser itself refuses the message (the other codes come from policy).
    fn refused_by_parser(self) -> bool {
        matches!(self, Code::InvalidMessage | Code::InvalidReference)
    }
}

/// A message as the dead-letter queue gives it back: body and content type.
type SentKey = (Vec<u8>, Option<String>);

/// One hostile message.
#[derive(Debug)]
struct Hostile {
    category: &'static str,
    body: Vec<u8>,
    content_type: Option<String>,
    /// The size of an `x-hostile-padding` header sent with the message (0: none).
    padding_header: usize,
    code: Code,
}

/// SplitMix64: a tiny deterministic generator, enough to vary the messages.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// `text` with `c` inserted at a random character position.
    fn insert(&mut self, text: &str, c: &str) -> String {
        let positions: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let at = *self.pick(&positions);
        format!("{}{c}{}", &text[..at], &text[at..])
    }
}

/// ASCII characters and their look-alikes (Cyrillic, fullwidth, punctuation doubles).
const LOOKALIKES: &[(char, char)] = &[
    ('a', '\u{430}'),
    ('e', '\u{435}'),
    ('o', '\u{43e}'),
    ('p', '\u{440}'),
    ('c', '\u{441}'),
    ('y', '\u{443}'),
    ('x', '\u{445}'),
    ('i', '\u{456}'),
    ('l', '\u{217c}'),
    ('m', '\u{ff4d}'),
    ('0', '\u{41e}'),
    ('1', '\u{661}'),
    (':', '\u{ff1a}'),
    (':', '\u{a789}'),
    ('/', '\u{ff0f}'),
    ('/', '\u{2215}'),
    ('.', '\u{2024}'),
    ('-', '\u{2010}'),
];

/// Invisible and direction-changing characters.
const INVISIBLES: &[&str] = &[
    "\u{200b}", "\u{200c}", "\u{200d}", "\u{2060}", "\u{feff}", "\u{202e}", "\u{202d}", "\u{2066}",
    "\u{ad}", "\u{34f}",
];

/// Control characters, C0, DEL, C1 and line separators, and a terminal escape sequence.
const CONTROLS: &[&str] = &[
    "\u{0}",
    "\u{1}",
    "\u{7}",
    "\u{8}",
    "\t",
    "\n",
    "\u{b}",
    "\u{c}",
    "\r",
    "\u{1b}",
    "\u{1f}",
    "\u{7f}",
    "\u{80}",
    "\u{85}",
    "\u{9b}",
    "\u{9f}",
    "\u{2028}",
    "\u{2029}",
    "\u{1b}[2J",
];

/// Builds the messages, one category after the other.
#[derive(Debug)]
struct Generator {
    rng: Rng,
    next: usize,
    out: Vec<Hostile>,
}

impl Generator {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng(seed),
            next: 0,
            out: Vec::new(),
        }
    }

    fn id(&mut self) -> String {
        self.next += 1;
        format!("hostile-{:04}", self.next)
    }

    /// A valid job on the basic registry, with a fresh id.
    fn job(&mut self) -> Value {
        let id = self.id();
        let n = self.next;
        json!({
            "version": 1,
            "job_id": id,
            "source": "myapp:0722",
            "target": { "registry": "basic", "repository": "production/myapp", "tags": ["0722"] },
            "options": { "timeout_s": 60 },
            "metadata": { "hostile": n }
        })
    }

    /// A valid job with one field replaced (`path` like `["target", "tags"]`).
    fn job_with(&mut self, path: &[&str], value: Value) -> Value {
        let mut job = self.job();
        let (last, parents) = path.split_last().expect("a path");
        let mut cur = &mut job;
        for key in parents {
            cur = &mut cur[*key];
        }
        cur[*last] = value;
        job
    }

    fn push(
        &mut self,
        category: &'static str,
        body: Vec<u8>,
        content_type: Option<&str>,
        code: Code,
    ) {
        self.out.push(Hostile {
            category,
            body,
            content_type: content_type.map(str::to_owned),
            padding_header: 0,
            code,
        });
    }

    fn push_json(&mut self, category: &'static str, value: &Value, code: Code) {
        let body = serde_json::to_vec(value).expect("serialisable");
        self.push(category, body, Some("application/json"), code);
    }

    fn push_text(&mut self, category: &'static str, text: &str, code: Code) {
        self.push(
            category,
            text.as_bytes().to_vec(),
            Some("application/json"),
            code,
        );
    }

    /// A job with `value` as one of source, repository or tag (a reference part), or the
    /// job id or the registry, with the code each of those fields gives.
    fn push_field(&mut self, category: &'static str, field: usize, value: &str) {
        let (path, code): (&[&str], Code) = match field % 5 {
            0 => (&["source"], Code::InvalidReference),
            1 => (&["target", "repository"], Code::InvalidReference),
            2 => (&["target", "tags"], Code::InvalidReference),
            3 => (&["job_id"], Code::InvalidMessage),
            _ => (&["target", "registry"], Code::UnknownRegistry),
        };
        let v = if path == ["target", "tags"] {
            json!([value])
        } else {
            json!(value)
        };
        let job = self.job_with(path, v);
        self.push_json(category, &job, code);
    }

    fn random_bytes(&mut self, count: usize) {
        for i in 0..count {
            let len = self.rng.below(2048);
            let mut body = self.rng.bytes(len);
            if i % 4 == 0 {
                body.insert(0, b'{');
            }
            let ct = if i % 2 == 0 {
                None
            } else {
                Some("application/json")
            };
            self.push("random bytes", body, ct, Code::InvalidMessage);
        }
    }

    fn truncated_json(&mut self, count: usize) {
        for _ in 0..count {
            let job = self.job();
            let mut body = serde_json::to_vec(&job).expect("json");
            let cut = self.rng.below(body.len());
            body.truncate(cut);
            self.push(
                "truncated JSON",
                body,
                Some("application/json"),
                Code::InvalidMessage,
            );
        }
    }

    fn oversize(&mut self, count: usize) {
        for i in 0..count {
            let size = match i % 4 {
                0 => MAX_JOB_BYTES + 1,
                1 => self.rng.between(MAX_JOB_BYTES + 1, 2 * MAX_JOB_BYTES),
                2 => self.rng.between(2 * MAX_JOB_BYTES, 256 * 1024),
                _ => 1024 * 1024,
            };
            let body = match i % 3 {
                // A good job padded with whitespace: valid JSON, only too large.
                0 => {
                    let job = serde_json::to_vec(&self.job()).expect("json");
                    let mut body = vec![b' '; size - job.len()];
                    body.extend_from_slice(&job);
                    body
                }
                // A good job whose metadata note makes it too large.
                1 => {
                    let mut job = self.job();
                    job["metadata"]["note"] = json!("n".repeat(size));
                    serde_json::to_vec(&job).expect("json")
                }
                _ => self.rng.bytes(size),
            };
            self.push(
                "over 64 KiB",
                body,
                Some("application/json"),
                Code::InvalidMessage,
            );
        }
    }

    fn huge_strings(&mut self, count: usize) {
        for i in 0..count {
            let n = self.rng.between(10_000, 60_000);
            let (job, code) = match i % 7 {
                0 => (
                    self.job_with(&["job_id"], json!("a".repeat(n))),
                    Code::InvalidMessage,
                ),
                1 => (
                    self.job_with(&["source"], json!("a".repeat(n))),
                    Code::InvalidReference,
                ),
                2 => (
                    self.job_with(&["source"], json!(format!("myapp:{}", "1".repeat(n)))),
                    Code::InvalidReference,
                ),
                3 => (
                    self.job_with(&["target", "tags"], json!(["t".repeat(n)])),
                    Code::InvalidReference,
                ),
                4 => (
                    self.job_with(
                        &["target", "repository"],
                        json!(format!("production/{}", "r".repeat(n))),
                    ),
                    Code::InvalidReference,
                ),
                5 => (
                    self.job_with(&["target", "registry"], json!("b".repeat(n))),
                    Code::UnknownRegistry,
                ),
                _ => {
                    // Echoed metadata near the limit, on a job refused for its source.
                    let mut job = self.job_with(&["source"], json!("MyApp:1"));
                    job["metadata"]["note"] = json!("m".repeat(n));
                    (job, Code::InvalidReference)
                }
            };
            self.push_json("huge strings", &job, code);
        }
        // Many tags, many metadata keys.
        let tags: Vec<String> = (0..17).map(|t| format!("t{t}")).collect();
        let job = self.job_with(&["target", "tags"], json!(tags));
        self.push_json("huge strings", &job, Code::InvalidMessage);
        let keys: Map<String, Value> = (0..4000).map(|k| (format!("k{k}"), json!(k))).collect();
        let mut job = self.job_with(&["source"], json!("../myapp"));
        job["metadata"] = Value::Object(keys);
        self.push_json("huge strings", &job, Code::InvalidReference);
    }

    /// Inputs whose error text is larger than the message itself: characters that Rust's
    /// `{:?}` escapes to 8 bytes (`\u{200b}`) from 3, or a tag quoted twice.
    fn amplifying(&mut self) {
        let zwsp = "\u{200b}".repeat(21_000);
        let cases = [
            (
                &["source"][..],
                format!("{zwsp}\u{0}"),
                Code::InvalidReference,
            ),
            (&["source"][..], format!("{zwsp} "), Code::InvalidReference),
            (&["source"][..], format!("x:{zwsp}"), Code::InvalidReference),
            (
                &["target", "registry"][..],
                zwsp.clone(),
                Code::UnknownRegistry,
            ),
            (
                &["target", "repository"][..],
                format!("{zwsp}\u{1}"),
                Code::InvalidReference,
            ),
        ];
        for (path, value, code) in cases {
            let job = self.job_with(path, json!(value));
            self.push_json("amplifying strings", &job, code);
        }
        // A message of exactly the size limit whose over-long tag the error quotes twice.
        let job = self.job_with(&["source"], json!("myapp:"));
        let short = serde_json::to_vec(&job).expect("json").len();
        let job = self.job_with(
            &["source"],
            json!(format!("myapp:{}", "1".repeat(MAX_JOB_BYTES - short))),
        );
        self.push_json("amplifying strings", &job, Code::InvalidReference);
    }

    /// Messages whose own headers come close to the negotiated frame size (`frame_max`, 128 KiB
    /// on a default RabbitMQ): a content header cannot be split over frames, so the worker's
    /// dead-letter copy, which keeps them and adds its own, must still fit. The largest leaves
    /// this test's publish 11 bytes of room.
    fn oversized_headers(&mut self, frame_max: usize) {
        // A content header frame carries 53 bytes besides the padding value here, plus the
        // frame's own 8.
        let largest = frame_max.min(128 * 1024) - 72;
        for size in [largest / 2, largest - 1024, largest - 256, largest] {
            let body = format!("not a job, {size} bytes of headers").into_bytes();
            self.push(
                "oversized headers",
                body,
                Some("text/plain"),
                Code::InvalidMessage,
            );
            if let Some(last) = self.out.last_mut() {
                last.padding_header = size;
            }
        }
    }

    fn deep_nesting(&mut self, count: usize) {
        self.push_text("deep nesting", &"[".repeat(10_000), Code::InvalidMessage);
        self.push_text(
            "deep nesting",
            &"{\"a\":".repeat(10_000),
            Code::InvalidMessage,
        );
        for i in 2..count {
            let depth = self.rng.between(128, 20_000);
            match i % 5 {
                0 => {
                    let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                    self.push_text("deep nesting", &text, Code::InvalidMessage);
                }
                1 => {
                    let depth = depth.min(6_000);
                    let text = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
                    self.push_text("deep nesting", &text, Code::InvalidMessage);
                }
                2 => {
                    // Metadata nested past serde_json's limit, in an otherwise good job.
                    let depth = depth.min(5_000);
                    let job = serde_json::to_string(&self.job()).expect("json");
                    let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
                    let text = job.replacen(
                        "{\"hostile\"",
                        &format!("{{\"deep\":{nested},\"hostile\""),
                        1,
                    );
                    self.push_text("deep nesting", &text, Code::InvalidMessage);
                }
                3 => {
                    // Nested within the limit, with a credential key at the bottom.
                    let mut inner = json!({ "docker_password": "hunter2-hunter2" });
                    for _ in 0..self.rng.between(50, 120) {
                        inner = json!({ "x": [inner] });
                    }
                    let job = self.job_with(&["metadata"], json!({ "deep": inner }));
                    self.push_json("deep nesting", &job, Code::InvalidMessage);
                }
                _ => {
                    // A nested value where a string belongs.
                    let mut inner = json!("myapp:1");
                    for _ in 0..self.rng.between(2, 100) {
                        inner = json!([inner]);
                    }
                    let field = *self.rng.pick(&["source", "job_id", "target"]);
                    let job = self.job_with(&[field], inner);
                    self.push_json("deep nesting", &job, Code::InvalidMessage);
                }
            }
        }
    }

    fn wrong_content_type(&mut self, count: usize) {
        const TYPES: &[&str] = &[
            "text/plain",
            "text/plain; charset=utf-8",
            "application/xml",
            "application/xml; x=application/json",
            "application/octet-stream",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "application/json-seq",
            "application/json+evil",
            "text/json",
            "json",
            "",
            "application/javascript",
            "multipart/form-data; boundary=x",
            "application/\u{0}json",
            "applicat\u{131}on/json",
        ];
        for i in 0..count {
            let job = self.job();
            let body = serde_json::to_vec(&job).expect("json");
            let ct = TYPES[i % TYPES.len()];
            self.push("wrong content type", body, Some(ct), Code::InvalidMessage);
        }
    }

    fn unicode_lookalikes(&mut self, count: usize) {
        const BASES: [&str; 5] = [
            "myapp:0722",
            "production/myapp",
            "0722",
            "hostile-id-0722",
            "basic",
        ];
        for i in 0..count {
            let field = i % 5;
            let base = BASES[field];
            let value = if i % 3 == 0 {
                let invisible = *self.rng.pick(INVISIBLES);
                self.rng.insert(base, invisible)
            } else {
                let candidates: Vec<(char, char)> = LOOKALIKES
                    .iter()
                    .copied()
                    .filter(|(ascii, _)| base.contains(*ascii))
                    .collect();
                let (ascii, lookalike) = *self.rng.pick(&candidates);
                base.replacen(ascii, &lookalike.to_string(), 1)
            };
            self.push_field("unicode look-alikes", field, &value);
        }
    }

    fn control_characters(&mut self, count: usize) {
        const BASES: [&str; 5] = [
            "myapp:0722",
            "production/myapp",
            "0722",
            "hostile-id-0722",
            "basic",
        ];
        for i in 0..count {
            let control = *self.rng.pick(CONTROLS);
            if i % 6 == 5 {
                // A raw control byte inside a JSON string: not JSON at all. (JSON allows DEL,
                // C1 and U+2028 raw, so those become an unescaped NUL.)
                let raw = if control.chars().all(|c| (c as u32) < 0x20) {
                    control
                } else {
                    "\u{0}"
                };
                let job = serde_json::to_string(&self.job()).expect("json");
                let text = job.replacen("myapp:0722", &format!("my{raw}app:0722"), 1);
                self.push_text("control characters", &text, Code::InvalidMessage);
                continue;
            }
            let field = i % 5;
            let value = self.rng.insert(BASES[field], control);
            self.push_field("control characters", field, &value);
        }
    }

    fn path_traversal(&mut self, count: usize) {
        const REPOSITORIES: &[&str] = &[
            "../../etc/passwd",
            "production/../x",
            "production/../../etc/passwd",
            "%2e%2e/x",
            "production/%2e%2e/x",
            "production/..%2fx",
            "production/%252e%252e/x",
            "production/./x",
            "./production/x",
            "production//x",
            "/production/x",
            "production/x/",
            "..",
            ".",
            "production/..",
            "production\\..\\x",
            "production/x/../../y",
            "..;/x",
            "production/%2fx",
            "production/\u{2025}/x",
            "production/.../x",
            "production/~/x",
            "production/x?y=..",
            "production/x#..",
        ];
        const SOURCES: &[&str] = &[
            "../../etc/passwd:1",
            "/etc/passwd",
            "myapp/../x:1",
            "file:///etc/passwd",
            "../myapp",
            "localhost:5000/../myapp:1",
            "127.0.0.1:5001/production/../myapp:1",
            "..:1",
        ];
        const TAGS: &[&str] = &["..", "../x", "%2e%2e", "a/b", ".hidden", "-rf", "x/../y"];
        const REGISTRIES: &[&str] = &[
            "../basic",
            "basic/../token",
            "/basic",
            "..",
            "./basic",
            "basic%00",
        ];
        const NAMESPACES: &[&str] = &[
            "team-b/x",
            "productionx/app",
            "production-evil/app",
            "elsewhere/production/app",
            "library/app",
            "production",
            "team-a.evil/app",
        ];
        for i in 0..count {
            let (path, value, code): (&[&str], Value, Code) = match i % 5 {
                0 => (
                    &["target", "repository"],
                    json!(self.rng.pick(REPOSITORIES)),
                    Code::InvalidReference,
                ),
                1 => (
                    &["source"],
                    json!(self.rng.pick(SOURCES)),
                    Code::InvalidReference,
                ),
                2 => (
                    &["target", "tags"],
                    json!([self.rng.pick(TAGS)]),
                    Code::InvalidReference,
                ),
                3 => (
                    &["target", "registry"],
                    json!(self.rng.pick(REGISTRIES)),
                    Code::UnknownRegistry,
                ),
                _ => (
                    &["target", "repository"],
                    json!(self.rng.pick(NAMESPACES)),
                    Code::NamespaceNotAllowed,
                ),
            };
            let job = self.job_with(path, value);
            self.push_json("path traversal", &job, code);
        }
    }

    fn json_oddities(&mut self) {
        use Code::{InvalidMessage as M, InvalidReference as R};
        let cat = "JSON oddities";
        let job = serde_json::to_string(&self.job()).expect("json");
        let mut bom = "\u{feff}".as_bytes().to_vec();
        bom.extend_from_slice(job.as_bytes());
        self.push(cat, bom, Some("application/json"), M);
        let utf16: Vec<u8> = job.encode_utf16().flat_map(u16::to_le_bytes).collect();
        self.push(cat, utf16, Some("application/json"), M);
        let mut utf16be: Vec<u8> = vec![0xfe, 0xff];
        utf16be.extend(job.encode_utf16().flat_map(u16::to_be_bytes));
        self.push(cat, utf16be, None, M);
        for text in [
            String::new(),
            "null".into(),
            "[]".into(),
            "{}".into(),
            "\"job\"".into(),
            "0".into(),
            "true".into(),
            " ".into(),
            "\u{0}".into(),
        ] {
            self.push_text(cat, &text, M);
        }
        for trailing in ["x", "}", "]", ",", "{}", "\u{0}", "//", job.as_str()] {
            let job = serde_json::to_string(&self.job()).expect("json");
            self.push_text(cat, &format!("{job}{trailing}"), M);
        }
        // Numbers.
        let big = format!("1{}", "0".repeat(10_000));
        for version in [
            "1e999",
            "1e400",
            "-1",
            "0",
            "2",
            "1.0",
            "1e0",
            "\"1\"",
            "18446744073709551616",
            "4294967297",
            "null",
            "[1]",
            "{\"v\":1}",
            "NaN",
            "Infinity",
            "-Infinity",
            "0x1",
            "01",
            "+1",
            "1_0",
            big.as_str(),
        ] {
            let job = serde_json::to_string(&self.job()).expect("json");
            let text = job.replacen("\"version\":1", &format!("\"version\":{version}"), 1);
            self.push_text(cat, &text, M);
        }
        for timeout in [
            "0",
            "1701",
            "1e999",
            "99999999999999999999",
            "-5",
            "1.5",
            "\"900\"",
            "true",
            "[]",
            big.as_str(),
        ] {
            let job = serde_json::to_string(&self.job()).expect("json");
            let text = job.replacen("\"timeout_s\":60", &format!("\"timeout_s\":{timeout}"), 1);
            self.push_text(cat, &text, M);
        }
        for flag in ["\"true\"", "1", "null", "{}"] {
            let job = self.job_with(&["options", "remove_local_tag"], json!(null));
            let text = serde_json::to_string(&job).expect("json").replacen(
                "\"remove_local_tag\":null",
                &format!("\"remove_local_tag\":{flag}"),
                1,
            );
            self.push_text(cat, &text, M);
        }
        // Duplicate keys are refused whatever the values, even two good ones (a reader that
        // keeps the first and one that keeps the last would see different jobs).
        let target = r#"{"registry":"basic","repository":"production/myapp","tags":["1"]}"#;
        for (key, good, bad, code) in [
            ("version", "1", "2", M),
            ("source", "\"myapp:1\"", "\"MyApp:1\"", M),
            ("source", "\"myapp:1\"", "\"myapp:1\"", M),
            ("job_id", "\"ok-1\"", "\"bad id\"", M),
            ("target", target, "{\"registry\":\"basic\"}", M),
            ("target", "{\"registry\":\"nope\"}", target, M),
            ("options", "{}", "{\"timeout_s\":0}", M),
        ] {
            let mut job = self.job();
            job.as_object_mut().expect("object").remove(key);
            let rest = serde_json::to_string(&job).expect("json");
            let text = rest.replacen('{', &format!("{{\"{key}\":{good},\"{key}\":{bad},"), 1);
            self.push_text(cat, &text, code);
        }
        // Not JSON, but close.
        let job = serde_json::to_string(&self.job()).expect("json");
        self.push_text(cat, &format!("/* job */{job}"), M);
        self.push_text(cat, &job.replace('"', "'"), M);
        self.push_text(cat, &job.replacen(',', ",,", 1), M);
        self.push_text(cat, &job.replacen('}', ",}", 1), M);
        self.push_text(cat, &job.replacen("myapp:0722", "\\ud800myapp", 1), M);
        self.push_text(cat, &job.replacen("myapp:0722", "\\x41", 1), M);
        for bytes in [
            &[0xff_u8][..],
            &[0xc0, 0xaf],
            &[0xed, 0xa0, 0x80],
            &[0xf8, 0x88, 0x80, 0x80, 0x80],
        ] {
            let mut body = job.as_bytes().to_vec();
            let at = job.find("myapp:0722").expect("source") + 2;
            body.splice(at..at, bytes.iter().copied());
            self.push(cat, body, Some("application/json"), M);
        }
        // Escapes that decode to something refused.
        self.push_text(cat, &job.replacen("myapp:0722", "\\u004dyapp:0722", 1), R);
        let job = serde_json::to_string(&self.job()).expect("json");
        self.push_text(cat, &job.replacen("myapp:0722", "my\\u0000app", 1), R);
        // Shapes: positional arrays, unknown fields, credentials, tags.
        self.push_text(
            cat,
            "[1, \"hostile-array\", \"myapp:1\", [\"basic\", \"production/myapp\", [\"1\"]]]",
            M,
        );
        let arrays: [(&[&str], Value); 3] = [
            (&["target"], json!(["basic", "production/myapp", ["1"]])),
            (&["options"], json!([true, 60])),
            (&["options"], json!([])),
        ];
        for (path, value) in arrays {
            let job = self.job_with(path, value);
            self.push_json(cat, &job, M);
        }
        let shapes: [(&[&str], Value, Code); 16] = [
            (&["extra"], json!(1), M),
            (&["target", "host"], json!("evil.example.com"), M),
            (&["options", "remove_local_tags"], json!(true), M),
            (&["metadata", "password"], json!("hunter2"), M),
            (&["metadata", "docker-token"], json!("x"), M),
            (&["metadata", "nested"], json!([{ "auth_config": {} }]), M),
            (&["metadata", "Authorization"], json!("Basic eDp5"), M),
            (&["target", "tags"], json!([]), M),
            (&["target", "tags"], json!(["1", "1"]), M),
            (&["target", "tags"], json!("1"), M),
            (&["target", "tags"], json!([1]), M),
            (&["target", "tags"], json!(["1", ""]), R),
            (&["metadata"], json!(null), M),
            (&["metadata"], json!([1]), M),
            (&["options"], json!(null), M),
            (&["target", "registry"], json!(5), M),
        ];
        for (path, value, code) in shapes {
            let job = self.job_with(path, value);
            self.push_json(cat, &job, code);
        }
    }

    /// Well-formed jobs that policy refuses.
    fn policy(&mut self, count: usize) {
        const REGISTRIES: &[&str] = &[
            "harbor",
            "6",
            "BASIC",
            "basic ",
            "",
            "docker.io",
            "127.0.0.1:5001",
            "http://127.0.0.1:5001",
            "token-writer",
            "Basic",
        ];
        for i in 0..count {
            let job = if i % 2 == 0 {
                let registry = *self.rng.pick(REGISTRIES);
                (
                    self.job_with(&["target", "registry"], json!(registry)),
                    Code::UnknownRegistry,
                )
            } else {
                let repository = *self.rng.pick(&["team-b/x", "elsewhere/x", "productio/x"]);
                (
                    self.job_with(&["target", "repository"], json!(repository)),
                    Code::NamespaceNotAllowed,
                )
            };
            self.push_json("policy", &job.0, job.1);
        }
    }
}

/// Every hostile message, in publishing order (those that test the frame size last).
fn hostile_messages(frame_max: usize) -> Vec<Hostile> {
    let mut g = Generator::new(SEED);
    g.random_bytes(200);
    g.truncated_json(150);
    g.oversize(24);
    g.huge_strings(42);
    g.deep_nesting(50);
    g.wrong_content_type(64);
    g.unicode_lookalikes(130);
    g.control_characters(130);
    g.path_traversal(130);
    g.json_oddities();
    g.policy(40);
    g.amplifying();
    g.oversized_headers(frame_max);
    g.out
}

/// Checks each message's predicted code against the parser, so the table above is right, and
/// that no two messages carry the same readable job id.
fn check_predictions(messages: &[Hostile]) -> Result<()> {
    let mut ids = HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        if let Some(id) = peek_job_id(&m.body) {
            ensure!(ids.insert(id.clone()), "message {i}: job id {id} twice");
        }
        let parsed = PushJob::from_message(&m.body, m.content_type.as_deref());
        match (&parsed, m.code.refused_by_parser()) {
            (Err(e), true) => ensure!(
                e.code().as_str() == m.code.as_str(),
                "message {i} ({}): predicted {}, the parser says {}: {e}",
                m.category,
                m.code.as_str(),
                e.code()
            ),
            (Ok(_), false) => {}
            (Err(e), false) => bail!(
                "message {i} ({}) should be a valid job that policy refuses, but: {e}",
                m.category
            ),
            (Ok(_), true) => bail!(
                "message {i} ({}) was predicted {} but parses as a job: {}",
                m.category,
                m.code.as_str(),
                String::from_utf8_lossy(&m.body[..m.body.len().min(300)])
            ),
        }
    }
    Ok(())
}

fn header_string(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// `future`, or an error naming `what` if it takes longer than [`STEP_WITHIN`].
async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP_WITHIN, future)
        .await
        .map_err(|_| anyhow::anyhow!("{what} took more than {STEP_WITHIN:?}"))
}

/// Waits until `n` `failed` events have arrived (in all), within `within`; false if they did
/// not.
async fn wait_for_failed(broker: &mut Broker, n: usize, within: Duration) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + within;
    let failed = |e: &pushfleet_shared::Event| e.state == JobState::Failed;
    let mut counted: HashSet<uuid::Uuid> = broker
        .seen()
        .iter()
        .filter(|e| failed(e))
        .map(|e| e.event_id)
        .collect();
    while counted.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // Stay under `wait_until`'s own limit, whose error would print every event seen.
        let next = tokio::time::timeout(
            left.min(Duration::from_secs(60)),
            broker.wait_until(|e| failed(e) && !counted.contains(&e.event_id)),
        )
        .await;
        if let Ok(event) = next {
            counted.insert(event?.event_id);
        }
    }
    Ok(true)
}

/// The messages that have no failed event yet: those with a readable job id, by id; the
/// others only as a count per code.
fn missing(messages: &[Hostile], broker: &Broker) -> String {
    let events = broker.seen();
    let seen: HashSet<&str> = events
        .iter()
        .filter(|e| e.state == JobState::Failed)
        .filter_map(|e| e.job_id.as_deref())
        .collect();
    let mut lines = Vec::new();
    let mut anonymous: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for m in messages {
        match peek_job_id(&m.body) {
            Some(id) if !seen.contains(id.as_str()) => lines.push(format!(
                "{id} ({}, expected {}, {} bytes): {}",
                m.category,
                m.code.as_str(),
                m.body.len(),
                String::from_utf8_lossy(&m.body[..m.body.len().min(160)])
            )),
            Some(_) => {}
            None => anonymous.entry(m.code.as_str()).or_default().0 += 1,
        }
    }
    for e in broker.seen() {
        if e.state == JobState::Failed && e.job_id.is_none() {
            let code = e.error.as_ref().map_or("none", |x| x.code.as_str());
            if let Some(entry) = anonymous.get_mut(code) {
                entry.1 += 1;
            }
        }
    }
    format!(
        "without an event: {lines:#?}; messages without a readable job id, (sent, failed \
         events) per code: {anonymous:?}"
    )
}

#[tokio::test]
async fn a_thousand_hostile_messages_are_each_dead_lettered_with_a_code() -> Result<()> {
    let started = Instant::now();
    let env = StackEnv::load()?;
    let prefix = unique("hostile");
    let config = worker_config(&env, &prefix, &base_registries(&env)?)?;
    let mut broker = Broker::connect(&env, &Topology::new(&prefix)).await?;
    let frame_max = broker.conn().configuration().frame_max() as usize;
    let messages = hostile_messages(frame_max);
    check_predictions(&messages)?;
    let total = messages.len();
    ensure!(total >= 1000, "only {total} hostile messages");
    let mut per_category: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_code: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &messages {
        *per_category.entry(m.category).or_default() += 1;
        *per_code.entry(m.code.as_str()).or_default() += 1;
    }

    let worker = TestWorker::start(config).await?;

    // Publish, many at a time, each confirmed by the broker.
    let publish_started = Instant::now();
    let publishing = stream::iter(&messages)
        .map(|m| {
            let mut properties = BasicProperties::default();
            if let Some(ct) = &m.content_type {
                properties = properties.with_content_type(ct.as_str().into());
            }
            if m.padding_header > 0 {
                let mut headers = FieldTable::default();
                headers.insert(
                    "x-hostile-padding".into(),
                    AMQPValue::LongString("p".repeat(m.padding_header).into()),
                );
                properties = properties.with_headers(headers);
            }
            broker.publish_raw(&m.body, properties)
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .collect::<Vec<Result<()>>>();
    for result in bounded("publishing", publishing).await? {
        result?;
    }
    let publish_time = publish_started.elapsed();

    // Exactly one failed event per message. From here on, every problem is collected, so one
    // run reports them all.
    let mut problems: Vec<String> = Vec::new();
    if !wait_for_failed(&mut broker, total, ALL_FAILED_WITHIN).await? {
        let failed = broker
            .seen()
            .iter()
            .filter(|e| e.state == JobState::Failed)
            .count();
        problems.push(format!(
            "only {failed} of {total} failed events within {ALL_FAILED_WITHIN:?}; {}",
            missing(&messages, &broker)
        ));
    }
    let settle_time = publish_started.elapsed();

    // The dead-letter queue holds one copy of each, with its code in the headers.
    let mut expected: HashMap<SentKey, Vec<(Code, &str)>> = HashMap::new();
    for m in &messages {
        expected
            .entry((m.body.clone(), m.content_type.clone()))
            .or_default()
            .push((m.code, m.category));
    }
    // Own connections from here on: a broken one must not hide the later checks.
    let dead_conn = connect(
        &env.get("PUSHFLEET_AMQP_URL")?,
        "pushfleet-tests dead letters",
    )
    .await?;
    let channel = dead_conn.create_channel().await?;
    let dead_letter_queue = Topology::new(&prefix).dead_letter_queue();
    let mut dead = 0;
    let mut longest_header = 0;
    let get = || {
        channel.basic_get(
            dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
    };
    loop {
        let message = match bounded("reading the dead-letter queue", get()).await {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                problems.push(format!("reading the dead-letter queue: {e}"));
                break;
            }
            Err(e) => {
                problems.push(e.to_string());
                break;
            }
        };
        let delivery = message.delivery;
        dead += 1;
        let preview = String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(120)]);
        let Some(code) = header_string(&delivery, "x-pushfleet-error-code") else {
            let death = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-death").map(|d| format!("{d:?}")))
                .unwrap_or_default();
            problems.push(format!(
                "a dead letter without x-pushfleet-error-code ({} bytes, x-death {}): {preview}",
                delivery.data.len(),
                &death[..death.len().min(400)]
            ));
            continue;
        };
        let text = header_string(&delivery, "x-pushfleet-error-message").unwrap_or_default();
        longest_header = longest_header.max(text.len());
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_owned());
        let key = (delivery.data.clone(), content_type);
        let Some(codes) = expected.get_mut(&key) else {
            problems.push(format!(
                "a dead letter sent once, kept twice ({code}): {preview}"
            ));
            continue;
        };
        match codes.iter().position(|(c, _)| c.as_str() == code) {
            Some(at) => {
                codes.swap_remove(at);
                if codes.is_empty() {
                    expected.remove(&key);
                }
            }
            None => problems.push(format!(
                "dead-lettered with {code}, expected {codes:?}: {preview}"
            )),
        }
    }
    if dead != total {
        problems.push(format!("{dead} dead letters for {total} hostile messages"));
    }
    if !expected.is_empty() {
        let left: Vec<String> = expected
            .iter()
            .take(20)
            .map(|((body, _), codes)| {
                format!(
                    "{codes:?}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(120)])
                )
            })
            .collect();
        problems.push(format!(
            "{} messages never dead-lettered with their code, e.g. {left:#?}",
            expected.len()
        ));
    }

    // The events: one failed event per message, each with the predicted code; where the job
    // id is readable, the event carries it.
    let mut by_id: HashMap<String, Code> = HashMap::new();
    let mut anonymous: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &messages {
        match peek_job_id(&m.body) {
            Some(id) => {
                ensure!(
                    by_id.insert(id.clone(), m.code).is_none(),
                    "job id {id} twice"
                );
            }
            None => *anonymous.entry(m.code.as_str()).or_default() += 1,
        }
    }
    let mut anonymous_seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ids_seen = HashSet::new();
    let mut largest_event = 0;
    for event in broker.seen() {
        if !matches!(event.state, JobState::Failed | JobState::Accepted) {
            problems.push(format!(
                "unexpected {:?} event for {:?}",
                event.state, event.job_id
            ));
        }
        largest_event = largest_event.max(serde_json::to_vec(&event)?.len());
        if event.state != JobState::Failed {
            continue;
        }
        let Some(error) = event.error.as_ref() else {
            problems.push(format!("failed event without error: {:?}", event.job_id));
            continue;
        };
        if error.retryable || error.hint.is_empty() {
            problems.push(format!("{:?}: retryable or without hint", event.job_id));
        }
        let code = error.code.as_str();
        match &event.job_id {
            Some(id) => match by_id.get(id) {
                Some(want) if want.as_str() == code => {
                    if !ids_seen.insert(id.clone()) {
                        problems.push(format!("two failed events for {id}"));
                    }
                }
                want => problems.push(format!("{id}: failed with {code}, expected {want:?}")),
            },
            None => *anonymous_seen.entry(code).or_default() += 1,
        }
    }
    if anonymous_seen != anonymous {
        problems.push(format!(
            "events without a job id: {anonymous_seen:?}, expected {anonymous:?}"
        ));
    }

    // The worker survived: a good job goes through, and the worker stops cleanly.
    let mut good_broker = Broker::connect(&env, &Topology::new(&prefix)).await?;
    let good_job = async {
        let name = unique("hostile-app");
        bounded(
            "making the good job's image",
            make_image(&docker(&env)?, &[&format!("{name}:1")]),
        )
        .await??;
        let good_id = unique("hostile-good");
        good_broker
            .publish_job(&json!({
                "version": 1,
                "job_id": good_id,
                "source": format!("{name}:1"),
                "target": {
                    "registry": "basic",
                    "repository": format!("production/{name}"),
                    "tags": ["1"]
                }
            }))
            .await?;
        // Under `wait_for`'s own limit, whose error would print every event seen.
        let events = bounded("the good job", good_broker.wait_for(&good_id)).await??;
        let done = terminal(&events)?;
        ensure!(done.state == JobState::Succeeded, "{done:#?}");
        Ok(())
    };
    if let Err(e) = good_job.await {
        problems.push(format!("the good job afterwards: {e}"));
    }
    let failed_total = broker
        .seen()
        .iter()
        .filter(|e| e.state == JobState::Failed)
        .count();
    if failed_total != total {
        problems.push(format!(
            "in the end, {failed_total} failed events for {total} messages"
        ));
    }
    match tokio::time::timeout(STEP_WITHIN, worker.stop()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("the worker did not stop cleanly: {e}")),
        Err(_) => problems.push(format!("the worker did not stop within {STEP_WITHIN:?}")),
    }

    println!(
        "hostile: {total} messages published in {publish_time:.1?}, settled (or given up) \
         after {settle_time:.1?}, {:.1?} in all",
        started.elapsed()
    );
    println!("hostile: per category {per_category:?}");
    println!("hostile: per code {per_code:?}");
    println!(
        "hostile: {dead} dead letters; largest event {largest_event} bytes, longest \
         x-pushfleet-error-message {longest_header} bytes"
    );
    ensure!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    Ok(())
}
