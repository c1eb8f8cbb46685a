//! `balp-agent arr check`: compare what the agent delivered with what the ARR holds.
//!
//! One side is the delivered log ([`crate::spool::delivered`]: every event the output
//! settled, with its seq and `recorded`); the other is a FHIR search of the ARR,
//! `GET [base]/AuditEvent?date=ge<start>&_count=<page>`, paged through `Bundle.link` `next`.
//!
//! **Why not `source=`.** The `source` search parameter of AuditEvent is a reference search
//! on `source.observer`, and our observer is a display-only Reference
//! (`{"display": "balp-agent@<host>"}`): there is no reference to match, so servers find
//! nothing (Medplum: `source=`, `source:identifier=` and `source:text=` all answer 0 for
//! our events). So the search is bounded by `date` (`AuditEvent.recorded`, indexed by every
//! server) and the events are attributed to this agent client-side, by
//! `source.observer.display` equal to the agent's observer display.
//!
//! **Base.** `output.fhir_base` if set; else `output.url` for `batch`/`transaction`, and
//! `output.url` without a trailing `/Bundle` for `collection`.
//!
//! **Window.** `--since D` checks events recorded in the last `D` on both sides; without
//! it, the window starts at the oldest `recorded` in the delivered log (older events cannot
//! be judged: the log no longer names them).
//!
//! **Result.** *missing*: in the delivered log (so acknowledged), not at the ARR, not
//! dead-lettered and not back in the spool (requeued); each candidate is looked up once
//! more by `_id` before it is reported, so a search whose pages shifted under concurrent
//! writes does not invent one. *extra*: at the ARR with this agent's observer display, but
//! neither in the delivered log (read again after the search, so events acknowledged while
//! it ran count) nor still pending in the spool (delivered, not yet acknowledged). The
//! event id at the ARR is the event-id extension's value (Medplum rewrites it to
//! `AuditEvent/<id>`; the last 36 characters are the UUID), else the resource id.
//!
//! Everything local is read without the spool lock, so it runs beside a running agent.

use crate::config::{BundleType, Config, OutputType};
use crate::deliver::http::HttpOutput;
use crate::spool::SpoolError;
use crate::spool::admin::{DEAD_LETTER_DIR, REQUEUE_DIR};
use crate::spool::delivered::{self, DeliveredEntry};
use reqwest::Url;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// A search page is read up to this size.
const MAX_PAGE_BYTES: usize = 256 << 20;
/// Ids per `_id=` look-up of missing candidates.
const ID_BATCH: usize = 50;
/// A search stops (with an error) after this many pages: a server whose `next` never ends.
const MAX_PAGES: usize = 100_000;

/// What `arr check` is asked to do.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Only events recorded in this last stretch of time (both sides).
    pub since: Option<Duration>,
    /// `_count` of each search page.
    pub page_size: usize,
}

/// Why the check could not be made (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The config does not allow a check.
    #[error("{0}")]
    Setup(String),
    /// Reading the delivered log, the spool or the dead letters failed.
    #[error(transparent)]
    Local(#[from] SpoolError),
    /// The ARR did not answer as a FHIR server should.
    #[error("GET {url}: {reason}")]
    Arr {
        /// The request (password hidden).
        url: String,
        /// The status and body excerpt, or the transport error.
        reason: String,
    },
}

/// One event in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The event id.
    pub id: String,
    /// `recorded` as logged or stored.
    pub recorded: String,
    /// Its spool seq (missing events: from the delivered log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Its id at the ARR (extra events), if it differs from `id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arr_id: Option<String>,
}

