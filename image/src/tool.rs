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
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The whole output is kept for the user; the error itself stays one line.
        let name = std::path::Path::new(&program)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "tool".into());
        let log = std::env::temp_dir().join(format!("cairn-image-{name}.log"));
        let saved = std::fs::write(&log, stderr.as_bytes()).is_ok();
        bail!(
            "{doing}: {program} failed: {}{}",
            telling_line(&stderr),
            if saved {
                format!(" (full output in {})", log.display())
            } else {
                String::new()
            }
        );
    }
    Ok(out.stdout)
}

/// The line that best names the cause: running out of disk space wherever it is said, else
/// the first line that reads like an error (a tool's own `error:` or one it quotes from a
/// helper, as dpkg-deb does from tar), else the last line.
fn telling_line(stderr: &str) -> &str {
    let lines = || stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    let lower = |l: &str| l.to_ascii_lowercase();
    lines()
        .find(|l| lower(l).contains("no space left on device"))
        .or_else(|| {
            lines().find(|l| {
                let lower = lower(l);
                lower.starts_with("error") || l.starts_with("E:") || lower.starts_with("fatal")
            })
        })
        .or_else(|| {
            lines().find(|l| {
                let lower = lower(l);
                lower.contains(": cannot ") || lower.contains(": error:")
            })
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
        // dpkg-deb quotes tar, whose first complaint is the cause.
        assert_eq!(
            telling_line(
                "tar: ./boot/vmlinuz: Cannot write: Input/output error\n\
                 dpkg-deb: error: tar subprocess returned error exit status 2\n"
            ),
            "tar: ./boot/vmlinuz: Cannot write: Input/output error"
        );
        assert_eq!(
            telling_line(
                "I: x\nerror: write failed\ntar: ./a: Wrote only 512 of 10240 bytes: No space left on device\n"
            ),
            "tar: ./a: Wrote only 512 of 10240 bytes: No space left on device"
        );
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
        assert!(err.starts_with("testing: sh failed: boom"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = run(&mut Command::new("/nonexistent-tool"), "testing")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot run /nonexistent-tool"), "{err}");
    }
}
