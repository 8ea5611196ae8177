//! Makes the built binaries find libtorch without LD_LIBRARY_PATH and keeps libtorch_cuda linked.
//!
//! torch-sys adds no run path to the final binary, and the linker's `--as-needed` drops
//! `libtorch_cuda` because no symbol of it is referenced directly, which would hide CUDA.
//! LD_LIBRARY_PATH still takes precedence over the run path, so a host can point the binary at
//! its own libtorch.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
