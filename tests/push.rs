//! `ocimodel push` round trips against the real registry, read back by
//! independent clients (skopeo, the oras SDK, modelpack-client) and by
//! ocimodel; OCI layout output; no re-uploads; referrers (the seed's
//! `regctl artifact put` / `artifact list --filter-artifact-type` workflow).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// A small model directory: weights, config, tokenizer, readme, a script.
fn model_dir(root: &Path) {
    fs::create_dir_all(root.join("tokenizer")).unwrap();
    fs::copy(mnist_path(), root.join("model.onnx")).unwrap();
    fs::write(root.join("config.json"), b"{\"layers\": 2}\n").unwrap();
    fs::write(root.join("tokenizer/vocab.txt"), b"a\nb\n").unwrap();
    fs::write(root.join("README.md"), b"# mnist\n").unwrap();
    fs::write(root.join("serve.py"), b"print('hi')\n").unwrap();
}

fn files_of(dir: &Path) -> Vec<(String, String)> {
    tree(dir)
        .into_iter()
        .filter(|(_, k)| *k == 'f')
        .map(|(p, _)| {
            let hash = sha256_file(&dir.join(&p));
            (p, hash)
        })
        .collect()
}

fn manifest_of(reg: &Registry, repo: &str, reference: &str) -> serde_json::Value {
    let r = http_get(
        &reg.addr,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn modelpack_round_trip() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("model");
    model_dir(&src);
    let digest = reg.ocimodel_push(&[
        src.to_str().unwrap(),
        &format!("{}/models/mp:v1", reg.addr),
        "--annotation",
        "org.opencontainers.image.title=mnist",
    ]);
    assert_eq!(reg.digest_of("models/mp", "v1"), digest);

    let m = manifest_of(&reg, "models/mp", "v1");
    assert_eq!(
        m["artifactType"],
        "application/vnd.cncf.model.manifest.v1+json"
    );
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.cncf.model.config.v1+json"
    );
    let types: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    // Weights as one raw layer each; small files grouped per kind.
    assert_eq!(
        types,
        vec![
            "application/vnd.cncf.model.weight.v1.raw",
            "application/vnd.cncf.model.code.v1.tar",
            "application/vnd.cncf.model.doc.v1.tar",
            "application/vnd.cncf.model.weight.config.v1.tar",
        ]
    );
    assert_eq!(
        m["layers"][0]["annotations"]["org.cncf.model.filepath"],
        "model.onnx"
    );
    assert_eq!(
        m["layers"][0]["digest"],
        format!("sha256:{MNIST_SHA256}").as_str()
    );

    // The independent client validates the artifact against the spec's schemas.
    let theirs = work.path().join("theirs");
    modelpack_pull(&reg, "models/mp:v1", &theirs);
    assert_eq!(files_of(&theirs), files_of(&src));

    let ours = work.path().join("ours");
    reg.pull("models/mp:v1", &ours).assert_ok();
    assert_eq!(files_of(&ours), files_of(&src));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(ours.join(".ocimodel/config.json")).unwrap()).unwrap();
    assert_eq!(config["descriptor"]["name"], "mnist");
    assert_eq!(config["config"]["format"], "onnx");
    assert_eq!(config["modelfs"]["diffIds"].as_array().unwrap().len(), 4);
}

