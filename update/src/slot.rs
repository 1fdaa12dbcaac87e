//! A and B: the two root slots every cairn disk carries.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown slot {0:?}: expected \"a\" or \"b\"")]
pub struct SlotError(pub String);

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The lower-case letter used on the kernel command line (`cairn.slot=a`).
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The GPT partition name of this slot's root filesystem.
    pub fn partition_label(self) -> &'static str {
        match self {
            Slot::A => "root_a",
            Slot::B => "root_b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Finds `cairn.slot=` in a kernel command line.
    pub fn from_cmdline(cmdline: &str) -> Option<Result<Slot, SlotError>> {
        cmdline
            .split_ascii_whitespace()
            .find_map(|arg| arg.strip_prefix("cairn.slot="))
            .map(str::parse)
    }
}

impl FromStr for Slot {
    type Err = SlotError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            other => Err(SlotError(other.to_string())),
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_slot_from_a_kernel_command_line() {
        let got = Slot::from_cmdline("console=ttyAMA0 cairn.slot=b quiet");
        assert_eq!(got, Some(Ok(Slot::B)));
        assert_eq!(Slot::from_cmdline("console=ttyAMA0"), None);
        assert_eq!(
            Slot::from_cmdline("cairn.slot=c"),
            Some(Err(SlotError("c".into())))
        );
    }

    #[test]
    fn each_slot_knows_its_partner_and_label() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.partition_label(), "root_b");
    }
}
