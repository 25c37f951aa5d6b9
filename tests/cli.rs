//! The command line as a newcomer meets it: unknown words, mistakes that
//! retrying cannot fix, settings, and what a failed run leaves behind.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn layout_uri() -> String {
    format!(
        "oci-layout://{}",
        repo_root().join("examples/mnist").display()
    )
}

/// Everything under `dir`, bookkeeping included.
fn everything(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs ocimodel in an empty working directory; returns the run and what
/// it left there.
fn run_in_empty_cwd(args: &[&str]) -> (Run, Vec<String>) {
    let cwd = tempfile::tempdir().unwrap();
    let mut o = Ocimodel::new();
    o.cmd.current_dir(cwd.path());
    let run = o.run(args);
    let left = everything(cwd.path());
    (run, left)
}

/// #23/#24: a first word that is neither a command nor a reference is a
/// usage error (exit 2) with the nearest command, not a Docker Hub pull
/// that retries and leaves `bash/.ocimodel/lock` behind.
#[test]
fn unknown_words_are_not_models() {
    let cases: &[(&[&str], Option<&str>)] = &[
        (&["inspcet", "127.0.0.1:9/models/mnist:v1"], Some("inspect")),
        (&["pul", "127.0.0.1:9/m:v1", "dest"], Some("pull")),
        (&["login", "127.0.0.1:5078"], None),
        (&["ls"], None),
        (&["ubuntu", "dest"], None),
    ];
    for (args, nearest) in cases {
        let started = std::time::Instant::now();
        let (run, left) = run_in_empty_cwd(args);
        assert_eq!(run.code(), 2, "{args:?}: stderr:\n{}", run.stderr());
        let expected = format!("unknown command '{}'", args[0]);
        assert!(run.stderr().contains(&expected), "{}", run.stderr());
        assert!(run.termination.contains(&expected), "{}", run.termination);
        match nearest {
            Some(n) => assert!(
                run.stderr().contains(&format!("; did you mean '{n}'?")),
                "{}",
                run.stderr()
            ),
            None => assert!(!run.stderr().contains("did you mean"), "{}", run.stderr()),
        }
        assert!(left.is_empty(), "{args:?} left {left:?}");
        assert!(started.elapsed().as_secs() < 5, "{args:?} was slow");
    }
}

/// KServe's bare `URI DEST` form still means pull: URIs with a scheme,
/// `host/repo:tag`, and `repo:tag` are references, not commands.
#[test]
fn bare_uri_dest_still_pulls() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("m");
    Ocimodel::new()
        .run(&[&layout_uri(), dest.to_str().unwrap()])
        .assert_ok();
    assert!(dest.join(MNIST_TITLE).is_file());
    // A scheme ocimodel does not know is still read as a URI.
    let (run, _) = run_in_empty_cwd(&["hf://org/model", "dest"]);
    run.assert_fails_with(&["unsupported scheme 'hf://'"]);
    let (run, left) = run_in_empty_cwd(&["127.0.0.1:9/models/mnist:v1", "dest"]);
    run.assert_fails_with(&["127.0.0.1:9"]);
    assert!(left.is_empty(), "left {left:?}");
}

/// A failed pull leaves nothing: no DEST it created (with its parents),
/// and no `.ocimodel/` in a folder that was there before.
#[test]
fn a_failed_pull_leaves_nothing_behind() {
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    let work = tempfile::tempdir().unwrap();
    let missing = format!("{}/models/mnist:v9", reg.addr);
    // A DEST (and parents) that did not exist.
    let dest = work.path().join("a/b/models");
    Ocimodel::new()
        .insecure(&reg)
        .run(&[&missing, dest.to_str().unwrap()])
        .assert_fails_with(&["manifest v9", "not found"]);
    assert!(
        everything(work.path()).is_empty(),
        "{:?}",
        everything(work.path())
    );
    // A user's folder, with a file of theirs.
    let mine = work.path().join("mine");
    fs::create_dir(&mine).unwrap();
    fs::write(mine.join("notes.txt"), "mine").unwrap();
    Ocimodel::new()
        .insecure(&reg)
        .run(&[&missing, mine.to_str().unwrap()])
        .assert_fails_with(&["manifest v9"]);
    assert_eq!(everything(&mine), ["notes.txt"]);
    // A failure after the reference resolved (a corrupt blob) too.
    let blob = reg.blob_data_path(MNIST_SHA256);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    reg.pull("models/mnist:v1", &mine)
        .assert_fails_with(&["digest mismatch"]);
    assert_eq!(everything(&mine), ["notes.txt"]);
    let fresh = work.path().join("fresh");
    reg.pull("models/mnist:v1", &fresh)
        .assert_fails_with(&["digest mismatch"]);
    assert!(!fresh.exists());
}
