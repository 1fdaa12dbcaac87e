//! `uboot-env`: U-Boot picks the slot in its boot script, from variables kept in a redundant
//! environment on the boot partition (see [`super::uboot_env`]):
//!
//! - `BOOT_ORDER`: the slots to try, first preferred (`"b a"`).
//! - `BOOT_A_LEFT`, `BOOT_B_LEFT`: boot attempts left. The script decrements the first slot
//!   in `BOOT_ORDER` that has attempts left, saves the environment and boots it; a healthy
//!   boot resets the counter. A slot whose attempts run out is passed over.
//! - `CAIRN_A_STATE`, `CAIRN_B_STATE`: `empty`, `good`, `trial` or `bad`, for status only;
//!   the script carries them through unchanged.

use super::uboot_env::{RedundantEnv, Vars, ENV_FILES, ENV_SIZE};
use super::{BootControl, BootStatus, Result, SlotState, GOOD_BOOTS, TRIAL_BOOTS};
use crate::Slot;
use std::path::Path;

const ORDER: &str = "BOOT_ORDER";

fn left_var(slot: Slot) -> String {
    format!("BOOT_{}_LEFT", slot.letter().to_ascii_uppercase())
}

fn state_var(slot: Slot) -> String {
    format!("CAIRN_{}_STATE", slot.letter().to_ascii_uppercase())
}

/// The variables the boot script imports and saves: nothing else in the files reaches U-Boot.
fn variable_names() -> String {
    let mut names = vec![ORDER.to_string()];
    for s in Slot::ALL {
        names.push(left_var(s));
        names.push(state_var(s));
    }
    names.join(" ")
}

pub struct UbootEnv {
    env: RedundantEnv,
}

impl UbootEnv {
    pub fn new(boot_dir: &Path) -> Self {
        UbootEnv {
            env: RedundantEnv::new(boot_dir),
        }
    }

    /// The environment of a freshly flashed disk: slot A good, slot B empty.
    pub fn initial_vars() -> Vars {
        let mut v = Vars::new();
        v.insert(ORDER.into(), "a".into());
        v.insert(left_var(Slot::A), GOOD_BOOTS.to_string());
        v.insert(left_var(Slot::B), "0".into());
        v.insert(state_var(Slot::A), "good".into());
        v.insert(state_var(Slot::B), "empty".into());
        v
    }

    /// Both environment files of a freshly flashed disk, as (name, bytes).
    pub fn initial_files() -> std::result::Result<[(String, Vec<u8>); 2], String> {
        RedundantEnv::initial_files(&Self::initial_vars())
    }

