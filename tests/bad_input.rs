//! Bad input: each case exits 1 with one specific termination line, and DEST
//! holds no model files (not even a staging directory).

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn assert_nothing_installed(dest: &Path) {
    assert!(
        model_files(dest).is_empty(),
        "model files in DEST: {:?}",
        model_files(dest)
    );
    assert!(
        !dest.join(".ocimodel.json").exists(),
        "marker written for a failed pull"
    );
    if let Ok(rd) = fs::read_dir(dest.join(".ocimodel")) {
        let left: Vec<String> = rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "lock")
            .collect();
        assert!(left.is_empty(), "bookkeeping left behind: {left:?}");
    }
}

#[test]
fn unknown_tag() {
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    let dest = tempfile::tempdir().unwrap();
    let uri = format!("ocimodel://{}/models/mnist:v2", reg.addr);
    Ocimodel::for_registry(&reg)
        .pull(&uri, dest.path())
        .assert_fails_with(&[&uri, "manifest v2", "not found", "check the tag or digest"]);
    assert_nothing_installed(dest.path());
}

#[test]
fn missing_repository() {
    let reg = Registry::start(Auth::None);
    let dest = tempfile::tempdir().unwrap();
    let uri = format!("{}/no/such-repo:v1", reg.addr);
    Ocimodel::for_registry(&reg)
        .pull(&uri, dest.path())
        .assert_fails_with(&[&uri, "no/such-repo", "not found"]);
    assert_nothing_installed(dest.path());
}

#[test]
fn odd_or_missing_arguments() {
    let run = Ocimodel::new().run(&["ocimodel://example.invalid/m:v1"]);
    run.assert_fails_with(&["usage: ocimodel", "got 1 argument", "pairs"]);
    assert!(run.stderr().contains("usage"));

    Ocimodel::new()
        .run(&["reg.example/a:v1", "/tmp/x", "b"])
        .assert_fails_with(&["usage", "got 3 arguments"]);

    let none: [&str; 0] = [];
    Ocimodel::new()
        .run(&none)
        .assert_fails_with(&["usage", "no arguments"]);
}

#[test]
fn unsupported_scheme_names_the_uri() {
    let dest = tempfile::tempdir().unwrap();
    Ocimodel::new()
        .run(&["s3://bucket/model", dest.path().to_str().unwrap()])
        .assert_fails_with(&["s3://bucket/model", "unsupported scheme 's3://'"]);
}

#[test]
fn layer_bytes_that_do_not_match_the_digest() {
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    // Same size, different bytes: the registry serves them without rehashing.
    let blob = reg.blob_data_path(MNIST_SHA256);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    let actual = sha256_hex(&bytes);

    let dest = tempfile::tempdir().unwrap();
    reg.pull("models/mnist:v1", dest.path())
        .assert_fails_with(&[
            "digest mismatch",
            &format!("expected sha256:{MNIST_SHA256}"),
            &format!("got sha256:{actual}"),
        ]);
    assert_nothing_installed(dest.path());
}

#[test]
fn truncated_layer_is_refused() {
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    let blob = reg.blob_data_path(MNIST_SHA256);
    let bytes = fs::read(&blob).unwrap();
    fs::write(&blob, &bytes[..1000]).unwrap();
    let dest = tempfile::tempdir().unwrap();
    reg.pull("models/mnist:v1", dest.path())
        .assert_fails_with(&["size mismatch", "421403"]);
    assert_nothing_installed(dest.path());
}

#[test]
fn tar_with_dotdot_escape() {
    let reg = Registry::start(Auth::None);
    let (layout, _) = modelcar_layout(true);
    reg.skopeo_push(layout.path(), "v1", "models/evil:v1");
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("a/b/models");
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_SUBPATH", "/")
        .pull(&format!("{}/models/evil:v1", reg.addr), &dest)
        .assert_fails_with(&["'../escape'", "'..'", "layer 4 of 4"]);
    assert_nothing_installed(&dest);
    for dir in [
        work.path(),
        &work.path().join("a"),
        &work.path().join("a/b"),
    ] {
        assert!(
            !dir.join("escape").exists(),
            "escaped into {}",
            dir.display()
        );
    }
}

