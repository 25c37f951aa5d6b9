//! Every way people store models in OCI, pushed to a real registry and
//! installed byte for byte: ModelPack (by the independent modelpack-client,
//! and the legacy cnai form per its spec), KitOps, Docker model v0.1/v0.2,
//! ORAS directories; signatures and unknown types refused; file filters that
//! skip downloads; malformed artifacts that install nothing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn weights(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// `modelpack push --layer` arguments for files of `model_dir`, each with its
/// ModelPack media type (none: the client's default, weight raw).
fn layer_args(src: &Path, files: &[(&str, Option<&str>)]) -> Vec<String> {
    files
        .iter()
        .map(|(f, mt)| match mt {
            Some(mt) => format!("{}:application/vnd.cncf.model.{mt}", src.join(f).display()),
            None => src.join(f).display().to_string(),
        })
        .collect()
}

/// modelpack_source_dir's files pushed by modelpack-client as `models/mp:v1`
/// (path, media type suffix); returns the source directory.
fn push_tiny_modelpack(reg: &Registry, work: &Path, files: &[(&str, Option<&str>)]) -> PathBuf {
    let src = work.join("src");
    modelpack_source_dir(&src);
    let config = work.join("config.json");
    write(
        &config,
        br#"{"descriptor":{"name":"tiny"},"config":{"format":"safetensors"}}"#,
    );
    reg.modelpack_push("models/mp:v1", &config, &layer_args(&src, files));
    src
}

/// A small model directory, as a user would have it before `modelpack push`.
fn modelpack_source_dir(root: &Path) {
    write(&root.join("model.safetensors"), &weights(200_000, 1));
    write(&root.join("config.json"), b"{\"hidden\": 8}\n");
    write(&root.join("tokenizer/vocab.txt"), b"a\nb\n");
    write(&root.join("tokenizer/merges.txt"), b"a b\n");
    write(&root.join("README.md"), b"# tiny\n");
}

