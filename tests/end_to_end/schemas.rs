//! Every schema parses with an Avro implementation we did not write (Python fastavro),
//! and the example records round-trip through it.

use std::process::Command;

#[test]
fn schemas_parse_and_examples_round_trip_with_fastavro() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/check_schemas.py");
    let out = Command::new("python3")
        .arg(script)
        .output()
        .expect("python3 is needed to check schemas");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schema check failed (pip install fastavro if it is missing):\n{stdout}\n{stderr}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.ends_with(" 0 failed"), "{summary}");
    let passed: u32 = summary.split_whitespace().next().unwrap().parse().unwrap();
    assert!(passed >= 20, "{summary}");
}
