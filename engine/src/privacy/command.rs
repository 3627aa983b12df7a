//! The erasure command: a JSON record on the privacy topic, keyed by customer id.

use serde::{Deserialize, Serialize};

/// One erasure request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureCommand {
    /// The requester's id for the request, echoed in the receipt.
    pub request_id: String,
    /// The customer to erase; the record's key.
    pub customer_id: String,
    /// Anonymous ids to erase with the customer, besides those their profile links.
    #[serde(default)]
    pub anonymous_ids: Vec<String>,
    /// When the request was made, epoch ms (defaults to when it was read).
    #[serde(default)]
    pub requested_at: Option<i64>,
}

/// Why a record on the privacy topic is not an erasure command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not JSON of the command's shape.
    #[error("not an erasure command: {0}")]
    Shape(String),
    /// A required id is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
}

impl ErasureCommand {
    /// Parses and checks a command.
    pub fn parse(bytes: &[u8]) -> Result<ErasureCommand, CommandError> {
        let c: ErasureCommand =
            serde_json::from_slice(bytes).map_err(|e| CommandError::Shape(e.to_string()))?;
        if c.request_id.trim().is_empty() {
            return Err(CommandError::Empty("request_id"));
        }
        if c.customer_id.trim().is_empty() {
            return Err(CommandError::Empty("customer_id"));
        }
        if c.anonymous_ids.iter().any(|a| a.trim().is_empty()) {
            return Err(CommandError::Empty("an anonymous id"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_command_parses() {
        let c = ErasureCommand::parse(
            br#"{"request_id":"r1","customer_id":"c1","anonymous_ids":["a1"],"requested_at":5}"#,
        )
        .unwrap();
        assert_eq!(c.anonymous_ids, ["a1"]);
        assert_eq!(c.requested_at, Some(5));
    }

    #[test]
    fn optional_fields_default() {
        let c = ErasureCommand::parse(br#"{"request_id":"r1","customer_id":"c1"}"#).unwrap();
        assert!(c.anonymous_ids.is_empty() && c.requested_at.is_none());
    }

    #[test]
    fn bad_commands_are_refused_with_the_reason() {
        let bad: [(&[u8], &str); 5] = [
            (b"[1]", "not an erasure command"),
            (b"{\"request_id\":\"r\"}", "customer_id"),
            (
                br#"{"request_id":" ","customer_id":"c"}"#,
                "request_id is empty",
            ),
            (
                br#"{"request_id":"r","customer_id":"c","anonymous_ids":[""]}"#,
                "anonymous id",
            ),
            (
                br#"{"request_id":"r","customer_id":"c","extra":1}"#,
                "unknown field",
            ),
        ];
        for (bytes, why) in bad {
            let e = ErasureCommand::parse(bytes).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
