use std::path::Path;
use std::process::Command;

#[test]
fn the_checked_in_schema_is_what_bff_schema_prints() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema.graphql");
    let checked_in = std::fs::read_to_string(&file).expect("schema.graphql exists");
    let output = Command::new(env!("CARGO_BIN_EXE_bff"))
        .arg("schema")
        .output()
        .expect("bff runs");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(
        printed == checked_in,
        "schema.graphql is stale: run `cargo run -p bff -- schema > schema.graphql`"
    );
}

#[test]
fn every_type_and_field_of_the_schema_is_described() {
    let sdl = bff::graphql::sdl();
    let doc = async_graphql::parser::parse_schema(&sdl).unwrap();
    let mut missing = Vec::new();
    for def in &doc.definitions {
        if let async_graphql::parser::types::TypeSystemDefinition::Type(ty) = def {
            let ty = &ty.node;
            let name = ty.name.node.as_str();
            if ty.description.is_none()
                && !["String", "Int", "Boolean", "ID", "Float"].contains(&name)
            {
                missing.push(name.to_owned());
            }
            if let async_graphql::parser::types::TypeKind::Object(obj) = &ty.kind {
                for field in &obj.fields {
                    if field.node.description.is_none() {
                        missing.push(format!("{name}.{}", field.node.name.node));
                    }
                }
            }
        }
    }
    assert!(missing.is_empty(), "undocumented: {missing:?}");
}

/// Descriptions are for client developers: a sentence, not a word, and
/// nothing that leaks how the server is built.
#[test]
fn every_description_says_something() {
    use async_graphql::parser::types::{TypeKind, TypeSystemDefinition};
    let sdl = bff::graphql::sdl();
    let doc = async_graphql::parser::parse_schema(&sdl).unwrap();
    let mut weak = Vec::new();
    let mut check = |what: String, desc: Option<&str>| {
        let Some(desc) = desc else {
            weak.push(format!("{what}: none"));
            return;
        };
        let words = desc.split_whitespace().count();
        if words < 2 || desc.contains("<Utc>") || desc.contains("Implement the") {
            weak.push(format!("{what}: {desc:?}"));
        }
    };
    for def in &doc.definitions {
        let TypeSystemDefinition::Type(ty) = def else {
            continue;
        };
        let ty = &ty.node;
        let name = ty.name.node.as_str();
        if ["String", "Int", "Boolean", "ID", "Float"].contains(&name) || name.starts_with("__") {
            continue;
        }
        check(
            name.to_owned(),
            ty.description.as_ref().map(|d| d.node.as_str()),
        );
        match &ty.kind {
            TypeKind::Object(obj) => {
                for field in &obj.fields {
                    let f = &field.node;
                    check(
                        format!("{name}.{}", f.name.node),
                        f.description.as_ref().map(|d| d.node.as_str()),
                    );
                    for arg in &f.arguments {
                        check(
                            format!("{name}.{}({})", f.name.node, arg.node.name.node),
                            arg.node.description.as_ref().map(|d| d.node.as_str()),
                        );
                    }
                }
            }
            TypeKind::InputObject(input) => {
                for field in &input.fields {
                    check(
                        format!("{name}.{}", field.node.name.node),
                        field.node.description.as_ref().map(|d| d.node.as_str()),
                    );
                }
            }
            TypeKind::Enum(e) => {
                for value in &e.values {
                    check(
                        format!("{name}.{}", value.node.value.node),
                        value.node.description.as_ref().map(|d| d.node.as_str()),
                    );
                }
            }
            _ => {}
        }
    }
    assert!(
        weak.is_empty(),
        "{} weak descriptions:\n{}",
        weak.len(),
        weak.join("\n")
    );
}
