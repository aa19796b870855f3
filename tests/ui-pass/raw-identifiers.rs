use ultradict::SharedDict;

#[derive(SharedDict, Default)]
struct Keywords {
    r#type: String,
    r#match: u32,
}

fn main() -> ultradict::Result<()> {
    let state = Keywords::builder().open()?;
    state.set_type("kind".into())?;
    state.update_match(|m| m + 2)?;
    assert_eq!(state.r#type()?, "kind");
    assert_eq!(state.r#match()?, 2);
    Ok(())
}
