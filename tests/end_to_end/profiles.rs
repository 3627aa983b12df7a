//! The profile API across a group: each instance serves the customers whose
//! partitions it owns, and for any other customer names (or redirects to) the
//! instance that owns it.

use crate::crash::feed;
use crate::metrics::{get, get_with_headers};
use crate::support::*;

#[test]
fn a_profile_request_names_the_instance_that_owns_the_customer() {
    let _serial = heavy();
    let topics = Topics::new("owners", 4);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("owners"));
    feed(&topics.input, 4_000, 200, 81);
    let spawn = |name: &str, advertised: Option<&str>| {
        let mut cfg = group_member(&topics, dir.path(), &group, name);
        let addr = format!("127.0.0.1:{}", free_port());
        cfg.http.listen = addr.clone();
        cfg.http.advertised_url = advertised.map(str::to_owned);
        (Instance::spawn(&cfg, dir.path(), name), addr)
    };
    let (mut a, addr_a) = spawn("a", Some("http://{instance}.rapport.test:9464"));
    a.wait_ready(4);
    let (mut b, addr_b) = spawn("b", None);
    b.wait_ready(1);
    wait_caught_up(&group, &topics.input, &mut [&mut a, &mut b]);
    for addr in [&addr_a, &addr_b] {
        // Both settled after the rebalance.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while get(addr, "/readyz").0 != 200 {
            assert!(std::time::Instant::now() < deadline, "{addr} ready");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    // Every customer is served by exactly one instance; the other names it.
    let (mut from_a, mut from_b) = (0, 0);
    for n in 0..200 {
        let id = format!("c-{n:06}");
        let path = format!("/v1/profiles/{id}");
        let (sa, head_a, body_a) = get_with_headers(&addr_a, &path);
        let (sb, body_b) = get(&addr_b, &path);
        match (sa, sb) {
            (200, 421) => {
                from_a += 1;
                let v: serde_json::Value = serde_json::from_str(body_b.trim()).unwrap();
                assert_eq!(v["owner"], "a", "{id}: {body_b}");
                assert_eq!(v["customer_id"], id.as_str());
                let view: serde_json::Value = serde_json::from_str(body_a.trim()).unwrap();
                assert_eq!(view["customer_id"], id.as_str());
            }
            (307, 200) => {
                from_b += 1;
                let location = format!("http://b.rapport.test:9464/v1/profiles/{id}");
                assert!(
                    head_a
                        .lines()
                        .any(|l| l.eq_ignore_ascii_case(&format!("location: {location}"))),
                    "{id}: a redirects to b: {head_a}"
                );
                let v: serde_json::Value = serde_json::from_str(body_a.trim()).unwrap();
                assert_eq!(v["owner"], "b", "{id}: {body_a}");
            }
            // A customer whose every record was malformed has no profile anywhere.
            (404, 421) | (307, 404) => {}
            other => panic!("{id}: a answered {}, b answered {}", other.0, other.1),
        }
    }
    assert!(from_a > 20 && from_b > 20, "a served {from_a}, b {from_b}");
    a.terminate();
    b.terminate();
}
