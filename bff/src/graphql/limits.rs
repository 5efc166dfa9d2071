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

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Response, ServerError};

use super::guard::{self, DocumentLimits, Refusal};
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

/// The limits a document must keep before it is parsed and validated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// What the scan and the fragment expansion bound.
    pub document: DocumentLimits,
    /// Most aliases.
    pub max_aliases: usize,
    /// Deepest nesting of the product's own fields.
    pub max_depth: usize,
}

/// A parsed document that kept every limit, and what parsing it learnt.
#[derive(Debug)]
pub struct Checked {
    /// The document.
    pub doc: ExecutableDocument,
    /// Its lexical tokens (a measure of its parsed size).
    pub tokens: usize,
}

fn refusal_error(refusal: Refusal) -> ServerError {
    match refusal {
        Refusal::TooDeep { limit } => with_code(
            ServerError::new(
                format!("the document nests brackets more than {limit} levels deep"),
                None,
            ),
            code::QUERY_TOO_DEEP,
        ),
        Refusal::TooManyTokens { limit } => with_code(
            ServerError::new(format!("the document has more than {limit} tokens"), None),
            code::QUERY_TOO_LARGE,
        ),
        Refusal::TooManyDirectives { limit } => with_code(
            ServerError::new(
                format!("the document uses more than {limit} directives"),
                None,
            ),
            code::TOO_MANY_DIRECTIVES,
        ),
        Refusal::TooManyFields { limit } => with_code(
            ServerError::new(
                format!(
                    "the query expands to more than {limit} fields once its fragments are spread"
                ),
                None,
            ),
            code::QUERY_TOO_COMPLEX,
        ),
        Refusal::FragmentCycle { name } => with_code(
            ServerError::new(
                format!("fragment `{}` spreads itself", short(&name, 64)),
                None,
            ),
            code::GRAPHQL_VALIDATION_FAILED,
        ),
    }
}

/// A parser error as one line for people, with its position.
fn parse_error(err: async_graphql::parser::Error) -> ServerError {
    use async_graphql::parser::Error as E;
    let locations: Vec<_> = err.positions().collect();
    let message = match &err {
        E::Syntax { .. } => "syntax error: the document is not valid GraphQL here".to_owned(),
        E::MultipleOperations { .. } => {
            "a document with an anonymous operation may hold no other operation".to_owned()
        }
        E::OperationDuplicated { operation, .. } => {
            format!(
                "operation `{}` is defined more than once",
                short(operation, 64)
            )
        }
        E::FragmentDuplicated { fragment, .. } => {
            format!(
                "fragment `{}` is defined more than once",
                short(fragment, 64)
            )
        }
        E::MissingOperation => "the document holds no operation".to_owned(),
        E::RecursionLimitExceeded => {
            return with_code(
                ServerError::new("the document nests too deep", None),
                code::QUERY_TOO_DEEP,
            );
        }
        _ => "the document is not a GraphQL request".to_owned(),
    };
    let mut server = ServerError::new(message, locations.first().copied());
    server.locations = locations;
    with_code(server, code::GRAPHQL_PARSE_FAILED)
}

/// At most `max` characters of `text`, marked when cut.
fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

/// Scans, parses and checks a document: nothing recursive runs before the
/// scan has bounded its nesting and size.
pub fn parse(query: &str, limits: &Limits) -> Result<Checked, ServerError> {
    let scanned = guard::scan(query, &limits.document).map_err(refusal_error)?;
    let doc = async_graphql::parser::parse_query(query).map_err(parse_error)?;
    let aliases = count_aliases(&doc);
    if aliases > limits.max_aliases {
        return Err(with_code(
            ServerError::new(
                format!(
                    "the query uses {aliases} aliases; at most {} are allowed",
                    limits.max_aliases
                ),
                None,
            ),
            code::TOO_MANY_ALIASES,
        ));
    }
    let depth = guard::expand(&doc, &limits.document).map_err(refusal_error)?;
    if depth > limits.max_depth {
        return Err(with_code(
            ServerError::new(
                format!(
                    "the query nests {depth} levels deep; at most {} are allowed",
                    limits.max_depth
                ),
                None,
            ),
            code::QUERY_TOO_DEEP,
        ));
    }
    Ok(Checked {
        doc,
        tokens: scanned.tokens,
    })
}

/// Most errors one response carries; the rest are summed up in one.
pub const MAX_ERRORS: usize = 20;
/// Longest error message, in characters.
const MAX_MESSAGE: usize = 300;
/// Most locations one error carries.
const MAX_LOCATIONS: usize = 5;

