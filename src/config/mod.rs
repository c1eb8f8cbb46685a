//! The configuration file (TOML, SPEC §3): typed structs with the documented defaults. The
//! bottom of the house: plain settings every stage takes, depending on no stage. Reading and
//! validating a file is [`crate::check`], which lists every problem of a file at once as
//! `PATH:LINE:COL: key.path: message`.

pub mod alerts;
pub mod parser;
pub mod units;

pub use alerts::{AlertConfig, AlertRuleKind};

use parser::ParserSpec;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use units::{ByteSize, ConfigDuration};

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/balp-agent/config.toml";

/// Default url of the root extension that carries the event id (SPEC §4).
pub const DEFAULT_EVENT_ID_EXTENSION: &str = "urn:balp-agent:event-id";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[agent]`
    #[serde(default)]
    pub agent: AgentConfig,
    /// `[[sources]]`
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// `[[parsers]]` (user-defined, same schema as presets)
    #[serde(default)]
    pub parsers: Vec<ParserSpec>,
    /// `[output]`
    #[serde(default)]
    pub output: OutputConfig,
    /// `[spool]`
    #[serde(default)]
    pub spool: SpoolConfig,
    /// `[metrics]`
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// `[[alerts]]`: discrepancy-alert rules; the built-in defaults apply to rules not
    /// named here (docs/alerts.md).
    #[serde(default)]
    pub alerts: Vec<AlertConfig>,
    /// `[tamper]`
    #[serde(default)]
    pub tamper: TamperConfig,
}

/// `[tamper]`: the signed Merkle tree over every event (docs/tamper.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TamperConfig {
    /// Keep the tree and emit seals.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A seal event is emitted this often (and at every clean stop).
    #[serde(default = "default_seal_interval")]
    pub seal_interval: ConfigDuration,
}

impl Default for TamperConfig {
    fn default() -> Self {
        TamperConfig {
            enabled: true,
            seal_interval: default_seal_interval(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_seal_interval() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(3600))
}

/// `[agent]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Checkpoints, spool and dead letters live here.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Host name used in event ids and as the server's name; default: the system host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// `minimal` or `comprehensive` (BALP §1:52.4.1.3).
    #[serde(default)]
    pub mode: Mode,
    /// `[agent.observer]` → `AuditEvent.source`.
    #[serde(default)]
    pub observer: ObserverConfig,
    /// Url of the root extension carrying the event id.
    #[serde(default = "default_event_id_extension")]
    pub event_id_extension: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            state_dir: default_state_dir(),
            hostname: None,
            mode: Mode::default(),
            observer: ObserverConfig::default(),
            event_id_extension: default_event_id_extension(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/balp-agent")
}

fn default_event_id_extension() -> String {
    DEFAULT_EVENT_ID_EXTENSION.to_owned()
}

/// How much detail events carry.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Identifiers only.
    #[default]
    Minimal,
    /// Identifiers plus the names and details the log carries.
    Comprehensive,
}

/// `[agent.observer]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserverConfig {
    /// `source.observer.display`; default `balp-agent@<hostname>`.
    #[serde(default)]
    pub display: Option<String>,
    /// `source.site`.
    #[serde(default)]
    pub site: Option<String>,
    /// security-source-type code for `source.type` (default 4, Application Server).
    #[serde(default = "default_observer_type", rename = "type")]
    pub type_code: String,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        ObserverConfig {
            display: None,
            site: None,
            type_code: default_observer_type(),
        }
    }
}

fn default_observer_type() -> String {
    "4".to_owned()
}

/// `[[sources]] type`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    /// Tail files matched by globs.
    File,
    /// Receive syslog over the network.
    Syslog,
    /// Follow the systemd journal.
    Journald,
    /// Take AuditEvents from a JetStream durable pull consumer (a forwarder).
    Nats,
}

/// `[[sources]] read_from`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// Read files never seen before from their first byte.
    Beginning,
    /// Start at the current end of files present at the first start (later files: from 0).
    #[default]
    End,
}