    fn order(vars: &Vars) -> Vec<Slot> {
        vars.get(ORDER)
            .map(|o| {
                o.split_whitespace()
                    .filter_map(|s| s.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn left(vars: &Vars, slot: Slot) -> u32 {
        // The script stores what `setexpr` prints: hexadecimal.
        vars.get(&left_var(slot))
            .and_then(|v| u32::from_str_radix(v.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0)
    }

    fn update(&mut self, change: impl FnOnce(&mut Vars)) -> Result<()> {
        let mut vars = self.env.read().unwrap_or_else(|_| Self::initial_vars());
        change(&mut vars);
        self.env.write(&vars)
    }
}

fn set_order(vars: &mut Vars, order: &[Slot]) {
    let text: Vec<&str> = order.iter().map(|s| s.letter()).collect();
    vars.insert(ORDER.into(), text.join(" "));
}

impl BootControl for UbootEnv {
    fn name(&self) -> &'static str {
        "uboot-env"
    }

    fn status(&self) -> Result<BootStatus> {
        let vars = self.env.read()?;
        let order = Self::order(&vars);
        let state = |slot: Slot| match vars.get(&state_var(slot)).map(String::as_str) {
            Some("good") => SlotState::Good,
            Some("trial") => SlotState::Trial {
                tries_left: Self::left(&vars, slot),
            },
            Some("bad") => SlotState::Bad,
            _ => SlotState::Empty,
        };
        // What the script will pick: the first ordered slot with attempts left, else the first.
        let next = order
            .iter()
            .copied()
            .find(|s| Self::left(&vars, *s) > 0)
            .or_else(|| order.first().copied())
            .unwrap_or(Slot::A);
        Ok(BootStatus {
            a: state(Slot::A),
            b: state(Slot::B),
            next,
        })
    }

    fn set_trial(&mut self, slot: Slot) -> Result<()> {
        self.update(|v| {
            let mut order = vec![slot];
            order.extend(Self::order(v).into_iter().filter(|s| *s != slot));
            set_order(v, &order);
            v.insert(left_var(slot), TRIAL_BOOTS.to_string());
            v.insert(state_var(slot), "trial".into());
        })
    }

    fn commit(&mut self, slot: Slot) -> Result<()> {
        self.update(|v| {
            let other = slot.other();
            let mut order = vec![slot];
            if v.get(&state_var(other)).map(String::as_str) == Some("good") {
                order.push(other);
            }
            set_order(v, &order);
            v.insert(left_var(slot), GOOD_BOOTS.to_string());
            v.insert(state_var(slot), "good".into());
        })
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<()> {
        self.update(|v| {
            let order: Vec<Slot> = Self::order(v).into_iter().filter(|s| *s != slot).collect();
            set_order(v, &order);
            v.insert(left_var(slot), "0".into());
            v.insert(state_var(slot), "bad".into());
        })
    }
}

/// The U-Boot boot script (`boot.scr`): reads the environment files, picks the slot, counts
/// the attempt, saves the environment to the older copy and boots the slot's kernel. The
/// bootmeth that runs it sets `devtype`, `devnum` and `distro_bootpart`.
pub fn boot_script(cmdline: &str, kernel_name: &str) -> String {
    let vars = variable_names();
    let data = ENV_SIZE - 5;
    let size = ENV_SIZE;
    let (env0, env1) = (ENV_FILES[0], ENV_FILES[1]);
    format!(
        r#"# cairn boot script: A/B slot choice with boot counting (update/src/bootctl/uboot.rs)
setenv cairn_dev "${{devtype}} ${{devnum}}:${{distro_bootpart}}"
setenv BOOT_ORDER a
setenv BOOT_A_LEFT {GOOD_BOOTS}
setenv BOOT_B_LEFT 0
setenv CAIRN_A_STATE good
setenv CAIRN_B_STATE empty
setexpr cairn_c0 ${{ramdisk_addr_r}} + 0
setexpr cairn_c1 ${{ramdisk_addr_r}} + 100000
setexpr cairn_tmp ${{ramdisk_addr_r}} + 200000
setexpr cairn_f0a ${{cairn_c0}} + 4
setexpr cairn_f1a ${{cairn_c1}} + 4
setenv cairn_f0 none
setenv cairn_f1 none
mw.b ${{cairn_c0}} 0 {size:x}
mw.b ${{cairn_c1}} 0 {size:x}
if load ${{devtype}} ${{devnum}}:${{distro_bootpart}} ${{cairn_c0}} {env0}; then setexpr.b cairn_f0 *${{cairn_f0a}}; fi
if load ${{devtype}} ${{devnum}}:${{distro_bootpart}} ${{cairn_c1}} {env1}; then setexpr.b cairn_f1 *${{cairn_f1a}}; fi
# A copy is CRC32, flag byte, data; `env import -c` wants CRC32 then data.
setenv cairn_import 'mw.b ${{cairn_tmp}} 0 {size:x}; cp.b ${{cairn_src}} ${{cairn_tmp}} 4; setexpr cairn_s5 ${{cairn_src}} + 5; setexpr cairn_t4 ${{cairn_tmp}} + 4; cp.b ${{cairn_s5}} ${{cairn_t4}} {data:x}; env import -c ${{cairn_tmp}} {imp:x} {vars}'
setenv cairn_first 0
if test "${{cairn_f0}}" = none; then setenv cairn_first 1; fi
if test "${{cairn_f0}}" != none && test "${{cairn_f1}}" != none; then setexpr cairn_next ${{cairn_f0}} + 1; if itest ${{cairn_next}} == 100; then setenv cairn_next 0; fi; if itest ${{cairn_f1}} == ${{cairn_next}}; then setenv cairn_first 1; fi; fi
setenv cairn_flag 0
setenv cairn_env none
if test "${{cairn_first}}" = 0; then setenv cairn_src ${{cairn_c0}}; if run cairn_import; then setenv cairn_env 0; setenv cairn_flag ${{cairn_f0}}; fi; fi
if test "${{cairn_env}}" = none && test "${{cairn_f1}}" != none; then setenv cairn_src ${{cairn_c1}}; if run cairn_import; then setenv cairn_env 1; setenv cairn_flag ${{cairn_f1}}; fi; fi
if test "${{cairn_env}}" = none && test "${{cairn_f0}}" != none; then setenv cairn_src ${{cairn_c0}}; if run cairn_import; then setenv cairn_env 0; setenv cairn_flag ${{cairn_f0}}; fi; fi
if test "${{cairn_env}}" = none; then echo "cairn: no valid boot environment, using defaults"; fi
setenv cairn_slot
for s in ${{BOOT_ORDER}}; do
  if test -z "${{cairn_slot}}"; then
    if test "${{s}}" = a && itest ${{BOOT_A_LEFT}} -gt 0; then setexpr BOOT_A_LEFT ${{BOOT_A_LEFT}} - 1; setenv cairn_slot a; fi
    if test "${{s}}" = b && itest ${{BOOT_B_LEFT}} -gt 0; then setexpr BOOT_B_LEFT ${{BOOT_B_LEFT}} - 1; setenv cairn_slot b; fi
  fi
done
if test -z "${{cairn_slot}}"; then
  echo "cairn: no slot has boot attempts left; trying them again in order"
  setenv BOOT_A_LEFT {GOOD_BOOTS}
  setenv BOOT_B_LEFT {GOOD_BOOTS}
  for s in ${{BOOT_ORDER}}; do if test -z "${{cairn_slot}}"; then setenv cairn_slot ${{s}}; fi; done
  if test -z "${{cairn_slot}}"; then setenv cairn_slot a; fi
fi
# Save to the older copy with the next flag; the newer copy stays intact meanwhile.
setexpr cairn_flag ${{cairn_flag}} + 1
if itest ${{cairn_flag}} == 100; then setenv cairn_flag 0; fi
setenv cairn_out {env0}
if test "${{cairn_env}}" = 0; then setenv cairn_out {env1}; fi
mw.b ${{cairn_tmp}} 0 {size:x}
env export -c -s {imp:x} ${{cairn_tmp}} {vars}
mw.b ${{cairn_c0}} 0 {size:x}
cp.b ${{cairn_tmp}} ${{cairn_c0}} 4
mw.b ${{cairn_f0a}} ${{cairn_flag}} 1
setexpr cairn_s4 ${{cairn_tmp}} + 4
setexpr cairn_d5 ${{cairn_c0}} + 5
cp.b ${{cairn_s4}} ${{cairn_d5}} {data:x}
save ${{devtype}} ${{devnum}}:${{distro_bootpart}} ${{cairn_c0}} ${{cairn_out}} {size:x}
setenv bootargs "{cmdline} cairn.slot=${{cairn_slot}}"
echo "cairn: booting slot ${{cairn_slot}} (order ${{BOOT_ORDER}}, left a=${{BOOT_A_LEFT}} b=${{BOOT_B_LEFT}}) from ${{cairn_dev}}"
load ${{devtype}} ${{devnum}}:${{distro_bootpart}} ${{kernel_addr_r}} /${{cairn_slot}}/{kernel_name}
load ${{devtype}} ${{devnum}}:${{distro_bootpart}} ${{ramdisk_addr_r}} /${{cairn_slot}}/initrd.img
booti ${{kernel_addr_r}} ${{ramdisk_addr_r}}:${{filesize}} ${{fdtcontroladdr}}
"#,
        imp = size - 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, UbootEnv) {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in UbootEnv::initial_files().unwrap() {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let b = UbootEnv::new(dir.path());
        (dir, b)
    }

    /// What the boot script does at power-on, on the files.
    fn boot(dir: &Path) -> Slot {
        let env = RedundantEnv::new(dir);
        let mut v = env.read().unwrap();
        let order = UbootEnv::order(&v);
        let pick = order
            .iter()
            .copied()
            .find(|s| UbootEnv::left(&v, *s) > 0)
            .unwrap_or(order[0]);
        let left = UbootEnv::left(&v, pick).saturating_sub(1);
        v.insert(left_var(pick), format!("{left:x}"));
        env.write(&v).unwrap();
        pick
    }

    #[test]
    fn a_fresh_disk_boots_a_and_b_is_empty() {
        let (_d, b) = backend();
        let s = b.status().unwrap();
        assert_eq!(
            (s.a, s.b, s.next),
            (SlotState::Good, SlotState::Empty, Slot::A)
        );
    }

    #[test]
    fn a_trial_that_commits_becomes_the_boot_slot() {
        let (d, mut b) = backend();
        b.set_trial(Slot::B).unwrap();
        assert_eq!(b.status().unwrap().b, SlotState::Trial { tries_left: 1 });
        assert_eq!(boot(d.path()), Slot::B);
        b.commit(Slot::B).unwrap();
        let s = b.status().unwrap();
        assert_eq!(
            (s.a, s.b, s.next),
            (SlotState::Good, SlotState::Good, Slot::B)
        );
        assert_eq!(b.env.read().unwrap()[ORDER], "b a");
        assert_eq!(boot(d.path()), Slot::B);
        assert_eq!(b.active_slot().unwrap(), Slot::B);
    }

    #[test]
    fn a_trial_that_never_commits_falls_back_and_can_be_marked_bad() {
        let (d, mut b) = backend();
        b.set_trial(Slot::B).unwrap();
        assert_eq!(boot(d.path()), Slot::B);
        // No commit: power cut or failed health check.
        assert_eq!(boot(d.path()), Slot::A);
        assert_eq!(b.status().unwrap().b, SlotState::Trial { tries_left: 0 });
        b.mark_bad(Slot::B).unwrap();
        b.commit(Slot::A).unwrap();
        let s = b.status().unwrap();
        assert_eq!(
            (s.a, s.b, s.next),
            (SlotState::Good, SlotState::Bad, Slot::A)
        );
        assert_eq!(b.env.read().unwrap()[ORDER], "a");
        assert!(
            b.rollback(Slot::A).is_err(),
            "a bad slot is no rollback target"
        );
    }

    #[test]
    fn rollback_returns_to_the_other_good_slot() {
        let (_d, mut b) = backend();
        b.set_trial(Slot::B).unwrap();
        b.commit(Slot::B).unwrap();
        assert_eq!(b.rollback(Slot::B).unwrap(), Slot::A);
        assert_eq!(b.status().unwrap().next, Slot::A);
        assert_eq!(b.env.read().unwrap()[ORDER], "a b");
    }

    #[test]
    fn a_good_slot_failing_three_boots_in_a_row_falls_back() {
        let (d, mut b) = backend();
        b.set_trial(Slot::B).unwrap();
        b.commit(Slot::B).unwrap();
        for _ in 0..GOOD_BOOTS {
            assert_eq!(boot(d.path()), Slot::B);
        }
        assert_eq!(boot(d.path()), Slot::A);
    }

    #[test]
    fn the_script_saves_and_imports_exactly_our_variables() {
        let s = boot_script("console=ttyAMA0", "Image");
        let names = "BOOT_ORDER BOOT_A_LEFT CAIRN_A_STATE BOOT_B_LEFT CAIRN_B_STATE";
        assert!(s.contains(&format!("env import -c ${{cairn_tmp}} 1fff {names}")));
        assert!(s.contains(&format!("env export -c -s 1fff ${{cairn_tmp}} {names}")));
        assert!(s.contains("/${cairn_slot}/Image"));
        assert!(s.contains("cairn.slot=${cairn_slot}"));
    }
}
