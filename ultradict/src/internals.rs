//! The shared-memory write path taken apart, one step at a time, for the step benchmark
//! (`benches/write_steps.rs`, feature `internals`). Not a stable API.
//!
//! An `insert` is: take the writers' lock, take this handle's view for writing and check
//! that it is current, serialize the record into the stream, publish the new offset, apply the
//! record to the view's overlay, release the lock; and, every stream's worth of records, a
//! full dump. Each method here does one of those steps alone, on a private dict of its own,
//! exactly as the write path does it.

use std::sync::atomic::Ordering;

use crate::backend::Backend;
use crate::dump::AlignedBuf;
use crate::engine::Engine;
use crate::error::Result;
use crate::lock_guard::LockOptions;
use crate::map::{MapOverlay, MapSchema, MapUpdate};
use crate::schema::Schema;
use crate::storage::Storage;
use crate::{Create, Key, UltraDict, Value};

/// A private `K -> V` dict and the scratch the steps work on.
pub struct WriteSteps<K: Key, V: Value> {
    dict: UltraDict<K, V>,
    record: AlignedBuf,
    /// Where the next record goes in `record`.
    at: usize,
    overlay: MapOverlay<K, V>,
    /// The records of inserting the dict's entries again, which `serialize` archives.
    inserts: Vec<MapUpdate<K, V>>,
}

impl<K: Key, V: Value> WriteSteps<K, V> {
    /// A fresh private dict with `entries`, dumped, as the map benchmark starts from.
    pub fn new(entries: impl IntoIterator<Item = (K, V)>) -> Result<Self> {
        let dict: UltraDict<K, V> = UltraDict::builder().create(Create::New).open()?;
        let inserts: Vec<_> = entries
            .into_iter()
            .map(|(key, value)| MapUpdate::Insert(key, value))
            .collect();
        dict.extend(inserts.iter().filter_map(|update| match update {
            MapUpdate::Insert(key, value) => Some((key.clone(), value.clone())),
            _ => None,
        }))?;
        dict.dump()?;
        Ok(WriteSteps {
            dict,
            record: AlignedBuf::with_capacity(crate::DEFAULT_BUFFER_SIZE),
            at: 0,
            overlay: MapSchema::<K, V>::overlay_for(None),
            inserts,
        })
    }

    /// The dict, for the whole `insert` and the dumps.
    pub fn dict(&self) -> &UltraDict<K, V> {
        &self.dict
    }

    fn engine(&self) -> &Engine<MapSchema<K, V>> {
        match self.dict.engine() {
            Backend::Shm(engine) => engine,
            #[cfg(feature = "redis")]
            Backend::Redis(_) => unreachable!("WriteSteps opens a dict in shared memory"),
        }
    }

    /// Takes the writers' lock and releases it.
    pub fn lock_unlock(&self) -> Result<()> {
        drop(self.engine().lock(&LockOptions::default())?);
        Ok(())
    }

    /// Takes the view for writing and checks it against the published state (a writer's
    /// catch-up when there is no news).
    pub fn view_current(&self) -> bool {
        let engine = self.engine();
        let view = engine.view.write();
        let published = engine.control().state.load(Ordering::Acquire);
        view.position.0 == u128::from(published)
    }

    /// Serializes and frames the record of inserting the `n`th entry (modulo their number)
    /// as the write path does into the stream: here into a buffer of this process's as large
    /// as the default stream, one record after the other, starting again at its end. Returns
    /// the record's bytes, frame included. The record is built beforehand: no clone of the
    /// entry is measured here.
    pub fn serialize(&mut self, n: usize) -> usize {
        let update = &self.inserts[n % self.inserts.len()];
        let out = self.record.as_uninit_mut();
        let (start, capacity) = (out.as_mut_ptr().cast::<u8>(), out.len());
        for _ in 0..2 {
            // SAFETY: `out` is a 16-aligned buffer of `capacity` bytes that only this call
            // touches, and `at` a multiple of 16 within it.
            match unsafe { crate::stream::append(start, capacity, self.at, 1, update) } {
                Ok(end) => {
                    let len = end - self.at;
                    self.at = end;
                    return len;
                }
                Err(_) => self.at = 0,
            }
        }
        0
    }

    /// Publishes the dict's current state word again: the Release store, the fence and the
    /// change sequence's bump a write's publication makes.
    pub fn publish(&self) {
        let control = self.engine().control();
        control.publish(control.state());
    }

    /// Applies the record of `insert(key, value)` to an overlay over no dump.
    pub fn apply(&mut self, key: K, value: V) {
        MapSchema::<K, V>::apply(None, &mut self.overlay, MapUpdate::Insert(key, value));
    }
}
