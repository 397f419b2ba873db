// `cargo:rustc-link-arg` from moeupcycle-sys applies only to that package's
// own targets, so repeat the rpath here (from DEP_MOEUPCYCLE_LIB_DIR) so this
// crate's tests and binaries run without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MOEUPCYCLE_LIB_DIR");
    if let Ok(dir) = std::env::var("DEP_MOEUPCYCLE_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
