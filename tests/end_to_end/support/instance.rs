//! `rapport run` processes: their configuration file, starting, waiting on
//! them, and group members.

use std::path::Path;
use std::time::{Duration, Instant};

use rapport::config::Config;

use super::kafka::{bootstrap, committed_total_on, end_total_on, Topics};

/// Writes `cfg` as a TOML file for `rapport run`.
pub fn write_config(cfg: &Config, path: &Path) {
    let topics: Vec<String> = cfg
        .kafka
        .touchpoint_topics
        .iter()
        .map(|t| format!("{t:?}"))
        .collect();
    let consumer: String = cfg
        .kafka
        .consumer
        .iter()
        .map(|(k, v)| format!("{k:?} = {v:?}\n"))
        .collect();
    let client: String = cfg
        .kafka
        .client
        .iter()
        .map(|(k, v)| format!("{k:?} = {v:?}\n"))
        .collect();
    let guarantee = cfg.engine.guarantee.as_str();
    let journeys: Vec<String> = cfg.journeys.iter().map(|j| format!("{j:?}")).collect();
    let text = format!(
        "journeys = [{}]\n\n[kafka]\nbootstrap_servers = {:?}\ngroup_id = {:?}\ntouchpoint_topics = [{}]\naction_topic = {:?}\ndead_letter_topic = {:?}\ndecisions_topic = {:?}\n\n\
         [kafka.client]\n{client}\n\
         [kafka.consumer]\n{consumer}\n\
         [state]\npath = {:?}\nblock_cache_mb = 16\nwrite_buffer_mb = 16\n\n\
         [engine]\nguarantee = {guarantee:?}\ninstance_id = {:?}\nwall_clock_timers = {}\ncommit_interval_ms = {}\nout_of_group_timeout_ms = {}\n\n\
         [http]\nlisten = {:?}\n",
        journeys.join(", "),
        cfg.kafka.bootstrap_servers,
        cfg.kafka.group_id,
        topics.join(", "),
        cfg.kafka.action_topic,
        cfg.kafka.dead_letter_topic,
        cfg.kafka.decisions_topic,
        cfg.state.path.display().to_string(),
        cfg.engine.instance_id,
        cfg.engine.wall_clock_timers,
        cfg.engine.commit_interval_ms,
        cfg.engine.out_of_group_timeout_ms,
        cfg.http.listen,
    );
    let text = match &cfg.http.advertised_url {
        Some(u) => format!("{text}advertised_url = {u:?}\n"),
        None => text,
    };
    std::fs::write(path, text).unwrap();
}

/// A `rapport run` process.
pub struct Instance {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Instance {
    /// Starts `rapport run` on `cfg`; its log goes to a file beside the config.
    pub fn spawn(cfg: &Config, dir: &Path, name: &str) -> Instance {
        let conf = dir.join(format!("{name}.toml"));
        write_config(cfg, &conf);
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_rapport"))
            .args(["run", "--config"])
            .arg(&conf)
            .env(
                "RAPPORT_LOG",
                std::env::var("RAPPORT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("rapport run starts");
        Instance { child, log }
    }

    /// SIGKILL: no chance to commit or clean up.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "rapport exited with {status} on SIGTERM; log: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Waits until the instance has restored and taken `partitions` partitions.
    pub fn wait_ready(&mut self, partitions: usize) {
        self.wait_log("partition ready", partitions);
    }

    /// The instance's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the instance's log has `times` lines containing `what`.
    pub fn wait_log(&mut self, what: &str, times: usize) {
        let done = |i: &Instance| i.log_text().matches(what).count() >= times;
        self.wait_until(
            &format!("{what:?} logged {times} times"),
            Duration::from_secs(120),
            Duration::from_millis(10),
            done,
        );
    }

    /// Waits until `done` holds, asking `every` so often, failing the test
    /// with `what` and the instance's log if the instance exits or `limit`
    /// passes first, so a stuck engine fails with its log instead of holding
    /// the suite up.
    pub fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        every: Duration,
        mut done: impl FnMut(&Instance) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "not within {} s: {what}; log:\n{}",
                limit.as_secs(),
                self.log_text()
            );
            std::thread::sleep(every);
        }
    }