#[test]
fn modelpack_from_the_independent_client() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    modelpack_source_dir(&src);
    let config = work.path().join("config.json");
    write(
        &config,
        br#"{"descriptor":{"name":"tiny","version":"1"},"config":{"format":"safetensors"}}"#,
    );
    let digest = reg.modelpack_push(
        "models/mp:v1",
        &config,
        &layer_args(
            &src,
            &[
                ("model.safetensors", None),
                ("config.json", Some("weight.config.v1.raw")),
                ("tokenizer", Some("weight.config.v1.raw")),
                ("README.md", Some("doc.v1.raw")),
            ],
        ),
    );
    let dest = work.path().join("ours");
    reg.pull("models/mp:v1", &dest).assert_ok();
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer/vocab.txt",
        "tokenizer/merges.txt",
        "README.md",
    ] {
        assert_eq!(
            fs::read(dest.join(f)).unwrap(),
            fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(model_files(&dest).len(), 5);
    let m = marker(&dest);
    assert_eq!(m["format"], "modelpack");
    assert_eq!(m["digest"], digest.as_str());
    let kept: serde_json::Value =
        serde_json::from_slice(&fs::read(dest.join(".ocimodel/config.json")).unwrap()).unwrap();
    assert_eq!(kept["descriptor"]["name"], "tiny");
    assert_eq!(kept["modelfs"]["diffIds"].as_array().unwrap().len(), 4);

    // The independent client's own pull gives the same tree.
    let theirs = work.path().join("theirs");
    modelpack_pull(&reg, "models/mp:v1", &theirs);
    assert_eq!(tree(&theirs), tree(&dest));
}

#[test]
fn modelpack_legacy_cnai_with_compressed_tars() {
    let reg = Registry::start(Auth::None);
    let w = weights(50_000, 2);
    let work = tempfile::tempdir().unwrap();
    let wfile = work.path().join("w.bin");
    write(&wfile, &w);
    // model-spec v0.0.6 names (modelpack/model-spec, docs/spec.md).
    reg.push_artifact(
        "models/cnai:v1",
        &json!({
            "artifactType": "application/vnd.cnai.model.manifest.v1+json",
            "config": {"mediaType": "application/vnd.cnai.model.config.v1+json",
                       "json": {"descriptor": {"name": "legacy"}, "modelfs": {"type": "layers", "diffIds": []}}},
            "layers": [
                {"mediaType": "application/vnd.cnai.model.weight.v1.raw", "file": wfile,
                 "annotations": {"org.cnai.model.filepath": "weights/w.bin"}},
                {"mediaType": "application/vnd.cnai.model.doc.v1.tar+zstd", "compress": "zstd",
                 "tar": [{"name": "docs/README.md", "data": "legacy\n"}]},
                {"mediaType": "application/vnd.cnai.model.code.v1.tar+gzip", "compress": "gzip",
                 "tar": [{"name": "code", "type": "dir"}, {"name": "code/run.py", "data": "print(1)\n"}]}
            ]
        }),
    );
    let dest = work.path().join("out");
    reg.pull("models/cnai:v1", &dest).assert_ok();
    assert_eq!(fs::read(dest.join("weights/w.bin")).unwrap(), w);
    assert_eq!(fs::read(dest.join("docs/README.md")).unwrap(), b"legacy\n");
    assert_eq!(fs::read(dest.join("code/run.py")).unwrap(), b"print(1)\n");
    assert_eq!(marker(&dest)["format"], "modelpack");
}

fn kitops_spec() -> serde_json::Value {
    // kitops pkg/artifact/kitfile.go and pkg/lib/kitfile/layer.go: one tar per
    // Kitfile entry, entries named from the context root, uid 1000, gid 0.
    json!({
        "config": {"mediaType": "application/vnd.kitops.modelkit.config.v1+json", "json": {
            "manifestVersion": "1.0.0",
            "package": {"name": "tiny", "version": "1.0.0"},
            "model": {"name": "tiny", "path": "models/tiny.gguf", "format": "gguf", "digest": "$digest:0"},
            "code": [{"path": "src", "digest": "$digest:1"}],
            "datasets": [{"name": "eval", "path": "data/eval.csv", "digest": "$digest:2"}],
            "docs": [{"path": "README.md", "digest": "$digest:3"}]
        }},
        "annotations": {"ml.kitops.modelkit.cli-version": "1.7.0"},
        "layers": [
            {"mediaType": "application/vnd.kitops.modelkit.model.v1.tar+gzip", "compress": "gzip",
             "tar": [{"name": "models", "type": "dir"}, {"name": "models/tiny.gguf", "data": "GGUF-weights"}]},
            {"mediaType": "application/vnd.kitops.modelkit.code.v1.tar",
             "tar": [{"name": "src", "type": "dir"}, {"name": "src/serve.py", "data": "serve()\n"}]},
            {"mediaType": "application/vnd.kitops.modelkit.dataset.v1.tar+gzip", "compress": "gzip",
             "tar": [{"name": "data/eval.csv", "data": "x,y\n1,2\n"}]},
            {"mediaType": "application/vnd.kitops.modelkit.docs.v1.tar",
             "tar": [{"name": "README.md", "data": "# tiny kit\n"}]}
        ]
    })
}

#[test]
fn kitops_modelkit_and_filter() {
    let reg = Registry::start(Auth::None);
    reg.push_artifact("models/kit:v1", &kitops_spec());
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("all");
    reg.pull("models/kit:v1", &dest).assert_ok();
    assert_eq!(
        fs::read(dest.join("models/tiny.gguf")).unwrap(),
        b"GGUF-weights"
    );
    assert_eq!(fs::read(dest.join("src/serve.py")).unwrap(), b"serve()\n");
    assert_eq!(fs::read(dest.join("data/eval.csv")).unwrap(), b"x,y\n1,2\n");
    assert_eq!(fs::read(dest.join("README.md")).unwrap(), b"# tiny kit\n");
    let kitfile: serde_json::Value =
        serde_json::from_slice(&fs::read(dest.join("Kitfile")).unwrap()).unwrap();
    assert_eq!(kitfile["model"]["path"], "models/tiny.gguf");
    assert_eq!(marker(&dest)["format"], "kitops");

    // Like `kit unpack --filter model,docs`: the other layers are not downloaded.
    let manifest: serde_json::Value = serde_json::from_slice(
        &http_get(
            &reg.addr,
            "/v2/models/kit/manifests/v1",
            &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        )
        .body,
    )
    .unwrap();
    let code_digest = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let before = reg.blob_gets(&code_digest);
    let dest = work.path().join("filtered");
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_KIT_FILTER", "model,docs")
        .pull(&format!("{}/models/kit:v1", reg.addr), &dest)
        .assert_ok();
    assert_eq!(
        tree(&dest).into_keys().collect::<Vec<_>>(),
        vec!["Kitfile", "README.md", "models", "models/tiny.gguf"]
    );
    assert_eq!(
        reg.blob_gets(&code_digest),
        before,
        "a filtered-out layer was downloaded"
    );
}

#[test]
fn docker_model_v01_and_v02() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let shard = |n: u32| {
        let p = work.path().join(format!("s{n}"));
        write(&p, &weights(30_000, n));
        p
    };
    let (s1, s2) = (shard(1), shard(2));
    // docker/model-runner pkg/distribution/types/config.go media types.
    reg.push_artifact(
        "models/dmr:v01",
        &json!({
            "config": {"mediaType": "application/vnd.docker.ai.model.config.v0.1+json",
                       "json": {"config": {"format": "gguf"}, "rootfs": {"type": "layers", "diff_ids": []}}},
            "layers": [
                {"mediaType": "application/vnd.docker.ai.gguf.v3", "file": s1},
                {"mediaType": "application/vnd.docker.ai.gguf.v3", "file": s2},
                {"mediaType": "application/vnd.docker.ai.license", "data": "MIT\n"},
                {"mediaType": "application/vnd.docker.ai.chat.template.jinja", "data": "{{ x }}"}
            ]
        }),
    );
    let dest = work.path().join("v01");
    reg.pull("models/dmr:v01", &dest).assert_ok();
    assert_eq!(
        tree(&dest).into_keys().collect::<Vec<_>>(),
        vec![
            "LICENSE",
            "model-00001-of-00002.gguf",
            "model-00002-of-00002.gguf",
            "template.jinja"
        ]
    );
    assert_eq!(
        fs::read(dest.join("model-00002-of-00002.gguf")).unwrap(),
        fs::read(&s2).unwrap()
    );
    assert_eq!(marker(&dest)["format"], "docker-model");

    reg.push_artifact(
        "models/dmr:v02",
        &json!({
            "config": {"mediaType": "application/vnd.docker.ai.model.config.v0.2+json",
                       "json": {"config": {"format": "safetensors"}}},
            "layers": [
                {"mediaType": "application/vnd.docker.ai.safetensors", "file": s1,
                 "annotations": {"org.cncf.model.filepath": "weights/model.safetensors"}},
                {"mediaType": "application/vnd.docker.ai.model.file", "data": "{}",
                 "annotations": {"org.cncf.model.filepath": "tokenizer/tokenizer.json"}}
            ]
        }),
    );
    let dest = work.path().join("v02");
    reg.pull("models/dmr:v02", &dest).assert_ok();
    assert_eq!(
        fs::read(dest.join("weights/model.safetensors")).unwrap(),
        fs::read(&s1).unwrap()
    );
    assert_eq!(
        fs::read(dest.join("tokenizer/tokenizer.json")).unwrap(),
        b"{}"
    );
}

