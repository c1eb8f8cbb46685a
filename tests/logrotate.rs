//! A real `logrotate` rotates a FHIR access log under write load, first with `create`
//! (rename + new file), then with `copytruncate`; every line written must become an event.
//!
//! The writer keeps its file open and reopens it when the path points to a new file (as a
//! server does after its postrotate signal), so lines still land in a renamed file for a
//! while: the agent must read the old file to its end.
//!
//! `copytruncate` loses by itself whatever is written between its copy and its truncate —
//! no reader can see those bytes. During that phase the writer therefore pauses while
//! logrotate runs (after the agent has read everything): what is tested is that the agent
//! notices the truncation and reads the file again from 0. Other tests here include the
//! copies and do not let the agent catch up first (the copy's unread tail is read through
//! the live file's stream), and compress without `delaycompress` across an agent stop.
//!
//! Needs `logrotate`: skipped with a note when absent, unless `CI` is set.

mod common;

use common::agent::{Agent, fhir_lines, wait_until, write_config};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LOGROTATE: &str = "/usr/sbin/logrotate";

/// The request id (`req%08d`) of every event, with the ids of the events that carry it.
fn rids(out: &Path) -> BTreeMap<String, BTreeSet<String>> {
    RidCache::default().rids(out)
}

/// How long the agent may take to catch up. A liveness bound, not a speed test: a debug
/// build on a loaded 2-core machine reads a few thousand lines a second.
const CATCH_UP: Duration = Duration::from_secs(180);

/// [`rids`] for polling: each Bundle file (written once, by rename) is parsed only the first
/// time it is seen, so polling does not compete with the agent for the CPU.
#[derive(Default)]
struct RidCache {
    files: BTreeMap<PathBuf, Vec<(String, String)>>,
}