#[test]
fn image_without_models_directory() {
    let reg = Registry::start(Auth::None);
    let (layout, _) = modelcar_layout(false);
    reg.skopeo_push(layout.path(), "v1", "models/car:v1");
    let dest = tempfile::tempdir().unwrap();
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_SUBPATH", "/opt/model")
        .pull(&format!("{}/models/car:v1", reg.addr), dest.path())
        .assert_fails_with(&["nothing under /opt/model", "OCIMODEL_SUBPATH"]);
    assert_nothing_installed(dest.path());
}

#[test]
fn plain_http_registry_without_opt_in() {
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    let dest = tempfile::tempdir().unwrap();
    Ocimodel::new()
        .pull(&format!("{}/models/mnist:v1", reg.addr), dest.path())
        .assert_fails_with(&[
            "cannot reach registry",
            &format!(
                "the server answered plain HTTP; use --insecure-registry {}",
                reg.addr
            ),
        ]);
    assert_nothing_installed(dest.path());
}

#[test]
fn a_broken_signature_policy_fails_before_anything_is_touched() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    let layout = format!(
        "oci-layout://{}",
        repo_root().join("examples/mnist").display()
    );
    let run_with = |k: &str, v: &str| Ocimodel::new().env(k, v).pull(&layout, &dest);
    run_with("COSIGN_KEY", "-----BEGIN PUBLIC KEY-----").assert_fails_with(&["COSIGN_KEY", "PEM"]);
    run_with("COSIGN_KEY", "/nonexistent/cosign.pub")
        .assert_fails_with(&["COSIGN_KEY: cannot read /nonexistent/cosign.pub"]);
    run_with("OCIMODEL_VERIFY", "required").assert_fails_with(&["nothing to trust"]);
    run_with("OCIMODEL_VERIFY", "maybe").assert_fails_with(&[
        "invalid value 'maybe'",
        "possible values: off, if-present, required",
        "(from OCIMODEL_VERIFY)",
    ]);
    run_with("COSIGN_CERT_IDENTITY", "a@example.com")
        .assert_fails_with(&["COSIGN_CERT_IDENTITY needs COSIGN_CERT_OIDC_ISSUER"]);
    assert!(!dest.exists());
    // The embedded example is unsigned: a key makes that a refusal.
    let public = ec_keypair(work.path(), "k");
    run_with("COSIGN_KEY", &public).assert_fails_with(&["no signature found for sha256:"]);
    assert!(!dest.exists());
    Ocimodel::new()
        .env("OCIMODEL_VERIFY", "off")
        .pull(&layout, &dest)
        .assert_ok();
}

/// F12: registry text with newlines, CR or ESC can neither forge a log line
/// nor reach the termination message raw.
#[test]
fn registry_text_cannot_forge_log_lines() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let forged =
        "nope\n2026-12-01T00:00:00.000000Z  INFO model installed uri=forged\r\u{1b}[2Jgone";
    let body = serde_json::json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": forged}]})
        .to_string();
    serve(listener, move |_| {
        response(
            "404 Not Found",
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        )
    });
    let dest = tempfile::tempdir().unwrap();
    let run = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .pull(&format!("{addr}/m:v1"), &dest.path().join("m"));
    run.assert_fails_with(&["nope\\u{a}2026-12-01", "uri=forged\\u{d}\\u{1b}[2Jgone"]);
    for out in [run.stderr(), run.termination.clone()] {
        assert!(!out.contains('\r') && !out.contains('\u{1b}'), "{out:?}");
        assert!(
            !out.lines().any(|l| l.starts_with("2026-12-01T00:00:00")),
            "a forged line: {out}"
        );
    }
}

