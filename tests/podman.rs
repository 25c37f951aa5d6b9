//! End to end in a real container runtime: build ocimodel's image from the
//! repository's Containerfile, push the model the examples pin (the OpenVINO
//! modelcar, made by `ocimodel push` with the same digest) to the test
//! registry, then run manifests/examples/pod-init.yaml, pod-node-cache.yaml
//! and pod-sidecar.yaml with `podman kube play`. The Pods are adapted only
//! where they must be: image names, the registry's host (a plain-HTTP
//! registry on the host's loopback, hence hostNetwork and
//! OCIMODEL_INSECURE_REGISTRIES), a hostPath's location, and the model
//! server's image: `docker.io/openvino/model_server` cannot be pulled here,
//! so a stand-in that takes OVMS's own arguments and finds the model by its
//! version-folder rule (tests/support/openvino_classify.py) runs the
//! manifest's `args` unchanged. No base image can be pulled, so the servers'
//! image is made from packages (tests/support/server_image.sh: Debian from
//! debootstrap, OpenVINO, KServe and ONNX Runtime from PyPI, cached under
//! target/test-deps) and imported with `podman import`. OpenVINO must read
//! three drawn digits right; KServe's own Python model server answers V2
//! `infer` for the seed's ORAS artifact.

mod common;
#[path = "support/static_binary.rs"]
mod static_binary;

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// A rootful podman with its own storage in a temporary directory, and the
/// model servers' image from a shared read-only image store.
struct Podman {
    root: tempfile::TempDir,
    conf: std::path::PathBuf,
    servers: &'static Path,
}

impl Podman {
    fn new() -> Podman {
        require_root("rootful podman");
        let have = Command::new("podman")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(have, "podman is missing: scripts/test.sh installs it");
        let root = tempfile::tempdir().unwrap();
        let conf = root.path().join("containers.conf");
        // Raising rlimits is not permitted on these machines, and podman's
        // defaults raise nofile and nproc: lower them instead.
        fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=4096:4096\",\"nproc=4096:4096\"]\n",
        )
        .unwrap();
        let servers = server_image_store(&conf, root.path());
        Podman {
            root,
            conf,
            servers,
        }
    }

    fn run(&self, args: &[&str], dir: &Path) -> Output {
        let r = self.root.path();
        let mut store = std::ffi::OsString::from("overlay.imagestore=");
        store.push(self.servers);
        podman(&self.conf, &r.join("root"), &r.join("run"))
            .arg("--storage-opt")
            .arg(store)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap()
    }

    /// A container's log, stdout then stderr.
    fn logs(&self, container: &str, dir: &Path) -> String {
        let l = self.run(&["logs", container], dir);
        format!(
            "{}{}",
            String::from_utf8_lossy(&l.stdout),
            String::from_utf8_lossy(&l.stderr)
        )
    }

    /// Waits for a container to exit: its exit code and log.
    fn wait(&self, container: &str, dir: &Path) -> (String, String) {
        let code = self.ok(&["wait", container], dir);
        (code.trim().to_string(), self.logs(container, dir))
    }

    #[track_caller]
    fn ok(&self, args: &[&str], dir: &Path) -> String {
        let out = self.run(args, dir);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let here = self.root.path().to_path_buf();
        let _ = self.run(&["pod", "rm", "-fa"], &here);
        let _ = self.run(&["rm", "-fa"], &here);
    }
}

/// Builds ocimodel's image from the repository's Containerfile (prebuilt path).
fn build_ocimodel_image(podman: &Podman, work: &Path) {
    let ctx = work.join("ctx");
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let bin_dir = ctx.join(format!("target/static/linux-{arch}"));
    fs::create_dir_all(&bin_dir).unwrap();
    fs::copy(static_binary::static_ocimodel(), bin_dir.join("ocimodel")).unwrap();
    fs::copy(repo_root().join("Containerfile"), ctx.join("Containerfile")).unwrap();
    podman.ok(
        &[
            "build",
            "-q",
            "--build-arg",
            "BINARY_FROM=prebuilt",
            "-t",
            "localhost/ocimodel:e2e",
            ".",
        ],
        &ctx,
    );
}

/// Pushes mnist as `models/1/model.onnx` in a modelcar with `ocimodel push`;
/// returns the digest.
fn push_mnist_modelcar(reg: &Registry, work: &Path, car_ref: &str, flags: &[&str]) -> String {
    let src = work.join("model/1");
    fs::create_dir_all(&src).unwrap();
    fs::copy(mnist_path(), src.join("model.onnx")).unwrap();
    let dir = work.join("model");
    let mut args = vec![dir.to_str().unwrap(), car_ref, "--format", "modelcar"];
    args.extend_from_slice(flags);
    reg.ocimodel_push(&args)
}

/// An example under manifests/examples.
fn example(file: &str) -> String {
    fs::read_to_string(repo_root().join("manifests/examples").join(file)).unwrap()
}

/// The creation time the examples' OpenVINO modelcar is pushed with (the
/// seed's, as manifests/examples/inferenceservice-openvino.yaml says), so
/// that `ocimodel push` makes the digest they pin.
const CAR_CREATED: &str = "org.opencontainers.image.created=2023-12-12T09:11:31Z";

