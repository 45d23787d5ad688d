//! The command line and the Python package only parse arguments, call the library and print or
//! convert: they hold no tensor code and name no burn type (docs/architecture.md).

use std::path::PathBuf;

#[test]
fn the_front_ends_name_no_tensor_type() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    let files = [root.join("src"), root.join("../diffeo-py/src")].into_iter().flat_map(|dir| std::fs::read_dir(dir).unwrap());
    for entry in files {
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
    assert!(checked >= 11);
}
