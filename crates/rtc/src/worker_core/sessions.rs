//! The worker's sessions in a slab: rooms list their viewers by slot, so the fan-out reaches
//! each viewer by index, not by hashing. Control commands name sessions by serial, looked up
//! once per command.

use std::collections::HashMap;

use super::demux::Slot;
use crate::session::Session;

#[derive(Default)]
pub(crate) struct Sessions {
    slots: Vec<Option<Session>>,
    free: Vec<Slot>,
    by_serial: HashMap<u64, Slot>,
}

impl Sessions {
    pub fn len(&self) -> usize {
        self.by_serial.len()
    }

    pub fn insert(&mut self, session: Session) -> Slot {
        let serial = session.serial;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(session);
                slot
            }
            None => {
                self.slots.push(Some(session));
                (self.slots.len() - 1) as Slot
            }
        };
        self.by_serial.insert(serial, slot);
        slot
    }

    pub fn remove(&mut self, serial: u64) -> Option<(Slot, Session)> {
        let slot = self.by_serial.remove(&serial)?;
        let session = self.slots[slot as usize].take()?;
        self.free.push(slot);
        Some((slot, session))
    }

    pub fn slot_of(&self, serial: u64) -> Option<Slot> {
        self.by_serial.get(&serial).copied()
    }

    /// The session in `slot`, which must be occupied: every slot the worker holds (in a room,
    /// in the demultiplexer) is released when its session ends.
    pub fn get_mut(&mut self, slot: Slot) -> &mut Session {
        self.slots[slot as usize]
            .as_mut()
            .expect("a slot in use names a live session")
    }

    /// The session in `slot`, if it is still there (after an input that may have ended it).
    pub fn try_get_mut(&mut self, slot: Slot) -> Option<&mut Session> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    pub fn serials(&self) -> Vec<u64> {
        self.by_serial.keys().copied().collect()
    }
}
