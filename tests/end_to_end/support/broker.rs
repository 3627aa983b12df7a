//! A broker of a test's own, to stop and restart without disturbing the others.

/// A broker of its own (deploy/kafka.sh on other ports), so stopping and
/// restarting it does not disturb the tests on the suite's broker; stopped
/// when dropped. Each test that uses one picks ports no other test uses.
pub struct OwnBroker {
    port: u16,
}

impl OwnBroker {
    /// Starts the broker on `port` (controller on `port + 1`) from empty
    /// storage; returns it with its bootstrap address. `None`, with a note,
    /// when RAPPORT_KAFKA_BOOTSTRAP names an external cluster: the test is
    /// skipped.
    ///
    /// Empty, because the topics of every earlier run on the machine would
    /// otherwise stay in its storage, and a restart in the test loads them all
    /// before its coordinators answer: with 1589 partitions (18 GB) left by
    /// earlier runs, the test's reader of the group's offsets timed out for a
    /// minute after a restart.
    pub fn start(port: u16) -> Option<(OwnBroker, String)> {
        if std::env::var("RAPPORT_KAFKA_BOOTSTRAP").is_ok_and(|b| !b.is_empty()) {
            eprintln!("skipped: this test stops a local broker of its own, and RAPPORT_KAFKA_BOOTSTRAP names an external cluster");
            return None;
        }
        let b = OwnBroker { port };
        b.kafka_sh("reset");
        let bootstrap = b.kafka_sh("start");
        Some((b, bootstrap))
    }

    /// Runs `deploy/kafka.sh cmd` for this broker; its stdout.
    pub fn kafka_sh(&self, cmd: &str) -> String {
        let out = std::process::Command::new("bash")
            .arg(rapport::broker::script())
            .arg(cmd)
            .env("RAPPORT_KAFKA_PORT", self.port.to_string())
            .env("RAPPORT_KAFKA_CONTROLLER_PORT", (self.port + 1).to_string())
            .env_remove("RAPPORT_KAFKA_BOOTSTRAP")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kafka.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kafka_sh("stop");
        // The broker's side of a failure (which coordinators loaded, when),
        // kept with the engine's log.
        if std::thread::panicking() {
            let log = self.kafka_sh("logfile");
            eprintln!(
                "the broker's warnings and errors near the end of {log}:\n{}",
                warnings(&std::fs::read_to_string(&log).unwrap_or_default())
            );
            let name = format!("{}.kafka-{}.log", std::process::id(), self.port);
            super::keep_log(std::path::Path::new(&log), &name);
        }
    }
}

/// The last 60 warnings and errors among the last 5000 lines of a broker's
/// log (`text`): what the broker did about the clients of a failed test
/// (connections it closed, coordinators it loaded or gave up), printed with
/// the failure, where CI keeps no files.
fn warnings(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let recent = &lines[lines.len().saturating_sub(5000)..];
    let picked: Vec<&str> = recent
        .iter()
        .copied()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    picked[picked.len().saturating_sub(60)..].join("\n")
}
