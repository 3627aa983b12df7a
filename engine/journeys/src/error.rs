//! Load errors: every problem of every journey file, each with its position.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a journey file, at `file:line:column`, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The journey file.
    pub file: PathBuf,
    /// Line, 1-based.
    pub line: usize,
    /// Column in characters, 1-based.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}; {}",
            self.file.display(),
            self.line,
            self.column,
            self.message,
            self.hint
        )
    }
}

/// Loading journeys failed; holds all problems found, not only the first, so a
/// journey author fixes a file in one round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// A glob pattern is malformed.
    #[error("journey glob {pattern:?} is malformed: {reason}; fix the pattern")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// A matched file could not be read.
    #[error("{}: cannot read journey file: {reason}; check the path and its permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The files have problems.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

impl LoadError {
    /// The problems found in the files (empty for pattern and read errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            LoadError::Invalid(p) => p,
            _ => &[],
        }
    }
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// The text of one journey file and where it came from, to turn byte offsets into
/// `line:column` positions.
pub(crate) struct SourceFile<'a> {
    pub(crate) path: &'a Path,
    pub(crate) text: &'a str,
}

impl SourceFile<'_> {
    /// A problem at byte offset `at` of the file.
    pub(crate) fn problem(&self, at: usize, message: String, hint: impl Into<String>) -> Problem {
        let at = at.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, at)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Problem {
            file: self.path.to_path_buf(),
            line,
            column: before[line_start..].chars().count() + 1,
            message,
            hint: hint.into(),
        }
    }

    /// A problem at the start of `span`.
    pub(crate) fn at(
        &self,
        span: &Range<usize>,
        message: String,
        hint: impl Into<String>,
    ) -> Problem {
        self.problem(span.start, message, hint)
    }

    /// A problem at character `offset` of the string value whose token spans
    /// `span`: the position inside a CEL expression or template, in the file.
    ///
    /// Exact for strings without escapes, which expressions rarely need.
    pub(crate) fn in_string(
        &self,
        span: &Range<usize>,
        offset: usize,
        message: String,
        hint: impl Into<String>,
    ) -> Problem {
        let token = self.text.get(span.clone()).unwrap_or("");
        let mut start = span.start + delimiter_len(token);
        if token.starts_with("\"\"\"") || token.starts_with("'''") {
            // A newline right after the opening delimiter is not part of the value.
            let rest = &self.text[start..];
            start += if rest.starts_with("\r\n") {
                2
            } else {
                usize::from(rest.starts_with('\n'))
            };
        }
        let at = self.text[start..]
            .char_indices()
            .nth(offset)
            .map_or(span.end, |(i, _)| start + i);
        self.problem(at, message, hint)
    }
}

fn delimiter_len(token: &str) -> usize {
    if token.starts_with("\"\"\"") || token.starts_with("'''") {
        3
    } else {
        usize::from(token.starts_with('"') || token.starts_with('\''))
    }
}

fn floor_char_boundary(s: &str, mut at: usize) -> usize {
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}
