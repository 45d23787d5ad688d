//! The command line only parses arguments, calls the library and prints: it holds no tensor code
//! and names no burn type (docs/architecture.md).

use std::path::PathBuf;

#[test]
fn the_command_line_names_no_tensor_type() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let code: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for word in ["Tensor", "burn", "Device", "diffeo::tensor", "diffeo::nn::fused", "rand::"] {
            assert!(!code.contains(word), "{} names {word}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 5);
}
