//! What a bench run costs, read from /proc: the process's CPU time and
//! resident memory, its CPU per thread, and the local broker's CPU.

use std::collections::HashMap;

/// CPU time this process has used (user and system), seconds (0 where /proc
/// is not available).
pub fn cpu_seconds() -> f64 {
    read_stat("/proc/self/stat").map_or(0.0, |(_, ticks)| ticks as f64 / 100.0)
}

/// A process's or thread's name and CPU clock ticks (user and system) from
/// its `stat` file at `path`: "pid (name) state ...", utime and stime being
/// the 12th and 13th fields after the name.
fn read_stat(path: impl AsRef<std::path::Path>) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((stat[open + 1..close].to_owned(), ticks))
}

/// What `read` makes of each thread of process `pid` ("self" for this one)
/// from its `/proc/<pid>/task/<tid>` directory, by thread id; threads it
/// makes nothing of (ended while being read) are left out.
fn per_thread<V>(pid: &str, read: impl Fn(&std::path::Path) -> Option<V>) -> HashMap<u64, V> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_string_lossy().parse::<u64>().ok()?;
            Some((tid, read(&task.path())?))
        })
        .collect()
}

/// The names of the engine's loop thread and of its processing workers.
pub const ENGINE_THREADS: &[&str] = &["rapport-engine", "rapport-worker"];

/// CPU time per thread of this process (user and system clock ticks by
/// thread id, with the thread's name), to say which part of the engine a
/// run's CPU went to: its loop and workers, its commit thread, librdkafka's
/// threads (fetching, compressing, sending) or RocksDB's (flushes,
/// compactions). Threads that ended during a run are no longer listed; their
/// time is what the process used beyond the listed threads'.
pub struct ThreadCpu(HashMap<u64, (String, u64)>);

impl ThreadCpu {
    pub fn now() -> ThreadCpu {
        Self::of("self")
    }

    /// The threads of process `pid` ("self" for this one).
    pub fn of(pid: &str) -> ThreadCpu {
        ThreadCpu(per_thread(pid, |task| read_stat(task.join("stat"))))
    }

    /// CPU seconds since `before` of the threads whose names start with one
    /// of each group's prefixes, in the groups' order, and last of those in
    /// no group.
    fn seconds_by_group(&self, before: &ThreadCpu, groups: &[&[&str]]) -> Vec<f64> {
        let mut secs = vec![0.0f64; groups.len() + 1];
        for (tid, (name, ticks)) in &self.0 {
            let was = before.0.get(tid).map_or(0, |(_, t)| *t);
            let group = groups
                .iter()
                .position(|prefixes| prefixes.iter().any(|p| name.starts_with(p)))
                .unwrap_or(groups.len());
            secs[group] += ticks.saturating_sub(was) as f64 / 100.0;
        }
        secs
    }

    /// µs per event by thread group since `before`, of `cpu_seconds` the
    /// whole process used over `events`.
    pub fn split_since(&self, before: &ThreadCpu, cpu_seconds: f64, events: u64) -> String {
        const GROUPS: [(&[&str], &str); 4] = [
            (ENGINE_THREADS, "engine loop and workers"),
            (&["rapport-commit"], "commit thread"),
            (&["rdk:"], "librdkafka"),
            (&["rocksdb:"], "RocksDB"),
        ];
        let prefixes: Vec<&[&str]> = GROUPS.iter().map(|(p, _)| *p).collect();
        let secs = self.seconds_by_group(before, &prefixes);
        let ended = (cpu_seconds - secs.iter().sum::<f64>()).max(0.0);
        let labels = GROUPS.iter().map(|(_, label)| *label);
        let mut parts = per_event(labels, &secs, events);
        parts.insert(
            GROUPS.len(),
            per_event(["workers that ended"], &[ended], events).remove(0),
        );
        parts.join(", ")
    }
}

/// Time on a core and time waiting for one, per thread, from the kernel's
/// scheduler statistics (`/proc/<pid>/task/<tid>/schedstat`: nanoseconds run,
/// nanoseconds runnable but waiting in a run queue), by thread id with the
/// thread's name. Says whether a latency is the engine's work or the engine
/// waiting for a core the broker and the rest of the machine also want.
pub struct Scheduled(HashMap<u64, (String, u64, u64)>);

impl Scheduled {
    /// The threads of process `pid` ("self" for this one).
    pub fn of(pid: &str) -> Scheduled {
        Scheduled(per_thread(pid, |task| {
            let name = std::fs::read_to_string(task.join("comm")).ok()?;
            let sched = std::fs::read_to_string(task.join("schedstat")).ok()?;
            let mut f = sched.split_whitespace().map(str::parse::<u64>);
            let (ran, waited) = (f.next()?.ok()?, f.next()?.ok()?);
            Some((name.trim().to_owned(), ran, waited))
        }))
    }

    /// Seconds run and seconds waited for a core since `before`, summed over
    /// the threads whose names start with one of `prefixes` ("" for all).
    pub fn since(&self, before: &Scheduled, prefixes: &[&str]) -> (f64, f64) {
        let (mut ran, mut waited) = (0u64, 0u64);
        for (tid, (name, r, w)) in &self.0 {
            if !prefixes.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            let (r0, w0) = before.0.get(tid).map_or((0, 0), |(_, r, w)| (*r, *w));
            ran += r.saturating_sub(r0);
            waited += w.saturating_sub(w0);
        }
        (ran as f64 / 1e9, waited as f64 / 1e9)
    }
}

