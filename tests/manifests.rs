//! Every YAML under manifests/ is valid: core objects against Kubernetes'
//! schemas (kubernetes-validate), KServe objects against KServe's own CRDs;
//! `kubectl apply -k manifests/` applies the ClusterStorageContainers only;
//! every digest an example pins is one this repository makes, every model
//! served with OCIMODEL_REQUIRE_DIGEST is named by digest, every OpenVINO
//! Model Server gets a model in its versioned layout, and every hostPath
//! cache is one the pod can write.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
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

/// Every `*.yaml` under `dir`, as paths relative to it.
fn yaml_files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn manifests() -> PathBuf {
    repo_root().join("manifests")
}

#[test]
fn manifests_are_valid() {
    let (ok, report) = validate(&manifests());
    assert!(ok, "{report}");
    for expected in [
        "base/cluster-storage-container.yaml: ClusterStorageContainer/ocimodel",
        "base/cluster-storage-container-localmodel.yaml: ClusterStorageContainer/ocimodel-localmodel",
        "examples/cluster-storage-container-oci.yaml: ClusterStorageContainer/ocimodel-oci",
        "examples/cluster-storage-container-model-registry.yaml: ClusterStorageContainer/ocimodel-model-registry",
        "examples/localmodelcache.yaml: LocalModelNodeGroup/gpu-nodes",
        "examples/localmodelcache.yaml: LocalModelCache/mnist",
        "examples/pod-node-cache.yaml: Pod/mnist-node-cache",
        "examples/inferenceservice-openvino.yaml: InferenceService/mnist-openvino",
        "examples/inferenceservice-multi.yaml: InferenceService/two-models",
        "examples/inferenceservice-private.yaml: InferenceService/private-mnist",
        "examples/inferenceservice-signed.yaml: InferenceService/signed-mnist",
        "examples/inferenceservice-cloud.yaml: InferenceService/ecr-mnist",
        "examples/inferenceservice-cloud.yaml: InferenceService/gar-mnist",
        "examples/inferenceservice-cloud.yaml: InferenceService/acr-mnist",
        "examples/inferenceservice-cloud.yaml: ServiceAccount/models-ecr",
        "examples/llminferenceservice.yaml: LLMInferenceService/llama-single",
        "examples/llminferenceservice.yaml: LLMInferenceService/llama-multi-node",
        "examples/pod-init.yaml: Pod/mnist-init",
        "examples/pod-sidecar.yaml: Pod/mnist-sidecar",
        "examples/pod-fleet.yaml: Pod/mnist-fleet",
        "examples/pod-fleet-restricted.yaml: Pod/mnist-fleet-restricted",
        "examples/pod-fleet-restricted.yaml: PersistentVolume/ocimodel-node-cache-gpu-1",
        "examples/pod-fleet-restricted.yaml: PersistentVolumeClaim/ocimodel-node-cache",
        "examples/pod-fleet-restricted.yaml: ConfigMap/registry-mirrors",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("ok   ") && l.ends_with(expected)),
            "{expected} not validated:\n{report}"
        );
    }
    // Whatever else lands under manifests/ is validated too: every file.
    for file in yaml_files(&manifests()) {
        if file.ends_with("kustomization.yaml") || file.ends_with("kustomizeconfig.yaml") {
            continue;
        }
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("ok   {file}: "))),
            "{file} was not validated:\n{report}"
        );
    }
}

#[test]
fn the_validator_catches_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "base/cluster-storage-container.yaml",
        "examples/pod-init.yaml",
    ] {
        let text = fs::read_to_string(manifests().join(f)).unwrap();
        // A typo in a field name, as a user might make.
        let text = text
            .replace("supportsMultiModelDownload", "supportMultiModelDownload")
            .replace("readOnlyRootFilesystem", "readOnlyRootFileSystem");
        let name = Path::new(f).file_name().unwrap();
        fs::write(dir.path().join(name), text).unwrap();
    }
    // A kustomization naming a file that is not there, and leaving one out.
    fs::write(
        dir.path().join("kustomization.yaml"),
        "resources: [cluster-storage-container.yaml, gone.yaml]\n",
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
    assert!(
        report.contains("FAIL kustomization.yaml: gone.yaml does not exist"),
        "{report}"
    );
    assert!(report.contains("leave out ['pod-init.yaml']"), "{report}");
}

