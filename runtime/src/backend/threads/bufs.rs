//! Provided-buffer groups of the `threads` backend: the buffer memory the proactor
//! registered and the ids its workers may receive into.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// One group: `count` buffers of `size` bytes at `base`, and the ids the executor owns
/// (given at registration and by `provide_buffer`), oldest first.
pub(super) struct Group {
    base: usize,
    pub(super) size: u32,
    count: u32,
    free: Mutex<VecDeque<u16>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the queue half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Group {
    pub(super) fn new(base: *mut u8, size: u32, count: u32) -> Self {
        Group {
            base: base as usize,
            size,
            count,
            free: Mutex::new((0..count.min(1 << 16)).map(|i| i as u16).collect()),
        }
    }

    /// Takes the oldest id the executor owns, with its buffer's address.
    pub(super) fn take(&self) -> Option<(u16, *mut u8)> {
        let id = lock(&self.free).pop_front()?;
        // Ids only ever come from `new` and `give` (both below `count`).
        let off = id as usize * self.size as usize;
        Some((id, (self.base + off) as *mut u8))
    }

    /// Puts back an id taken and not used (first in line again).
    pub(super) fn untake(&self, id: u16) {
        lock(&self.free).push_front(id);
    }

    /// An id handed back by userspace; ignored when out of range.
    pub(super) fn give(&self, id: u16) {
        if u32::from(id) < self.count {
            lock(&self.free).push_back(id);
        }
    }
}

/// The groups of a context.
#[derive(Default)]
pub(super) struct Groups(Mutex<HashMap<u16, Arc<Group>>>);

impl Groups {
    pub(super) fn get(&self, group: u16) -> Option<Arc<Group>> {
        lock(&self.0).get(&group).cloned()
    }
    /// False when the group exists.
    pub(super) fn insert(&self, group: u16, g: Group) -> bool {
        let mut map = lock(&self.0);
        if map.contains_key(&group) {
            return false;
        }
        map.insert(group, Arc::new(g));
        true
    }
    pub(super) fn remove(&self, group: u16) -> bool {
        lock(&self.0).remove(&group).is_some()
    }
}
