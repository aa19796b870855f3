//! Dict names and the names of their objects in /dev/shm: the one place that builds or reads
//! them.
//!
//! A dict named `NAME` owns:
//! - `ultradict.NAME`: the control block followed by the update stream;
//! - `ultradict.NAME~dump.INSTANCE.EPOCH`: the full dump that starts epoch `EPOCH` (epoch 0
//!   has none) of this instance of the dict (8 hex digits, random per creation);
//! - `ultradict.NAME~.new.INSTANCE`: while it is being created, its control segment, under a
//!   name no opener looks at; it gets `ultradict.NAME` in one rename once complete;
//! - `ultradict.NAME~.register`: the register of its nested dicts;
//! - `ultradict.NAME~CHILD...`: its nested dicts (`~field` for a derived struct's fields,
//!   `~.kHASH` for a map's `nested(key)`), which own objects of their own under their names.
//!
//! `~` may not appear in a dict name, so no dict's object can be mistaken for another dict's,
//! and every object of a dict is `ultradict.NAME` or starts with `ultradict.NAME~`. Tools
//! recognize ultradict objects by the `ultradict.` prefix, then by the magic bytes.
//!
//! The objects live in /dev/shm unless the dict's creator chose another directory (for a dict
//! shared by a group: /dev/shm has the sticky bit, so there only an object's owner could remove
//! it). A [`Place`] is a dict's name in its directory: it builds every object path of the dict.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::os;

/// The prefix of every ultradict object in /dev/shm.
pub(crate) const PREFIX: &str = "ultradict.";

/// Separates a dict's name from the suffix of one of its other objects.
pub(crate) const SEPARATOR: char = '~';

/// The longest suffix a dict's own objects add to its name: `~dump.`, 8 hex digits, `.` and a
/// 10-digit epoch (the pending `~.new.` and register `~.register` names are shorter).
const OWN_SUFFIX_LEN: usize = 25;

/// How much a map's nested child adds to its parent's name: `~.k` and 16 hex digits.
const KEY_CHILD_LEN: usize = 19;

/// The longest name of any dict, nested ones included: what the kernel's 255-byte limit leaves
/// after the prefix and the longest suffix.
const MAX_DERIVED_NAME_LEN: usize = os::MAX_OBJECT_NAME - PREFIX.len() - OWN_SUFFIX_LEN;

/// The longest dict name: leaves room for one level of [`nested`](crate::UltraDict::nested)
/// map children under it. Deeper nesting, or nested struct fields with long names, can run out
/// of room; that is an [`Error::InvalidName`] saying "nested too deep".
pub const MAX_NAME_LEN: usize = MAX_DERIVED_NAME_LEN - KEY_CHILD_LEN;

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
        return invalid(
            "nested too deep: a nested dict's name (its parent's, `~` and its own) may have at \
             most 220 bytes in /dev/shm",
        );
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
    let hash = fnv1a(&[key]);
    format!("{parent}{SEPARATOR}.k{hash:016x}")
}

/// FNV-1a over `parts`, in order: a 64-bit hash that is the same in every build and process
/// (std's hashers are seeded), for names and fingerprints.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The control segment of dict `name`.
fn control(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// The private name under which the creator builds instance `instance` of dict `name`.
fn pending(name: &str, instance: u64) -> String {
    format!("{PREFIX}{name}{SEPARATOR}.new.{:08x}", instance as u32)
}

/// The dump segment that starts `epoch` of the instance `instance` of dict `name`. The
/// instance (random, chosen by the dict's creator) keeps a handle of a removed dict from ever
/// writing over the dumps of a new dict of the same name.
fn dump(name: &str, instance: u64, epoch: u32) -> String {
    format!(
        "{PREFIX}{name}{SEPARATOR}dump.{:08x}.{epoch}",
        instance as u32
    )
}

/// The register of dict `name`'s nested dicts.
fn register(name: &str) -> String {
    format!("{name}{SEPARATOR}.register")
}

/// The nested child `field` of dict `parent`.
pub(crate) fn field_child(parent: &str, field: &str) -> String {
    format!("{parent}{SEPARATOR}{field}")
}

/// What an object under dict `name`'s prefix is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Its control segment.
    Control,
    /// A dump of instance `instance` (its low 32 bits).
    Dump { instance: u32 },
    /// The control segment of an instance still being created.
    Pending { instance: u32 },
    /// The control segment of a nested child (a dict name).
    Child(String),
    /// Anything else under the name: a register, objects of deeper descendants, or strays.
    Other,
}

/// A dict's name in the directory its objects live in: what every object path of the dict is
/// built from. Object paths are strings (`DIR/ultradict.NAME...`): directories must be UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    dir: Arc<str>,
    name: String,
}

impl Place {
    pub(crate) fn new(dir: Arc<str>, name: impl Into<String>) -> Self {
        Place {
            dir,
            name: name.into(),
        }
    }

