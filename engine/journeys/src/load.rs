//! The loader: journey files (globs under a base directory) to checked,
//! compiled journeys, or every problem found, each at `file:line:column`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use cel::Env;
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::compile::Compiler;
use crate::error::{LoadError, Problem, SourceFile};
use crate::format::*;
use crate::journey::*;
use crate::policy::DeliveryPolicy;

/// Reads the files matching `patterns` (globs relative to `base`), in path
/// order, and compiles them with `env`.
pub(crate) fn load_globs(env: &Env, base: &Path, patterns: &[&str]) -> Result<Loaded, LoadError> {
    let mut paths = Vec::new();
    for pattern in patterns {
        let full = base.join(pattern);
        let full = full.to_string_lossy();
        let matches = glob::glob(&full).map_err(|e| LoadError::Pattern {
            pattern: (*pattern).to_owned(),
            reason: e.to_string(),
        })?;
        let before = paths.len();
        for m in matches {
            paths.push(m.map_err(|e| LoadError::Read {
                path: e.path().to_path_buf(),
                reason: e.error().to_string(),
            })?);
        }
        if paths.len() == before {
            return Err(LoadError::Pattern {
                pattern: (*pattern).to_owned(),
                reason: format!("it matches no file (looked for {full})"),
            });
        }
    }
    paths.sort();
    paths.dedup();
    let mut sources = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| LoadError::Read {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        sources.push((path, text));
    }
    load_sources(env, &sources)
}

/// What the files hold: the journeys, ordered by id, and the delivery policy.
pub(crate) struct Loaded {
    pub journeys: Vec<Journey>,
    pub policy: DeliveryPolicy,
}

/// Compiles journey files given as (path, text).
pub(crate) fn load_sources(env: &Env, sources: &[(PathBuf, String)]) -> Result<Loaded, LoadError> {
    let mut problems = Vec::new();
    let mut journeys: Vec<Journey> = Vec::new();
    // Every journey's id, also of those that do not compile, so a duplicate id
    // is reported in the same round as the other problems.
    let mut ids: Vec<(String, Problem)> = Vec::new();
    // The `[policy]` tables: (file index, where, table).
    let mut policies: Vec<(usize, Range<usize>, RawPolicy)> = Vec::new();
    for (index, (path, text)) in sources.iter().enumerate() {
        let file = SourceFile { path, text };
        let (raws, policy) = parse_file(&file, &mut problems);
        if let Some((span, raw)) = policy {
            policies.push((index, span, raw));
        }
        for raw in raws {
            ids.push((
                raw.id.get_ref().clone(),
                file.at(&raw.id.span(), String::new(), ""),
            ));
            if let Some(j) = Compiler::new(env, &file, &mut problems).journey(raw) {
                journeys.push(j);
            }
        }
    }
    duplicate_ids(&ids, &mut problems);
    let known: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    let mut policy = DeliveryPolicy::default();
    let mut first: Option<Problem> = None;
    for (index, span, raw) in policies {
        let (path, text) = &sources[index];
        let file = SourceFile { path, text };
        match &first {
            Some(prev) => problems.push(file.at(
                &span,
                "a second [policy] table".into(),
                format!(
                    "the delivery policy is one table for every journey; the first is at {}:{}:{}",
                    prev.file.display(),
                    prev.line,
                    prev.column
                ),
            )),
            None => {
                first = Some(file.at(&span, String::new(), ""));
                policy = crate::load_policy::compile(&file, raw, &known, &mut problems);
            }
        }
    }
    if problems.is_empty() {
        let mut js: Vec<Journey> = journeys;
        js.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Loaded {
            journeys: js,
            policy,
        })
    } else {
        Err(LoadError::Invalid(problems))
    }
}

fn duplicate_ids(ids: &[(String, Problem)], problems: &mut Vec<Problem>) {
    let mut first: BTreeMap<&str, &Problem> = BTreeMap::new();
    for (id, at) in ids {
        match first.get(id.as_str()) {
            Some(prev) => problems.push(Problem {
                message: format!("journey id {id:?} is already used"),
                hint: format!(
                    "ids must be unique across all journey files; the first is at {}:{}:{}",
                    prev.file.display(),
                    prev.line,
                    prev.column
                ),
                ..(*at).clone()
            }),
            None => {
                first.insert(id, at);
            }
        }
    }
}

/// A file's `[policy]` table and where its key is.
type PolicyTable = Option<(Range<usize>, RawPolicy)>;

/// Parses one file into its `[[journey]]` tables and its `[policy]` table,
/// recording syntax and shape problems.
fn parse_file(file: &SourceFile, problems: &mut Vec<Problem>) -> (Vec<RawJourney>, PolicyTable) {
    let (root, errors) = DeTable::parse_recoverable(file.text);
    if !errors.is_empty() {
        for e in errors {
            let at = e.span().map_or(0, |s| s.start);
            problems.push(file.problem(
                at,
                format!("TOML syntax error: {}", e.message().trim()),
                "fix the TOML syntax (strings need quotes, tables [[journey]])",
            ));
        }
        return (Vec::new(), None);
    }
    let mut out = Vec::new();
    let mut policy = None;
    for (key, value) in root.into_inner() {
        if key.get_ref().as_ref() == "policy" {
            let span = value.span();
            match RawPolicy::deserialize(ValueDeserializer::from(value)) {
                Ok(p) => policy = Some((key.span(), p)),
                Err(e) => problems.push(file.problem(
                    e.span().map_or(span.start, |s| s.start),
                    e.message().trim().to_owned(),
                    "see the [policy] reference in deploy/journeys/README.md",
                )),
            }
            continue;
        }
        if key.get_ref().as_ref() != "journey" {
            problems.push(file.at(
                &key.span(),
                format!("unknown top-level key {:?}", key.get_ref().as_ref()),
                "a journey file holds [[journey]] tables and at most one [policy] table",
            ));
            continue;
        }
        let span = value.span();
        let DeValue::Array(items) = value.into_inner() else {
            problems.push(file.at(
                &span,
                "`journey` is not an array of tables".into(),
                "write each journey as [[journey]]",
            ));
            continue;
        };
        for item in items {
            match RawJourney::deserialize(ValueDeserializer::from(item)) {
                Ok(j) => out.push(j),
                Err(e) => problems.push(file.problem(
                    e.span().map_or(span.start, |s| s.start),
                    e.message().trim().to_owned(),
                    "see the field reference in deploy/journeys/README.md",
                )),
            }
        }
    }
    (out, policy)
}