/// Pushes the model the examples pin, as their comment says (mnist as
/// `models/1/model.onnx` in a modelcar, by `ocimodel push`), to
/// `models/mnist-ovms:v1`; it must get the very digest pod-init.yaml pins.
fn push_pinned_modelcar(reg: &Registry, work: &Path) -> String {
    let car_ref = format!("{}/models/mnist-ovms:v1", reg.addr);
    let digest = push_mnist_modelcar(reg, work, &car_ref, &["--annotation", CAR_CREATED]);
    let pinned = format!("registry.example.com/models/mnist-ovms@{digest}");
    assert!(
        example("pod-init.yaml").contains(&pinned),
        "pod-init.yaml does not pin {pinned}"
    );
    digest
}

/// OpenVINO Model Server's image and arguments as the examples run it.
const OVMS_IMAGE: &str = "      image: docker.io/openvino/model_server:2025.0\n";
const OVMS_ARGS: &str = "      args: [\"--model_path\", \"/mnt/models\", \"--model_name\", \"mnist\", \"--port\", \"9000\"]\n";

/// `yaml` (the example `file`) with OVMS's image swapped for the stand-in in
/// the servers' image, which gets the same `args`.
fn ovms_standin(yaml: &str, file: &str) -> String {
    assert!(
        yaml.contains(&format!("{OVMS_IMAGE}{OVMS_ARGS}")),
        "{file} changed how it runs OVMS; update this test"
    );
    yaml.replace(
        OVMS_IMAGE,
        &format!("      image: {SERVER_IMAGE}\n      command: [\"python3\", \"/opt/serve/classify.py\"]\n      env:\n        - {{name: HOME, value: /tmp}}\n"),
    )
}

/// Runs manifests/examples/pod-init.yaml (adapted as the module doc says):
/// with `model` None the model it pins (push it first with
/// `push_pinned_modelcar`), else the reference `model` instead. Its server,
/// OpenVINO with OVMS's arguments, must read the drawn digits.
fn run_pod_init(podman: &Podman, reg: &Registry, model: Option<&str>, work: &Path) {
    run_pod_init_with_key(podman, reg, model, work, None)
}

/// Like `run_pod_init`; with `key`, the init container gets COSIGN_KEY from
/// a ConfigMap through `configMapKeyRef`, as a ClusterStorageContainer would.
fn run_pod_init_with_key(
    podman: &Podman,
    reg: &Registry,
    model: Option<&str>,
    work: &Path,
    key: Option<&str>,
) {
    let yaml = example("pod-init.yaml");
    let yaml = match model {
        Some(model_ref) => {
            let (pinned, _) = yaml
                .split_once("args: [\"ocimodel://")
                .and_then(|(_, rest)| rest.split_once('"'))
                .unwrap();
            yaml.replace(pinned, model_ref)
        }
        None => yaml,
    };
    let pod = ovms_standin(&yaml, "pod-init.yaml")
        .replace("quay.io/ocimodel/ocimodel:0.1.0", "localhost/ocimodel:e2e")
        .replace("registry.example.com", &reg.addr)
        .replace(
            "          value: \"\"",
            &format!("          value: \"{}\"", reg.addr),
        )
        .replace(
            "        - {name: models, mountPath: /mnt/models, readOnly: true}\n",
            "        - {name: models, mountPath: /mnt/models, readOnly: true}\n        - {name: tmp, mountPath: /tmp}\n",
        )
        .replace(
            "      emptyDir: {}",
            "      emptyDir: {}\n    - name: tmp\n      emptyDir: {}",
        )
        .replace(
            "spec:\n  securityContext:",
            "spec:\n  hostNetwork: true\n  restartPolicy: Never\n  securityContext:",
        );
    let pod_file = work.join("pod.yaml");
    let mut play = vec!["kube".to_string(), "play".to_string()];
    let pod = match key {
        Some(pem) => {
            let cm = signing_key_configmap(work, pem);
            play.extend(["--configmap".to_string(), cm.display().to_string()]);
            let insecure = format!("          value: \"{}\"\n", reg.addr);
            assert!(pod.contains(&insecure));
            pod.replacen(
                &insecure,
                &format!("{insecure}        - name: COSIGN_KEY\n          valueFrom:\n            configMapKeyRef: {{name: model-signing-key, key: cosign.pub}}\n"),
                1,
            )
        }
        None => pod,
    };
    fs::write(&pod_file, pod).unwrap();
    play.push(pod_file.display().to_string());
    let play: Vec<&str> = play.iter().map(String::as_str).collect();
    podman.ok(&play, work);
    let (code, logs) = podman.wait("mnist-init-server", work);
    assert_reads_digits(&code, &logs);
    // It ran as the arbitrary UID, in group 0, read-only root.
    assert_runs_as(podman, "mnist-init-server", "1000930000:0", work);
    podman.ok(&["pod", "rm", "-f", "mnist-init"], work);
}