/// `[[sources]] decode`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DecodeKind {
    /// rsyslog file formats.
    #[default]
    Syslog,
    /// The line as it is.
    Raw,
    /// One JSON object per line.
    Json,
    /// PostgreSQL stderr / logging_collector files (`log_line_prefix` says how lines start).
    Postgres,
    /// PostgreSQL csvlog (use with `multiline = "csv"`).
    #[serde(rename = "postgres_csv")]
    PostgresCsv,
    /// PostgreSQL jsonlog.
    #[serde(rename = "postgres_json")]
    PostgresJson,
}

impl DecodeKind {
    /// Every decoder: the one table of decoder names.
    pub const ALL: &'static [DecodeKind] = &[
        DecodeKind::Syslog,
        DecodeKind::Raw,
        DecodeKind::Json,
        DecodeKind::Postgres,
        DecodeKind::PostgresCsv,
        DecodeKind::PostgresJson,
    ];

    /// The names of [`ALL`](Self::ALL), for messages and schema checks.
    pub const NAMES: &'static [&'static str] = &{
        let mut names = [""; DecodeKind::ALL.len()];
        let mut i = 0;
        while i < DecodeKind::ALL.len() {
            names[i] = DecodeKind::ALL[i].as_str();
            i += 1;
        }
        names
    };

    /// The name used in TOML.
    pub const fn as_str(self) -> &'static str {
        match self {
            DecodeKind::Syslog => "syslog",
            DecodeKind::Raw => "raw",
            DecodeKind::Json => "json",
            DecodeKind::Postgres => "postgres",
            DecodeKind::PostgresCsv => "postgres_csv",
            DecodeKind::PostgresJson => "postgres_json",
        }
    }
}

/// The `multiline` setting of a source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Multiline {
    /// Every line is a record.
    #[default]
    None,
    /// Lines starting with TAB or space continue the previous record (PostgreSQL stderr).
    Indented,
    /// A record ends when its double quotes are balanced (PostgreSQL csvlog).
    Csv,
}

impl Multiline {
    /// The name used in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            Multiline::None => "none",
            Multiline::Indented => "indented",
            Multiline::Csv => "csv",
        }
    }
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `"x"`
    One(String),
    /// `["x", "y"]`
    Many(Vec<String>),
}

impl OneOrMany {
    /// As a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `[[sources]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name; part of every event's identity.
    pub name: String,
    /// `file`, `syslog` or `journald`.
    #[serde(rename = "type")]
    pub source_type: SourceType,
    /// Globs of files to follow.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs of files to skip (matched against the full path and the file name).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where to start in files never seen before.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// How a line is split into header and message.
    #[serde(default)]
    pub decode: DecodeKind,
    /// Preset names and/or `[[parsers]]` names, tried in order.
    #[serde(default)]
    pub parsers: Vec<String>,
    /// How physical lines join into records (`none`, `indented`, `csv`).
    #[serde(default)]
    pub multiline: Multiline,
    /// Take the client from the first X-Forwarded-For hop a parser captured. Off by default:
    /// the header is set by the client unless a trusted proxy overwrites it.
    #[serde(default)]
    pub trust_forwarded_for: bool,
    /// `decode = "postgres"`: PostgreSQL's `log_line_prefix` (default `%m [%p] %q%u@%d `).
    #[serde(default)]
    pub log_line_prefix: Option<String>,
    /// Lines longer than this are cut and flagged.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: ByteSize,
    /// IANA zone for stamps without an offset; default: the system's local zone.
    #[serde(default)]
    pub timezone: Option<String>,
    /// FHIR base path(s); requests outside produce no event. Default `/fhir`.
    #[serde(default)]
    pub fhir_base: Option<OneOrMany>,
    /// How often files are checked for growth, rotation and new matches.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: ConfigDuration,
    /// `syslog`: where to listen.
    #[serde(default)]
    pub listen: Option<String>,
    /// `journald`: journal matches.
    #[serde(default, rename = "match")]
    pub journal_match: Vec<String>,
    /// `journald`: the journal namespace to read (`journalctl --namespace`), for services
    /// run with `LogNamespace=`; unset = the default namespace.
    #[serde(default, rename = "namespace")]
    pub journal_namespace: Option<String>,
    /// `syslog` with `tls://`: `[sources.tls]` (server certificate, optional client CA).
    #[serde(default)]
    pub tls: Option<ListenTlsConfig>,
    /// `syslog` over TCP/TLS: further connections are refused while this many are open.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// `syslog`: longer messages (frames) are cut here and flagged truncated.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: ByteSize,
    /// `nats`: `[sources.nats]` (servers, stream, consumer, auth).
    #[serde(default)]
    pub nats: Option<NatsConfig>,
}

