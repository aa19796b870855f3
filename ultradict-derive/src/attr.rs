//! The `#[ultradict(...)]` attribute namespace: its keywords, and reading them with errors
//! on the offending tokens.

use syn::{Attribute, LitStr, Path};

/// The attribute's name.
pub(crate) const ULTRADICT: &str = "ultradict";
/// Field: the field is a dict of its own (a struct deriving `SharedDict`, or a `HashMap`).
pub(crate) const NESTED: &str = "nested";
/// Field: the key the field is stored under (default: the field's name).
pub(crate) const RENAME: &str = "rename";
/// Container: the path of the `ultradict` crate in generated code (default `::ultradict`).
pub(crate) const CRATE: &str = "crate";

/// Collects every error before the derive gives up (serde's `Ctxt`).
#[derive(Default)]
pub(crate) struct Errors {
    errors: Option<syn::Error>,
}

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(errors) => errors.combine(error),
            None => self.errors = Some(error),
        }
    }

    pub(crate) fn spanned(
        &mut self,
        tokens: impl quote::ToTokens,
        message: impl std::fmt::Display,
    ) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        self.errors.map_or(Ok(()), Err)
    }
}

/// What `#[ultradict(...)]` said on a field.
#[derive(Default)]
pub(crate) struct FieldAttrs {
    /// The `nested` keyword, kept for its span.
    pub(crate) nested: Option<Path>,
    pub(crate) rename: Option<LitStr>,
}

/// What `#[ultradict(...)]` said on the struct.
#[derive(Default)]
pub(crate) struct ContainerAttrs {
    pub(crate) crate_path: Option<Path>,
}

/// Calls `visit` on every key of every `#[ultradict(...)]` attribute; a key that cannot be
/// parsed becomes an error and ends that attribute.
fn each_key(
    attrs: &[Attribute],
    errors: &mut Errors,
    mut visit: impl FnMut(&syn::meta::ParseNestedMeta<'_>, &mut Errors) -> syn::Result<()>,
) {
    for attr in attrs.iter().filter(|attr| attr.path().is_ident(ULTRADICT)) {
        if let Err(error) = attr.parse_nested_meta(|meta| visit(&meta, errors)) {
            errors.push(error);
        }
    }
}

/// Reads the attributes of a field.
pub(crate) fn field_attrs(attrs: &[Attribute], errors: &mut Errors) -> FieldAttrs {
    let mut found = FieldAttrs::default();
    each_key(attrs, errors, |meta, errors| {
        if meta.path.is_ident(NESTED) {
            if found.nested.is_some() {
                errors.spanned(&meta.path, "duplicate ultradict attribute `nested`");
            }
            found.nested = Some(meta.path.clone());
        } else if meta.path.is_ident(RENAME) {
            let value: LitStr = meta.value()?.parse()?;
            if found.rename.is_some() {
                errors.spanned(&meta.path, "duplicate ultradict attribute `rename`");
            }
            found.rename = Some(value);
        } else if meta.path.is_ident(CRATE) {
            errors.spanned(
                &meta.path,
                "`crate` is a struct attribute: put `#[ultradict(crate = \"...\")]` on the struct",
            );
            skip_value(meta)?;
        } else {
            errors.spanned(
                    &meta.path,
                    format!(
                        "unknown ultradict field attribute `{}`; expected `nested` or `rename = \"...\"`",
                        path_text(&meta.path)
                    ),
                );
            skip_value(meta)?;
        }
        Ok(())
    });
    found
}

/// Reads the attributes of the struct.
pub(crate) fn container_attrs(attrs: &[Attribute], errors: &mut Errors) -> ContainerAttrs {
    let mut found = ContainerAttrs::default();
    each_key(attrs, errors, |meta, errors| {
        if meta.path.is_ident(CRATE) {
            let value: LitStr = meta.value()?.parse()?;
            if found.crate_path.is_some() {
                errors.spanned(&meta.path, "duplicate ultradict attribute `crate`");
            }
            match value.parse::<Path>() {
                Ok(path) => found.crate_path = Some(path),
                Err(_) => errors.spanned(&value, "`crate` must be a path, like \"::ultradict\""),
            }
        } else if meta.path.is_ident(NESTED) || meta.path.is_ident(RENAME) {
            errors.spanned(
                &meta.path,
                format!(
                    "`{}` is a field attribute: put it on a field",
                    path_text(&meta.path)
                ),
            );
            skip_value(meta)?;
        } else {
            errors.spanned(
                &meta.path,
                format!(
                    "unknown ultradict struct attribute `{}`; expected `crate = \"...\"`",
                    path_text(&meta.path)
                ),
            );
            skip_value(meta)?;
        }
        Ok(())
    });
    found
}

/// Consumes `= value` after an unknown or misplaced key, so parsing can go on.
fn skip_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        let _: syn::Expr = meta.value()?.parse()?;
    }
    Ok(())
}

fn path_text(path: &Path) -> String {
    quote::quote!(#path).to_string().replace(' ', "")
}
