//! The register of a dict's nested children, for removing a whole tree.
//!
//! A dict `NAME` with nested children keeps a register: itself a small persistent
//! `UltraDict<String, String>` named `NAME~.register`, mapping each child's dict name to what
//! it is (a struct field, or a map key). Removing `NAME` removes every registered child first
//! (recursively: children have registers of their own), then every segment under the name.
//! Children are named `NAME~field` (struct fields) or `NAME~.kHASH` (map keys), so the
//! `ultradict.NAME~` prefix in /dev/shm finds them too, even if a register was lost.

use crate::error::Result;
use crate::map::UltraDict;
use crate::naming;
use crate::options::{Create, Lifetime, Options};

type Register = UltraDict<String, String>;

fn open_register(dict: &str, create: Create) -> Result<Register> {
    let options = Options {
        name: Some(naming::register(dict)),
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
