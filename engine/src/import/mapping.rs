//! The mapping of an export's columns to touchpoint fields, read from a TOML file.
//!
//! A store's POS or a contact center's system exports its own columns in its
//! own formats. The mapping names, for each touchpoint field
//! (`schemas/v1/touchpoint.avsc`, dotted for nested records: `commerce.amount`,
//! `call.wait_seconds`, `attributes.till`), the column it comes from or a
//! constant, how times and amounts are written, and how a column's values
//! translate to schema symbols (`SALE` -> `purchase`). Each row becomes one
//! touchpoint or one rejection with the reason.
//!
//! Event ids: when the export has no id column, a row's id is the UUIDv5 of the
//! mapping's `source` and the row's `id_columns` (or, without them, the whole
//! row). The same row imported again, also from a later export that has more
//! rows appended or its rows in another order, gets the same id, and the engine
//! skips the repeat. The line number would not do: a row's line moves when an
//! export is re-sorted or rows are inserted above it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, NaiveDateTime, TimeZone};
use chrono_tz::Tz;
use rapport_model::Touchpoint;
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// The namespace of derived event ids (the UUIDv5 of `rapport:import` in the URL namespace).
fn id_namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"rapport:import")
}

/// A mapping file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The mapping file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid mapping (TOML syntax, unknown keys, wrong types).
    #[error("{path}: {message}")]
    Parse {
        /// The mapping file.
        path: String,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// The mapping is well-formed but cannot produce touchpoints.
    #[error("{path}: {message}")]
    Invalid {
        /// The mapping file.
        path: String,
        /// What to fix.
        message: String,
    },
}

/// The input's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma- (or `csv.delimiter`-) separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// Where a field's value comes from: one column, or several joined with `-`
/// (a receipt is identified by store, till and receipt number together).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Columns {
    /// One column.
    One(String),
    /// Several columns, their values joined with `-`.
    Many(Vec<String>),
}

impl Columns {
    fn names(&self) -> &[String] {
        match self {
            Columns::One(c) => std::slice::from_ref(c),
            Columns::Many(v) => v,
        }
    }
}

/// How event times are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeFormat {
    /// `epoch_ms`, `epoch_s`, `rfc3339`, or a strftime format such as
    /// `%d.%m.%Y %H:%M` (with `%z` when the times carry their offset).
    #[serde(default = "default_time_format")]
    pub format: String,
    /// IANA time zone of times written without an offset (e.g. `Europe/Berlin`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
}

fn default_time_format() -> String {
    "rfc3339".into()
}

fn default_timezone() -> String {
    "UTC".into()
}

impl Default for TimeFormat {
    fn default() -> Self {
        TimeFormat {
            format: default_time_format(),
            timezone: default_timezone(),
        }
    }
}

/// How money amounts are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountFormat {
    /// `.` or `,`.
    #[serde(default = "default_decimal")]
    pub decimal_separator: char,
    /// Grouping character to ignore (e.g. `.` in `1.299,00`), if any.
    #[serde(default)]
    pub thousands_separator: Option<char>,
    /// `units` (12,50 is twelve fifty) or `cents` (1250 is twelve fifty).
    #[serde(default)]
    pub unit: AmountUnit,
}

fn default_decimal() -> char {
    '.'
}

impl Default for AmountFormat {
    fn default() -> Self {
        AmountFormat {
            decimal_separator: default_decimal(),
            thousands_separator: None,
            unit: AmountUnit::Units,
        }
    }
}

/// The unit of amounts in the export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmountUnit {
    /// Whole currency units with decimals.
    #[default]
    Units,
    /// Integer cents (hundredths).
    Cents,
}

/// CSV dialect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvFormat {
    /// Field separator (`,`, `;`, a tab).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
}

fn default_delimiter() -> char {
    ','
}

impl Default for CsvFormat {
    fn default() -> Self {
        CsvFormat {
            delimiter: default_delimiter(),
        }
    }
}

/// A mapping file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    source: String,
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    id_columns: Vec<String>,
    #[serde(default)]
    columns: BTreeMap<String, Columns>,
    #[serde(default)]
    constants: BTreeMap<String, toml::Value>,
    #[serde(default)]
    values: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    time: TimeFormat,
    #[serde(default)]
    amount: AmountFormat,
    #[serde(default)]
    csv: CsvFormat,
}

