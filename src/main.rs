//! `balp-agent` command line: run, check, test, presets (SPEC §2).

use anyhow::{Context, Result};
use balp_agent::config::{self, Config};
use balp_agent::decode::multiline::{self, Joiner};
use balp_agent::parse::presets;
use balp_agent::pipeline::{self, RunOptions, SourceProcessor};
use balp_agent::shutdown;
use balp_agent::source::{LineFlags, LogLine, StreamId, to_text};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// jemalloc instead of glibc's malloc: the hot path allocates and frees many short strings
/// per line, and glibc's malloc, free and fastbin consolidation cost about a sixth of the
/// agent's CPU (README, "Benchmark").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// One arena (the threads hand buffers to each other, so per-thread arenas only hold more
/// memory); freed pages go back to the kernel half a second after they fall idle (default
/// 10 s) and with MADV_DONTNEED, not as MADV_FREE pages that still count as resident. In the
/// pipeline bench this holds peak RSS at 31-32 MiB (35 with the defaults) at no measurable
/// CPU cost. `_RJEM_MALLOC_CONF` in the environment overrides it.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 46] = b"narenas:1,dirty_decay_ms:500,muzzy_decay_ms:0\0";

#[derive(Parser, Debug)]
#[command(
    name = "balp-agent",
    version,
    about = "Log lines in, IHE BALP AuditEvents out"
)]
struct Cli {
    /// Config file.
    #[arg(short, long, global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Format of the agent's own log on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Level of the agent's own log (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent (until SIGTERM/SIGINT).
    Run {
        /// Read what the sources hold now, deliver it, save positions and exit.
        #[arg(long)]
        once: bool,
    },
    /// Validate the config; every problem is listed as PATH:LINE:COL: key.path: message.
    Check,
    /// Run lines from FILE (or stdin) through a source's decoder and parsers; print each
    /// AuditEvent as one JSON line on stdout and a summary on stderr.
    Test {
        /// The source whose decoder and parsers to use.
        #[arg(long)]
        source: String,
        /// Input file (default: stdin).
        file: Option<PathBuf>,
    },
    /// List the built-in parser presets, or print one.
    Presets {
        #[command(subcommand)]
        action: Option<PresetsAction>,
    },
    /// Inspect the durable spool.
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
    },
    /// Compare what the agent delivered with what the ARR holds.
    Arr {
        #[command(subcommand)]
        action: ArrAction,
    },
    /// The tamper-evidence signing key (docs/tamper.md).
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Rebuild the tree from the events at the ARR (or in a directory of Bundles), check
    /// every seal's signature and chain, and list the events missing, altered or extra.
    /// Exit 0 clean, 1 findings, 2 errors.
    Verify {
        /// Read the events with a FHIR search of the ARR (`output` settings).
        #[arg(
            long,
            required_unless_present = "from_dir",
            conflicts_with = "from_dir"
        )]
        from_arr: bool,
        /// Read the events from the Bundle (or AuditEvent) JSON files in DIR.
        #[arg(long, value_name = "DIR")]
        from_dir: Option<PathBuf>,
        /// The leaf log (default: state_dir/tamper/leaves).
        #[arg(long, value_name = "FILE")]
        leaves: Option<PathBuf>,
        /// A trusted public key file (hex or base64); repeat for several. Default: every
        /// key in state_dir/tamper/keys/.
        #[arg(long = "key", value_name = "FILE")]
        keys: Vec<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Search page size (`_count`) with --from-arr.
        #[arg(long, default_value_t = 500)]
        page_size: usize,
    },
    /// Print the inclusion proof of one event under the latest seal that covers it (JSON,
    /// docs/tamper.md "Proof format").
    Prove {
        /// The event id (UUID).
        event_id: String,
        /// The leaf log (default: state_dir/tamper/leaves).
        #[arg(long, value_name = "FILE")]
        leaves: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum KeyAction {
    /// Print the public key and its fingerprint (creates the key pair if there is none).
    Show,
    /// Make a new key pair; the old public key stays trusted by verify. Takes effect at the
    /// agent's next start or reload (SIGHUP).
    Rotate,
}

#[derive(Subcommand, Debug)]
enum ArrAction {
    /// Search the ARR and report events delivered but absent there (missing) and events
    /// there with this agent's observer that it never delivered (extra). Exit 0 clean,
    /// 1 discrepancies, 2 errors.
    Check {
        /// Only events recorded within this last stretch (e.g. 24h, 7d); default: since the
        /// oldest event in the delivered log.
        #[arg(long, value_parser = parse_since)]
        since: Option<std::time::Duration>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Search page size (`_count`).
        #[arg(long, default_value_t = 500)]
        page_size: usize,
    },
}

fn parse_since(s: &str) -> Result<std::time::Duration, String> {
    config::units::parse_duration(s)
}

#[derive(Subcommand, Debug)]
enum SpoolAction {
    /// Pending events, Bundles and bytes, oldest age, dead letters.
    Status,
    /// Check every record's checksums (exit 1 if any is corrupt).
    Verify,
    /// List rejected Bundles; with --requeue, put them back for delivery.
    DeadLetters {
        /// Move the dead letters back into the spool (the running agent picks them up).
        #[arg(long)]
        requeue: bool,
    },
}

#[derive(Subcommand, Debug)]
enum PresetsAction {
    /// Print a preset as TOML.
    Show {
        /// Preset name.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    let result = match &cli.command {
        Command::Run { once } => cmd_run(&cli.config, *once),
        Command::Check => cmd_check(&cli.config),
        Command::Test { source, file } => cmd_test(&cli.config, source, file.as_deref()),
        Command::Presets { action } => cmd_presets(action.as_ref()),
        Command::Spool { action } => cmd_spool(&cli.config, action),
        Command::Arr {
            action:
                ArrAction::Check {
                    since,
                    json,
                    page_size,
                },
        } => Ok(cmd_arr_check(&cli.config, *since, *json, *page_size)),
        Command::Key { action } => cmd_key(&cli.config, action),
        Command::Verify {
            from_arr,
            from_dir,
            leaves,
            keys,
            json,
            page_size,
        } => Ok(cmd_verify(
            &cli.config,
            VerifyArgs {
                from_arr: *from_arr,
                from_dir: from_dir.as_deref(),
                leaves: leaves.as_deref(),
                keys,
                json: *json,
                page_size: *page_size,
            },
        )),
        Command::Prove { event_id, leaves } => cmd_prove(&cli.config, event_id, leaves.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("balp-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Log lines may echo attacker-controlled text: no ANSI escapes unless on a terminal.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    balp_agent::check::load(path).map_err(|e| {
        for p in &e.problems {
            eprintln!("{p}");
        }
        ExitCode::FAILURE
    })
}

fn cmd_check(path: &std::path::Path) -> Result<ExitCode> {
    match load_config(path) {
        Ok(cfg) => {
            for w in cfg.secret_file_warnings() {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok ({} source(s), {} parser(s), output {:?})",
                path.display(),
                cfg.sources.len(),
                cfg.parsers.len(),
                cfg.output.output_type
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}

fn cmd_run(path: &std::path::Path, once: bool) -> Result<ExitCode> {
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let path = path.to_path_buf();
    runtime.block_on(async move {
        let control = Arc::new(Control::default());
        let signals = tokio::spawn(watch_signals(control.clone(), path, cfg.agent.state_dir.clone()));
        let mut cfg = cfg;
        let mut resumed = false;
        let result = loop {
            let (trigger, _) = shutdown::channel();
            let trigger = Arc::new(trigger);
            control.set_trigger(trigger.clone());
            let options = RunOptions {
                once,
                resumed,
                reloading: control.reloading.clone(),
            };
            if let Err(e) = pipeline::run(cfg.clone(), options, &trigger).await {
                break Err(anyhow::Error::from(e));
            }
            match control.take_next_config() {
                Some(next) if !control.stopping() => {
                    tracing::info!(sources = next.sources.len(), "configuration reloaded; pipeline restarted from the spool and saved positions");
                    cfg = next;
                    resumed = true;
                }
                _ => break Ok(ExitCode::SUCCESS),
            }
        };
        signals.abort();
        result
    })
}

/// What the signal handler shares with the run loop: how to stop the current pipeline, and
/// the validated config a SIGHUP asked for.
#[derive(Default)]
struct Control {
    trigger: std::sync::Mutex<Option<Arc<shutdown::ShutdownTrigger>>>,
    next: std::sync::Mutex<Option<Config>>,
    stopping: std::sync::atomic::AtomicBool,
    /// Set while a reload stops the pipeline (it then records no Application Stop).
    reloading: Arc<std::sync::atomic::AtomicBool>,
}

impl Control {
    fn set_trigger(&self, t: Arc<shutdown::ShutdownTrigger>) {
        self.reloading
            .store(false, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut slot) = self.trigger.lock() {
            *slot = Some(t);
        }
    }
    fn trigger(&self) {
        if let Ok(slot) = self.trigger.lock()
            && let Some(t) = slot.as_ref()
        {
            t.trigger();
        }
    }
    fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.trigger();
    }
    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn reload(&self, cfg: Config) {
        if let Ok(mut next) = self.next.lock() {
            *next = Some(cfg);
        }
        self.reloading
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.trigger();
    }
    fn take_next_config(&self) -> Option<Config> {
        self.next.lock().ok().and_then(|mut n| n.take())
    }
}

async fn watch_signals(control: Arc<Control>, path: PathBuf, state_dir: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining and stopping"); control.stop(); }
            _ = int.recv() => { tracing::info!("SIGINT: draining and stopping"); control.stop(); }
            _ = hup.recv() => {
                // Validate first: an invalid config leaves the running one in place.
                match balp_agent::check::load(&path) {
                    Err(e) => {
                        for p in &e.problems {
                            tracing::error!(problem = %p, "SIGHUP: new configuration rejected; keeping the running one");
                        }
                    }
                    Ok(next) if next.agent.state_dir != state_dir => {
                        tracing::error!(
                            "SIGHUP: agent.state_dir cannot change while running (spool and positions live there); keeping the running configuration, restart to apply"
                        );
                    }
                    Ok(next) => {
                        tracing::info!("SIGHUP: configuration valid; reloading");
                        control.reload(next);
                    }
                }
            }
        }
    }
}

fn cmd_test(
    path: &std::path::Path,
    source: &str,
    file: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let Some(src) = cfg.source(source) else {
        eprintln!(
            "{}: no source named {source:?} (sources: {})",
            path.display(),
            cfg.sources
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::FAILURE);
    };
    let mut processor = match SourceProcessor::build(&cfg, src) {
        // Nothing is spooled here: no leaf hashes to make.
        Ok(p) => p.without_leaf_hashes(),
        Err(problems) => {
            for p in problems {
                eprintln!("{}: {p}", path.display());
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    // The alerts the lines would raise (event time only: no silent-source in a test).
    let mut alerts = match balp_agent::alert::AlertEngine::new(&cfg) {
        Ok(a) => a,
        Err(problems) => {
            for p in problems {
                eprintln!("{}: {p}", path.display());
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut facts = Vec::new();
    let (label, reader): (String, Box<dyn BufRead>) = match file {
        Some(f) => (
            f.display().to_string(),
            Box::new(std::io::BufReader::new(
                std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?,
            )),
        ),
        None => (
            "-".to_owned(),
            Box::new(std::io::BufReader::new(std::io::stdin())),
        ),
    };
    let stream = Arc::new(StreamId {
        source: Arc::from(source),
        key: format!("test:{label}"),
        path: PathBuf::from(&label),
    });
    let max = src.max_line_bytes.0 as usize;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut reader = reader;
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut truncated = 0u64;
    let mut invalid = 0u64;
    let mut physical = 0u64;
    let now = jiff::Timestamp::now();
    // Records spanning lines are joined as `run` joins them; the last one is flushed at EOF.
    let mut joiner = Joiner::new(src.multiline, max, multiline::DEFAULT_MAX_LINES);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {label}"))?;
        if n == 0 {
            break;
        }
        let start = offset;
        offset += n as u64;
        physical += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        let mut flags = LineFlags::default();
        if buf.len() > max {
            buf.truncate(max);
            flags.truncated = true;
            truncated += 1;
        }
        let (text, bad) = to_text(&buf);
        flags.invalid_utf8 = bad;
        invalid += u64::from(bad);
        let line = LogLine {
            stream: stream.clone(),
            offset: start,
            end: offset,
            text,
            flags,
        };
        for logical in joiner.push(line) {
            test_record(
                &mut processor,
                &mut alerts,
                &mut facts,
                &logical,
                now,
                &mut out,
            )?;
        }
    }
    if let Some(logical) = joiner.flush() {
        test_record(
            &mut processor,
            &mut alerts,
            &mut facts,
            &logical,
            now,
            &mut out,
        )?;
    }
    out.flush()?;
    let s = &processor.stats;
    eprintln!(
        "lines read: {physical}\nrecords (multiline = {}): {}\nevents: {}\nfolded lines: {}\nunreadable time: {}\nunmatched: {}\nmalformed (decoder): {}\ntruncated: {truncated}\ninvalid utf-8: {invalid}",
        src.multiline.as_str(),
        s.lines,
        s.events,
        s.folded,
        s.time_unreadable,
        s.unmatched,
        s.malformed
    );
    for name in processor.parser_names() {
        let n = processor.stats.matched.get(&name).copied().unwrap_or(0);
        eprintln!("parser {name}: matched {n}");
    }
    let raised = alerts.raised();
    eprintln!("alerts: {}", raised.values().sum::<u64>());
    for (rule, n) in raised {
        eprintln!("alert rule {rule}: raised {n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One record through the processor and the alert rules: its events, then the alerts they
/// raise, one JSON line each (the order `run` spools them in).
fn test_record(
    processor: &mut SourceProcessor,
    alerts: &mut balp_agent::alert::AlertEngine,
    facts: &mut Vec<balp_agent::alert::AlertFact>,
    record: &LogLine,
    now: jiff::Timestamp,
    out: &mut impl Write,
) -> Result<()> {
    let want = alerts.wants_facts().then_some(&mut *facts);
    for event in processor.process_facts(record, now, want) {
        writeln!(out, "{}", event.json)?;
    }
    for fact in facts.drain(..) {
        for alert in alerts.observe(&fact) {
            writeln!(out, "{}", alert.record.json)?;
        }
    }
    Ok(())
}

fn cmd_presets(action: Option<&PresetsAction>) -> Result<ExitCode> {
    match action {
        None => {
            for spec in presets::all() {
                println!("{:<18} {}", spec.name, spec.description);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(PresetsAction::Show { name }) => match presets::source_text(name) {
            Some(text) => {
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!(
                    "no preset named {name:?}; available: {}",
                    presets::names().join(", ")
                );
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

/// `arr check`: 0 clean, 1 discrepancies, 2 when the check could not be made (config, local
/// state, the ARR unreachable or answering wrongly).
fn cmd_arr_check(
    path: &std::path::Path,
    since: Option<std::time::Duration>,
    json: bool,
    page_size: usize,
) -> ExitCode {
    use balp_agent::arr::{self, CheckOptions};
    const ERROR: u8 = 2;
    let Ok(cfg) = load_config(path) else {
        return ExitCode::from(ERROR);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("balp-agent arr check: starting the async runtime: {e}");
            return ExitCode::from(ERROR);
        }
    };
    let opts = CheckOptions { since, page_size };
    let report = match runtime.block_on(arr::check(&cfg, &opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("balp-agent arr check: {e}");
            return ExitCode::from(ERROR);
        }
    };
    if json {
        match serde_json::to_string(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("balp-agent arr check: {e}");
                return ExitCode::from(ERROR);
            }
        }
    } else {
        print_arr_report(&report);
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_arr_report(r: &balp_agent::arr::Report) {
    println!("search:            {} ({} page(s))", r.search, r.pages);
    println!(
        "window:            {}",
        r.window_start
            .as_deref()
            .map_or("everything".to_owned(), |s| format!("recorded >= {s}"))
    );
    println!("observer:          {}", r.observer);
    println!("delivered:         {}", r.delivered);
    println!("at the ARR:        {}", r.at_arr);
    println!("other observers:   {}", r.other_sources);
    println!("pending in spool:  {}", r.pending);
    println!("dead-lettered:     {}", r.dead_lettered);
    if r.log_lines_skipped > 0 {
        println!("log lines skipped: {}", r.log_lines_skipped);
    }
    println!("missing:           {}", r.missing.len());
    for f in &r.missing {
        println!(
            "  missing {}  recorded {}  seq {}",
            f.id,
            f.recorded,
            f.seq.map_or("-".to_owned(), |s| s.to_string())
        );
    }
    println!("extra:             {}", r.extra.len());
    for f in &r.extra {
        match &f.arr_id {
            Some(a) => println!("  extra {}  recorded {}  ARR id {a}", f.id, f.recorded),
            None => println!("  extra {}  recorded {}", f.id, f.recorded),
        }
    }
    if r.is_clean() {
        println!("result: clean");
    } else {
        println!(
            "result: {} missing, {} extra",
            r.missing.len(),
            r.extra.len()
        );
    }
}

fn cmd_spool(path: &std::path::Path, action: &SpoolAction) -> Result<ExitCode> {
    use balp_agent::spool::{admin, verify};
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let state = &cfg.agent.state_dir;
    match action {
        SpoolAction::Status => {
            let r = admin::status(state, &cfg.spool, cfg.output.max_events)
                .with_context(|| format!("reading the spool under {}", state.display()))?;
            println!("source of figures: {}", r.from);
            println!("pending events:    {}", r.pending_events);
            println!("pending bundles:   {}", r.pending_bundles);
            println!("spool bytes:       {}", r.bytes);
            match r.oldest_age_seconds {
                Some(a) => println!("oldest pending:    {a:.1} s"),
                None => println!("oldest pending:    -"),
            }
            println!("quarantined:       {} (since start)", r.quarantined);
            println!("lost events:       {} (since start)", r.lost);
            println!("quarantine files:  {}", r.quarantine_files);
            println!("dead letters:      {}", r.dead_letters);
            Ok(ExitCode::SUCCESS)
        }
        SpoolAction::Verify => {
            let report = verify(state).with_context(|| format!("verifying {}", state.display()))?;
            println!(
                "{} segment(s), {} good record(s), acked up to {}, torn tail {} byte(s)",
                report.segments,
                report.records,
                report.acked.map_or("-".to_owned(), |a| a.to_string()),
                report.torn_tail_bytes
            );
            for p in &report.problems {
                println!(
                    "{}: offset {} ({} bytes): {}",
                    p.path.display(),
                    p.offset,
                    p.len,
                    p.what
                );
            }
            if report.is_clean() {
                println!("spool ok");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("spool has {} corrupt item(s)", report.problems.len());
                Ok(ExitCode::FAILURE)
            }
        }
        SpoolAction::DeadLetters { requeue } => {
            let letters = admin::dead_letters(state);
            for l in &letters {
                println!(
                    "{}  status {}  {} event(s)  {}",
                    l.path.display(),
                    l.status.map_or("-".to_owned(), |s| s.to_string()),
                    l.events,
                    l.time.as_deref().unwrap_or("-")
                );
            }
            println!("{} dead letter(s)", letters.len());
            if *requeue {
                let n = admin::requeue_dead_letters(state).with_context(|| {
                    format!("requeueing dead letters under {}", state.display())
                })?;
                println!(
                    "{n} dead letter(s) requeued: the agent puts them back into the spool (at once if running, else at its next start)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cmd_key(path: &std::path::Path, action: &KeyAction) -> Result<ExitCode> {
    use balp_agent::tamper::keys::AgentKey;
    use base64::Engine as _;
    let Ok(cfg) = load_config(path) else {
        return Ok(ExitCode::FAILURE);
    };
    let state = &cfg.agent.state_dir;
    let key = match action {
        KeyAction::Show => AgentKey::load_or_create(state)?,
        KeyAction::Rotate => {
            let key = AgentKey::rotate(state)?;
            eprintln!(
                "new key created; the running agent signs with it from its next start or reload (SIGHUP)"
            );
            key
        }
    };
    let public = key.public();
    println!("algorithm: ed25519");
    println!(
        "public key (hex): {}",
        balp_agent::tamper::merkle::hex(&public)
    );
    println!(
        "public key (base64): {}",
        base64::engine::general_purpose::STANDARD.encode(public)
    );
    println!(
        "fingerprint (SHA-256 of the public key): {}",
        key.fingerprint()
    );
    println!(
        "file: {}",
        state
            .join(balp_agent::tamper::TAMPER_DIR)
            .join(balp_agent::tamper::keys::PUBKEY_DIR)
            .join(format!("{}.pub", key.fingerprint()))
            .display()
    );
    Ok(ExitCode::SUCCESS)
}

struct VerifyArgs<'a> {
    from_arr: bool,
    from_dir: Option<&'a std::path::Path>,
    leaves: Option<&'a std::path::Path>,
    keys: &'a [PathBuf],
    json: bool,
    page_size: usize,
}

fn leaves_path(cfg: &Config, given: Option<&std::path::Path>) -> PathBuf {
    given.map(PathBuf::from).unwrap_or_else(|| {
        cfg.agent
            .state_dir
            .join(balp_agent::tamper::TAMPER_DIR)
            .join(balp_agent::spool::leaves::LEAVES_FILE)
    })
}

/// Every AuditEvent in the JSON files of `dir` (Bundles' entries, or AuditEvents), in file
/// name order.
fn events_in_dir(dir: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", f.display()))?;
        match v["resourceType"].as_str() {
            Some("Bundle") => {
                for e in v["entry"].as_array().into_iter().flatten() {
                    out.push(e["resource"].clone());
                }
            }
            Some("AuditEvent") => out.push(v),
            _ => {}
        }
    }
    Ok(out)
}

fn cmd_verify(path: &std::path::Path, args: VerifyArgs<'_>) -> ExitCode {
    const ERROR: u8 = 2;
    let Ok(cfg) = load_config(path) else {
        return ExitCode::from(ERROR);
    };
    match verify_inner(&cfg, &args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(t) => println!("{t}"),
                    Err(e) => {
                        eprintln!("balp-agent verify: {e}");
                        return ExitCode::from(ERROR);
                    }
                }
            } else {
                println!(
                    "{} leaves, {} events read, {} seals valid (covering {} leaves), {} pending in the spool or dead-lettered",
                    report.leaves,
                    report.events,
                    report.seals_ok,
                    report.sealed_size,
                    report.pending
                );
                for f in &report.findings {
                    let leaf = f.leaf.map(|l| format!(" leaf {l}")).unwrap_or_default();
                    println!("{} {}{}: {}", f.kind, f.id, leaf, f.detail);
                }
                if report.is_clean() {
                    println!(
                        "clean: every leaf's event is at the output unaltered, every seal verifies and chains"
                    );
                }
            }
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("balp-agent verify: {e:#}");
            ExitCode::from(ERROR)
        }
    }
}

fn verify_inner(
    cfg: &Config,
    args: &VerifyArgs<'_>,
) -> Result<balp_agent::tamper::verify::VerifyReport> {
    use balp_agent::tamper::{keys, verify};
    let state = &cfg.agent.state_dir;
    let leaves_file = leaves_path(cfg, args.leaves);
    let leaves = balp_agent::spool::leaves::read_entries(&leaves_file, u64::MAX)?;
    let trusted = if args.keys.is_empty() {
        keys::recorded_public_keys(state)?
    } else {
        args.keys
            .iter()
            .map(|p| keys::read_public_key(p))
            .collect::<Result<Vec<_>, _>>()?
    };
    if trusted.is_empty() {
        anyhow::bail!(
            "no public key: none in {} and no --key given",
            state
                .join(balp_agent::tamper::TAMPER_DIR)
                .join(keys::PUBKEY_DIR)
                .display()
        );
    }
    let events = match (args.from_dir, args.from_arr) {
        (Some(dir), _) => events_in_dir(dir)?,
        (None, true) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let mut out = Vec::new();
            runtime.block_on(balp_agent::arr::search_all(cfg, args.page_size, |r| {
                out.push(r.clone())
            }))?;
            out
        }
        (None, false) => anyhow::bail!("give --from-arr or --from-dir DIR"),
    };
    // Not yet delivered, or rejected: absent for a known reason.
    let mut pending = balp_agent::spool::delivered::spool_ids(state)?.pending;
    pending.extend(balp_agent::arr::dead_letter_uuids(state));
    let observer = pipeline::map_context(cfg, "", Vec::new()).observer_display;
    let input = verify::VerifyInput {
        leaves: &leaves,
        keys: &trusted,
        observer: &observer,
        extension_url: &cfg.agent.event_id_extension,
        pending: &pending,
    };
    Ok(verify::verify(&input, &events))
}

fn cmd_prove(
    path: &std::path::Path,
    event_id: &str,
    leaves: Option<&std::path::Path>,
) -> Result<ExitCode> {
    use balp_agent::tamper::{keys, seal, verify};
    let Ok(cfg) = load_config(path) else {
        return Ok(ExitCode::FAILURE);
    };
    let id = uuid::Uuid::parse_str(event_id.trim_start_matches("urn:uuid:"))
        .with_context(|| format!("{event_id:?} is not an event id (UUID)"))?;
    let state = &cfg.agent.state_dir;
    let entries = balp_agent::spool::leaves::read_entries(&leaves_path(&cfg, leaves), u64::MAX)?;
    let seals_file = state
        .join(balp_agent::tamper::TAMPER_DIR)
        .join(seal::SEALS_FILE);
    let seals: Vec<serde_json::Value> = match std::fs::read_to_string(&seals_file) {
        Ok(text) => text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", seals_file.display())),
    };
    let trusted = keys::recorded_public_keys(state)?;
    let proof = verify::prove(id, &entries, &seals, &trusted)?;
    println!("{}", serde_json::to_string_pretty(&proof)?);
    Ok(ExitCode::SUCCESS)
}
