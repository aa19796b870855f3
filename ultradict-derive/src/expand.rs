//! Prints the generated code: the hidden fields struct, update enum and overlay, the
//! `StructFields` and `SharedDict` impls, and the documented handle type.
//!
//! Generated code uses absolute paths only, and generated methods carry the span of their
//! field, so "go to definition" on `state.set_counter` lands on `counter`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, Path};

use crate::ast::{Field, FieldKind, Input};
use crate::attr::Errors;

/// The whole derive: parse, validate, expand; on errors, the errors and a stub impl.
pub(crate) fn derive(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(error) => return error.to_compile_error(),
    };
    let mut errors = Errors::default();
    let parsed = Input::from_syn(&input, &mut errors);
    if let Some(parsed) = &parsed {
        parsed.validate(&mut errors);
    }
    match (parsed, errors.finish()) {
        (Some(parsed), Ok(())) => expand(&parsed),
        (_, Err(error)) => {
            let mut tokens = error.to_compile_error();
            tokens.extend(fallback(&input));
            tokens
        }
        (None, Ok(())) => unreachable!("a failed parse always reports an error"),
    }
}

/// A stub impl so that uses of the type elsewhere do not add errors to the real one.
fn fallback(input: &DeriveInput) -> TokenStream {
    if !input.generics.params.is_empty() {
        return TokenStream::new();
    }
    let ident = &input.ident;
    let krate = quote!(::ultradict);
    quote! {
        #[automatically_derived]
        impl #krate::SharedDict for #ident {
            type Handle = ();
            fn __open(
                _: &#krate::__private::OpenOptions,
                _: Self,
            ) -> #krate::Result<Self::Handle> {
                ::core::unreachable!()
            }
            fn __snapshot(_: &Self::Handle) -> #krate::Result<Self> {
                ::core::unreachable!()
            }
            fn __replace(_: &Self::Handle, _: Self) -> #krate::Result<()> {
                ::core::unreachable!()
            }
            fn __discard_if_created(_: &Self::Handle) {
                ::core::unreachable!()
            }
        }
    }
}

/// Names shared by the pieces of the expansion.
struct Names {
    krate: Path,
    rkyv: TokenStream,
    ident: Ident,
    handle: Ident,
    fields: Ident,
    update: Ident,
    overlay: Ident,
    /// `where for<'__ud> T: Storable, ...` over every stored type (see `gated`).
    bounds: TokenStream,
}

