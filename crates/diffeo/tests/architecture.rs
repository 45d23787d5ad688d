//! The import rules of docs/architecture.md, checked on the sources: bijections never import
//! training, data or io; the library never imports a front end.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let code: String = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            out.push((path, code));
        }
    }
    out
}

#[test]
fn bijections_import_no_training_data_or_io() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/bijections");
    let files = sources(&dir);
    assert!(files.len() >= 10);
    for (path, code) in files {
        for module in ["train", "fit", "flow_matching", "vi", "data", "io", "model", "pipeline", "bench", "testing", "families", "flow"] {
            for form in [format!("crate::{module}::"), format!("crate::{module};"), format!("crate::{{{module}")] {
                assert!(!code.contains(&form), "{} imports {module} ({form})", path.display());
            }
        }
    }
}

#[test]
fn the_library_imports_no_front_end() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    for (path, code) in sources(&dir) {
        for front in ["diffeo_cli", "diffeo_py", "clap::", "pyo3"] {
            assert!(!code.contains(front), "{} imports {front}", path.display());
        }
    }
}