fn oras_dir_spec(title: &str, entries: serde_json::Value) -> serde_json::Value {
    // oras-go content/file: tar+gzip of the directory, entries prefixed with its
    // name, title + io.deis.oras.content.{digest,unpack} annotations.
    json!({
        "artifactType": "application/vnd.acme.model.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json"},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "compress": "gzip", "oras_dir": true,
             "annotations": {"org.opencontainers.image.title": title}, "tar": entries},
            {"mediaType": "application/octet-stream", "data": "weights",
             "annotations": {"org.opencontainers.image.title": "model.bin"}}
        ]
    })
}

#[test]
fn oras_directory_artifact() {
    let reg = Registry::start(Auth::None);
    reg.push_artifact(
        "models/orasdir:v1",
        &oras_dir_spec(
            "tokenizer",
            json!([{"name": "tokenizer", "type": "dir"}, {"name": "tokenizer/vocab.txt", "data": "v\n"},
                   {"name": "tokenizer/sub/merges.txt", "data": "m\n"}]),
        ),
    );
    let dest = tempfile::tempdir().unwrap();
    reg.pull("models/orasdir:v1", dest.path()).assert_ok();
    assert_eq!(
        fs::read(dest.path().join("tokenizer/vocab.txt")).unwrap(),
        b"v\n"
    );
    assert_eq!(
        fs::read(dest.path().join("tokenizer/sub/merges.txt")).unwrap(),
        b"m\n"
    );
    assert_eq!(fs::read(dest.path().join("model.bin")).unwrap(), b"weights");

    // A directory layer whose entries leave its directory is refused.
    reg.push_artifact(
        "models/orasdir:bad",
        &oras_dir_spec("tokenizer", json!([{"name": "elsewhere/x", "data": "x"}])),
    );
    let dest = tempfile::tempdir().unwrap();
    reg.pull("models/orasdir:bad", dest.path())
        .assert_fails_with(&["outside 'tokenizer'"]);
    assert!(model_files(dest.path()).is_empty());
}

