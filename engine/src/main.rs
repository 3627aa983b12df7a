//! The `rapport` command: run the engine, validate a configuration, or run the demo.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rapport::config::Config;
use rapport::demo::DemoOptions;
use rapport::http::{self, AppState};
use rapport::metrics::Metrics;
use rapport::owners::Owners;
use rapport::replay::Until;
use rapport::runtime;
use rapport::state::StateStore;
use tracing_subscriber::EnvFilter;

/// mimalloc: the per-record work allocates small, short-lived values (decoded
/// touchpoints, actions); it runs about a tenth faster than with the system
/// allocator (`cargo bench --bench pipeline -- replay`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rapport: real-time customer journeys on Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the engine.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and every journey file it loads; prints each
    /// problem as `file:line:column: what is wrong; what to do` and exits non-zero.
    Validate {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the journeys over recorded touchpoints (JSON lines) in event time, with
    /// no broker: actions as JSON lines on stdout, a summary on stderr.
    Replay {
        /// Configuration file (TOML); its journeys are replayed.
        #[arg(long, short)]
        config: PathBuf,
        /// Recorded touchpoints, one JSON record per line ("-" for stdin).
        #[arg(long, short)]
        events: PathBuf,
        /// After the input, fire the waits due by this time (epoch ms or RFC 3339).
        #[arg(long, value_parser = rapport::replay::parse_time, conflicts_with = "flush")]
        at: Option<i64>,
        /// After the input, fire every pending wait, as if time ran on.
        #[arg(long)]
        flush: bool,
        /// Also print the delivery policy's decisions not to act (capped,
        /// deferred, no consent, suppressed, held out), each with its reason.
        #[arg(long)]
        decisions: bool,
    },
    /// Start a local broker, simulate customers on four channels, run the engine
    /// and show live actions; ends by itself and leaves nothing running.
    Demo(DemoOptions),
    /// Import a store (POS) or call-center export (CSV or JSON lines) into the
    /// touchpoint topic, mapped by a mapping file; rows that cannot be mapped go
    /// to a rejects file with their line and the reason.
    Import(rapport::import::ImportOptions),
    /// Collect web and app events (the Segment HTTP tracking API, RudderStack
    /// SDKs too) and chat webhooks into the touchpoint topic; see
    /// connectors/README.md and the [collector] section of rapport.toml.
    Collect {
        /// Configuration file (TOML) with [kafka] and [collector] sections.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    rapport::memory::tune_c_allocator();
    let cli = Cli::parse();
    let default_level = if matches!(
        cli.command,
        Cmd::Demo(_) | Cmd::Replay { .. } | Cmd::Import(_)
    ) {
        "warn"
    } else {
        "info"
    };
    let filter =
        EnvFilter::try_from_env("RAPPORT_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("RAPPORT_LOG_FORMAT").as_deref() == Ok("json") {
        fmt.json().init();
    } else {
        fmt.init();
    }
    match cli.command {
        Cmd::Validate { config } => validate(&config),
        Cmd::Replay {
            config,
            events,
            at,
            flush,
            decisions,
        } => {
            let until = match (at, flush) {
                (Some(t), _) => Until::At(t),
                (None, true) => Until::Flush,
                (None, false) => Until::EndOfInput,
            };
            replay(&config, &events, until, decisions)
        }
        Cmd::Run { config } => run(load_for_run(&config)?),
        Cmd::Demo(opts) => rapport::demo::run(opts),
        Cmd::Import(opts) => rapport::import::run(opts),
        Cmd::Collect { config } => rapport::collect::run(Config::load(&config)?, &config),
    }
}

/// `rapport validate`: every problem, one per line, and a non-zero exit.
fn validate(path: &Path) -> anyhow::Result<()> {
    match Config::load(path) {
        Ok(cfg) => {
            if let Err(e) = rapport::collect::check_mapping(&cfg, path) {
                eprintln!("{e}");
                std::process::exit(1);
            }
            let n = cfg.compiled.as_ref().map_or(0, |c| c.journeys().len());
            println!("{}: ok ({n} journeys)", path.display());
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

/// The configuration for `rapport run`, with the secrets it names read: a
/// missing pseudonymization secret or profile API token stops the start.
fn load_for_run(path: &Path) -> anyhow::Result<Config> {
    let mut cfg = Config::load(path)?;
    cfg.resolve_pseudonymizer(path)?;
    cfg.resolve_http_token(path)?;
    Ok(cfg)
}

/// `rapport replay`.
fn replay(config: &Path, events: &Path, until: Until, decisions: bool) -> anyhow::Result<()> {
    let mut cfg = Config::load(config)?;
    cfg.resolve_pseudonymizer(config)?;
    let started = std::time::Instant::now();
    let input: Box<dyn std::io::BufRead> = if events == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file =
            std::fs::File::open(events).with_context(|| format!("opening {}", events.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let s = rapport::replay::replay(&cfg, input, until, decisions, &mut out)?;
    for r in &s.rejections {
        eprintln!("dead letter: {r}");
    }
    eprintln!(
        "replayed {} records in {:.2} s: {} applied, {} dead letters, {} actions, {} decisions not to act",
        s.records,
        started.elapsed().as_secs_f64(),
        s.applied,
        s.rejected,
        s.actions,
        s.withheld
    );
    Ok(())
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // Listen for signals before anything slow starts, so an early SIGTERM is a clean stop.
    let (mut term, mut int) = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        anyhow::Ok((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let state = Arc::new(
        StateStore::open(&cfg.state)
            .with_context(|| format!("opening state at {}", cfg.state.path.display()))?,
    );
    let metrics = Metrics::new();
    let http_addr = cfg.http.addr();
    let emotion = cfg.emotion.clone();
    let (owner_cfg, instance_id) = (cfg.clone(), cfg.engine.instance_id.clone());
    let (bearer, pseudonymizer) = (cfg.http.bearer.clone(), cfg.pseudonymizer.clone());
    let mut engine = runtime::start(cfg, state.clone(), metrics.clone())?;
    let owners = Arc::new(Owners::new(&owner_cfg, engine.key_rule)?);
    let erasure =
        rapport::privacy::http::ErasureEndpoint::from_config(&owner_cfg, engine.key_rule)?;
    let stop = engine.stop_flag();
    if let Some(addr) = http_addr {
        let app = AppState {
            metrics,
            state,
            progress: engine.progress.clone(),
            emotion,
            owners: Some(owners),
            instance_id,
            bearer,
            pseudonymizer,
        };
        let router = match erasure {
            Some(e) => http::router(app).merge(e.routes()),
            None => http::router(app),
        };
        rt.spawn(async move {
            if let Err(e) = http::serve_router(addr, router).await {
                tracing::error!(error = %e, "http server stopped");
            }
        });
    }
    rt.block_on(async {
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => if engine.is_finished() { break },
            }
        }
    });
    tracing::info!("stopping: final commit");
    stop.store(true, Ordering::SeqCst);
    engine.join()
}
