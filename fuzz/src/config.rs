//! The config loader and `balp-agent check`.
//!
//! Input: a config file's bytes.
//!
//! Asserts: `check::check_text` returns problems, never panics, each formatted
//! `PATH:LINE:COL: key: message` with a line and column inside the text; a text that `check`
//! passes deserializes (`toml::from_str::<Config>`, what `check::load` does next) and every
//! one of its file sources builds its decoder and parsers (`SourceProcessor::build`, what
//! `run` does next), and every syslog `listen` parses: `check` knows every rule the agent
//! applies at start-up.

use balp_agent::config::{Config, SourceType};
use balp_agent::pipeline::SourceProcessor;
use balp_agent::source::syslog::Listen;

/// Tokens for the mutator (and AFL's dictionary): section and key names.
pub const DICT: &[&str] = &[
    "[agent]\n",
    "[agent.observer]\n",
    "[[sources]]\n",
    "[[parsers]]\n",
    "[[parsers.rules]]\n",
    "[output]\n",
    "[output.auth]\n",
    "[output.tls]\n",
    "[output.retry]\n",
    "[spool]\n",
    "[metrics]\n",
    "[sources.tls]\n",
    "name = \"a\"\n",
    "type = \"file\"\n",
    "type = \"syslog\"\n",
    "type = \"journald\"\n",
    "type = \"http\"\n",
    "include = [\"/var/log/*.log\"]\n",
    "decode = \"postgres\"\n",
    "parsers = [\"sshd\", \"pgaudit\"]\n",
    "listen = \"tcp://127.0.0.1:5514\"\n",
    "url = \"https://arr.example.org/fhir\"\n",
    "max_line_bytes = \"64KiB\"\n",
    "poll_interval = \"250ms\"\n",
    "timezone = \"Europe/Berlin\"\n",
    "log_line_prefix = \"%m [%p] \"\n",
    "multiline = \"csv\"\n",
    "regex = '^(?P<user>\\w+)'\n",
    "pattern = \"rest_read\"\n",
    "fold = \"5s\"\n",
    "max_bytes = \"1GiB\"\n",
    "min_free = 0\n",
    "mode = \"comprehensive\"\n",
    "bundle_type = \"batch\"\n",
];

const LABEL: &str = "/etc/balp-agent/fuzz.toml";

/// The harness.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let problems = balp_agent::check::check_text(LABEL, &text);
    let lines = text.split('\n').count();
    for p in &problems {
        let rest = p
            .strip_prefix(LABEL)
            .and_then(|r| r.strip_prefix(':'))
            .unwrap_or_else(|| panic!("problem without the path: {p:?}"));
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let col: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(
            (1..=lines).contains(&line) && col >= 1,
            "problem outside the text ({lines} lines): {p:?}"
        );
        assert!(!p.contains('\n'), "multi-line problem: {p:?}");
    }
    let parsed = toml::from_str::<Config>(&text);
    if !problems.is_empty() {
        return;
    }
    let mut config =
        parsed.unwrap_or_else(|e| panic!("check passed a config that does not load: {e}"));
    config.resolve_relative(std::path::Path::new("/etc/balp-agent"));
    for s in &config.sources {
        match s.source_type {
            SourceType::Syslog => {
                let listen = s.listen.as_deref().unwrap_or_default();
                assert!(
                    Listen::parse(listen).is_ok(),
                    "check passed listen = {listen:?}"
                );
                build(&config, s);
            }
            _ => build(&config, s),
        }
    }
}

fn build(config: &Config, s: &balp_agent::config::SourceConfig) {
    if let Err(e) = SourceProcessor::build(config, s) {
        panic!(
            "check passed source {:?} that does not build: {e:?}",
            s.name
        );
    }
}
