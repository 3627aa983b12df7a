//! What a latency run prints: the actions' percentiles, the slowest beside
//! the plain consumer's, the broker's GC pauses, the engine's record stages
//! and commit phases, and the CSV dump.

use super::*;

/// How far before and after a slow action's touchpoint a stall of the plain
/// consumer counts as the same stall.
pub(super) const BESIDE_MS: i64 = 20;

/// Of the slowest hundredth of actions by touchpoint to decided, how many had
/// their touchpoint handed over within [`BESIDE_MS`] of one the plain consumer
/// (which reads without any engine) received at least 60% as late: the stall
/// was before the engine had the record (the producer, the broker, or the
/// machine's cores), not in the engine.
pub(super) fn slowest_beside_probe(samples: &[Sample], probe: &[(i64, i64)]) -> String {
    let mut probe: Vec<(i64, i64)> = probe.iter().map(|&(delay, at)| (at, delay)).collect();
    probe.sort_unstable();
    let mut slow: Vec<&Sample> = samples.iter().collect();
    slow.sort_unstable_by_key(|s| std::cmp::Reverse(s.decided_ms));
    slow.truncate(samples.len().div_ceil(100));
    let Some(fastest) = slow.last().map(|s| s.decided_ms) else {
        return "no actions".into();
    };
    let beside = slow
        .iter()
        .filter(|s| {
            let from = probe.partition_point(|p| p.0 < s.sent_ms - BESIDE_MS);
            probe[from..]
                .iter()
                .take_while(|p| p.0 <= s.sent_ms + BESIDE_MS)
                .any(|p| p.1 * 10 >= s.decided_ms * 6)
        })
        .count();
    format!(
        "{} actions, decided {fastest} ms or later: {beside} of them were handed to the producer within {BESIDE_MS} ms of a touchpoint the plain consumer received at least 60% as late (a stall before any engine had the record)",
        slow.len()
    )
}

/// Writes each action's sample (trigger sent, decided, total) and each probe
/// record (produced, delay) to `dir` as CSV, for a look at where the slow ones
/// lie in time (`RAPPORT_BENCH_DUMP=dir`).
pub(super) fn dump(
    dir: &str,
    g: Guarantee,
    samples: &[Sample],
    probe: &[(i64, i64)],
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut a = String::from("sent_ms,decided_ms,total_us\n");
    for s in samples {
        let _ = writeln!(a, "{},{},{}", s.sent_ms, s.decided_ms, s.total_us);
    }
    std::fs::write(format!("{dir}/actions.{}.csv", g.as_str()), a)?;
    let mut p = String::from("produced_ms,delay_ms\n");
    for (delay, at) in probe {
        let _ = writeln!(p, "{at},{delay}");
    }
    std::fs::write(format!("{dir}/probe.{}.csv", g.as_str()), p)?;
    Ok(())
}

/// How many GC pauses the broker made, how long in all and at most, and the
/// seconds of the measured run (counted from `measured_ms`) the long ones
/// began in, to set beside the probe's slowest records.
pub(super) fn gc_summary(pauses: Option<Vec<(i64, f64)>>, measured_ms: i64) -> String {
    let Some(pauses) = pauses else {
        return "not known: the broker is not a local deploy/kafka.sh broker writing a GC log"
            .into();
    };
    let total: f64 = pauses.iter().map(|p| p.1).sum();
    let longest = pauses.iter().map(|p| p.1).fold(0.0, f64::max);
    let long: Vec<i64> = pauses
        .iter()
        .filter(|p| p.1 >= 20.0)
        .map(|p| (p.0 - measured_ms) / 1000)
        .collect();
    format!(
        "{} pauses, {total:.0} ms in all, longest {longest:.1} ms; {} of 20 ms or more, begun in seconds {long:?}",
        pauses.len(),
        long.len()
    )
}

/// Each stage of `rapport_record_latency_seconds` since the warm-up ended
/// (`warm`: its counts then, see [`counts`]): how often, and the smallest
/// bucket bounds that half, 99% and 99.9% of the records are under; where
/// the input's part of the latency ends and the engine's begins.
pub(super) fn record_stages(metrics: &Metrics, warm: &[Vec<u64>]) -> String {
    let mut i = 0;
    by_label(&metrics.record_latency_seconds, |stage, h| {
        let now = counts(h);
        let before = warm.get(i).cloned().unwrap_or_default();
        i += 1;
        let since: Vec<u64> = now
            .iter()
            .enumerate()
            .map(|(k, c)| c - before.get(k).copied().unwrap_or(0).min(*c))
            .collect();
        let n = since[0];
        let under = |q: f64| {
            let bound = h
                .get_bucket()
                .iter()
                .zip(&since[1..])
                .find(|(_, &c)| c as f64 >= n as f64 * q);
            bound.map_or("more".to_owned(), |(b, _)| {
                format!("{} ms", b.upper_bound() * 1e3)
            })
        };
        format!(
            "{stage} {n}x p50 <= {}, p99 <= {}, p999 <= {}",
            under(0.5),
            under(0.99),
            under(0.999)
        )
    })
    .join("; ")
}

