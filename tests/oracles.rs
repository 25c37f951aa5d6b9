//! Signatures made by the real tools (cosign, containers/image, notation,
//! notation-go, the sigstore conformance suite), copied verbatim into
//! `tests/fixtures/signature-oracles` (provenance in tests/fixtures/README.md),
//! checked by ocimodel.
//! Where a case must be refused, the reason is asserted, not just an error.
//!
//! The keyless cases were signed against sigstore's production (and one
//! against staging) instance; their trusted roots ship in the `sigstore`
//! wheel on PyPI, downloaded once into `target/test-deps/`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use common::*;
use ocimodel::digest::Digest;
use ocimodel::manifest::Descriptor;
use ocimodel::verify::{cosign, notation, Inputs, Policy};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const BEACON: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const ACTIONS: &str = "https://token.actions.githubusercontent.com";

fn oracles() -> PathBuf {
    let dir = repo_root().join("tests/fixtures/signature-oracles");
    assert!(dir.is_dir(), "{} is missing", dir.display());
    dir
}

/// `production` or `staging` trusted_root.json from the sigstore 4.5.1 wheel.
fn sigstore_root(instance: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = repo_root().join("target/test-deps/sigstore-4.5.1");
        if !dir.join("production.json").is_file() {
            fs::create_dir_all(&dir).unwrap();
            let out = std::process::Command::new("python3")
                .args(["-m", "pip", "download", "-q", "--no-deps", "sigstore==4.5.1", "-d"])
                .arg(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "pip download sigstore==4.5.1: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let wheel = dir.join("sigstore-4.5.1-py3-none-any.whl");
            for (name, host) in [
                ("production", "tuf-repo-cdn.sigstore.dev"),
                ("staging", "tuf-repo-cdn.sigstage.dev"),
            ] {
                let member = format!("sigstore/_store/https%3A%2F%2F{host}/trusted_root.json");
                let script = "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))";
                let out = std::process::Command::new("python3")
                    .args(["-c", script])
                    .arg(&wheel)
                    .arg(&member)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{member} not in the wheel");
                fs::write(dir.join(format!("{name}.json")), out.stdout).unwrap();
            }
        }
        dir
    });
    dir.join(format!("{instance}.json"))
}

fn keyless_policy(identity: &str, issuer: &str, root: &Path) -> Policy {
    Policy::from_inputs(&Inputs {
        identity_regexp: Some(identity.to_string()),
        issuer_regexp: Some(issuer.to_string()),
        trusted_root: Some(root.display().to_string()),
        ..Inputs::default()
    })
    .unwrap()
}