/// `[sources.tls]`: the TLS server side of a `tls://` syslog listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTlsConfig {
    /// Server certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Server private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs (PEM).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

fn default_max_connections() -> usize {
    256
}

fn default_max_frame_bytes() -> ByteSize {
    ByteSize(64 * 1024)
}

fn default_max_line_bytes() -> ByteSize {
    ByteSize(64 * 1024)
}

fn default_poll_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(250))
}

impl SourceConfig {
    /// The FHIR base paths, normalised without a trailing slash.
    pub fn fhir_bases(&self) -> Vec<String> {
        let raw = self
            .fhir_base
            .as_ref()
            .map(OneOrMany::to_vec)
            .unwrap_or_else(|| vec!["/fhir".to_owned()]);
        raw.into_iter()
            .map(|b| {
                let t = b.trim_end_matches('/');
                if t.starts_with('/') {
                    t.to_owned()
                } else {
                    format!("/{t}")
                }
            })
            .collect()
    }
}

/// `[output] type`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputType {
    /// POST to the ARR.
    Http,
    /// One file per Bundle.
    #[default]
    Directory,
    /// One Bundle per line on stdout.
    Stdout,
    /// Publish each AuditEvent to a NATS JetStream stream.
    Nats,
}

/// `[output] bundle_type`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BundleType {
    /// `collection` (no `request` on entries).
    #[default]
    Collection,
    /// `batch`: entries carry `request: PUT AuditEvent/<id>` (idempotent).
    Batch,
    /// `transaction`: entries carry `request: PUT AuditEvent/<id>` (idempotent).
    Transaction,
}

impl BundleType {
    /// The FHIR code.
    pub fn as_str(self) -> &'static str {
        match self {
            BundleType::Collection => "collection",
            BundleType::Batch => "batch",
            BundleType::Transaction => "transaction",
        }
    }
}

/// `[output] compression`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// `Content-Encoding: gzip`.
    #[default]
    Gzip,
    /// Plain JSON.
    None,
}

/// `[output]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Where Bundles go.
    #[serde(default, rename = "type")]
    pub output_type: OutputType,
    /// `http`: the Bundle is POSTed to exactly this URL.
    #[serde(default)]
    pub url: Option<String>,
    /// `http`: the FHIR base `balp-agent arr check` searches (default: derived from `url`).
    #[serde(default)]
    pub fhir_base: Option<String>,
    /// `directory`: where Bundle files are written.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Bundle type.
    #[serde(default)]
    pub bundle_type: BundleType,
    /// Events per Bundle at most.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Bundles in flight at once (each retries in its own slot; acknowledged in order).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Uncompressed JSON bytes per Bundle at most.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// A partial Bundle is sent after this long.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: ConfigDuration,
    /// `gzip` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `[output.retry]`
    #[serde(default)]
    pub retry: RetryConfig,
    /// `[output.auth]`
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[output.tls]`
    #[serde(default)]
    pub tls: TlsConfig,
    /// `nats`: `[output.nats]` (servers, subject, stream, auth).
    #[serde(default)]
    pub nats: Option<NatsConfig>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            output_type: OutputType::default(),
            url: None,
            fhir_base: None,
            path: None,
            bundle_type: BundleType::default(),
            max_events: default_max_events(),
            max_in_flight: default_max_in_flight(),
            max_bytes: default_max_bytes(),
            flush_interval: default_flush_interval(),
            compression: Compression::default(),
            timeout: default_timeout(),
            headers: BTreeMap::new(),
            retry: RetryConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            nats: None,
        }
    }
}

fn default_max_events() -> usize {
    500
}
fn default_max_in_flight() -> usize {
    1
}
fn default_max_bytes() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_flush_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn default_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

/// `[output.retry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff ceiling.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: ConfigDuration,
    /// Largest backoff ceiling.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: ConfigDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_initial_backoff() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn default_max_backoff() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}

/// `[output.auth] type`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Bearer <token_file contents>`.
    Bearer,
    /// HTTP basic with `username` and `password_file`.
    Basic,
    /// OAuth2 client credentials.
    Oauth2,
}

