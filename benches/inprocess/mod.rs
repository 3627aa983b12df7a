//! The in-process measurements, no broker involved: journey evaluation by
//! journey count, the pipeline's stages one by one (`breakdown`, with the
//! profile codec alone), and replay through the processor the live engine
//! uses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rapport::config::StateConfig;
use rapport::ingest::route::KeyRule;
use rapport::ingest::Decoder;
use rapport::metrics::Metrics;
use rapport::processor::{Processor, Record, AHEAD};
use rapport::state::{topic_hash, StateBatch, StateStore, Stored};
use rapport_connectors::simulator::{SimConfig, Simulator};
use rapport_journeys::{CompiledJourneys, SHIPPED};
use rapport_model::{Profile, Touchpoint};

use super::T0;

/// `n` journeys: the shipped ones, repeated under new ids (without the
/// delivery policy, whose rules name the shipped ids: this is journey
/// evaluation alone).
fn journeys(n: usize) -> anyhow::Result<CompiledJourneys> {
    let files: Vec<&(&str, &str)> = SHIPPED
        .iter()
        .filter(|(_, text)| text.contains("[[journey]]"))
        .collect();
    let sources: Vec<(PathBuf, String)> = (0..n)
        .map(|k| {
            let (file, text) = *files[k % files.len()];
            let stem = file.trim_end_matches(".toml");
            let text = text.replace(&format!("id = \"{stem}\""), &format!("id = \"{stem}_{k}\""));
            (PathBuf::from(format!("{stem}_{k}.toml")), text)
        })
        .collect();
    Ok(CompiledJourneys::from_sources(&sources)?)
}

/// Journey evaluation alone: the cost per event of `n` journeys over profiles
/// already updated, 10k customers, events decoded beforehand.
pub fn journey_cost(n: usize, events: usize) -> anyhow::Result<()> {
    let compiled = journeys(n)?;
    let mut sim = Simulator::new(SimConfig {
        customers: 10_000,
        seed: 3,
        malformed_per_mille: 0,
    });
    let decoder = Decoder::new(1 << 20)?;
    let tps: Vec<Touchpoint> = (0..events)
        .map(|i| decoder.decode(&sim.next_record(T0 + i as i64 * 10).value))
        .collect::<Result<_, _>>()?;
    let mut profiles: HashMap<String, Profile> = HashMap::new();
    let mut out = rapport_journeys::Output::new();
    let (mut fired, mut spent) = (0usize, Duration::ZERO);
    for tp in &tps {
        let id = tp.identity().unwrap_or_default();
        let p = profiles
            .entry(id.to_owned())
            .or_insert_with(|| Profile::new(id));
        p.apply(tp);
        let started = Instant::now();
        compiled.on_event(p, tp, &mut out);
        spent += started.elapsed();
        fired += out.actions.len();
        out.clear();
    }
    crate::report::row!(
        "| journey evaluation, {n} journeys loaded, {events} events, 10k customers | {:.2} µs/event ({fired} actions) |",
        spent.as_secs_f64() * 1e6 / events as f64
    );
    Ok(())
}

/// Where an event's time goes: decoding alone, decoding and the profile update,
/// and those plus the shipped journeys and delivery policy (10k customers, one core).
pub fn breakdown(events: usize) -> anyhow::Result<()> {
    let mut sim = Simulator::new(SimConfig {
        customers: 10_000,
        seed: 1,
        malformed_per_mille: 0,
    });
    let records: Vec<Vec<u8>> = (0..events)
        .map(|i| sim.next_record(T0 + i as i64 * 10).value)
        .collect();
    let decoder = Decoder::new(1 << 20)?;
    let journeys = CompiledJourneys::shipped()?;
    for stage in ["decode", "decode + profile", "decode + profile + journeys"] {
        let mut profiles: HashMap<String, Profile> = HashMap::new();
        let mut out = rapport_journeys::Output::new();
        let started = Instant::now();
        for bytes in &records {
            let tp = decoder.decode(bytes)?;
            if stage == "decode" {
                continue;
            }
            let id = tp.identity().unwrap_or_default();
            let p = match profiles.get_mut(id) {
                Some(p) => p,
                None => profiles
                    .entry(id.to_owned())
                    .or_insert_with(|| Profile::new(id)),
            };
            p.apply(&tp);
            if stage.ends_with("journeys") {
                journeys.on_event(p, &tp, &mut out);
                out.clear();
            }
        }
        let secs = started.elapsed().as_secs_f64();
        crate::report::row!(
            "| {stage}, {events} events, 10k customers | {:.2} µs/event |",
            secs * 1e6 / events as f64
        );
    }
    Ok(())
}

