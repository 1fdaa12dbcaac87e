//! A bad board file stops `cairn-image build` with one line naming the key, before anything
//! is written.

use std::process::Command;

fn build_with(board_text: &str) -> (bool, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let board = dir.path().join("bad.toml");
    std::fs::write(&board, board_text).expect("write board");
    let out = dir.path().join("out");
    let result = Command::new(env!("CARGO_BIN_EXE_cairn-image"))
        .args(["build", "--board"])
        .arg(&board)
        .arg("--out")
        .arg(&out)
        .env("CAIRN_MIRROR", "http://127.0.0.1:9/unused")
        .output()
        .expect("run cairn-image");
    assert!(!out.exists(), "nothing may be written for a bad board file");
    (
        result.status.success(),
        String::from_utf8_lossy(&result.stderr).to_string(),
        dir,
    )
}

fn shipped() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../boards/qemu-aarch64.toml"
    ))
    .expect("shipped board")
}

fn assert_one_line_naming(stderr: &str, key: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(key), "names {key}: {stderr}");
}

#[test]
fn unknown_key() {
    let (ok, err, _d) = build_with(&shipped().replace("[console]", "[console]\nspeed = 9600"));
    assert!(!ok);
    assert_one_line_naming(&err, "speed");
}

#[test]
fn missing_field() {
    let (ok, err, _d) =
        build_with(&shipped().replace("rust_target = \"aarch64-unknown-linux-musl\"\n", ""));
    assert!(!ok);
    assert_one_line_naming(&err, "rust_target");
}

#[test]
fn impossible_size() {
    // Whatever the shipped board says, the size becomes impossible.
    let board: String = shipped()
        .lines()
        .map(|l| {
            if l.starts_with("boot_mib =") {
                "boot_mib = 100000\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(board.contains("boot_mib = 100000"));
    let (ok, err, _d) = build_with(&board);
    assert!(!ok);
    assert_one_line_naming(&err, "partitions.boot_mib");
}

#[test]
fn malformed_toml() {
    let (ok, err, _d) = build_with("[board\nname = ");
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
}