/// `[output.auth]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Which scheme.
    #[serde(default, rename = "type")]
    pub auth_type: AuthType,
    /// `bearer`: file holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `basic`: user name.
    #[serde(default)]
    pub username: Option<String>,
    /// `basic`: file holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `oauth2`: token endpoint.
    #[serde(default)]
    pub token_url: Option<String>,
    /// `oauth2`: client id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `oauth2`: file holding the client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// `oauth2`: requested scope.
    #[serde(default)]
    pub scope: Option<String>,
}

/// `[output.tls]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Extra CA certificates (PEM) to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mTLS.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Skip server certificate verification (never in production; logged loudly).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `[output.nats]` and `[sources.nats]`: where the JetStream stream is and how to log in.
/// One table for both sides, so an agent and a forwarder are configured alike.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); any one of them is enough to
    /// find the cluster.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Output: the subject each event is published to; `{hostname}` is replaced by
    /// `agent.hostname` (or the system's). Default `balp.audit.{hostname}`.
    #[serde(default)]
    pub subject: Option<String>,
    /// The stream: checked to exist at start (output, optional), read from (source).
    #[serde(default)]
    pub stream: Option<String>,
    /// Source: the durable consumer's name, shared by every forwarder of the stream.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Source: only subjects matching this (a consumer created by the agent gets it).
    #[serde(default)]
    pub subject_filter: Option<String>,
    /// Source: how long JetStream waits for an ack before redelivering; the agent sends
    /// progress acks while an event waits for the ARR.
    #[serde(default = "default_nats_ack_wait")]
    pub ack_wait: ConfigDuration,
    /// Source: messages handed out but not yet acknowledged, per consumer (a consumer
    /// created by the agent gets it).
    #[serde(default = "default_nats_max_ack_pending")]
    pub max_ack_pending: i64,
    /// Source: messages fetched per pull request.
    #[serde(default = "default_nats_batch")]
    pub batch: usize,
    /// File holding a token (`authorization { token }` on the server).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// File holding an NKey seed (`SU...`).
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (JWT and seed), as `nsc` writes them.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// User name (with `password_file`).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password of `username`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificate, client certificate and key for `tls://` servers.
    #[serde(default)]
    pub tls: TlsConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            servers: Vec::new(),
            subject: None,
            stream: None,
            consumer: None,
            subject_filter: None,
            ack_wait: default_nats_ack_wait(),
            max_ack_pending: default_nats_max_ack_pending(),
            batch: default_nats_batch(),
            token_file: None,
            nkey_seed_file: None,
            credentials_file: None,
            username: None,
            password_file: None,
            tls: TlsConfig::default(),
        }
    }
}

fn default_nats_ack_wait() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}
fn default_nats_max_ack_pending() -> i64 {
    20_000
}
fn default_nats_batch() -> usize {
    500
}

/// `[spool] when_full`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    /// Stop reading inputs until there is room.
    #[default]
    Block,
}

/// `[spool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Disk quota of the spool.
    #[serde(default = "default_spool_max")]
    pub max_bytes: ByteSize,
    /// What to do when full.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Reading waits while the state directory's filesystem has less free space than this.
    #[serde(default = "default_spool_min_free")]
    pub min_free: ByteSize,
    /// A segment file is rolled once the next record would take it past this size.
    #[serde(default = "default_spool_segment_size")]
    pub segment_size: ByteSize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: default_spool_max(),
            when_full: WhenFull::default(),
            min_free: default_spool_min_free(),
            segment_size: default_spool_segment_size(),
        }
    }
}

