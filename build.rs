//! Link settings of the `carewatch` binary (issue 17).
//!
//! On GNU/Linux the binary is linked with `-z pack-relative-relocs`: its relative relocations
//! (one per pointer in vtables, string tables and the like — about 12 MB of `.rela.dyn` in the
//! release build) are stored as a DT_RELR bitmap of about 0.1 MB. glibc 2.36 (Debian 12) and
//! later load such binaries; GNU ld 2.38+ and lld 15+ write them. The linker adds a version
//! dependency on `GLIBC_ABI_DT_RELR`, so a system whose glibc cannot load it says so at start
//! instead of misbehaving, and an older GNU ld leaves the option out with a warning.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
