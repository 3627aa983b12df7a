//! A record that cannot be processed lands in the dead-letter topic with its reason,
//! its original bytes and headers, and the records around it are processed.

use rapport::kafka::{DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_STAGE, DLQ_TOPIC};
use rapport_model::testing::tp;
use rapport_model::{Channel, EventType};
use rdkafka::message::Headers;
use rdkafka::Message;

use crate::support::*;

const T0: i64 = 1_764_000_000_000;

#[test]
fn malformed_records_are_dead_lettered_with_reasons_and_neighbours_processed() {
    let topics = Topics::new("dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = topics.config(dir.path(), &unique("dlq"));
    let good = |id: &str, c: &str| {
        serde_json::to_vec(&tp(id, c, Channel::System, EventType::DeliveryFailed, T0)).unwrap()
    };
    let broken_json = br#"{"event_id":"x1","customer_id":"c-2","channel":"web""#.to_vec();
    let bad_score = br#"{"event_id":"x2","customer_id":"c-3","channel":"email","event_type":"survey_response","event_time":1764000000000,"survey":{"kind":"nps","score":42}}"#.to_vec();
    let unknown_type = br#"{"event_id":"x3","customer_id":"c-4","channel":"web","event_type":"teleported","event_time":1764000000000}"#.to_vec();
    // serde would read an array as a struct's fields; the schema says object.
    let array = br#"["x4","c-7",null,"web","page_view",1764000000000]"#.to_vec();
    let records = vec![
        ("c-1".to_owned(), good("g1", "c-1"), vec![]),
        (
            "c-2".to_owned(),
            broken_json.clone(),
            vec![("trace-id", "abc-123")],
        ),
        ("c-5".to_owned(), good("g2", "c-5"), vec![]),
        ("c-3".to_owned(), bad_score.clone(), vec![]),
        ("c-4".to_owned(), unknown_type.clone(), vec![]),
        ("c-6".to_owned(), good("g3", "c-6"), vec![]),
        ("c-7".to_owned(), array.clone(), vec![]),
        ("c-8".to_owned(), b"42".to_vec(), vec![]),
    ];
    produce_raw(&topics.input, &records);
    let metrics = run_engine(&cfg, state(&cfg), records.len() as u64);

    let mut customers: Vec<String> = actions(&topics.actions)
        .into_iter()
        .map(|a| a.customer_id)
        .collect();
    customers.sort();
    assert_eq!(
        customers,
        ["c-1", "c-5", "c-6"],
        "records around the bad ones are processed"
    );

    let dead = drain(&topics.dead_letter);
    assert_eq!(dead.len(), 5);
    let header = |m: &rdkafka::message::OwnedMessage, k: &str| {
        m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == k)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    };
    let expected = [
        (&broken_json, 1, "decode", "EOF"),
        (&bad_score, 3, "validate", "42"),
        (&unknown_type, 4, "decode", "teleported"),
        (&array, 6, "decode", "JSON object"),
        (&b"42".to_vec(), 7, "decode", "a number"),
    ];
    for (m, (bytes, offset, stage, hint)) in dead.iter().zip(expected) {
        assert_eq!(
            m.payload().unwrap(),
            bytes.as_slice(),
            "original bytes kept"
        );
        assert_eq!(header(m, DLQ_TOPIC).as_deref(), Some(topics.input.as_str()));
        assert_eq!(header(m, DLQ_PARTITION).as_deref(), Some("0"));
        assert_eq!(header(m, DLQ_OFFSET), Some(offset.to_string()));
        assert_eq!(header(m, DLQ_STAGE).as_deref(), Some(stage));
        let reason = header(m, DLQ_REASON).unwrap();
        assert!(
            reason.contains(hint),
            "reason {reason:?} should mention {hint:?}"
        );
    }
    assert_eq!(
        header(&dead[0], "trace-id").as_deref(),
        Some("abc-123"),
        "original headers kept"
    );
    assert_eq!(dead[0].key(), Some(b"c-2".as_slice()));
    assert_eq!(
        metrics
            .dead_letters
            .with_label_values(&["validate", "invalid"])
            .get(),
        1
    );
}
