//! A typed dictionary shared by many processes on one machine through shared memory.
//!
//! Every process that opens the same name sees the same [`UltraDict`]: updates go into a
//! shared stream of rkyv records, and when the stream is full a full dump of the state is
//! written and every process switches to it. Reads take no lock and, when nothing changed,
//! cost one atomic load and a hash lookup in place in shared memory.
//!
//! ```
//! # fn main() -> ultradict::Result<()> {
//! use ultradict::UltraDict;
//!
//! let name = format!("doc-hello-{}", std::process::id());
//! let writer: UltraDict<String, u64> = UltraDict::open(&name)?;
//! let reader: UltraDict<String, u64> = UltraDict::open(&name)?; // or in another process
//! writer.insert("answer".into(), 42)?;
//! assert_eq!(reader.get("answer")?, Some(42));
//! # Ok(()) }
//! ```
//!
//! # Sharing between processes
//!
//! Open the same name in each process with [`UltraDict::open`] or [`UltraDict::builder`].
//! The first opener creates the dict; its options (stream size, dump capacity, lifetime) win,
//! and an opener that asks for different ones gets [`Error::ParameterMismatch`]. Key and value
//! types are part of the dict's fingerprint: opening it with other types is
//! [`Error::SchemaMismatch`], naming both.
//!
//! # Atomic updates and the lock
//!
//! Every write takes the dict's cross-process lock for its duration. For read-modify-write,
//! use [`UltraDict::update`], or hold [`UltraDict::lock`] across several operations: the lock
//! is re-entrant for the thread that holds it. A process that dies holding the lock is
//! detected and the lock is taken over at the next attempt; its unpublished writes are ignored.
//!
//! ```
//! # fn main() -> ultradict::Result<()> {
//! let counters: ultradict::UltraDict<String, i64> = ultradict::UltraDict::builder().open()?;
//! let total = counters.update("total", |n| n.unwrap_or(0) + 5)?;
//! assert_eq!(total, 5);
//! # Ok(()) }
//! ```
//!
//! # Dumps, status and cleanup
//!
//! [`UltraDict::dump`] writes a full dump now, [`UltraDict::status`] shows the shared state,
//! and by default the last handle to close removes the dict's segments
//! ([`Lifetime`] has the other choices). [`UltraDict::unlink_by_name`] removes a dict that
//! nobody has open.
//!
//! ```
//! # fn main() -> ultradict::Result<()> {
//! let d: ultradict::UltraDict<u32, String> = ultradict::UltraDict::builder().buffer_size(4096).open()?;
//! d.insert(1, "one".into())?;
//! d.dump()?;
//! let status = d.status();
//! assert_eq!(status.epoch, 1);
//! println!("{status}");
//! # Ok(()) }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![warn(missing_docs)]

mod control;
mod dump;
mod engine;
mod error;
mod fault;
mod lock;
mod lock_guard;
mod map;
mod naming;
mod options;
mod os;
mod schema;
mod segment;
mod status;
mod stream;

pub use error::{Error, Result};
pub use lock_guard::{LockGuard, LockOptions};
pub use map::{Builder, Key, UltraDict, Value};
pub use naming::MAX_NAME_LEN;
pub use options::{Create, DEFAULT_BUFFER_SIZE, Lifetime, MAX_BUFFER_SIZE, MIN_BUFFER_SIZE};
pub use schema::{Data, Deserializer, Fingerprint, RecordSerializer, Schema, Validator};
pub use status::{LockHolder, Status};

/// rkyv, re-exported so that users derive its traits with the version ultradict uses.
pub use rkyv;
