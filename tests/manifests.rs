//! Every YAML in manifests/ is valid: core objects against Kubernetes'
//! schemas (kubernetes-validate), KServe objects against KServe's own CRDs.

mod common;

use std::fs;
use std::process::Command;

use common::*;

fn crd_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("KSERVE_CRDS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/fixtures/kserve-crds"));
    assert!(
        dir.is_dir(),
        "KServe CRDs not found at {} (set KSERVE_CRDS)",
        dir.display()
    );
    dir
}

/// Runs one of tests/support's Python checkers: (it passed, its output).
fn python(script: &str, args: &[&std::path::Path]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(repo_root().join("tests/support").join(script))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn validate(dir: &std::path::Path) -> (bool, String) {
    python("validate_manifests.py", &[dir, &crd_dir()])
}

#[test]
fn manifests_are_valid() {
    let (ok, report) = validate(&repo_root().join("manifests"));
    assert!(ok, "{report}");
    for expected in [
        "ClusterStorageContainer/ocimodel",
        "ClusterStorageContainer/ocimodel-oci",
        "ClusterStorageContainer/ocimodel-localmodel",
        "ClusterStorageContainer/ocimodel-model-registry",
        "LocalModelNodeGroup/gpu-nodes",
        "LocalModelCache/mnist",
        "Pod/mnist-node-cache",
        "InferenceService/mobilenet",
        "InferenceService/base-and-adapter",
        "InferenceService/private-mnist",
        "InferenceService/signed-mnist",
        "InferenceService/ecr-mnist",
        "InferenceService/gar-mnist",
        "InferenceService/acr-mnist",
        "LLMInferenceService/llama-single",
        "LLMInferenceService/llama-multi-node",
        "ServiceAccount/models-ecr",
        "Pod/mnist-init",
        "Pod/mnist-sidecar",
        "Pod/mnist-fleet",
        "Pod/mnist-fleet-restricted",
        "PersistentVolume/ocimodel-node-cache-gpu-1",
        "PersistentVolumeClaim/ocimodel-node-cache",
        "ConfigMap/registry-mirrors",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("ok   ") && l.ends_with(expected)),
            "{expected} not validated:\n{report}"
        );
    }
}

#[test]
fn the_validator_catches_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["cluster-storage-container.yaml", "pod-init.yaml"] {
        let text = fs::read_to_string(repo_root().join("manifests").join(f)).unwrap();
        // A typo in a field name, as a user might make.
        let text = text
            .replace("supportsMultiModelDownload", "supportMultiModelDownload")
            .replace("readOnlyRootFilesystem", "readOnlyRootFileSystem");
        fs::write(dir.path().join(f), text).unwrap();
    }
    fs::write(
        dir.path().join("kustomization.yaml"),
        "resources: [cluster-storage-container.yaml, pod-init.yaml]\n",
    )
    .unwrap();
    let (ok, report) = validate(dir.path());
    assert!(!ok, "{report}");
    assert!(
        report.contains("FAIL cluster-storage-container.yaml: ClusterStorageContainer/ocimodel"),
        "{report}"
    );
    assert!(
        report.contains("FAIL pod-init.yaml: Pod/mnist-init"),
        "{report}"
    );
}

fn psa_restricted(file: &str) -> (bool, String) {
    python(
        "psa_restricted.py",
        &[&repo_root().join("manifests").join(file)],
    )
}

/// The restricted fleet example is admitted under Pod Security "restricted";
/// the hostPath example is not, and the checker says exactly why.
#[test]
fn fleet_examples_against_pod_security_restricted() {
    let (ok, report) = psa_restricted("pod-fleet-restricted.yaml");
    assert!(ok, "{report}");
    let (ok, report) = psa_restricted("pod-fleet.yaml");
    assert!(!ok, "{report}");
    assert!(
        report.contains("mnist-fleet: volume node-cache is ['hostPath']"),
        "{report}"
    );
}