/// What a touchpoint field holds, and so how a column's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Time,
    Amount,
    Int,
    Float,
    Bool,
}

/// Every field a mapping may fill (besides `attributes.<name>`, text).
const FIELDS: &[(&str, Kind)] = &[
    ("event_id", Kind::Text),
    ("customer_id", Kind::Text),
    ("anonymous_id", Kind::Text),
    ("channel", Kind::Text),
    ("event_type", Kind::Text),
    ("event_time", Kind::Time),
    ("store_id", Kind::Text),
    ("commerce.order_id", Kind::Text),
    ("commerce.sku", Kind::Text),
    ("commerce.amount", Kind::Amount),
    ("commerce.currency", Kind::Text),
    ("commerce.quantity", Kind::Int),
    ("survey.kind", Kind::Text),
    ("survey.score", Kind::Int),
    ("survey.comment", Kind::Text),
    ("call.wait_seconds", Kind::Int),
    ("call.duration_seconds", Kind::Int),
    ("call.transfers", Kind::Int),
    ("call.outcome", Kind::Text),
    ("call.agent_notes", Kind::Text),
    ("chat.text", Kind::Text),
    ("chat.sentiment", Kind::Float),
    ("chat.from_bot", Kind::Bool),
    ("web.url", Kind::Text),
    ("web.query", Kind::Text),
    ("web.referrer", Kind::Text),
];

fn kind_of(field: &str) -> Option<Kind> {
    if field
        .strip_prefix("attributes.")
        .is_some_and(|a| !a.is_empty())
    {
        return Some(Kind::Text);
    }
    FIELDS.iter().find(|(f, _)| *f == field).map(|(_, k)| *k)
}

/// How the event time column is read.
#[derive(Debug, Clone)]
enum TimeRule {
    EpochMs,
    EpochS,
    Rfc3339,
    /// A strftime format; times without an offset are in `zone`.
    Pattern {
        format: String,
        zone: Tz,
    },
}

/// A checked mapping, ready to map rows.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The export system's name; part of every derived event id.
    pub source: String,
    /// The input format, when the mapping fixes it.
    pub format: Option<Format>,
    /// CSV dialect.
    pub csv: CsvFormat,
    id_columns: Vec<String>,
    /// Fields from columns, in field order.
    columns: Vec<(String, Kind, Columns)>,
    /// Constant fields, already in their JSON form.
    constants: Vec<(String, Value)>,
    values: BTreeMap<String, BTreeMap<String, String>>,
    time: TimeRule,
    amount: AmountFormat,
}

/// One input row: its columns by name.
pub trait Row {
    /// The value of `column`, `None` when the row has no such column.
    fn get(&self, column: &str) -> Option<Cow<'_, str>>;
    /// Every column and value, in a stable order (for ids of whole rows).
    fn canonical(&self) -> String;
}