#[test]
fn pod_init_installs_as_an_arbitrary_uid_and_a_server_reads_it() {
    let podman = Podman::new();
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    build_ocimodel_image(&podman, work.path());
    let config = podman.ok(
        &[
            "image",
            "inspect",
            "localhost/ocimodel:e2e",
            "--format",
            "{{.Config.User}} {{.Config.Entrypoint}}",
        ],
        work.path(),
    );
    assert_eq!(config.trim(), "65532:0 [/ocimodel]");
    // No shell in it: running one fails.
    let out = podman.run(
        &[
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            "localhost/ocimodel:e2e",
            "-c",
            "true",
        ],
        work.path(),
    );
    assert!(!out.status.success(), "the image must have no shell");

    // The modelcar, from images/mobilenet-modelcar, as its README says.
    let car = work.path().join("car");
    fs::create_dir_all(car.join("models/1")).unwrap();
    fs::copy(
        repo_root().join("images/mobilenet-modelcar/Containerfile"),
        car.join("Containerfile"),
    )
    .unwrap();
    fs::copy(mnist_path(), car.join("models/1/model.onnx")).unwrap();
    assert!(Command::new("chmod")
        .args(["-R", "u=rwX,g=u,o=rX", "models"])
        .current_dir(&car)
        .status()
        .unwrap()
        .success());
    let car_ref = format!("{}/models/mobilenet:v1", reg.addr);
    podman.ok(&["build", "-q", "-t", &car_ref, "."], &car);
    podman.ok(&["push", "--tls-verify=false", &car_ref], &car);
    run_pod_init(&podman, &reg, Some(&car_ref), work.path());
    assert!(
        reg.log().contains("GET /v2/models/mobilenet/manifests/v1"),
        "the init container pulled from the test registry"
    );

    // pod-init.yaml as shipped: the model it pins, pushed as its comment says.
    let digest = push_pinned_modelcar(&reg, work.path());
    run_pod_init(&podman, &reg, None, work.path());
    assert!(
        reg.log()
            .contains(&format!("GET /v2/models/mnist-ovms/manifests/{digest}")),
        "the init container pulled the pinned digest"
    );
}

/// A modelcar pushed by `ocimodel push --format modelcar` (no engine, no
/// shell): podman pulls and mounts it as an image, and it serves as the
/// /models source of the same Pod.
#[test]
fn modelcar_pushed_by_ocimodel_works_under_podman() {
    let podman = Podman::new();
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let car_ref = format!("{}/models/pushed-car:v1", reg.addr);
    push_mnist_modelcar(&reg, work.path(), &car_ref, &["--compress", "gzip"]);

    podman.ok(&["pull", "-q", "--tls-verify=false", &car_ref], work.path());
    let mount = podman.ok(&["image", "mount", &car_ref], work.path());
    let root = Path::new(mount.trim());
    assert_eq!(sha256_file(&root.join("models/1/model.onnx")), MNIST_SHA256);
    assert_eq!(mode(&root.join("models/1/model.onnx")), 0o664);
    assert_eq!(mode(&root.join("models/1")), 0o775);
    assert!(!root.join("bin").exists(), "no shell, no base image");
    podman.ok(&["image", "unmount", &car_ref], work.path());

    build_ocimodel_image(&podman, work.path());
    run_pod_init(&podman, &reg, Some(&car_ref), work.path());
}

/// A signed model in a real runtime: the cosign key reaches the init
/// container as PEM text through `configMapKeyRef` env (what a
/// ClusterStorageContainer can do), the signature is checked, and the
/// model server reads the digits.
#[test]
fn signed_modelcar_with_the_key_from_a_configmap() {
    let podman = Podman::new();
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let digest = push_pinned_modelcar(&reg, work.path());
    let public = ec_keypair(work.path(), "k");
    let tag = sign_legacy(&reg, work.path(), "models/mnist-ovms", &digest);

    build_ocimodel_image(&podman, work.path());
    run_pod_init_with_key(&podman, &reg, None, work.path(), Some(&public));
    assert!(
        reg.log()
            .contains(&format!("GET /v2/models/mnist-ovms/manifests/{tag}")),
        "the init container looked up the signature"
    );
}

/// The ConfigMap `model-signing-key` the manifests mount or read: the PEM
/// public key `pem` as `cosign.pub`. Returns its file, for `--configmap`.
fn signing_key_configmap(work: &Path, pem: &str) -> std::path::PathBuf {
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    let cm = work.join("configmap.yaml");
    fs::write(
        &cm,
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: model-signing-key\ndata:\n  cosign.pub: |\n{indented}"),
    )
    .unwrap();
    cm
}

/// Signs `repo@digest` with a cosign legacy signature made with openssl and
/// the key `k.key` in `work` (see tests/signatures.rs); returns its tag.
fn sign_legacy(reg: &Registry, work: &Path, repo: &str, digest: &str) -> String {
    let payload = serde_json::json!({
        "critical": {"identity": {"docker-reference": format!("{}/{repo}", reg.addr)},
                     "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": null
    })
    .to_string();
    fs::write(work.join("payload"), &payload).unwrap();
    openssl(
        &[
            "dgst", "-sha256", "-sign", "k.key", "-out", "sig", "payload",
        ],
        work,
    );
    let sig = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        fs::read(work.join("sig")).unwrap(),
    );
    let tag = format!("{}.sig", digest.replace(':', "-"));
    reg.push_artifact(
        &format!("{repo}:{tag}"),
        &serde_json::json!({
            "tag": tag,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "json": {}},
            "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "data": payload,
                        "annotations": {"dev.cosignproject.cosign/signature": sig}}],
        }),
    );
    tag
}