fn expand(input: &Input<'_>) -> TokenStream {
    let ident = input.ident().clone();
    let krate: Path = input
        .attrs
        .crate_path
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::ultradict));
    let plain: Vec<&Field<'_>> = input.fields.iter().filter(|f| f.is_plain()).collect();
    // Each stored type (a plain field's, a nested map's key and value) must qualify: checked
    // once on that type, so that a type without rkyv's derives gets one error, there, saying
    // what to add. Every other generated item that names the type assumes that it qualifies
    // (`Names::bounds`) and adds no error of its own.
    let mut checks = Vec::new();
    let mut bounds = Vec::new();
    for field in &input.fields {
        let mut require = |ty: &syn::Type, check: TokenStream, bound: TokenStream| {
            checks.push(
                quote_spanned!(ty.span()=> const _: () = #krate::__private::#check::<#ty>();),
            );
            bounds.push(quote_spanned!(ty.span()=> for<'__ud> #ty: #krate::__private::#bound));
        };
        match &field.kind {
            FieldKind::Plain => require(field.ty, quote!(storable), quote!(Storable)),
            FieldKind::NestedMap { key, value } => {
                require(key, quote!(key), quote!(StorableKey));
                require(value, quote!(value), quote!(Storable));
            }
            FieldKind::NestedStruct | FieldKind::NestedInvalid => {}
        }
    }
    let bounds = quote!(where #(#bounds,)*);
    let names = Names {
        rkyv: quote!(#krate::rkyv),
        handle: format_ident!("Shared{}", ident),
        fields: format_ident!("__UltradictFieldsOf{}", ident),
        update: format_ident!("__UltradictUpdateOf{}", ident),
        overlay: format_ident!("__UltradictOverlayOf{}", ident),
        bounds,
        krate,
        ident,
    };
    let helpers = helper_types(input, &names, &plain);
    let fields_impl = struct_fields_impl(input, &names, &plain);
    let handle = handle_type(input, &names, &plain);
    let shared_dict = shared_dict_impl(input, &names, &plain);
    quote! {
        #(#checks)*
        #helpers
        #fields_impl
        #handle
        #shared_dict
    }
}

/// The hidden struct of plain fields (the dump's root), the update enum (the stream's
/// records) and the overlay.
fn helper_types(input: &Input<'_>, names: &Names, plain: &[&Field<'_>]) -> TokenStream {
    let Names {
        rkyv,
        fields,
        update,
        overlay,
        ident,
        ..
    } = names;
    let vis = &input.original.vis;
    // rkyv would name these `Archived__Ultradict...`, which trips the naming lint.
    let archived_fields = format_ident!("__UltradictArchivedFieldsOf{}", ident);
    let fields_resolver = format_ident!("__UltradictFieldsResolverOf{}", ident);
    let archived_update = format_ident!("__UltradictArchivedUpdateOf{}", ident);
    let update_resolver = format_ident!("__UltradictUpdateResolverOf{}", ident);
    let field_idents: Vec<&Ident> = plain.iter().map(|f| f.ident).collect();
    let field_types: Vec<&syn::Type> = plain.iter().map(|f| f.ty).collect();
    let variants: Vec<Ident> = plain.iter().map(|f| f.variant()).collect();
    // The archived structs are generic over the field types, one parameter each, so that
    // rkyv's bounds are on parameters: on the concrete types they would be "trivial bounds",
    // each an error of its own when a type lacks rkyv's derives. The aliases instantiate them.
    let params: Vec<Ident> = (0..plain.len())
        .map(|i| format_ident!("__T{}", i))
        .collect();
    let generic_fields = format_ident!("__UltradictGenericFieldsOf{}", ident);
    let generic_update = format_ident!("__UltradictGenericUpdateOf{}", ident);
    let doc_fields = format!("The plain fields of [`{ident}`], archived as its dict's full dump.");
    let doc_update = format!("One record of [`{ident}`]'s stream: one field, or all of them.");
    let doc_overlay = format!("A process's changes to [`{ident}`]'s fields since the last dump.");
    quote! {
        #[doc = #doc_fields]
        #[doc(hidden)]
        #[derive(#rkyv::Archive, #rkyv::Serialize, #rkyv::Deserialize, ::core::clone::Clone)]
        #[rkyv(crate = #rkyv, archived = #archived_fields, resolver = #fields_resolver)]
        #vis struct #generic_fields<#(#params),*> {
            #(#field_idents: #params,)*
        }

        #[doc = #doc_fields]
        #[doc(hidden)]
        #vis type #fields = #generic_fields<#(#field_types),*>;

        #[doc = #doc_update]
        #[doc(hidden)]
        #[derive(#rkyv::Archive, #rkyv::Serialize, #rkyv::Deserialize)]
        #[rkyv(crate = #rkyv, archived = #archived_update, resolver = #update_resolver)]
        #vis enum #generic_update<#(#params),*> {
            #(#variants(#params),)*
            __All(#generic_fields<#(#params),*>),
        }

        #[doc = #doc_update]
        #[doc(hidden)]
        #vis type #update = #generic_update<#(#field_types),*>;

        #[doc = #doc_overlay]
        #[doc(hidden)]
        #[derive(::core::default::Default)]
        #vis struct #overlay {
            #(#field_idents: ::core::option::Option<#field_types>,)*
        }
    }
}

fn struct_fields_impl(input: &Input<'_>, names: &Names, plain: &[&Field<'_>]) -> TokenStream {
    let Names {
        krate,
        rkyv,
        fields,
        update,
        overlay,
        ident,
        bounds,
        ..
    } = names;
    let field_idents: Vec<&Ident> = plain.iter().map(|f| f.ident).collect();
    let variants: Vec<Ident> = plain.iter().map(|f| f.variant()).collect();
    let keys: Vec<String> = plain.iter().map(|f| f.key()).collect();
    let plain_types: Vec<&syn::Type> = plain.iter().map(|f| f.ty).collect();

    // "AppState { counter: u64, stats: nested Stats, ... }", with full type names.
    let mut format = format!("{ident} {{{{ ");
    let mut args = Vec::new();
    for (i, field) in input.fields.iter().enumerate() {
        if i > 0 {
            format.push_str(", ");
        }
        let nested = if field.is_plain() { "" } else { "nested " };
        format.push_str(&format!("{}: {nested}{{}}", field.key()));
        let ty = field.ty;
        args.push(quote!(::core::any::type_name::<#ty>()));
    }
    format.push_str(" }}");

    quote! {
        #[automatically_derived]
        impl #krate::__private::StructFields for #fields #bounds {
            type Update = #update;
            type Overlay = #overlay;

            fn fingerprint() -> #krate::Fingerprint {
                #krate::Fingerprint::new(
                    ::std::format!(#format, #(#args),*),
                    &[#(#krate::Fingerprint::layout_of::<#plain_types>()),*],
                )
            }

            fn apply(overlay: &mut #overlay, update: #update) {
                match update {
                    #(#update::#variants(value) => overlay.#field_idents = ::core::option::Option::Some(value),)*
                    #update::__All(all) => {
                        #(overlay.#field_idents = ::core::option::Option::Some(all.#field_idents);)*
                    }
                }
            }

            fn materialize(
                dump: &<Self as #rkyv::Archive>::Archived,
                overlay: &#overlay,
            ) -> ::core::result::Result<Self, #rkyv::rancor::Error> {
                ::core::result::Result::Ok(Self {
                    #(#field_idents: match &overlay.#field_idents {
                        ::core::option::Option::Some(value) => ::core::clone::Clone::clone(value),
                        ::core::option::Option::None => #krate::__private::deserialize::<#plain_types>(&dump.#field_idents)?,
                    },)*
                })
            }

            fn apply_to(fields: &mut Self, update: &#update) {
                match update {
                    #(#update::#variants(value) => fields.#field_idents = ::core::clone::Clone::clone(value),)*
                    #update::__All(all) => *fields = ::core::clone::Clone::clone(all),
                }
            }

            fn replace_all(self) -> #update {
                #update::__All(self)
            }

            fn from_update(update: &#update) -> ::core::option::Option<Self> {
                match update {
                    #update::__All(all) => ::core::option::Option::Some(::core::clone::Clone::clone(all)),
                    #[allow(unreachable_patterns)]
                    _ => ::core::option::Option::None,
                }
            }
        }

        #[automatically_derived]
        impl #krate::__private::Touches<&'static str> for #update {
            fn touched(&self, out: &mut ::std::vec::Vec<&'static str>) -> bool {
                match self {
                    #(#update::#variants(_) => out.push(#keys),)*
                    #update::__All(_) => {
                        let all: &[&'static str] = &[#(#keys),*];
                        out.extend_from_slice(all);
                    }
                }
                true
            }
        }
    }
}

