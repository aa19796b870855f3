//! `#[derive(SharedDict)]` for [ultradict](https://docs.rs/ultradict): turns an application
//! state struct into a typed handle shared by every process that opens the same name.
//!
//! The pipeline has three stages, one file each: `ast.rs` reads the struct and its
//! `#[ultradict(...)]` attributes, `valid.rs` checks the rules, `expand.rs` prints the code.
//! Errors are collected, then reported together as `compile_error!`s, with a stub impl so
//! that the user sees the real mistake rather than a cascade.

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro::TokenStream;

/// Derives `ultradict::SharedDict`. See the `ultradict` crate for the generated API.
#[proc_macro_derive(SharedDict, attributes(ultradict))]
pub fn derive_shared_dict(input: TokenStream) -> TokenStream {
    expand::derive(input.into()).into()
}