#[test]
fn signatures_and_unknown_types() {
    let reg = Registry::start(Auth::None);
    reg.push_artifact(
        "models/sig:v1",
        &json!({
            "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json"},
            "layers": [{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "data": "{}"}]
        }),
    );
    let dest = tempfile::tempdir().unwrap();
    reg.pull("models/sig:v1", dest.path())
        .assert_fails_with(&["signature or attestation", "not a model"]);
    assert!(model_files(dest.path()).is_empty());

    let digest = reg.push_artifact(
        "models/odd:v1",
        &json!({
            "artifactType": "application/vnd.acme.weights.v1",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json"},
            "layers": [{"mediaType": "application/x-acme", "data": "payload"}]
        }),
    );
    assert!(digest.starts_with("sha256:"));
    let payload = format!("sha256:{}", sha256_hex(b"payload"));
    let dest = tempfile::tempdir().unwrap();
    reg.pull("models/odd:v1", dest.path()).assert_fails_with(&[
        "unsupported artifact type 'application/vnd.acme.weights.v1'",
        &format!("application/x-acme {payload}"),
        "OCIMODEL_UNKNOWN=raw",
    ]);
    assert!(model_files(dest.path()).is_empty());
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_UNKNOWN", "raw")
        .pull(&format!("{}/models/odd:v1", reg.addr), dest.path())
        .assert_ok();
    assert_eq!(
        fs::read(
            dest.path()
                .join(format!("blobs/sha256/{}", sha256_hex(b"payload")))
        )
        .unwrap(),
        b"payload"
    );
}