    /// Fails the test if the process has exited (with its log).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "rapport exited early with {status}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// An instance still running when its test ends, as when the test fails, is
/// stopped, so no `rapport run` outlives its test and loads the machine for
/// the next ones; a failing test also shows the end of its log (a failure in a
/// helper, such as reading the group's offsets, does not print it).
impl Drop for Instance {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if std::thread::panicking() {
                // A still running engine that failed its test may be stuck:
                // where each of its threads waits says where.
                let stacks = thread_stacks(self.child.id());
                eprintln!("threads of rapport run {}:\n{stacks}", self.child.id());
                keep_text(&stacks, &format!("{}.threads.txt", self.child.id()));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("last lines of {}:\n{tail}", self.log.display());
            // The log lives in the test's temporary directory, gone once the
            // test unwinds.
            let name = self.log.file_name().unwrap_or_default().to_string_lossy();
            keep_log(&self.log, &format!("{}.{name}", self.child.id()));
        }
    }
}

/// Waits until group `group` has committed everything in `topic`.
pub fn wait_caught_up(group: &str, topic: &str, instances: &mut [&mut Instance]) {
    wait_caught_up_on(&bootstrap(), group, topic, instances)
}

/// [`wait_caught_up`] on the cluster at `bootstrap`.
pub fn wait_caught_up_on(
    bootstrap: &str,
    group: &str,
    topic: &str,
    instances: &mut [&mut Instance],
) {
    let end = end_total_on(bootstrap, topic);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = committed_total_on(bootstrap, group, topic);
        if done >= end {
            eprintln!("group {group} caught up: committed {done} of {end}");
            return;
        }
        for i in instances.iter_mut() {
            i.assert_running();
        }
        assert!(
            Instant::now() < deadline,
            "group {group} committed {done} of {end}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Instance `name` of group `group`, its state in `dir/name`; it notices a dead
/// member within seconds, not the default 45 s.
pub fn group_member(topics: &Topics, dir: &Path, group: &str, name: &str) -> Config {
    let mut cfg = topics.config(&dir.join(name), group);
    cfg.engine.instance_id = name.into();
    cfg.kafka
        .consumer
        .insert("session.timeout.ms".into(), "6000".into());
    cfg.kafka
        .consumer
        .insert("heartbeat.interval.ms".into(), "1000".into());
    cfg
}

/// `rapport validate --config path`.
pub fn validate(path: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// Every thread's stack of process `pid`, by gdb when the machine has it
/// (within a minute), else each thread's name, state and the kernel function
/// it waits in, from /proc.
fn thread_stacks(pid: u32) -> String {
    let gdb = std::process::Command::new("timeout")
        .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-ex", "thread apply all bt 40"])
        .output();
    if let Ok(out) = gdb {
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("Thread ") {
            return text.into_owned();
        }
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::from("(no /proc entry)");
    };
    let read = |task: &Path, f: &str| {
        std::fs::read_to_string(task.join(f))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    tasks
        .flatten()
        .map(|t| {
            let task = t.path();
            let stat = read(&task, "stat");
            let state = stat.rsplit(") ").next().and_then(|r| r.split(' ').next());
            format!(
                "{} {} {} {}",
                t.file_name().to_string_lossy(),
                read(&task, "comm"),
                state.unwrap_or("?"),
                read(&task, "wchan")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `text` as `name` into the directory RAPPORT_TEST_KEEP_LOGS names;
/// nothing without it.
fn keep_text(text: &str, name: &str) {
    if let Some(kept) = kept_as(name) {
        if std::fs::write(&kept, text).is_ok() {
            eprintln!("kept in {}", kept.display());
        }
    }
}

/// Copies the log at `log` into the directory RAPPORT_TEST_KEEP_LOGS names,
/// as `name`, so that a failing test's logs outlive it; nothing without it.
pub fn keep_log(log: &Path, name: &str) {
    if let Some(kept) = kept_as(name) {
        if std::fs::copy(log, &kept).is_ok() {
            eprintln!("log kept in {}", kept.display());
        }
    }
}

/// Where a kept file named `name` goes, if RAPPORT_TEST_KEEP_LOGS asks to keep any.
fn kept_as(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("RAPPORT_TEST_KEEP_LOGS").map(|dir| Path::new(&dir).join(name))
}
