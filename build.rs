//! Links libtorch so that the binary finds it and CUDA stays available, and
//! compiles the c10d shim of `src/dist` (csrc/).
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

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rustc-check-cfg=cfg(l2d_nccl)");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set; run scripts/setup.sh");
        println!("cargo:rustc-env=L2D_LIBTORCH_VERSION=unknown");
        return;
    };
    let root = PathBuf::from(libtorch);
    let root = root.canonicalize().unwrap_or(root);
    println!("cargo:rustc-env=L2D_LIBTORCH_VERSION={}", libtorch_version(&root));
    let lib = root.join("lib");
    let cuda = lib.join("libtorch_cuda.so").exists();
    // cc emits `-l static=l2d_dist -l stdc++` before the torch libraries below, as the archive needs.
    compile_shim(&root, cuda);
    println!("cargo:rustc-link-search=native={}", lib.display());
    // Passed to the linker without a shell, so `$ORIGIN` arrives literally.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/l2d/torch/lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-lc10_cuda,--as-needed");
    }
}

/// Compiles csrc/ against the libtorch at `root`: Gloo always, NCCL when
/// libtorch has CUDA and the CUDA/NCCL headers are found (then `cfg(l2d_nccl)`).
fn compile_shim(root: &Path, cuda: bool) {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed=third_party/gloo/include");
    let include = root.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        // The torch >= 2.7 wheels are built with the C++11 ABI.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        // Without it ProcessGroupGloo.hpp declares nothing.
        .define("USE_C10D_GLOO", None)
        .include("csrc")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        // The wheel lacks gloo's headers; see third_party/gloo/README.md.
        .include("third_party/gloo/include")
        .warnings(false)
        .flag_if_supported("-Wno-deprecated-declarations")
        .file("csrc/dist.cpp");
    let cuda_includes = cuda_includes(root);
    let missing: Vec<&str> = ["nccl.h", "cuda_runtime_api.h", "crt/host_config.h", "nv/target"]
        .into_iter()
        .filter(|h| !cuda_includes.iter().any(|d| d.join(h).exists()))
        .collect();
    if cuda && missing.is_empty() {
        build.define("USE_C10D_NCCL", None).define("L2D_DIST_WITH_NCCL", None).includes(&cuda_includes).file("csrc/dist_nccl.cpp");
        println!("cargo:rustc-cfg=l2d_nccl");
    } else if cuda {
        println!("cargo:warning=building without NCCL (headers not found: {}); run scripts/setup.sh", missing.join(", "));
    }
    build.compile("l2d_dist");
}

/// `site-packages/nvidia/*/include` beside the wheel's torch directory: nccl.h
/// and the CUDA runtime come with torch; crt/ and nv/ from the packages setup.sh adds.
fn cuda_includes(root: &Path) -> Vec<PathBuf> {
    let nvidia = root.parent().map(|site| site.join("nvidia")).unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(nvidia)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("include"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// The version recorded in the wheel (`version.py`) or a libtorch zip (`build-version`).
fn libtorch_version(root: &Path) -> String {
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