/// What `arr check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The first search request.
    pub search: String,
    /// Search pages read.
    pub pages: usize,
    /// Start of the window (RFC 3339), `None`: everything.
    pub window_start: Option<String>,
    /// The observer display that marks this agent's events.
    pub observer: String,
    /// Delivered events (from the log) in the window.
    pub delivered: usize,
    /// AuditEvents the search returned with this agent's observer, in the window.
    pub at_arr: usize,
    /// AuditEvents the search returned from other observers (not judged).
    pub other_sources: usize,
    /// Events still in the spool (not yet acknowledged).
    pub pending: usize,
    /// Delivered events that are dead letters (or requeued), so not expected at the ARR.
    pub dead_lettered: usize,
    /// Lines of the delivered log that did not parse.
    pub log_lines_skipped: u64,
    /// Acknowledged, absent at the ARR.
    pub missing: Vec<Finding>,
    /// At the ARR with our observer, never delivered by this agent.
    pub extra: Vec<Finding>,
}

impl Report {
    /// No discrepancy.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty()
    }
}

/// The FHIR base of the ARR: `output.url` itself for `batch`/`transaction` (Bundles are
/// POSTed to the base), `output.url` without its last `/Bundle` for `collection`.
pub fn fhir_base(output_url: &str, bundle_type: BundleType) -> Result<Url, String> {
    let mut url = crate::deliver::http_url(output_url).map_err(|e| format!("output.url: {e}"))?;
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_owned();
    let path = match bundle_type {
        BundleType::Collection => path.strip_suffix("/Bundle").unwrap_or(&path).to_owned(),
        BundleType::Batch | BundleType::Transaction => path,
    };
    url.set_path(&format!("{path}/"));
    Ok(url)
}

