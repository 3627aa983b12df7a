//! Reading an export row by row: CSV with a header, or JSON lines.
//!
//! A row that cannot even be read as a row (invalid UTF-8, a field count other
//! than the header's, a line that is not a JSON object) is not an error of the
//! whole file: it comes out as [`Item::Unreadable`] with its line, so the
//! importer rejects it with the reason and goes on.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::BufRead;

use serde_json::{Map, Value};

use super::mapping::Row;

/// One item of the input.
pub enum Item {
    /// A row to map.
    Row(InputRow),
    /// A row that could not be read, with the reason and its raw fields.
    Unreadable {
        /// Why.
        reason: String,
        /// What could be read of it, for the rejects file.
        raw: RawRow,
    },
}

/// A row as read, for the rejects file.
pub enum RawRow {
    /// CSV fields, in input order.
    Fields(Vec<String>),
    /// A JSON line's text.
    Line(String),
}

/// A readable row and where it starts.
pub struct InputRow {
    /// 1-based line number in the input.
    pub line: u64,
    /// Its values.
    pub data: RowData,
}

/// A row's values.
pub enum RowData {
    /// CSV fields, in header order.
    Csv(Vec<String>),
    /// A JSON object.
    Json(Map<String, Value>, String),
}

/// A CSV or JSON-lines reader of rows.
pub enum Reader<R: BufRead> {
    /// CSV with a header row.
    Csv {
        /// The reader.
        inner: csv::Reader<R>,
        /// Column positions by name.
        index: HashMap<String, usize>,
        /// The header, in order.
        header: Vec<String>,
    },
    /// JSON lines.
    Jsonl {
        /// The reader.
        inner: R,
        /// Line number of the last line read.
        line: u64,
        /// Bytes read so far.
        bytes: u64,
    },
}

impl<R: BufRead> Reader<R> {
    /// A CSV reader with `delimiter`; reads the header.
    pub fn csv(input: R, delimiter: u8) -> anyhow::Result<Self> {
        let mut inner = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .from_reader(input);
        let header: Vec<String> = inner
            .byte_headers()?
            .iter()
            .map(|h| String::from_utf8_lossy(h).trim().to_owned())
            .collect();
        let index = header
            .iter()
            .enumerate()
            .map(|(i, h)| (h.clone(), i))
            .collect();
        Ok(Reader::Csv {
            inner,
            index,
            header,
        })
    }

    /// A JSON-lines reader.
    pub fn jsonl(input: R) -> Self {
        Reader::Jsonl {
            inner: input,
            line: 0,
            bytes: 0,
        }
    }

    /// The CSV header (empty for JSON lines).
    pub fn header(&self) -> &[String] {
        match self {
            Reader::Csv { header, .. } => header,
            Reader::Jsonl { .. } => &[],
        }
    }

    /// Bytes of input consumed so far.
    pub fn position(&self) -> u64 {
        match self {
            Reader::Csv { inner, .. } => inner.position().byte(),
            Reader::Jsonl { bytes, .. } => *bytes,
        }
    }

    /// A row's values by column name.
    pub fn view<'a>(&'a self, row: &'a InputRow) -> RowView<'a> {
        match (&row.data, self) {
            (RowData::Csv(fields), Reader::Csv { index, header, .. }) => RowView::Csv {
                fields,
                index,
                header,
            },
            (RowData::Json(map, _), _) => RowView::Json(map),
            (RowData::Csv(fields), _) => RowView::Bare(fields),
        }
    }

    /// The next item, `None` at the end; an I/O error ends the import.
    pub fn next_item(&mut self) -> anyhow::Result<Option<(u64, Item)>> {
        match self {
            Reader::Csv { inner, header, .. } => next_csv(inner, header.len()),
            Reader::Jsonl { inner, line, bytes } => next_json(inner, line, bytes),
        }
    }
}

fn next_csv<R: BufRead>(
    inner: &mut csv::Reader<R>,
    width: usize,
) -> anyhow::Result<Option<(u64, Item)>> {
    let mut record = csv::ByteRecord::new();
    match inner.read_byte_record(&mut record) {
        Ok(false) => return Ok(None),
        Ok(true) => {}
        Err(e) => match e.kind() {
            csv::ErrorKind::Io(_) => return Err(e.into()),
            _ => {
                let line = e.position().map_or(0, |p| p.line());
                let raw = RawRow::Fields(Vec::new());
                return Ok(Some((
                    line,
                    unreadable(format!("unreadable CSV: {e}"), raw),
                )));
            }
        },
    }
    let line = record.position().map_or(0, |p| p.line());
    let lossy: Vec<String> = record
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    if let Some(i) = record.iter().position(|f| std::str::from_utf8(f).is_err()) {
        let reason = format!(
            "field {} is not valid UTF-8; export the file as UTF-8",
            i + 1
        );
        return Ok(Some((line, unreadable(reason, RawRow::Fields(lossy)))));
    }
    if record.len() != width {
        let reason = format!(
            "the row has {} fields but the header has {width} (a separator inside an unquoted value?)",
            record.len()
        );
        return Ok(Some((line, unreadable(reason, RawRow::Fields(lossy)))));
    }
    let row = InputRow {
        line,
        data: RowData::Csv(lossy),
    };
    Ok(Some((line, Item::Row(row))))
}