    /// Dict `name` in /dev/shm.
    pub(crate) fn in_shm(name: impl Into<String>) -> Self {
        Self::new(Arc::from(os::SHM_DIR), name)
    }

    /// The dict's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The directory of its objects.
    pub(crate) fn dir(&self) -> &Arc<str> {
        &self.dir
    }

    fn path(&self, file: &str) -> String {
        format!("{}/{file}", self.dir)
    }

    /// The control segment.
    pub(crate) fn control(&self) -> String {
        self.path(&control(&self.name))
    }

    /// The file name of an object path of the dict (what it is called in its directory).
    pub(crate) fn file_name(object: &str) -> &str {
        object.rsplit('/').next().unwrap_or(object)
    }

    /// The private name under which the creator builds instance `instance`.
    pub(crate) fn pending(&self, instance: u64) -> String {
        self.path(&pending(&self.name, instance))
    }

    /// The dump that starts `epoch` of instance `instance`.
    pub(crate) fn dump(&self, instance: u64, epoch: u32) -> String {
        self.path(&dump(&self.name, instance, epoch))
    }

    /// The register of the dict's nested dicts.
    pub(crate) fn register(&self) -> Place {
        Place::new(self.dir.clone(), register(&self.name))
    }

    /// Another dict of the same directory.
    pub(crate) fn sibling(&self, name: &str) -> Place {
        Place::new(self.dir.clone(), name)
    }

    /// Every object of the dict (its own and its descendants'), as paths.
    pub(crate) fn objects(&self) -> Result<Vec<String>> {
        let control = control(&self.name);
        let all = os::list_objects(&self.dir, &control)
            .map_err(|e| Error::io(format!("listing {}", self.dir), e))?;
        Ok(all
            .into_iter()
            .filter(|object| {
                let rest = &object[control.len()..];
                rest.is_empty() || rest.starts_with(SEPARATOR)
            })
            .map(|object| self.path(&object))
            .collect())
    }

    /// What the object at path `object` (one of [`objects`](Self::objects)) is.
    pub(crate) fn classify(&self, object: &str) -> Part {
        let file = object
            .strip_prefix(&*self.dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or(object);
        classify(&self.name, file)
    }
}

/// Sorts an object of a directory that belongs to dict `name` (by its file name).
fn classify(name: &str, object: &str) -> Part {
    let Some(rest) = object
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_prefix(name))
    else {
        return Part::Other;
    };
    let Some(suffix) = rest.strip_prefix(SEPARATOR) else {
        return if rest.is_empty() {
            Part::Control
        } else {
            Part::Other
        };
    };
    let hex = |digits: &str| {
        (digits.len() == 8)
            .then(|| u32::from_str_radix(digits, 16).ok())
            .flatten()
    };
    if let Some(instance) = suffix.strip_prefix(".new.").and_then(hex) {
        return Part::Pending { instance };
    }
    if let Some(instance) = suffix
        .strip_prefix("dump.")
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(instance, _)| hex(instance))
    {
        return Part::Dump { instance };
    }
    let child = &object[PREFIX.len()..];
    if !suffix.contains(SEPARATOR)
        && suffix != ".register"
        && (suffix.starts_with(".k") || !suffix.starts_with('.'))
        && validate_child(child).is_ok()
    {
        return Part::Child(child.to_owned());
    }
    Part::Other
}

/// A name no other dict has: process id, time and a counter.
pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "anon-{}-{:x}-{n}",
        os::current_pid(),
        os::random_u64() as u32
    )
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
    fn objects_are_classified_by_their_names() {
        assert_eq!(classify("a", &control("a")), Part::Control);
        assert_eq!(
            classify("a", &dump("a", 0x1234_5678_9abc, 3)),
            Part::Dump {
                instance: 0x5678_9abc
            }
        );
        assert_eq!(
            classify("a", &pending("a", 7)),
            Part::Pending { instance: 7 }
        );
        assert_eq!(
            classify("a", &control(&field_child("a", "stats"))),
            Part::Child("a~stats".into())
        );
        assert_eq!(
            classify("a", &control(&key_child("a", b"k"))),
            Part::Child(key_child("a", b"k"))
        );
        assert_eq!(classify("a", &control(&register("a"))), Part::Other);
        assert_eq!(classify("a", &dump("a~stats", 1, 1)), Part::Other);
        assert_eq!(classify("a", "ultradict.ab"), Part::Other);
    }

    #[test]
    fn one_level_of_map_nesting_fits_under_the_longest_name() {
        let root = "r".repeat(MAX_NAME_LEN);
        let child = key_child(&root, b"any key");
        validate_child(&child).unwrap();
        assert!(dump(&child, u64::MAX, u32::MAX).len() <= os::MAX_OBJECT_NAME);
        assert!(validate_child(&key_child(&child, b"deeper")).is_err());
    }

    #[test]
    fn dump_names_never_collide_with_dict_names() {
        // A dump name contains the separator, which no valid dict name may contain.
        assert!(validate(&dump("a", 7, 3)[PREFIX.len()..]).is_err());
    }
}