/// `output.fhir_base` as given, with the one trailing `/` that `Url::join` needs.
fn explicit_base(raw: &str) -> Result<Url, String> {
    let mut url = crate::deliver::http_url(raw).map_err(|e| format!("output.fhir_base: {e}"))?;
    let path = format!("{}/", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// Our event id in a stored AuditEvent: the event-id extension's value, else the id.
fn event_id(resource: &serde_json::Value, extension_url: &str) -> Option<String> {
    let from_ext = resource["extension"].as_array().and_then(|exts| {
        exts.iter()
            .find(|e| e["url"] == extension_url)
            .and_then(|e| e["valueIdentifier"]["value"].as_str())
    });
    if let Some(v) = from_ext {
        // `urn:uuid:<id>` as sent, `AuditEvent/<id>` after Medplum's fullUrl rewriting.
        let tail = v.rsplit([':', '/']).next().unwrap_or(v);
        if Uuid::parse_str(tail).is_ok() {
            return Some(tail.to_owned());
        }
    }
    resource["id"].as_str().map(str::to_owned)
}

/// Ids of the events in dead letters and in requeued dead letters.
fn dead_letter_ids(state_dir: &Path) -> HashSet<String> {
    let mut ids = HashSet::new();
    for dir in [DEAD_LETTER_DIR, REQUEUE_DIR] {
        let Ok(rd) = std::fs::read_dir(state_dir.join(dir)) else {
            continue;
        };
        for entry in rd.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(v) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            else {
                continue;
            };
            for e in v["bundle"]["entry"].as_array().into_iter().flatten() {
                if let Some(id) = e["resource"]["id"].as_str() {
                    ids.insert(id.to_owned());
                }
            }
        }
    }
    ids
}

/// The ARR side: an HTTP client and the base.
struct Arr {
    http: HttpOutput,
    base: Url,
}

impl Arr {
    /// The URL as shown (password hidden).
    fn shown(url: &Url) -> String {
        let mut u = url.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        u.to_string()
    }

    async fn get_bundle(&mut self, url: &Url) -> Result<serde_json::Value, CheckError> {
        let err = |reason: String| CheckError::Arr {
            url: Arr::shown(url),
            reason,
        };
        let (status, body) = self.http.get(url, MAX_PAGE_BYTES).await.map_err(err)?;
        if status != 200 {
            let text = String::from_utf8_lossy(&body);
            let excerpt: String = text.chars().take(300).collect();
            return Err(err(format!("HTTP {status}: {excerpt}")));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| err(format!("HTTP 200, but the body is not JSON: {e}")))?;
        if v["resourceType"] != "Bundle" {
            return Err(err(format!(
                "HTTP 200, but the body is a {} and not a searchset Bundle",
                v["resourceType"].as_str().unwrap_or("(no resourceType)")
            )));
        }
        Ok(v)
    }

    /// Hand every resource of a search to `each`, page by page (an ARR may hold millions:
    /// only one page is in memory), following `next` links (same origin as the base only:
    /// the credentials must not go elsewhere). Returns the pages read.
    async fn search(
        &mut self,
        first: Url,
        mut each: impl FnMut(&serde_json::Value),
    ) -> Result<usize, CheckError> {
        let mut matches = 0usize;
        let mut url = first;
        let mut seen = HashSet::new();
        let mut pages = 0;
        loop {
            pages += 1;
            if pages > MAX_PAGES || !seen.insert(url.to_string()) {
                return Err(CheckError::Arr {
                    url: Arr::shown(&url),
                    reason: "the search's next links do not end".into(),
                });
            }
            let page = self.get_bundle(&url).await?;
            for e in page["entry"].as_array().into_iter().flatten() {
                if e["search"]["mode"] != "include" {
                    matches += 1;
                    each(&e["resource"]);
                }
            }
            let next = page["link"].as_array().and_then(|links| {
                links
                    .iter()
                    .find(|l| l["relation"] == "next")
                    .and_then(|l| l["url"].as_str())
            });
            let Some(next) = next else {
                // A server that pages by `total` without links would be read only in part.
                if let Some(total) = page["total"].as_u64()
                    && total as usize > matches
                {
                    return Err(CheckError::Arr {
                        url: Arr::shown(&url),
                        reason: format!(
                            "the ARR reports {total} matches but gave {matches} and no next link"
                        ),
                    });
                }
                return Ok(pages);
            };
            let next = self.base.join(next).map_err(|e| CheckError::Arr {
                url: Arr::shown(&url),
                reason: format!("next link {next:?}: {e}"),
            })?;
            if next.origin() != self.base.origin() {
                return Err(CheckError::Arr {
                    url: Arr::shown(&url),
                    reason: format!(
                        "next link {} leaves the ARR's origin {}",
                        Arr::shown(&next),
                        self.base.origin().ascii_serialization()
                    ),
                });
            }
            url = next;
        }
    }

    fn url(&self, query: &[(&str, String)]) -> Result<Url, CheckError> {
        let mut url = self
            .base
            .join("AuditEvent")
            .map_err(|e| CheckError::Setup(format!("{}AuditEvent: {e}", Arr::shown(&self.base))))?;
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        Ok(url)
    }
}

/// The two sides of the comparison, as read.
struct Sides<'a> {
    /// Delivered-log entries in the window, read before the search.
    delivered: &'a HashMap<Uuid, DeliveredEntry>,
    /// This agent's events at the ARR in the window: our id → (recorded, ARR id if other).
    at_arr: &'a HashMap<String, (String, Option<String>)>,
    /// Ids still in the spool, read after the search.
    pending: &'a HashSet<Uuid>,
    /// The ids of the whole delivered log, read after the search.
    log_after: &'a HashSet<Uuid>,
    /// Ids in dead letters (and requeued ones).
    dead: &'a HashSet<String>,
}

/// What the comparison alone decides.
#[derive(Debug)]
struct Judged<'a> {
    /// Delivered, not found, not excused: missing unless a look-up by id finds them.
    candidates: Vec<&'a DeliveredEntry>,
    /// At the ARR, never delivered and not pending.
    extra: Vec<Finding>,
    /// Delivered, not found, but dead letters.
    dead_lettered: usize,
}

