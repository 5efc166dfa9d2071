//! Completing a response as the GraphQL specification defines it.
//!
//! The executor leaves a field that failed *out* of its parent object. The
//! specification instead wants every selected field present — a failed
//! nullable field as `null` beside its error — and a failed non-null field
//! to make its nearest nullable ancestor `null` (§6.4.4 "Handling Field
//! Errors"). Typed clients rely on this: Apollo Client treats a missing key
//! as a cache miss and refetches, and a `null` in a non-null position breaks
//! generated types.
//!
//! [`Shape`] knows every object type's fields and their nullability (read
//! once from the schema's SDL). [`Shape::complete`] walks the data along the
//! selected operation — fields collected as the specification's
//! `CollectFields` does, `@skip` / `@include` evaluated with the request's
//! variables — and, in one pass:
//!
//! * puts every selected field in selection order, inserting `null` where
//!   the executor left a key out;
//! * re-creates objects that came back `null` when their own fields
//!   failed (a non-null object, or one with errors below it);
//! * propagates `null` from a non-null position to the nearest nullable
//!   parent, up to `data` itself.
//!
//! Its recursion follows the document's selection nesting, which the
//! document guard has already bounded.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{
    BaseType, Directive, ExecutableDocument, OperationDefinition, OperationType, Selection,
    SelectionSet, Type, TypeKind, TypeSystemDefinition,
};
use async_graphql::{Name, PathSegment, ServerError, Value, Variables};

/// A field of an object type: its declared type, and whether the named
/// type inside it (through any lists) is an object or interface.
#[derive(Debug)]
struct FieldShape {
    ty: Type,
    composite: bool,
}

#[derive(Debug)]
enum TypeShape {
    /// An object or interface type and its fields.
    Composite(HashMap<String, FieldShape>),
    /// A scalar or enum.
    Leaf,
}

/// The schema's output types as completion needs them.
#[derive(Debug)]
pub struct Shape {
    types: HashMap<String, TypeShape>,
    /// Abstract type name → the object types it may be.
    possible: HashMap<String, HashSet<String>>,
    query: String,
    mutation: String,
}

/// A non-null position turned out null: its parent must become null.
struct Propagate;

impl Shape {
    /// Reads the shape from the schema's SDL (what `bff schema` prints).
    pub fn from_sdl(sdl: &str) -> anyhow::Result<Self> {
        let doc = async_graphql::parser::parse_schema(sdl)?;
        let mut types = HashMap::new();
        let mut possible: HashMap<String, HashSet<String>> = HashMap::new();
        let mut query = "Query".to_owned();
        let mut mutation = "Mutation".to_owned();
        for def in doc.definitions {
            match def {
                TypeSystemDefinition::Schema(schema) => {
                    if let Some(q) = &schema.node.query {
                        query = q.node.to_string();
                    }
                    if let Some(m) = &schema.node.mutation {
                        mutation = m.node.to_string();
                    }
                }
                TypeSystemDefinition::Type(ty) => {
                    let name = ty.node.name.node.to_string();
                    let fields = |defs: &[async_graphql::Positioned<
                        async_graphql::parser::types::FieldDefinition,
                    >]| {
                        defs.iter()
                            .map(|f| {
                                (
                                    f.node.name.node.to_string(),
                                    FieldShape {
                                        ty: f.node.ty.node.clone(),
                                        composite: false,
                                    },
                                )
                            })
                            .collect::<HashMap<_, _>>()
                    };
                    let shape = match &ty.node.kind {
                        TypeKind::Object(obj) => {
                            for iface in &obj.implements {
                                possible
                                    .entry(iface.node.to_string())
                                    .or_default()
                                    .insert(name.clone());
                            }
                            TypeShape::Composite(fields(&obj.fields))
                        }
                        TypeKind::Interface(iface) => TypeShape::Composite(fields(&iface.fields)),
                        TypeKind::Union(union) => {
                            possible
                                .entry(name.clone())
                                .or_default()
                                .extend(union.members.iter().map(|m| m.node.to_string()));
                            TypeShape::Leaf
                        }
                        _ => TypeShape::Leaf,
                    };
                    types.insert(name, shape);
                }
                TypeSystemDefinition::Directive(_) => {}
            }
        }
        // Now that every type is known, mark the fields of composite type.
        let composite: HashSet<String> = types
            .iter()
            .filter(|(_, t)| matches!(t, TypeShape::Composite(_)))
            .map(|(name, _)| name.clone())
            .collect();
        for shape in types.values_mut() {
            if let TypeShape::Composite(fields) = shape {
                for field in fields.values_mut() {
                    let mut ty = &field.ty;
                    while let BaseType::List(inner) = &ty.base {
                        ty = inner;
                    }
                    if let BaseType::Named(name) = &ty.base {
                        field.composite = composite.contains(name.as_str());
                    }
                }
            }
        }
        Ok(Self {
            types,
            possible,
            query,
            mutation,
        })
    }

