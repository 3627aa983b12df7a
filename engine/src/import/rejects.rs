//! The rejects file: every row the importer could not turn into a touchpoint,
//! or could not deliver, with its line number, the reason and the row itself,
//! so nothing of the export is lost and the rows can be fixed and imported again.
//!
//! `.csv` rejects have the columns `line`, `reason`, then the export's own
//! columns; any other name gets JSON lines `{"line", "reason", "row"}`, where
//! `row` is the original JSON line or the CSV fields by column name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Map, Value};

use super::input::RawRow;

/// Where rejected rows go.
pub struct Rejects {
    path: PathBuf,
    out: Sink,
    header: Vec<String>,
    /// Rows written.
    pub count: u64,
}

enum Sink {
    Csv(Box<csv::Writer<BufWriter<File>>>),
    Jsonl(BufWriter<File>),
}

impl Rejects {
    /// Creates (or truncates) the rejects file at `path`, for an input whose CSV
    /// header is `header` (empty for JSON lines).
    pub fn create(path: &Path, header: &[String]) -> anyhow::Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("creating the rejects file {}", path.display()))?;
        let out = if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            // A row with more fields than the header is kept whole.
            let mut w = csv::WriterBuilder::new()
                .flexible(true)
                .from_writer(BufWriter::new(file));
            let cols = ["line", "reason"]
                .into_iter()
                .chain(header.iter().map(String::as_str));
            w.write_record(cols)?;
            Sink::Csv(Box::new(w))
        } else {
            Sink::Jsonl(BufWriter::new(file))
        };
        Ok(Rejects {
            path: path.to_owned(),
            out,
            header: header.to_vec(),
            count: 0,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one rejected row.
    pub fn write(&mut self, line: u64, reason: &str, row: &RawRow) -> anyhow::Result<()> {
        self.count += 1;
        match &mut self.out {
            Sink::Csv(w) => {
                let mut rec = vec![line.to_string(), reason.to_owned()];
                match row {
                    RawRow::Fields(f) => rec.extend(f.iter().cloned()),
                    RawRow::Line(text) => rec.push(text.clone()),
                }
                w.write_record(&rec)?;
            }
            Sink::Jsonl(w) => {
                let row = match row {
                    RawRow::Line(text) => {
                        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
                    }
                    RawRow::Fields(f) => Value::Object(by_column(&self.header, f)),
                };
                let rec = serde_json::json!({ "line": line, "reason": reason, "row": row });
                serde_json::to_writer(&mut *w, &rec)?;
                w.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    /// Writes everything out.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        match &mut self.out {
            Sink::Csv(w) => w.flush()?,
            Sink::Jsonl(w) => w.flush()?,
        }
        Ok(())
    }
}

/// CSV fields by column name; fields past the header are `_extra_<n>`.
fn by_column(header: &[String], fields: &[String]) -> Map<String, Value> {
    fields
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let name = header
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("_extra_{}", i + 1));
            (name, Value::String(v.clone()))
        })
        .collect()
}
