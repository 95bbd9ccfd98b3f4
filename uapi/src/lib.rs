//! The fastio ring ABI, shared by the kernel module (`kmod/`) and userspace (`runtime/`).
//!
//! Everything that crosses the user/kernel boundary is defined here once: the ring
//! layout, the submission and completion entries, opcodes, flags, the setup parameters
//! and the ioctl numbers. The definitions live in [`abi`] (the file `src/abi.rs` and the
//! files it includes: `pbuf.rs`, `ioctl.rs`, `decode.rs`), which uses nothing but `core`,
//! so the kernel module compiles the very same source with
//! `#[path = "../uapi/src/abi.rs"] mod abi;`.
//!
//! Every size and offset is checked at compile time (see the bottom of `abi.rs`), so a
//! change that would silently move a field breaks the build on both sides.
#![no_std]
#![deny(missing_docs)]

pub mod abi;

pub use abi::*;
