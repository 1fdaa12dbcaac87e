//! U-Boot's redundant environment, kept as two files on the boot partition: each copy is a
//! CRC32 (little-endian, over the data), a flag byte and the data (`name=value` strings, each
//! ending in NUL, a second NUL after the last). The copy with the newer flag (incremented,
//! wrapping, on every write) and a good CRC wins; a write replaces the other copy, so a power
//! cut mid-write leaves the previous state readable. This is the layout `fw_printenv` reads
//! from a two-line `fw_env.config`.

use super::{io_err, BootControlError, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes per copy, header included.
pub const ENV_SIZE: usize = 0x2000;
/// CRC32 and flag byte in front of the data.
const HEADER: usize = 5;
/// The two copies, at the top of the boot partition.
pub const ENV_FILES: [&str; 2] = ["uboot.env", "uboot-redund.env"];

pub type Vars = BTreeMap<String, String>;

/// Serializes one copy.
pub fn encode(vars: &Vars, flag: u8) -> std::result::Result<Vec<u8>, String> {
    let mut data = Vec::with_capacity(ENV_SIZE - HEADER);
    for (k, v) in vars {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(format!("variable {k:?} cannot be stored"));
        }
        data.extend_from_slice(k.as_bytes());
        data.push(b'=');
        data.extend_from_slice(v.as_bytes());
        data.push(0);
    }
    data.push(0);
    if data.len() > ENV_SIZE - HEADER {
        return Err(format!(
            "{} bytes of variables do not fit a {ENV_SIZE}-byte environment",
            data.len()
        ));
    }
    data.resize(ENV_SIZE - HEADER, 0);
    let mut out = Vec::with_capacity(ENV_SIZE);
    out.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
    out.push(flag);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Parses one copy; None when it is missing, short or fails its CRC.
pub fn decode(bytes: &[u8]) -> Option<(Vars, u8)> {
    if bytes.len() < ENV_SIZE {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[0..4].try_into().ok()?);
    let data = &bytes[HEADER..ENV_SIZE];
    if crc32fast::hash(data) != crc {
        return None;
    }
    let mut vars = Vars::new();
    for entry in data.split(|b| *b == 0) {
        if entry.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(entry);
        if let Some((k, v)) = text.split_once('=') {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    Some((vars, bytes[4]))
}

/// Whether flag `a` is newer than flag `b` (incremented on every write, wrapping at 255).
fn newer(a: u8, b: u8) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 128
}

/// The pair of environment copies under a directory.
pub struct RedundantEnv {
    paths: [PathBuf; 2],
}

impl RedundantEnv {
    pub fn new(dir: &Path) -> Self {
        RedundantEnv {
            paths: [dir.join(ENV_FILES[0]), dir.join(ENV_FILES[1])],
        }
    }

    /// Reads both copies; returns the winning one's variables, its index and flag.
    fn load(&self) -> Result<(Vars, usize, u8)> {
        let copies: Vec<Option<(Vars, u8)>> = self
            .paths
            .iter()
            .map(|p| std::fs::read(p).ok().and_then(|b| decode(&b)))
            .collect();
        match (&copies[0], &copies[1]) {
            (Some((v0, f0)), Some((v1, f1))) => {
                if newer(*f1, *f0) {
                    Ok((v1.clone(), 1, *f1))
                } else {
                    Ok((v0.clone(), 0, *f0))
                }
            }
            (Some((v, f)), None) => Ok((v.clone(), 0, *f)),
            (None, Some((v, f))) => Ok((v.clone(), 1, *f)),
            (None, None) => Err(BootControlError::Corrupt {
                path: self.paths[0].clone(),
                problem: format!(
                    "neither {} nor {} holds a valid U-Boot environment",
                    ENV_FILES[0], ENV_FILES[1]
                ),
            }),
        }
    }

    /// The current variables.
    pub fn read(&self) -> Result<Vars> {
        self.load().map(|(v, _, _)| v)
    }

    /// Stores `vars` in the older copy with the next flag; the newer copy stays as it was
    /// until this one is complete on disk.
    pub fn write(&self, vars: &Vars) -> Result<()> {
        let (target, flag) = match self.load() {
            Ok((_, current, flag)) => (1 - current, flag.wrapping_add(1)),
            Err(_) => (0, 0),
        };
        let bytes = encode(vars, flag).map_err(|problem| BootControlError::Corrupt {
            path: self.paths[target].clone(),
            problem,
        })?;
        let path = &self.paths[target];
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        f.write_all(&bytes).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
        Ok(())
    }

    /// Both copies of a fresh environment, for the image builder.
    pub fn initial_files(vars: &Vars) -> std::result::Result<[(String, Vec<u8>); 2], String> {
        Ok([
            (ENV_FILES[0].to_string(), encode(vars, 1)?),
            (ENV_FILES[1].to_string(), encode(vars, 0)?),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_copy_round_trips_and_a_flipped_bit_is_caught() {
        let v = vars(&[("BOOT_ORDER", "a b"), ("BOOT_A_LEFT", "3")]);
        let mut bytes = encode(&v, 7).unwrap();
        assert_eq!(bytes.len(), ENV_SIZE);
        assert_eq!(decode(&bytes), Some((v, 7)));
        bytes[40] ^= 1;
        assert_eq!(decode(&bytes), None);
    }

    #[test]
    fn writes_alternate_and_the_newer_copy_wins_across_the_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let env = RedundantEnv::new(dir.path());
        for (i, flag) in [254u8, 255, 0, 1].iter().enumerate() {
            let v = vars(&[("N", &i.to_string())]);
            // Seed copy 0 with flag 253 so the flags cross the wrap.
            if i == 0 {
                std::fs::write(dir.path().join(ENV_FILES[0]), encode(&v, 253).unwrap()).unwrap();
                std::fs::remove_file(dir.path().join(ENV_FILES[1])).ok();
            }
            env.write(&v).unwrap();
            let (got, _, f) = env.load().unwrap();
            assert_eq!(got, v);
            assert_eq!(f, *flag);
        }
    }

    #[test]
    fn a_torn_write_leaves_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let env = RedundantEnv::new(dir.path());
        env.write(&vars(&[("S", "old")])).unwrap();
        env.write(&vars(&[("S", "older-copy-next")])).unwrap();
        env.write(&vars(&[("S", "new")])).unwrap();
        // The write after this one goes to the other copy; tear it halfway.
        let (_, current, _) = env.load().unwrap();
        let target = dir.path().join(ENV_FILES[1 - current]);
        let full = encode(&vars(&[("S", "newest")]), 9).unwrap();
        std::fs::write(&target, &full[..ENV_SIZE / 2]).unwrap();
        assert_eq!(env.read().unwrap()["S"], "new");
    }

    #[test]
    fn fw_printenv_reads_what_we_write() {
        let Ok(out) = std::process::Command::new("fw_printenv")
            .arg("--version")
            .output()
        else {
            panic!("fw_printenv is missing: make deps installs libubootenv-tool");
        };
        let _ = out;
        let dir = tempfile::tempdir().unwrap();
        let env = RedundantEnv::new(dir.path());
        env.write(&vars(&[("BOOT_ORDER", "a b"), ("BOOT_A_LEFT", "3")]))
            .unwrap();
        env.write(&vars(&[("BOOT_ORDER", "b a"), ("BOOT_B_LEFT", "1")]))
            .unwrap();
        let config = dir.path().join("fw_env.config");
        std::fs::write(
            &config,
            format!(
                "{} 0x0 {ENV_SIZE:#x}\n{} 0x0 {ENV_SIZE:#x}\n",
                dir.path().join(ENV_FILES[0]).display(),
                dir.path().join(ENV_FILES[1]).display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new("fw_printenv")
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("BOOT_ORDER=b a"), "{text}");
        assert!(text.contains("BOOT_B_LEFT=1"), "{text}");
        assert!(!text.contains("BOOT_A_LEFT"), "{text}");
    }
}
