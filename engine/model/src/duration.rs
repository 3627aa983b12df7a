//! Durations as Rapport's files write them: `"2h"`, `"30m"`, `"7d"`, `"1h30m"`.
//!
//! One parser for journey files and the engine configuration (emotional-state
//! windows and dwell times), so a duration means the same everywhere.

/// Parses a duration into milliseconds.
///
/// Units: `d` (24 hours), `h`, `m`, `s`, `ms`; several may follow each other
/// (`"1h30m"`). Event time has no daylight-saving jumps, so a day is always 24 hours.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration: expected a number before each unit"
            ));
        }
        let n: i64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" => return Err(format!("{text:?} lacks a unit (d, h, m, s or ms)")),
            u => {
                return Err(format!(
                    "{text:?} has unknown unit {u:?} (use d, h, m, s or ms)"
                ))
            }
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("{text:?} is too long"))?;
    }
    Ok(total)
}

/// Formats milliseconds the way Rapport's files write them, for messages and reasons.
pub fn format_duration(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [(3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")];
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (size, unit) in UNITS {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("7d"), Ok(604_800_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("0s"), Ok(0));
        assert!(parse_duration("2 hours").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration(7_200_000), "2h");
        assert_eq!(format_duration(5_400_000), "1h30m");
        assert_eq!(format_duration(604_800_000), "168h");
    }
}
