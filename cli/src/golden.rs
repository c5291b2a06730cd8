//! Golden files for the CLI's text output (`cli/tests/golden/`). After a deliberate change,
//! `UPDATE_GOLDEN=1 cargo test -p nodemesh` rewrites them; review the diff.

/// Compares `actual` with the golden file `name`, and checks it fits 80 columns.
pub fn check_golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("writing golden file");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(actual, expected, "output differs from {}", path.display());
    for line in actual.lines() {
        assert!(line.chars().count() <= 80, "wider than 80 columns: {line:?}");
    }
}