fn judge<'a>(s: &Sides<'a>) -> Judged<'a> {
    let mut dead_lettered = 0;
    let mut candidates: Vec<&DeliveredEntry> = Vec::new();
    for e in s.delivered.values() {
        let id = e.id.to_string();
        // Requeued dead letters are back in the spool: not missing yet.
        if s.at_arr.contains_key(&id) || s.pending.contains(&e.id) {
            continue;
        }
        if s.dead.contains(&id) {
            dead_lettered += 1;
            continue;
        }
        candidates.push(e);
    }
    candidates.sort_by_key(|e| e.seq);
    let mut extra: Vec<Finding> = s
        .at_arr
        .iter()
        .filter(|(id, _)| {
            let uuid = Uuid::parse_str(id).ok();
            !uuid.is_some_and(|u| s.log_after.contains(&u) || s.pending.contains(&u))
        })
        .map(|(id, (recorded, arr_id))| Finding {
            id: id.clone(),
            recorded: recorded.clone(),
            seq: None,
            arr_id: arr_id.clone(),
        })
        .collect();
    extra.sort_by(|a, b| (&a.recorded, &a.id).cmp(&(&b.recorded, &b.id)));
    Judged {
        candidates,
        extra,
        dead_lettered,
    }
}

/// The ARR of the config's HTTP output, and its FHIR base.
fn connect(config: &Config) -> Result<Arr, CheckError> {
    let o = &config.output;
    if o.output_type != OutputType::Http {
        return Err(CheckError::Setup(format!(
            "arr check needs output.type = \"http\" (this config has {:?})",
            o.output_type
        )));
    }
    let raw = o
        .url
        .as_deref()
        .ok_or_else(|| CheckError::Setup("output.url: required for arr check".into()))?;
    let base = match &o.fhir_base {
        Some(b) => explicit_base(b),
        None => fhir_base(raw, o.bundle_type),
    }
    .map_err(CheckError::Setup)?;
    let http = HttpOutput::new(o, &config.agent.state_dir)
        .map_err(|e| CheckError::Setup(e.to_string()))?;
    Ok(Arr { http, base })
}

/// Every resource that `GET [base]/AuditEvent?_count=<page_size>` finds, page by page
/// (same paging and origin rules as `arr check`), handed to `each`. Returns the pages read.
pub async fn search_all(
    config: &Config,
    page_size: usize,
    each: impl FnMut(&serde_json::Value),
) -> Result<usize, CheckError> {
    let mut arr = connect(config)?;
    let first = arr.url(&[("_count", page_size.max(1).to_string())])?;
    arr.search(first, each).await
}

/// Ids of the events in dead letters and requeued dead letters, as UUIDs.
pub fn dead_letter_uuids(state_dir: &Path) -> HashSet<Uuid> {
    dead_letter_ids(state_dir)
        .iter()
        .filter_map(|s| Uuid::parse_str(s).ok())
        .collect()
}

