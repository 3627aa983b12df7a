//! The Kafka broker for development, tests and the demo: an existing cluster named
//! by `RAPPORT_KAFKA_BOOTSTRAP`, or the local single-node broker that
//! `deploy/kafka.sh` fetches from Maven Central and starts.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::config::BOOTSTRAP_ENV;

/// Where `deploy/kafka.sh` lives: `$RAPPORT_KAFKA_SCRIPT`, else this source tree's copy.
pub fn script() -> PathBuf {
    std::env::var_os("RAPPORT_KAFKA_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kafka.sh")))
}

/// A broker to use, and whether this process started it (and so should stop it).
#[derive(Debug, Clone)]
pub struct Broker {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// True when this call started the local broker.
    pub started_here: bool,
}

/// The configured cluster, or the local broker (reused when already running).
pub fn ensure() -> anyhow::Result<Broker> {
    if let Ok(b) = std::env::var(BOOTSTRAP_ENV) {
        if !b.trim().is_empty() {
            return Ok(Broker {
                bootstrap: b,
                started_here: false,
            });
        }
    }
    let running = Command::new("bash")
        .arg(script())
        .arg("status")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let out = Command::new("bash")
        .arg(script())
        .arg("start")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script().display()))?;
    if !out.status.success() {
        bail!(
            "the local Kafka broker did not start ({}); see the messages above",
            script().display()
        );
    }
    let bootstrap = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    if bootstrap.is_empty() {
        bail!("{} start printed no bootstrap address", script().display());
    }
    Ok(Broker {
        bootstrap,
        started_here: !running,
    })
}

/// Stops the local broker.
pub fn stop() -> anyhow::Result<()> {
    let s = Command::new("bash").arg(script()).arg("stop").status()?;
    if !s.success() {
        bail!("{} stop failed", script().display());
    }
    Ok(())
}
