//! `rapport import`: a store's POS export or a contact center's call export,
//! as CSV or JSON lines, into the touchpoint topic.
//!
//! Each row is mapped to a touchpoint by a mapping file ([`mapping`]), checked
//! as the engine would check it, and produced keyed by customer; a row that
//! cannot be mapped goes to the rejects file with its line and the reason
//! ([`rejects`]). The import succeeds only when the broker has acknowledged
//! every produced record. Rows without an id get one derived from the row, so
//! importing a file again is harmless: the engine skips event ids a profile
//! has already seen.

pub mod deliver;
pub mod input;
pub mod mapping;
pub mod progress;
pub mod rejects;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{Config, KafkaConfig};

use self::deliver::Sender;
use self::input::{Item, RawRow, Reader};
use self::mapping::{Format, Mapping};
use self::progress::{Counts, Progress};
use self::rejects::Rejects;

/// `rapport import` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportOptions {
    /// The engine's configuration (TOML): its Kafka settings and touchpoint topic.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The mapping of the export's columns to touchpoint fields (TOML).
    #[arg(long, short)]
    pub mapping: PathBuf,
    /// The export: `.csv` or `.jsonl` (or set `format` in the mapping).
    #[arg(long, short)]
    pub input: PathBuf,
    /// Where rows that cannot be imported go, with line and reason: `.csv`, else
    /// JSON lines. Default: beside the input, `<input>.rejects.csv|jsonl`.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Touchpoint topic to write to (default: the configuration's first).
    #[arg(long)]
    pub topic: Option<String>,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Rows read, produced and rejected.
    pub counts: Counts,
    /// Records the broker acknowledged.
    pub delivered: u64,
    /// Records that could not be delivered (also in the rejects file).
    pub undelivered: u64,
    /// The rejects file.
    pub rejects: PathBuf,
    /// The topic written to.
    pub topic: String,
    /// How long it took.
    pub elapsed: Duration,
}

/// Runs `rapport import`: prints the summary; fails when a record was not delivered.
pub fn run(opts: ImportOptions) -> anyhow::Result<()> {
    let cfg = Config::load(&opts.config)?;
    let mapping = Mapping::load(&opts.mapping)?;
    let s = import(&cfg.kafka, &mapping, &opts)?;
    println!(
        "imported {}: {} rows read, {} produced to {}, {} rejected (in {}), {} delivered, {:.2} s",
        opts.input.display(),
        s.counts.read,
        s.counts.produced,
        s.topic,
        s.counts.rejected,
        s.rejects.display(),
        s.delivered,
        s.elapsed.as_secs_f64()
    );
    if s.undelivered > 0 {
        anyhow::bail!(
            "{} records could not be delivered (listed in {}); import the file again once the cluster is reachable: rows already imported are not counted twice",
            s.undelivered,
            s.rejects.display()
        );
    }
    Ok(())
}

/// Imports `opts.input` with `mapping` into the touchpoint topic of `kafka`.
pub fn import(
    kafka: &KafkaConfig,
    mapping: &Mapping,
    opts: &ImportOptions,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let topic = match (&opts.topic, kafka.touchpoint_topics.first()) {
        (Some(t), _) | (None, Some(t)) => t.clone(),
        (None, None) => anyhow::bail!("the configuration names no touchpoint topic; pass --topic"),
    };
    let format = input_format(mapping, &opts.input)?;
    let file =
        File::open(&opts.input).with_context(|| format!("opening {}", opts.input.display()))?;
    let total = file.metadata().map_or(0, |m| m.len());
    let mut reader = match format {
        Format::Csv => Reader::csv(BufReader::new(file), mapping.csv.delimiter as u8)?,
        Format::Jsonl => Reader::jsonl(BufReader::new(file)),
    };
    check_header(mapping, reader.header(), &opts.input)?;
    let rejects_path = opts
        .rejects
        .clone()
        .unwrap_or_else(|| default_rejects(&opts.input, format));
    let mut rejects = Rejects::create(&rejects_path, reader.header())?;
    let mut sender = Sender::new(kafka, &topic)?;
    let mut progress = Progress::new(total);
    let mut counts = Counts::default();
    let read = read_all(
        &mut reader,
        mapping,
        &mut sender,
        &mut rejects,
        &mut progress,
        &mut counts,
    );
    // Whatever stopped the reading, what was produced is delivered (or listed) first.
    sender.finish()?;
    progress.finish();
    let failed = std::mem::take(
        &mut *sender
            .deliveries()
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    for (line, error, payload) in &failed {
        let raw = RawRow::Line(String::from_utf8_lossy(payload).into_owned());
        rejects.write(*line, &format!("not delivered: {error}"), &raw)?;
    }
    rejects.finish()?;
    read?;
    Ok(Summary {
        counts,
        delivered: sender.deliveries().delivered.load(Ordering::Relaxed),
        undelivered: failed.len() as u64,
        rejects: rejects_path,
        topic,
        elapsed: started.elapsed(),
    })
}

/// Maps and sends every row of `reader`, rejecting what cannot be mapped.
fn read_all<R: std::io::BufRead>(
    reader: &mut Reader<R>,
    mapping: &Mapping,
    sender: &mut Sender,
    rejects: &mut Rejects,
    progress: &mut Progress,
    counts: &mut Counts,
) -> anyhow::Result<()> {
    while let Some((line, item)) = reader.next_item()? {
        counts.read += 1;
        let rejected = match item {
            Item::Row(row) => {
                let view = reader.view(&row);
                match mapping.map(&view) {
                    Ok(tp) => {
                        sender.send(&tp, line)?;
                        counts.produced += 1;
                        None
                    }
                    Err(reason) => Some((reason, view.raw(&row))),
                }
            }
            Item::Unreadable { reason, raw } => Some((reason, raw)),
        };
        if let Some((reason, raw)) = rejected {
            rejects.write(line, &reason, &raw)?;
            counts.rejected += 1;
        }
        progress.update(reader.position(), *counts);
    }
    Ok(())
}

/// The input's format: the mapping's, else from the file name.
fn input_format(mapping: &Mapping, input: &Path) -> anyhow::Result<Format> {
    if let Some(f) = mapping.format {
        return Ok(f);
    }
    let ext = input
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("csv") => Ok(Format::Csv),
        Some("jsonl" | "ndjson" | "json") => Ok(Format::Jsonl),
        _ => anyhow::bail!(
            "cannot tell the format of {} from its name; set format = \"csv\" or \"jsonl\" in the mapping",
            input.display()
        ),
    }
}

/// A CSV export must have every column the mapping reads.
fn check_header(mapping: &Mapping, header: &[String], input: &Path) -> anyhow::Result<()> {
    if header.is_empty() {
        return Ok(());
    }
    let missing: Vec<&str> = mapping
        .columns_used()
        .into_iter()
        .filter(|c| !header.iter().any(|h| h == c))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{} has no column {}; its header is: {} (is csv.delimiter right?)",
            input.display(),
            missing.join(", "),
            header.join(", ")
        );
    }
    Ok(())
}

fn default_rejects(input: &Path, format: Format) -> PathBuf {
    let ext = match format {
        Format::Csv => "rejects.csv",
        Format::Jsonl => "rejects.jsonl",
    };
    input.with_extension(ext)
}
