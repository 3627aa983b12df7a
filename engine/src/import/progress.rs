//! Import progress: a bar with rate and ETA on a terminal, plain lines (every
//! few seconds) in logs and pipes.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Counts so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Rows read.
    pub read: u64,
    /// Rows mapped and handed to the producer.
    pub produced: u64,
    /// Rows rejected.
    pub rejected: u64,
}

/// Shows progress through an input of `total` bytes.
pub enum Progress {
    /// On a terminal.
    Bar(ProgressBar),
    /// Not a terminal: a line every few seconds.
    Lines {
        /// Input size, bytes.
        total: u64,
        /// When the import started.
        started: Instant,
        /// When the last line was printed.
        last: Instant,
    },
}

/// How often plain progress lines are printed.
const LINE_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    /// A bar when stderr is a terminal, else plain lines.
    pub fn new(total: u64) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            Progress::Bar(bar)
        } else {
            let now = Instant::now();
            Progress::Lines {
                total,
                started: now,
                last: now,
            }
        }
    }

    /// Reports `bytes` of the input consumed with `c` so far.
    pub fn update(&mut self, bytes: u64, c: Counts) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(bytes);
                if c.read.is_multiple_of(256) {
                    bar.set_message(message(c));
                }
            }
            Progress::Lines {
                total,
                started,
                last,
            } => {
                if last.elapsed() < LINE_EVERY {
                    return;
                }
                *last = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let done = bytes as f64 / (*total).max(1) as f64;
                let eta = if done > 0.0 {
                    secs * (1.0 - done) / done
                } else {
                    0.0
                };
                eprintln!(
                    "import: {:.0}% {}, {:.0} rows/s, ETA {eta:.0} s",
                    done * 100.0,
                    message(c),
                    c.read as f64 / secs
                );
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn message(c: Counts) -> String {
    format!(
        "{} rows read, {} produced, {} rejected",
        c.read, c.produced, c.rejected
    )
}