impl Mapping {
    /// Reads and checks the mapping at `path`.
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: p.clone(),
            source,
        })?;
        Mapping::parse(&text).map_err(|e| match e {
            MappingError::Parse { message, .. } => MappingError::Parse { path: p, message },
            MappingError::Invalid { message, .. } => MappingError::Invalid { path: p, message },
            other => other,
        })
    }

    /// Checks a mapping given as TOML text.
    pub fn parse(text: &str) -> Result<Mapping, MappingError> {
        let raw: Raw = toml::from_str(text).map_err(|e| MappingError::Parse {
            path: String::new(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| MappingError::Invalid {
            path: String::new(),
            message,
        };
        if raw.source.trim().is_empty() {
            return Err(invalid(
                "source is empty; name the exporting system (e.g. \"store-pos\"): derived event ids depend on it".into(),
            ));
        }
        let columns = columns_of(&raw).map_err(invalid)?;
        let constants = constants_of(&raw).map_err(invalid)?;
        check_fields(&raw).map_err(invalid)?;
        let time = time_rule(&raw.time).map_err(invalid)?;
        check_formats(&raw).map_err(invalid)?;
        Ok(Mapping {
            source: raw.source,
            format: raw.format,
            csv: raw.csv,
            id_columns: raw.id_columns,
            columns,
            constants,
            values: raw.values,
            time,
            amount: raw.amount,
        })
    }

    /// Every column the mapping reads, for checking an export's header.
    pub fn columns_used(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .columns
            .iter()
            .flat_map(|(_, _, c)| c.names())
            .chain(&self.id_columns)
            .map(String::as_str)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Maps one row to a valid touchpoint, or says why it cannot.
    pub fn map(&self, row: &impl Row) -> Result<Touchpoint, String> {
        let mut obj = Map::new();
        for (field, value) in &self.constants {
            put(&mut obj, field, value.clone());
        }
        for (field, kind, cols) in &self.columns {
            let Some(text) = self.column_text(row, cols)? else {
                continue;
            };
            let text = match self.values.get(field) {
                Some(table) => Cow::Owned(translate(table, field, cols, &text)?),
                None => text,
            };
            let value = self
                .read(*kind, &text)
                .map_err(|e| format!("column {}: {e}", describe(cols)))?;
            put(&mut obj, field, value);
        }
        if !obj.contains_key("event_id") {
            let id = self.derived_id(row)?;
            obj.insert("event_id".into(), Value::String(id));
        }
        let identity = |f: &str| {
            obj.get(f)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        };
        if !identity("customer_id") && !identity("anonymous_id") {
            let cols: Vec<String> = ["customer_id", "anonymous_id"]
                .iter()
                .filter_map(|f| self.columns.iter().find(|(n, _, _)| n == f))
                .map(|(_, _, c)| describe(c))
                .collect();
            return Err(format!("no customer: column {} is empty", cols.join(" / ")));
        }
        for required in ["event_type", "event_time"] {
            if !obj.contains_key(required) {
                return Err(format!("no {required}: its column is empty"));
            }
        }
        let tp: Touchpoint = serde_json::from_value(Value::Object(obj))
            .map_err(|e| format!("not a valid touchpoint: {e}"))?;
        tp.validate().map_err(|e| e.to_string())?;
        Ok(tp)
    }

    /// The text of `cols` in `row` (joined with `-`), `None` when every one is empty.
    fn column_text<'r>(
        &self,
        row: &'r impl Row,
        cols: &Columns,
    ) -> Result<Option<Cow<'r, str>>, String> {
        match cols {
            Columns::One(c) => Ok(row.get(c).map(|v| trim_cow(v)).filter(|v| !v.is_empty())),
            Columns::Many(cs) => {
                let parts: Vec<Cow<str>> = cs
                    .iter()
                    .map(|c| row.get(c).map(trim_cow).unwrap_or_default())
                    .collect();
                if parts.iter().all(|p| p.is_empty()) {
                    return Ok(None);
                }
                if let Some(i) = parts.iter().position(|p| p.is_empty()) {
                    return Err(format!("column {:?} is empty", cs[i]));
                }
                Ok(Some(Cow::Owned(parts.join("-"))))
            }
        }
    }

    /// The row's event id: UUIDv5 of the source and the id columns (or the whole row).
    fn derived_id(&self, row: &impl Row) -> Result<String, String> {
        let mut name = self.source.clone();
        if self.id_columns.is_empty() {
            name.push('\u{1e}');
            name.push_str(&row.canonical());
        } else {
            for c in &self.id_columns {
                let v = row.get(c).map(trim_cow).unwrap_or_default();
                if v.is_empty() {
                    return Err(format!(
                        "column {c:?} is empty, and it identifies the row (id_columns)"
                    ));
                }
                name.push('\u{1e}');
                name.push_str(&v);
            }
        }
        Ok(Uuid::new_v5(&id_namespace(), name.as_bytes()).to_string())
    }

    fn read(&self, kind: Kind, text: &str) -> Result<Value, String> {
        Ok(match kind {
            Kind::Text => Value::String(text.to_owned()),
            Kind::Time => Value::from(self.time_ms(text)?),
            Kind::Amount => Value::from(self.amount_value(text)?),
            Kind::Int => Value::from(
                text.parse::<i32>()
                    .map_err(|_| format!("{text:?} is not a whole number"))?,
            ),
            Kind::Float => Value::from(
                text.replace(self.amount.decimal_separator, ".")
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| format!("{text:?} is not a number"))?,
            ),
            Kind::Bool => Value::Bool(match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" | "1" => true,
                "false" | "no" | "n" | "0" => false,
                _ => return Err(format!("{text:?} is not true/false")),
            }),
        })
    }

    /// An event time as epoch milliseconds.
    fn time_ms(&self, text: &str) -> Result<i64, String> {
        let int = |t: &str| {
            t.parse::<i64>()
                .map_err(|_| format!("{t:?} is not an epoch time"))
        };
        match &self.time {
            TimeRule::EpochMs => int(text),
            TimeRule::EpochS => int(text)?
                .checked_mul(1000)
                .ok_or_else(|| format!("{text:?} is out of range")),
            TimeRule::Rfc3339 => DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_millis())
                .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}")),
            TimeRule::Pattern { format, zone } => {
                if let Ok(t) = DateTime::parse_from_str(text, format) {
                    return Ok(t.timestamp_millis());
                }
                let naive = NaiveDateTime::parse_from_str(text, format).map_err(|e| {
                    format!("{text:?} does not match the time format {format:?}: {e}")
                })?;
                // A local time repeated when clocks go back is read as its first
                // occurrence; one skipped when they go forward does not exist.
                zone.from_local_datetime(&naive)
                    .earliest()
                    .map(|t| t.timestamp_millis())
                    .ok_or_else(|| {
                        format!(
                            "{text:?} does not exist in {zone} (skipped when clocks went forward)"
                        )
                    })
            }
        }
    }

    /// A money amount in currency units.
    fn amount_value(&self, text: &str) -> Result<f64, String> {
        let a = &self.amount;
        let mut s: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && Some(*c) != a.thousands_separator)
            .collect();
        let bad = || {
            format!(
                "{text:?} is not an amount (decimal separator {:?}, {})",
                a.decimal_separator,
                match a.unit {
                    AmountUnit::Units => "in currency units",
                    AmountUnit::Cents => "in cents",
                }
            )
        };
        let value = match a.unit {
            AmountUnit::Cents => s.parse::<i64>().map_err(|_| bad())? as f64 / 100.0,
            AmountUnit::Units => {
                let other = if a.decimal_separator == ',' { '.' } else { ',' };
                if s.contains(other) {
                    return Err(bad());
                }
                s = s.replace(a.decimal_separator, ".");
                if !s
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
                {
                    return Err(bad());
                }
                s.parse::<f64>().map_err(|_| bad())?
            }
        };
        if !value.is_finite() {
            return Err(bad());
        }
        Ok(value)
    }
}

