//! `model-registry://` against a Kubeflow Model Registry: a small REST server
//! (tests/support/model_registry_server.py) implementing the calls of the
//! registry's OpenAPI description, with models registered into it by the
//! real Python client (`model-registry` from PyPI); the artifact it records
//! is the seed model on docker-registry.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;

struct ModelRegistry {
    addr: String,
    child: Child,
}

impl ModelRegistry {
    fn start() -> ModelRegistry {
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/support/model_registry_server.py"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        ModelRegistry {
            addr: format!("127.0.0.1:{}", port.trim()),
            child,
        }
    }

    /// `ModelRegistry(...).register_model(name, uri, version=...)` with the
    /// real client.
    fn register(&self, name: &str, uri: &str, version: &str) {
        let (host, port) = self.addr.split_once(':').unwrap();
        let script = format!(
            r#"
from model_registry import ModelRegistry
r = ModelRegistry("http://{host}", {port}, author="ml-engineer", is_secure=False)
r.register_model({name:?}, {uri:?}, version={version:?}, model_format_name="onnx", model_format_version="1")
"#
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "register_model: {out:?}");
    }

    fn requests(&self) -> Vec<String> {
        serde_json::from_slice(&http_get(&self.addr, "/requests", &[]).body).unwrap()
    }
}

impl Drop for ModelRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn model_registry_uris_resolve_to_the_oci_artifact() {
    let (reg, digest) = Registry::with_mnist();
    let mr = ModelRegistry::start();
    let oci = format!("oci://{}/models/mnist@{digest}", reg.addr);
    mr.register("mnist", &oci, "v1");
    mr.register("mnist", "s3://models/mnist/v2", "v2");
    let work = tempfile::tempdir().unwrap();
    let pull = |uri: &str, dest: &str| {
        Ocimodel::new()
            .insecure(&reg)
            .env("MODEL_REGISTRY_BASE_URL", &mr.addr)
            .env("OCIMODEL_REQUIRE_DIGEST", "true")
            .run(&[uri, work.path().join(dest).to_str().unwrap()])
    };

    let run = pull("model-registry://mnist/v1", "v1");
    run.assert_ok();
    let dest = work.path().join("v1");
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    let m = marker(&dest);
    assert_eq!(m["source"], "model-registry://mnist/v1");
    assert_eq!(m["digest"], digest.as_str());
    assert!(
        run.stderr().contains("resolved through the model registry")
            && run
                .stderr()
                .contains(&format!("reference={}/models/mnist@{digest}", reg.addr)),
        "{}",
        run.stderr()
    );
    let asked = mr.requests();
    for call in [
        "GET /api/model_registry/v1alpha3/registered_model?name=mnist",
        "GET /api/model_registry/v1alpha3/model_version?name=v1&parentResourceId=",
        "/artifacts?orderBy=CREATE_TIME&sortOrder=DESC",
    ] {
        assert!(
            asked.iter().any(|r| r.contains(call)),
            "{call} not in {asked:?}"
        );
    }

    // The host in the URI (3 tokens) instead of MODEL_REGISTRY_BASE_URL.
    Ocimodel::new()
        .insecure(&reg)
        .run(&[
            &format!("model-registry://{}/mnist/v1", mr.addr),
            work.path().join("host").to_str().unwrap(),
        ])
        .assert_ok();

    // No version: the newest, v2, which is in S3.
    pull("model-registry://mnist", "newest").assert_fails_with(&[
        "model 'mnist' version 'v2' is stored at a s3:// URI; ocimodel pulls oci:// artifacts only",
    ]);
    pull("model-registry://llama/v1", "missing")
        .assert_fails_with(&["model 'llama' is not in the model registry at http://"]);
    pull("model-registry://mnist/v9", "no-version")
        .assert_fails_with(&["model 'mnist' has no version 'v9'"]);
    assert!(!work.path().join("newest").join(MNIST_TITLE).exists());
}
