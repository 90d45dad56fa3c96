//! Helpers for the contract tests: the workspace's files, read from where Cargo runs the tests.

use std::path::{Path, PathBuf};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Every file with the extension below a workspace directory, sorted.
pub fn files(dir: &str, extension: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![workspace().join(dir)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(extension) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every ErrorEquals name in a state machine definition, with the state it is in.
pub fn error_names(definition: &serde_json::Value) -> Vec<(String, String)> {
    let mut names = Vec::new();
    collect(definition, &mut names);
    names
}

fn collect(states_holder: &serde_json::Value, names: &mut Vec<(String, String)>) {
    let Some(states) = states_holder.get("States").and_then(|s| s.as_object()) else {
        return;
    };
    for (name, state) in states {
        for clause in ["Retry", "Catch"] {
            for rule in state
                .get(clause)
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
            {
                for error in rule["ErrorEquals"].as_array().into_iter().flatten() {
                    names.push((name.clone(), error.as_str().unwrap_or_default().to_string()));
                }
            }
        }
        for branch in state
            .get("Branches")
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
        {
            collect(branch, names);
        }
        for key in ["Iterator", "ItemProcessor"] {
            if let Some(inner) = state.get(key) {
                collect(inner, names);
            }
        }
    }
}

/// The rows of the README's table under `header` (the header line itself), as written.
pub fn readme_table(header: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    readme
        .lines()
        .skip_while(|l| *l != header)
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(str::to_string)
        .collect()
}
