use super::*;
use serde_json::json;

const NOW: i64 = 1_764_000_000_000;

fn map(call: Value) -> Result<Touchpoint, String> {
    let m = Mapping::builtin();
    let kind = check_call(&call, None).expect("a valid call");
    m.map(kind, &call, NOW)
}

#[test]
fn the_shipped_mapping_file_parses() {
    let m = Mapping::builtin();
    assert_eq!(
        m.event("Product Viewed").map(|r| r.event_type),
        Some(EventType::ProductView)
    );
    assert!(m.unknown_event.is_none());
}

#[test]
fn segment_ecommerce_events_map_to_their_touchpoint_types() {
    for (name, want) in [
        ("Product Viewed", EventType::ProductView),
        ("Product List Viewed", EventType::PageView),
        ("Products Searched", EventType::Search),
        ("Product Added", EventType::AddToCart),
        ("Cart Viewed", EventType::PageView),
        ("Checkout Started", EventType::CheckoutStarted),
        ("Order Completed", EventType::Purchase),
        ("Order Refunded", EventType::RefundRequested),
        ("product_viewed", EventType::ProductView),
        ("ORDER-COMPLETED", EventType::Purchase),
    ] {
        let tp = map(json!({"type": "track", "event": name, "userId": "u1", "messageId": "m1"}))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tp.event_type, want, "{name}");
        assert_eq!(tp.attributes["segment_event"], name);
    }
}

#[test]
fn a_product_view_carries_ids_sku_price_and_time() {
    let tp = map(json!({
        "type": "track", "event": "Product Viewed", "userId": "u1", "anonymousId": "a1",
        "messageId": "msg-1", "timestamp": "2025-11-24T16:00:00.000+00:00",
        "properties": {"product_id": "p-9", "sku": "SKU-1", "price": 19.5, "currency": "EUR"}
    }))
    .unwrap();
    assert_eq!(tp.event_id, "msg-1");
    assert_eq!(tp.customer_id.as_deref(), Some("u1"));
    assert_eq!(tp.anonymous_id.as_deref(), Some("a1"));
    assert_eq!(tp.channel, Channel::Web);
    assert_eq!(tp.event_time, 1_764_000_000_000);
    let c = tp.commerce.unwrap();
    assert_eq!(c.sku.as_deref(), Some("SKU-1"), "sku wins over product_id");
    assert_eq!(c.amount, Some(19.5));
    assert_eq!(c.currency.as_deref(), Some("EUR"));
}

#[test]
fn an_order_reads_total_order_id_and_numeric_strings() {
    let tp = map(json!({
        "type": "track", "event": "Order Completed", "userId": 42, "messageId": "m",
        "properties": {"order_id": "o-1", "total": "99.90", "revenue": 90, "quantity": 2}
    }))
    .unwrap();
    assert_eq!(
        tp.customer_id.as_deref(),
        Some("42"),
        "numeric ids become text"
    );
    let c = tp.commerce.unwrap();
    assert_eq!(
        (c.order_id.as_deref(), c.amount, c.quantity),
        (Some("o-1"), Some(99.9), Some(2))
    );
    assert_eq!(tp.event_time, NOW, "no timestamp: the time it was received");
}

#[test]
fn identify_page_and_screen_have_their_own_types_and_channels() {
    let tp = map(json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"email": "x@y"}})).unwrap();
    assert_eq!(tp.event_type, EventType::Identify);
    let tp = map(json!({"type": "page", "anonymousId": "a1", "name": "Home", "properties": {"url": "https://shop/reviews"}})).unwrap();
    assert_eq!(
        (tp.event_type, tp.channel),
        (EventType::PageView, Channel::Web)
    );
    assert_eq!(tp.web.unwrap().url.as_deref(), Some("https://shop/reviews"));
    assert_eq!(tp.attributes["segment_event"], "Home");
    let tp = map(json!({"type": "screen", "userId": "u1", "name": "Cart"})).unwrap();
    assert_eq!(
        (tp.event_type, tp.channel),
        (EventType::PageView, Channel::App)
    );
    let tp = map(json!({"type": "track", "event": "Product Added", "userId": "u1", "context": {"app": {"name": "Shop"}}})).unwrap();
    assert_eq!(tp.channel, Channel::App, "context.app makes it an app call");
}

#[test]
fn unknown_events_group_and_alias_are_dead_lettered_with_the_reason() {
    let e = map(json!({"type": "track", "event": "Wishlist Shared", "userId": "u1"})).unwrap_err();
    assert!(
        e.contains("\"Wishlist Shared\"") && e.contains("[events]"),
        "{e}"
    );
    let e = map(json!({"type": "group", "userId": "u1", "groupId": "g"})).unwrap_err();
    assert!(e.contains("group"), "{e}");
    let e = map(json!({"type": "track", "event": "Order Completed", "userId": "u1", "properties": {"total": -5}})).unwrap_err();
    assert!(e.contains("amount"), "{e}");
    let e = map(json!({"type": "track", "event": "Order Completed", "userId": "u1", "properties": {"total": "lots"}})).unwrap_err();
    assert!(e.contains("\"lots\""), "{e}");
}

