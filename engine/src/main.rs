//! The `rapport` command: run the engine, validate a configuration, or run the demo.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rapport::config::Config;
use rapport::demo::DemoOptions;
use rapport::http::{self, AppState};
use rapport::metrics::Metrics;
use rapport::runtime;
use rapport::state::StateStore;
use tracing_subscriber::EnvFilter;

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
    /// Check a configuration file and exit.
    Validate {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a local broker, simulate customers on four channels, run the engine
    /// and show live actions; ends by itself and leaves nothing running.
    Demo(DemoOptions),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Cmd::Demo(_)) {
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
        Cmd::Validate { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Cmd::Run { config } => run(Config::load(&config)?),
        Cmd::Demo(opts) => rapport::demo::run(opts),
    }
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
    let mut engine = runtime::start(cfg, state.clone(), metrics.clone())?;
    let stop = engine.stop_flag();
    if let Some(addr) = http_addr {
        let app = AppState {
            metrics,
            state,
            progress: engine.progress.clone(),
        };
        rt.spawn(async move {
            if let Err(e) = http::serve(addr, app).await {
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
