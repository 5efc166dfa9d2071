//! Refusing hostile documents before anything recursive runs on them.
//!
//! GraphQL's parser, its validation rules and the depth / complexity checks
//! are all recursive, and several of them expand fragment spreads. A short
//! document can therefore exhaust the stack (a value literal nested a few
//! thousand levels deep) or the CPU (fragments that each spread the next one
//! twice expand to 2ⁿ fields). So the text is first *scanned* — a flat loop
//! over its tokens that counts bracket nesting, tokens and directives and
//! stops at the first limit — and only a document within those bounds is
//! parsed. The parsed document's size after expanding every fragment is then
//! computed once per fragment (memoised, never per expansion) and bounded
//! before validation sees it. Every later recursion (parsing, validation,
//! execution, response completion) is bounded by these numbers, so none of
//! it can overflow a worker's stack or run for long.

use std::collections::HashMap;

use async_graphql::parser::Positioned;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

/// The document-level limits (from `[graphql]` settings).
#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    /// Deepest bracket nesting (`{`, `[`, `(`) anywhere in the text: bounds
    /// selection nesting and value nesting alike.
    pub max_nesting: usize,
    /// Most lexical tokens in one document.
    pub max_tokens: usize,
    /// Most directives in one document.
    pub max_directives: usize,
    /// Most fields one operation or fragment expands to, fragments
    /// included.
    pub max_fields: usize,
}

/// Why a document was refused before parsing or validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Brackets nest deeper than allowed.
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// More tokens than allowed.
    TooManyTokens {
        /// The limit.
        limit: usize,
    },
    /// More directives than allowed.
    TooManyDirectives {
        /// The limit.
        limit: usize,
    },
    /// An operation or fragment expands to too many fields.
    TooManyFields {
        /// The limit.
        limit: usize,
    },
    /// A fragment spreads itself (directly or through others).
    FragmentCycle {
        /// The fragment's name.
        name: String,
    },
}

/// What the scan learnt about a document within the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Lexical tokens.
    pub tokens: usize,
    /// Deepest bracket nesting.
    pub nesting: usize,
}

/// Scans `text` token by token without building anything, refusing it as
/// soon as a limit is passed. Malformed text (an unterminated string, a
/// stray character) is not refused here: the parser reports it with its
/// position, and the bounds still hold for what it parses.
pub fn scan(text: &str, limits: &DocumentLimits) -> Result<Scan, Refusal> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut tokens = 0usize;
    let mut directives = 0usize;
    let bump_tokens = |tokens: &mut usize| {
        *tokens += 1;
        if *tokens > limits.max_tokens {
            Err(Refusal::TooManyTokens {
                limit: limits.max_tokens,
            })
        } else {
            Ok(())
        }
    };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            // Insignificant: white space, line terminators, commas.
            b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' => {
                bump_tokens(&mut tokens)?;
                if bytes[i..].starts_with(b"\"\"\"") {
                    i += 3;
                    loop {
                        if i >= bytes.len() {
                            break;
                        }
                        if bytes[i..].starts_with(b"\\\"\"\"") {
                            i += 4;
                        } else if bytes[i..].starts_with(b"\"\"\"") {
                            i += 3;
                            break;
                        } else {
                            i += 1;
                        }
                    }
                } else {
                    i += 1;
                    while i < bytes.len() {
                        match bytes[i] {
                            b'\\' => i += 2,
                            b'"' => {
                                i += 1;
                                break;
                            }
                            b'\n' | b'\r' => break,
                            _ => i += 1,
                        }
                    }
                }
            }
            b'{' | b'[' | b'(' => {
                bump_tokens(&mut tokens)?;
                depth += 1;
                if depth > limits.max_nesting {
                    return Err(Refusal::TooDeep {
                        limit: limits.max_nesting,
                    });
                }
                deepest = deepest.max(depth);
                i += 1;
            }
            b'}' | b']' | b')' => {
                bump_tokens(&mut tokens)?;
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'@' => {
                bump_tokens(&mut tokens)?;
                directives += 1;
                if directives > limits.max_directives {
                    return Err(Refusal::TooManyDirectives {
                        limit: limits.max_directives,
                    });
                }
                i += 1;
            }
            b'.' if bytes[i..].starts_with(b"...") => {
                bump_tokens(&mut tokens)?;
                i += 3;
            }
            _ if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' => {
                bump_tokens(&mut tokens)?;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric()
                        || matches!(bytes[i], b'_' | b'.' | b'+' | b'-'))
                {
                    i += 1;
                }
            }
            _ => {
                // Any other punctuator (`!`, `$`, `:`, `=`, `|`, `&`) or a
                // character the parser will refuse.
                bump_tokens(&mut tokens)?;
                i += 1;
            }
        }
    }
    Ok(Scan {
        tokens,
        nesting: deepest,
    })
}

/// Per-fragment figures, computed once each.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    /// Fields after expanding every spread (saturating).
    fields: usize,
    /// Deepest nesting of the product's own fields (introspection fields
    /// count nothing).
    depth: usize,
}

enum Memo {
    InProgress,
    Done(Figures),
}

/// The expanded size and depth of a parsed document, memoised per fragment:
/// linear in the document's size whatever its spreads do.
struct Expander<'a> {
    doc: &'a ExecutableDocument,
    memo: HashMap<&'a str, Memo>,
    limits: &'a DocumentLimits,
}

