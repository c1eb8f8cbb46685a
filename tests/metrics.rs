//! `/metrics` scraped over a real socket: names, types and values follow the Prometheus text
//! format 0.0.4 and the counters of `events`. One test only: the counters are process-wide,
//! so exact values need this binary to themselves.

use balp_agent::events;
use balp_agent::metrics::{Health, PROMETHEUS_CONTENT_TYPE, Thresholds, serve};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// Checks the page's grammar and returns (types by family, value by `name{labels}`).
fn parse(page: &str) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
    let mut types = BTreeMap::new();
    let mut helps = BTreeMap::new();
    let mut values = BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap();
            assert!(!text.is_empty(), "empty help for {name}");
            assert!(
                helps.insert(name.to_owned(), ()).is_none(),
                "HELP twice: {name}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helps.contains_key(name), "TYPE before HELP for {name}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {name}"
            );
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{name}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            let kind = types
                .get(family)
                .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
            if kind == "counter" {
                assert!(
                    family.ends_with("_total"),
                    "counter without _total: {family}"
                );
            }
            assert!(family.starts_with("balp_agent_"), "{family}");
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            assert!(
                values.insert(series.to_owned(), v).is_none(),
                "duplicate series {series}"
            );
        }
    }
    (types, values)
}

#[tokio::test]
async fn metrics_scrape_has_prometheus_names_types_and_values() {
    events::lines_read(7);
    events::event("read");
    events::event("read");
    events::event("login");
    events::unmatched_by("auth", "sshd,sudo");
    events::unmatched_by("auth", "sshd,sudo");
    events::unmatched("weird \"src\"\\x");
    events::line_truncated("s", 0, 10, "max_line_bytes");
    events::invalid_utf8("s", 0);
    events::bundle_sent("b1", 3, "t");
    events::retry("b2", "t", "HTTP 503", 10);
    events::dead_lettered("b3", 1, "t", 400, "f");
    events::position_write_failed("p", "disk full");
    events::syslog_dropped("udp://x", 4);
    events::delivery_latency(0.003);
    events::delivery_latency(0.2);
    events::delivery_latency(7200.0);

    let health = Arc::new(Health::new(Thresholds::default()));
    health.set_spool(12, 2048, 4096, Some(Duration::from_millis(1500)));
    let (trigger, shutdown) = balp_agent::shutdown::channel();
    let (task, addr) = serve("127.0.0.1:0", health.clone(), shutdown)
        .await
        .unwrap();

    let (head, page) = get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("Content-Type: {PROMETHEUS_CONTENT_TYPE}")),
        "{head}"
    );
    assert!(head.contains(&format!("Content-Length: {}", page.len())));
    let (types, v) = parse(&page);

    for (family, kind) in [
        ("balp_agent_build_info", "gauge"),
        ("balp_agent_lines_read_total", "counter"),
        ("balp_agent_events_total", "counter"),
        ("balp_agent_unmatched_lines_total", "counter"),
        ("balp_agent_lines_truncated_total", "counter"),
        ("balp_agent_lines_invalid_utf8_total", "counter"),
        ("balp_agent_lines_folded_total", "counter"),
        ("balp_agent_bundles_sent_total", "counter"),
        ("balp_agent_bundles_failed_total", "counter"),
        ("balp_agent_delivery_retries_total", "counter"),
        ("balp_agent_bundles_dead_lettered_total", "counter"),
        ("balp_agent_delivery_latency_seconds", "histogram"),
        ("balp_agent_delivery_failing_seconds", "gauge"),
        ("balp_agent_output_paused", "gauge"),
        ("balp_agent_spool_pending_events", "gauge"),
        ("balp_agent_spool_bytes", "gauge"),
        ("balp_agent_spool_max_bytes", "gauge"),
        ("balp_agent_spool_oldest_age_seconds", "gauge"),
        ("balp_agent_position_write_failures_total", "counter"),
        ("balp_agent_syslog_dropped_total", "counter"),
        ("balp_agent_syslog_connections_refused_total", "counter"),
        ("balp_agent_healthy", "gauge"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }

    let version = env!("CARGO_PKG_VERSION");
    let expect = [
        (
            format!("balp_agent_build_info{{version=\"{version}\"}}"),
            1.0,
        ),
        ("balp_agent_lines_read_total".into(), 7.0),
        ("balp_agent_events_total{pattern=\"read\"}".into(), 2.0),
        ("balp_agent_events_total{pattern=\"login\"}".into(), 1.0),
        (
            "balp_agent_unmatched_lines_total{source=\"auth\",parsers=\"sshd,sudo\"}".into(),
            2.0,
        ),
        (
            r#"balp_agent_unmatched_lines_total{source="weird \"src\"\\x",parsers=""}"#.into(),
            1.0,
        ),
        ("balp_agent_lines_truncated_total".into(), 1.0),
        ("balp_agent_lines_invalid_utf8_total".into(), 1.0),
        ("balp_agent_bundles_sent_total".into(), 1.0),
        ("balp_agent_delivery_retries_total".into(), 1.0),
        ("balp_agent_bundles_dead_lettered_total".into(), 1.0),
        ("balp_agent_position_write_failures_total".into(), 1.0),
        ("balp_agent_syslog_dropped_total".into(), 4.0),
        ("balp_agent_syslog_connections_refused_total".into(), 0.0),
        ("balp_agent_spool_pending_events".into(), 12.0),
        ("balp_agent_spool_bytes".into(), 2048.0),
        ("balp_agent_spool_max_bytes".into(), 4096.0),
        ("balp_agent_spool_oldest_age_seconds".into(), 1.5),
        (
            "balp_agent_delivery_latency_seconds_bucket{le=\"0.005\"}".into(),
            1.0,
        ),
        (
            "balp_agent_delivery_latency_seconds_bucket{le=\"0.25\"}".into(),
            2.0,
        ),
        (
            "balp_agent_delivery_latency_seconds_bucket{le=\"3600\"}".into(),
            2.0,
        ),
        (
            "balp_agent_delivery_latency_seconds_bucket{le=\"+Inf\"}".into(),
            3.0,
        ),
        ("balp_agent_delivery_latency_seconds_count".into(), 3.0),
        ("balp_agent_delivery_failing_seconds".into(), 0.0),
        ("balp_agent_output_paused".into(), 0.0),
        ("balp_agent_healthy".into(), 1.0),
    ];
    for (series, value) in expect {
        assert_eq!(v.get(&series), Some(&value), "{series} in\n{page}");
    }
    let sum = v["balp_agent_delivery_latency_seconds_sum"];
    assert!((sum - 7200.203).abs() < 1e-6, "{sum}");
    // Buckets are cumulative and never decrease.
    let buckets: Vec<f64> = page
        .lines()
        .filter(|l| l.starts_with("balp_agent_delivery_latency_seconds_bucket"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    // The health gauge and endpoint agree.
    health.set_spool(12, 4000, 4096, None);
    let (head, body) = get(addr, "/health").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(body.starts_with("unhealthy: spool 98% full"), "{body}");
    let (_, page) = get(addr, "/metrics").await;
    assert!(page.contains("\nbalp_agent_healthy 0\n"));

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
