//! Platform calls: named shared memory, futexes, thread and process identity.
//!
//! Everything the rest of the crate needs from the operating system goes through this module,
//! so that another platform can be added by writing one more file next to `linux.rs`.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!("ultradict supports Linux only for now; the platform layer lives in src/os/");