fn exact(s: &str) -> String {
    format!("^{}$", regex_escape(s))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

fn sha256_digest(bytes: &[u8]) -> Digest {
    format!("sha256:{}", sha256_hex(bytes)).parse().unwrap()
}

/// The sigstore conformance suite's bundles: each `_fail` case refused for
/// its own reason, each happy path verified.
#[test]
fn sigstore_conformance_bundles() {
    let base = oracles().join("sigstore-conformance");
    let artifact = fs::read(base.join("a.txt")).unwrap();
    let production = sigstore_root("production");
    let any = keyless_policy(".*", ".*", &production);
    let cases: &[(&str, Option<&str>)] = &[
        ("happy-path-v0.3", None),
        ("happy-path-intoto-in-dsse-v3", None),
        (
            "bundle-from-wrong-instance_fail",
            Some("which OCIMODEL_TRUSTED_ROOT does not trust"),
        ),
        (
            "checkpoint-wrong-roothash_fail",
            Some("the checkpoint names a different tree size or root than the inclusion proof"),
        ),
        (
            "dsse-invalid-sig_fail",
            Some("does not verify with the signing certificate's key"),
        ),
        (
            "dsse-mismatch-envelope_fail",
            Some("the log entry records a different signature, certificate or payload"),
        ),
        (
            "dsse-mismatch-sig_fail",
            Some("the log entry records a different signature, certificate or payload"),
        ),
        (
            "inclusion-proof-corrupted-hash_fail",
            Some("the inclusion proof does not lead to the log's root hash"),
        ),
        (
            "integrated-time-in-future_fail",
            Some("the signing certificate had expired at"),
        ),
        (
            "invalid-checkpoint-signature_fail",
            Some("the checkpoint is not signed by the log's key"),
        ),
        (
            "set-invalid-signature_fail",
            Some("signed entry timestamp does not verify"),
        ),
        (
            "signature-mismatch_fail",
            Some("does not verify with the signing certificate's key"),
        ),
        (
            "wrong-hashedrekord-cert-and-sig_fail",
            Some("the log entry records a different signature, certificate or payload"),
        ),
        (
            "wrong-hashedrekord-entry_fail",
            Some("the log entry records a different signature, certificate or payload"),
        ),
    ];
    for (name, refusal) in cases {
        let bundle = fs::read(base.join(name).join("bundle.sigstore.json")).unwrap();
        let policy = if refusal.is_some() {
            any.clone()
        } else {
            keyless_policy(&exact(BEACON), &exact(ACTIONS), &production)
        };
        let result = cosign::verify_bundle(&bundle, Some(&artifact), &policy);
        match (refusal, result) {
            (None, Ok(v)) => {
                assert!(v.signer.contains(BEACON), "{name}: {}", v.signer);
                if let cosign::Signed::Statement(payload) = &v.signed {
                    let st: serde_json::Value = serde_json::from_slice(payload).unwrap();
                    assert_eq!(
                        st["subject"][0]["digest"]["sha256"].as_str(),
                        Some(sha256_hex(&artifact).as_str()),
                        "{name}"
                    );
                }
            }
            (None, Err(e)) => panic!("{name} must verify: {e:#}"),
            (Some(_), Ok(v)) => panic!("{name} must be refused, verified as {}", v.signer),
            (Some(why), Err(e)) => {
                let e = format!("{e:#}");
                assert!(e.contains(why), "{name}: refused for '{e}', not '{why}'");
            }
        }
    }
    // The wrong-instance bundle is refused for its root alone: staging's
    // trusted root accepts it.
    let staging = keyless_policy(".*", ".*", &sigstore_root("staging"));
    let bundle =
        fs::read(base.join("bundle-from-wrong-instance_fail/bundle.sigstore.json")).unwrap();
    cosign::verify_bundle(&bundle, Some(&artifact), &staging).unwrap();

    // The custom trust root case, with its own root and artifact.
    let dir = base.join("intoto-with-custom-trust-root");
    let policy = keyless_policy(
        &exact(BEACON),
        &exact(ACTIONS),
        &dir.join("trusted_root.json"),
    );
    let bundle = fs::read(dir.join("bundle.sigstore.json")).unwrap();
    let v = cosign::verify_bundle(&bundle, None, &policy).unwrap();
    assert!(matches!(v.signed, cosign::Signed::Statement(_)));
    // Against production it is refused: its log is not trusted there.
    let e = cosign::verify_bundle(&bundle, None, &any).unwrap_err();
    assert!(format!("{e:#}").contains("does not trust"), "{e:#}");
}

/// A copy of `root` whose every CA window ends at `end`.
fn root_with_cas_ending(root: &Path, end: &str, out: &Path) -> PathBuf {
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(root).unwrap()).unwrap();
    for ca in json["certificateAuthorities"].as_array_mut().unwrap() {
        ca["validFor"]["end"] = serde_json::json!(end);
    }
    let path = out.join("trusted_root.json");
    fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    path
}

/// containers/image's fixtures: `cosign sign` keyless against production
/// (2023-01-20) and with a key, stored in its on-disk form.
struct SignedManifest {
    subject: Digest,
    layer: Descriptor,
    payload: Vec<u8>,
}

fn containers_image(case: &str) -> SignedManifest {
    let dir = oracles().join("containers-image").join(case);
    let manifest = fs::read(dir.join("manifest.json")).unwrap();
    let raw = fs::read(dir.join("signature-1")).unwrap();
    let json = raw
        .strip_prefix(b"\0sigstore-json\n")
        .expect("containers/image sigstore signature header");
    let sig: serde_json::Value = serde_json::from_slice(json).unwrap();
    let payload = B64.decode(sig["payload"].as_str().unwrap()).unwrap();
    let annotations = sig["annotations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let layer = Descriptor {
        media_type: sig["mimeType"].as_str().unwrap().to_string(),
        digest: sha256_digest(&payload),
        size: payload.len() as u64,
        annotations,
        platform: None,
        artifact_type: None,
        data: None,
        name: None,
    };
    SignedManifest {
        subject: sha256_digest(&manifest),
        layer,
        payload,
    }
}