/// The profiles of `customers` simulated customers after `per_customer`
/// touchpoints each on average, as a commit stores them (with the source
/// offset they reflect).
pub fn stored_profiles(customers: u64, per_customer: usize) -> anyhow::Result<Vec<Stored>> {
    let mut sim = Simulator::new(SimConfig {
        customers,
        seed: 1,
        malformed_per_mille: 0,
    });
    let decoder = Decoder::new(1 << 20)?;
    let journeys = CompiledJourneys::shipped()?;
    let mut out = rapport_journeys::Output::new();
    let mut profiles: HashMap<String, Profile> = HashMap::new();
    for i in 0..customers as usize * per_customer {
        let tp = decoder.decode(&sim.next_record(T0 + i as i64 * 10).value)?;
        let id = tp.identity().unwrap_or_default().to_owned();
        let p = profiles
            .entry(id.clone())
            .or_insert_with(|| Profile::new(&id));
        p.apply(&tp);
        journeys.on_event(p, &tp, &mut out);
        out.clear();
    }
    // As a commit stores them: with the source offset they reflect.
    Ok(profiles
        .into_values()
        .map(|profile| {
            let mut s = Stored {
                profile,
                known: true,
                ..Default::default()
            };
            s.advance(topic_hash("touchpoints"), 0, 1_000_000);
            s
        })
        .collect())
}

/// What storing and reading back a profile costs: `customers` profiles built
/// from `per_customer` simulated touchpoints each (the `-- guarantees` input's
/// shape), encoded and then decoded, one core. Every event whose profile left
/// the decoded cache pays one decode, and every commit one encode per changed
/// profile.
pub fn profile_codec(customers: u64, per_customer: usize) -> anyhow::Result<()> {
    let profiles = stored_profiles(customers, per_customer)?;
    let started = Instant::now();
    let encoded: Vec<Vec<u8>> = profiles.iter().map(Stored::encode).collect();
    let encode_us = started.elapsed().as_secs_f64() * 1e6 / profiles.len() as f64;
    let started = Instant::now();
    let mut decoded = 0usize;
    for (bytes, s) in encoded.iter().zip(&profiles) {
        decoded += Stored::decode(&s.profile.id, 0, bytes)?.profile.events as usize;
    }
    let decode_us = started.elapsed().as_secs_f64() * 1e6 / profiles.len() as f64;
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    crate::report::row!(
        "| profile codec, {} profiles of {per_customer} touchpoints on average ({decoded} events), mean {} bytes stored | encode {encode_us:.2} µs, decode {decode_us:.2} µs per profile |",
        profiles.len(),
        bytes / profiles.len().max(1),
    );
    let few = &profiles[..profiles.len().min(20)];
    let (encode_us, decode_us) = codec_in_cache(few);
    crate::report::row!(
        "| profile codec in the CPU's cache: the same {} of those profiles over and over, best of 5 passes of 100k | encode {encode_us:.2} µs, decode {decode_us:.2} µs per profile (the rest of the figures above is waiting for memory) |",
        few.len()
    );
    Ok(())
}

/// Encoding and decoding `few` profiles again and again, so that they stay in
/// the CPU's cache: what the codec costs in instructions, µs per profile (best
/// of five passes of 100k).
fn codec_in_cache(few: &[Stored]) -> (f64, f64) {
    let rounds = 100_000 / few.len().max(1);
    let per_profile = (rounds * few.len()) as f64;
    let mut out = Vec::with_capacity(1 << 16);
    let encode = best_of_five(per_profile, || {
        for _ in 0..rounds {
            for s in few {
                out.clear();
                s.profile.encode_into(&mut out);
            }
        }
    });
    let encoded: Vec<Vec<u8>> = few.iter().map(|s| s.profile.encode()).collect();
    let decode = best_of_five(per_profile, || {
        for _ in 0..rounds {
            for e in &encoded {
                std::hint::black_box(Profile::decode(e).map(|p| p.events).unwrap_or(0));
            }
        }
    });
    (encode, decode)
}