    /// Completes `data` for the selected operation of `doc`. Returns the
    /// completed data, or `Value::Null` when null propagated to the root.
    pub fn complete(
        &self,
        data: Value,
        doc: &ExecutableDocument,
        operation_name: Option<&str>,
        variables: &Variables,
        errors: &[ServerError],
    ) -> Value {
        if errors.is_empty() {
            // Nothing failed: the executor answered every selected field,
            // in selection order, and there is nothing to complete.
            return data;
        }
        let Some(op) = select_operation(doc, operation_name) else {
            return data;
        };
        let root = match op.ty {
            OperationType::Query => self.query.as_str(),
            OperationType::Mutation => self.mutation.as_str(),
            OperationType::Subscription => return data,
        };
        let vars = VariableValues::new(op, variables);
        let walk = Walk {
            shape: self,
            doc,
            vars,
            errors,
            memo: RefCell::new(HashMap::new()),
        };
        let mut map = match data {
            Value::Object(map) => map,
            // Every root field failed; the root object still exists.
            _ => IndexMap::new(),
        };
        let mut path = Vec::new();
        match walk.object(&mut map, root, &[&op.selection_set.node], &mut path) {
            Ok(()) => Value::Object(map),
            Err(Propagate) => Value::Null,
        }
    }
}

/// The operation a request runs: the named one, or the only one.
pub fn select_operation<'a>(
    doc: &'a ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<&'a OperationDefinition> {
    match operation_name {
        Some(name) => doc
            .operations
            .iter()
            .find(|(n, _)| n.is_some_and(|n| n.as_str() == name))
            .map(|(_, op)| &op.node),
        None => {
            let mut ops = doc.operations.iter();
            let first = ops.next()?;
            ops.next().is_none().then_some(&first.1.node)
        }
    }
}

/// The request's variables with the operation's defaults applied.
struct VariableValues<'a> {
    given: &'a Variables,
    defaults: HashMap<&'a str, Value>,
}

impl<'a> VariableValues<'a> {
    fn new(op: &'a OperationDefinition, given: &'a Variables) -> Self {
        let defaults = op
            .variable_definitions
            .iter()
            .filter_map(|def| {
                def.node
                    .default_value
                    .as_ref()
                    .map(|v| (def.node.name.node.as_str(), v.node.clone()))
            })
            .collect();
        Self { given, defaults }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.given.get(name).or_else(|| self.defaults.get(name))
    }
}

/// Collected fields by (first selection set, number of sets, type).
type CollectMemo<'a> = HashMap<(usize, usize, usize), Rc<Vec<Collected<'a>>>>;

struct Walk<'a> {
    shape: &'a Shape,
    doc: &'a ExecutableDocument,
    vars: VariableValues<'a>,
    errors: &'a [ServerError],
    memo: RefCell<CollectMemo<'a>>,
}

/// Selected fields of one response key, merged across fragments.
struct Collected<'a> {
    key: &'a str,
    name: &'a str,
    sets: Vec<&'a SelectionSet>,
    /// The field's declared type (none for introspection fields and
    /// fields the schema does not have).
    shape: Option<&'a FieldShape>,
}

impl<'a> Walk<'a> {
    /// Whether `@skip` / `@include` leave this selection in.
    fn included(&self, directives: &[async_graphql::Positioned<Directive>]) -> bool {
        for dir in directives {
            let name = dir.node.name.node.as_str();
            if name != "skip" && name != "include" {
                continue;
            }
            let flag = dir
                .node
                .get_argument("if")
                .map(|v| match &v.node {
                    async_graphql_value::Value::Boolean(b) => *b,
                    async_graphql_value::Value::Variable(var) => {
                        matches!(self.vars.get(var.as_str()), Some(Value::Boolean(true)))
                    }
                    _ => false,
                })
                .unwrap_or(false);
            if (name == "skip" && flag) || (name == "include" && !flag) {
                return false;
            }
        }
        true
    }

