//! Reproducible builds: rebuilding an image with the same SOURCE_DATE_EPOCH and version gives
//! the same bytes as the one `make images` built.

use cairn_image::build::{build, BuildOptions};
use qemu_tests::repo_root;
use std::collections::BTreeMap;

fn artifact_hashes(manifest: &serde_json::Value) -> BTreeMap<String, String> {
    manifest["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| {
            (
                a["file"].as_str().unwrap_or_default().to_string(),
                a["sha256"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn qemu_aarch64_rebuild_is_byte_identical() {
    let board = "qemu-aarch64";
    let root = repo_root();
    let out = std::env::var_os("CAIRN_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("out"));
    let first: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join(board).join("manifest.json"))
            .expect("build the image first: make image BOARD=qemu-aarch64"),
    )
    .expect("manifest");

    let again = root.join("target/qemu-tests/reproducible-out");
    let _ = std::fs::remove_dir_all(&again);
    let second = build(&BuildOptions {
        board_file: root.join("boards").join(format!("{board}.toml")),
        out: again.clone(),
        version: first["version"].as_str().expect("version").to_string(),
        source_date_epoch: first["source_date_epoch"].as_u64().expect("epoch"),
        mirror: None,
        cache: Some(out.join(".cache")),
        source: root.clone(),
        init_bin: None,
        cairn_bin: None,
        // The same key as `make images`: ed25519 signatures are deterministic.
        sign_key: Some(out.join("keys/cairn-dev.key")).filter(|k| k.exists()),
        trust_keys: vec![],
        min_version: None,
        broken_runtime: false,
    })
    .expect("second build");
    let second: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&second.manifest).expect("json"))
            .expect("manifest");

    let a = artifact_hashes(&first);
    let b = artifact_hashes(&second);
    assert!(a.keys().any(|k| k.ends_with(".img")));
    assert_eq!(
        a, b,
        "artifacts differ between two builds with the same inputs"
    );
    let _ = std::fs::remove_dir_all(&again);
}