#[test]
fn oras_round_trip_and_no_reupload() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("model");
    model_dir(&src);
    let target = format!("{}/models/mnist:v1", reg.addr);
    reg.ocimodel_push(&[
        src.to_str().unwrap(),
        &target,
        "--format",
        "oras",
        "--artifact-type",
        "application/vnd.model.type",
        "--annotation",
        "description=MNIST digits",
        "--annotation",
        "model_format_name=onnx",
        "--annotation",
        "model_format_version=1",
    ]);
    let m = manifest_of(&reg, "models/mnist", "v1");
    assert_eq!(m["artifactType"], "application/vnd.model.type");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(m["annotations"]["description"], "MNIST digits");
    assert_eq!(m["annotations"]["model_format_name"], "onnx");
    assert!(m["annotations"]["org.opencontainers.image.created"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let titles: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["annotations"]["org.opencontainers.image.title"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        titles,
        vec![
            "README.md",
            "config.json",
            "model.onnx",
            "serve.py",
            "tokenizer/vocab.txt"
        ]
    );

    // The oras SDK pulls it (titles with directories included).
    let theirs = work.path().join("theirs");
    fs::create_dir_all(&theirs).unwrap();
    let script = format!(
        "import oras.client\nc = oras.client.OrasClient(hostname='{0}', insecure=True)\nc.pull(target='{0}/models/mnist:v1', outdir='{1}')\n",
        reg.addr,
        theirs.display()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oras pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files_of(&theirs), files_of(&src));
    let ours = work.path().join("ours");
    reg.pull("models/mnist:v1", &ours).assert_ok();
    assert_eq!(files_of(&ours), files_of(&src));

    // Pushing again uploads no blob: the registry has them all.
    let uploads = |log: &str| {
        log.lines()
            .filter(|l| l.contains("\"PUT /v2/models/mnist/blobs/uploads/"))
            .count()
    };
    let before = uploads(&reg.log());
    assert_eq!(before, 6, "5 files and the empty config");
    reg.ocimodel_push(&[
        src.to_str().unwrap(),
        &format!("{}/models/mnist:v2", reg.addr),
        "--format",
        "oras",
    ]);
    assert_eq!(uploads(&reg.log()), before, "nothing re-uploaded");
}

#[test]
fn modelcar_round_trip_with_skopeo() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("model");
    model_dir(&src);
    fs::set_permissions(
        src.join("serve.py"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    for (tag, compress) in [("plain", "none"), ("gz", "gzip"), ("zst", "zstd")] {
        let target = format!("{}/models/car:{tag}", reg.addr);
        reg.ocimodel_push(&[
            src.to_str().unwrap(),
            &target,
            "--format",
            "modelcar",
            "--compress",
            compress,
            "--platform",
            "linux/arm64",
        ]);
        let out = Command::new("skopeo")
            .args([
                "inspect",
                "--tls-verify=false",
                &format!("docker://{target}"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["Architecture"], "arm64");
        assert_eq!(info["Os"], "linux");
        assert_eq!(info["Layers"].as_array().unwrap().len(), 1);

        // skopeo copies it into a layout (checking every digest); unpack that and the registry copy.
        let layout = work.path().join(format!("layout-{tag}"));
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--dest-oci-accept-uncompressed-layers",
            ])
            .arg(format!("docker://{target}"))
            .arg(format!("oci:{}:v1", layout.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (name, uri) in [
            (
                "from-layout",
                format!("oci-layout://{}:v1", layout.display()),
            ),
            ("from-registry", target.clone()),
        ] {
            let dest = work.path().join(format!("{tag}-{name}"));
            Ocimodel::for_registry(&reg)
                .run(&["unpack", &uri, dest.to_str().unwrap()])
                .assert_ok();
            assert_eq!(files_of(&dest), files_of(&src), "{tag} {name}");
            assert_eq!(marker(&dest)["format"], "image");
        }
    }
    // Inside the image: group-0 readable modes, owner root, executables kept executable.
    let layer_digest = manifest_of(&reg, "models/car", "plain")["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = http_get(
        &reg.addr,
        &format!("/v2/models/car/blobs/{layer_digest}"),
        &[],
    )
    .body;
    let mut archive = tar::Archive::new(&blob[..]);
    let mut seen = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        seen.push((
            e.path().unwrap().display().to_string(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
        ));
    }
    assert!(seen.contains(&("models/".into(), 0o775, 0, 0)), "{seen:?}");
    assert!(
        seen.contains(&("models/model.onnx".into(), 0o664, 0, 0)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("models/serve.py".into(), 0o775, 0, 0)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("models/tokenizer/".into(), 0o775, 0, 0)),
        "{seen:?}"
    );
}

#[test]
fn oci_layout_output() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("model");
    model_dir(&src);
    let layout = work.path().join("layout");
    let reg = Registry::start(Auth::None);
    let a = reg.ocimodel_push(&[
        src.to_str().unwrap(),
        &format!("oci-layout://{}:v1", layout.display()),
        "--format",
        "oras",
    ]);
    let b = reg.ocimodel_push(&[
        src.to_str().unwrap(),
        "v2",
        "--oci-layout",
        layout.to_str().unwrap(),
        "--format",
        "modelcar",
    ]);
    assert_ne!(a, b);
    for (tag, format) in [("v1", "oras"), ("v2", "image")] {
        let dest = work.path().join(tag);
        Ocimodel::new()
            .run(&[
                "unpack",
                &format!("oci-layout://{}:{tag}", layout.display()),
                dest.to_str().unwrap(),
            ])
            .assert_ok();
        assert_eq!(files_of(&dest), files_of(&src));
        assert_eq!(marker(&dest)["format"], format);
    }
    // A valid layout for other tools too: skopeo pushes it on.
    reg.skopeo_push(&layout, "v2", "models/from-layout:v2");
    assert_eq!(reg.digest_of("models/from-layout", "v2"), b);
}

/// The seed 000 demo, with ocimodel alone: put a model with annotations and
/// an artifact type, attach lineage to it, list and filter by artifact type,
/// and get it.
#[test]
fn seed_demo_put_list_filter_get() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model/v1.nb20231206162408");
    fs::create_dir_all(&model).unwrap();
    fs::copy(mnist_path(), model.join("mnist.onnx")).unwrap();
    let repo = format!("{}/models/mnist", reg.addr);
    let model_digest = reg.ocimodel_push(&[
        work.path().join("model").to_str().unwrap(),
        &format!("{repo}:v1"),
        "--format",
        "oras",
        "--artifact-type",
        "application/vnd.model.type",
        "--annotation",
        "description=MNIST digits",
        "--annotation",
        "model_format_name=onnx",
        "--annotation",
        "model_format_version=1",
    ]);
    // Lineage: a training-data card and an evaluation report refer to the model.
    for (name, t) in [
        ("dataset", "application/vnd.model.dataset"),
        ("eval", "application/vnd.model.evaluation"),
    ] {
        let dir = work.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("{name}.json")),
            format!("{{\"of\": \"{model_digest}\"}}"),
        )
        .unwrap();
        reg.ocimodel_push(&[
            dir.to_str().unwrap(),
            &repo,
            "--format",
            "oras",
            "--artifact-type",
            t,
            "--subject",
            &format!("{repo}:v1"),
        ]);
    }
    let list = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["referrers".to_string(), "--format".into(), "json".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("{repo}:v1"));
        let run = Ocimodel::for_registry(&reg).run(&args);
        run.assert_ok();
        serde_json::from_slice(&run.out.stdout).unwrap()
    };
    let all = list(&[]);
    assert_eq!(all.len(), 2);
    let evals = list(&["--artifact-type", "application/vnd.model.evaluation"]);
    assert_eq!(evals.len(), 1);
    assert_eq!(evals[0]["artifactType"], "application/vnd.model.evaluation");

    let dest = work.path().join("get");
    reg.pull("models/mnist:v1", &dest).assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    let run =
        Ocimodel::for_registry(&reg).run(&["inspect", "--format", "json", &format!("{repo}:v1")]);
    run.assert_ok();
    let report: serde_json::Value = serde_json::from_slice(&run.out.stdout).unwrap();
    assert_eq!(report["artifactType"], "application/vnd.model.type");
    assert_eq!(report["annotations"]["description"], "MNIST digits");
    assert_eq!(report["referrers"].as_array().unwrap().len(), 2);
}

