//! Builds the example promotion rules (and the hostile test guests) in
//! `components/` for `wasm32-unknown-unknown`, so the BFF can ship the demo
//! deployments and the tests can load real components built from source.
//!
//! The guests are built by a nested cargo in their own target directory
//! (`target/rules`), with the `rules` profile (small, optimised, no debug
//! info). The BFF wraps the core modules into components at load time.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const GUESTS: &[&str] = &[
    "rule-member-discount",
    "rule-flash-sale",
    "rule-spend-threshold",
    "rule-coupon",
    "rule-points-offset",
    "hostile-loop",
    "hostile-memory",
    "hostile-panic",
    "hostile-huge-output",
    "hostile-invalid",
    "hostile-chatty",
    "hostile-wrong-world",
    "hostile-config-hog",
    "hostile-spin",
    "hostile-log-flood",
    "hostile-huge-text",
    "hostile-flood",
    "hostile-stack",
    "hostile-big-static",
    "hostile-start-trap",
];

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("bff/ lives in the workspace root")
        .to_path_buf();
    let components = root.join("components");
    for dir in ["wit", "sdk", "rules", "hostile"] {
        println!("cargo:rerun-if-changed={}", components.join(dir).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let target_root = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target_dir = target_root.join("rules");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .arg("build")
        .arg("--locked")
        .arg("--quiet")
        .arg("--profile")
        .arg("rules")
        .arg("--target")
        .arg("wasm32-unknown-unknown")
        .arg("--target-dir")
        .arg(&target_dir);
    for guest in GUESTS {
        cmd.arg("-p").arg(guest);
    }
    // The outer build's settings (flags, wrappers such as clippy, its target)
    // must not leak into the guest build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = matches!(
            key.as_str(),
            "CARGO_HOME"
                | "CARGO_MAKEFLAGS"
                | "CARGO_NET_OFFLINE"
                | "CARGO_REGISTRIES_CRATES_IO_PROTOCOL"
        );
        if (key.starts_with("CARGO_") && !keep)
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&key);
        }
    }

    let status = cmd
        .status()
        .expect("cannot run cargo to build the rule components");
    if !status.success() {
        panic!(
            "building the promotion rules for wasm32-unknown-unknown failed; \
             is the target installed? (`rustup target add wasm32-unknown-unknown`)"
        );
    }
    let out = target_dir.join("wasm32-unknown-unknown").join("rules");
    for guest in GUESTS {
        let file = out.join(format!("{}.wasm", guest.replace('-', "_")));
        assert!(file.exists(), "{} was not built", file.display());
    }
    println!("cargo:rustc-env=PROMOTION_RULES_WASM_DIR={}", out.display());
}