/// KServe's STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS (fnmatch on
/// the relative path, JSON or comma list) combine with our own filter; blobs
/// they drop are never fetched.
#[test]
fn kserve_storage_patterns_skip_downloads() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let src = push_tiny_modelpack(
        &reg,
        work.path(),
        &[
            ("model.safetensors", None),
            ("config.json", Some("weight.config.v1.raw")),
            ("tokenizer/vocab.txt", Some("weight.config.v1.raw")),
            ("tokenizer/merges.txt", Some("weight.config.v1.raw")),
            ("README.md", Some("doc.v1.raw")),
        ],
    );
    let weights = format!("sha256:{}", sha256_file(&src.join("model.safetensors")));
    let readme = format!("sha256:{}", sha256_file(&src.join("README.md")));
    let dest = work.path().join("out");
    let run = Ocimodel::for_registry(&reg)
        // modelpack-client titles each layer with the file's name.
        .env(
            "STORAGE_ALLOW_PATTERNS",
            r#"["config.json", "*.txt", "*.md"]"#,
        )
        .env("STORAGE_IGNORE_PATTERNS", "README*")
        .env("OCIMODEL_EXCLUDE", "merges.txt")
        .pull(&format!("{}/models/mp:v1", reg.addr), &dest);
    run.assert_ok();
    assert_eq!(
        tree(&dest).into_keys().collect::<Vec<_>>(),
        vec!["config.json", "vocab.txt"]
    );
    assert_eq!(reg.blob_gets(&weights), 0, "the weights were not allowed");
    assert_eq!(reg.blob_gets(&readme), 0, "README.md was ignored");
    assert!(
        marker(&dest)["selection"]
            .as_str()
            .unwrap()
            .contains("storage-allow [config.json, *.txt, *.md] storage-ignore [README*]"),
        "{}",
        marker(&dest)["selection"]
    );
    Ocimodel::for_registry(&reg)
        .env("STORAGE_ALLOW_PATTERNS", "[not json")
        .pull(
            &format!("{}/models/mp:v1", reg.addr),
            &work.path().join("x"),
        )
        .assert_fails_with(&["STORAGE_ALLOW_PATTERNS starts like a JSON list but is not one"]);
}

#[test]
fn include_filter_skips_downloads() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let src = push_tiny_modelpack(
        &reg,
        work.path(),
        &[
            ("model.safetensors", None),
            ("config.json", Some("weight.config.v1.raw")),
            ("README.md", Some("doc.v1.raw")),
        ],
    );
    let readme = format!("sha256:{}", sha256_file(&src.join("README.md")));
    let weights_digest = format!("sha256:{}", sha256_file(&src.join("model.safetensors")));
    let dest = work.path().join("out");
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_INCLUDE", "*.safetensors,config.json")
        .pull(&format!("{}/models/mp:v1", reg.addr), &dest)
        .assert_ok();
    assert_eq!(
        tree(&dest).into_keys().collect::<Vec<_>>(),
        vec!["config.json", "model.safetensors"]
    );
    assert_eq!(
        reg.blob_gets(&readme),
        0,
        "README.md was excluded, so its blob must not be fetched"
    );
    assert_eq!(reg.blob_gets(&weights_digest), 1);

    // Changing the selection is a different install, not "already installed".
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_EXCLUDE", "*.safetensors")
        .pull(&format!("{}/models/mp:v1", reg.addr), &dest)
        .assert_ok();
    assert_eq!(
        tree(&dest).into_keys().collect::<Vec<_>>(),
        vec!["README.md", "config.json"]
    );

    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_INCLUDE", "*.gguf")
        .pull(
            &format!("{}/models/mp:v1", reg.addr),
            &work.path().join("none"),
        )
        .assert_fails_with(&["no file passes the file filter", "*.gguf"]);
}

