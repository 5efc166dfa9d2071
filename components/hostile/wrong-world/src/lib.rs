//! Hostile "rule": a perfectly good component, but for the world
//! `mall:other/greeter@0.1.0` instead of `mall:promotion/rule@1.0.0`. The BFF
//! must refuse to register it as a rule.

wit_bindgen::generate!({
    path: "wit",
    world: "greeter",
});

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("Hello, {name}!")
    }
}

export!(Greeter);
