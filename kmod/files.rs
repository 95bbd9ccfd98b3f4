// SPDX-License-Identifier: GPL-2.0

//! The registered files of a context, by slot ("direct descriptors").
//!
//! A slot is empty, holds a file, or is reserved by an ACCEPT that is installing the
//! connection it is accepting (so that a busy destination is refused before a
//! connection is taken off the listener, never after).

use kernel::{alloc::flags::GFP_KERNEL_ACCOUNT, bindings, fs::File, prelude::*, sync::aref::ARef};

use crate::sys::neg;

/// One slot.
#[derive(Clone, Default)]
pub(crate) enum Slot {
    #[default]
    Empty,
    /// An ACCEPT is about to install its connection here.
    Reserved,
    File(ARef<File>),
}

/// The slot table (kept under `Shared::files`).
pub(crate) struct FileTable {
    slots: KVVec<Slot>,
}

impl FileTable {
    /// `n` empty slots, charged to the caller's memory cgroup.
    pub(crate) fn new(n: u32) -> Result<Self> {
        Ok(FileTable {
            slots: KVVec::from_elem(Slot::Empty, n as usize, GFP_KERNEL_ACCOUNT)?,
        })
    }

    /// The file in `slot`, as a new reference.
    pub(crate) fn get(&self, slot: u32) -> Option<ARef<File>> {
        match self.slots.get(slot as usize) {
            Some(Slot::File(f)) => Some(f.clone()),
            _ => None,
        }
    }

    /// Whether `slot` is in range and empty.
    pub(crate) fn is_empty(&self, slot: u32) -> bool {
        matches!(self.slots.get(slot as usize), Some(Slot::Empty))
    }

    /// Puts `file` into the empty `slot`.
    pub(crate) fn put(&mut self, slot: u32, file: ARef<File>) {
        if let Some(s @ Slot::Empty) = self.slots.get_mut(slot as usize) {
            *s = Slot::File(file);
        }
    }

    /// Takes the file out of `slot` (a reserved slot stays reserved).
    pub(crate) fn take(&mut self, slot: u32) -> Option<ARef<File>> {
        let s = self.slots.get_mut(slot as usize)?;
        match core::mem::take(s) {
            Slot::File(f) => Some(f),
            other => {
                *s = other;
                None
            }
        }
    }

    /// Reserves the empty `slot` for an ACCEPT: `-EBUSY` when it is not empty, `-EBADF`
    /// out of range.
    pub(crate) fn reserve(&mut self, slot: u32) -> core::result::Result<(), i32> {
        match self.slots.get_mut(slot as usize) {
            Some(s @ Slot::Empty) => {
                *s = Slot::Reserved;
                Ok(())
            }
            Some(_) => Err(neg(bindings::EBUSY)),
            None => Err(neg(bindings::EBADF)),
        }
    }

    /// Reserves the first empty slot of `first..first + count` from `first + start` on
    /// (wrapping inside the range) for a multishot ACCEPT; None when the range is full.
    /// `first + count` is within the table (checked by `decode`; `count >= 1`).
    pub(crate) fn reserve_free(&mut self, first: u32, count: u32, start: u32) -> Option<u32> {
        let start = if start < count { start } else { 0 };
        let slot = Iterator::chain(start..count, 0..start)
            .map(|i| first.saturating_add(i))
            .find(|&s| self.is_empty(s))?;
        self.reserve(slot).ok()?;
        Some(slot)
    }

    /// Ends a reservation: installs `file`, or empties the slot again.
    pub(crate) fn fill(&mut self, slot: u32, file: Option<ARef<File>>) {
        if let Some(s @ Slot::Reserved) = self.slots.get_mut(slot as usize) {
            *s = match file {
                Some(f) => Slot::File(f),
                None => Slot::Empty,
            };
        }
    }

    /// Empties every slot; the references are returned so that they are dropped after
    /// the caller's lock.
    pub(crate) fn clear(&mut self) -> KVVec<Slot> {
        core::mem::take(&mut self.slots)
    }
}