#[test]
fn malformed_artifacts_install_nothing() {
    let reg = Registry::start(Auth::None);
    let cases = [
        (
            "missing-filepath",
            json!({"artifactType": "application/vnd.cncf.model.manifest.v1+json",
                   "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", "json": {}},
                   "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "data": "w"}]}),
            vec!["no org.cncf.model.filepath annotation"],
        ),
        (
            "two-claim-one-path",
            json!({"artifactType": "application/vnd.acme.v1", "config": {"mediaType": "application/vnd.oci.empty.v1+json"},
                   "layers": [{"mediaType": "application/octet-stream", "data": "a", "annotations": {"org.opencontainers.image.title": "x/m.bin"}},
                              {"mediaType": "application/octet-stream", "data": "b", "annotations": {"org.opencontainers.image.title": "./x//m.bin"}}]}),
            vec!["two layers claim the same file 'x/m.bin'"],
        ),
        (
            "title-dotdot",
            json!({"artifactType": "application/vnd.acme.v1", "config": {"mediaType": "application/vnd.oci.empty.v1+json"},
                   "layers": [{"mediaType": "application/octet-stream", "data": "a", "annotations": {"org.opencontainers.image.title": "../../etc/cron.d/x"}}]}),
            vec!["unsafe file name", "'..'"],
        ),
        (
            "unknown-modelpack-layer",
            json!({"artifactType": "application/vnd.cncf.model.manifest.v1+json",
                   "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", "json": {}},
                   "layers": [{"mediaType": "text/plain", "data": "w"}]}),
            vec!["text/plain", "not a ModelPack layer type"],
        ),
        (
            "tar-and-file-clash",
            json!({"artifactType": "application/vnd.cncf.model.manifest.v1+json",
                   "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", "json": {}},
                   "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "data": "w", "annotations": {"org.cncf.model.filepath": "m.bin"}},
                              {"mediaType": "application/vnd.cncf.model.weight.v1.tar", "tar": [{"name": "m.bin", "data": "other"}]}]}),
            vec!["'m.bin' is written twice"],
        ),
    ];
    for (name, spec, needles) in cases {
        reg.push_artifact(&format!("models/bad:{name}"), &spec);
        let dest = tempfile::tempdir().unwrap();
        let run = reg.pull(&format!("models/bad:{name}"), dest.path());
        run.assert_fails_with(&needles);
        assert!(
            model_files(dest.path()).is_empty(),
            "{name}: {:?}",
            model_files(dest.path())
        );
        assert!(!dest.path().parent().unwrap().join("etc/cron.d/x").exists());
    }
}

/// An Ollama model as `ollama push` stores it (Docker schema2 manifest,
/// `application/vnd.ollama.image.*` layers, Ollama's `name` field on json
/// layers), pushed to docker-registry by the registry API: installed as
/// files a llama.cpp-based server loads; per-tensor models are refused.
#[test]
fn ollama_models_install_as_gguf_files() {
    let reg = Registry::start(Auth::None);
    let repo = "library/tinyllama";
    let gguf = weights(50_000, 7);
    let mut layers = Vec::new();
    let mut layer = |kind: &str, bytes: &[u8], name: Option<&str>| {
        let digest = reg.put_blob(repo, bytes);
        let mut l = serde_json::json!({
            "mediaType": format!("application/vnd.ollama.image.{kind}"),
            "digest": digest,
            "size": bytes.len(),
        });
        if let Some(n) = name {
            l["name"] = n.into();
        }
        layers.push(l);
        digest
    };
    let model = layer("model", &gguf, None);
    layer("template", b"{{ .System }} {{ .Prompt }}", None);
    layer("system", b"You are terse.", None);
    layer("params", br#"{"stop":["</s>"]}"#, None);
    layer("license", b"Apache-2.0", None);
    layer("json", br#"{"model_type":"llama"}"#, Some("config.json"));
    let config = br#"{"model_format":"gguf","model_family":"llama","model_type":"1B","file_type":"Q4_0","os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = reg.put_blob(repo, config);
    let manifest = |layers: &Vec<serde_json::Value>| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers,
        }))
        .unwrap()
    };
    let docker_v2 = "application/vnd.docker.distribution.manifest.v2+json";
    assert_eq!(
        reg.put_manifest(repo, "1b", docker_v2, &manifest(&layers)),
        201
    );
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("m");
    reg.pull(&format!("{repo}:1b"), &dest).assert_ok();
    assert_eq!(
        tree(&dest).into_keys().collect::<Vec<_>>(),
        vec![
            "LICENSE",
            "config.json",
            "model.gguf",
            "ollama-config.json",
            "params.json",
            "system.txt",
            "template.gotmpl"
        ]
    );
    assert_eq!(fs::read(dest.join("model.gguf")).unwrap(), gguf);
    assert_eq!(fs::read(dest.join("ollama-config.json")).unwrap(), config);
    assert_eq!(marker(&dest)["format"], "ollama");
    assert_eq!(
        marker(&dest)["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "model.gguf")
            .unwrap()["digest"],
        model.as_str()
    );

    let mut tensors = layers.clone();
    tensors.push(serde_json::json!({
        "mediaType": "application/vnd.ollama.image.tensor",
        "digest": model,
        "size": gguf.len(),
        "name": "model.layers.0.attn",
    }));
    assert_eq!(
        reg.put_manifest(repo, "mlx", docker_v2, &manifest(&tensors)),
        201
    );
    reg.pull(&format!("{repo}:mlx"), &work.path().join("n"))
        .assert_fails_with(&["per-tensor layers", "model.layers.0.attn"]);
}

