//! The update side of cairn: the A/B slot model shared by the image builder, init and the
//! runtime. The bundle format and boot-control backends grow here (see ARCHITECTURE.md).

pub mod gpt;
pub mod slot;

pub use slot::{Slot, SlotError};