fn time_rule(t: &TimeFormat) -> Result<TimeRule, String> {
    Ok(match t.format.as_str() {
        "epoch_ms" => TimeRule::EpochMs,
        "epoch_s" => TimeRule::EpochS,
        "rfc3339" => TimeRule::Rfc3339,
        f if f.contains('%') => TimeRule::Pattern {
            format: f.to_owned(),
            zone: t.timezone.parse::<Tz>().map_err(|_| {
                format!(
                    "time.timezone {:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")",
                    t.timezone
                )
            })?,
        },
        f => {
            return Err(format!(
                "time.format {f:?} is none of epoch_ms, epoch_s, rfc3339 or a strftime format such as \"%d.%m.%Y %H:%M\""
            ))
        }
    })
}

/// Translates an export's value through the mapping's table for `field`.
fn translate(
    table: &BTreeMap<String, String>,
    field: &str,
    cols: &Columns,
    text: &str,
) -> Result<String, String> {
    table
        .get(text)
        .or_else(|| {
            table
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(text))
                .map(|(_, v)| v)
        })
        .cloned()
        .ok_or_else(|| {
            let known: Vec<&str> = table.keys().map(String::as_str).collect();
            format!(
                "column {} has {text:?}, which values.{field:?} does not translate (known: {})",
                describe(cols),
                known.join(", ")
            )
        })
}

fn describe(cols: &Columns) -> String {
    cols.names()
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join("+")
}

