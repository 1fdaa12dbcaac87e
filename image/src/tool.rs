//! Running the host tools a build needs (mmdebstrap, dpkg-deb, mksquashfs, depmod, cargo, ...)
//! with errors that fit on one line.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// Runs `cmd` to completion and returns its standard output. On failure the error says what
/// was being done and quotes the most telling line of the tool's error output.
pub fn run(cmd: &mut Command, doing: &str) -> Result<Vec<u8>> {
    let program = cmd.get_program().to_string_lossy().to_string();
    let out = cmd
        .output()
        .with_context(|| format!("{doing}: cannot run {program} (install it with 'make deps')"))?;
    if !out.status.success() {
        bail!(
            "{doing}: {program} failed: {}",
            telling_line(&String::from_utf8_lossy(&out.stderr))
        );
    }
    Ok(out.stdout)
}

/// The first line that reads like an error, else the last line.
fn telling_line(stderr: &str) -> &str {
    let lines = || stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .find(|l| {
            let lower = l.to_ascii_lowercase();
            lower.starts_with("error") || l.starts_with("E:") || lower.starts_with("fatal")
        })
        .or_else(|| lines().next_back())
        .unwrap_or("no error output")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_error_line() {
        assert_eq!(telling_line("I: x\nE: no package\nW: y\n"), "E: no package");
        assert_eq!(
            telling_line("warning: a\nerror[E0425]: b\n"),
            "error[E0425]: b"
        );
        assert_eq!(telling_line("one\ntwo\n\n"), "two");
        assert_eq!(telling_line(""), "no error output");
    }

    #[test]
    fn failure_is_one_line_naming_the_tool() {
        let err = run(
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
            "testing",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "testing: sh failed: boom");
        let err = run(&mut Command::new("/nonexistent-tool"), "testing")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot run /nonexistent-tool"), "{err}");
    }
}