/// Makes errors fit for people and bounded: one line each, at most
/// [`MAX_ERRORS`], duplicates (same message, code and path) merged.
pub fn tidy(errors: Vec<ServerError>) -> Vec<ServerError> {
    let total = errors.len();
    let mut out: Vec<ServerError> = Vec::with_capacity(total.min(MAX_ERRORS + 1));
    let mut dropped = 0usize;
    for mut err in errors {
        if err.message.contains(['\n', '\r']) || err.message.chars().count() > MAX_MESSAGE {
            let one_line: String = err.message.split_whitespace().collect::<Vec<_>>().join(" ");
            err.message = short(&one_line, MAX_MESSAGE);
        }
        let duplicate = out.iter_mut().find(|seen| {
            seen.message == err.message
                && seen.path == err.path
                && seen.extensions.as_ref().and_then(|e| e.get("code"))
                    == err.extensions.as_ref().and_then(|e| e.get("code"))
        });
        if let Some(seen) = duplicate {
            for loc in err.locations {
                if seen.locations.len() < MAX_LOCATIONS && !seen.locations.contains(&loc) {
                    seen.locations.push(loc);
                }
            }
            continue;
        }
        if out.len() == MAX_ERRORS {
            dropped += 1;
            continue;
        }
        err.locations.truncate(MAX_LOCATIONS);
        out.push(err);
    }
    if dropped > 0 {
        let first_code = out
            .first()
            .and_then(|e| e.extensions.as_ref())
            .and_then(|e| e.get("code"))
            .and_then(|c| match c {
                async_graphql::Value::String(s) => Some(s.clone()),
                _ => None,
            });
        let mut more = ServerError::new(format!("{dropped} more errors were left out"), None);
        let mut ext = async_graphql::ErrorExtensionValues::default();
        ext.set(
            "code",
            first_code.unwrap_or_else(|| code::BAD_REQUEST.to_owned()),
        );
        more.extensions = Some(ext);
        out.push(more);
    }
    out
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

    const LIMITS: Limits = Limits {
        document: DocumentLimits {
            max_nesting: 32,
            max_tokens: 10_000,
            max_directives: 50,
            max_fields: 2_000,
        },
        max_aliases: 30,
        max_depth: 10,
    };

    fn code_of(q: &str, limits: &Limits) -> Option<async_graphql::Value> {
        parse(q, limits)
            .unwrap_err()
            .extensions
            .unwrap()
            .get("code")
            .cloned()
    }

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
        assert_eq!(
            code_of("{ malls {", &LIMITS),
            Some(code::GRAPHQL_PARSE_FAILED.into())
        );
        let one_alias = Limits {
            max_aliases: 1,
            ..LIMITS
        };
        assert_eq!(
            code_of("{ a: malls { id } b: malls { id } }", &one_alias),
            Some(code::TOO_MANY_ALIASES.into())
        );
        assert!(parse("{ a: malls { id } }", &one_alias).is_ok());
    }

    #[test]
    fn parse_errors_are_one_line_with_a_position() {
        let err = parse("{ malls { id }\n  zz( }", &LIMITS).unwrap_err();
        assert!(!err.message.contains('\n'), "{}", err.message);
        assert!(!err.message.contains("-->"), "{}", err.message);
        assert_eq!(err.locations.first().map(|p| p.line), Some(2));
    }

    #[test]
    fn selection_depth_is_limited_through_fragments() {
        let shallow = Limits {
            max_depth: 2,
            ..LIMITS
        };
        assert_eq!(
            code_of(
                "{ malls { ...F } } fragment F on Mall { stores { id } }",
                &shallow
            ),
            Some(code::QUERY_TOO_DEEP.into())
        );
        assert!(parse("{ malls { stores } }", &shallow).is_ok());
    }

    #[test]
    fn duplicate_errors_are_merged_and_the_list_is_bounded() {
        let errors: Vec<ServerError> = (0..3_000)
            .map(|i| {
                let mut e = ServerError::new(
                    "Directive \"skip\" may not be used twice",
                    Some(async_graphql::Pos {
                        line: 1,
                        column: i + 1,
                    }),
                );
                e.extensions = Some({
                    let mut ext = async_graphql::ErrorExtensionValues::default();
                    ext.set("code", code::GRAPHQL_VALIDATION_FAILED);
                    ext
                });
                e
            })
            .chain((0..100).map(|i| ServerError::new(format!("line one {i}\nline two"), None)))
            .collect();
        let tidy = tidy(errors);
        assert_eq!(tidy.len(), MAX_ERRORS + 1);
        assert_eq!(tidy[0].locations.len(), MAX_LOCATIONS);
        assert!(tidy.iter().all(|e| !e.message.contains('\n')));
        assert!(
            tidy[MAX_ERRORS]
                .message
                .contains("more errors were left out")
        );
    }
}