    fn applies(&self, condition: Option<&str>, object_type: &str) -> bool {
        match condition {
            None => true,
            Some(cond) if cond == object_type => true,
            Some(cond) => self
                .shape
                .possible
                .get(cond)
                .is_some_and(|set| set.contains(object_type)),
        }
    }

    /// The specification's `CollectFields`, over several selection sets
    /// (a field selected more than once merges its sub-selections).
    fn collect(
        &self,
        object_type: &str,
        sets: &[&'a SelectionSet],
        out: &mut IndexMap<&'a str, Collected<'a>>,
        visited: &mut HashSet<&'a str>,
    ) {
        for set in sets {
            for sel in &set.items {
                match &sel.node {
                    Selection::Field(field) => {
                        if !self.included(&field.node.directives) {
                            continue;
                        }
                        let key = field.node.response_key().node.as_str();
                        let entry = out.entry(key).or_insert_with(|| Collected {
                            key,
                            name: field.node.name.node.as_str(),
                            sets: Vec::new(),
                            shape: None,
                        });
                        entry.sets.push(&field.node.selection_set.node);
                    }
                    Selection::InlineFragment(frag) => {
                        if !self.included(&frag.node.directives) {
                            continue;
                        }
                        let cond = frag
                            .node
                            .type_condition
                            .as_ref()
                            .map(|c| c.node.on.node.as_str());
                        if self.applies(cond, object_type) {
                            self.collect(
                                object_type,
                                &[&frag.node.selection_set.node],
                                out,
                                visited,
                            );
                        }
                    }
                    Selection::FragmentSpread(spread) => {
                        if !self.included(&spread.node.directives) {
                            continue;
                        }
                        let name = spread.node.fragment_name.node.as_str();
                        let Some((key, frag)) = self.doc.fragments.get_key_value(name) else {
                            continue;
                        };
                        if !visited.insert(key.as_str()) {
                            continue;
                        }
                        let cond = frag.node.type_condition.node.on.node.as_str();
                        if self.applies(Some(cond), object_type) {
                            self.collect(
                                object_type,
                                &[&frag.node.selection_set.node],
                                out,
                                visited,
                            );
                        }
                    }
                }
            }
        }
    }

    /// Whether an error was raised strictly below `path`.
    fn errors_below(&self, path: &[PathSegment]) -> bool {
        self.errors
            .iter()
            .any(|e| e.path.len() > path.len() && e.path.starts_with(path))
    }

    /// The fields `sets` select on `type_name`, collected once per
    /// (selection sets, type) for the whole response: a list of twenty
    /// products collects its item's fields once.
    fn collected(&self, type_name: &str, sets: &[&'a SelectionSet]) -> Rc<Vec<Collected<'a>>> {
        // The type's name as the shape stores it: a stable address.
        let type_key = self
            .shape
            .types
            .get_key_value(type_name)
            .map_or(0, |(k, _)| k.as_ptr() as usize);
        let key = (
            sets.first()
                .map_or(0, |s| std::ptr::from_ref::<SelectionSet>(s) as usize),
            sets.len(),
            type_key,
        );
        if let Some(found) = self.memo.borrow().get(&key) {
            return found.clone();
        }
        let mut collected = IndexMap::new();
        self.collect(type_name, sets, &mut collected, &mut HashSet::new());
        let fields = match self.shape.types.get(type_name) {
            Some(TypeShape::Composite(fields)) => Some(fields),
            _ => None,
        };
        let list = Rc::new(
            collected
                .into_iter()
                .map(|(_, mut c)| {
                    if !c.name.starts_with("__") {
                        c.shape = fields.and_then(|f| f.get(c.name));
                    }
                    c
                })
                .collect::<Vec<_>>(),
        );
        self.memo.borrow_mut().insert(key, list.clone());
        list
    }

    fn field(
        &self,
        taken: Option<Value>,
        field: &Collected<'a>,
        type_name: &str,
        path: &mut Vec<PathSegment>,
    ) -> Result<Option<Value>, Propagate> {
        if field.name.starts_with("__") {
            // Introspection and `__typename` are answered by the executor
            // itself, and never fail.
            return Ok(Some(match (field.name, taken) {
                (_, Some(value)) => value,
                ("__typename", None) => Value::String(type_name.to_owned()),
                (_, None) => Value::Null,
            }));
        }
        let Some(shape) = field.shape else {
            // Not in the schema (validation would have refused it): keep
            // whatever the executor produced.
            return Ok(taken);
        };
        let Some(mut value) = taken else {
            // Left out: the field's own resolver failed.
            return if shape.ty.nullable {
                Ok(Some(Value::Null))
            } else {
                Err(Propagate)
            };
        };
        path.push(PathSegment::Field(field.key.to_owned()));
        let result = self.value(&mut value, &shape.ty, shape.composite, &field.sets, path);
        path.pop();
        result.map(|()| Some(value))
    }

    fn object(
        &self,
        map: &mut IndexMap<Name, Value>,
        type_name: &str,
        sets: &[&'a SelectionSet],
        path: &mut Vec<PathSegment>,
    ) -> Result<(), Propagate> {
        let collected = self.collected(type_name, sets);
        // The common case: every field present, in selection order. Complete
        // the values in place, allocating nothing.
        let in_order = map.len() == collected.len()
            && map
                .keys()
                .zip(collected.iter())
                .all(|(k, c)| k.as_str() == c.key);
        if in_order {
            for ((_, slot), field) in map.iter_mut().zip(collected.iter()) {
                let taken = std::mem::take(slot);
                if let Some(value) = self.field(Some(taken), field, type_name, path)? {
                    *slot = value;
                }
            }
            return Ok(());
        }
        let mut out = IndexMap::with_capacity(collected.len());
        for field in collected.iter() {
            let (name, taken) = match map.swap_remove_entry(field.key) {
                Some((name, value)) => (name, Some(value)),
                None => (Name::new(field.key), None),
            };
            if let Some(value) = self.field(taken, field, type_name, path)? {
                out.insert(name, value);
            }
        }
        *map = out;
        Ok(())
    }

    fn value(
        &self,
        value: &mut Value,
        ty: &Type,
        composite: bool,
        sets: &[&'a SelectionSet],
        path: &mut Vec<PathSegment>,
    ) -> Result<(), Propagate> {
        let completed = match &ty.base {
            BaseType::List(item_ty) => match value {
                Value::Null => Err(Propagate),
                Value::List(items) => {
                    let mut ok = Ok(());
                    for (index, item) in items.iter_mut().enumerate() {
                        path.push(PathSegment::Index(index));
                        let r = self.value(item, item_ty, composite, sets, path);
                        path.pop();
                        if r.is_err() {
                            ok = Err(Propagate);
                            break;
                        }
                    }
                    ok
                }
                _ => Ok(()),
            },
            BaseType::Named(name) => {
                match value {
                    Value::Null if composite && (!ty.nullable || self.errors_below(path)) => {
                        // An object that came back null because its fields
                        // failed (the published executor collapses such
                        // objects; see vendor/README.md): re-create it and
                        // complete its fields.
                        let mut map = IndexMap::new();
                        let r = self.object(&mut map, name.as_str(), sets, path);
                        *value = Value::Object(map);
                        r
                    }
                    Value::Null => Err(Propagate),
                    Value::Object(map) if composite => {
                        // Only abstract types need the runtime type.
                        let concrete = if self.shape.possible.contains_key(name.as_str()) {
                            match map.get("__typename") {
                                Some(Value::String(t)) => Some(t.clone()),
                                _ => None,
                            }
                        } else {
                            None
                        };
                        self.object(
                            map,
                            concrete.as_deref().unwrap_or(name.as_str()),
                            sets,
                            path,
                        )
                    }
                    _ => Ok(()),
                }
            }
        };
        match completed {
            Ok(()) => Ok(()),
            Err(Propagate) if ty.nullable => {
                *value = Value::Null;
                Ok(())
            }
            Err(Propagate) => Err(Propagate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SDL: &str = r#"
        type Query { card(id: ID!): Card!  maybe: Card  cards: [Card!]!  n: Int }
        type Card { id: ID!  name: String  member: Member  must: Member!  items: [Item!]! }
        type Member { level: String!  points: Int }
        type Item { id: ID!  price: Int }
    "#;

    fn complete(query: &str, data: serde_json::Value, errors: &[&[&str]]) -> serde_json::Value {
        complete_value(query, data, errors).into_json().unwrap()
    }

    fn complete_value(query: &str, data: serde_json::Value, errors: &[&[&str]]) -> Value {
        let shape = Shape::from_sdl(SDL).unwrap();
        let doc = async_graphql::parser::parse_query(query).unwrap();
        let errors: Vec<ServerError> = errors
            .iter()
            .map(|path| {
                let mut e = ServerError::new("failed", None);
                e.path = path
                    .iter()
                    .map(|seg| match seg.parse::<usize>() {
                        Ok(i) => PathSegment::Index(i),
                        Err(_) => PathSegment::Field((*seg).to_owned()),
                    })
                    .collect();
                e
            })
            .collect();
        let data = Value::from_json(data).unwrap();
        shape.complete(data, &doc, None, &Variables::default(), &errors)
    }

    #[test]
    fn a_failed_nullable_field_is_present_as_null() {
        let out = complete(
            "{ card(id: 1) { id name member { level } } n }",
            json!({ "card": { "id": "1" }, "n": 3 }),
            &[&["card", "name"], &["card", "member"]],
        );
        assert_eq!(
            out,
            json!({ "card": { "id": "1", "name": null, "member": null }, "n": 3 })
        );
        // Keys come in selection order, whatever order they were resolved in.
        let out = complete_value(
            "{ card(id: 1) { id name member { level } } n }",
            json!({ "n": 3, "card": { "member": null, "id": "1" } }),
            &[&["card", "name"]],
        );
        let Value::Object(root) = out else {
            panic!("an object")
        };
        assert_eq!(
            root.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["card", "n"]
        );
        let Value::Object(card) = &root["card"] else {
            panic!("an object")
        };
        assert_eq!(
            card.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["id", "name", "member"]
        );
    }

    #[test]
    fn a_collapsed_non_null_object_is_re_created_with_null_fields() {
        // Every selected field of `card` failed: the executor gave `null`.
        let out = complete(
            "{ card(id: 1) { member { level } } }",
            json!({ "card": null }),
            &[&["card", "member"]],
        );
        assert_eq!(out, json!({ "card": { "member": null } }));
    }

    #[test]
    fn a_failed_non_null_field_nulls_the_nearest_nullable_parent() {
        // `must` is non-null inside `maybe` (nullable): maybe becomes null,
        // its sibling `n` stays.
        let out = complete(
            "{ maybe { id must { level } } n }",
            json!({ "maybe": { "id": "1" }, "n": 1 }),
            &[&["maybe", "must"]],
        );
        assert_eq!(out, json!({ "maybe": null, "n": 1 }));
    }

    #[test]
    fn null_propagates_to_data_when_no_parent_is_nullable() {
        let out = complete("{ card(id: 1) { id } n }", json!({ "n": 1 }), &[&["card"]]);
        assert_eq!(out, serde_json::Value::Null);
    }

    #[test]
    fn a_failed_item_of_a_non_null_list_propagates_through_the_list() {
        let out = complete(
            "{ maybe { items { id price } } }",
            json!({ "maybe": { "items": [ { "id": "a", "price": 1 }, { "price": 2 } ] } }),
            &[&["maybe", "items", "1", "id"]],
        );
        assert_eq!(out, json!({ "maybe": null }));
        let out = complete(
            "{ cards { id items { id price } } }",
            json!({ "cards": [ { "id": "1", "items": [ { "id": "a" } ] } ] }),
            &[&["cards", "0", "items", "0", "price"]],
        );
        assert_eq!(
            out,
            json!({ "cards": [ { "id": "1", "items": [ { "id": "a", "price": null } ] } ] })
        );
    }

    #[test]
    fn a_nullable_field_that_resolved_to_null_stays_null() {
        // Beside a failed field, so the answer is walked.
        let out = complete(
            "{ maybe { id } card(id: 1) { name } n }",
            json!({ "maybe": null, "card": {}, "n": 1 }),
            &[&["card", "name"]],
        );
        assert_eq!(
            out,
            json!({ "maybe": null, "card": { "name": null }, "n": 1 })
        );
    }

    #[test]
    fn skipped_fields_stay_out_and_fragments_and_aliases_are_followed() {
        let out = complete(
            "query { c: card(id: 1) { ...F name @skip(if: true) x: id } }
             fragment F on Card { id member { points } }",
            json!({ "c": { "x": "1", "id": "1", "member": {} } }),
            &[&["c", "member", "points"]],
        );
        assert_eq!(
            out,
            json!({ "c": { "id": "1", "member": { "points": null }, "x": "1" } })
        );
    }

    #[test]
    fn every_root_field_failing_still_yields_the_root_object() {
        let out = complete(
            "{ maybe { id } n }",
            serde_json::Value::Null,
            &[&["maybe"], &["n"]],
        );
        assert_eq!(out, json!({ "maybe": null, "n": null }));
    }
}
