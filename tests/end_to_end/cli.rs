//! The binary refuses a bad configuration with the file, line and what to fix.

use crate::support::validate;

#[test]
fn bad_config_is_refused_with_file_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rapport.toml");
    std::fs::write(
        &path,
        "[kafka]\ngroup_id = \"g\"\n\n[engine]\ncommit_interval_ms = 0\n",
    )
    .unwrap();
    let out = validate(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5:", path.display())), "{err}");
    assert!(err.contains("commit_interval_ms"), "{err}");

    std::fs::write(&path, "[kafka]\ngroup_id = \"g\"\n").unwrap();
    let out = validate(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