/// Plays one pod from YAML text and waits for container `wait_for`; returns
/// its exit code and log.
fn play_and_wait(
    podman: &Podman,
    work: &Path,
    name: &str,
    yaml: &str,
    wait_for: &str,
) -> (String, String) {
    let file = work.join(format!("{name}.yaml"));
    fs::write(&file, yaml).unwrap();
    podman.ok(&["kube", "play", file.to_str().unwrap()], work);
    podman.wait(wait_for, work)
}

/// KServe's LocalModelCache flow with ocimodel's ClusterStorageContainer:
/// the node agent's download Job (here: a pod with the CSC's container and
/// args [uri, /mnt/models], on a hostPath "node PVC" at the model's subPath)
/// fills the node's copy; two serving pods with other UIDs in group 0 mount
/// it read-only and read every file. A second Job (the agent re-creates
/// them) re-hashes the tree and downloads nothing.
#[test]
fn localmodelcache_job_fills_a_node_volume_that_other_uids_serve() {
    let podman = Podman::new();
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    build_ocimodel_image(&podman, work.path());
    let car_ref = format!("{}/models/cached:v1", reg.addr);
    let digest = push_mnist_modelcar(&reg, work.path(), &car_ref, &[]);
    let uri = format!("ocimodel://{}/models/cached@{digest}", reg.addr);
    // The node's volume, as the LocalModelNodeGroup's hostPath PV gives it.
    let node = work.path().join("node-models");
    fs::create_dir_all(node.join("models/key0123456789abcd")).unwrap();
    fs::set_permissions(&node, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(node.join("models"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(
        node.join("models/key0123456789abcd"),
        fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    // The download Job's pod: the CSC's container, as KServe's agent builds it.
    let job = |name: &str| {
        let script = r#"
import sys, yaml
csc = yaml.safe_load(open(sys.argv[1]))
c = csc["spec"]["container"]
c["image"] = "localhost/ocimodel:e2e"
c["args"] = [sys.argv[2], "/mnt/models"]
c["env"] = [e for e in c["env"] if "valueFrom" not in e] + [{"name": "OCIMODEL_INSECURE_REGISTRIES", "value": sys.argv[3]}]
# KServe mounts the PVC with subPath models/<key>; podman 4.3's kube play
# ignores subPath on hostPath volumes, so the hostPath names that folder.
c["volumeMounts"] = [{"name": "kserve-pvc-source", "mountPath": "/mnt/models"}]
pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": sys.argv[4]},
       "spec": {"hostNetwork": True, "restartPolicy": "Never",
                "securityContext": {"runAsUser": 1000, "runAsGroup": 0, "fsGroup": 1000},
                "containers": [c],
                "volumes": [{"name": "kserve-pvc-source", "hostPath": {"path": sys.argv[5], "type": "Directory"}}]}}
print(yaml.safe_dump(pod))
"#;
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(repo_root().join("manifests/base/cluster-storage-container-localmodel.yaml"))
            .args([
                &uri,
                &reg.addr,
                name,
                node.join("models/key0123456789abcd").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (code, logs) = play_and_wait(
        &podman,
        work.path(),
        "download",
        &job("download"),
        "download-storage-initializer",
    );
    assert_eq!(code, "0", "the download job failed:\n{logs}");
    let copy = node.join("models/key0123456789abcd");
    assert_eq!(sha256_file(&copy.join("1/model.onnx")), MNIST_SHA256);
    assert_eq!(
        reg.blob_gets(&format!("sha256:{MNIST_SHA256}")),
        0,
        "a modelcar has one tar layer, not the file blob"
    );
    // Two serving pods, other UIDs in group 0, the copy mounted read-only:
    // OpenVINO loads it in each and reads the digits.
    for (name, uid) in [("server-a", 1000930000u32), ("server-b", 1000940000)] {
        let models = format!("hostPath: {{path: {}, type: Directory}}", copy.display());
        let pod = openvino_pod(name, uid, "", &models);
        let (code, logs) =
            play_and_wait(&podman, work.path(), name, &pod, &format!("{name}-server"));
        assert_reads_digits(&code, &logs);
        podman.ok(&["pod", "rm", "-f", name], work.path());
    }
    // The agent re-creates the Job: it re-hashes, finds it complete, fetches nothing.
    podman.ok(&["pod", "rm", "-f", "download"], work.path());
    let layer_gets = |log: &str| {
        log.lines()
            .filter(|l| l.contains("\"GET ") && l.contains("/blobs/"))
            .count()
    };
    let before = layer_gets(&reg.log());
    let (code, logs) = play_and_wait(
        &podman,
        work.path(),
        "again",
        &job("again"),
        "again-storage-initializer",
    );
    assert_eq!(code, "0", "{logs}");
    assert!(logs.contains("already installed"), "{logs}");
    assert_eq!(layer_gets(&reg.log()), before, "the rerun downloaded blobs");
}

/// manifests/examples/pod-node-cache.yaml under podman, as shipped but for
/// the hostPath's location: the node's folder made by the command the file
/// gives (`install -d -m 2775 -g 0`, root-owned), two pods on one "node"
/// share it; both servers (OVMS's arguments) read the model, and the second
/// pod downloads nothing.
#[test]
fn pods_on_one_node_share_the_node_cache() {
    let podman = Podman::new();
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    build_ocimodel_image(&podman, work.path());
    let digest = push_pinned_modelcar(&reg, work.path());
    let yaml = example("pod-node-cache.yaml");
    // The node's folder, made as the file says (here under the test's tmp).
    let cache = work.path().join("var-lib-ocimodel");
    let make = "install -d -m 2775 -g 0 /var/lib/ocimodel";
    assert!(
        yaml.contains(make),
        "pod-node-cache.yaml changed; update this test"
    );
    let cmd = make.replace("/var/lib/ocimodel", cache.to_str().unwrap());
    assert!(Command::new("sh")
        .args(["-c", &cmd])
        .status()
        .unwrap()
        .success());
    let volume = "hostPath: {path: /var/lib/ocimodel, type: Directory}";
    assert!(
        yaml.contains(volume),
        "pod-node-cache.yaml changed; update this test"
    );
    let pod = |name: &str| {
        ovms_standin(&yaml, "pod-node-cache.yaml")
            .replace("quay.io/ocimodel/ocimodel:0.1.0", "localhost/ocimodel:e2e")
            .replace("registry.example.com", &reg.addr)
            .replace(
                "        - {name: OCIMODEL_CACHE_MAX, value: 500G}\n",
                &format!("        - {{name: OCIMODEL_CACHE_MAX, value: 500G}}\n        - {{name: OCIMODEL_INSECURE_REGISTRIES, value: \"{}\"}}\n", reg.addr),
            )
            .replace(
                "        - {name: models, mountPath: /mnt/models, readOnly: true}\n",
                "        - {name: models, mountPath: /mnt/models, readOnly: true}\n        - {name: tmp, mountPath: /tmp}\n",
            )
            .replace(
                "      emptyDir: {}",
                "      emptyDir: {}\n    - name: tmp\n      emptyDir: {}",
            )
            .replace(volume, &format!("hostPath: {{path: {}, type: Directory}}", cache.display()))
            .replace("name: mnist-node-cache", &format!("name: {name}"))
            .replace("spec:\n  securityContext:", "spec:\n  hostNetwork: true\n  restartPolicy: Never\n  securityContext:")
    };
    let blob_gets = || {
        reg.log()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains("/blobs/"))
            .count()
    };
    let mut gets = vec![];
    for name in ["first", "second"] {
        let (code, logs) = play_and_wait(
            &podman,
            work.path(),
            name,
            &pod(name),
            &format!("{name}-server"),
        );
        assert_reads_digits(&code, &logs);
        podman.ok(&["pod", "rm", "-f", name], work.path());
        gets.push(blob_gets());
    }
    assert!(gets[0] > 0, "the first pod downloaded the model");
    assert_eq!(gets[1], gets[0], "the second pod downloaded blobs");
    let manifest = http_get(
        &reg.addr,
        &format!("/v2/models/mnist-ovms/manifests/{digest}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(reg.blob_gets(layer), 1, "one download for the node");
}

/// A real runtime reads what ocimodel installed (the seed 003 workflow):
/// the seed's `mnist.onnx` in OpenVINO Model Server's versioned layout
/// (`1/model.onnx`), pushed as a modelcar with no shell, installed by the
/// ocimodel init container as UID 1000930000, then loaded by OpenVINO in
/// the server container as UID 1000940000 (group 0, read-only root, no
/// capabilities), which must read three drawn digits right. The server is
/// the servers' image (see `server_image_store`).
#[test]
fn openvino_loads_the_installed_model_in_a_pod() {
    let podman = Podman::new();
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let car_ref = format!("{}/models/mnist-ovms:v1", reg.addr);
    push_mnist_modelcar(&reg, work.path(), &car_ref, &[]);
    build_ocimodel_image(&podman, work.path());
    let init = ocimodel_init(&format!("ocimodel://{car_ref}"), &reg.addr);
    let pod = openvino_pod("ovms", 1000940000, &init, "emptyDir: {}");
    let (code, logs) = play_and_wait(&podman, work.path(), "ovms", &pod, "ovms-server");
    assert_reads_digits(&code, &logs);
    assert_runs_as(&podman, "ovms-server", "1000940000:0", work.path());
    podman.ok(&["pod", "rm", "-f", "ovms"], work.path());
}

/// A pod whose `server` container loads `/mnt/models/1/model.onnx` with
/// OpenVINO (tests/support/openvino_classify.py in the servers' image); see
/// [`server_pod`].
fn openvino_pod(name: &str, uid: u32, init: &str, models: &str) -> String {
    server_pod(name, "server", OPENVINO_SERVER, uid, init, models)
}

/// A pod whose container `container` (`server`: its image, command and env
/// as YAML) reads the `models` volume at `/mnt/models` as `uid` in group 0
/// with a read-only root and no capabilities. `init`: init containers (YAML
/// under `spec:`, or empty); `models`: the volume's source (`emptyDir: {}`,
/// a hostPath). The pod runs as 1000930000 unless a container says
/// otherwise.
fn server_pod(
    name: &str,
    container: &str,
    server: &str,
    uid: u32,
    init: &str,
    models: &str,
) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  restartPolicy: Never
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000930000
    runAsGroup: 0
{init}  containers:
    - name: {container}
{server}
      volumeMounts:
        - {{name: models, mountPath: /mnt/models, readOnly: true}}
        - {{name: tmp, mountPath: /tmp}}
      securityContext:
        runAsUser: {uid}
        runAsGroup: 0
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{drop: ["ALL"]}}
  volumes:
    - name: models
      {models}
    - name: tmp
      emptyDir: {{}}
"#
    )
}

/// The server's digits must be right; its log is the failure message.
#[track_caller]
fn assert_reads_digits(code: &str, logs: &str) {
    assert_eq!(code, "0", "the model server failed:\n{logs}");
    assert!(
        logs.contains(r#"{"0": 0, "1": 1, "7": 7}"#),
        "OpenVINO read the digits wrong:\n{logs}"
    );
}

/// Rootful podman on the storage at `graph`, the way it runs on these
/// machines (Debian 12, podman 4.3): runc, since crun fails in their hybrid
/// cgroup mode, cgroupfs as the cgroup manager, and overlay storage.
fn podman(conf: &Path, graph: &Path, runroot: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(graph)
        .arg("--runroot")
        .arg(runroot)
        .args([
            "--runtime",
            "runc",
            "--cgroup-manager=cgroupfs",
            "--storage-driver",
            "overlay",
        ])
        .env("CONTAINERS_CONF", conf);
    cmd
}

/// The model servers' image `localhost/model-servers:e2e`
/// (tests/support/server_image.sh: Debian bookworm from debootstrap,
/// `openvino`, `kserve` and `onnxruntime` from PyPI, the server scripts),
/// imported with `podman import` into an image store under
/// target/test-deps named by the hash of what makes it. Made once (about
/// 2 minutes), kept between test runs, and shared read-only by every test's
/// podman (`overlay.imagestore`), so no test copies its 800 MB.
fn server_image_store(conf: &Path, scratch: &Path) -> &'static Path {
    static STORE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    STORE.get_or_init(|| {
        let support = repo_root().join("tests/support");
        let recipe: Vec<u8> = ["server_image.sh", "openvino_classify.py", "kserve_mnist.py"]
            .iter()
            .flat_map(|f| fs::read(support.join(f)).unwrap())
            .collect();
        let deps = repo_root().join("target/test-deps");
        let store = deps.join(format!("server-store-{}", &sha256_hex(&recipe)[..16]));
        let complete = store.join("complete");
        if complete.exists() {
            return store;
        }
        // Earlier recipes' stores, and a half-made one, go.
        fs::create_dir_all(&deps).unwrap();
        for old in fs::read_dir(&deps).unwrap().flatten() {
            if old
                .file_name()
                .to_string_lossy()
                .starts_with("server-store-")
            {
                fs::remove_dir_all(old.path()).unwrap();
            }
        }
        let tar = deps.join("server-rootfs.tar");
        let out = Command::new("sh")
            .arg(support.join("server_image.sh"))
            .arg(&tar)
            .output()
            .unwrap();
        assert!(
            out.status.success() && tar.exists(),
            "building the servers' image failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let imported = podman(conf, &store, &scratch.join("store-run"))
            .args([
                "import",
                "-q",
                "--change",
                "ENV PATH=/usr/local/bin:/usr/bin:/bin",
                "--change",
                "ENV PYTHONPATH=/opt/site",
                tar.to_str().unwrap(),
                SERVER_IMAGE,
            ])
            .output()
            .unwrap();
        assert!(imported.status.success(), "podman import: {imported:?}");
        fs::remove_file(&tar).unwrap();
        fs::write(&complete, "").unwrap();
        store
    })
}

const SERVER_IMAGE: &str = "localhost/model-servers:e2e";

/// A drawn digit (0, 1 or 7) as the 28×28 values 0..1 the seed's network
/// reads (the same drawings as tests/support/openvino_classify.py).
fn drawn_digit(d: u8) -> Vec<f32> {
    let mut img = vec![0f32; 28 * 28];
    let mut set = |y: usize, x: usize| img[y * 28 + x] = 1.0;
    match d {
        0 => {
            for y in 0..28 {
                for x in 0..28 {
                    let (dy, dx) = (y as f32 - 14.0, (x as f32 - 14.0) * 1.3);
                    let r = (dy * dy + dx * dx).sqrt();
                    if r > 6.0 && r < 10.0 {
                        set(y, x);
                    }
                }
            }
        }
        1 => (4..24).for_each(|y| (13..16).for_each(|x| set(y, x))),
        7 => {
            (5..8).for_each(|y| (7..21).for_each(|x| set(y, x)));
            for y in 8..24 {
                let c = 20 - (y - 8) / 2;
                (c - 1..c + 2).for_each(|x| set(y, x));
            }
        }
        _ => unreachable!(),
    }
    img
}

/// The seed 000 workflow in a pod: the ORAS artifact of `mnist.onnx`
/// installed by the ocimodel init container (UID 1000930000), served by
/// KServe's Python model server with ONNX Runtime (UID 1000940000, read-only
/// root, no capabilities), which answers V2 `infer` requests over HTTP with
/// the right digit for three drawn inputs.
#[test]
fn kserve_model_server_answers_v2_infer_in_a_pod() {
    let podman = Podman::new();
    let (reg, digest) = Registry::with_mnist();
    let work = tempfile::tempdir().unwrap();
    build_ocimodel_image(&podman, work.path());
    let port = free_port();
    let server = format!(
        r#"      image: {SERVER_IMAGE}
      command: ["python3", "/opt/serve/kserve_mnist.py", "/mnt/models/{MNIST_TITLE}",
                "--http_port", "{port}", "--enable_grpc", "false"]
      env:
        - {{name: HOME, value: /tmp}}"#
    );
    let init = ocimodel_init(
        &format!("ocimodel://{}/models/mnist@{digest}", reg.addr),
        &reg.addr,
    );
    let pod = server_pod(
        "kserve-mnist",
        "kserve-container",
        &server,
        1000940000,
        &init,
        "emptyDir: {}",
    );
    let file = work.path().join("kserve.yaml");
    fs::write(&file, pod).unwrap();
    podman.ok(&["kube", "play", file.to_str().unwrap()], work.path());
    let logs = || podman.logs("kserve-mnist-kserve-container", work.path());
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if TcpStream::connect(&addr).is_ok()
            && http_get(&addr, "/v2/models/mnist/ready", &[]).status == 200
        {
            break;
        }
        let state = podman.ok(
            &[
                "inspect",
                "kserve-mnist-kserve-container",
                "--format",
                "{{.State.Status}}",
            ],
            work.path(),
        );
        assert!(
            state.trim() == "running" && std::time::Instant::now() < deadline,
            "the model server is {} and not ready:\n{}",
            state.trim(),
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    for d in [0u8, 1, 7] {
        let body = serde_json::json!({"inputs": [{
            "name": "x", "shape": [1, 28, 28], "datatype": "FP32", "data": drawn_digit(d)
        }]});
        let resp = http_request(
            &addr,
            "POST",
            "/v2/models/mnist/infer",
            &[("Content-Type", "application/json")],
            &serde_json::to_vec(&body).unwrap(),
        );
        assert_eq!(
            resp.status,
            200,
            "{}\n{}",
            String::from_utf8_lossy(&resp.body),
            logs()
        );
        let answer: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(answer["outputs"][0]["data"][0], d, "{answer}");
    }
    assert_runs_as(
        &podman,
        "kserve-mnist-kserve-container",
        "1000940000:0",
        work.path(),
    );
    podman.ok(&["pod", "rm", "-f", "kserve-mnist"], work.path());
}

/// The ocimodel init container (YAML under `spec:`) installing `uri` into
/// the `models` volume, with `insecure` a plain-HTTP registry.
fn ocimodel_init(uri: &str, insecure: &str) -> String {
    format!(
        r#"  initContainers:
    - name: ocimodel
      image: localhost/ocimodel:e2e
      args: ["{uri}", "/mnt/models"]
      env:
        - {{name: OCIMODEL_INSECURE_REGISTRIES, value: "{insecure}"}}
      volumeMounts:
        - {{name: models, mountPath: /mnt/models}}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{drop: ["ALL"]}}
"#
    )
}

/// The OpenVINO server container's image, command and env (YAML).
const OPENVINO_SERVER: &str = "      image: localhost/model-servers:e2e\n      command: [\"python3\", \"/opt/serve/classify.py\", \"/mnt/models\"]\n      env:\n        - {name: HOME, value: /tmp}";

/// The container ran as `user` (`uid:gid`) on a read-only root filesystem.
#[track_caller]
fn assert_runs_as(podman: &Podman, container: &str, user: &str, work: &Path) {
    let seen = podman.ok(
        &[
            "inspect",
            container,
            "--format",
            "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
        ],
        work,
    );
    assert_eq!(seen.trim(), format!("{user} true"), "{container}");
}

/// manifests/examples/pod-sidecar.yaml, ocimodel as a native sidecar: the server
/// starts only once the sidecar's startupProbe (`/startupz`) says 200, and
/// then serves. podman 4.3 runs no restartable init containers, so the test
/// plays the kubelet's part (tests/support/sidecar_pods.py): the sidecar runs
/// as an ordinary container, the test runs its startupProbe as declared, and
/// plays the pod's containers only after it succeeds. The probe must hold
/// the server back while the model is not in the registry, then while it is
/// there unsigned (the manifest requires a signature by the key in the
/// mounted ConfigMap); the signature comes, the probe says 200, and OpenVINO
/// in the server (UID 1000940000) reads the digits from what the sidecar
/// installed. SIGTERM then stops the sidecar with exit code 0.
#[test]
fn native_sidecar_holds_the_server_until_startupz_says_installed() {
    let podman = Podman::new();
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    build_ocimodel_image(&podman, work);
    let public = ec_keypair(work, "k");
    let models = work.join("models");
    fs::create_dir(&models).unwrap();
    std::os::unix::fs::chown(&models, Some(1000930000), Some(0)).unwrap();
    fs::set_permissions(&models, fs::Permissions::from_mode(0o770)).unwrap();

    let port = free_port();
    let adapt = serde_json::json!({
        "images": {"quay.io/ocimodel/ocimodel:0.1.0": "localhost/ocimodel:e2e"},
        "model": ["registry.example.com", reg.addr],
        "registry": reg.addr,
        "port": port,
        "models": models,
        // The OVMS stand-in, run with the manifest's own args.
        "server": {"image": SERVER_IMAGE, "command": ["python3", "/opt/serve/classify.py"],
                   "env": [{"name": "HOME", "value": "/tmp"}]},
        "server_uid": 1000940000,
    });
    fs::write(work.join("adapt.json"), adapt.to_string()).unwrap();
    ovms_standin(&example("pod-sidecar.yaml"), "pod-sidecar.yaml");
    let split = Command::new("python3")
        .arg(repo_root().join("tests/support/sidecar_pods.py"))
        .arg(repo_root().join("manifests/examples/pod-sidecar.yaml"))
        .args(["adapt.json", "sidecar.yaml", "servers.yaml"])
        .current_dir(work)
        .output()
        .unwrap();
    assert!(split.status.success(), "{split:?}");
    let probe: serde_json::Value = serde_json::from_slice(&split.stdout).unwrap();
    let (path, period) = (
        probe["path"].as_str().unwrap().to_string(),
        std::time::Duration::from_secs(probe["periodSeconds"].as_u64().unwrap()),
    );
    assert_eq!((path.as_str(), period.as_secs()), ("/startupz", 2));

    let cm = signing_key_configmap(work, &public);
    podman.ok(
        &[
            "kube",
            "play",
            "--configmap",
            cm.to_str().unwrap(),
            "sidecar.yaml",
        ],
        work,
    );
    let sidecar = "mnist-sidecar-ocimodel";
    let sidecar_log = || podman.logs(sidecar, work);
    // The kubelet's startupProbe: an HTTP GET every periodSeconds; a refused
    // connection is a failure like any status outside 200..400.
    let addr = format!("127.0.0.1:{port}");
    let probe_once = || -> (u16, String) {
        if TcpStream::connect(&addr).is_err() {
            return (0, "connection refused".into());
        }
        let r = http_get(&addr, &path, &[]);
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };
    // Probes until one says 200 or `until` holds of a failed one; returns
    // the last answer.
    let probe_until = |until: &dyn Fn(&str) -> bool| -> (u16, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let (status, body) = probe_once();
            if status == 200 || (status != 0 && until(&body)) {
                return (status, body);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the startupProbe still fails ({status} {body}):\n{}",
                sidecar_log()
            );
            std::thread::sleep(period);
        }
    };
    let servers_started = || {
        podman
            .run(&["pod", "exists", "mnist-sidecar-servers"], work)
            .status
            .success()
    };

    // Nothing in the registry yet: the probe fails and says why.
    let (status, body) = probe_until(&|b| b.contains("failed"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("mnist-ovms"), "{body}");
    assert!(!servers_started());
    // The model, unsigned: still 503, now for the signature.
    let digest = push_pinned_modelcar(&reg, work);
    assert!(example("pod-sidecar.yaml").contains(&digest));
    let (status, body) = probe_until(&|b| b.contains("signature"));
    assert_eq!(status, 503, "an unsigned model passed the probe: {body}");
    assert!(
        !models.join(".ocimodel.json").exists() && !models.join("1/model.onnx").exists(),
        "an unverified model was installed"
    );
    // Signed: the probe says 200 within the sidecar's retry backoff.
    sign_legacy(&reg, work, "models/mnist-ovms", &digest);
    let (status, body) = probe_until(&|_| false);
    assert_eq!(status, 200, "{body}");
    assert_eq!(sha256_file(&models.join("1/model.onnx")), MNIST_SHA256);

    // The kubelet starts the pod's containers now; the server reads the digits.
    podman.ok(&["kube", "play", "servers.yaml"], work);
    let (code, logs) = podman.wait("mnist-sidecar-servers-server", work);
    assert_reads_digits(&code, &logs);
    assert_runs_as(
        &podman,
        "mnist-sidecar-servers-server",
        "1000940000:0",
        work,
    );
    assert_runs_as(&podman, sidecar, "1000930000:0", work);
    // Still ready after serving; SIGTERM stops the sidecar cleanly.
    assert_eq!(http_get(&addr, "/readyz", &[]).status, 200);
    podman.ok(&["stop", "-t", "10", sidecar], work);
    let exit = podman.ok(
        &["inspect", sidecar, "--format", "{{.State.ExitCode}}"],
        work,
    );
    assert_eq!(exit.trim(), "0", "{}", sidecar_log());
    podman.ok(&["pod", "rm", "-f", "mnist-sidecar"], work);
    podman.ok(&["pod", "rm", "-f", "mnist-sidecar-servers"], work);
}