impl RidCache {
    fn rids(&mut self, out: &Path) -> BTreeMap<String, BTreeSet<String>> {
        let names: Vec<PathBuf> = std::fs::read_dir(out)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        for f in names {
            if f.extension().is_none_or(|e| e != "json") || self.files.contains_key(&f) {
                continue;
            }
            let text = std::fs::read_to_string(&f).expect("bundle file");
            let v: serde_json::Value = serde_json::from_str(&text).expect("bundle json");
            let mut pairs = Vec::new();
            for e in v["entry"].as_array().into_iter().flatten() {
                let ev = &e["resource"];
                let rid = ev["entity"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| e["type"]["code"] == "XrequestId")
                    .and_then(|e| e["what"]["identifier"]["value"].as_str());
                if let Some(rid) = rid {
                    pairs.push((
                        rid.to_owned(),
                        ev["id"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
            self.files.insert(f, pairs);
        }
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (rid, id) in self.files.values().flatten() {
            map.entry(rid.clone()).or_default().insert(id.clone());
        }
        map
    }

    /// Wait (up to [`CATCH_UP`]) until at least `n` request ids have arrived.
    fn wait_for(&mut self, out: &Path, n: usize) -> bool {
        wait_until(CATCH_UP, || {
            std::thread::sleep(Duration::from_millis(100));
            self.rids(out).len() >= n
        })
    }
}

fn logrotate(conf: &Path, state: &Path) {
    let out = Command::new(LOGROTATE)
        .arg("-f")
        .arg("-s")
        .arg(state)
        .arg(conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "logrotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_conf(path: &Path, log: &Path, mode: &str) {
    std::fs::write(
        path,
        format!(
            "{log} {{\n    rotate 20\n    {mode}\n    missingok\n}}\n",
            log = log.display()
        ),
    )
    .unwrap();
}

struct Writer {
    written: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Held by the writer for each batch; the test holds it to pause the writer.
    gate: Arc<Mutex<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(log: PathBuf) -> Writer {
        let written = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Mutex::new(()));
        let (w, s, g) = (written.clone(), stop.clone(), gate.clone());
        let handle = std::thread::spawn(move || {
            let open = || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap()
            };
            let mut file = open();
            let mut n = 0;
            while !s.load(Ordering::SeqCst) {
                {
                    let _g = g.lock().unwrap();
                    // Reopen once the path is a different file (rotated by rename).
                    let current = std::fs::metadata(&log).map(|m| m.ino()).ok();
                    if current != Some(file.metadata().unwrap().ino()) {
                        file = open();
                    }
                    let mut buf = String::new();
                    for line in fhir_lines(n, 10) {
                        buf.push_str(&line);
                        buf.push('\n');
                    }
                    file.write_all(buf.as_bytes()).unwrap();
                    n += 10;
                    w.store(n, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        Writer {
            written,
            stop,
            gate,
            handle: Some(handle),
        }
    }

    fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }

    fn finish(&mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.written()
    }
}

/// Whether logrotate is here; without it the test is skipped (a failure when CI is set,
/// since .ci/run installs it).
fn logrotate_available() -> bool {
    common::e2e::runnable(
        "the logrotate test",
        Path::new(LOGROTATE).exists(),
        "logrotate not installed (apt-get install logrotate)",
    )
}

/// A temp dir with `logs/`, and an agent config that follows `logs/<glob>` into `out/`:
/// (dir, the live log, the output dir, the config file).
fn setup(glob: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("access.log");
    let out = dir.path().join("out");
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "test-host"
[[sources]]
name = "fhir"
type = "file"
include = ["{}"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
poll_interval = "50ms"
[output]
type = "directory"
path = "out"
max_events = 500
flush_interval = "100ms"
"#,
            logs.join(glob).display()
        ),
    );
    (dir, log, out, config)
}

#[test]
fn logrotate_create_and_copytruncate_under_load_lose_nothing() {
    if !logrotate_available() {
        return;
    }
    let (dir, log, out, config) = setup("access.log");
    let mut agent = Agent::start(&config, &[]);
    let mut writer = Writer::start(log.clone());
    let state = dir.path().join("logrotate.state");
    let conf = dir.path().join("logrotate.conf");

    // Rename + create, while the writer keeps writing.
    write_conf(&conf, &log, "create\n    nocompress");
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(250));
        logrotate(&conf, &state);
    }
    // copytruncate: pause the writer, let the agent catch up, rotate, resume.
    write_conf(&conf, &log, "copytruncate\n    nocompress");
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(250));
        let _paused = writer.gate.lock().unwrap();
        let written = writer.written();
        assert!(
            RidCache::default().wait_for(&out, written),
            "agent did not catch up before copytruncate: {} of {written}\n{}",
            rids(&out).len(),
            agent.log()
        );
        logrotate(&conf, &state);
    }
    std::thread::sleep(Duration::from_millis(250));
    let total = writer.finish();
    assert!(total > 500, "the writer wrote {total} lines");
    eprintln!("writer wrote {total} lines over 8 rotations");
    assert_all_once(&out, total, &agent.log());
    let rotated = std::fs::read_dir(log.parent().unwrap()).unwrap().count();
    assert!(rotated >= 9, "logrotate made {rotated} files");
    assert!(agent.stop().success(), "{}", agent.log());
}

/// copytruncate with the copies included (`access.log*`) and without letting the agent catch
/// up first: the lines the agent had not read yet when logrotate copied the file are read
/// from the copy (as the continuation of the live file's stream), and the copies are never
/// read as streams of their own. The writer pauses only while logrotate runs, since lines
/// written between its copy and its truncate are lost by logrotate itself.
#[test]
fn logrotate_copytruncate_with_unread_lines_and_copies_included_reads_each_once() {
    if !logrotate_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("access.log");
    let out = dir.path().join("out");
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "test-host"
[[sources]]
name = "fhir"
type = "file"
include = ["{log}*"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
poll_interval = "200ms"
[output]
type = "directory"
path = "out"
max_events = 500
flush_interval = "100ms"
"#,
            log = log.display()
        ),
    );
    let mut agent = Agent::start(&config, &[]);
    let mut writer = Writer::start(log.clone());
    let state = dir.path().join("logrotate.state");
    let conf = dir.path().join("logrotate.conf");
    write_conf(&conf, &log, "copytruncate\n    nocompress");
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(330));
        let _paused = writer.gate.lock().unwrap();
        logrotate(&conf, &state);
    }
    std::thread::sleep(Duration::from_millis(250));
    let total = writer.finish();
    assert!(total > 500, "the writer wrote {total} lines");
    assert_all_once(&out, total, &agent.log());
    let log_text = agent.log();
    assert!(
        log_text.contains("read the copy's unread tail"),
        "no copy tail was read:\n{log_text}"
    );
    assert!(agent.stop().success(), "{}", agent.log());
}

