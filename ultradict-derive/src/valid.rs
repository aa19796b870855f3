//! The rules a `SharedDict` struct must follow, checked before anything is generated.

use std::collections::HashMap;

use crate::ast::{FieldKind, Input};

/// Methods every generated handle has: a field's getter may not take one of these names.
const HANDLE_METHODS: &[&str] = &[
    "name",
    "status",
    "lock",
    "try_lock",
    "lock_timeout",
    "lock_with",
    "apply_update",
    "dump",
    "load",
    "unlink",
    "close",
    "watch",
    "snapshot",
    "replace",
    "wait_for_change",
];
use crate::attr::Errors;

impl Input<'_> {
    /// Pushes an error for every broken rule.
    pub(crate) fn validate(&self, errors: &mut Errors) {
        let generics = &self.original.generics;
        if !generics.params.is_empty() {
            errors.spanned(
                generics,
                "`SharedDict` does not support generic parameters: the shared schema is fixed \
                 when the dict is created; use concrete types (a type alias can name them)",
            );
        }
        if self.fields.is_empty() {
            errors.spanned(
                self.ident(),
                "`SharedDict` needs at least one field to share",
            );
        }
        let methods: HashMap<String, &syn::Ident> = self
            .fields
            .iter()
            .flat_map(|field| {
                let name = field.name();
                let mut generated = vec![(format!("set_{name}"), field.ident)];
                if field.is_plain() {
                    generated.push((format!("update_{name}"), field.ident));
                }
                generated
            })
            .collect();
        let mut keys: HashMap<String, &syn::Ident> = HashMap::new();
        let mut variants: HashMap<String, &syn::Ident> = HashMap::new();
        for field in &self.fields {
            if let FieldKind::NestedInvalid = field.kind {
                errors.spanned(
                    field.original,
                    "`#[ultradict(nested)]` needs a struct that derives `SharedDict` or a \
                     `HashMap<K, V>`; remove `nested` to store this field as one value",
                );
            }
            if let Some(token) = self_in(quote::ToTokens::to_token_stream(field.ty)) {
                errors.spanned(
                    token,
                    format!(
                        "`Self` in a field's type: the derive puts this type into other types it \
                         generates, where `Self` would mean them; write `{}` instead",
                        self.ident()
                    ),
                );
            }
            let name = field.name();
            if HANDLE_METHODS.contains(&name.as_str()) {
                errors.spanned(
                    field.ident,
                    format!(
                        "a field named `{name}` would clash with the generated handle's own \
                         `{name}()` method; rename the field (`#[ultradict(rename = \"{name}\")]` \
                         keeps its stored key)"
                    ),
                );
            }
            if let Some(other) = methods.get(&name) {
                errors.spanned(
                    field.ident,
                    format!(
                        "a field named `{name}` would clash with the `{name}()` method generated \
                         for field `{other}`; rename one of them"
                    ),
                );
            }
            let key = field.key();
            let key_ok = !key.is_empty()
                && key.len() <= 64
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !field.is_plain() && field.rename.is_none() && !key_ok {
                errors.spanned(
                    field.ident,
                    "a nested field's name also names its dict in /dev/shm: use ASCII letters, \
                     digits and `_` (at most 64), or give it `#[ultradict(rename = \"...\")]`",
                );
            }
            if let Some(rename) = &field.rename {
                let key = rename.value();
                let valid = !key.is_empty()
                    && key.len() <= 64
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !valid {
                    errors.spanned(
                        rename,
                        "`rename` takes 1 to 64 ASCII letters, digits, `_` or `-`: the key also \
                         names nested dicts in /dev/shm",
                    );
                }
            }
            if field.is_plain()
                && let Some(previous) = variants.insert(field.variant().to_string(), field.ident)
            {
                errors.spanned(
                    field.ident,
                    format!(
                        "fields `{previous}` and `{}` differ only in underscores and case, which \
                         the generated code cannot tell apart; rename one of them",
                        field.ident
                    ),
                );
            }
            if let Some(previous) = keys.insert(field.key(), field.ident) {
                let span = field
                    .rename
                    .as_ref()
                    .map_or(field.ident.span(), |r| r.span());
                errors.push(syn::Error::new(
                    span,
                    format!(
                        "two fields are stored under the key `{}` (`{previous}` and `{}`); \
                         rename one with `#[ultradict(rename = \"...\")]`",
                        field.key(),
                        field.ident
                    ),
                ));
            }
        }
    }
}

/// The first `Self` in `tokens`, nested groups included.
fn self_in(tokens: proc_macro2::TokenStream) -> Option<proc_macro2::Ident> {
    tokens.into_iter().find_map(|token| match token {
        proc_macro2::TokenTree::Ident(ident) if ident == "Self" => Some(ident),
        proc_macro2::TokenTree::Group(group) => self_in(group.stream()),
        _ => None,
    })
}
