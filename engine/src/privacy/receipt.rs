//! The receipt of an erasure, written to the privacy results topic once the
//! erasure is committed and compacted out of local state.

use serde::{Deserialize, Serialize};

/// The parts of Rapport an erasure covers, in the order receipts list them.
pub const COMPONENTS: [&str; 9] = [
    "profile",
    "timers",
    "journey_state",
    "caps",
    "anonymous_profiles",
    "cache",
    "changelog_tombstones",
    "suppression_list",
    "rocksdb_compaction",
];

/// One component's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// One of [`COMPONENTS`].
    pub name: String,
    /// `done`, or `pending` before the commit and compaction.
    pub status: String,
}

/// A copy of erased data Rapport cannot delete at once, and until when it may exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Residual {
    /// Where: `changelog <topic>` or `input topic <topic>`.
    #[serde(rename = "where")]
    pub location: String,
    /// Epoch ms after which it is gone; `None` when the topic keeps records forever.
    pub until: Option<i64>,
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The request's id.
    pub request_id: String,
    /// When the engine read the request, epoch ms.
    pub received_at: i64,
    /// When the erasure was committed and compacted, epoch ms.
    pub completed_at: Option<i64>,
    /// Keyed hashes (hex) of every id covered.
    pub ids: Vec<String>,
    /// Each component's status.
    pub components: Vec<Component>,
    /// Copies that expire later.
    pub residual_copies: Vec<Residual>,
    /// Ids the request named that live on another partition (anonymous ids keyed
    /// elsewhere); not erased by this request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_covered: Vec<String>,
}

/// Retention facts for the residual copies: the changelog's compaction lag and
/// each input topic's retention (`None`: kept forever).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// The changelog topic and its `max.compaction.lag.ms`.
    pub changelog: (String, Option<i64>),
    /// Input topics (touchpoints and privacy) and their `retention.ms`.
    pub inputs: Vec<(String, Option<i64>)>,
    /// Output topics that may name the customer (actions, decisions, dead
    /// letters) and their `retention.ms`.
    pub outputs: Vec<(String, Option<i64>)>,
}

impl Receipt {
    /// A receipt for a request read at `received_at`, covering `ids` (hex hashes),
    /// every component still pending.
    pub fn pending(request_id: &str, received_at: i64, ids: Vec<String>) -> Receipt {
        Receipt {
            request_id: request_id.to_owned(),
            received_at,
            completed_at: None,
            ids,
            components: COMPONENTS
                .iter()
                .map(|n| Component {
                    name: (*n).to_owned(),
                    status: "pending".into(),
                })
                .collect(),
            residual_copies: Vec::new(),
            not_covered: Vec::new(),
        }
    }

    /// Marks every component done at `now` and lists the residual copies: the
    /// changelog's old values until compaction must have run, the input records
    /// (read at `received_at` or before) and what the engine wrote about the
    /// customer before (actions, decisions, dead letters) until retention deletes them.
    pub fn complete(&mut self, now: i64, retention: &Retention) {
        self.completed_at = Some(now);
        for c in &mut self.components {
            c.status = "done".into();
        }
        let (changelog, lag) = &retention.changelog;
        self.residual_copies = std::iter::once(Residual {
            location: format!("changelog {changelog}"),
            until: lag.map(|l| now + l),
        })
        .chain(retention.inputs.iter().map(|(t, r)| Residual {
            location: format!("input topic {t}"),
            until: r.map(|r| self.received_at + r),
        }))
        .chain(retention.outputs.iter().map(|(t, r)| Residual {
            location: format!("output topic {t}"),
            until: r.map(|r| now + r),
        }))
        .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_receipt_has_every_component_done_and_its_residuals() {
        let mut r = Receipt::pending("r1", 1_000, vec!["ab".into()]);
        assert!(r.components.iter().all(|c| c.status == "pending"));
        let retention = Retention {
            changelog: ("cl".into(), Some(50)),
            inputs: vec![("in".into(), Some(7)), ("forever".into(), None)],
            outputs: vec![("actions".into(), Some(9))],
        };
        r.complete(2_000, &retention);
        assert_eq!(r.completed_at, Some(2_000));
        assert_eq!(r.components.len(), COMPONENTS.len());
        assert!(r.components.iter().all(|c| c.status == "done"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["residual_copies"][0]["where"], "changelog cl");
        assert_eq!(json["residual_copies"][0]["until"], 2_050);
        assert_eq!(json["residual_copies"][1]["until"], 1_007);
        assert!(json["residual_copies"][2]["until"].is_null());
        assert_eq!(json["residual_copies"][3]["where"], "output topic actions");
        assert_eq!(json["residual_copies"][3]["until"], 2_009);
        assert!(json.get("not_covered").is_none());
    }
}