/// A child ModelKit whose Kitfile's `model.path` names a parent kit: the
/// parent's model layers (only those) land first, then the child's layers,
/// as `kit unpack` does; the parent is pinned in the marker. The kit filter
/// can leave the parent out; loops and kit's local store are refused.
#[test]
fn kitops_child_kits_install_their_parent_model() {
    let reg = Registry::start(Auth::None);
    reg.push_artifact("kits/parent:v1", &kitops_spec());
    let kit = |model_path: String, code: &str| {
        json!({
            "config": {"mediaType": "application/vnd.kitops.modelkit.config.v1+json", "json": {
                "manifestVersion": "1.0.0",
                "package": {"name": "tiny-ft"},
                "model": {"name": "tiny-ft", "path": model_path},
                "code": [{"path": "ft", "digest": "$digest:0"}]
            }},
            "layers": [
                {"mediaType": "application/vnd.kitops.modelkit.code.v1.tar",
                 "tar": [{"name": "ft", "type": "dir"}, {"name": "ft/train.py", "data": code}]}
            ]
        })
    };
    reg.push_artifact(
        "kits/child:v1",
        &kit(format!("{}/kits/parent:v1", reg.addr), "fit()\n"),
    );
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("child");
    reg.pull("kits/child:v1", &dest).assert_ok();
    assert_eq!(
        tree(&dest).into_keys().collect::<Vec<_>>(),
        vec!["Kitfile", "ft", "ft/train.py", "models", "models/tiny.gguf"],
        "the parent's model, not its code, datasets or docs"
    );
    assert_eq!(
        fs::read(dest.join("models/tiny.gguf")).unwrap(),
        b"GGUF-weights"
    );
    let parent_digest = reg.digest_of("kits/parent", "v1");
    assert_eq!(
        marker(&dest)["parents"],
        json!([format!("{}/kits/parent:v1@{parent_digest}", reg.addr)])
    );

    // Without the model in the kit filter, nothing comes from the parent.
    let dest = work.path().join("code-only");
    Ocimodel::for_registry(&reg)
        .env("OCIMODEL_KIT_FILTER", "code")
        .pull(&format!("{}/kits/child:v1", reg.addr), &dest)
        .assert_ok();
    assert_eq!(
        tree(&dest).into_keys().collect::<Vec<_>>(),
        vec!["Kitfile", "ft", "ft/train.py"]
    );

    // Two kits naming each other.
    reg.push_artifact("kits/a:v1", &kit(format!("{}/kits/b:v1", reg.addr), "a\n"));
    reg.push_artifact("kits/b:v1", &kit(format!("{}/kits/a:v1", reg.addr), "b\n"));
    let dest = work.path().join("loop");
    reg.pull("kits/a:v1", &dest)
        .assert_fails_with(&["chain of parent kits loops back to"]);
    assert!(!dest.join("ft").exists());

    // A parent in kit's local store, which no cluster can reach.
    reg.push_artifact("kits/local:v1", &kit("tiny:latest".to_string(), "c\n"));
    reg.pull("kits/local:v1", &work.path().join("local"))
        .assert_fails_with(&["parent kit 'tiny:latest' in kit's local store"]);
}