/// tests/support/manifest_facts.py's reading of `dir`.
fn facts(dir: &Path) -> serde_json::Value {
    let (ok, out) = python("manifest_facts.py", &[dir]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// `kubectl apply -k manifests/` creates the ClusterStorageContainers of
/// base/ and nothing else: no demo, and no Secret that would replace the
/// user's own pull secret. Read from the kustomizations themselves
/// (kubectl is not among the test dependencies).
#[test]
fn apply_k_installs_the_cluster_storage_containers_only() {
    let f = facts(&manifests());
    assert_eq!(f["kustomize"]["."], serde_json::json!(["base"]), "{f}");
    assert_eq!(
        strings(&f["applied"]),
        [
            "ClusterStorageContainer/ocimodel",
            "ClusterStorageContainer/ocimodel-localmodel"
        ],
        "{f}"
    );
    assert!(
        f["kustomize"].get("examples").is_none(),
        "examples/ are applied one by one, never all at once"
    );
    let kinds: Vec<&str> = f["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"Secret"), "no Secret ships: {kinds:?}");
}

/// The two models the examples name, made here as a user would: the bundled
/// layout copied to a registry with skopeo (its manifest unchanged), and
/// `ocimodel push --format modelcar` of mnist.onnx in OpenVINO Model
/// Server's layout (`1/model.onnx`), with the creation time
/// inferenceservice-openvino.yaml gives. Returns the registry and the digests.
fn reproduce() -> (Registry, String, String) {
    let reg = Registry::start(Auth::None);
    reg.skopeo_push(&repo_root().join("examples/mnist"), "v1", "models/mnist:v1");
    let layout = reg.digest_of("models/mnist", "v1");
    let model = tempfile::tempdir().unwrap();
    fs::create_dir_all(model.path().join("1")).unwrap();
    fs::copy(mnist_path(), model.path().join("1/model.onnx")).unwrap();
    let car_ref = format!("{}/models/mnist-ovms:v1", reg.addr);
    let car = reg.ocimodel_push(&[
        model.path().to_str().unwrap(),
        &car_ref,
        "--format",
        "modelcar",
        "--annotation",
        CAR_CREATED,
    ]);
    (reg, layout, car)
}

/// The creation time the OpenVINO modelcar is pushed with (the seed's), so
/// that its digest is the same on every machine and every day.
const CAR_CREATED: &str = "org.opencontainers.image.created=2023-12-12T09:11:31Z";

/// `ocimodel://HOST/REPO@DIGEST` with the test registry as HOST: where
/// `reproduce` put that digest.
fn local_ref(reg: &Registry, uri: &str, layout: &str) -> String {
    let digest = uri.rsplit_once('@').unwrap().1;
    let repo = if digest == layout {
        "models/mnist"
    } else {
        "models/mnist-ovms"
    };
    format!("ocimodel://{}/{repo}@{digest}", reg.addr)
}

/// Every digest written anywhere under manifests/ is one the repository
/// makes (no file digest, no made-up one), and each pinned reference
/// installs from a registry holding what the repository makes. An example
/// whose model the repository cannot make (an LLM) says `sha256:<digest>`
/// for the user to fill in.
#[test]
fn every_pinned_digest_is_one_the_repository_makes() {
    let (reg, layout, car) = reproduce();
    let f = facts(&manifests());
    let made: BTreeSet<String> = [layout.clone(), car.clone()].into();
    let written: BTreeSet<String> = strings(&f["digests"]).into_iter().collect();
    assert_eq!(written, made, "digests in manifests/ vs made here");
    let mut installed = BTreeSet::new();
    for m in f["models"].as_array().unwrap() {
        let uri = m["ref"].as_str().unwrap();
        let Some((_, digest)) = uri.rsplit_once('@') else {
            continue;
        };
        if digest == "sha256:<digest>" {
            continue;
        }
        assert!(made.contains(digest), "{m}");
        if installed.insert(digest.to_string()) {
            let dest = tempfile::tempdir().unwrap();
            Ocimodel::new()
                .insecure(&reg)
                .run(&[
                    &local_ref(&reg, uri, &layout),
                    dest.path().to_str().unwrap(),
                ])
                .assert_ok();
        }
    }
    assert_eq!(installed, made, "both models are used by some example");
}

/// Every model installed by something that sets OCIMODEL_REQUIRE_DIGEST
/// (the ClusterStorageContainer KServe picks for the URI's prefix, or the
/// init container itself) is named by digest, as it would otherwise refuse.
#[test]
fn models_served_under_require_digest_are_named_by_digest() {
    let f = facts(&manifests());
    let strict: Vec<&serde_json::Value> = f["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["require_digest"] == true)
        .collect();
    assert!(
        strict
            .iter()
            .any(|m| m["by"] == "ClusterStorageContainer/ocimodel"),
        "{f}"
    );
    for m in &strict {
        assert!(
            m["ref"].as_str().unwrap().contains("@sha256:"),
            "{} names a tag under OCIMODEL_REQUIRE_DIGEST ({}): {}",
            m["object"],
            m["by"],
            m["ref"]
        );
    }
    // Every InferenceService and LocalModelCache has a ClusterStorageContainer.
    for m in f["models"].as_array().unwrap() {
        assert!(!m["by"].is_null(), "no ClusterStorageContainer serves {m}");
    }
}

/// OpenVINO Model Server's rule: `--model_path` holds numeric version
/// folders; it serves the highest, and the model file in it.
fn ovms_model(dir: &Path) -> Option<PathBuf> {
    let version = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&v| v > 0)
        .max()?;
    let folder = dir.join(version.to_string());
    let onnx: Vec<PathBuf> = fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    (onnx.len() == 1).then(|| onnx[0].clone())
}

/// Each example that runs OpenVINO Model Server (`--model_path`, or
/// KServe's kserve-ovms runtime) installs a model it can load: a numeric
/// version folder with the model in it. The bundled layout's
/// `v1.nb20231206162408/` is not one.
#[test]
fn openvino_examples_install_a_model_in_its_layout() {
    let (reg, layout, _) = reproduce();
    let f = facts(&manifests());
    let ovms = f["ovms"].as_array().unwrap();
    assert!(ovms.len() >= 3, "{f}");
    let install = |uri: &str| {
        let dest = tempfile::tempdir().unwrap();
        Ocimodel::new()
            .insecure(&reg)
            .run(&[
                &local_ref(&reg, uri, &layout),
                dest.path().to_str().unwrap(),
            ])
            .assert_ok();
        dest
    };
    for o in ovms {
        let refs = strings(&o["refs"]);
        assert_eq!(refs.len(), 1, "{o}");
        let dest = install(&refs[0]);
        let model = ovms_model(dest.path());
        assert!(
            model.is_some(),
            "{}: OVMS finds no version folder in {:?}",
            o["object"],
            tree(dest.path())
        );
        assert_eq!(sha256_file(&model.unwrap()), MNIST_SHA256);
    }
    let bundled = install(&format!("ocimodel://x/models/mnist@{layout}"));
    assert_eq!(ovms_model(bundled.path()), None);
}

/// A hostPath an ocimodel container writes (the node cache) must exist
/// before the pod, made writable for group 0 by the command the file gives:
/// `type: Directory`, never `DirectoryOrCreate` (the kubelet would make it
/// 0755 root:root, which the pod's UID cannot write).
#[test]
fn hostpath_caches_are_made_for_group_0_before_the_pod() {
    let f = facts(&manifests());
    let writable: Vec<&serde_json::Value> = f["hostpaths"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["writable"] == true)
        .collect();
    assert!(writable.len() >= 2, "{f}");
    for h in writable {
        assert_eq!(h["type"], "Directory", "{h}");
        let text = fs::read_to_string(manifests().join(h["file"].as_str().unwrap())).unwrap();
        let make = format!("install -d -m 2775 -g 0 {}", h["path"].as_str().unwrap());
        assert!(text.contains(&make), "{} does not say `{make}`", h["file"]);
    }
}

fn psa_restricted(file: &str) -> (bool, String) {
    python(
        "psa_restricted.py",
        &[&manifests().join("examples").join(file)],
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
