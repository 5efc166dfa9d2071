//! Hostile-query defences and stable error codes.
//!
//! Every document is parsed once, by [`super::DocumentCache::prepare`],
//! before execution: parse failures, the parser's recursion guard, the
//! alias limit and the depth limit are answered there with their codes.
//!
//! Depth is measured on the product's own fields only: schema
//! introspection (`__schema`, `__type`) is legitimately deep (GraphiQL's
//! introspection query nests about 15 levels) and is bounded instead by
//! async-graphql's absolute [`INTROSPECTION_MAX_DEPTH`]. Complexity is
//! checked by async-graphql's validation; [`ensure_codes`] gives those
//! errors, and any other error still lacking a code, a stable
//! `extensions.code`, so clients can always switch on it.
//!
//! No async-graphql extension is used for this on purpose: registering any
//! extension routes every field resolution through the extension chain,
//! which measurably costs throughput (see `bff/docs/benchmarks.md`).

use async_graphql::parser::Positioned;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Response, ServerError};

use crate::error::code;

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

/// Absolute depth limit, introspection included (set on the schema).
pub const INTROSPECTION_MAX_DEPTH: usize = 20;

/// The deepest nesting of non-introspection fields in any operation,
/// following fragment spreads (a spread already being expanded counts as
/// nothing: fragment cycles are rejected by validation).
fn max_depth(doc: &ExecutableDocument) -> usize {
    fn depth<'a>(
        doc: &'a ExecutableDocument,
        set: &'a Positioned<SelectionSet>,
        expanding: &mut Vec<&'a str>,
    ) -> usize {
        set.node
            .items
            .iter()
            .map(|sel| match &sel.node {
                Selection::Field(field) => {
                    if field.node.name.node.starts_with("__") {
                        0
                    } else {
                        1 + depth(doc, &field.node.selection_set, expanding)
                    }
                }
                Selection::InlineFragment(frag) => depth(doc, &frag.node.selection_set, expanding),
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    match doc.fragments.get(&spread.node.fragment_name.node) {
                        Some(frag) if !expanding.contains(&name) => {
                            expanding.push(name);
                            let d = depth(doc, &frag.node.selection_set, expanding);
                            expanding.pop();
                            d
                        }
                        _ => 0,
                    }
                }
            })
            .max()
            .unwrap_or(0)
    }
    doc.operations
        .iter()
        .map(|(_, op)| depth(doc, &op.node.selection_set, &mut Vec::new()))
        .max()
        .unwrap_or(0)
}

/// Parses a query and applies the document-level limits.
pub fn parse(
    query: &str,
    max_aliases: usize,
    max_depth_allowed: usize,
) -> Result<ExecutableDocument, ServerError> {
    let doc = async_graphql::parser::parse_query(query).map_err(|err| {
        let err = ServerError::from(err);
        // The parser's own recursion guard fires for very deep documents:
        // report it as the depth limit it is.
        if err.message.contains("recursion") {
            with_code(err, code::QUERY_TOO_DEEP)
        } else {
            with_code(err, code::GRAPHQL_PARSE_FAILED)
        }
    })?;
    let aliases = count_aliases(&doc);
    if aliases > max_aliases {
        return Err(with_code(
            ServerError::new(
                format!("the query uses {aliases} aliases; at most {max_aliases} are allowed"),
                None,
            ),
            code::TOO_MANY_ALIASES,
        ));
    }
    let depth = max_depth(&doc);
    if depth > max_depth_allowed {
        return Err(with_code(
            ServerError::new(
                format!(
                    "the query nests {depth} levels deep; at most {max_depth_allowed} are allowed"
                ),
                None,
            ),
            code::QUERY_TOO_DEEP,
        ));
    }
    Ok(doc)
}

/// Gives every error still lacking a code one.
///
/// Our resolvers always set a code, so an uncoded error comes from
/// async-graphql itself: a validation failure (depth, complexity, unknown
/// fields), or, without a path, a request-level problem (unknown or missing
/// operation name), or argument / variable coercion — all the client's
/// doing. Anything else is hidden behind `INTERNAL_SERVER_ERROR` and logged.
pub fn ensure_codes(response: &mut Response) {
    for err in &mut response.errors {
        if has_code(err) {
            continue;
        }
        let message = err.message.as_str();
        let coercion = ["Invalid value for argument", "Failed to parse", "Variable "]
            .iter()
            .any(|prefix| message.starts_with(prefix));
        let code = if message.contains("nested too deep")
            || message.contains("recursion depth of the query")
        {
            code::QUERY_TOO_DEEP
        } else if message.contains("too complex") {
            code::QUERY_TOO_COMPLEX
        } else if coercion {
            code::BAD_USER_INPUT
        } else if err.path.is_empty() && err.locations.is_empty() {
            // Request-level: operation name missing or unknown.
            code::BAD_USER_INPUT
        } else if err.path.is_empty() {
            // Points into the document but not at a resolved field: the
            // document does not fit the schema.
            code::GRAPHQL_VALIDATION_FAILED
        } else {
            tracing::error!(message, path = ?err.path, "uncoded error hidden from client");
            err.message = "internal error".to_owned();
            code::INTERNAL_SERVER_ERROR
        };
        *err = with_code(err.clone(), code);
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

    #[test]
    fn parse_failures_and_alias_floods_carry_codes() {
        let code_of = |q: &str, max| {
            parse(q, max, 10)
                .unwrap_err()
                .extensions
                .unwrap()
                .get("code")
                .cloned()
        };
        assert_eq!(
            code_of("{ malls {", 30),
            Some(code::GRAPHQL_PARSE_FAILED.into())
        );
        assert_eq!(
            code_of("{ a: malls { id } b: malls { id } }", 1),
            Some(code::TOO_MANY_ALIASES.into())
        );
        assert!(parse("{ a: malls { id } }", 1, 10).is_ok());
    }

    #[test]
    fn depth_counts_fields_through_fragments_but_not_introspection() {
        let doc = async_graphql::parser::parse_query(
            "{ malls { ...F } __schema { types { fields { type { ofType { ofType { name } } } } } } }
             fragment F on Mall { stores { id } }",
        )
        .unwrap();
        assert_eq!(max_depth(&doc), 3);
        // A fragment cycle does not hang the check (validation rejects it).
        let cyclic = async_graphql::parser::parse_query(
            "{ malls { ...A } } fragment A on Mall { ...B } fragment B on Mall { ...A }",
        )
        .unwrap();
        assert_eq!(max_depth(&cyclic), 1);
        assert_eq!(
            parse("{ malls { stores { id } } }", 30, 2)
                .unwrap_err()
                .extensions
                .unwrap()
                .get("code")
                .cloned(),
            Some(code::QUERY_TOO_DEEP.into())
        );
    }
}
