//! A static ocimodel, for the tests that run it in an empty root or a
//! `FROM scratch` image. `cargo test` builds for the host (dynamically
//! linked); `scripts/build-static.sh --debug` builds the static one (its
//! dependencies are built once, beside the host's).
//!
//! Included with `#[path = "support/static_binary.rs"] mod static_binary;`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The test build itself when it is static (a suite run with the static
/// flags and `--target`), else the one `scripts/build-static.sh --debug`
/// makes (built once per test binary).
pub fn static_ocimodel() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let own = PathBuf::from(env!("CARGO_BIN_EXE_ocimodel"));
        if is_static(&own) {
            return own;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-static.sh");
        let out = Command::new(&script)
            .arg("--debug")
            .output()
            .expect("scripts/build-static.sh runs");
        assert!(
            out.status.success(),
            "scripts/build-static.sh --debug failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(is_static(&bin), "{} is not static", bin.display());
        bin
    })
    .clone()
}

/// Whether an ELF executable has no interpreter (no `PT_INTERP` program
/// header): nothing to load from the root it runs in.
pub fn is_static(path: &Path) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false; // not a 64-bit little-endian ELF
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        bytes
            .get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != 3)
    })
}