/// Run the check (see the module doc).
pub async fn check(config: &Config, opts: &CheckOptions) -> Result<Report, CheckError> {
    let mut arr = connect(config)?;
    let state = &config.agent.state_dir;
    let observer = crate::pipeline::map_context(config, "", Vec::new()).observer_display;
    let ext_url = &config.agent.event_id_extension;

    let now = jiff::Timestamp::now();
    let since = match opts.since {
        Some(d) => {
            let span = jiff::SignedDuration::try_from(d)
                .map_err(|e| CheckError::Setup(format!("--since: {e}")))?;
            Some(
                now.checked_sub(span)
                    .map_err(|e| CheckError::Setup(format!("--since: {e}")))?,
            )
        }
        None => None,
    };
    let in_window = |recorded: &str| match (since, parse_time(recorded)) {
        (None, _) => true,
        (Some(s), Some(t)) => t >= s,
        (Some(_), None) => false,
    };

    // Read before the search: these were acknowledged before the ARR was asked.
    let log = delivered::read(state)?;
    let delivered: HashMap<Uuid, DeliveredEntry> = log
        .events
        .into_iter()
        .filter(|(_, e)| in_window(&e.recorded))
        .collect();
    let start = since.or_else(|| {
        delivered
            .values()
            .filter_map(|e| parse_time(&e.recorded))
            .min()
    });
    // `date=ge` at whole seconds, rounded down: it can only widen the window.
    let start = start.and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok());

    let mut query = Vec::new();
    if let Some(s) = start {
        query.push(("date", format!("ge{s}")));
    }
    query.push(("_count", opts.page_size.max(1).to_string()));
    let first = arr.url(&query)?;
    let search = Arr::shown(&first);
    let mut at_arr: HashMap<String, (String, Option<String>)> = HashMap::new();
    let mut other_sources = 0;
    let pages = arr
        .search(first, |r| {
            if r["resourceType"] != "AuditEvent" {
                return;
            }
            if r["source"]["observer"]["display"] != observer.as_str() {
                other_sources += 1;
                return;
            }
            let recorded = r["recorded"].as_str().unwrap_or("");
            if since.is_some_and(|s| parse_time(recorded).is_none_or(|t| t < s)) {
                return;
            }
            let Some(id) = event_id(r, ext_url) else {
                return;
            };
            let arr_id = r["id"].as_str().filter(|a| *a != id).map(str::to_owned);
            at_arr.insert(id, (recorded.to_owned(), arr_id));
        })
        .await?;

    // Read after the search: events delivered while it ran are in one of these.
    let spooled = delivered::spool_ids(state)?;
    let log_after = delivered::read_ids(state)?;
    let dead = dead_letter_ids(state);

    let judged = judge(&Sides {
        delivered: &delivered,
        at_arr: &at_arr,
        pending: &spooled.pending,
        log_after: &log_after,
        dead: &dead,
    });
    let candidates = judged.candidates;
    // Look each candidate up by id once more before calling it missing.
    let mut found_late = HashSet::new();
    for chunk in candidates.chunks(ID_BATCH) {
        let ids: Vec<String> = chunk.iter().map(|e| e.id.to_string()).collect();
        let url = arr.url(&[("_id", ids.join(",")), ("_count", ID_BATCH.to_string())])?;
        arr.search(url, |r| {
            if let Some(id) = event_id(r, ext_url) {
                found_late.insert(id);
            }
            if let Some(id) = r["id"].as_str() {
                found_late.insert(id.to_owned());
            }
        })
        .await?;
    }
    // In seq order already (judge sorts the candidates).
    let missing: Vec<Finding> = candidates
        .into_iter()
        .filter(|e| !found_late.contains(&e.id.to_string()))
        .map(|e| Finding {
            id: e.id.to_string(),
            recorded: e.recorded.clone(),
            seq: Some(e.seq),
            arr_id: None,
        })
        .collect();
    let extra = judged.extra;

    Ok(Report {
        search,
        pages,
        window_start: start.map(|s| s.to_string()),
        observer,
        delivered: delivered.len(),
        at_arr: at_arr.len(),
        other_sources,
        pending: spooled.pending.len(),
        dead_lettered: judged.dead_lettered,
        log_lines_skipped: log.skipped,
        missing,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_is_the_url_for_batch_and_without_bundle_for_collection() {
        let b = |u, t| fhir_base(u, t).unwrap().to_string();
        assert_eq!(
            b("https://arr.example/fhir", BundleType::Batch),
            "https://arr.example/fhir/"
        );
        assert_eq!(
            b("https://arr.example/fhir/", BundleType::Transaction),
            "https://arr.example/fhir/"
        );
        assert_eq!(
            b("https://arr.example/fhir/Bundle", BundleType::Collection),
            "https://arr.example/fhir/"
        );
        assert_eq!(
            b("https://arr.example/Bundle/", BundleType::Collection),
            "https://arr.example/"
        );
        assert_eq!(
            b("https://arr.example/audit?x=1", BundleType::Collection),
            "https://arr.example/audit/"
        );
        assert!(fhir_base("ftp://x/", BundleType::Batch).is_err());
        assert_eq!(
            explicit_base("https://arr.example/r4").unwrap().to_string(),
            "https://arr.example/r4/"
        );
        assert!(explicit_base("arr.example/r4").is_err());
    }

    fn entry(n: u128) -> (Uuid, DeliveredEntry) {
        let id = Uuid::from_u128(n);
        let recorded = format!("2026-11-25T15:00:{:02}Z", n % 60);
        (
            id,
            DeliveredEntry {
                seq: n as u64,
                id,
                recorded,
            },
        )
    }

    #[test]
    fn pending_acknowledged_meanwhile_and_dead_lettered_events_are_not_discrepancies() {
        // Delivered before the search: 1..=5. At the ARR: 1, 2, and 7 (pending in the
        // spool: sent, not acknowledged), 8 (acknowledged while the search ran), 9 (never
        // delivered), and "x" (an id that is not a UUID). 3 is a dead letter, 4 was requeued
        // (back in the spool), 5 is gone.
        let delivered: HashMap<Uuid, DeliveredEntry> = (1..=5).map(entry).collect();
        let at = |n: u128| {
            let id = Uuid::from_u128(n).to_string();
            (id, ("2026-11-25T15:00:00Z".to_owned(), None))
        };
        let mut at_arr: HashMap<String, (String, Option<String>)> =
            [1, 2, 7, 8, 9].into_iter().map(at).collect();
        at_arr.insert(
            "x".into(),
            ("2026-11-25T15:01:00Z".into(), Some("srv-1".into())),
        );
        let pending: HashSet<Uuid> = [4, 7].into_iter().map(Uuid::from_u128).collect();
        let log_after: HashSet<Uuid> = (1..=5).chain([8]).map(Uuid::from_u128).collect();
        let dead: HashSet<String> = [Uuid::from_u128(3).to_string()].into();
        let j = judge(&Sides {
            delivered: &delivered,
            at_arr: &at_arr,
            pending: &pending,
            log_after: &log_after,
            dead: &dead,
        });
        let seqs: Vec<u64> = j.candidates.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [5]);
        assert_eq!(j.dead_lettered, 1);
        let extra: Vec<(&str, Option<&str>)> = j
            .extra
            .iter()
            .map(|f| (f.id.as_str(), f.arr_id.as_deref()))
            .collect();
        let nine = Uuid::from_u128(9).to_string();
        assert_eq!(extra, [(nine.as_str(), None), ("x", Some("srv-1"))]);
    }

    #[test]
    fn dead_letter_ids_come_from_dead_letters_and_requeued_ones() {
        let dir = tempfile::tempdir().unwrap();
        for (sub, id) in [(DEAD_LETTER_DIR, "a"), (REQUEUE_DIR, "b")] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
            let letter = serde_json::json!({"bundle": {"entry": [{"resource": {"id": id}}]},
                "status": 400});
            std::fs::write(dir.path().join(sub).join("1-x.json"), letter.to_string()).unwrap();
        }
        std::fs::write(dir.path().join(DEAD_LETTER_DIR).join("junk.json"), "{").unwrap();
        let ids = dead_letter_ids(dir.path());
        assert_eq!(ids, HashSet::from(["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn the_event_id_comes_from_the_extension_as_sent_or_as_rewritten_else_the_id() {
        let ext = "urn:balp-agent:event-id";
        let id = "2346e124-528c-5444-8984-2c6489689161";
        for value in [format!("urn:uuid:{id}"), format!("AuditEvent/{id}")] {
            let r = serde_json::json!({"id": "server-1", "extension": [
                {"url": "other", "valueString": "x"},
                {"url": ext, "valueIdentifier": {"value": value}}]});
            assert_eq!(event_id(&r, ext).as_deref(), Some(id));
        }
        let r = serde_json::json!({"id": id});
        assert_eq!(event_id(&r, ext).as_deref(), Some(id));
        let r = serde_json::json!({"id": "x", "extension": [{"url": ext, "valueIdentifier": {"value": "junk"}}]});
        assert_eq!(event_id(&r, ext).as_deref(), Some("x"));
    }
}
