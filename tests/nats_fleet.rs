//! The fleet layout end to end: 3 agents publish to an R3 JetStream stream on a 3-node NATS
//! cluster, 2 forwarders share one durable consumer and deliver to the ARR. One NATS node is
//! SIGKILLed and restarted and one forwarder is SIGKILLed and restarted while events flow:
//! every event reaches the ARR, a duplicate is always the very same event, and nothing is left
//! pending or unacknowledged on the consumer.
//!
//! Needs `nats-server` (Debian package `nats-server`, JetStream included): skipped with a
//! note when absent, unless `CI` is set (then it fails; `.ci/run` installs it).

mod common;

use common::agent::{Agent, append, fhir_lines, nats_server, request_id, wait_until, write_config};
use common::arr::Arr;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const STREAM: &str = "AUDIT";
const CONSUMER: &str = "forwarders";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One node of the cluster; SIGKILLed when dropped.
struct Node {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, bin: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("node log");
        self.child = Some(
            Command::new(bin)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn nats-server"),
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    urls: Vec<String>,
}

fn cluster(dir: &Path, bin: &Path) -> Cluster {
    let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let others: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
            .collect();
        let store = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&store).expect("store dir");
        let mut node = Node {
            args: vec![
                "-js".into(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                client[i].to_string(),
                "-n".into(),
                format!("node{i}"),
                "--cluster_name".into(),
                "balp".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", routes[i]),
                "--routes".into(),
                others.join(","),
                "-sd".into(),
                store.display().to_string(),
            ],
            log: dir.join(format!("node{i}.log")),
            child: None,
        };
        node.start(bin);
        nodes.push(node);
    }
    Cluster {
        bin: bin.to_path_buf(),
        nodes,
        urls: client
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect(),
    }
}

fn servers_toml(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

fn publisher_config(dir: &Path, n: usize, log: &Path, urls: &[String]) -> PathBuf {
    let d = dir.join(format!("agent{n}"));
    std::fs::create_dir_all(&d).expect("agent dir");
    write_config(
        &d,
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "host{n}.example.org"
[[sources]]
name = "fhir"
type = "file"
include = ["{log}"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
poll_interval = "50ms"
[output]
type = "nats"
max_events = 200
flush_interval = "100ms"
timeout = "2s"
[output.retry]
initial_backoff = "100ms"
max_backoff = "1s"
[output.nats]
servers = {servers}
subject = "balp.audit.{{hostname}}"
stream = "{STREAM}"
"#,
            log = log.display(),
            servers = servers_toml(urls),
        ),
    )
}

fn forwarder_config(dir: &Path, n: usize, arr: &Arr, urls: &[String]) -> PathBuf {
    let d = dir.join(format!("forwarder{n}"));
    std::fs::create_dir_all(&d).expect("forwarder dir");
    write_config(
        &d,
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "forwarder{n}"
[[sources]]
name = "fleet"
type = "nats"
[sources.nats]
servers = {servers}
stream = "{STREAM}"
consumer = "{CONSUMER}"
subject_filter = "balp.audit.>"
ack_wait = "5s"
batch = 200
[output]
type = "http"
url = "{url}"
bundle_type = "transaction"
max_events = 100
flush_interval = "100ms"
timeout = "2s"
[output.retry]
initial_backoff = "50ms"
max_backoff = "500ms"
"#,
            servers = servers_toml(urls),
            url = arr.url(),
        ),
    )
}

