//! Hostile-query defences and stable error codes for the stages before
//! execution.
//!
//! Depth and complexity are checked by async-graphql's validation (limits
//! set in [`super::build_schema`]); this extension adds an alias limit and
//! gives every parse / validation / limit error a stable
//! `extensions.code`. [`ensure_codes`] gives any error still lacking a
//! code one, so that clients can always switch on `extensions.code`.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextValidation,
};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Response, ServerError, ServerResult, ValidationResult, Variables};

use crate::error::code;

/// The limits extension.
pub struct Limits {
    /// Most aliased fields in one document.
    pub max_aliases: usize,
}

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(LimitsExtension {
            max_aliases: self.max_aliases,
        })
    }
}

struct LimitsExtension {
    max_aliases: usize,
}

fn with_code(mut err: ServerError, code: &'static str) -> ServerError {
    let ext = err.extensions.get_or_insert_with(Default::default);
    ext.set("code", code);
    err
}

fn has_code(err: &ServerError) -> bool {
    err.extensions
        .as_ref()
        .is_some_and(|ext| ext.get("code").is_some())
}

/// Counts aliased fields in every operation and fragment of the document.
fn count_aliases(doc: &ExecutableDocument) -> usize {
    fn count(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|sel| match &sel.node {
                Selection::Field(field) => {
                    usize::from(field.node.alias.is_some()) + count(&field.node.selection_set.node)
                }
                Selection::InlineFragment(frag) => count(&frag.node.selection_set.node),
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    let operations: usize = doc
        .operations
        .iter()
        .map(|(_, op)| count(&op.node.selection_set.node))
        .sum();
    let fragments: usize = doc
        .fragments
        .values()
        .map(|frag| count(&frag.node.selection_set.node))
        .sum();
    operations + fragments
}

#[async_trait::async_trait]
impl Extension for LimitsExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await.map_err(|err| {
            // The parser's own recursion guard fires before validation for
            // very deep documents: report it as the depth limit it is.
            if err.message.contains("recursion") {
                with_code(err, code::QUERY_TOO_DEEP)
            } else {
                with_code(err, code::GRAPHQL_PARSE_FAILED)
            }
        })?;
        let aliases = count_aliases(&doc);
        if aliases > self.max_aliases {
            return Err(with_code(
                ServerError::new(
                    format!(
                        "the query uses {aliases} aliases; at most {} are allowed",
                        self.max_aliases
                    ),
                    None,
                ),
                code::TOO_MANY_ALIASES,
            ));
        }
        Ok(doc)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|err| {
                    let code = if err.message.contains("nested too deep") {
                        code::QUERY_TOO_DEEP
                    } else if err.message.contains("too complex") {
                        code::QUERY_TOO_COMPLEX
                    } else if err.message.starts_with("Invalid value for argument") {
                        // A variable of the wrong shape: input, not schema misuse.
                        code::BAD_USER_INPUT
                    } else {
                        code::GRAPHQL_VALIDATION_FAILED
                    };
                    with_code(err, code)
                })
                .collect()
        })
    }
}

/// Gives every error still lacking a code one. Our resolvers always set a
/// code, so an uncoded error comes from async-graphql itself: without a
/// path it is about the request (unknown or missing operation name), and
/// with one it is argument / variable coercion — both the client's doing
/// (`BAD_USER_INPUT`). Anything else is hidden behind
/// `INTERNAL_SERVER_ERROR` and logged.
pub fn ensure_codes(response: &mut Response) {
    for err in &mut response.errors {
        if has_code(err) {
            continue;
        }
        let coercion = ["Invalid value for argument", "Failed to parse", "Variable "]
            .iter()
            .any(|prefix| err.message.starts_with(prefix));
        if err.path.is_empty() || coercion {
            *err = with_code(err.clone(), code::BAD_USER_INPUT);
        } else {
            tracing::error!(message = %err.message, path = ?err.path, "uncoded error hidden from client");
            err.message = "internal error".to_owned();
            *err = with_code(err.clone(), code::INTERNAL_SERVER_ERROR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_counted_in_operations_and_fragments() {
        let doc = async_graphql::parser::parse_query(
            "query { a: malls { b: id } ...F } fragment F on Query { c: malls { id } d: malls { id } }",
        )
        .unwrap();
        assert_eq!(count_aliases(&doc), 4);
    }
}