/// Where a local broker's CPU went since `before`, µs per event over
/// `events`, by thread group: request handling and the network (Kafka's
/// `data-plane-kafka-*` threads, whose names the kernel cuts to the same
/// fifteen characters), garbage collection, the KRaft metadata and
/// controller threads, the log cleaner, and the rest.
pub fn broker_split(after: &ThreadCpu, before: &ThreadCpu, events: u64) -> String {
    const GROUPS: [(&[&str], &str); 4] = [
        (&["data-plane-kafk"], "requests and network"),
        (&["G1 ", "GC Thread", "VM Thread"], "GC"),
        (
            &[
                "kafka-1-raft",
                "quorum-controll",
                "kafka-1-metadat",
                "controller-",
                "broker-1-to-con",
            ],
            "KRaft",
        ),
        (&["kafka-log-clean"], "log cleaner"),
    ];
    let prefixes: Vec<&[&str]> = GROUPS.iter().map(|(p, _)| *p).collect();
    let secs = after.seconds_by_group(before, &prefixes);
    let labels = GROUPS.iter().map(|(_, label)| *label);
    per_event(labels, &secs, events).join(", ")
}

/// "label µs" for each of `secs` over `events`, the labels in order and "other"
/// for the one past them.
fn per_event<'a>(
    labels: impl IntoIterator<Item = &'a str>,
    secs: &[f64],
    events: u64,
) -> Vec<String> {
    let us = |s: f64| s * 1e6 / events.max(1) as f64;
    labels
        .into_iter()
        .chain(std::iter::once("other"))
        .zip(secs)
        .map(|(label, &s)| format!("{label} {:.1}", us(s)))
        .collect()
}

/// The process id of the Kafka broker serving `bootstrap`, when it is a JVM
/// on this machine (`deploy/kafka.sh`'s broker, its port in its command line).
pub fn local_broker(bootstrap: &str) -> Option<u32> {
    let port = bootstrap.rsplit(':').next()?;
    let mut found = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("kafka.Kafka") && cmd.contains(&format!("-{port}-")) {
            if found.is_some() {
                return None;
            }
            found = Some(pid);
        }
    }
    found
}

/// The stop-the-world garbage collection pauses of the local broker (see
/// [`local_broker`]) that began between `from_ms` and `to_ms` (epoch ms), as
/// `(start ms, pause ms)`, read from the GC log `deploy/kafka.sh` has the JVM
/// write (`gc.log` in its `kafka.logs.dir`). `None` when the broker is not
/// local or writes no GC log.
pub fn broker_gc_pauses(bootstrap: &str, from_ms: i64, to_ms: i64) -> Option<Vec<(i64, f64)>> {
    let pid = local_broker(bootstrap)?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let dir = String::from_utf8_lossy(&cmd)
        .split('\0')
        .find_map(|a| a.strip_prefix("-Dkafka.logs.dir=").map(str::to_owned))?;
    let dir = std::path::Path::new(&dir);
    // The log rotates to gc.log.0, .1, ...: read them all, the window decides.
    let mut pauses = Vec::new();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("gc.log") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        pauses.extend(
            text.lines()
                .filter_map(gc_pause)
                .filter(|&(at, _)| (from_ms..=to_ms).contains(&at)),
        );
    }
    pauses.sort_by_key(|&(at, _)| at);
    Some(pauses)
}

/// A pause line of the JVM's unified GC log with the `timemillis` decorator:
/// `[1764260000000ms] GC(12) Pause Young (Normal) (G1 Evacuation Pause) 300M->40M(512M) 5.123ms`.
/// The decorator stamps the line when the pause ended; the start is that less
/// the pause.
fn gc_pause(line: &str) -> Option<(i64, f64)> {
    let (stamp, rest) = line.strip_prefix('[')?.split_once("ms]")?;
    if !rest.contains(" Pause ") {
        return None;
    }
    let ended: i64 = stamp.parse().ok()?;
    let ms: f64 = rest
        .trim()
        .rsplit(' ')
        .next()?
        .strip_suffix("ms")?
        .parse()
        .ok()?;
    Some((ended - ms as i64, ms))
}

/// The machine's CPU time so far from `/proc/stat`'s first line, in clock
/// ticks: user nice system idle iowait irq softirq steal (guest time is in
/// user); empty where it is not readable.
fn cpu_ticks() -> Vec<u64> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else {
        return Vec::new();
    };
    cpu.split_whitespace()
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// The machine's CPU time so far, in clock ticks: (idle, including waiting
/// for I/O; all). Two readings give the share of the machine's cores nobody
/// used in between ([`idle_share`]).
pub fn machine_ticks() -> (u64, u64) {
    let f = cpu_ticks();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (idle, f.iter().sum())
}

/// The machine's CPU time so far, in clock ticks: (stolen, all). Stolen time
/// is when the hypervisor ran something else on a virtual machine's core
/// while one of its threads was ready to run: to that thread it is waiting
/// for a core like any other.
pub fn stolen_ticks() -> (u64, u64) {
    let f = cpu_ticks();
    (f.get(7).copied().unwrap_or(0), f.iter().sum())
}

/// The share of the machine's CPU left idle between two [`machine_ticks`].
pub fn idle_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    let all = after.1.saturating_sub(before.1);
    after.0.saturating_sub(before.0) as f64 / all.max(1) as f64
}

/// CPU time (user and system) process `pid` has used, seconds.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    read_stat(format!("/proc/{pid}/stat")).map(|(_, ticks)| ticks as f64 / 100.0)
}

/// This process's resident memory, MiB (0 where /proc is not available).
/// Starts the process's peak RSS (VmHWM) afresh from its current RSS, so a
/// run's peak is its own and not an earlier run's in the same process; read
/// once at the end, it costs the run nothing (sampling /proc every few
/// milliseconds did, and could miss a short peak).
pub fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS ({e}): the peak reported is the process's");
    }
}

/// A `kB` line of /proc/self/status (VmRSS:, VmHWM:), in MiB.
pub fn status_mib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
