//! Durations in journey files: `"2h"`, `"30m"`, `"7d"`, `"1h30m"`, parsed as
//! everywhere in Rapport ([`rapport_model::duration`]).

pub use rapport_model::duration::{format_duration, parse_duration};

/// Milliseconds of a CEL duration literal such as `"168h"` or `"1h30m"`, or
/// `None` if CEL would not accept it (CEL durations have no days).
pub fn cel_duration_ms(text: &str) -> Option<i64> {
    if text.contains('d') {
        return None;
    }
    parse_duration(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cel_durations_have_no_days() {
        assert_eq!(cel_duration_ms("168h"), Some(604_800_000));
        assert_eq!(cel_duration_ms("7d"), None);
        assert_eq!(parse_duration("7d"), Ok(604_800_000));
    }
}
