//! Compiles the autocast shim against the libtorch that torch-sys links, and makes the built
//! binaries find libtorch without LD_LIBRARY_PATH and keep libtorch_cuda linked.
//!
//! tch cannot choose autocast's dtype, so `csrc/autocast.cpp` calls libtorch's autocast
//! functions directly for bf16 training. torch-sys adds no run path to the final binary, and the
//! linker's `--as-needed` drops `libtorch_cuda` because no symbol of it is referenced directly,
//! which would hide CUDA. LD_LIBRARY_PATH still takes precedence over the run path, so a host can
//! point the binary at its own libtorch.

use std::path::Path;

const SHIM: &str = "csrc/autocast.cpp";

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed={SHIM}");
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys sets DEP_TCH_LIBTORCH_LIB for the autocast shim");
    let libtorch = Path::new(&lib_dir)
        .parent()
        .expect("the libtorch lib directory has a parent");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .warnings(false)
        .file(SHIM)
        .compile("tunefleet_autocast");

    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
