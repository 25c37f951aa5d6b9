//! OpenSSF model signatures (OMS) made by the real tool, `model_signing`
//! 1.1.1 from PyPI: models signed with a key, a certificate chain, shards
//! and BLAKE3, packed as ModelPack, ORAS (also by the oras SDK, from
//! docker-registry) and modelcar, installed or refused;
//! on every case `model_signing verify` on the same tree agrees with us.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Runs `python3 -m model_signing ARGS`.
fn model_signing(args: &[&str]) -> Output {
    Command::new("python3")
        .args(["-m", "model_signing", "--log-level", "ERROR"])
        .args(args)
        .output()
        .expect("python3 runs")
}

/// A small model: weights in a subdirectory, a config, an empty file.
fn model(root: &Path) -> PathBuf {
    let m = root.join("model");
    fs::create_dir_all(m.join("weights")).unwrap();
    fs::write(m.join("config.json"), br#"{"arch": "tiny"}"#).unwrap();
    fs::write(m.join("weights/part-1.bin"), vec![7u8; 300_000]).unwrap();
    fs::write(
        m.join("weights/part-2.bin"),
        (0..=255u8).cycle().take(70_001).collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(m.join("empty.txt"), b"").unwrap();
    m
}

/// `model_signing sign key`, the signature at `model.sig` inside the model.
fn sign_with_key(model: &Path, private: &Path) {
    sign_with_key_to(model, private, "model.sig")
}

/// The same with the signature at `sig` (relative to the model).
fn sign_with_key_to(model: &Path, private: &Path, sig: &str) {
    let sig = model.join(sig);
    let out = model_signing(&[
        "sign",
        "key",
        "--private_key",
        private.to_str().unwrap(),
        "--signature",
        sig.to_str().unwrap(),
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "model_signing sign: {out:?}");
}

/// What `model_signing`'s verifier says of the installed tree. Through its
/// library: its CLI always hashes files whole, so it cannot verify the shard
/// signatures its own library makes. Our bookkeeping is left out, as any
/// verifier of DEST must.
fn tool_verifies(dest: &Path, public: &Path) -> bool {
    tool_verify(dest, public).is_ok()
}

fn tool_verify(dest: &Path, public: &Path) -> Result<(), String> {
    let copy = tempfile::tempdir().unwrap();
    let model = copy.path().join("model");
    for (rel, bytes) in tree(dest) {
        fs::create_dir_all(model.join(&rel).parent().unwrap()).unwrap();
        fs::write(model.join(&rel), bytes).unwrap();
    }
    let script = format!(
        r#"
import pathlib
from model_signing import verifying
model = pathlib.Path({model:?})
verifying.Config().use_elliptic_key_verifier(public_key={public:?}).verify(model, model / "model.sig")
"#,
        model = model.display().to_string(),
        public = public.display().to_string(),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// Packs `model` as `format` into a layout under `work`; the URI to pull.
fn pack(model: &Path, work: &Path, format: &str) -> String {
    push_layout(model, &work.join(format!("layout-{format}")), format)
}

/// The tree under `dir` (files with their bytes), bookkeeping left out.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if rel.starts_with(".ocimodel") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A key-signed model installs from ModelPack, ORAS and modelcar artifacts;
/// the marker records the signer and the model's OMS digest (the statement
/// subject's), and `model_signing verify` accepts the installed tree.
#[test]
fn key_signed_models_install_from_every_format() {
    let work = tempfile::tempdir().unwrap();
    let m = model(work.path());
    let (private, public) = ec_keypair_on(work.path(), "prime256v1", "p256");
    sign_with_key(&m, &private);
    let bundle: serde_json::Value =
        serde_json::from_slice(&fs::read(m.join("model.sig")).unwrap()).unwrap();
    let payload = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        bundle["dsseEnvelope"]["payload"].as_str().unwrap(),
    )
    .unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let subject = statement["subject"][0]["digest"]["sha256"]
        .as_str()
        .unwrap();
    let key = public.to_str().unwrap();
    let mut uris = Vec::new();
    for format in ["modelpack", "oras", "modelcar"] {
        let uri = pack(&m, work.path(), format);
        uris.push(uri.clone());
        let dest = work.path().join(format!("dest-{format}"));
        Ocimodel::new()
            .envs(&[("OCIMODEL_MODEL_KEY", key)])
            .pull(&uri, &dest)
            .assert_ok();
        assert_eq!(tree(&dest), tree(&m), "{format}");
        let signed = &marker(&dest)["modelSignature"];
        assert_eq!(signed["path"], "model.sig", "{format}");
        assert_eq!(signed["digest"], format!("sha256:{subject}"), "{format}");
        assert_eq!(signed["serialization"], "files/sha256", "{format}");
        assert_eq!(signed["resources"], 4, "{format}");
        // Files were hashed with SHA-256 on the way in (tar members too),
        // so the check read none of them again.
        let files = marker(&dest)["files"].as_array().unwrap().clone();
        assert!(
            files
                .iter()
                .all(|f| f["digest"].as_str().unwrap().starts_with("sha256:")),
            "{format}: {files:?}"
        );
        assert!(
            signed["signer"]
                .as_str()
                .unwrap()
                .contains("OCIMODEL_MODEL_KEY"),
            "{format}: {signed}"
        );
        assert!(
            tool_verifies(&dest, &public),
            "{format}: model_signing disagrees"
        );
        // The same tree, installed: nothing to do on a rerun.
        let again = Ocimodel::new()
            .envs(&[("OCIMODEL_MODEL_KEY", key)])
            .pull(&uri, &dest);
        again.assert_ok();
        assert!(
            again.stderr().contains("already installed"),
            "{}",
            again.stderr()
        );
    }

    // `ocimodel check DEST` and `ocimodel verify DEST` show what verified
    // at install and, with a policy, verify the installed tree again.
    let dest = work.path().join("dest-modelcar");
    let plain = Ocimodel::new().run(&["verify", dest.to_str().unwrap()]);
    plain.assert_ok();
    assert!(
        plain
            .stdout()
            .contains("verified at install: model signature model.sig")
            && !plain.stdout().contains("verified now"),
        "{}",
        plain.stdout()
    );
    for command in ["verify", "check"] {
        let check = |key: &str| {
            Ocimodel::new()
                .env("OCIMODEL_MODEL_KEY", key)
                .pull(command, &dest)
        };
        let run = check(key);
        run.assert_ok();
        let signer = format!("model signature model.sig by ECDSA P-256 key OCIMODEL_MODEL_KEY ({key}) (4 files/sha256, model digest sha256:{subject})");
        assert!(
            run.stdout()
                .contains(&format!("verified at install: {signer}"))
                && run.stdout().contains(&format!("verified now: {signer}")),
            "{}",
            run.stdout()
        );
        let (_, other) = ec_keypair_on(work.path(), "prime256v1", &format!("other-{command}"));
        let run = check(other.to_str().unwrap());
        assert_eq!(run.code(), 1, "{}", run.stdout());
        assert!(
            run.stdout()
                .contains("does not verify with OCIMODEL_MODEL_KEY"),
            "{}",
            run.stdout()
        );
    }

    // Installed as a Hugging Face cache repository: the signature covers the
    // snapshot (not the cache's refs), at install and when verified again.
    let hub = work.path().join("hub");
    let run = Ocimodel::new()
        .env("OCIMODEL_MODEL_KEY", key)
        .env("OCIMODEL_HF_REPO", "acme/signed")
        .pull(&uris[0], &hub);
    run.assert_ok();
    let digest = marker(&hub)["digest"].as_str().unwrap().to_string();
    let revision = &digest["sha256:".len()..][..40];
    let snapshot = hub.join(format!("models--acme--signed/snapshots/{revision}"));
    assert_eq!(tree(&snapshot), tree(&m));
    assert!(tool_verifies(&snapshot, &public), "model_signing disagrees");
    let again = Ocimodel::new()
        .env("OCIMODEL_MODEL_KEY", key)
        .run(&["verify", hub.to_str().unwrap()]);
    again.assert_ok();
    assert!(
        again.stdout().contains(&format!("verified now: model signature model.sig by ECDSA P-256 key OCIMODEL_MODEL_KEY ({key}) (4 files/sha256")),
        "{}",
        again.stdout()
    );
}

/// Every tampering refuses the whole model with one line naming what is
/// wrong, leaves DEST's previous install as it was, and `model_signing
/// verify` refuses the same tree.
#[test]
fn tampered_models_are_refused_and_dest_keeps_what_it_had() {
    let work = tempfile::tempdir().unwrap();
    let (private, public) = ec_keypair_on(work.path(), "prime256v1", "good");
    let (other_private, _) = ec_keypair_on(work.path(), "prime256v1", "other");
    let key = public.to_str().unwrap().to_string();
    let good = model(&work.path().join("good"));
    sign_with_key(&good, &private);
    let dest = work.path().join("dest");
    Ocimodel::new()
        .envs(&[("OCIMODEL_MODEL_KEY", &key)])
        .pull(&pack(&good, &work.path().join("good"), "modelpack"), &dest)
        .assert_ok();
    let installed = tree(&dest);
    let installed_marker = marker(&dest);

    // (the model, the signer's key, another key)
    type Tamper = fn(&Path, &Path, &Path);
    let cases: &[(&str, Tamper, &str)] = &[
        (
            "changed",
            |m, _, _| fs::write(m.join("config.json"), br#"{"arch": "evil"}"#).unwrap(),
            "config.json has changed",
        ),
        (
            "extra",
            |m, _, _| fs::write(m.join("weights/backdoor.py"), b"import os").unwrap(),
            "weights/backdoor.py is not signed",
        ),
        (
            "missing",
            |m, _, _| fs::remove_file(m.join("weights/part-2.bin")).unwrap(),
            "weights/part-2.bin is signed but missing",
        ),
        (
            "wrong-key",
            |m, _, other| sign_with_key(m, other),
            "does not verify with OCIMODEL_MODEL_KEY (1 key tried)",
        ),
        (
            "another-model",
            |m, key, _| {
                // A good signature, by the right key, of another model.
                let other = m.parent().unwrap().join("another");
                fs::create_dir_all(&other).unwrap();
                fs::write(other.join("README.md"), b"another model").unwrap();
                sign_with_key(&other, key);
                fs::copy(other.join("model.sig"), m.join("model.sig")).unwrap();
            },
            "config.json is not signed",
        ),
    ];
    for (name, tamper, needle) in cases {
        let root = work.path().join(name);
        let m = model(&root);
        sign_with_key(&m, &private);
        tamper(&m, &private, &other_private);
        for format in ["modelpack", "modelcar"] {
            let run = Ocimodel::new()
                .envs(&[("OCIMODEL_MODEL_KEY", &key)])
                .pull(&pack(&m, &root, format), &dest);
            run.assert_fails_with(&["model signature model.sig", needle]);
            assert_eq!(tree(&dest), installed, "{name}/{format}: DEST changed");
            assert_eq!(marker(&dest), installed_marker, "{name}/{format}");
        }
        let out = model_signing(&[
            "verify",
            "key",
            "--public_key",
            &key,
            "--signature",
            m.join("model.sig").to_str().unwrap(),
            m.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{name}: model_signing accepted it");
    }
}

/// P-384 keys (signed over SHA-384), shards and BLAKE3 serializations, made
/// by the library; a one-byte change in one shard is found.
#[test]
fn shards_blake3_and_p384_signatures_verify() {
    let work = tempfile::tempdir().unwrap();
    let (p384, p384_pub) = ec_keypair_on(work.path(), "secp384r1", "p384");
    let cases = [
        ("p384-cli", None, "files/sha256"),
        (
            "shards",
            Some("use_shard_serialization(shard_size=100000)"),
            "shards/sha256:100000",
        ),
        (
            "blake3",
            Some("use_file_serialization(hashing_algorithm=\"blake3\")"),
            "files/blake3",
        ),
    ];
    let key = p384_pub.to_str().unwrap();
    for (name, api, serialization) in cases {
        let root = work.path().join(name);
        let m = model(&root);
        match api {
            None => sign_with_key(&m, &p384),
            Some(s) => sign_with_api(&m, &p384, s),
        }
        let dest = root.join("dest");
        let uri = pack(&m, &root, "modelcar");
        Ocimodel::new()
            .envs(&[("OCIMODEL_MODEL_KEY", key)])
            .pull(&uri, &dest)
            .assert_ok();
        assert_eq!(
            marker(&dest)["modelSignature"]["serialization"],
            serialization
        );
        if name == "shards" {
            // model_signing 1.1.1 cannot verify the shard signatures it
            // makes: the shard size comes back from the bundle as a float
            // and its `range()` refuses it. Our reading of the format is
            // checked against its signer here, and this notices a fix.
            let err = tool_verify(&dest, &p384_pub).unwrap_err();
            assert!(
                err.contains("'float' object cannot be interpreted as an integer"),
                "{err}"
            );
        } else {
            assert!(
                tool_verifies(&dest, &p384_pub),
                "{name}: model_signing disagrees"
            );
        }

        // One byte in the second shard of part-1.bin (bytes 100000..200000).
        let mut bytes = fs::read(m.join("weights/part-1.bin")).unwrap();
        bytes[150_000] ^= 1;
        fs::write(m.join("weights/part-1.bin"), bytes).unwrap();
        let changed = if name == "shards" {
            "weights/part-1.bin:100000:200000 has changed"
        } else {
            "weights/part-1.bin has changed"
        };
        Ocimodel::new()
            .envs(&[("OCIMODEL_MODEL_KEY", key)])
            .pull(&pack(&m, &root, "oras"), &root.join("dest2"))
            .assert_fails_with(&[changed]);
        assert!(!root.join("dest2/config.json").exists());
    }
}

/// `model_signing sign certificate`: the leaf must chain to
/// OCIMODEL_MODEL_CERT_CHAIN; another CA is refused, as the tool does.
#[test]
fn certificate_signed_models_chain_to_the_configured_ca() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let ca = |name: &str| {
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            dir,
        );
    };
    ca("model-ca");
    ca("other-ca");
    openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "signer.key",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-new",
            "-key",
            "signer.key",
            "-subj",
            "/CN=model signer/O=example",
            "-out",
            "signer.csr",
        ],
        dir,
    );
    fs::write(
        dir.join("leaf.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "signer.csr",
            "-CA",
            "model-ca.pem",
            "-CAkey",
            "model-ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.cnf",
            "-out",
            "signer.pem",
        ],
        dir,
    );
    let m = model(dir);
    let sig = m.join("model.sig");
    let out = model_signing(&[
        "sign",
        "certificate",
        "--private_key",
        dir.join("signer.key").to_str().unwrap(),
        "--signing_certificate",
        dir.join("signer.pem").to_str().unwrap(),
        "--certificate_chain",
        dir.join("model-ca.pem").to_str().unwrap(),
        "--signature",
        sig.to_str().unwrap(),
        m.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "model_signing sign certificate: {out:?}"
    );
    let uri = pack(&m, dir, "modelpack");
    for (ca, ok) in [("model-ca", true), ("other-ca", false)] {
        let chain = dir.join(format!("{ca}.pem"));
        let dest = dir.join(format!("dest-{ca}"));
        let run = Ocimodel::new()
            .envs(&[("OCIMODEL_MODEL_CERT_CHAIN", chain.to_str().unwrap())])
            .pull(&uri, &dest);
        let tool = model_signing(&[
            "verify",
            "certificate",
            "--certificate_chain",
            chain.to_str().unwrap(),
            "--signature",
            sig.to_str().unwrap(),
            m.to_str().unwrap(),
        ]);
        assert_eq!(
            tool.status.success(),
            ok,
            "model_signing with {ca}: {tool:?}"
        );
        if ok {
            run.assert_ok();
            let signer = marker(&dest)["modelSignature"]["signer"].clone();
            assert!(
                signer.as_str().unwrap().contains("CN=model signer"),
                "{signer}"
            );
        } else {
            run.assert_fails_with(&["model signature model.sig", "OCIMODEL_MODEL_CERT_CHAIN"]);
            assert!(!dest.join("config.json").exists());
        }
    }
}

/// The policy's modes and settings: unsigned models pass only `if-present`;
/// the signature may live elsewhere in the model; settings that cannot
/// verify anything are refused before any download.
#[test]
fn policy_modes_and_signature_path() {
    let work = tempfile::tempdir().unwrap();
    let (private, public) = ec_keypair_on(work.path(), "prime256v1", "k");
    let key = public.to_str().unwrap();
    let unsigned = model(&work.path().join("unsigned"));
    let uri = pack(&unsigned, &work.path().join("unsigned"), "modelpack");
    let dest = |n: &str| work.path().join(n);

    let run = Ocimodel::new()
        .envs(&[("OCIMODEL_MODEL_KEY", key)])
        .pull(&uri, &dest("a"));
    run.assert_fails_with(&[
        "model signature model.sig",
        "the model has no signature file there",
    ]);
    assert!(!dest("a").join("config.json").exists());
    let run = Ocimodel::new()
        .envs(&[
            ("OCIMODEL_MODEL_KEY", key),
            ("OCIMODEL_MODEL_SIGNATURE", "if-present"),
        ])
        .pull(&uri, &dest("b"));
    run.assert_ok();
    assert!(
        run.stderr().contains("the model is not signed"),
        "{}",
        run.stderr()
    );
    assert!(marker(&dest("b")).get("modelSignature").is_none());

    // Signed, with the signature under signatures/ (ignored when signing).
    let m = model(&work.path().join("elsewhere"));
    fs::create_dir(m.join("signatures")).unwrap();
    sign_with_key_to(&m, &private, "signatures/model.sig");
    let uri = pack(&m, &work.path().join("elsewhere"), "oras");
    Ocimodel::new()
        .envs(&[("OCIMODEL_MODEL_KEY", key)])
        .pull(&uri, &dest("c"))
        .assert_fails_with(&["the model has no signature file there"]);
    Ocimodel::new()
        .envs(&[
            ("OCIMODEL_MODEL_KEY", key),
            ("OCIMODEL_MODEL_SIGNATURE_PATH", "signatures/model.sig"),
        ])
        .pull(&uri, &dest("d"))
        .assert_ok();
    assert_eq!(
        marker(&dest("d"))["modelSignature"]["path"],
        "signatures/model.sig"
    );

    for (env, needle) in [
        (
            &[("OCIMODEL_MODEL_SIGNATURE", "required")][..],
            "nothing to trust is set: give OCIMODEL_MODEL_KEY",
        ),
        (
            &[
                ("OCIMODEL_MODEL_SIGNATURE", "off"),
                ("OCIMODEL_MODEL_KEY", key),
            ][..],
            "OCIMODEL_MODEL_SIGNATURE=off but a model key",
        ),
        (
            &[
                ("OCIMODEL_MODEL_KEY", key),
                ("OCIMODEL_MODEL_SIGNATURE_PATH", "../model.sig"),
            ][..],
            "OCIMODEL_MODEL_SIGNATURE_PATH must be a path inside the model",
        ),
        (
            &[("OCIMODEL_MODEL_IDENTITY", "me@example.com")][..],
            "OCIMODEL_MODEL_IDENTITY needs OCIMODEL_MODEL_OIDC_ISSUER",
        ),
    ] {
        let run = Ocimodel::new().envs(env).pull(&uri, &dest("e"));
        run.assert_fails_with(&[needle]);
        assert!(!dest("e").exists(), "{needle}: DEST was created");
    }
}

/// Both policies on: the image's signatures are checked before the
/// download, the model's after it; each refuses on its own.
#[test]
fn image_and_model_policies_are_each_checked() {
    let work = tempfile::tempdir().unwrap();
    let (private, public) = ec_keypair_on(work.path(), "prime256v1", "k");
    let m = model(work.path());
    sign_with_key(&m, &private);
    let uri = pack(&m, work.path(), "modelpack");
    let key = public.to_str().unwrap();
    // The image is not signed: an image policy that requires it refuses
    // even though the model signature is good.
    Ocimodel::new()
        .envs(&[("OCIMODEL_MODEL_KEY", key), ("COSIGN_KEY", key)])
        .pull(&uri, &work.path().join("a"))
        .assert_fails_with(&["no signature found for"]);
    // if-present for the image, required for the model: installs, and the
    // marker records the model signature only.
    Ocimodel::new()
        .envs(&[
            ("OCIMODEL_MODEL_KEY", key),
            ("COSIGN_KEY", key),
            ("OCIMODEL_VERIFY", "if-present"),
        ])
        .pull(&uri, &work.path().join("b"))
        .assert_ok();
    let mk = marker(&work.path().join("b"));
    assert!(mk.get("signatures").is_none());
    assert_eq!(mk["modelSignature"]["resources"], 4);
}

/// From docker-registry: the signed model pushed by the oras Python SDK
/// (each file a layer titled with its path, `model.sig` among them), and
/// as a modelcar by `ocimodel push`; a tampered copy of the ORAS artifact
/// (one layer swapped for other bytes under the same title) is refused.
#[test]
fn signed_models_from_a_registry() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let m = model(work.path());
    let (private, public) = ec_keypair_on(work.path(), "prime256v1", "k");
    sign_with_key(&m, &private);
    let files = |swap: Option<&Path>| {
        let mut list = Vec::new();
        for (rel, _) in tree(&m) {
            let path = match (rel.as_str(), swap) {
                ("config.json", Some(other)) => other.to_path_buf(),
                _ => m.join(&rel),
            };
            list.push(serde_json::json!({"path": path, "title": rel, "mediaType": "application/octet-stream"}));
        }
        serde_json::json!({"artifactType": "application/vnd.unknown.artifact.v1", "files": list})
    };
    reg.oras_push("models/tiny:oras", &files(None));
    let evil = work.path().join("evil.json");
    fs::write(&evil, br#"{"arch": "evil"}"#).unwrap();
    reg.oras_push("models/tiny:evil", &files(Some(&evil)));
    Ocimodel::for_registry(&reg)
        .run(&[
            "push",
            m.to_str().unwrap(),
            &format!("{}/models/tiny:car", reg.addr),
            "--format",
            "modelcar",
        ])
        .assert_ok();
    let key = public.to_str().unwrap();
    for tag in ["oras", "car", "evil"] {
        let dest = work.path().join(tag);
        let run = Ocimodel::for_registry(&reg)
            .env("OCIMODEL_MODEL_KEY", key)
            .pull(&format!("{}/models/tiny:{tag}", reg.addr), &dest);
        if tag == "evil" {
            run.assert_fails_with(&["model signature model.sig", "config.json has changed"]);
            assert!(!dest.join("weights").exists());
        } else {
            run.assert_ok();
            assert_eq!(tree(&dest), tree(&m), "{tag}");
            assert!(
                tool_verifies(&dest, &public),
                "{tag}: model_signing disagrees"
            );
        }
    }
}