#[test]
fn unknown_event_sets_a_default_type() {
    let src = format!("unknown_event = \"page_view\"\n{DEFAULT_MAPPING}");
    let m = Mapping::parse(&src, Path::new("m.toml")).unwrap();
    let call = json!({"type": "track", "event": "Wishlist Shared", "userId": "u1"});
    assert_eq!(
        m.map(CallKind::Track, &call, NOW).unwrap().event_type,
        EventType::PageView
    );
}

#[test]
fn consent_changed_reads_its_attributes() {
    let tp = map(
        json!({"type": "track", "event": "Consent Changed", "userId": "u1",
        "properties": {"purpose": "marketing", "channel": "email", "granted": false}}),
    )
    .unwrap();
    assert_eq!(tp.event_type, EventType::ConsentChanged);
    assert_eq!(tp.attributes["granted"], "false");
    assert_eq!(tp.attributes["purpose"], "marketing");
}

#[test]
fn a_missing_message_id_gets_a_stable_one() {
    let call = json!({"type": "track", "event": "Cart Viewed", "userId": "u1", "timestamp": "2025-11-24T16:00:00Z"});
    let a = map(call.clone()).unwrap().event_id;
    assert!(a.starts_with("sha256:"), "{a}");
    assert_eq!(a, map(call).unwrap().event_id, "the same call, the same id");
}

#[test]
fn calls_that_break_the_segment_spec_are_refused_with_the_reason() {
    let cases = [
        (json!([1]), "JSON object"),
        (json!({"userId": "u"}), "type is missing"),
        (json!({"type": "purchase", "userId": "u"}), "\"purchase\""),
        (
            json!({"type": "track", "event": "X"}),
            "userId nor anonymousId",
        ),
        (
            json!({"type": "track", "event": "X", "userId": ""}),
            "userId nor anonymousId",
        ),
        (json!({"type": "track", "userId": "u"}), "event name"),
        (
            json!({"type": "track", "event": 3, "userId": "u"}),
            "event must be a string",
        ),
        (
            json!({"type": "page", "userId": {"id": 1}}),
            "userId must be a string",
        ),
        (
            json!({"type": "page", "userId": "u", "timestamp": "yesterday"}),
            "\"yesterday\"",
        ),
        (
            json!({"type": "page", "userId": "u", "timestamp": 1764000000}),
            "ISO 8601",
        ),
        (
            json!({"type": "page", "userId": "u", "properties": []}),
            "properties must be an object",
        ),
        (
            json!({"type": "page", "userId": "u", "messageId": 7}),
            "messageId",
        ),
    ];
    for (call, want) in cases {
        let e = check_call(&call, None).unwrap_err();
        assert!(e.contains(want), "{call}: {e}");
    }
    // The endpoint names the type of a single call.
    assert_eq!(
        check_call(&json!({"event": "X", "userId": "u"}), Some(CallKind::Track)),
        Ok(CallKind::Track)
    );
}

#[test]
fn bad_mapping_files_name_the_line() {
    let e = Mapping::parse(
        "[events.\"Product Viewed\"]\ntype = \"product_seen\"\n",
        Path::new("m.toml"),
    )
    .unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.to_string().starts_with("m.toml:2: "), "{e}");
    let e = Mapping::parse(
        "[fields]\nsku = [\"properties.sku\"]\n",
        Path::new("m.toml"),
    )
    .unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("JSON pointer"), "{e}");
    let e = Mapping::parse(
        "[events.\"Order Completed\"]\ntype = \"purchase\"\n[events.\"order_completed\"]\ntype = \"purchase\"\n",
        Path::new("m.toml"),
    )
    .unwrap_err();
    assert!(e.message.contains("twice"), "{e}");
}

#[test]
fn pointers_follow_rfc_6901() {
    let v = json!({"a/b": {"m~n": [10, {"x": "y"}]}});
    assert_eq!(
        Pointer::parse("/a~1b/m~0n/1/x").unwrap().get(&v),
        Some(&json!("y"))
    );
    assert_eq!(
        Pointer::parse("/a~1b/m~0n/0").unwrap().get(&v),
        Some(&json!(10))
    );
    assert_eq!(Pointer::parse("/a~1b/m~0n/7").unwrap().get(&v), None);
    assert_eq!(Pointer::parse("/missing").unwrap().get(&v), None);
    assert!(Pointer::parse("a/b").is_err());
}
