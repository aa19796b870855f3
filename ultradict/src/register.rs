//! The register of a dict's nested children, for removing a whole tree.
//!
//! A dict `NAME` with nested children keeps a register: itself a small persistent
//! `UltraDict<String, String>` named `NAME~.register`, mapping each child's dict name to what
//! it is (a struct field, or a map key). Removing `NAME` removes every registered child first
//! (recursively: children have registers of their own), then every segment under the name.
//! Children are named `NAME~field` (struct fields) or `NAME~.kHASH` (map keys), so the
//! `ultradict.NAME~` prefix in /dev/shm finds them too, even if a register was lost.

use crate::error::{Error, Result};
use crate::map::UltraDict;
use crate::naming::{self, SEPARATOR};
use crate::options::{Create, Lifetime, Options};
use crate::segment;

type Register = UltraDict<String, String>;

fn register_name(dict: &str) -> String {
    format!("{dict}{SEPARATOR}.register")
}

fn open_register(dict: &str, create: Create) -> Result<Register> {
    let options = Options {
        name: Some(register_name(dict)),
        create,
        lifetime: Some(Lifetime::Persistent),
        buffer_size: Some(16 << 10),
        child: true,
        ..Options::default()
    };
    UltraDict::open_with(&options, None)
}

/// Records `child` (described by `what`) as a nested child of `dict`.
pub(crate) fn register_child(dict: &str, child: &str, what: &str) -> Result<()> {
    let register = open_register(dict, Create::OpenOrCreate)?;
    if !register.contains_key(child)? {
        register.insert(child.to_owned(), what.to_owned())?;
    }
    Ok(())
}

/// The registered children of `dict`, with what each is.
pub(crate) fn children(dict: &str) -> Result<Vec<(String, String)>> {
    match open_register(dict, Create::Open) {
        Ok(register) => {
            let mut children: Vec<_> = register.iter()?.collect();
            children.sort();
            Ok(children)
        }
        Err(Error::NotFound { .. }) => Ok(Vec::new()),
        Err(err) => Err(err),
    }
}

/// Removes dict `name`, its registered children (recursively), and every segment under its name.
pub(crate) fn unlink_tree(name: &str) -> Result<()> {
    // A damaged register must not keep the rest of the tree alive: sweep by name regardless.
    if let Ok(children) = children(name) {
        for (child, _) in children {
            // Only true descendants (a corrupt register must not make this recurse forever or
            // remove a sibling).
            let descendant = child
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(SEPARATOR) && rest.len() > 1);
            if descendant && naming::validate_child(&child).is_ok() {
                unlink_tree(&child)?;
            }
        }
    }
    // The control segment last: while it exists, nobody can create a new dict of this name
    // whose segments this list could then catch.
    let control = naming::control(name);
    let mut objects = naming::segments_of(name)?;
    objects.sort_by_key(|object| *object == control);
    for object in objects {
        segment::unlink(&object)?;
    }
    Ok(())
}