/// F16: a password in the URI never reaches the termination message
/// (KServe copies it into the InferenceService status) or stderr.
#[test]
fn passwords_in_uris_are_redacted() {
    let dest = tempfile::tempdir().unwrap();
    let run = Ocimodel::new().run(&[
        "ocimodel://alice:Sup3rS3cret@127.0.0.1:9/m:v1",
        dest.path().join("m").to_str().unwrap(),
    ]);
    run.assert_fails_with(&["ocimodel://***@127.0.0.1:9/m:v1"]);
    assert!(!run.stderr().contains("Sup3rS3cret"), "{}", run.stderr());
    assert!(!run.termination.contains("Sup3rS3cret"));
}

/// Every choice is typed: a misspelled value is an error naming the
/// choices (and the variable it came from), not a quiet fallback.
#[test]
fn misspelled_choices_are_errors() {
    let dest = tempfile::tempdir().unwrap();
    let layout = format!(
        "oci-layout://{}",
        repo_root().join("examples/mnist").display()
    );
    let m = dest.path().join("m");
    Ocimodel::new()
        .env("OCIMODEL_LOG_FORMAT", "jsn")
        .pull(&layout, &m)
        .assert_fails_with(&[
            "invalid value 'jsn'",
            "possible values: text, json",
            "(from OCIMODEL_LOG_FORMAT)",
        ]);
    Ocimodel::new()
        .env("OCIMODEL_UNKNOWN", "rawr")
        .pull(&layout, &m)
        .assert_fails_with(&["possible values: refuse, raw"]);
    Ocimodel::new()
        .env("OCIMODEL_VERFY", "required")
        .pull(&layout, &m)
        .assert_fails_with(&["unknown setting OCIMODEL_VERFY; did you mean OCIMODEL_VERIFY?"]);
    let run = Ocimodel::new().run(&["push", "--format", "orass", "/tmp", "x"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr()
            .contains("possible values: modelpack, oras, modelcar"),
        "{}",
        run.stderr()
    );
    assert!(!m.exists());
}

/// #18/#20: a DEST that is a file, or a user's folder holding a name the
/// model would overwrite, is refused before any blob is downloaded (it was
/// refused after the whole download), and leaves no `.ocimodel/` behind.
#[test]
fn dest_conflicts_are_found_before_the_download() {
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    let work = tempfile::tempdir().unwrap();
    let top = MNIST_TITLE.split('/').next().unwrap();
    let mine = work.path().join("mine");
    fs::create_dir_all(mine.join(top)).unwrap();
    fs::write(mine.join(top).join("notes.txt"), "mine").unwrap();
    reg.pull("models/mnist:v1", &mine)
        .assert_fails_with(&[&format!(
            "{top} already exists and was not installed by ocimodel"
        )]);
    assert_eq!(
        reg.blob_gets(&format!("sha256:{MNIST_SHA256}")),
        0,
        "the blob was downloaded"
    );
    assert!(!mine.join(".ocimodel").exists(), "bookkeeping left behind");
    assert_eq!(fs::read(mine.join(top).join("notes.txt")).unwrap(), b"mine");

    let file = work.path().join("afile");
    fs::write(&file, "not a dir").unwrap();
    reg.pull("models/mnist:v1", &file)
        .assert_fails_with(&["destination", "afile is not a directory"]);
    assert_eq!(
        reg.blob_gets(&format!("sha256:{MNIST_SHA256}")),
        0,
        "the blob was downloaded"
    );
    assert_eq!(fs::read(&file).unwrap(), b"not a dir");

    // Unrelated files of the user's stay, and the model installs beside them.
    let beside = work.path().join("beside");
    fs::create_dir(&beside).unwrap();
    fs::write(beside.join("notes.txt"), "mine").unwrap();
    reg.pull("models/mnist:v1", &beside).assert_ok();
    assert_eq!(sha256_file(&beside.join(MNIST_TITLE)), MNIST_SHA256);
    assert_eq!(fs::read(beside.join("notes.txt")).unwrap(), b"mine");
}
