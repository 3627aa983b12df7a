//! The results table: every row a bench prints goes through [`push`] (or `row!`), which
//! also keeps it, so that `-- peers` can write the rows of its run into the
//! README's results block, headed by the machine they were measured on and
//! the date, instead of someone copying numbers by hand.

use std::path::Path;
use std::sync::Mutex;

/// Rows printed so far in this process, in order.
static ROWS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The README's results block starts after this line...
pub const BEGIN: &str =
    "<!-- results: written by `-- peers`; a run replaces everything up to the end marker -->";
/// ...and ends before this one.
pub const END: &str = "<!-- results end -->";

/// Prints a Markdown table row and keeps it for [`write_readme`].
pub fn push(line: String) {
    println!("{line}");
    ROWS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

/// [`push`] with `format!` arguments.
macro_rules! row {
    ($($arg:tt)*) => {
        $crate::report::push(format!($($arg)*))
    };
}
pub(crate) use row;

/// The rows kept so far.
pub fn rows() -> Vec<String> {
    ROWS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// What the numbers were measured on: CPU model and count, memory, kernel,
/// and where the broker ran.
pub fn machine(bootstrap: &str, broker_local: bool) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: f64 = m
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(kib / (1 << 20) as f64)
        })
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let broker = if broker_local {
        format!("the broker ({bootstrap}) on the same machine")
    } else {
        format!("the broker at {bootstrap}")
    };
    format!(
        "{cores} cores ({model}), {mem_gib:.0} GiB, Linux {}; {broker}",
        kernel.trim()
    )
}

/// Today's date and time in UTC, as `date -u` gives it.
pub fn now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown date".into())
}

/// The README's results block for `rows`, measured on `machine` at `date` by
/// `command`.
pub fn block(command: &str, machine: &str, date: &str, rows: &[String]) -> String {
    let mut out = format!(
        "{BEGIN}\n\nMeasured {date} on {machine}, by:\n\n```sh\n{command}\n```\n\n| benchmark | result |\n|---|---|\n"
    );
    for r in rows {
        out.push_str(r);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(END);
    out
}

/// Replaces the results block of the README at `path` (from [`BEGIN`] to
/// [`END`], both included) with `block`. Fails, leaving the file as it was,
/// when the markers are missing.
pub fn write_readme(path: &Path, block: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let (Some(start), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        anyhow::bail!(
            "{}: no results block ({BEGIN} ... {END}) to replace",
            path.display()
        );
    };
    anyhow::ensure!(
        start < end,
        "{}: results markers out of order",
        path.display()
    );
    let mut out = String::with_capacity(text.len() + block.len());
    out.push_str(&text[..start]);
    out.push_str(block);
    out.push_str(&text[end + END.len()..]);
    std::fs::write(path, out)?;
    Ok(())
}
