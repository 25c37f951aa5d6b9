//! Embeds the git commit the binary was built from (`ocimodel --version`,
//! `ocimodel version`): `git rev-parse --short HEAD`, or "unknown" where
//! there is no git or no repository (a source tarball, the image build).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Not an OCIMODEL_ name: `cargo run` and `cargo test` put rustc-env
    // variables in the environment of what they run, where an unknown
    // OCIMODEL_* setting is refused.
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
    // Build again when HEAD moves: HEAD itself, the branch it names, and
    // packed refs. Only paths that exist (a missing one reruns every build).
    let mut watched = vec![PathBuf::from("build.rs")];
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watched.push(PathBuf::from(dir).join("HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        let common = PathBuf::from(common);
        if let Some(branch) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]) {
            watched.push(common.join(branch));
        }
        watched.push(common.join("packed-refs"));
    }
    for p in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
