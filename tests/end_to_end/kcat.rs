//! Interop with a client we did not write: kcat produces touchpoints and reads the actions.

use std::io::Write;
use std::process::{Command, Stdio};

use rapport_model::testing::tp;
use rapport_model::{Channel, EventType, SurveyKind};

use crate::support::*;

const T0: i64 = 1_764_000_000_000;

fn kcat(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is not installed: apt-get install kcat (or run .ci/run, which installs it)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kcat_produces_touchpoints_and_reads_actions() {
    let topics = Topics::new("kcat", 2);
    let dir = tempfile::tempdir().unwrap();
    let cfg = topics.config(dir.path(), &unique("kcat"));
    let b = bootstrap();
    let events = [
        tp(
            "k1",
            "c-kcat-1",
            Channel::System,
            EventType::DeliveryFailed,
            T0,
        )
        .with_order("o-1"),
        tp(
            "k2",
            "c-kcat-2",
            Channel::Email,
            EventType::SurveyResponse,
            T0,
        )
        .with_survey(SurveyKind::Csat, 1),
        tp(
            "k3",
            "c-kcat-3",
            Channel::Email,
            EventType::SurveyResponse,
            T0,
        )
        .with_survey(SurveyKind::Csat, 5),
    ];
    let mut lines: String = events
        .iter()
        .map(|t| {
            format!(
                "{}\t{}\n",
                t.customer_id.as_deref().unwrap(),
                serde_json::to_string(t).unwrap()
            )
        })
        .collect();
    lines.push_str("c-kcat-4\tthis is not json\n");
    kcat(
        &[
            "-P",
            "-b",
            &b,
            "-t",
            &topics.input,
            "-K",
            "\t",
            "-X",
            "partitioner=murmur2_random",
        ],
        Some(&lines),
    );

    run_engine(&cfg, state(&cfg), 4);

    let out = kcat(
        &[
            "-C",
            "-b",
            &b,
            "-t",
            &topics.actions,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-X",
            "isolation.level=read_committed",
            "-f",
            "%k\t%s\n",
        ],
        None,
    );
    let mut got: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            let a: serde_json::Value = serde_json::from_str(v).unwrap();
            (k.to_owned(), a["kind"].as_str().unwrap().to_owned())
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("c-kcat-1".to_owned(), "recovery_offer".to_owned()),
            ("c-kcat-2".to_owned(), "recovery_offer".to_owned())
        ]
    );
    let dead = kcat(
        &[
            "-C",
            "-b",
            &b,
            "-t",
            &topics.dead_letter,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k|%h|%s\n",
        ],
        None,
    );
    assert!(dead.starts_with("c-kcat-4|"), "{dead}");
    assert!(
        dead.contains("rapport.dlq.reason=invalid touchpoint JSON"),
        "{dead}"
    );
    assert!(dead.trim_end().ends_with("|this is not json"), "{dead}");
}
