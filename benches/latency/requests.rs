//! The latency run's row on requests to the broker: what each Kafka client,
//! the engine's and the bench's own, asked of it over the measured run
//! (`rapport_kafka_requests_total`, from the clients' librdkafka statistics),
//! and the broker's CPU per request.

use rapport::metrics::Metrics;

/// Requests sent so far by each client counted in `m`
/// (`rapport_kafka_requests_total`): client, then request type, then count.
pub(super) fn by_client(m: &Metrics) -> Vec<(String, String, u64)> {
    use prometheus::core::Collector;
    let mut out = Vec::new();
    for family in m.kafka_requests.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            out.push((
                label("client"),
                label("request"),
                metric.get_counter().get_value() as u64,
            ));
        }
    }
    out
}

/// Requests per second over `seconds` between the counts `before` and
/// `after` (the engine's clients', then the bench's), by client with its
/// three most frequent request types, and the broker's CPU per request when
/// its seconds on a core are known.
pub(super) fn summary(
    before: &[Vec<(String, String, u64)>; 2],
    after: &[Vec<(String, String, u64)>; 2],
    seconds: u64,
    broker_ran: Option<f64>,
) -> String {
    let names = [
        ("consumer", "the engine's consumer"),
        ("producer", "the engine's producers"),
        ("bench producer", "the bench's producer"),
        ("action reader", "the bench's action reader"),
        ("plain consumer", "the plain consumer"),
    ];
    let mut parts = Vec::new();
    let mut all = 0u64;
    for (side_before, side_after) in before.iter().zip(after) {
        let mut by_client: Vec<(String, Vec<(String, u64)>)> = Vec::new();
        for (client, request, n) in side_after {
            let was = side_before
                .iter()
                .find(|(c, r, _)| c == client && r == request)
                .map_or(0, |e| e.2);
            let grew = n.saturating_sub(was);
            match by_client.iter_mut().find(|(c, _)| c == client) {
                Some((_, v)) => v.push((request.clone(), grew)),
                None => by_client.push((client.clone(), vec![(request.clone(), grew)])),
            }
        }
        // In the order of `names`, any other client after them.
        by_client.sort_by_key(|(c, _)| names.iter().position(|n| n.0 == c).unwrap_or(names.len()));
        for (client, mut types) in by_client {
            let total: u64 = types.iter().map(|t| t.1).sum();
            all += total;
            types.sort_by_key(|t| std::cmp::Reverse(t.1));
            let top: Vec<String> = types
                .iter()
                .take(3)
                .map(|(r, n)| (r, n / seconds.max(1)))
                .filter(|t| t.1 > 0)
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            let name = names
                .iter()
                .find(|(c, _)| *c == client)
                .map_or(client.as_str(), |n| n.1);
            parts.push(format!(
                "{name} {} ({})",
                total / seconds.max(1),
                top.join(", ")
            ));
        }
    }
    let per_second = all / seconds.max(1);
    let broker = broker_ran.map_or(String::new(), |ran| {
        format!(
            "; the broker ran {ran:.1} s, {:.0} µs a request",
            ran * 1e6 / all.max(1) as f64
        )
    });
    format!("{}; all {per_second}{broker}", parts.join("; "))
}
