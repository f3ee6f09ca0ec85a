// Shared by the unit test in src/explain.rs and the binary test in
// tests/it/explain.rs (both `include!` it), so the two judge `explain` by the
// same expectations.

/// The lines `explain --format json` must print for the whole fixture file
/// (`fixtures`, oplog_entries.json) read in one run, built from the
/// hand-written expectations (`expected`, oplog_expected.json): every entry
/// as when read alone, except the two entries that complete a transaction
/// opened by earlier fixtures, which release its operations.
fn expected_explain_lines(fixtures: &str, expected: &str) -> Vec<String> {
    use serde_json::{Value, json};
    let fixtures: Vec<Value> = serde_json::from_str(fixtures).unwrap();
    let expected: Value = serde_json::from_str(expected).unwrap();
    let releases = [
        (
            "oplog-mongotools-txn-large-unprepared-3",
            &expected["sequences"][0]["steps"][3],
        ),
        (
            "oplog-mongotools-txn-commitTransaction",
            &expected["sequences"][1]["steps"][2],
        ),
    ];
    let mut lines = Vec::new();
    for fixture in &fixtures {
        let id = fixture["id"].as_str().unwrap();
        let want = releases
            .iter()
            .find(|(released, _)| *released == id)
            .map_or(&expected["entries"][id], |(_, step)| *step);
        match want.get("skipped") {
            Some(reason) => lines.push(json!({ "skipped": reason }).to_string()),
            None => {
                for publication in want["publications"].as_array().unwrap() {
                    let line = json!({
                        "channels": publication["channels"],
                        "message": publication["message"],
                    });
                    lines.push(line.to_string());
                }
            }
        }
    }
    lines
}