fn default_spool_max() -> ByteSize {
    ByteSize(1 << 30)
}

fn default_spool_segment_size() -> ByteSize {
    ByteSize(64 << 20)
}

fn default_spool_min_free() -> ByteSize {
    ByteSize(64 << 20)
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` to serve `/metrics` and `/health` on.
    pub listen: String,
    /// `/health` turns unhealthy when the spool is fuller than this fraction of `max_bytes`.
    #[serde(default = "default_spool_threshold")]
    pub spool_threshold: f64,
    /// `/health` turns unhealthy when delivery has been failing for longer than this.
    #[serde(default = "default_delivery_failure_threshold")]
    pub delivery_failure_threshold: ConfigDuration,
}

fn default_spool_threshold() -> f64 {
    0.9
}

fn default_delivery_failure_threshold() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}

impl MetricsConfig {
    /// A config listening on `listen` with the default thresholds.
    pub fn new(listen: impl Into<String>) -> MetricsConfig {
        MetricsConfig {
            listen: listen.into(),
            spool_threshold: default_spool_threshold(),
            delivery_failure_threshold: default_delivery_failure_threshold(),
        }
    }
}

/// A config that could not be loaded: every problem found, each already formatted as
/// `PATH:LINE:COL: key.path: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    /// The problems, one line each.
    pub problems: Vec<String>,
}

impl Config {
    /// Make relative paths (state dir, include globs, output path, credential and TLS files)
    /// relative to `base`, the directory of the config file, so the agent behaves the same
    /// whatever its working directory.
    pub fn resolve_relative(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.agent.state_dir);
        for source in &mut self.sources {
            for glob in &mut source.include {
                if Path::new(glob.as_str()).is_relative() {
                    *glob = base.join(glob.as_str()).to_string_lossy().into_owned();
                }
            }
            if let Some(tls) = &mut source.tls {
                fix(&mut tls.cert_file);
                fix(&mut tls.key_file);
                if let Some(ca) = &mut tls.client_ca_file {
                    fix(ca);
                }
            }
        }
        let out = &mut self.output;
        for p in [
            &mut out.path,
            &mut out.auth.token_file,
            &mut out.auth.password_file,
            &mut out.auth.client_secret_file,
            &mut out.tls.ca_file,
            &mut out.tls.client_cert_file,
            &mut out.tls.client_key_file,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }

    /// The host name to use: configured, else the system's.
    pub fn hostname(&self) -> String {
        self.agent.hostname.clone().unwrap_or_else(system_hostname)
    }

    /// The source with this name.
    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name)
    }
}

impl Config {
    /// Secret files (tokens, passwords, client secrets, private keys) that group or others
    /// can read: one warning each, naming the key, the file and its mode. Never the content.
    pub fn secret_file_warnings(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let auth = &self.output.auth;
        let mut files: Vec<(String, &PathBuf)> = [
            ("output.auth.token_file", &auth.token_file),
            ("output.auth.password_file", &auth.password_file),
            ("output.auth.client_secret_file", &auth.client_secret_file),
            (
                "output.tls.client_key_file",
                &self.output.tls.client_key_file,
            ),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.as_ref().map(|p| (k.to_owned(), p)))
        .collect();
        for (i, s) in self.sources.iter().enumerate() {
            if let Some(tls) = &s.tls {
                files.push((format!("sources[{i}].tls.key_file"), &tls.key_file));
            }
        }
        files
            .into_iter()
            .filter_map(|(key, path)| {
                let mode = std::fs::metadata(path).ok()?.permissions().mode();
                (mode & 0o077 != 0).then(|| {
                    format!(
                        "{key}: {} is readable by group or others (mode {:04o}); chmod 600 it",
                        path.display(),
                        mode & 0o7777
                    )
                })
            })
            .collect()
    }
}

/// The system host name (`/proc/sys/kernel/hostname`, then `$HOSTNAME`, then `localhost`).
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}
