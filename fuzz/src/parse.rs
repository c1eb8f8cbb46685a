//! The parser engine with every preset, through the same decode → parse → map path the
//! agent runs (`pipeline::process::SourceProcessor`, also behind `balp-agent test`).
//!
//! Input: byte 0 picks the decoder, byte 1 the parsers (all presets in their documented
//! order, or one preset alone), byte 2 the mode and `trust_forwarded_for`; the rest is lines
//! (split at LF) of one stream, processed in order, so `fold` / `stash` state carries from
//! line to line as it does in a file.
//!
//! Asserts: every event made is JSON that passes the BALP/R4 conformance checker
//! (`balp::conformance::check`), carries its id in `id` and in the id extension, and no two
//! events of one input share an id.

use balp_agent::balp::conformance;
use balp_agent::config::Config;
use balp_agent::decode::multiline::{DEFAULT_MAX_LINES, Joiner, Multiline};
use balp_agent::parse::presets;
use balp_agent::pipeline::SourceProcessor;
use balp_agent::source::{LogLine, StreamId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

/// Tokens for the mutator.
pub const DICT: &[&str] = &[
    "Accepted password for ",
    "Failed password for invalid user ",
    " from 10.0.0.1 port 22 ssh2",
    "sudo: alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/ls",
    "pam_unix(sshd:session): session opened for user ",
    "AUDIT: SESSION,1,1,READ,SELECT,TABLE,public.patient,\"select * from patient\",<not logged>",
    "GET /fhir/Patient/123 HTTP/1.1\" 200 ",
    "\"GET /fhir/Patient?identifier=x HTTP/1.1\"",
    "\"resourceType\":\"Patient\"",
    "20261125 15:22:44,db1,alice,10.0.0.5,7,12,QUERY,hospital,'SELECT * FROM patient',0",
    "su: (to root) alice on pts/0",
    "login[1]: ROOT LOGIN  on '/dev/tty1'",
    "{\"user\":\"alice\",\"patient\":\"123\",\"action\":\"read\"}",
];

/// Each decoder with the `multiline` mode check requires for it.
const DECODERS: &[(&str, Multiline)] = &[
    ("syslog", Multiline::None),
    ("raw", Multiline::None),
    ("json", Multiline::None),
    ("postgres", Multiline::Indented),
    ("postgres_csv", Multiline::Csv),
    ("postgres_json", Multiline::None),
];

fn config(
    (decode, multiline): (&str, Multiline),
    parsers: &[&str],
    comprehensive: bool,
    trust_xff: bool,
) -> Config {
    let mode = if comprehensive {
        "comprehensive"
    } else {
        "minimal"
    };
    let list = parsers
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"
[agent]
state_dir = "/nonexistent/balp-fuzz"
hostname = "fuzz.example.org"
mode = "{mode}"
[agent.observer]
site = "Fuzz Hospital"
[[sources]]
name = "fuzz"
type = "file"
include = ["/nonexistent/fuzz.log"]
decode = "{decode}"
multiline = "{}"
parsers = [{list}]
timezone = "Europe/Berlin"
trust_forwarded_for = {trust_xff}
fhir_base = ["/fhir", "/baseR4"]
[output]
type = "stdout"
"#,
        multiline.as_str()
    );
    let problems = balp_agent::check::check_text("fuzz.toml", &text);
    assert!(problems.is_empty(), "harness config: {problems:?}");
    toml::from_str(&text).unwrap_or_else(|e| panic!("harness config: {e}"))
}

type Key = (usize, usize, bool, bool);

/// The presets written for `decode` (check refuses the others), in their documented order.
fn compatible((decode, multiline): (&str, Multiline)) -> Vec<&'static str> {
    let names: Vec<&'static str> = presets::names()
        .into_iter()
        .filter(|p| {
            let text = format!(
                "[[sources]]\nname = \"s\"\ntype = \"file\"\ninclude = [\"/x\"]\ndecode = \"{decode}\"\nmultiline = \"{}\"\nparsers = [\"{p}\"]\n",
                multiline.as_str()
            );
            balp_agent::check::check_text("fuzz.toml", &text).is_empty()
        })
        .collect();
    assert!(!names.is_empty(), "no preset for decode = {decode:?}");
    names
}

/// Building a processor compiles every preset's regexes: done once per combination, then
/// cloned (fresh fold/stash state) for each input.
fn processor(key: Key) -> SourceProcessor {
    static BUILT: OnceLock<Mutex<HashMap<Key, SourceProcessor>>> = OnceLock::new();
    let map = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(key)
        .or_insert_with(|| {
            let names = compatible(DECODERS[key.0]);
            let parsers: Vec<&str> = match key.1 {
                0 => names.clone(),
                n => vec![names[(n - 1) % names.len()]],
            };
            let c = config(DECODERS[key.0], &parsers, key.2, key.3);
            SourceProcessor::build(&c, &c.sources[0])
                .unwrap_or_else(|e| panic!("preset processor does not build: {e:?}"))
        })
        .clone()
}

/// The harness.
pub fn run(data: &[u8]) {
    let [d, p, m, rest @ ..] = data else {
        return;
    };
    let presets_n = presets::names().len();
    let key = (
        usize::from(*d) % DECODERS.len(),
        usize::from(*p) % (presets_n + 1),
        m & 1 == 1,
        m & 2 == 2,
    );
    let mut proc = processor(key);
    let stream = Arc::new(StreamId {
        source: Arc::from("fuzz"),
        key: "file:1:2:fuzz".into(),
        path: "/var/log/fuzz.log".into(),
    });
    let now = jiff::Timestamp::from_second(1_795_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let mut ids = HashSet::new();
    let mut joiner = Joiner::new(DECODERS[key.0].1, 64 * 1024, DEFAULT_MAX_LINES);
    let mut records = Vec::new();
    let mut offset = 0u64;
    for raw in rest.split(|&b| b == b'\n') {
        let (text, invalid_utf8) = balp_agent::source::to_text(raw);
        let end = offset + raw.len() as u64 + 1;
        let line = LogLine {
            stream: stream.clone(),
            offset,
            end,
            text,
            flags: balp_agent::source::LineFlags {
                truncated: false,
                invalid_utf8,
            },
        };
        offset = end;
        records.extend(joiner.push(line));
    }
    records.extend(joiner.flush());
    for line in &records {
        for ev in proc.process(line, now) {
            let v: serde_json::Value = serde_json::from_str(&ev.json)
                .unwrap_or_else(|e| panic!("event JSON does not parse: {e}\n{}", ev.json));
            let problems = conformance::check(&v);
            assert!(problems.is_empty(), "{problems:#?}\n{v:#}");
            assert_eq!(v["id"], ev.id.to_string(), "id");
            assert_eq!(
                v["extension"][0]["valueIdentifier"]["value"],
                format!("urn:uuid:{}", ev.id),
                "id extension"
            );
            assert!(ids.insert(ev.id), "two events with id {}", ev.id);
        }
    }
}
