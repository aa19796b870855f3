::core::compile_error! {
    "unknown ultradict field attribute `unknown`; expected `nested` or `rename = \"...\"`"
}
::core::compile_error! {
    "`#[ultradict(nested)]` needs a struct that derives `SharedDict` or a `HashMap<K, V>`; remove `nested` to store this field as one value"
}
#[automatically_derived]
impl ::ultradict::SharedDict for Broken {
    type Handle = ();
    fn __open(
        _: &::ultradict::__private::OpenOptions,
        _: Self,
    ) -> ::ultradict::Result<Self::Handle> {
        ::core::unreachable!()
    }
    fn __snapshot(_: &Self::Handle) -> ::ultradict::Result<Self> {
        ::core::unreachable!()
    }
    fn __replace(_: &Self::Handle, _: Self) -> ::ultradict::Result<()> {
        ::core::unreachable!()
    }
    fn __discard_if_created(_: &Self::Handle) {
        ::core::unreachable!()
    }
}