#[test]
fn cosign_keyless_production_signature() {
    let s = containers_image("dir-img-cosign-fulcio-rekor-valid");
    let production = sigstore_root("production");
    let policy = keyless_policy(
        &exact("mitr@redhat.com"),
        &exact("https://github.com/login/oauth"),
        &production,
    );
    let signer = cosign::check_simple_signing(&s.layer, &s.payload, &s.subject, &policy).unwrap();
    assert!(signer.contains("mitr@redhat.com"), "{signer}");
    assert!(
        signer.contains("https://github.com/login/oauth"),
        "{signer}"
    );

    // Another identity, another issuer: refused.
    let other = keyless_policy("^someone@else\\.com$", ".*", &production);
    let e = cosign::check_simple_signing(&s.layer, &s.payload, &s.subject, &other).unwrap_err();
    assert!(
        format!("{e:#}").contains("certificate identity mismatch"),
        "{e:#}"
    );
    let other = keyless_policy(".*", "^https://accounts\\.google\\.com$", &production);
    let e = cosign::check_simple_signing(&s.layer, &s.payload, &s.subject, &other).unwrap_err();
    assert!(format!("{e:#}").contains("OIDC issuer mismatch"), "{e:#}");

    // Another manifest: the signature is valid but not for it.
    let e = cosign::check_simple_signing(&s.layer, &s.payload, &sha256_digest(b"x"), &policy)
        .unwrap_err();
    assert!(format!("{e:#}").contains("not sha256:"), "{e:#}");

    // The fail-open: production's CAs, each window closed before the
    // signature was logged, must vouch for nothing.
    let tmp = tempfile::tempdir().unwrap();
    let closed = root_with_cas_ending(&production, "2022-01-01T00:00:00Z", tmp.path());
    let policy = keyless_policy(".*", ".*", &closed);
    let e = cosign::check_simple_signing(&s.layer, &s.payload, &s.subject, &policy).unwrap_err();
    assert!(
        format!("{e:#}").contains(
            "no certificate authority in OCIMODEL_TRUSTED_ROOT was valid at 2023-01-20T20:51:33Z"
        ),
        "{e:#}"
    );
}

#[test]
fn cosign_key_signature_from_containers_image() {
    let s = containers_image("dir-img-cosign-key-rekor-valid");
    let key = oracles().join("containers-image/cosign2.pub");
    let policy = Policy::from_inputs(&Inputs {
        key: Some(key.display().to_string()),
        ..Inputs::default()
    })
    .unwrap();
    let signer = cosign::check_simple_signing(&s.layer, &s.payload, &s.subject, &policy).unwrap();
    assert!(signer.contains("cosign2.pub"), "{signer}");
    // The keyless fixture's signature does not verify with this key.
    let other = containers_image("dir-img-cosign-fulcio-rekor-valid");
    let e = cosign::check_simple_signing(&other.layer, &other.payload, &other.subject, &policy)
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("does not verify with COSIGN_KEY"),
        "{e:#}"
    );
}

/// cosign's `attest --new-bundle-format` fixture (production, 2025): a
/// genuine v0.3 bundle (its signature, SET, inclusion proof and certificate
/// all verify) that is an attestation, not an image signature: refused as
/// such. With its inclusion proof taken out, refused for that first: from
/// v0.2 on the bundle format requires one, and ocimodel does not accept a
/// log entry on its signed entry timestamp alone.
#[test]
fn cosign_attestation_bundle() {
    let bytes = fs::read(oracles().join("cosign/oci-attestation.sigstore.json")).unwrap();
    let policy = keyless_policy(
        &exact("cody@soyland.com"),
        &exact("https://github.com/login/oauth"),
        &sigstore_root("production"),
    );
    let v = cosign::verify_bundle(&bytes, None, &policy).unwrap();
    assert!(v.signer.contains("cody@soyland.com"), "{}", v.signer);
    let subject: Digest = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4"
        .parse()
        .unwrap();
    let e = cosign::check_bundle(&bytes, &subject, &policy).unwrap_err();
    assert!(
        format!("{e:#}").contains("the bundle is an attestation (https://cosign.sigstore.dev/attestation/v1), not a cosign signature"),
        "{e:#}"
    );

    let mut bundle: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    bundle["verificationMaterial"]["tlogEntries"][0]
        .as_object_mut()
        .unwrap()
        .remove("inclusionProof");
    let stripped = serde_json::to_vec(&bundle).unwrap();
    let e = cosign::verify_bundle(&stripped, None, &policy).unwrap_err();
    assert!(
        format!("{e:#}").contains("the bundle (v0.3) has no inclusion proof"),
        "{e:#}"
    );
}