/// Request id (the XrequestId entity) of every accepted event → the event; asserts that
/// every duplicate (by event id) is identical.
fn delivered(arr: &Arr) -> BTreeMap<String, serde_json::Value> {
    let mut by_rid = BTreeMap::new();
    let mut by_id: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for b in arr.accepted_bundles() {
        for e in b["entry"].as_array().cloned().unwrap_or_default() {
            let r = e["resource"].clone();
            let id = r["id"].as_str().unwrap_or_default().to_owned();
            if let Some(prev) = by_id.insert(id.clone(), r.clone()) {
                assert_eq!(prev, r, "duplicate of event {id} differs");
            }
            let rid = request_id(&r).unwrap_or_default().to_owned();
            if rid.is_empty() {
                continue; // the agents' own start/stop events
            }
            if let Some(prev) = by_rid.insert(rid.clone(), r.clone()) {
                assert_eq!(prev["id"], r["id"], "request {rid} became two events");
            }
        }
    }
    by_rid
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn jetstream(urls: &[String]) -> async_nats::jetstream::Context {
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
    // The servers may still be starting.
    let mut last = String::new();
    for _ in 0..100 {
        match async_nats::connect(addrs.clone()).await {
            Ok(client) => return async_nats::jetstream::new(client),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot connect to NATS: {last}");
}

/// Create the R3 stream, retrying while the cluster elects its meta leader.
fn create_stream(rt: &tokio::runtime::Runtime, urls: &[String]) {
    rt.block_on(async {
        let js = jetstream(urls).await;
        let config = async_nats::jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["balp.audit.>".into()],
            num_replicas: 3,
            retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        };
        let mut last = String::new();
        for _ in 0..120 {
            match js.get_or_create_stream(config.clone()).await {
                Ok(_) => return,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("could not create the stream: {last}");
    });
}

/// (pending, ack pending) of the shared consumer.
fn consumer_backlog(rt: &tokio::runtime::Runtime, urls: &[String]) -> Option<(u64, usize)> {
    rt.block_on(async {
        let js = jetstream(urls).await;
        let stream = js.get_stream(STREAM).await.ok()?;
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(CONSUMER).await.ok()?;
        let info = c.info().await.ok()?;
        Some((info.num_pending, info.num_ack_pending))
    })
}

#[test]
fn three_agents_two_forwarders_a_node_and_a_forwarder_killed_every_event_arrives_once_or_identically()
 {
    let Some(bin) = nats_server() else {
        common::e2e::runnable(
            "nats_fleet",
            false,
            "nats-server is not installed (apt-get install nats-server)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut cl = cluster(dir.path(), &bin);
    create_stream(&rt, &cl.urls);

    let arr = Arr::start();
    let fwd_cfg: Vec<PathBuf> = (0..2)
        .map(|n| forwarder_config(dir.path(), n, &arr, &cl.urls))
        .collect();
    let mut forwarders: Vec<Agent> = fwd_cfg.iter().map(|c| Agent::start(c, &[])).collect();

    const AGENTS: usize = 3;
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 150;
    let logs: Vec<PathBuf> = (0..AGENTS)
        .map(|n| dir.path().join(format!("access{n}.log")))
        .collect();
    let pub_cfg: Vec<PathBuf> = (0..AGENTS)
        .map(|n| publisher_config(dir.path(), n, &logs[n], &cl.urls))
        .collect();
    let mut agents: Vec<Agent> = pub_cfg.iter().map(|c| Agent::start(c, &[])).collect();

    let mut expected = BTreeSet::new();
    for round in 0..ROUNDS {
        for (n, log) in logs.iter().enumerate() {
            let start = n * 1_000_000 + round * PER_ROUND;
            append(log, &fhir_lines(start, PER_ROUND));
            expected.extend((start..start + PER_ROUND).map(|i| format!("req{i:08}")));
        }
        std::thread::sleep(Duration::from_millis(300));
        match round {
            3 => cl.nodes[1].kill(),
            5 => {
                let bin = cl.bin.clone();
                cl.nodes[1].start(&bin);
            }
            6 => forwarders[0].signal("KILL"),
            7 => {
                let _ = forwarders[0].wait(Duration::from_secs(10));
                forwarders[0] = Agent::start(&fwd_cfg[0], &[]);
            }
            _ => {}
        }
    }

    let all_there = wait_until(Duration::from_secs(180), || {
        delivered(&arr).len() >= expected.len()
    });
    let got: BTreeSet<String> = delivered(&arr).into_keys().collect();
    let logs_of = |agents: &[Agent]| -> String {
        agents
            .iter()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert!(
        all_there && got == expected,
        "missing {} of {} events (extra {}); forwarders:\n{}\nagents:\n{}",
        expected.difference(&got).count(),
        expected.len(),
        got.difference(&expected).count(),
        logs_of(&forwarders),
        logs_of(&agents),
    );

    // Acks are sent after the spool acknowledged (coalesced up to 200 ms); redeliveries of
    // what the killed forwarder held come back after ack_wait and are acked in turn.
    let mut backlog = None;
    let drained = wait_until(Duration::from_secs(60), || {
        backlog = consumer_backlog(&rt, &cl.urls);
        backlog == Some((0, 0))
    });
    assert!(
        drained,
        "consumer not drained: (pending, ack pending) = {backlog:?}"
    );
    // Nothing arrived twice in a different form (checked inside `delivered`), and every
    // event still matches after the drain.
    assert_eq!(delivered(&arr).len(), expected.len());
    eprintln!(
        "{} events, {} entries accepted by the ARR (the rest are id-identical resends)",
        expected.len(),
        arr.accepted_event_ids().len()
    );

    for a in agents.iter_mut().chain(forwarders.iter_mut()) {
        let status = a.stop();
        assert!(status.success(), "agent exited with {status}:\n{}", a.log());
    }
}
