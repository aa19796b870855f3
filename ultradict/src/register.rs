//! The register of a dict's nested dicts: which children it has and what each is.
//!
//! A dict `NAME` with nested dicts keeps a register, itself a small persistent dict named
//! `NAME~.register` with the map schema, from each child's dict name to what it is (a struct
//! field, or a map key). It sits below the handle layer, on the engine directly. Removal does
//! not need it (children are named under `ultradict.NAME~`, so the prefix finds them even if a
//! register was lost); `inspect` and the command-line tool show a dict's tree from it.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::map::{Found, MapSchema, MapUpdate};
use crate::naming::Place;
use crate::options::{Create, Lifetime, Options};
use crate::storage::Storage;

type Register = Engine<MapSchema<String, String>>;

/// Opens the register of the dict at `dict`, whose objects have permissions `mode`.
fn open_register(dict: &Place, mode: Option<u32>, create: Create) -> Result<Register> {
    let register = dict.register();
    let options = Options {
        name: Some(register.name().to_owned()),
        create,
        lifetime: Some(Lifetime::Persistent),
        buffer_size: Some(16 << 10),
        child: true,
        dir: Some(register.dir().as_ref().into()),
        mode,
        ..Options::default()
    };
    Register::open(&options, None)
}

/// Records `child` (described by `what`) as a nested dict of the dict at `dict`, whose objects
/// have permissions `mode`.
pub(crate) fn register_child(dict: &Place, mode: u32, child: &str, what: &str) -> Result<()> {
    let record = MapUpdate::Insert(child.to_owned(), what.to_owned());
    open_register(dict, Some(mode), Create::OpenOrCreate)?.write(record, |view, _| {
        let known = !matches!(
            MapSchema::find(view.dump(), &view.overlay, child),
            Found::Missing(_)
        );
        Ok((!known, ()))
    })
}

/// The registered nested dicts of the dict at `dict` and what each is, sorted by name; none if
/// it has no register.
pub(crate) fn children(dict: &Place) -> Result<Vec<(String, String)>> {
    let register = match open_register(dict, None, Create::Open) {
        Ok(register) => register,
        Err(Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let entries = register.read(|view| {
        MapSchema::materialize(view.dump(), &view.overlay)
            .map_err(|e| Error::corrupt(&dict.register().control(), e.to_string()))
    })?;
    let mut children: Vec<_> = entries.into_iter().collect();
    children.sort();
    Ok(children)
}
