//! The update side of cairn: the A/B slot model, the boot-control backends (shared by the
//! image builder, init and the runtime) and, with the `bundle` feature, the signed update
//! bundle format and the installer that streams a bundle into the inactive slot.

pub mod blockdev;
pub mod bootctl;
pub mod fsutil;
pub mod gpt;
pub mod slot;
pub mod version;

#[cfg(feature = "bundle")]
pub mod bundle;
#[cfg(feature = "bundle")]
pub mod copy;
#[cfg(feature = "bundle")]
pub mod direct_io;
#[cfg(feature = "bundle")]
pub mod install;
#[cfg(feature = "bundle")]
pub mod keys;
#[cfg(feature = "bundle")]
pub mod memory;
pub mod state;

pub use slot::{Slot, SlotError};