/// notation-go's JWS and COSE envelopes (signingAgent Notation/1.0.0) over
/// its test layout's manifest, trusting the self-signed `alpine` signer.
#[test]
fn notation_go_envelopes() {
    let base = oracles().join("notation-go");
    let trust = notation::Trust {
        anchors: ocimodel::verify::keys::load_certificates(
            "NOTATION_CERT",
            &base.join("alpine.crt").display().to_string(),
        )
        .unwrap(),
        identities: Vec::new(),
    };
    let digest: Digest = "sha256:19dbd2e48e921426ee8ace4dc892edfb2ecdc1d1a72d5416c83670c30acecef0"
        .parse()
        .unwrap();
    let target = notation::Target {
        digest: &digest,
        media_type: "application/vnd.oci.image.manifest.v1+json",
        size: 481,
    };
    let jws = fs::read(base.join("jws_signature.sig")).unwrap();
    let cose = fs::read(base.join("cose_signature.sig")).unwrap();
    for (name, check, envelope) in [
        (
            "jws",
            notation::check_jws as fn(&[u8], &notation::Target, &notation::Trust) -> _,
            &jws,
        ),
        ("cose", notation::check_cose, &cose),
    ] {
        let signer = check(envelope, &target, &trust).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(signer.contains("alpine"), "{name}: {signer}");
        // Another size: the envelope does not describe this manifest.
        let wrong = notation::Target {
            size: 482,
            ..target
        };
        let e = check(envelope, &wrong, &trust).unwrap_err();
        assert!(
            format!("{e:#}").contains("of 481 bytes, but the manifest is"),
            "{name}: {e:#}"
        );
    }
    // Trusting another root: refused.
    let other = notation::Trust {
        anchors: ocimodel::verify::keys::load_certificates(
            "NOTATION_CERT",
            &oracles().join("notation/e2e.crt").display().to_string(),
        )
        .unwrap(),
        identities: Vec::new(),
    };
    let e = notation::check_jws(&jws, &target, &other).unwrap_err();
    assert!(format!("{e:#}").contains("untrusted"), "{e:#}");
}

/// The notation CLI's e2e layouts, verified end to end by the binary from
/// the layout as the CLI wrote it (read only).
#[test]
fn notation_cli_layouts() {
    let base = oracles().join("notation");
    let cert = base.join("e2e.crt");
    let verify = |case: &str| {
        Ocimodel::new()
            .env("NOTATION_CERT", &cert)
            .run(&[
                "verify",
                &format!(
                    "oci-layout://{}@sha256:b8479de3f88fb259a0a9ea82a5b2a052a1ef3c4ebbcfc61482d5ae4c831f8af9",
                    base.join(case).display()
                ),
            ])
    };
    for case in ["e2e-valid-signature", "e2e-valid-multiple-signatures"] {
        let run = verify(case);
        run.assert_ok();
        assert!(
            run.stdout().contains("verified notation signature"),
            "{case}: {}",
            run.stdout()
        );
    }
    // Written with `--expiry` in the signer's zone (+08:00), already past.
    refused(
        &verify("e2e-expired-signature"),
        &["the notation signature expired at 2023-06-27T13:21:21+08:00"],
    );
    refused(
        &verify("e2e-invalid-signature"),
        &["signature verification failed"],
    );
    refused(&verify("e2e-with-expired-cert"), &["expired"]);
}

/// `verify` exits 1 and says why on stderr (it writes no termination log:
/// it is not an init container's command).
#[track_caller]
fn refused(run: &Run, needles: &[&str]) {
    assert_eq!(run.code(), 1, "{}", run.stderr());
    for n in needles {
        assert!(
            run.stderr().contains(n),
            "stderr lacks {n:?}: {}",
            run.stderr()
        );
    }
}

/// Keyless model signatures, as far as offline data reaches: no keyless
/// OMS bundle can be made without Fulcio and Rekor, so the conformance
/// suite's DSSE bundle (production, an in-toto statement) stands in as a
/// model's `model.sig`. Its signature, log entry and certificate verify
/// under the model policy's own identity and issuer, and the statement is
/// then refused as not a model signature; a bad signature or another
/// identity is refused before that.
#[test]
fn keyless_model_signatures_check_the_bundle_then_the_statement() {
    use ocimodel::unpack::{Contents, FileRecord};
    use ocimodel::verify::model::{check, ModelInputs, ModelPolicy};
    let base = oracles().join("sigstore-conformance");
    let root = sigstore_root("production");
    let cases = [
        ("happy-path-intoto-in-dsse-v3", BEACON, "the statement's predicate type is 'https://slsa.dev/provenance/v1', not a model signature"),
        ("dsse-invalid-sig_fail", BEACON, "does not verify with the signing certificate's key"),
        ("happy-path-intoto-in-dsse-v3", "someone@example.com", "certificate identity mismatch"),
    ];
    for (case, identity, needle) in cases {
        let staged = tempfile::tempdir().unwrap();
        let bundle = fs::read(base.join(case).join("bundle.sigstore.json")).unwrap();
        fs::write(staged.path().join("model.sig"), &bundle).unwrap();
        let contents = Contents {
            files: vec![FileRecord {
                path: "model.sig".into(),
                size: bundle.len() as u64,
                digest: Digest::sha256_of(&bundle),
            }],
            links: Default::default(),
        };
        let policy = ModelPolicy::from_inputs(&ModelInputs {
            identity: Some(identity.into()),
            issuer: Some(ACTIONS.into()),
            trusted_root: Some(root.display().to_string()),
            ..ModelInputs::default()
        })
        .unwrap();
        let err = format!(
            "{:#}",
            check(staged.path(), &contents, &policy).unwrap_err()
        );
        assert!(err.contains(needle), "{case}: {err}");
    }
}