/// A histogram's sample count, then each bucket's cumulative count.
pub(super) fn counts(h: &prometheus::proto::Histogram) -> Vec<u64> {
    std::iter::once(h.get_sample_count())
        .chain(h.get_bucket().iter().map(|b| b.cumulative_count()))
        .collect()
}

/// Each phase of `rapport_commit_phase_seconds`: how often, its mean, and the
/// smallest bucket bound that 99% of them are under.
pub(super) fn phases(metrics: &Metrics) -> String {
    let mut out = by_label(&metrics.commit_phase_seconds, |phase, h| {
        let n = h.get_sample_count();
        let mean_ms = h.get_sample_sum() * 1e3 / n.max(1) as f64;
        format!(
            "{phase} {n}x mean {mean_ms:.1} ms p99 <= {}",
            under(h, 0.99)
        )
    });
    // A commit started early, or the input held, because the changed profiles
    // filled the profile cache: the loop waited for the commit in flight.
    // An action held until the commit of its customer's earlier one.
    out.push(format!(
        "{} commits early, {} input holds, {} actions held for their customer's earlier ones",
        metrics.early_commits.get(),
        metrics.input_holds.get(),
        metrics.actions_held.get()
    ));
    out.join("; ")
}

/// `f` of each label value of histogram `vec` (its first label) and its histogram.
pub(super) fn by_label<T>(
    vec: &prometheus::HistogramVec,
    mut f: impl FnMut(&str, &prometheus::proto::Histogram) -> T,
) -> Vec<T> {
    use prometheus::core::Collector;
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| {
            f(
                m.get_label().first().map_or("", |l| l.value()),
                m.get_histogram(),
            )
        })
        .collect()
}

/// The smallest bucket bound of `h` that a share `q` of its samples are under.
pub(super) fn under(h: &prometheus::proto::Histogram, q: f64) -> String {
    let n = h.get_sample_count() as f64;
    h.get_bucket()
        .iter()
        .find(|b| b.cumulative_count() as f64 >= n * q)
        .map_or("more".to_owned(), |b| {
            format!("{} ms", b.upper_bound() * 1e3)
        })
}

/// p50, p99 and p999 end to end, and p50 and p99 of each half.
pub(super) fn summary(samples: &mut [Sample]) -> String {
    let n = samples.len();
    let at = |q: f64| ((n as f64 * q) as usize).min(n.saturating_sub(1));
    samples.sort_unstable_by_key(|s| s.total_us);
    let total = |q: f64| {
        samples
            .get(at(q))
            .map_or(f64::NAN, |s| s.total_us as f64 / 1e3)
    };
    let (p50, p99, p999) = (total(0.50), total(0.99), total(0.999));
    samples.sort_unstable_by_key(|s| s.decided_ms);
    let decided = |q: f64| samples.get(at(q)).map_or(-1, |s| s.decided_ms);
    let (d50, d99) = (decided(0.50), decided(0.99));
    samples.sort_unstable_by_key(|s| s.visible_ms);
    let visible = |q: f64| samples.get(at(q)).map_or(-1, |s| s.visible_ms);
    format!(
        "p50 {p50:.1} ms, p99 {p99:.1} ms, p999 {p999:.1} ms over {n} actions (touchpoint to action decided p50 {d50} ms, p99 {d99} ms; decided to read_committed receipt p50 {} ms, p99 {} ms)",
        visible(0.50),
        visible(0.99)
    )
}

/// p50, p99 and p999 of the probe's latencies after the warm-up, and the
/// seconds of the run its slowest hundredth was produced in.
pub(super) fn probe_summary(samples: &[(i64, i64)]) -> String {
    let mut samples = samples.to_vec();
    // The warm-up's records are left out, as they are from the actions'.
    let first = samples.iter().map(|s| s.1).min().unwrap_or(0);
    let measured = first + 1000 * WARMUP_SECONDS as i64;
    samples.retain(|s| s.1 >= measured);
    let n = samples.len();
    if n == 0 {
        return "no records after the warm-up".into();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)].0;
    let mut slow: Vec<i64> = samples[n - n / 100..]
        .iter()
        .map(|s| (s.1 - measured) / 1000)
        .collect();
    slow.sort_unstable();
    slow.dedup();
    format!(
        "p50 {} ms, p99 {} ms, p999 {} ms over {n} records; the slowest 1% produced in seconds {:?} of the measured run",
        at(0.5),
        at(0.99),
        at(0.999),
        slow
    )
}
