//! Locates libmoeupcycle.so:
//! 1. `MOEUPCYCLE_LIB_DIR`,
//! 2. `pkg-config --libs-only-L moeupcycle` (if it succeeds and names a dir),
//! 3. `../../../dist/lib` relative to this crate (the repository's build).
//!
//! The header installed beside it (`LIB_DIR/../include/moeupcycle.h`, else the
//! repository's `include/`) is passed to the tests as MOEUPCYCLE_INCLUDE_DIR.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn from_pkg_config() -> Option<PathBuf> {
    let out = Command::new("pkg-config")
        .args(["--libs-only-L", "moeupcycle"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("-L"))
        .map(PathBuf::from)
        .next()
}

fn include_dir(lib_dir: &Path, manifest: &Path) -> PathBuf {
    let installed = lib_dir.join("../include");
    let dir = if installed.join("moeupcycle.h").is_file() { installed } else { manifest.join("../../../include") };
    dir.canonicalize().unwrap_or(dir)
}

fn main() {
    println!("cargo:rerun-if-env-changed=MOEUPCYCLE_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let manifest = match env::var_os("CARGO_MANIFEST_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            eprintln!("CARGO_MANIFEST_DIR is not set: run this build script through cargo");
            std::process::exit(1);
        }
    };
    let dir = match env::var_os("MOEUPCYCLE_LIB_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => from_pkg_config().unwrap_or_else(|| manifest.join("../../../dist/lib")),
    };
    let dir = dir.canonicalize().unwrap_or(dir);
    let d = dir.display();
    println!("cargo:rustc-link-search=native={d}");
    println!("cargo:rustc-link-lib=dylib=moeupcycle");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{d}");
    // Available to dependents as DEP_MOEUPCYCLE_LIB_DIR.
    println!("cargo:lib_dir={d}");
    let include = include_dir(&dir, &manifest);
    println!("cargo:rerun-if-changed={}", include.join("moeupcycle.h").display());
    println!("cargo:rustc-env=MOEUPCYCLE_INCLUDE_DIR={}", include.display());
    println!("cargo:include_dir={}", include.display());
}
