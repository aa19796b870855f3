//! The generated code names everything by absolute path: shadowing the prelude's `Result`,
//! `Option`, `Some`, `None` and `String` next to the derive changes nothing.
#![allow(dead_code, non_upper_case_globals, clippy::disallowed_names)]

mod shadowed {
    type Result = ();
    type Option = ();
    type String = ();
    const Some: () = ();
    const None: () = ();
    struct Ok;
    struct Err;
    struct Vec;
    struct Clone;
    struct Default;

    use ultradict::SharedDict;

    #[derive(ultradict::SharedDict, ::core::default::Default)]
    pub struct Inner {
        pub hits: u64,
    }

    #[derive(SharedDict, ::core::default::Default)]
    pub struct State {
        pub label: std::string::String,
        pub counter: u64,
        #[ultradict(nested)]
        pub inner: Inner,
        #[ultradict(nested)]
        pub by_id: std::collections::HashMap<u32, std::string::String>,
    }
}

#[test]
fn shadowed_prelude_names_do_not_break_the_derive() {
    use ultradict::SharedDict;
    let state = shadowed::State::builder().open().unwrap();
    state.set_label("ok".into()).unwrap();
    state.inner().update_hits(|h| h + 1).unwrap();
    let copy = state.snapshot().unwrap();
    assert_eq!((copy.label.as_str(), copy.inner.hits), ("ok", 1));
    let name = state.name().to_owned();
    drop(state);
    ultradict_test_kit::assert_no_segments(&name);
}