fn trim_cow(v: Cow<'_, str>) -> Cow<'_, str> {
    match v {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
        Cow::Owned(s) if s.trim().len() == s.len() => Cow::Owned(s),
        Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
    }
}

/// Sets the dotted `field` in `obj`, creating nested records on the way.
fn put(obj: &mut Map<String, Value>, field: &str, value: Value) {
    match field.split_once('.') {
        None => {
            obj.insert(field.to_owned(), value);
        }
        Some((outer, inner)) => {
            let nested = obj
                .entry(outer.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = nested {
                m.insert(inner.to_owned(), value);
            }
        }
    }
}

/// The touchpoint fields a mapping may name, for its messages.
fn known_fields() -> String {
    FIELDS
        .iter()
        .map(|(f, _)| *f)
        .chain(["attributes.<name>"])
        .collect::<Vec<_>>()
        .join(", ")
}

/// The mapping's columns with the kind of field each fills: every field a
/// touchpoint field, each naming at least one column.
fn columns_of(raw: &Raw) -> Result<Vec<(String, Kind, Columns)>, String> {
    let mut columns = Vec::new();
    for (field, cols) in &raw.columns {
        let kind = kind_of(field).ok_or_else(|| {
            format!(
                "columns.{field:?} is not a touchpoint field; fields are {}",
                known_fields()
            )
        })?;
        if cols.names().is_empty() || cols.names().iter().any(|c| c.is_empty()) {
            return Err(format!("columns.{field:?} names no column"));
        }
        columns.push((field.clone(), kind, cols.clone()));
    }
    Ok(columns)
}

/// The mapping's constants as JSON values of their fields (text fields as
/// text, whatever TOML type was written), none of them also a column.
fn constants_of(raw: &Raw) -> Result<Vec<(String, Value)>, String> {
    let mut constants = Vec::new();
    for (field, v) in &raw.constants {
        let kind = kind_of(field).ok_or_else(|| {
            format!(
                "constants.{field:?} is not a touchpoint field; fields are {}",
                known_fields()
            )
        })?;
        if raw.columns.contains_key(field) {
            return Err(format!(
                "{field:?} is both a column and a constant; keep one"
            ));
        }
        let json = serde_json::to_value(v).map_err(|e| format!("constants.{field:?}: {e}"))?;
        let json = match (kind, json) {
            (Kind::Text, Value::String(s)) => Value::String(s),
            (Kind::Text, other) => Value::String(other.to_string()),
            (_, other) => other,
        };
        constants.push((field.clone(), json));
    }
    Ok(constants)
}

/// Every translated field is read from a column, and the fields every
/// touchpoint needs (channel, type, time and an identity) are mapped.
fn check_fields(raw: &Raw) -> Result<(), String> {
    for field in raw.values.keys() {
        if !raw.columns.contains_key(field) {
            return Err(format!(
                "values.{field:?} translates a field that is not read from a column; add columns.{field:?}"
            ));
        }
    }
    let has = |f: &str| raw.columns.contains_key(f) || raw.constants.contains_key(f);
    for required in ["channel", "event_type", "event_time"] {
        if !has(required) {
            return Err(format!(
                "no {required}: give it a column (columns.{required}) or a constant (constants.{required})"
            ));
        }
    }
    if !has("customer_id") && !has("anonymous_id") {
        return Err("no identity: map customer_id (or anonymous_id) to a column".into());
    }
    Ok(())
}

/// The amount's decimal separator and the CSV delimiter are ones the reader
/// understands.
fn check_formats(raw: &Raw) -> Result<(), String> {
    if !matches!(raw.amount.decimal_separator, '.' | ',') {
        return Err(format!(
            "amount.decimal_separator {:?} must be \".\" or \",\"",
            raw.amount.decimal_separator
        ));
    }
    if !raw.csv.delimiter.is_ascii() {
        return Err(format!(
            "csv.delimiter {:?} must be one ASCII character",
            raw.csv.delimiter
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of named values.
    struct R(Vec<(&'static str, &'static str)>);

    impl Row for R {
        fn get(&self, column: &str) -> Option<Cow<'_, str>> {
            self.0
                .iter()
                .find(|(c, _)| *c == column)
                .map(|(_, v)| Cow::Borrowed(*v))
        }
        fn canonical(&self) -> String {
            let mut v: Vec<String> = self.0.iter().map(|(c, v)| format!("{c}={v}")).collect();
            v.sort();
            v.join("\u{1f}")
        }
    }

    const POS: &str = r#"
        source = "pos"
        id_columns = ["store", "receipt"]
        [constants]
        channel = "store"
        [columns]
        customer_id = "card"
        event_type = "kind"
        event_time = "at"
        "commerce.amount" = "total"
        [values.event_type]
        SALE = "purchase"
        [time]
        format = "%d.%m.%Y %H:%M"
        timezone = "Europe/Berlin"
        [amount]
        decimal_separator = ","
    "#;

    fn row(at: &'static str, total: &'static str) -> R {
        R(vec![
            ("store", "B01"),
            ("receipt", "7"),
            ("card", "L-1"),
            ("kind", "SALE"),
            ("at", at),
            ("total", total),
        ])
    }

    #[test]
    fn local_times_and_comma_amounts_are_read() {
        let m = Mapping::parse(POS).unwrap();
        let t = m.map(&row("20.11.2026 09:14", "1299,50")).unwrap();
        // 09:14 in Berlin in November is 08:14 UTC.
        let utc = DateTime::parse_from_rfc3339("2026-11-20T08:14:00Z").unwrap();
        assert_eq!(t.event_time, utc.timestamp_millis());
        assert_eq!(t.commerce.unwrap().amount, Some(1299.5));
        assert_eq!(t.event_type, rapport_model::EventType::Purchase);
        // The hour skipped when clocks go forward does not exist.
        let e = m.map(&row("29.03.2026 02:30", "1,00")).unwrap_err();
        assert!(e.contains("does not exist in Europe/Berlin"), "{e}");
        let e = m.map(&row("20.11.2026 09:14", "12.50")).unwrap_err();
        assert!(e.contains("\"12.50\" is not an amount"), "{e}");
    }

    #[test]
    fn the_event_id_depends_on_the_id_columns_only() {
        let m = Mapping::parse(POS).unwrap();
        let a = m.map(&row("20.11.2026 09:14", "10,00")).unwrap();
        // The same receipt with a corrected amount is the same event.
        let b = m.map(&row("20.11.2026 09:14", "11,00")).unwrap();
        assert_eq!(a.event_id, b.event_id);
        let mut other = row("20.11.2026 09:14", "10,00");
        other.0[1] = ("receipt", "8");
        assert_ne!(m.map(&other).unwrap().event_id, a.event_id);
        // Without id columns the whole row counts, whatever its column order.
        let whole =
            Mapping::parse(&POS.replace("id_columns = [\"store\", \"receipt\"]", "")).unwrap();
        let mut reversed = row("20.11.2026 09:14", "10,00");
        reversed.0.reverse();
        let (c, d) = (
            whole.map(&row("20.11.2026 09:14", "10,00")).unwrap(),
            whole.map(&reversed).unwrap(),
        );
        assert_eq!(c.event_id, d.event_id);
        assert_ne!(
            c.event_id,
            whole
                .map(&row("20.11.2026 09:14", "11,00"))
                .unwrap()
                .event_id
        );
    }

    #[test]
    fn cents_epoch_seconds_and_unknown_values() {
        let m = Mapping::parse(
            &POS.replace("format = \"%d.%m.%Y %H:%M\"", "format = \"epoch_s\"")
                .replace("decimal_separator = \",\"", "unit = \"cents\""),
        )
        .unwrap();
        let t = m.map(&row("1795162443", "1250")).unwrap();
        assert_eq!(t.event_time, 1_795_162_443_000);
        assert_eq!(t.commerce.unwrap().amount, Some(12.5));
        let mut void = row("1795162443", "0");
        void.0[3] = ("kind", "VOID");
        let e = m.map(&void).unwrap_err();
        assert!(e.contains("\"VOID\"") && e.contains("known: SALE"), "{e}");
    }

    #[test]
    fn a_mapping_that_cannot_work_is_refused_with_what_to_fix() {
        let e = Mapping::parse(&POS.replace("\"commerce.amount\"", "\"commerce.total\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("commerce.total") && e.contains("commerce.amount"),
            "{e}"
        );
        let e = Mapping::parse(&POS.replace("event_time = \"at\"", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no event_time"), "{e}");
        let e = Mapping::parse(&POS.replace("Europe/Berlin", "Europe/Springfield"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("IANA"), "{e}");
        assert!(Mapping::parse("source = \"x\"\n[columns]\nchannel = 3").is_err());
    }
}
