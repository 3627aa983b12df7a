//! The shipped journeys, and copies of them edited for one test.

use std::path::Path;

use rapport::config::Config;

/// The shipped journey files, `deploy/journeys/`.
pub fn journey_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/journeys")
}

/// Loads the shipped journeys into `cfg` with the post-delivery survey waiting
/// `wait` (e.g. "6s") instead of two hours; the copies live in `dir`.
/// Surveys are left out of quiet hours here: a test on wall-clock time would
/// otherwise see its survey deferred to the morning whenever it runs in the
/// evening (21:00-08:00 in the policy's default zone).
pub fn with_survey_wait(cfg: &mut Config, dir: &Path, wait: &str) {
    with_edited_journeys(cfg, dir, |text| {
        let quiet = "purposes = [\"marketing\", \"survey\"]\nchannels = [\"email\"";
        assert!(
            !text.contains("[policy.quiet_hours]") || text.contains(quiet),
            "the policy's quiet hours changed; update with_survey_wait"
        );
        text.replace("for = \"2h\"", &format!("for = \"{wait}\""))
            .replace(quiet, "purposes = [\"marketing\"]\nchannels = [\"email\"")
    });
}

/// Loads the shipped journeys and policy into `cfg` with the marketing cap at
/// `max` per 7 days instead of 3; the copies live in `dir`.
pub fn with_marketing_cap(cfg: &mut Config, dir: &Path, max: u32) {
    with_edited_journeys(cfg, dir, |text| {
        text.replace(
            "purpose = \"marketing\"\nmax = 3\n",
            &format!("purpose = \"marketing\"\nmax = {max}\n"),
        )
    });
}

/// Loads copies of the shipped journey files, each passed through `edit`, from `dir`.
fn with_edited_journeys(cfg: &mut Config, dir: &Path, edit: impl Fn(String) -> String) {
    for entry in std::fs::read_dir(journey_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = edit(std::fs::read_to_string(&path).unwrap());
            std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
        }
    }
    cfg.journeys = vec![format!("{}/*.toml", dir.display())];
    cfg.compile_journeys(dir).unwrap_or_else(|e| panic!("{e}"));
}
