//! The collector's Prometheus metrics, served at its own `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

use super::Collector;

/// What the collector did, per endpoint and outcome.
#[derive(Clone)]
pub struct CollectorMetrics {
    /// The registry served at `/metrics`.
    pub registry: Registry,
    /// HTTP calls by endpoint and status code.
    pub requests: IntCounterVec,
    /// Touchpoints acknowledged by Kafka, by event type.
    pub events: IntCounterVec,
    /// Calls sent to the dead-letter topic, by class.
    pub dead_letters: IntCounterVec,
    /// From handing a request's records to the producer to their acknowledgement.
    pub produce_seconds: Histogram,
}

impl CollectorMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = CollectorMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "rapport_collector_requests_total",
                    "HTTP calls to the collector, by endpoint and status code",
                ),
                &["endpoint", "status"],
            )
            .expect("valid metric"),
            events: IntCounterVec::new(
                Opts::new(
                    "rapport_collector_events_total",
                    "Touchpoints the collector produced and Kafka acknowledged, by event type",
                ),
                &["event_type"],
            )
            .expect("valid metric"),
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "rapport_collector_dead_letters_total",
                    "Calls the collector could not map, sent to the dead-letter topic, by class",
                ),
                &["class"],
            )
            .expect("valid metric"),
            produce_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "rapport_collector_produce_seconds",
                    "Time from producing a request's records to Kafka's acknowledgement of all of them",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )
            .expect("valid metric"),
            registry,
        };
        for c in [&m.requests, &m.events, &m.dead_letters] {
            m.registry
                .register(Box::new(c.clone()))
                .expect("registered once");
        }
        m.registry
            .register(Box::new(m.produce_seconds.clone()))
            .expect("registered once");
        m
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

pub(super) async fn render(State(c): State<Arc<Collector>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        c.metrics.render(),
    )
}