/// Every line has exactly one event (by request id), none is missing.
fn assert_all_once(out: &Path, total: usize, log: &str) {
    let mut cache = RidCache::default();
    let ok = cache.wait_for(out, total);
    let got = cache.rids(out);
    let missing: Vec<usize> = (0..total)
        .filter(|i| !got.contains_key(&format!("req{i:08}")))
        .collect();
    assert!(
        ok && missing.is_empty(),
        "{} of {total} lines lost: {:?}…\n{log}",
        missing.len(),
        &missing[..missing.len().min(20)],
    );
    let doubled: Vec<_> = got.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "lines with distinct events: {doubled:?}"
    );
    assert_eq!(got.len(), total);
}

/// With rename rotation the rotated file may be included (`access.log*`): it keeps its
/// identity, so it is continued rather than read again, and a file rotated while the agent
/// was stopped is still read to its end at the next start. `delaycompress` keeps the first
/// rotated file plain; compressed ones are skipped.
#[test]
fn rotated_files_included_with_delaycompress_survive_a_stopped_agent() {
    if !logrotate_available() {
        return;
    }
    let (dir, log, out, config) = setup("access.log*");
    let state = dir.path().join("logrotate.state");
    let conf = dir.path().join("logrotate.conf");
    write_conf(&conf, &log, "create\n    compress\n    delaycompress");
    let mut agent = Agent::start(&config, &[]);
    let mut writer = Writer::start(log.clone());
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(250));
        logrotate(&conf, &state);
    }
    // The file rotated last is compressed by the next rotation: before stopping across that
    // rotation, the agent must have read it (else its tail is the documented gap).
    // (Under the gate: a batch begun before the rotation has finished and been counted.)
    let before = {
        let _paused = writer.gate.lock().unwrap();
        writer.written()
    };
    assert!(
        RidCache::default().wait_for(&out, before),
        "agent did not catch up: {}",
        agent.log()
    );
    // Stopped across one rotation, while the writer goes on.
    assert!(agent.stop().success(), "{}", agent.log());
    let mut logs_so_far = agent.log();
    std::thread::sleep(Duration::from_millis(200));
    logrotate(&conf, &state);
    std::thread::sleep(Duration::from_millis(200));
    let mut agent = Agent::start(&config, &[]);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(250));
        logrotate(&conf, &state);
    }
    std::thread::sleep(Duration::from_millis(250));
    let total = writer.finish();
    logs_so_far.push_str(&agent.log());
    assert_all_once(&out, total, &logs_so_far);
    let gz = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".gz")
        })
        .count();
    assert!(gz >= 4, "logrotate compressed {gz} files");
    assert!(agent.stop().success(), "{}", agent.log());
}

/// logrotate `compress` *without* `delaycompress` while the agent is stopped with unread
/// lines: the rotated file exists only as `access.log.1.gz` at the next start. Its unread
/// lines are read once from the decompressed copy (matched by first line and offset
/// marker), under the original stream's ids. The writer pauses while logrotate runs, as a
/// line written to the renamed file after gzip read it is lost by logrotate itself.
#[test]
fn compressed_while_stopped_without_delaycompress_loses_nothing() {
    if !logrotate_available() {
        return;
    }
    let (dir, log, out, config) = setup("access.log");
    let state = dir.path().join("logrotate.state");
    let conf = dir.path().join("logrotate.conf");
    write_conf(&conf, &log, "create\n    compress");
    let mut agent = Agent::start(&config, &[]);
    let mut writer = Writer::start(log.clone());
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.stop().success(), "{}", agent.log());
    let mut logs_so_far = agent.log();
    // Unread lines pile up in the live file, then it is rotated and compressed.
    std::thread::sleep(Duration::from_millis(300));
    {
        let _paused = writer.gate.lock().unwrap();
        logrotate(&conf, &state);
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut agent = Agent::start(&config, &[]);
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(250));
        let _paused = writer.gate.lock().unwrap();
        logrotate(&conf, &state);
    }
    std::thread::sleep(Duration::from_millis(250));
    let total = writer.finish();
    assert_all_once(&out, total, &agent.log());
    logs_so_far.push_str(&agent.log());
    assert!(
        logs_so_far.contains("file compressed after rotation while stopped"),
        "{logs_so_far}"
    );
    assert!(agent.stop().success(), "{}", agent.log());
}
