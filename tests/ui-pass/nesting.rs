use std::collections::HashMap;

use ultradict::SharedDict;

#[derive(SharedDict, Default)]
struct Inner {
    hits: u64,
}

#[derive(SharedDict, Default)]
struct Middle {
    #[ultradict(nested)]
    inner: Inner,
    label: String,
}

#[derive(SharedDict, Default)]
pub struct Outer {
    #[ultradict(nested)]
    middle: Middle,
    #[ultradict(nested)]
    by_id: std::collections::HashMap<u32, String>,
    #[ultradict(nested, rename = "names")]
    name_map: HashMap<String, u64>,
}

fn main() -> ultradict::Result<()> {
    let outer = Outer::builder().open()?;
    outer.middle().inner().update_hits(|h| h + 1)?;
    outer.by_id().insert(1, "one".into())?;
    outer.name_map().insert("a".into(), 1)?;
    let copy: Outer = outer.snapshot()?;
    assert_eq!(copy.middle.inner.hits, 1);
    Ok(())
}