/// `items` twice: for the compiler with `bounds` (so that a plain field's broken type fails
/// only its own check), and for rustdoc without them, where they would be noise on every handle.
fn gated(bounds: &TokenStream, items: impl Fn(&TokenStream) -> TokenStream) -> TokenStream {
    let code = with_cfg(items(bounds), quote!(not(doc)));
    let doc = with_cfg(items(&TokenStream::new()), quote!(doc));
    quote!(#code #doc)
}

/// Puts `#[cfg(predicate)]` on each item of `items`.
fn with_cfg(items: TokenStream, predicate: TokenStream) -> TokenStream {
    let file: syn::File = match syn::parse2(items) {
        Ok(file) => file,
        Err(error) => return error.to_compile_error(),
    };
    let items = file.items.iter();
    quote!(#(#[cfg(#predicate)] #items)*)
}

/// The type of a nested field's handle.
fn nested_handle(field: &Field<'_>, krate: &Path) -> TokenStream {
    let ty = field.ty;
    match &field.kind {
        FieldKind::NestedMap { key, value } => quote!(#krate::UltraDict<#key, #value>),
        _ => quote!(#krate::__private::Nested<#ty>),
    }
}

fn handle_type(input: &Input<'_>, names: &Names, plain: &[&Field<'_>]) -> TokenStream {
    let Names {
        krate,
        ident,
        handle,
        fields,
        bounds,
        ..
    } = names;
    let vis = &input.original.vis;
    let nested: Vec<&Field<'_>> = input.fields.iter().filter(|f| !f.is_plain()).collect();
    let nested_idents: Vec<&Ident> = nested.iter().map(|f| f.ident).collect();
    let nested_handles: Vec<TokenStream> = nested.iter().map(|f| nested_handle(f, krate)).collect();
    let plain_methods: Vec<TokenStream> = plain
        .iter()
        .map(|field| plain_methods(field, names))
        .collect();
    let nested_methods: Vec<TokenStream> = nested
        .iter()
        .map(|field| nested_methods(field, names))
        .collect();
    let all_idents: Vec<&Ident> = input.fields.iter().map(|f| f.ident).collect();
    let plain_idents: Vec<&Ident> = plain.iter().map(|f| f.ident).collect();
    let snapshot_nested = nested.iter().map(|field| {
        let name = field.ident;
        match field.kind {
            FieldKind::NestedMap { .. } => quote!(#name: self.#name.to_hashmap()?),
            _ => quote!(#name: self.#name.snapshot()?),
        }
    });
    let snapshot_nested: Vec<TokenStream> = snapshot_nested.collect();
    let replace_nested = nested.iter().map(|field| {
        let name = field.ident;
        match field.kind {
            FieldKind::NestedMap { .. } => quote!(self.#name.replace_all(#name)?;),
            _ => quote!(self.#name.replace(#name)?;),
        }
    });
    let replace_nested: Vec<TokenStream> = replace_nested.collect();
    let doc = format!(
        "The shared handle of [`{ident}`], generated by `#[derive(SharedDict)]`: every process \
         that opens the same name shares it. Each plain field has a getter, a setter and an \
         atomic `update_` method; each nested field has an accessor for its own dict."
    );
    let snapshot_doc = format!("An owned copy of the whole [`{ident}`], nested dicts included.");
    let replace_doc = format!(
        "Replaces the whole [`{ident}`]: nested dicts first, then the plain fields in one record, \
         so a process that sees the new plain fields also sees the new nested values."
    );
    gated(bounds, |bounds| {
        quote! {
            #[doc = #doc]
            #vis struct #handle #bounds {
                __dict: #krate::__private::StructDict<#fields>,
                #(#nested_idents: #nested_handles,)*
            }

            #[automatically_derived]
            impl ::core::fmt::Debug for #handle #bounds {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(::core::stringify!(#handle))
                        .field("name", &self.__dict.name())
                        .finish_non_exhaustive()
                }
            }

            #[automatically_derived]
            impl #handle #bounds {
                #(#plain_methods)*
                #(#nested_methods)*

                #[doc = #snapshot_doc]
                ///
                /// # Errors
                /// If shared memory fails validation.
                pub fn snapshot(&self) -> #krate::Result<#ident> {
                    let _guard = self.lock()?;
                    let __fields = self.__dict.fields()?;
                    ::core::result::Result::Ok(#ident {
                        #(#plain_idents: __fields.#plain_idents,)*
                        #(#snapshot_nested,)*
                    })
                }

                #[doc = #replace_doc]
                ///
                /// # Errors
                /// If a full dump could not be written; nothing changed in this dict then.
                pub fn replace(&self, value: #ident) -> #krate::Result<()> {
                    let _guard = self.lock()?;
                    let #ident { #(#all_idents),* } = value;
                    // Nested dicts first: whoever sees the new plain fields sees them too.
                    #(#replace_nested)*
                    self.__dict.write(#krate::__private::StructFields::replace_all(#fields { #(#plain_idents),* }))?;
                    ::core::result::Result::Ok(())
                }

                #krate::__handle_methods!(__dict, &'static str);

                /// Closes the handle and returns the final state. Under `Lifetime::LastClose`
                /// the last handle to close removes the state and its nested dicts.
                ///
                /// # Errors
                /// As `snapshot`, or if removing segments failed.
                pub fn close(self) -> #krate::Result<#ident> {
                    let value = self.snapshot()?;
                    let #handle { __dict, #(#nested_idents),* } = self;
                    #(::core::mem::drop(#nested_idents);)*
                    __dict.close()?;
                    ::core::result::Result::Ok(value)
                }
            }
        }
    })
}

fn plain_methods(field: &Field<'_>, names: &Names) -> TokenStream {
    let Names { krate, update, .. } = names;
    let span = field.span();
    let name = field.ident;
    let ty = field.ty;
    let bare = field.name();
    let setter = format_ident!("set_{}", bare, span = span);
    let updater = format_ident!("update_{}", bare, span = span);
    let variant = field.variant();
    let getter_doc = format!("The current `{bare}`, as every process sees it.");
    let setter_doc = format!("Sets `{bare}` in every process (streams this field's record only).");
    let updater_doc = format!(
        "Atomically replaces `{bare}` with `f(current)` and returns the new value: no other \
         process or thread writes this state in between."
    );
    // The field's current value, from the overlay or the dump: the getter's read, and the
    // updater's.
    let current = quote_spanned! {span=>
        |dump, overlay| self.__dict.field::<#ty>(#bare, &overlay.#name, &dump.#name)
    };
    quote_spanned! {span=>
        #[doc = #getter_doc]
        ///
        /// # Errors
        /// If shared memory fails validation.
        pub fn #name(&self) -> #krate::Result<#ty> {
            self.__dict.read(#current)
        }

        #[doc = #setter_doc]
        ///
        /// # Errors
        /// If a full dump was needed and could not be written; nothing changed then.
        pub fn #setter(&self, value: #ty) -> #krate::Result<()> {
            self.__dict.write(#update::#variant(value))
        }

        #[doc = #updater_doc]
        ///
        /// # Errors
        /// As the setter.
        pub fn #updater(&self, f: impl ::core::ops::FnOnce(#ty) -> #ty) -> #krate::Result<#ty> {
            self.__dict.modify(#current, |current| {
                let value = f(current);
                (#update::#variant(::core::clone::Clone::clone(&value)), value)
            })
        }
    }
}