fn next_json<R: BufRead>(
    inner: &mut R,
    line: &mut u64,
    bytes: &mut u64,
) -> anyhow::Result<Option<(u64, Item)>> {
    loop {
        let mut buf = Vec::new();
        let n = inner.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        *line += 1;
        *bytes += n as u64;
        let text = String::from_utf8_lossy(&buf).trim().to_owned();
        if text.is_empty() {
            continue;
        }
        if std::str::from_utf8(&buf).is_err() {
            let reason = "the line is not valid UTF-8".to_owned();
            return Ok(Some((*line, unreadable(reason, RawRow::Line(text)))));
        }
        return Ok(Some((
            *line,
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(map)) => Item::Row(InputRow {
                    line: *line,
                    data: RowData::Json(map, text),
                }),
                Ok(_) => unreadable("the line is not a JSON object".into(), RawRow::Line(text)),
                Err(e) => unreadable(format!("not JSON: {e}"), RawRow::Line(text)),
            },
        )));
    }
}

fn unreadable(reason: String, raw: RawRow) -> Item {
    Item::Unreadable { reason, raw }
}

/// A row seen by the mapping.
pub enum RowView<'a> {
    /// CSV fields with the header.
    Csv {
        /// Values.
        fields: &'a [String],
        /// Column positions.
        index: &'a HashMap<String, usize>,
        /// Column names in order.
        header: &'a [String],
    },
    /// Fields without a header (never produced by a CSV reader).
    Bare(&'a [String]),
    /// A JSON object.
    Json(&'a Map<String, Value>),
}

impl RowView<'_> {
    /// The row as it was read, for the rejects file.
    pub fn raw(&self, row: &InputRow) -> RawRow {
        match &row.data {
            RowData::Csv(f) => RawRow::Fields(f.clone()),
            RowData::Json(_, text) => RawRow::Line(text.clone()),
        }
    }
}

impl Row for RowView<'_> {
    fn get(&self, column: &str) -> Option<Cow<'_, str>> {
        match self {
            RowView::Csv { fields, index, .. } => index
                .get(column)
                .and_then(|&i| fields.get(i))
                .map(|s| Cow::Borrowed(s.as_str())),
            RowView::Bare(_) => None,
            RowView::Json(map) => json_text(lookup(map, column)?),
        }
    }

    fn canonical(&self) -> String {
        match self {
            RowView::Csv { fields, header, .. } => header
                .iter()
                .zip(fields.iter())
                .map(|(h, v)| format!("{h}={}", v.trim()))
                .collect::<Vec<_>>()
                .join("\u{1f}"),
            RowView::Bare(fields) => fields.join("\u{1f}"),
            // Ordered by key: the same object gives the same text, whatever
            // order the exporter wrote its keys in.
            RowView::Json(map) => {
                let sorted: std::collections::BTreeMap<&String, &Value> = map.iter().collect();
                serde_json::to_string(&sorted).unwrap_or_default()
            }
        }
    }
}

/// `a.b` looks into nested objects when there is no key `a.b` itself.
fn lookup<'a>(map: &'a Map<String, Value>, column: &str) -> Option<&'a Value> {
    if let Some(v) = map.get(column) {
        return Some(v);
    }
    let (outer, inner) = column.split_once('.')?;
    match map.get(outer)? {
        Value::Object(m) => lookup(m, inner),
        _ => None,
    }
}

fn json_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        other => Some(Cow::Owned(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items<R: BufRead>(mut r: Reader<R>) -> Vec<(u64, Result<String, String>)> {
        let mut out = Vec::new();
        while let Some((line, item)) = r.next_item().unwrap() {
            out.push((
                line,
                match item {
                    Item::Row(row) => Ok(r.view(&row).get("id").unwrap_or_default().into_owned()),
                    Item::Unreadable { reason, .. } => Err(reason),
                },
            ));
        }
        out
    }

    #[test]
    fn json_lines_keep_their_line_numbers_and_bad_lines_are_items() {
        let input = "{\"id\":1,\"a\":{\"b\":\"x\"}}\n\n[1,2]\n{\"id\":\"2\n{\"id\":\"3\"}\n";
        let got = items(Reader::jsonl(input.as_bytes()));
        assert_eq!(got[0], (1, Ok("1".into())));
        assert!(
            matches!(&got[1], (3, Err(r)) if r.contains("not a JSON object")),
            "{got:?}"
        );
        assert!(
            matches!(&got[2], (4, Err(r)) if r.contains("not JSON")),
            "{got:?}"
        );
        assert_eq!(got[3], (5, Ok("3".into())));
        let map: Map<String, Value> = serde_json::from_str("{\"a\":{\"b\":\"x\"}}").unwrap();
        assert_eq!(RowView::Json(&map).get("a.b").as_deref(), Some("x"));
    }

    #[test]
    fn csv_rows_of_the_wrong_width_or_encoding_are_items_not_errors() {
        let mut input = b"id;name\n1;a\n2;b;extra\n\"3\";\"multi\nline\"\n4;".to_vec();
        input.extend_from_slice(&[0xff, b'\n', b'5', b';', b'e', b'\n']);
        let got = items(Reader::csv(&input[..], b';').unwrap());
        assert_eq!(got[0], (2, Ok("1".into())));
        assert!(
            matches!(&got[1], (3, Err(r)) if r.contains("3 fields")),
            "{got:?}"
        );
        assert_eq!(got[2], (4, Ok("3".into())));
        assert!(
            matches!(&got[3], (6, Err(r)) if r.contains("UTF-8")),
            "{got:?}"
        );
        assert_eq!(got[4], (7, Ok("5".into())));
    }
}
