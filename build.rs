//! Build script: gives the Linux shared library its SONAME (`libsmolcap.so.<ABI>`), the ABI
//! number read from `SMOLCAP_ABI_VERSION` in src/ffi/version.rs, the one place it is written
//! (the header's copy is generated from it by cbindgen).

fn main() {
    const SRC: &str = "src/ffi/version.rs";
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={SRC}");
    let text = std::fs::read_to_string(SRC).unwrap_or_else(|e| panic!("{SRC}: {e}"));
    let abi: u32 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("pub const SMOLCAP_ABI_VERSION: u32 = ")
        })
        .and_then(|rest| rest.strip_suffix(';'))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{SRC}: no `pub const SMOLCAP_ABI_VERSION: u32 = N;`"));
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libsmolcap.so.{abi}");
    }
}
