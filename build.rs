//! Build script: gives the Linux shared library its SONAME (`libsmolcap.so.<ABI>`).

fn main() {
    // Keep in step with SMOLCAP_ABI_VERSION in src/ffi/version.rs.
    const ABI: u32 = 0;
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libsmolcap.so.{ABI}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
