//! Links libtorch so that the binary finds it and CUDA stays available.
//!
//! tch's own link line is subject to `--as-needed`, which drops
//! `libtorch_cuda.so` (nothing references its symbols directly); CUDA would
//! then be silently unavailable. We link it explicitly with `--no-as-needed`
//! and set an rpath so the binary runs without `LD_LIBRARY_PATH`.
//!
//! The rpath's first entry, `$ORIGIN/../lib/l2d/torch/lib`, is where
//! `scripts/install.sh` puts the libraries beside an installed binary (any
//! user can run it there); the second is the libtorch the build used, which
//! serves `target/release/l2d` in the checkout.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set; run scripts/setup.sh");
        println!("cargo:rustc-env=L2D_LIBTORCH_VERSION=unknown");
        return;
    };
    let root = PathBuf::from(libtorch);
    println!("cargo:rustc-env=L2D_LIBTORCH_VERSION={}", libtorch_version(&root));
    let lib = root.join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-search=native={}", lib.display());
    // Passed to the linker without a shell, so `$ORIGIN` arrives literally.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/l2d/torch/lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

/// The version recorded in the wheel (`version.py`) or a libtorch zip (`build-version`).
fn libtorch_version(root: &std::path::Path) -> String {
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("__version__ = ") {
                return v.trim_matches(|c| c == '\'' || c == '"').to_string();
            }
        }
    }
    std::fs::read_to_string(root.join("build-version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
