//! Objects answered without a task per field.
//!
//! async-graphql resolves every field of an object as a boxed future of its
//! own, polled through a set of futures, with a context and a path node per
//! field. That is right for a field that waits (an upstream, a lock), and
//! most of a card's execution cost for the hundreds that do not: a product's
//! id, name and price, its store's name, each amount of money.
//!
//! A type implementing [`PlainFields`] answers the fields it holds at hand
//! directly. When every field of a selection is answered that way, and the
//! selection is plain (fields only: no fragments, arguments, directives or
//! repeated response keys), the object's value is built at once
//! ([`plain_object`]); otherwise nothing of that attempt is kept and the
//! object resolves the general way, through its derived `Object`
//! implementation. The two paths give byte-identical answers (see the
//! `edge` API tests), so the fast one is an optimisation, not a variant.
//!
//! A type reached from a general resolver (a card, a list of products, an
//! amount) implements `OutputType` with [`plain_output_type!`]:
//! [`plain_object`] first, its derived object (a wrapper with the same type
//! name) when that gives `None`.
//! Types only ever reached through such a parent (a product's store and
//! price) implement [`PlainFields`] beside their derived object.

use async_graphql::parser::types::{Field, Selection, SelectionSet};
use async_graphql::{ContextSelectionSet, Value};

/// A GraphQL object some of whose fields can be answered without waiting.
pub trait PlainFields {
    /// The object's GraphQL type name (for `__typename`).
    const TYPE_NAME: &'static str;

    /// The value of `field` (its arguments and directives are empty; its
    /// sub-selection is `field.selection_set`), or `None` when it cannot be
    /// answered at once: it waits, it would report an error, or it is not
    /// one of the plain fields. `None` sends the whole object down the
    /// general path, so it must leave nothing behind.
    fn plain_field(&self, ctx: &ContextSelectionSet<'_>, field: &Field) -> Option<Value>;
}

/// The value of `object` for the selection `set`, when every selected field
/// is plain and answered at once; `None`: resolve the general way.
pub fn plain_object<T: PlainFields + ?Sized>(
    object: &T,
    ctx: &ContextSelectionSet<'_>,
    set: &SelectionSet,
) -> Option<Value> {
    let mut map = async_graphql::indexmap::IndexMap::with_capacity(set.items.len());
    for selection in &set.items {
        let Selection::Field(field) = &selection.node else {
            return None;
        };
        let field = &field.node;
        if !field.arguments.is_empty() || !field.directives.is_empty() {
            return None;
        }
        let value = if field.name.node == "__typename" {
            Value::String(T::TYPE_NAME.to_owned())
        } else {
            object.plain_field(ctx, field)?
        };
        // A repeated key merges its selections: the general path knows how.
        if map
            .insert(field.response_key().node.clone(), value)
            .is_some()
        {
            return None;
        }
    }
    // A selection left empty (every field skipped by `@skip`/`@include`)
    // goes the general way, which answers `{}`.
    (!map.is_empty()).then_some(Value::Object(map))
}

/// The value of a field whose type is a plain object: `null` for `None`.
pub fn plain_option<T: PlainFields + ?Sized>(
    object: Option<&T>,
    ctx: &ContextSelectionSet<'_>,
    field: &Field,
) -> Option<Value> {
    match object {
        Some(object) => plain_object(object, ctx, &field.selection_set.node),
        None => Some(Value::Null),
    }
}

/// The value of a field whose type is a list of plain objects.
pub fn plain_list<'a, T: PlainFields + 'a>(
    items: impl IntoIterator<Item = &'a T>,
    ctx: &ContextSelectionSet<'_>,
    field: &Field,
) -> Option<Value> {
    items
        .into_iter()
        .map(|item| plain_object(item, ctx, &field.selection_set.node))
        .collect::<Option<Vec<_>>>()
        .map(Value::List)
}

/// A string field's value.
pub fn string(text: &str) -> Option<Value> {
    Some(Value::String(text.to_owned()))
}

/// Implements `OutputType` for `$ty`, a [`PlainFields`] type whose GraphQL
/// object is derived on `$fields` (`struct $fields<'a>(&'a $ty)`, with the
/// type's name, descriptions and resolvers): plain selections are built at
/// once, every other one resolves through `$fields`.
macro_rules! plain_output_type {
    ($ty:ty, $fields:ident) => {
        impl async_graphql::OutputType for $ty {
            fn type_name() -> std::borrow::Cow<'static, str> {
                <$fields<'static> as async_graphql::OutputType>::type_name()
            }

            fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
                <$fields<'static> as async_graphql::OutputType>::create_type_info(registry)
            }

            async fn resolve(
                &self,
                ctx: &async_graphql::ContextSelectionSet<'_>,
                field: &async_graphql::Positioned<async_graphql::parser::types::Field>,
            ) -> async_graphql::ServerResult<async_graphql::Value> {
                match $crate::graphql::plain::plain_object(self, ctx, &ctx.item.node) {
                    Some(value) => Ok(value),
                    None => {
                        <$fields<'_> as async_graphql::OutputType>::resolve(
                            &$fields(self),
                            ctx,
                            field,
                        )
                        .await
                    }
                }
            }
        }
    };
}
pub(crate) use plain_output_type;
