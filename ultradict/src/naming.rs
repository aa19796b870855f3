//! Dict names and the names of their segments in /dev/shm.
//!
//! A dict named `NAME` owns:
//! - `ultradict.NAME`: the control block followed by the update stream;
//! - `ultradict.NAME~dump.INSTANCE.EPOCH`: the full dump that starts epoch `EPOCH` (epoch 0
//!   has none) of this instance of the dict (8 hex digits, random per creation).
//!
//! `~` may not appear in a dict name, so no dict's segment can be mistaken for another dict's
//! dump, and every segment of a dict starts with `ultradict.NAME` followed by nothing or `~`.
//! Tools recognize ultradict segments by the `ultradict.` prefix, then by the magic bytes.

use crate::error::{Error, Result};
use crate::os;

/// The prefix of every ultradict segment in /dev/shm.
pub(crate) const PREFIX: &str = "ultradict.";

/// Separates a dict's name from the suffix of one of its other segments.
pub(crate) const SEPARATOR: char = '~';

/// The longest dict name: leaves room in the kernel's 255-byte limit for the prefix, the
/// longest suffix (`~dump.`, 8 hex digits, `.` and a 10-digit epoch) and the register of
/// nested dicts (`~.register`).
pub const MAX_NAME_LEN: usize = os::MAX_OBJECT_NAME - PREFIX.len() - 32 - 10;

/// The longest derived name (a nested dict or a register): what the suffixes leave.
const MAX_DERIVED_NAME_LEN: usize = os::MAX_OBJECT_NAME - PREFIX.len() - 32;

/// Checks a user-supplied dict name: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits,
/// `.`, `_` and `-`, not starting with `.`. Names are never paths.
pub(crate) fn validate(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it is longer than ultradict::MAX_NAME_LEN bytes");
    }
    if name.starts_with('.') {
        return invalid("it starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Checks a derived (nested child) name: segments of a valid root name and field names or
/// key hashes, joined by `~`, within the kernel's limit.
pub(crate) fn validate_child(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    let Some((root, _)) = name.split_once(SEPARATOR) else {
        return invalid("a nested dict's name must contain its parent's");
    };
    validate(root)?;
    if name.len() > MAX_DERIVED_NAME_LEN {
        return invalid("nested too deep: the derived name is too long for /dev/shm");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~'))
    {
        return invalid("only ASCII letters, digits, '.', '_', '-' and '~' are allowed");
    }
    Ok(())
}

/// The name of the nested child of `parent` registered under a map key (given as its archived
/// bytes): a hash, so any key gives a valid, stable name.
pub(crate) fn key_child(parent: &str, key: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{parent}{SEPARATOR}.k{hash:016x}")
}

/// The control segment of dict `name`.
pub(crate) fn control(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// The dump segment that starts `epoch` of the instance `instance` of dict `name`. The
/// instance (random, chosen by the dict's creator) keeps a handle of a removed dict from ever
/// writing over the dumps of a new dict of the same name.
pub(crate) fn dump(name: &str, instance: u64, epoch: u32) -> String {
    format!(
        "{PREFIX}{name}{SEPARATOR}dump.{:08x}.{epoch}",
        instance as u32
    )
}

/// Every segment in /dev/shm that belongs to dict `name`.
pub(crate) fn segments_of(name: &str) -> Result<Vec<String>> {
    let control = control(name);
    let all = os::list_objects(&control).map_err(|e| Error::io("listing /dev/shm", e))?;
    Ok(all
        .into_iter()
        .filter(|object| {
            let rest = &object[control.len()..];
            rest.is_empty() || rest.starts_with(SEPARATOR)
        })
        .collect())
}

/// A name no other dict has: process id, time and a counter.
/// A random 64-bit number, different in every process and call (for dict instances).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(os::unix_time_ns());
    hasher.write_u32(os::current_pid());
    hasher.finish()
}

pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("anon-{}-{:x}-{n}", os::current_pid(), os::unix_time_ns())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_paths_and_odd_names() {
        for bad in ["", "../x", "a/b", "/x", ".hidden", "sp ace", "tilde~x", "é"] {
            assert!(
                matches!(validate(bad), Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(validate(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
        for good in ["a", "jobs", "my-app_1.state", &"x".repeat(MAX_NAME_LEN)] {
            validate(good).unwrap();
        }
    }

    #[test]
    fn dump_names_never_collide_with_dict_names() {
        // A dump name contains the separator, which no valid dict name may contain.
        assert!(validate(&dump("a", 7, 3)[PREFIX.len()..]).is_err());
    }
}
