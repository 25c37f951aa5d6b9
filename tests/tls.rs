//! TLS: the registry behind a private CA, trusted through OCIMODEL_CA_BUNDLE
//! or KServe's CA bundle mount; untrusted and wrong-name certificates fail
//! with one clear line.

mod common;

use std::fs;

use common::*;

#[test]
fn private_ca_bundles() {
    let plain = Registry::start(Auth::None);
    plain.oras_push_mnist("models/mnist:v1");
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let reg = Registry::start_tls(
        plain.stop(),
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    );
    let uri = format!("ocimodel://{}/models/mnist:v1", reg.addr);
    let work = tempfile::tempdir().unwrap();

    let dest = work.path().join("ca-env");
    Ocimodel::new()
        .env("OCIMODEL_CA_BUNDLE", certs.path().join("ca.pem"))
        .pull(&uri, &dest)
        .assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);

    // KServe mounts a ConfigMap at CA_BUNDLE_VOLUME_MOUNT_POINT with cabundle.crt.
    let mount = work.path().join("custom-certs");
    fs::create_dir(&mount).unwrap();
    fs::copy(certs.path().join("ca.pem"), mount.join("cabundle.crt")).unwrap();
    let dest = work.path().join("ca-kserve");
    Ocimodel::new()
        .env("CA_BUNDLE_VOLUME_MOUNT_POINT", &mount)
        .pull(&uri, &dest)
        .assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);

    let dest = work.path().join("untrusted");
    Ocimodel::new().pull(&uri, &dest).assert_fails_with(&[
        "cannot reach registry",
        &reg.addr,
        "UnknownIssuer",
        "OCIMODEL_CA_BUNDLE",
    ]);
    assert!(model_files(&dest).is_empty());

    // Same server, reached by a name its certificate does not carry.
    let port = reg.addr.rsplit(':').next().unwrap();
    let dest = work.path().join("wrong-name");
    Ocimodel::new()
        .env("OCIMODEL_CA_BUNDLE", certs.path().join("ca.pem"))
        .pull(&format!("localhost:{port}/models/mnist:v1"), &dest)
        .assert_fails_with(&["cannot reach registry", "not valid for name \"localhost\""]);
    assert!(model_files(&dest).is_empty());

    Ocimodel::new()
        .env("OCIMODEL_CA_BUNDLE", work.path().join("missing.pem"))
        .pull(&uri, &dest)
        .assert_fails_with(&["cannot read CA bundle", "missing.pem"]);
}

/// F7: an https registry that names a plain-http token realm gets no
/// credentials sent in clear; the realm's server sees no request at all.
#[test]
fn https_registry_with_a_plain_http_realm_gets_no_credentials() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let realm = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let realm_addr = realm.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::Mutex::new(0usize));
    let seen = hits.clone();
    serve(realm, move |_| {
        *seen.lock().unwrap() += 1;
        response("200 OK", &[], br#"{"token":"x"}"#)
    });
    let reg = Registry::start_tls_with(
        tempfile::tempdir().unwrap(),
        Auth::Token {
            realm: format!("http://{realm_addr}/token"),
            cert_pem: certs.path().join("ca.pem"),
        },
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    );
    let dest = tempfile::tempdir().unwrap();
    Ocimodel::new()
        .env("OCIMODEL_CA_BUNDLE", certs.path().join("ca.pem"))
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config(USER, PASSWORD, &reg.addr),
        )
        .pull(
            &format!("{}/models/mnist:v1", reg.addr),
            &dest.path().join("m"),
        )
        .assert_fails_with(&[
            "names a plain-http token realm",
            "refusing to send credentials in clear",
        ]);
    assert_eq!(*hits.lock().unwrap(), 0, "the http realm was contacted");
}