impl<'a> Expander<'a> {
    fn set(&mut self, set: &'a Positioned<SelectionSet>) -> Result<Figures, Refusal> {
        let mut total = Figures::default();
        for sel in &set.node.items {
            let figures = match &sel.node {
                Selection::Field(field) => {
                    let inner = self.set(&field.node.selection_set)?;
                    let introspection = field.node.name.node.starts_with("__");
                    Figures {
                        fields: inner.fields.saturating_add(1),
                        depth: if introspection { 0 } else { inner.depth + 1 },
                    }
                }
                Selection::InlineFragment(frag) => self.set(&frag.node.selection_set)?,
                Selection::FragmentSpread(spread) => {
                    self.fragment(spread.node.fragment_name.node.as_str())?
                }
            };
            total.fields = total.fields.saturating_add(figures.fields);
            total.depth = total.depth.max(figures.depth);
            if total.fields > self.limits.max_fields {
                return Err(Refusal::TooManyFields {
                    limit: self.limits.max_fields,
                });
            }
        }
        Ok(total)
    }

    fn fragment(&mut self, name: &'a str) -> Result<Figures, Refusal> {
        match self.memo.get(name) {
            Some(Memo::Done(figures)) => return Ok(*figures),
            Some(Memo::InProgress) => {
                return Err(Refusal::FragmentCycle {
                    name: name.to_owned(),
                });
            }
            None => {}
        }
        // An unknown fragment counts nothing: validation reports it.
        let Some((key, frag)) = self.doc.fragments.get_key_value(name) else {
            return Ok(Figures::default());
        };
        self.memo.insert(key.as_str(), Memo::InProgress);
        let figures = self.set(&frag.node.selection_set)?;
        self.memo.insert(key.as_str(), Memo::Done(figures));
        Ok(figures)
    }
}

/// The deepest nesting of the product's own fields in any operation, and
/// checks that no operation or fragment expands past the field limit and
/// that no fragment spreads itself.
pub fn expand(doc: &ExecutableDocument, limits: &DocumentLimits) -> Result<usize, Refusal> {
    let mut expander = Expander {
        doc,
        memo: HashMap::new(),
        limits,
    };
    let mut depth = 0;
    for (_, op) in doc.operations.iter() {
        depth = depth.max(expander.set(&op.node.selection_set)?.depth);
    }
    // Unused fragments are validated too: bound them as well.
    for name in doc.fragments.keys() {
        expander.fragment(name.as_str())?;
    }
    Ok(depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DocumentLimits = DocumentLimits {
        max_nesting: 32,
        max_tokens: 1_000,
        max_directives: 10,
        max_fields: 500,
    };

    fn nested_object(depth: usize) -> String {
        format!(
            "{{ malls(zzz: {}1{}) {{ id }} }}",
            "{a:".repeat(depth),
            "}".repeat(depth)
        )
    }

    fn diamond(n: usize) -> String {
        let mut text = String::from("{ malls { ...F0 } }\n");
        for i in 0..n {
            text.push_str(&format!(
                "fragment F{i} on Mall {{ ...F{} ...F{} }}\n",
                i + 1,
                i + 1
            ));
        }
        text.push_str(&format!("fragment F{n} on Mall {{ id }}\n"));
        text
    }

    #[test]
    fn deeply_nested_values_are_refused_by_the_scan() {
        assert_eq!(
            scan(&nested_object(10_000), &LIMITS),
            Err(Refusal::TooDeep { limit: 32 })
        );
        let list = format!(
            "{{ malls(zzz: {}1{}) {{ id }} }}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        );
        assert_eq!(scan(&list, &LIMITS), Err(Refusal::TooDeep { limit: 32 }));
        assert!(scan(&nested_object(20), &LIMITS).is_ok());
    }

    #[test]
    fn brackets_inside_strings_and_comments_do_not_count() {
        let text = format!(
            "{{ mall(id: \"{}\") {{ id }} }} # {}\n{{ malls {{ id }} }} \"\"\"{}\"\"\"",
            "{".repeat(100),
            "[".repeat(100),
            "(".repeat(100)
        );
        let scanned = scan(&text, &LIMITS).unwrap();
        assert_eq!(scanned.nesting, 2);
    }

    #[test]
    fn token_and_directive_floods_are_refused() {
        let many = format!("{{ {} }}", "id ".repeat(2_000));
        assert_eq!(
            scan(&many, &LIMITS),
            Err(Refusal::TooManyTokens { limit: 1_000 })
        );
        let directives = format!("{{ malls {{ id {} }} }}", "@skip(if: false) ".repeat(11));
        assert_eq!(
            scan(&directives, &LIMITS),
            Err(Refusal::TooManyDirectives { limit: 10 })
        );
    }

    #[test]
    fn fragment_diamonds_are_measured_once_per_fragment() {
        // 2^60 fields if expanded; measured in microseconds.
        let doc = async_graphql::parser::parse_query(diamond(60)).unwrap();
        assert_eq!(
            expand(&doc, &LIMITS),
            Err(Refusal::TooManyFields { limit: 500 })
        );
        // A small diamond is within bounds and its depth is right.
        let doc = async_graphql::parser::parse_query(diamond(4)).unwrap();
        assert_eq!(expand(&doc, &LIMITS), Ok(2));
    }

    #[test]
    fn fragment_cycles_are_refused() {
        let doc = async_graphql::parser::parse_query(
            "{ malls { ...A } } fragment A on Mall { ...B } fragment B on Mall { id ...A }",
        )
        .unwrap();
        assert!(matches!(
            expand(&doc, &LIMITS),
            Err(Refusal::FragmentCycle { .. })
        ));
    }

    #[test]
    fn depth_counts_fields_through_fragments_but_not_introspection() {
        let doc = async_graphql::parser::parse_query(
            "{ malls { ...F } __schema { types { fields { type { ofType { ofType { name } } } } } } }
             fragment F on Mall { stores { id } }",
        )
        .unwrap();
        assert_eq!(expand(&doc, &LIMITS), Ok(3));
    }
}
