//! The benchmark's results block: `cargo bench ... -- peers` writes the rows of
//! its run into the README between two markers, and nothing else.

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../benches/report/mod.rs"]
mod report;

use report::{block, write_readme, BEGIN, END};

#[test]
fn the_block_replaces_only_what_lies_between_the_markers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("README.md");
    let old = format!("# Title\n\nbefore\n\n{BEGIN}\n| old | row |\n{END}\n\nafter\n");
    std::fs::write(&path, &old).unwrap();
    let b = block("cmd", "2 cores", "2026-11-27", &["| new | row |".into()]);
    write_readme(&path, &b).unwrap();
    let new = std::fs::read_to_string(&path).unwrap();
    assert!(new.starts_with("# Title\n\nbefore\n\n"), "{new}");
    assert!(new.ends_with(&format!("{END}\n\nafter\n")), "{new}");
    assert!(new.contains("| new | row |") && !new.contains("| old | row |"));
    assert!(new.contains("Measured 2026-11-27 on 2 cores"));
    // Written again, the block replaces itself.
    write_readme(&path, &b).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), new);
}

#[test]
fn a_readme_without_the_markers_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("README.md");
    std::fs::write(&path, "no block here\n").unwrap();
    assert!(write_readme(&path, "x").is_err());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "no block here\n");
}