#[test]
fn push_errors() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["push"];
        all.extend_from_slice(args);
        let r = Ocimodel::for_registry(&reg).run(&all);
        (r.out.status.code(), r.stderr())
    };
    let (code, err) = run(&[empty.to_str().unwrap(), &format!("{}/m:v1", reg.addr)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("holds no files to push"), "{err}");
    let (code, err) = run(&[
        empty.to_str().unwrap(),
        &format!("{}/m@sha256:{MNIST_SHA256}", reg.addr),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a digest"), "{err}");
    let (code, err) = run(&[
        empty.to_str().unwrap(),
        &format!("{}/m:v1", reg.addr),
        "--annotation",
        "novalue",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not KEY=VALUE"), "{err}");
}

/// F13: symlinks are followed only inside DIR (or inside a Hugging Face
/// cache repository around a snapshot); one leading elsewhere is refused
/// unless `--follow-symlinks` says so.
#[test]
fn symlinks_leaving_the_model_directory_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let secret = work.path().join("shadow");
    fs::write(&secret, b"root:*:20228:0:99999:7:::").unwrap();
    let model = work.path().join("model");
    fs::create_dir(&model).unwrap();
    fs::write(model.join("weights.bin"), b"weights").unwrap();
    std::os::unix::fs::symlink(&secret, model.join("README.md")).unwrap();
    let push = |dir: &Path, extra: &[&str]| {
        let layout = work.path().join(format!("layout-{}", extra.len()));
        let mut args = vec![
            "push".to_string(),
            dir.display().to_string(),
            "v1".into(),
            "--oci-layout".into(),
            layout.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        (Ocimodel::new().run(&args), layout)
    };
    let (run, layout) = push(&model, &[]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(
        run.stderr().contains("README.md is a symlink to")
            && run
                .stderr()
                .contains("refusing to publish it (pass --follow-symlinks"),
        "{}",
        run.stderr()
    );
    assert!(!layout.exists());
    let (run, _) = push(&model, &["--follow-symlinks"]);
    run.assert_ok();

    // A Hugging Face cache snapshot: every file a link into ../../blobs.
    let repo = work.path().join("hub/models--org--name");
    fs::create_dir_all(repo.join("blobs")).unwrap();
    fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
    fs::write(repo.join("blobs/0a1b"), b"weights").unwrap();
    std::os::unix::fs::symlink(
        "../../blobs/0a1b",
        repo.join("snapshots/abc123/model.safetensors"),
    )
    .unwrap();
    let (run, _) = push(&repo.join("snapshots/abc123"), &[]);
    run.assert_ok();
}

/// #35: pushing an installed DEST ships the model, not ocimodel's
/// bookkeeping (`.ocimodel.json`, `.ocimodel/lock`), so the result pulls
/// back; a log line says what was left out.
#[test]
fn pushing_an_installed_dest_skips_the_bookkeeping() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("model");
    model_dir(&src);
    let installed = work.path().join("installed");
    let layout = work.path().join("layout");
    let first = push_layout(&src, &layout, "oras");
    Ocimodel::new().pull(&first, &installed).assert_ok();
    assert!(installed.join(".ocimodel.json").is_file());
    assert!(installed.join(".ocimodel/lock").is_file());
    for format in ["oras", "modelpack", "modelcar"] {
        let again = work.path().join(format!("again-{format}"));
        let run = Ocimodel::new().run(&[
            "push",
            installed.to_str().unwrap(),
            "v1",
            "--oci-layout",
            again.to_str().unwrap(),
            "--format",
            format,
        ]);
        run.assert_ok();
        assert!(
            run.stderr()
                .contains("not pushing ocimodel's bookkeeping (.ocimodel, .ocimodel.json)"),
            "{}",
            run.stderr()
        );
        let back = work.path().join(format!("back-{format}"));
        Ocimodel::new()
            .pull(&format!("oci-layout://{}:v1", again.display()), &back)
            .assert_ok();
        assert_eq!(files_of(&back), files_of(&src), "{format}");
    }
}