/// The fastest of five runs of `pass`, in µs per one of its `items`.
fn best_of_five(items: f64, mut pass: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let started = Instant::now();
            pass();
            started.elapsed().as_secs_f64() * 1e6 / items
        })
        .fold(f64::MAX, f64::min)
}

/// Replay throughput: records through the one processor the live engine uses
/// (decode, profile, emotional state, the shipped journeys and delivery policy,
/// timers) on one core, with the
/// profiles in RocksDB behind a cache.
/// Returns the median µs per event.
pub fn replay(events: usize, customers: u64) -> anyhow::Result<f64> {
    let mut sim = Simulator::new(SimConfig {
        customers,
        seed: 1,
        malformed_per_mille: 0,
    });
    let records: Vec<Vec<u8>> = (0..events)
        .map(|i| sim.next_record(T0 + i as i64 * 10).value)
        .collect();
    // Three passes, each with fresh state: the median is what to expect, the
    // range what a shared machine adds to it.
    let mut rates = Vec::new();
    let mut fired = 0;
    for _ in 0..3 {
        let pass = replay_pass(&records, customers)?;
        rates.push(events as f64 / pass.secs);
        eprintln!("replay pass: {:.0} events/s", events as f64 / pass.secs);
        fired = pass.actions;
    }
    rates.sort_by(f64::total_cmp);
    crate::report::row!(
        "| replay through the processor, {events} JSON events, {customers} customers (decode + profile + emotional state + the 8 shipped journeys and policy, one core) | {:.0} events/s median of 3 ({:.0}-{:.0}; {:.2} µs/event, {fired} actions) |",
        rates[1],
        rates[0],
        rates[2],
        1e6 / rates[1]
    );
    Ok(1e6 / rates[1])
}

/// One pass of [`replay`].
struct Pass {
    secs: f64,
    actions: usize,
}

/// One pass of [`replay`] with fresh state.
fn replay_pass(records: &[Vec<u8>], customers: u64) -> anyhow::Result<Pass> {
    let dir = tempfile::tempdir()?;
    let state = Arc::new(StateStore::open(&StateConfig {
        path: dir.path().to_owned(),
        ..Default::default()
    })?);
    let mut processor = Processor::new(
        1 << 20,
        KeyRule::off(),
        Arc::new(CompiledJourneys::shipped()?),
        state,
        Metrics::new(),
        // Room for every customer's profile: the pass measures the pipeline, not the cache.
        (customers as usize).saturating_mul(16 << 10),
    )?;
    processor.start_partition(0)?;
    let mut out = Vec::new();
    let mut fired = 0usize;
    let record = |i: usize| Record {
        topic: "bench",
        partition: 0,
        offset: i as i64,
        key: None,
        value: &records[i],
    };
    let started = Instant::now();
    for i in 0..records.len().min(AHEAD) {
        processor.look_ahead(&record(i));
    }
    for i in 0..records.len() {
        if i + AHEAD < records.len() {
            processor.look_ahead(&record(i + AHEAD));
        }
        processor.process(&record(i), &mut out)?;
        fired += out.len();
        out.clear();
    }
    let secs = started.elapsed().as_secs_f64();
    // What a commit then pays for the changelog records of every changed
    // profile (encoding them, one thread).
    let encoding = Instant::now();
    let (count, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    processor.changes(&mut StateBatch::default(), |(_, _, v)| {
        count.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(v.len() as u64, Ordering::Relaxed);
        Ok::<_, std::convert::Infallible>(())
    })?;
    let (count, bytes) = (count.into_inner().max(1), bytes.into_inner());
    eprintln!(
        "commit after the pass: {count} changed profiles of {} bytes on average, {:.0} ns each",
        bytes / count,
        encoding.elapsed().as_secs_f64() * 1e9 / count as f64
    );
    Ok(Pass {
        secs,
        actions: fired,
    })
}
