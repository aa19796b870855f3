//! The intermediate tree: the struct and its fields as the derive sees them. Every node keeps
//! the `original` syn item for spans.

use proc_macro2::Span;
use syn::{Data, DeriveInput, Fields, GenericArgument, Ident, LitStr, PathArguments, Type};

use crate::attr::{self, ContainerAttrs, Errors};

/// A struct with named fields, ready to validate.
pub(crate) struct Input<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: ContainerAttrs,
    pub(crate) fields: Vec<Field<'a>>,
}

/// One named field.
pub(crate) struct Field<'a> {
    pub(crate) original: &'a syn::Field,
    pub(crate) ident: &'a Ident,
    pub(crate) ty: &'a Type,
    pub(crate) kind: FieldKind<'a>,
    pub(crate) rename: Option<LitStr>,
}

/// How a field is stored.
pub(crate) enum FieldKind<'a> {
    /// One value under one key of this dict.
    Plain,
    /// A sub-dict of its own: a struct that derives `SharedDict`.
    NestedStruct,
    /// A sub-dict of its own: an `UltraDict<K, V>`.
    NestedMap { key: &'a Type, value: &'a Type },
    /// `nested` on a type that can be neither (a tuple, a reference, ...).
    NestedInvalid,
}

impl<'a> Input<'a> {
    /// Reads `input`; `None` (with errors pushed) if it is not a struct with named fields.
    pub(crate) fn from_syn(input: &'a DeriveInput, errors: &mut Errors) -> Option<Self> {
        let attrs = attr::container_attrs(&input.attrs, errors);
        let named = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => named,
                Fields::Unnamed(_) => {
                    errors.spanned(
                        &input.ident,
                        "`SharedDict` needs named fields: a tuple struct has no keys to share; \
                         name its fields",
                    );
                    return None;
                }
                Fields::Unit => {
                    errors.spanned(
                        &input.ident,
                        "`SharedDict` needs named fields: a unit struct has nothing to share",
                    );
                    return None;
                }
            },
            Data::Enum(data) => {
                errors.spanned(
                    data.enum_token,
                    "`SharedDict` cannot be derived for an enum: its keys are a struct's fields; \
                     store the enum as a field of a struct instead",
                );
                return None;
            }
            Data::Union(data) => {
                errors.spanned(
                    data.union_token,
                    "`SharedDict` cannot be derived for a union; use a struct with named fields",
                );
                return None;
            }
        };
        let fields = named
            .named
            .iter()
            .filter_map(|field| Field::from_syn(field, errors))
            .collect();
        Some(Input {
            original: input,
            attrs,
            fields,
        })
    }

    pub(crate) fn ident(&self) -> &'a Ident {
        &self.original.ident
    }
}

impl<'a> Field<'a> {
    fn from_syn(field: &'a syn::Field, errors: &mut Errors) -> Option<Self> {
        let ident = field.ident.as_ref()?;
        let attrs = attr::field_attrs(&field.attrs, errors);
        let kind = match attrs.nested {
            None => FieldKind::Plain,
            Some(_) => classify_nested(&field.ty),
        };
        Some(Field {
            original: field,
            ident,
            ty: &field.ty,
            kind,
            rename: attrs.rename,
        })
    }

    /// The field's name without `r#`.
    pub(crate) fn name(&self) -> String {
        let name = self.ident.to_string();
        name.strip_prefix("r#").map(str::to_owned).unwrap_or(name)
    }

    /// The key the field is stored under.
    pub(crate) fn key(&self) -> String {
        self.rename
            .as_ref()
            .map_or_else(|| self.name(), LitStr::value)
    }

    /// The update enum's variant for this field: its name in UpperCamelCase.
    pub(crate) fn variant(&self) -> Ident {
        Ident::new(&upper_camel(&self.name()), self.span())
    }

    pub(crate) fn span(&self) -> Span {
        self.ident.span()
    }

    pub(crate) fn is_plain(&self) -> bool {
        matches!(self.kind, FieldKind::Plain)
    }
}

/// A nested field is a map if its type is `HashMap<K, V>` (by any path), else a struct.
fn classify_nested(ty: &Type) -> FieldKind<'_> {
    let Type::Path(path) = ty else {
        return FieldKind::NestedInvalid;
    };
    if path.qself.is_some() {
        return FieldKind::NestedInvalid;
    }
    let Some(last) = path.path.segments.last() else {
        return FieldKind::NestedInvalid;
    };
    if last.ident == "HashMap"
        && let PathArguments::AngleBracketed(args) = &last.arguments
    {
        let types: Vec<&Type> = args
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect();
        if let [key, value] = types[..] {
            return FieldKind::NestedMap { key, value };
        }
        return FieldKind::NestedInvalid;
    }
    FieldKind::NestedStruct
}

/// `hit_count` -> `HitCount`; a leading or doubled `_` is dropped.
pub(crate) fn upper_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for part in name.split('_').filter(|part| !part.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    if out.is_empty() || out == "Self" || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'F');
    }
    out
}