fn nested_methods(field: &Field<'_>, names: &Names) -> TokenStream {
    let krate = &names.krate;
    let span = field.span();
    let name = field.ident;
    let ty = field.ty;
    let bare = field.name();
    let setter = format_ident!("set_{}", bare, span = span);
    let handle = nested_handle(field, krate);
    let accessor_doc = format!("The nested dict of `{bare}`, shared like this one.");
    let setter_doc = format!("Replaces all of `{bare}` (one full dump of its dict).");
    let replace = match field.kind {
        FieldKind::NestedMap { .. } => quote_spanned!(span=> self.#name.replace_all(value)),
        _ => quote_spanned!(span=> self.#name.replace(value)),
    };
    quote_spanned! {span=>
        #[doc = #accessor_doc]
        pub fn #name(&self) -> &#handle {
            &self.#name
        }

        #[doc = #setter_doc]
        ///
        /// # Errors
        /// If the full dump could not be written; nothing changed then.
        pub fn #setter(&self, value: #ty) -> #krate::Result<()> {
            #replace
        }
    }
}

fn shared_dict_impl(input: &Input<'_>, names: &Names, plain: &[&Field<'_>]) -> TokenStream {
    let Names {
        krate,
        ident,
        handle,
        fields,
        bounds,
        ..
    } = names;
    let all_idents: Vec<&Ident> = input.fields.iter().map(|f| f.ident).collect();
    let plain_idents: Vec<&Ident> = plain.iter().map(|f| f.ident).collect();
    let open_nested = input.fields.iter().filter(|f| !f.is_plain()).map(|field| {
        let name = field.ident;
        let key = field.key();
        let ty = field.ty;
        let what = format!("nested field {} of {}", field.name(), ident);
        match field.kind {
            FieldKind::NestedMap { .. } => quote! {
                let #name = __options.open_nested_map(&__dict, #key, #name)?;
            },
            _ => {
                // The one place that requires the field's type to be a `SharedDict` (see
                // `Nested`), spanned on that type: a wrong type is one error, there.
                let ops = quote_spanned!(ty.span()=> #krate::__private::nested_ops::<#ty>());
                quote! {
                    let #name = #krate::__private::Nested::open_in(
                        #ops,
                        &__dict,
                        &__options.child(&__dict, #key),
                        #name,
                        #what,
                    )?;
                }
            }
        }
    });
    let open_nested: Vec<TokenStream> = open_nested.collect();
    let nested_idents: Vec<&Ident> = input
        .fields
        .iter()
        .filter(|f| !f.is_plain())
        .map(|f| f.ident)
        .collect();
    gated(bounds, |bounds| {
        quote! {
            #[automatically_derived]
            impl #krate::SharedDict for #ident #bounds {
                type Handle = #handle;

                fn __open(__options: &#krate::__private::OpenOptions, __initial: Self) -> #krate::Result<#handle> {
                    let #ident { #(#all_idents),* } = __initial;
                    let __dict = #krate::__private::StructDict::open_state(__options, #fields { #(#plain_idents),* })?;
                    #(#open_nested)*
                    ::core::result::Result::Ok(#handle { __dict, #(#nested_idents),* })
                }

                fn __snapshot(handle: &#handle) -> #krate::Result<Self> {
                    handle.snapshot()
                }

                fn __replace(handle: &#handle, value: Self) -> #krate::Result<()> {
                    handle.replace(value)
                }

                fn __discard_if_created(handle: &#handle) {
                    handle.__dict.discard_if_created();
                }
            }
        }
    })
}

/// Expansion snapshots: every change to generated code shows up as a diff of
/// `tests/expand/*.expanded.rs`, to be reviewed. Regenerate them with
/// `ULTRADICT_BLESS=1 cargo test -p ultradict-derive`.
#[cfg(test)]
mod snapshots {
    use std::path::Path;

    fn expand_file(input: &Path) -> String {
        let source = std::fs::read_to_string(input).expect("read input");
        let tokens: proc_macro2::TokenStream = source.parse().expect("tokens");
        let output = super::derive(tokens);
        let file = syn::parse2::<syn::File>(output).expect("the expansion parses as a file");
        prettyplease::unparse(&file)
    }

    #[test]
    fn expansions_match_their_snapshots() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expand");
        let bless = std::env::var_os("ULTRADICT_BLESS").is_some();
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .expect("tests/expand")
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| !path.to_string_lossy().ends_with(".expanded.rs"))
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty());
        for input in inputs {
            let expanded = expand_file(&input);
            let snapshot = input.with_extension("expanded.rs");
            if bless {
                std::fs::write(&snapshot, &expanded).expect("write snapshot");
                continue;
            }
            let expected = std::fs::read_to_string(&snapshot).unwrap_or_default();
            assert!(
                expected == expanded,
                "the expansion of {} changed; review it and rerun with ULTRADICT_BLESS=1:\n{expanded}",
                input.display()
            );
        }
    }
}