/// S3-12: a digest-pinned child kit whose Kitfile names its parent by tag
/// does not pin the parent's weights (whoever moves the tag changes what
/// the child installs). Under OCIMODEL_REQUIRE_DIGEST it is refused; a
/// parent named by digest is installed; without the policy the tag is
/// followed with a warning naming the digest it resolved to, which the
/// marker's `parents` records.
#[test]
fn a_parent_kit_named_by_tag_is_refused_under_require_digest() {
    let reg = Registry::start(Auth::None);
    let weights = |data: &str| {
        let mut spec = kitops_spec();
        spec["layers"][0]["tar"][1]["data"] = json!(data);
        spec
    };
    reg.push_artifact("kits/parent:v1", &weights("GGUF original weights"));
    let original = reg.digest_of("kits/parent", "v1");
    let child = |model_path: String| {
        json!({
            "config": {"mediaType": "application/vnd.kitops.modelkit.config.v1+json", "json": {
                "manifestVersion": "1.0.0",
                "package": {"name": "tiny-ft"},
                "model": {"name": "tiny-ft", "path": model_path},
                "code": [{"path": "ft", "digest": "$digest:0"}]
            }},
            "layers": [
                {"mediaType": "application/vnd.kitops.modelkit.code.v1.tar",
                 "tar": [{"name": "ft", "type": "dir"}, {"name": "ft/train.py", "data": "fit()\n"}]}
            ]
        })
    };
    reg.push_artifact(
        "kits/by-tag:v1",
        &child(format!("{}/kits/parent:v1", reg.addr)),
    );
    reg.push_artifact(
        "kits/by-digest:v1",
        &child(format!("{}/kits/parent@{original}", reg.addr)),
    );
    let pinned = |repo: &str| format!("{}/{repo}@{}", reg.addr, reg.digest_of(repo, "v1"));
    let work = tempfile::tempdir().unwrap();
    let pull = |uri: &str, dest: &str, require: bool| {
        let mut cmd = Ocimodel::for_registry(&reg);
        if require {
            cmd = cmd.env("OCIMODEL_REQUIRE_DIGEST", "true");
        }
        cmd.pull(uri, &work.path().join(dest))
    };

    // Without the policy: the tag is followed, and the log says so.
    let run = pull(&pinned("kits/by-tag"), "d1", false);
    run.assert_ok();
    let d1 = work.path().join("d1");
    assert_eq!(
        fs::read(d1.join("models/tiny.gguf")).unwrap(),
        b"GGUF original weights"
    );
    let resolved = format!("{}/kits/parent:v1@{original}", reg.addr);
    assert_eq!(marker(&d1)["parents"], json!([resolved]));
    assert!(
        run.stderr()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("by tag") && l.contains(&original)),
        "{}",
        run.stderr()
    );

    // The tag moves: the same child digest would now install other weights.
    reg.push_artifact("kits/parent:v1", &weights("GGUF REPLACED weights"));
    let run = pull(&pinned("kits/by-tag"), "d2", true);
    run.assert_fails_with(&[
        &format!("parent kit {}/kits/parent:v1", reg.addr),
        "by tag",
        "OCIMODEL_REQUIRE_DIGEST",
    ]);
    assert!(!work.path().join("d2/models").exists());

    // Named by digest, the parent is pinned with its child.
    pull(&pinned("kits/by-digest"), "d3", true).assert_ok();
    let d3 = work.path().join("d3");
    assert_eq!(
        fs::read(d3.join("models/tiny.gguf")).unwrap(),
        b"GGUF original weights"
    );
    assert_eq!(
        marker(&d3)["parents"],
        json!([format!("{}/kits/parent@{original}", reg.addr)])
    );
}
