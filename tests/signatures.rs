//! Signature verification against the real registry.
//!
//! `openssl` makes every key, certificate (a test CA stands in for Fulcio,
//! another for a notation root) and raw signature. The signature objects
//! are built here from their specs, as cosign, sigstore and notation write
//! them, and pushed with skopeo (tests/support/make_artifact.py):
//! - cosign legacy (sigstore/cosign specs/SIGNATURE_SPEC.md): tag
//!   `sha256-<hex>.sig`, one simple-signing layer per signature, the base64
//!   DER signature in `dev.cosignproject.cosign/signature`;
//! - sigstore bundle v0.3 (cosign specs/BUNDLE_SPEC.md, protobuf-specs
//!   sigstore_bundle.proto): a referrer whose one layer is the bundle: DSSE
//!   over an in-toto statement; keyless bundles carry the leaf certificate
//!   and a Rekor entry (dsse body, SET over RFC 8785 JSON, RFC 9162
//!   inclusion proof with a signed-note checkpoint);
//! - notation (notaryproject/specifications signature-envelope-jws.md): a
//!   referrer with one `application/jose+json` layer.
//!
//! Debian's registry has no referrers API, so referrers are listed in the
//! `sha256-<hex>` fallback index, as oras and cosign maintain it there.
//! Every refusal must exit 1 with one specific line and leave DEST absent.

mod common;

use std::fs;
use std::path::PathBuf;

use base64::Engine;
use common::*;
use serde_json::json;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const NOTARY: &str = "application/vnd.cncf.notary.signature";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const ISSUER: &str = "https://accounts.example.com";
const IDENTITY: &str = "alice@example.com";

/// A scratch directory for keys, certificates and signatures.
struct Workshop {
    dir: tempfile::TempDir,
}

#[derive(Clone, Copy)]
enum Kind {
    P256,
    P384,
    Ed25519,
    Rsa,
}

impl Workshop {
    fn new() -> Workshop {
        Workshop {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ssl(&self, args: &[&str]) -> Vec<u8> {
        openssl(args, self.dir.path())
    }

    /// A private key `NAME.key` and its public `NAME.pub`; returns the PEM.
    fn keypair(&self, name: &str, kind: Kind) -> String {
        let key = format!("{name}.key");
        match kind {
            Kind::P256 => return ec_keypair(self.dir.path(), name),
            Kind::P384 => self.ssl(&[
                "ecparam",
                "-name",
                "secp384r1",
                "-genkey",
                "-noout",
                "-out",
                &key,
            ]),
            Kind::Ed25519 => self.ssl(&["genpkey", "-algorithm", "ed25519", "-out", &key]),
            Kind::Rsa => self.ssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &key,
            ]),
        };
        self.ssl(&[
            "pkey",
            "-in",
            &key,
            "-pubout",
            "-out",
            &format!("{name}.pub"),
        ]);
        fs::read_to_string(self.path(&format!("{name}.pub"))).unwrap()
    }

    /// The DER SubjectPublicKeyInfo of key `NAME`.
    fn spki_der(&self, name: &str) -> Vec<u8> {
        self.ssl(&[
            "pkey",
            "-in",
            &format!("{name}.key"),
            "-pubout",
            "-outform",
            "DER",
        ])
    }

    /// Signs `data` with key `NAME` the way cosign does for its kind: ECDSA
    /// (DER) over SHA-256 (SHA-384 for P-384), Ed25519 over the message,
    /// RSA PKCS#1 v1.5 with SHA-256.
    fn sign(&self, name: &str, kind: Kind, data: &[u8]) -> Vec<u8> {
        let input = self.path("to-sign");
        fs::write(&input, data).unwrap();
        let key = format!("{name}.key");
        match kind {
            Kind::Ed25519 => self.ssl(&[
                "pkeyutl", "-sign", "-inkey", &key, "-rawin", "-in", "to-sign", "-out", "sig",
            ]),
            Kind::P384 => self.ssl(&["dgst", "-sha384", "-sign", &key, "-out", "sig", "to-sign"]),
            _ => self.ssl(&["dgst", "-sha256", "-sign", &key, "-out", "sig", "to-sign"]),
        };
        fs::read(self.path("sig")).unwrap()
    }

    /// A self-signed CA `NAME` (key `NAME.key`, certificate `NAME.pem`).
    fn ca(&self, name: &str, subject: &str) {
        self.keypair(name, Kind::P256);
        fs::write(
            self.path("ca.cnf"),
            "[req]\ndistinguished_name=dn\n[dn]\n[ext]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
        )
        .unwrap();
        self.ssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-config",
            "ca.cnf",
            "-extensions",
            "ext",
            "-subj",
            subject,
            "-days",
            "30",
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A code-signing leaf `NAME` issued by CA `ca`, valid from now for one
    /// day, with `extensions` (SAN, Fulcio issuer...). Returns its DER.
    fn leaf(&self, name: &str, ca: &str, subject: &str, extensions: &str) -> Vec<u8> {
        self.keypair(name, Kind::P256);
        fs::write(
            self.path("leaf.cnf"),
            format!("[ext]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\nauthorityKeyIdentifier=keyid\n{extensions}"),
        )
        .unwrap();
        self.ssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            subject,
            "-out",
            "leaf.csr",
        ]);
        self.ssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.cnf",
            "-extensions",
            "ext",
            "-out",
            &format!("{name}.pem"),
        ]);
        self.ssl(&["x509", "-in", &format!("{name}.pem"), "-outform", "DER"])
    }

    fn pem(&self, name: &str) -> String {
        fs::read_to_string(self.path(&format!("{name}.pem"))).unwrap()
    }
}

/// The model: the seed's mnist artifact, pushed with the oras SDK.
struct Model {
    reg: Registry,
    digest: String,
    size: usize,
}

impl Model {
    fn push() -> Model {
        let (reg, digest) = Registry::with_mnist();
        let size = manifest_bytes(&reg, &digest).len();
        Model { reg, digest, size }
    }

    fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap()
    }

    fn uri(&self) -> String {
        format!("ocimodel://{}/models/mnist:v1", self.reg.addr)
    }

    /// Pulls with `env` into a fresh DEST; returns the run and DEST.
    fn pull(&self, env: &[(&str, &str)]) -> (Run, tempfile::TempDir, PathBuf) {
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("mnt/models");
        let run = Ocimodel::for_registry(&self.reg)
            .envs(env)
            .pull(&self.uri(), &dest);
        (run, work, dest)
    }

    /// Pulls and expects a refusal naming `needles`, with DEST never created.
    fn refused(&self, env: &[(&str, &str)], needles: &[&str]) {
        let (run, _work, dest) = self.pull(env);
        run.assert_fails_with(needles);
        assert!(!dest.exists(), "DEST was touched: {:?}", tree(&dest));
    }

    fn installed(&self, env: &[(&str, &str)]) -> serde_json::Value {
        let (run, _work, dest) = self.pull(env);
        run.assert_ok();
        assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
        let m = marker(&dest);
        assert_eq!(m["digest"], self.digest.as_str());
        m
    }

    /// Signs this model with key `name` (cosign legacy, one layer).
    fn sign_by(&self, w: &Workshop, name: &str, kind: Kind) {
        self.push_cosign(
            &self.digest,
            &[signed_layer(w, name, kind, &simple_payload(&self.digest))],
        );
    }

    /// Pushes a cosign legacy signature manifest for `subject` with these
    /// simple-signing layers `(payload, annotations)`.
    fn push_cosign(&self, subject: &str, layers: &[(String, serde_json::Value)]) {
        let tag = format!("sha256-{}.sig", subject.strip_prefix("sha256:").unwrap());
        let layers: Vec<_> = layers
            .iter()
            .map(|(payload, ann)| json!({"mediaType": SIMPLE_SIGNING, "data": payload, "annotations": ann}))
            .collect();
        let diff_ids: Vec<String> = (0..layers.len()).map(|i| format!("$digest:{i}")).collect();
        self.reg.push_artifact(
            &format!("models/mnist:{tag}"),
            &json!({
                "tag": tag,
                // go-containerregistry's config, as cosign writes it.
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "json": {"architecture": "", "os": "", "config": {},
                                    "rootfs": {"type": "layers", "diff_ids": diff_ids}}},
                "layers": layers,
            }),
        );
    }

    /// Pushes a referrer of `self` with one layer holding `data`, and lists
    /// it in the referrers fallback index. Returns the referrer's digest.
    fn attach(
        &self,
        n: usize,
        artifact_type: &str,
        layer_type: &str,
        data: &str,
        annotations: serde_json::Value,
    ) -> String {
        self.attach_raw(n, artifact_type, layer_type, data.as_bytes(), annotations)
    }

    /// `attach` for binary layer content (COSE envelopes).
    fn attach_raw(
        &self,
        n: usize,
        artifact_type: &str,
        layer_type: &str,
        data: &[u8],
        annotations: serde_json::Value,
    ) -> String {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), data).unwrap();
        let tag = format!("referrer-{n}");
        let digest = self.reg.push_artifact(
            &format!("models/mnist:{tag}"),
            &json!({
                "tag": tag,
                "artifactType": artifact_type,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json"},
                "layers": [{"mediaType": layer_type, "file": file.path()}],
                "subject": {"mediaType": OCI_MANIFEST, "digest": self.digest, "size": self.size},
                "annotations": annotations,
            }),
        );
        let size = manifest_bytes(&self.reg, &digest).len();
        let fallback = format!("sha256-{}", self.hex());
        let existing = http_get(
            &self.reg.addr,
            &format!("/v2/models/mnist/manifests/{fallback}"),
            &[("Accept", OCI_INDEX)],
        );
        let mut manifests = if existing.status == 200 {
            serde_json::from_slice::<serde_json::Value>(&existing.body).unwrap()["manifests"]
                .clone()
        } else {
            json!([])
        };
        manifests.as_array_mut().unwrap().push(json!({
            "mediaType": OCI_MANIFEST, "digest": digest, "size": size, "artifactType": artifact_type,
        }));
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        let status = self.reg.put_manifest(
            "models/mnist",
            &fallback,
            OCI_INDEX,
            &serde_json::to_vec(&index).unwrap(),
        );
        assert_eq!(status, 201);
        digest
    }
}

/// The model, signed (cosign legacy) by a fresh P-256 key `trusted`;
/// returns the workshop holding the key and the public key's PEM.
fn signed_model() -> (Model, Workshop, String) {
    let model = Model::push();
    let w = Workshop::new();
    let trusted = w.keypair("trusted", Kind::P256);
    model.sign_by(&w, "trusted", Kind::P256);
    (model, w, trusted)
}

fn manifest_bytes(reg: &Registry, reference: &str) -> Vec<u8> {
    let resp = http_get(
        &reg.addr,
        &format!("/v2/models/mnist/manifests/{reference}"),
        &[("Accept", OCI_MANIFEST), ("Accept", OCI_INDEX)],
    );
    assert_eq!(resp.status, 200);
    resp.body
}

/// cosign's simple-signing payload for `digest` (SIGNATURE_SPEC.md).
fn simple_payload(digest: &str) -> String {
    json!({
        "critical": {"identity": {"docker-reference": "registry.example.com/models/mnist"},
                     "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": null
    })
    .to_string()
}

fn signed_layer(w: &Workshop, key: &str, kind: Kind, payload: &str) -> (String, serde_json::Value) {
    let sig = w.sign(key, kind, payload.as_bytes());
    (
        payload.to_string(),
        json!({"dev.cosignproject.cosign/signature": B64.encode(sig)}),
    )
}

#[test]
fn cosign_signatures_verify_with_each_key_type() {
    let model = Model::push();
    let w = Workshop::new();
    for (name, kind) in [
        ("p256", Kind::P256),
        ("p384", Kind::P384),
        ("ed25519", Kind::Ed25519),
        ("rsa", Kind::Rsa),
    ] {
        let public = w.keypair(name, kind);
        model.sign_by(&w, name, kind);
        // The key as PEM text in env, as configMapKeyRef gives it.
        let m = model.installed(&[("COSIGN_KEY", &public)]);
        let sig = &m["signatures"][0];
        assert_eq!(sig["kind"], "cosign", "{name}");
        assert!(sig["location"].as_str().unwrap().contains(".sig"), "{sig}");
        // And as a file path.
        let path = w.path(&format!("{name}.pub"));
        model.installed(&[("COSIGN_KEY", path.to_str().unwrap())]);
    }
}

#[test]
fn one_of_several_keys_suffices() {
    let model = Model::push();
    let w = Workshop::new();
    let keys = fs::create_dir_all(w.path("keys"))
        .map(|_| w.path("keys"))
        .unwrap();
    let mut pems = String::new();
    for (i, kind) in [Kind::P256, Kind::Ed25519, Kind::Rsa]
        .into_iter()
        .enumerate()
    {
        let pem = w.keypair(&format!("k{i}"), kind);
        fs::write(keys.join(format!("k{i}.pub")), &pem).unwrap();
        pems.push_str(&pem);
    }
    // Signed by the second key only.
    model.sign_by(&w, "k1", Kind::Ed25519);
    // A directory (a mounted ConfigMap), a list of paths, PEM text with three keys.
    let list = format!(
        "{},{}",
        keys.join("k0.pub").display(),
        keys.join("k1.pub").display()
    );
    for value in [keys.to_str().unwrap(), list.as_str(), pems.as_str()] {
        let m = model.installed(&[("COSIGN_KEY", value)]);
        assert!(
            m["signatures"][0]["signer"]
                .as_str()
                .unwrap()
                .contains("Ed25519"),
            "{m}"
        );
    }
    // A signature manifest with a bad layer and a good one: the good one counts.
    let _ = w.keypair("stranger", Kind::P256);
    model.push_cosign(
        &model.digest,
        &[
            signed_layer(&w, "stranger", Kind::P256, &simple_payload(&model.digest)),
            signed_layer(&w, "k0", Kind::P256, &simple_payload(&model.digest)),
        ],
    );
    model.installed(&[("COSIGN_KEY", keys.join("k0.pub").to_str().unwrap())]);
}

#[test]
fn cosign_refusals_leave_dest_untouched() {
    let model = Model::push();
    let w = Workshop::new();
    let trusted = w.keypair("trusted", Kind::P256);
    w.keypair("other", Kind::P256);
    let env = [("COSIGN_KEY", trusted.as_str())];

    // No signature at all.
    model.refused(
        &env,
        &[
            "no signature found for",
            &model.digest,
            "OCIMODEL_VERIFY=if-present",
        ],
    );

    // Signed, but by another key.
    model.sign_by(&w, "other", Kind::P256);
    model.refused(&env, &["does not verify with COSIGN_KEY (1 key tried)"]);

    // A valid signature of another image's digest.
    let elsewhere = format!("sha256:{}", "ab".repeat(32));
    model.push_cosign(
        &model.digest,
        &[signed_layer(
            &w,
            "trusted",
            Kind::P256,
            &simple_payload(&elsewhere),
        )],
    );
    model.refused(&env, &[&format!("signs {elsewhere}, not {}", model.digest)]);

    // The payload changed after signing (its layer digest updated to match).
    let (payload, ann) = signed_layer(&w, "trusted", Kind::P256, &simple_payload(&model.digest));
    let tampered = payload.replace("registry.example.com", "registry.example.org");
    model.push_cosign(&model.digest, &[(tampered, ann)]);
    model.refused(&env, &["does not verify with COSIGN_KEY"]);

    // A garbage signature annotation.
    model.push_cosign(
        &model.digest,
        &[(
            simple_payload(&model.digest),
            json!({"dev.cosignproject.cosign/signature": "not base64!"}),
        )],
    );
    model.refused(&env, &["not base64"]);

    // Off with a key set is a contradiction, not a skip.
    model.refused(
        &[("COSIGN_KEY", trusted.as_str()), ("OCIMODEL_VERIFY", "off")],
        &["OCIMODEL_VERIFY=off but COSIGN_KEY is set"],
    );
}

#[test]
fn a_manifest_changed_after_signing_is_refused() {
    let (model, w, trusted) = signed_model();
    model.installed(&[("COSIGN_KEY", &trusted)]);

    // Someone edits the manifest (one annotation) and re-tags v1; the old
    // signature no longer applies, even when copied to the new digest's tag.
    let original = manifest_bytes(&model.reg, &model.digest);
    let edited = String::from_utf8(original)
        .unwrap()
        .replace("John Doe", "Jane Doe");
    assert_eq!(
        model
            .reg
            .put_manifest("models/mnist", "v1", OCI_MANIFEST, edited.as_bytes()),
        201
    );
    let new_digest = model.reg.digest_of("models/mnist", "v1");
    assert_ne!(new_digest, model.digest);
    model.refused(
        &[("COSIGN_KEY", &trusted)],
        &["no signature found for", &new_digest],
    );
    model.push_cosign(
        &new_digest,
        &[signed_layer(
            &w,
            "trusted",
            Kind::P256,
            &simple_payload(&model.digest),
        )],
    );
    model.refused(
        &[("COSIGN_KEY", &trusted)],
        &[&format!("signs {}, not {new_digest}", model.digest)],
    );
}

#[test]
fn if_present_lets_unsigned_through_but_not_bad_signatures() {
    let model = Model::push();
    let w = Workshop::new();
    let trusted = w.keypair("trusted", Kind::P256);
    w.keypair("other", Kind::P256);
    let env = [
        ("COSIGN_KEY", trusted.as_str()),
        ("OCIMODEL_VERIFY", "if-present"),
    ];
    let m = model.installed(&env);
    assert!(m.get("signatures").is_none(), "{m}");
    model.sign_by(&w, "other", Kind::P256);
    model.refused(&env, &["no valid signature", "does not verify"]);
    // Asking for checks with nothing to trust is an error too.
    model.refused(&[("OCIMODEL_VERIFY", "required")], &["nothing to trust"]);
}

/// A moved tag never mixes content: the digest resolved first is the one
/// verified and installed; pulling the moved tag later is judged on its own.
#[test]
fn a_tag_moved_during_a_pull_is_not_followed() {
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let (model, _w, trusted) = signed_model();
    let unsigned = String::from_utf8(manifest_bytes(&model.reg, &model.digest))
        .unwrap()
        .replace("LIVE", "EVIL");

    // A proxy that moves v1 to the unsigned manifest right after serving v1
    // the first time.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap().to_string();
    let tag_reads = Arc::new(AtomicUsize::new(0));
    let (upstream, reads, moved) = (model.reg.addr.clone(), tag_reads.clone(), unsigned.clone());
    serve(listener, move |req| {
        let r = http_get(
            &upstream,
            &req.path,
            &[
                ("Accept", OCI_MANIFEST),
                ("Accept", OCI_INDEX),
                (
                    "Accept",
                    "application/vnd.docker.distribution.manifest.v2+json",
                ),
            ],
        );
        if req.path.ends_with("/manifests/v1") && reads.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut s = std::net::TcpStream::connect(&upstream).unwrap();
            use std::io::{Read, Write};
            write!(
                s,
                "PUT /v2/models/mnist/manifests/v1 HTTP/1.0\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n{moved}",
                moved.len()
            )
            .unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        let headers: Vec<(&str, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| {
                ["content-type", "docker-content-digest"].contains(&k.to_ascii_lowercase().as_str())
            })
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let status = match r.status {
            200 => "200 OK",
            404 => "404 Not Found",
            _ => "500 Internal Server Error",
        };
        response(status, &headers, &r.body)
    });

    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    let run = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &proxy)
        .env("COSIGN_KEY", &trusted)
        .pull(&format!("{proxy}/models/mnist:v1"), &dest);
    run.assert_ok();
    assert_eq!(
        tag_reads.load(Ordering::SeqCst),
        1,
        "the tag is resolved once"
    );
    assert_eq!(marker(&dest)["digest"], model.digest.as_str());
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    let moved_to = model.reg.digest_of("models/mnist", "v1");
    assert_ne!(moved_to, model.digest, "the proxy moved the tag");

    // The next pull sees the moved tag: unsigned, refused; the verified
    // model already in DEST stays as it was.
    let run = Ocimodel::for_registry(&model.reg)
        .env("COSIGN_KEY", &trusted)
        .pull(&model.uri(), &dest);
    run.assert_fails_with(&["no signature found for", &moved_to]);
    assert_eq!(marker(&dest)["digest"], model.digest.as_str());
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
}

/// A test sigstore: a CA standing in for Fulcio, a P-256 key standing in
/// for Rekor, and the trusted_root.json naming both.
struct Sigstore {
    w: Workshop,
    log_id: Vec<u8>,
}

#[derive(Clone)]
struct Entry {
    integrated_time: u64,
    set: bool,
    proof: bool,
    tamper_set: bool,
    /// Swap one hash of the inclusion path.
    tamper_proof: bool,
    /// Record a different signature in the log body than the bundle's.
    foreign_body: bool,
}

impl Default for Entry {
    fn default() -> Entry {
        Entry {
            // The leaf is issued at test time; the log integrates the
            // entry a little later, as with Fulcio and Rekor.
            integrated_time: now() + 120,
            set: true,
            proof: true,
            tamper_set: false,
            tamper_proof: false,
            foreign_body: false,
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

/// RFC 6962 §2.1 Merkle tree hash and audit path, built the long way.
fn mth(leaves: &[Vec<u8>]) -> Vec<u8> {
    if leaves.len() == 1 {
        return leaves[0].clone();
    }
    let k = leaves.len().next_power_of_two() / 2;
    node(&mth(&leaves[..k]), &mth(&leaves[k..]))
}

fn node(l: &[u8], r: &[u8]) -> Vec<u8> {
    sha256(&[&[1u8][..], l, r].concat())
}

fn audit_path(leaves: &[Vec<u8>], m: usize) -> Vec<Vec<u8>> {
    if leaves.len() == 1 {
        return Vec::new();
    }
    let k = leaves.len().next_power_of_two() / 2;
    let (mut p, sibling) = if m < k {
        (audit_path(&leaves[..k], m), mth(&leaves[k..]))
    } else {
        (audit_path(&leaves[k..], m - k), mth(&leaves[..k]))
    };
    p.push(sibling);
    p
}

impl Sigstore {
    fn new() -> Sigstore {
        let w = Workshop::new();
        w.ca("fulcio", "/O=sigstore.test/CN=test-fulcio-root");
        w.keypair("rekor", Kind::P256);
        let log_id = sha256(&w.spki_der("rekor"));
        Sigstore { w, log_id }
    }

    fn trusted_root(&self) -> PathBuf {
        self.trusted_root_with(&[("fulcio", "2020-01-01T00:00:00Z", None)])
    }

    /// A trusted root whose CAs are `(name, validFor start, validFor end)`.
    fn trusted_root_with(&self, cas: &[(&str, &str, Option<&str>)]) -> PathBuf {
        let cas: Vec<serde_json::Value> = cas
            .iter()
            .map(|(name, start, end)| {
                let der = self
                    .w
                    .ssl(&["x509", "-in", &format!("{name}.pem"), "-outform", "DER"]);
                let mut valid = json!({"start": start});
                if let Some(end) = end {
                    valid["end"] = json!(end);
                }
                json!({"subject": {"organization": "sigstore.test", "commonName": name},
                       "uri": "https://fulcio.test",
                       "certChain": {"certificates": [{"rawBytes": B64.encode(der)}]},
                       "validFor": valid})
            })
            .collect();
        let root = json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{"baseUrl": "https://rekor.test", "hashAlgorithm": "SHA2_256",
                       "publicKey": {"rawBytes": B64.encode(self.w.spki_der("rekor")), "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                                     "validFor": {"start": "2020-01-01T00:00:00Z"}},
                       "logId": {"keyId": B64.encode(&self.log_id)}}],
            "certificateAuthorities": cas,
            "ctlogs": [], "timestampAuthorities": []
        });
        let path = self.w.path("trusted_root.json");
        fs::write(&path, serde_json::to_vec_pretty(&root).unwrap()).unwrap();
        path
    }

    /// A Fulcio-like leaf for `identity` from `issuer`, issued by `ca`.
    fn leaf(&self, name: &str, ca: &str, identity: &str, issuer: &str) -> Vec<u8> {
        self.w.leaf(
            name,
            ca,
            "/O=sigstore.dev",
            &format!(
                "subjectAltName=email:{identity}\n1.3.6.1.4.1.57264.1.8=ASN1:UTF8String:{issuer}\n"
            ),
        )
    }

    /// A keyless sigstore bundle for `subject`, signed by leaf `name`.
    fn bundle(&self, name: &str, leaf_der: &[u8], subject_hex: &str, entry: &Entry) -> String {
        let statement = json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"digest": {"sha256": subject_hex}}],
            "predicateType": "https://sigstore.dev/cosign/sign/v1",
            "predicate": {}
        })
        .to_string();
        let payload_type = "application/vnd.in-toto+json";
        let pae = format!(
            "DSSEv1 {} {payload_type} {} {statement}",
            payload_type.len(),
            statement.len()
        );
        let sig = self.w.sign(name, Kind::P256, pae.as_bytes());
        let logged_sig = if entry.foreign_body {
            self.w.sign(name, Kind::P256, b"something else")
        } else {
            sig.clone()
        };
        let leaf_pem = self.w.pem(name);
        // Rekor's dsse v0.0.1 entry body.
        let body = json!({
            "apiVersion": "0.0.1", "kind": "dsse",
            "spec": {"envelopeHash": {"algorithm": "sha256", "value": "00"},
                     "payloadHash": {"algorithm": "sha256", "value": hex(&sha256(statement.as_bytes()))},
                     "signatures": [{"signature": B64.encode(&logged_sig), "verifier": B64.encode(leaf_pem.as_bytes())}]}
        })
        .to_string();
        let (index, size) = (2u64, 5usize);
        let mut tlog = json!({
            "logIndex": index.to_string(),
            "logId": {"keyId": B64.encode(&self.log_id)},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": entry.integrated_time.to_string(),
            "canonicalizedBody": B64.encode(body.as_bytes()),
        });
        if entry.set {
            let canonical = format!(
                r#"{{"body":"{}","integratedTime":{},"logID":"{}","logIndex":{index}}}"#,
                B64.encode(body.as_bytes()),
                entry.integrated_time,
                hex(&self.log_id)
            );
            let mut set = self.w.sign("rekor", Kind::P256, canonical.as_bytes());
            if entry.tamper_set {
                set = self.w.sign("rekor", Kind::P256, b"another entry");
            }
            tlog["inclusionPromise"] = json!({"signedEntryTimestamp": B64.encode(set)});
        }
        if entry.proof {
            let leaves: Vec<Vec<u8>> = (0..size)
                .map(|i| {
                    let data = if i as u64 == index {
                        body.as_bytes().to_vec()
                    } else {
                        format!("entry {i}").into_bytes()
                    };
                    sha256(&[&[0u8][..], &data].concat())
                })
                .collect();
            let root = mth(&leaves);
            let mut path = audit_path(&leaves, index as usize);
            if entry.tamper_proof {
                path[0] = sha256(b"not a sibling");
            }
            let note = format!("rekor.test - 1\n{size}\n{}\n", B64.encode(&root));
            let note_sig = self.w.sign("rekor", Kind::P256, note.as_bytes());
            let signed = [&self.log_id[..4], &note_sig[..]].concat();
            tlog["inclusionProof"] = json!({
                "logIndex": index.to_string(), "rootHash": B64.encode(&root), "treeSize": size.to_string(),
                "hashes": path.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
                "checkpoint": {"envelope": format!("{note}\n\u{2014} rekor.test {}\n", B64.encode(signed))},
            });
        }
        json!({
            "mediaType": BUNDLE,
            "verificationMaterial": {"certificate": {"rawBytes": B64.encode(leaf_der)}, "tlogEntries": [tlog]},
            "dsseEnvelope": {"payload": B64.encode(statement.as_bytes()), "payloadType": payload_type,
                             "signatures": [{"sig": B64.encode(&sig), "keyid": ""}]}
        })
        .to_string()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bundle_annotations() -> serde_json::Value {
    json!({"dev.sigstore.bundle.content": "dsse-envelope",
           "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"})
}

/// Pushes one keyless bundle as the only signature of a fresh model and
/// pulls with the given identity policy.
fn keyless_case(entry: &Entry, signer: &str, issuer: &str, ca: Option<&str>) -> (Model, Sigstore) {
    let model = Model::push();
    let s = Sigstore::new();
    let ca = ca.unwrap_or("fulcio");
    if ca != "fulcio" {
        s.w.ca(ca, "/O=elsewhere/CN=rogue-root");
    }
    let leaf = s.leaf("signer", ca, signer, issuer);
    let bundle = s.bundle("signer", &leaf, model.hex(), entry);
    model.attach(0, BUNDLE, BUNDLE, &bundle, bundle_annotations());
    (model, s)
}

/// `keyless_case`, then a pull that must be refused naming `needles`.
fn keyless_refused(
    entry: &Entry,
    signer: &str,
    issuer: &str,
    ca: Option<&str>,
    needles: &[&str],
) -> Model {
    let (model, s) = keyless_case(entry, signer, issuer, ca);
    model.refused(&as_refs(&keyless_env(&s)), needles);
    model
}

fn keyless_env(s: &Sigstore) -> Vec<(&'static str, String)> {
    vec![
        ("COSIGN_CERT_IDENTITY", IDENTITY.to_string()),
        ("COSIGN_CERT_OIDC_ISSUER", ISSUER.to_string()),
        (
            "OCIMODEL_TRUSTED_ROOT",
            s.trusted_root().display().to_string(),
        ),
    ]
}

fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn keyless_bundle_with_matching_identity_and_issuer() {
    let (model, s) = keyless_case(&Entry::default(), IDENTITY, ISSUER, None);
    let env = keyless_env(&s);
    let m = model.installed(&as_refs(&env));
    let sig = &m["signatures"][0];
    assert_eq!(sig["kind"], "sigstore bundle");
    assert!(sig["signer"].as_str().unwrap().contains(IDENTITY), "{sig}");
    assert!(sig["signer"].as_str().unwrap().contains(ISSUER), "{sig}");

    // The regexp forms, and the trusted root given as JSON text.
    let root_text = fs::read_to_string(s.trusted_root()).unwrap();
    model.installed(&[
        ("COSIGN_CERT_IDENTITY_REGEXP", "^alice@example\\.com$"),
        (
            "COSIGN_CERT_OIDC_ISSUER_REGEXP",
            "^https://accounts\\.example\\.",
        ),
        ("OCIMODEL_TRUSTED_ROOT", &root_text),
    ]);

    // `ocimodel verify` prints who signed what, and writes nothing.
    let mut cmd = Ocimodel::for_registry(&model.reg);
    for (k, v) in &env {
        cmd = cmd.env(k, v);
    }
    let run = cmd.run(&["verify", &model.uri()]);
    run.assert_ok();
    let out = run.stdout();
    assert!(
        out.contains(&format!(
            "@{}: verified sigstore bundle signature by certificate for {IDENTITY}",
            model.digest
        )),
        "{out}"
    );
}

#[test]
fn keyless_bundles_need_a_set_and_an_inclusion_proof() {
    // A v0.3 bundle must carry an inclusion proof (the bundle format
    // requires one from v0.2 on); the SET alone is refused.
    let entry = Entry {
        proof: false,
        ..Entry::default()
    };
    keyless_refused(
        &entry,
        IDENTITY,
        ISSUER,
        None,
        &["the bundle (v0.3) has no inclusion proof"],
    );
    // An inclusion proof alone is not: the integration time it comes with
    // is signed by nothing, and the certificate's validity hinges on it.
    let entry = Entry {
        set: false,
        ..Entry::default()
    };
    keyless_refused(
        &entry,
        IDENTITY,
        ISSUER,
        None,
        &["no signed entry timestamp", "signing time is unproven"],
    );
    // A forged inclusion proof fails even next to a good SET.
    let entry = Entry {
        tamper_proof: true,
        ..Entry::default()
    };
    keyless_refused(
        &entry,
        IDENTITY,
        ISSUER,
        None,
        &["the inclusion proof does not lead to the log's root hash"],
    );
}

/// The keyless fail-open: a certificate must chain to a CA whose validFor
/// window covers the signing time; when no CA qualifies, nothing vouches
/// for the certificate, whoever it names.
#[test]
fn keyless_refused_unless_a_ca_valid_at_signing_time_anchors_the_chain() {
    let (model, s) = keyless_case(&Entry::default(), IDENTITY, ISSUER, None);
    let with_root = |root: PathBuf| {
        vec![
            ("COSIGN_CERT_IDENTITY", IDENTITY.to_string()),
            ("COSIGN_CERT_OIDC_ISSUER", ISSUER.to_string()),
            ("OCIMODEL_TRUSTED_ROOT", root.display().to_string()),
        ]
    };
    let expired_window = "no certificate authority in OCIMODEL_TRUSTED_ROOT was valid at";
    // The signer's own CA, its window closed before the signing time.
    let env = with_root(s.trusted_root_with(&[(
        "fulcio",
        "2020-01-01T00:00:00Z",
        Some("2021-01-01T00:00:00Z"),
    )]));
    model.refused(&as_refs(&env), &[expired_window]);
    // Only an unrelated CA, whose window also ended.
    s.w.ca("unrelated", "/O=elsewhere/CN=unrelated-root");
    let env = with_root(s.trusted_root_with(&[(
        "unrelated",
        "2020-01-01T00:00:00Z",
        Some("2021-01-01T00:00:00Z"),
    )]));
    model.refused(&as_refs(&env), &[expired_window]);
    // An unrelated CA that is current: no chain.
    let env = with_root(s.trusted_root_with(&[("unrelated", "2020-01-01T00:00:00Z", None)]));
    model.refused(
        &as_refs(&env),
        &["does not chain to a CA in OCIMODEL_TRUSTED_ROOT"],
    );
    // A CA under the signer's CA's very name, with another key.
    s.w.ca("impostor", "/O=sigstore.test/CN=test-fulcio-root");
    let env = with_root(s.trusted_root_with(&[("impostor", "2020-01-01T00:00:00Z", None)]));
    model.refused(
        &as_refs(&env),
        &["names a CA in OCIMODEL_TRUSTED_ROOT as its issuer but was not signed by that CA's key"],
    );
    // A root listing no CA at all is refused as a setting.
    let env = with_root(s.trusted_root_with(&[]));
    model.refused(&as_refs(&env), &["has no certificate authorities"]);
    // And the right CA, current, still passes.
    model.installed(&as_refs(&keyless_env(&s)));
}

#[test]
fn keyless_refusals() {
    // Identity mismatch.
    keyless_refused(
        &Entry::default(),
        "mallory@example.com",
        ISSUER,
        None,
        &[
            "certificate identity mismatch",
            "mallory@example.com",
            IDENTITY,
        ],
    );

    // Issuer mismatch.
    keyless_refused(
        &Entry::default(),
        IDENTITY,
        "https://evil.example.com",
        None,
        &["OIDC issuer mismatch", "https://evil.example.com"],
    );

    // The certificate had expired when the log says it signed (Fulcio
    // certificates live minutes; this one a day).
    let late = Entry {
        integrated_time: now() + 3 * 86400,
        ..Entry::default()
    };
    keyless_refused(
        &late,
        IDENTITY,
        ISSUER,
        None,
        &["the signing certificate had expired at"],
    );

    // Issued by a CA the trusted root does not name.
    keyless_refused(
        &Entry::default(),
        IDENTITY,
        ISSUER,
        Some("rogue"),
        &["does not chain to a CA in OCIMODEL_TRUSTED_ROOT (untrusted)"],
    );

    // A forged signed entry timestamp.
    let forged = Entry {
        tamper_set: true,
        ..Entry::default()
    };
    keyless_refused(
        &forged,
        IDENTITY,
        ISSUER,
        None,
        &["signed entry timestamp does not verify"],
    );

    // A genuine log entry, but for another signature.
    let foreign = Entry {
        foreign_body: true,
        ..Entry::default()
    };
    let model = keyless_refused(
        &foreign,
        IDENTITY,
        ISSUER,
        None,
        &["the log entry records a different signature"],
    );

    // Keyless settings without a trusted root.
    model.refused(
        &[
            ("COSIGN_CERT_IDENTITY", IDENTITY),
            ("COSIGN_CERT_OIDC_ISSUER", ISSUER),
        ],
        &["keyless verification needs OCIMODEL_TRUSTED_ROOT"],
    );
}

#[test]
fn key_based_bundle_referrer() {
    let model = Model::push();
    let w = Workshop::new();
    let public = w.keypair("cosign", Kind::P256);
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"digest": {"sha256": model.hex()}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1", "predicate": {}
    })
    .to_string();
    let pae = format!(
        "DSSEv1 28 application/vnd.in-toto+json {} {statement}",
        statement.len()
    );
    let sig = w.sign("cosign", Kind::P256, pae.as_bytes());
    let bundle = json!({
        "mediaType": BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": "test"}, "tlogEntries": []},
        "dsseEnvelope": {"payload": B64.encode(statement.as_bytes()), "payloadType": "application/vnd.in-toto+json",
                         "signatures": [{"sig": B64.encode(sig)}]}
    })
    .to_string();
    model.attach(0, BUNDLE, BUNDLE, &bundle, bundle_annotations());
    let m = model.installed(&[("COSIGN_KEY", &public)]);
    assert_eq!(m["signatures"][0]["kind"], "sigstore bundle");
    assert!(m["signatures"][0]["location"]
        .as_str()
        .unwrap()
        .starts_with("referrer sha256:"));
}

/// CBOR (RFC 8949) head: major type and length/value.
fn cbor_head(major: u8, n: u64) -> Vec<u8> {
    let m = major << 5;
    match n {
        0..=23 => vec![m | n as u8],
        24..=0xff => vec![m | 24, n as u8],
        0x100..=0xffff => [vec![m | 25], (n as u16).to_be_bytes().to_vec()].concat(),
        _ => [vec![m | 26], (n as u32).to_be_bytes().to_vec()].concat(),
    }
}

fn cbor_bytes(b: &[u8]) -> Vec<u8> {
    [cbor_head(2, b.len() as u64), b.to_vec()].concat()
}

fn cbor_text(t: &str) -> Vec<u8> {
    [cbor_head(3, t.len() as u64), t.as_bytes().to_vec()].concat()
}

/// A notation COSE_Sign1 envelope (signature-envelope-cose.md): tag 18,
/// `[protected, {33: x5chain}, payload, r||s]`, signed over
/// `["Signature1", protected, h'', payload]`.
fn notation_cose(
    w: &Workshop,
    name: &str,
    chain: &[Vec<u8>],
    target: serde_json::Value,
) -> Vec<u8> {
    let scheme = "io.cncf.notary.signingScheme";
    let mut protected = cbor_head(5, 5);
    protected.extend([0x01, 0x26]); // alg: -7 (ES256)
    protected.extend([&[0x02][..], &cbor_head(4, 1), &cbor_text(scheme)].concat()); // crit
    protected.extend(
        [
            &[0x03][..],
            &cbor_text("application/vnd.cncf.notary.payload.v1+json"),
        ]
        .concat(),
    );
    protected.extend([cbor_text(scheme), cbor_text("notary.x509")].concat());
    protected.extend(cbor_text("io.cncf.notary.signingTime"));
    protected.extend([&[0xc1][..], &cbor_head(0, now())].concat()); // tag 1: epoch seconds
    let payload = json!({"targetArtifact": target}).to_string().into_bytes();
    let to_sign = [
        vec![0x84],
        cbor_text("Signature1"),
        cbor_bytes(&protected),
        vec![0x40],
        cbor_bytes(&payload),
    ]
    .concat();
    let sig = der_to_raw(&w.sign(name, Kind::P256, &to_sign), 32);
    let mut unprotected = cbor_head(5, 1);
    unprotected.extend([0x18, 33]); // label 33: x5chain
    unprotected.extend(cbor_head(4, chain.len() as u64));
    for c in chain {
        unprotected.extend(cbor_bytes(c));
    }
    [
        vec![0xd2, 0x84], // tag 18, array of 4
        cbor_bytes(&protected),
        unprotected,
        cbor_bytes(&payload),
        cbor_bytes(&sig),
    ]
    .concat()
}

/// Attaches a notation JWS envelope to the model as referrer `n`.
fn attach_notation(model: &Model, n: usize, envelope: &str, thumbprint: &serde_json::Value) {
    model.attach(
        n,
        NOTARY,
        "application/jose+json",
        envelope,
        thumbprint.clone(),
    );
}

/// Raw `r||s` (JWS) from a DER ECDSA signature, each half `n` bytes.
fn der_to_raw(der: &[u8], n: usize) -> Vec<u8> {
    let mut i = 2;
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = der[i + 1] as usize;
        let int = &der[i + 2..i + 2 + len];
        let int = &int[int.len().saturating_sub(n)..];
        out.extend(std::iter::repeat_n(0u8, n - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}

/// A notation JWS envelope over `target`, signed by leaf `name` with the
/// given chain (leaf first).
fn notation_jws(
    w: &Workshop,
    name: &str,
    chain: &[Vec<u8>],
    target: serde_json::Value,
    expiry: Option<&str>,
) -> String {
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut protected = json!({
        "alg": "ES256",
        "cty": "application/vnd.cncf.notary.payload.v1+json",
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "crit": ["io.cncf.notary.signingScheme"]
    });
    if let Some(e) = expiry {
        protected["io.cncf.notary.expiry"] = json!(e);
        protected["crit"] = json!(["io.cncf.notary.signingScheme", "io.cncf.notary.expiry"]);
    }
    let p64 = b64url.encode(protected.to_string());
    let payload = b64url.encode(json!({"targetArtifact": target}).to_string());
    let sig = w.sign(name, Kind::P256, format!("{p64}.{payload}").as_bytes());
    json!({
        "payload": payload,
        "protected": p64,
        "header": {"x5c": chain.iter().map(|c| B64.encode(c)).collect::<Vec<_>>(),
                   "io.cncf.notary.signingAgent": "ocimodel-tests"},
        "signature": b64url.encode(der_to_raw(&sig, 32)),
    })
    .to_string()
}

#[test]
fn notation_jws_signatures() {
    let model = Model::push();
    let w = Workshop::new();
    w.ca(
        "notary-root",
        "/C=US/ST=WA/O=example.io/CN=Notary Test Root",
    );
    let leaf = w.leaf(
        "notary-signer",
        "notary-root",
        "/C=US/ST=WA/O=example.io/CN=signer",
        "",
    );
    let root_pem = w.pem("notary-root");
    let target = json!({"mediaType": OCI_MANIFEST, "digest": model.digest, "size": model.size});
    let thumbprint = json!({"io.cncf.notary.x509chain.thumbprint#S256": json!([hex(&sha256(&leaf)).to_uppercase()]).to_string()});

    // Not signed yet.
    let env = [("NOTATION_CERT", root_pem.as_str())];
    model.refused(&env, &["no signature found", "notation referrers"]);

    // A signature of the wrong size, one from an untrusted root, an expired
    // one: each refused, with every reason in the line.
    let wrong = json!({"mediaType": OCI_MANIFEST, "digest": model.digest, "size": model.size + 1});
    attach_notation(
        &model,
        0,
        &notation_jws(
            &w,
            "notary-signer",
            std::slice::from_ref(&leaf),
            wrong,
            None,
        ),
        &thumbprint,
    );
    w.ca("rogue-root", "/C=US/ST=WA/O=rogue/CN=Rogue Root");
    let rogue = w.leaf(
        "rogue-signer",
        "rogue-root",
        "/C=US/ST=WA/O=rogue/CN=signer",
        "",
    );
    attach_notation(
        &model,
        1,
        &notation_jws(&w, "rogue-signer", &[rogue], target.clone(), None),
        &thumbprint,
    );
    attach_notation(
        &model,
        2,
        &notation_jws(
            &w,
            "notary-signer",
            std::slice::from_ref(&leaf),
            target.clone(),
            Some("2020-01-01T00:00:00Z"),
        ),
        &thumbprint,
    );
    model.refused(
        &env,
        &[
            "no valid signature",
            "3 tried",
            &format!("of {} bytes", model.size + 1),
            "does not chain to a CA in NOTATION_CERT",
            "expired at 2020-01-01",
        ],
    );

    // A good one among them.
    attach_notation(
        &model,
        3,
        &notation_jws(
            &w,
            "notary-signer",
            std::slice::from_ref(&leaf),
            target.clone(),
            None,
        ),
        &thumbprint,
    );
    let m = model.installed(&env);
    assert_eq!(m["signatures"][0]["kind"], "notation");
    assert_eq!(
        m["signatures"][0]["signer"],
        "C=US, ST=WA, O=example.io, CN=signer"
    );
    // The identity policy: matching (order and S/ST spelling do not matter), then not.
    model.installed(&[
        ("NOTATION_CERT", &root_pem),
        (
            "OCIMODEL_NOTATION_IDENTITY",
            "x509.subject: CN=signer, O=example.io, S=WA, C=US",
        ),
    ]);
    model.refused(
        &[
            ("NOTATION_CERT", &root_pem),
            (
                "OCIMODEL_NOTATION_IDENTITY",
                "x509.subject: C=US, ST=WA, O=example.io, CN=someone-else",
            ),
        ],
        &["is not in OCIMODEL_NOTATION_IDENTITY"],
    );
    // A COSE envelope, alone (the JWS ones removed from the referrers index).
    let cose_model = Model::push();
    let cose_target =
        json!({"mediaType": OCI_MANIFEST, "digest": cose_model.digest, "size": cose_model.size});
    let envelope = notation_cose(
        &w,
        "notary-signer",
        std::slice::from_ref(&leaf),
        cose_target,
    );
    cose_model.attach_raw(0, NOTARY, "application/cose", &envelope, thumbprint.clone());
    let m = cose_model.installed(&env);
    assert_eq!(m["signatures"][0]["kind"], "notation");
    // A forged COSE signature, alone on another model, is refused.
    let forged_model = Model::push();
    let forged_target = json!({"mediaType": OCI_MANIFEST, "digest": forged_model.digest, "size": forged_model.size});
    let mut forged = notation_cose(
        &w,
        "notary-signer",
        std::slice::from_ref(&leaf),
        forged_target,
    );
    let last = forged.len() - 1;
    forged[last] ^= 1;
    forged_model.attach_raw(0, NOTARY, "application/cose", &forged, thumbprint.clone());
    forged_model.refused(
        &env,
        &[
            "notation referrer",
            "does not verify with its certificate's key",
        ],
    );
    // The root as a mounted file works the same.
    model.installed(&[("NOTATION_CERT", w.path("notary-root.pem").to_str().unwrap())]);
}

#[test]
fn verify_from_a_local_layout() {
    // `ocimodel push --oci-layout` writes the model; a cosign signature tag
    // is added to the same layout's index, as `cosign save` keeps it.
    let w = Workshop::new();
    let public = w.keypair("k", Kind::Ed25519);
    let layout = w.path("layout");
    let model_dir = w.path("model");
    fs::create_dir_all(&model_dir).unwrap();
    fs::write(model_dir.join("model.onnx"), b"weights").unwrap();
    let out = Ocimodel::new().run(&[
        "push",
        "--format",
        "oras",
        model_dir.to_str().unwrap(),
        "--oci-layout",
        layout.to_str().unwrap(),
        "v1",
    ]);
    out.assert_ok();
    let digest = out.stdout().split_whitespace().next().unwrap().to_string();
    let payload = simple_payload(&digest);
    let sig = w.sign("k", Kind::Ed25519, payload.as_bytes());
    let blob = |bytes: &[u8]| {
        let d = hex(&sha256(bytes));
        fs::write(layout.join("blobs/sha256").join(&d), bytes).unwrap();
        (format!("sha256:{d}"), bytes.len())
    };
    let (pd, ps) = blob(payload.as_bytes());
    let (cd, cs) = blob(b"{}");
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": SIMPLE_SIGNING, "digest": pd, "size": ps,
                    "annotations": {"dev.cosignproject.cosign/signature": B64.encode(sig)}}]
    })
    .to_string();
    let (md, ms) = blob(manifest.as_bytes());
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": OCI_MANIFEST, "digest": md, "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": format!("{}.sig", digest.replace(':', "-"))}
    }));
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    let uri = format!("oci-layout://{}:v1", layout.display());
    let run = Ocimodel::new()
        .env("COSIGN_KEY", &public)
        .run(&["verify", &uri, "--format", "json"]);
    run.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["signatures"][0]["kind"], "cosign");

    let dest = w.path("dest");
    Ocimodel::new()
        .env("COSIGN_KEY", &public)
        .run(&["unpack", &uri, dest.to_str().unwrap()])
        .assert_ok();
    assert_eq!(fs::read(dest.join("model.onnx")).unwrap(), b"weights");

    // Another key: `verify` exits 1 with the reason on stderr.
    let other = w.keypair("other", Kind::Ed25519);
    let run = Ocimodel::new()
        .env("COSIGN_KEY", &other)
        .run(&["verify", &uri]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr().contains("does not verify with COSIGN_KEY"),
        "{}",
        run.stderr()
    );
    // With nothing configured, verify refuses to say "ok".
    let run = Ocimodel::new().run(&["verify", &uri]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr().contains("nothing to verify against"),
        "{}",
        run.stderr()
    );
}

/// cosign's older keyless form: the `.sig` tag's layer carries the leaf
/// certificate and a Rekor bundle (a hashedrekord entry and its SET) in
/// annotations (SIGNATURE_SPEC.md; pkg/oci/static/signature.go).
#[test]
fn keyless_legacy_signature_tag() {
    let model = Model::push();
    let s = Sigstore::new();
    s.leaf("signer", "fulcio", IDENTITY, ISSUER);
    let payload = simple_payload(&model.digest);
    let sig = s.w.sign("signer", Kind::P256, payload.as_bytes());
    let leaf_pem = s.w.pem("signer");
    let body = json!({
        "apiVersion": "0.0.1", "kind": "hashedrekord",
        "spec": {"data": {"hash": {"algorithm": "sha256", "value": hex(&sha256(payload.as_bytes()))}},
                 "signature": {"content": B64.encode(&sig), "publicKey": {"content": B64.encode(leaf_pem.as_bytes())}}}
    })
    .to_string();
    let time = now() + 120;
    let set_bytes = format!(
        r#"{{"body":"{}","integratedTime":{time},"logID":"{}","logIndex":7}}"#,
        B64.encode(body.as_bytes()),
        hex(&s.log_id)
    );
    let set = s.w.sign("rekor", Kind::P256, set_bytes.as_bytes());
    let rekor_bundle = json!({
        "SignedEntryTimestamp": B64.encode(set),
        "Payload": {"body": B64.encode(body.as_bytes()), "integratedTime": time, "logIndex": 7, "logID": hex(&s.log_id)}
    })
    .to_string();
    let annotations = |cert: &str| {
        json!({"dev.cosignproject.cosign/signature": B64.encode(&sig),
               "dev.sigstore.cosign/certificate": cert,
               "dev.sigstore.cosign/chain": s.w.pem("fulcio"),
               "dev.sigstore.cosign/bundle": rekor_bundle})
    };
    model.push_cosign(&model.digest, &[(payload.clone(), annotations(&leaf_pem))]);
    let env = keyless_env(&s);
    let m = model.installed(&as_refs(&env));
    assert_eq!(m["signatures"][0]["kind"], "cosign");
    assert!(m["signatures"][0]["signer"]
        .as_str()
        .unwrap()
        .contains(IDENTITY));

    // Another certificate swapped in (same identity, new key): the
    // signature no longer verifies with it.
    s.leaf("impostor", "fulcio", IDENTITY, ISSUER);
    model.push_cosign(
        &model.digest,
        &[(payload, annotations(&s.w.pem("impostor")))],
    );
    model.refused(
        &as_refs(&env),
        &["does not verify with the signing certificate's key"],
    );
}

/// Several pairs in one call share the policy: the signed model installs,
/// the unsigned one is refused and its DEST left alone, and the run fails.
#[test]
fn several_pairs_share_the_policy() {
    let (model, _w, trusted) = signed_model();
    model.reg.oras_push_mnist("models/unsigned:v1");
    let work = tempfile::tempdir().unwrap();
    let (signed_dest, unsigned_dest) = (work.path().join("a"), work.path().join("b"));
    let unsigned_uri = format!("ocimodel://{}/models/unsigned:v1", model.reg.addr);
    let run = Ocimodel::for_registry(&model.reg)
        .env("COSIGN_KEY", &trusted)
        .run(&[
            model.uri().as_str(),
            signed_dest.to_str().unwrap(),
            unsigned_uri.as_str(),
            unsigned_dest.to_str().unwrap(),
        ]);
    run.assert_fails_with(&["1 of 2 models failed", &unsigned_uri, "no signature found"]);
    assert_eq!(marker(&signed_dest)["signatures"][0]["kind"], "cosign");
    assert_eq!(sha256_file(&signed_dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert!(!unsigned_dest.exists());
}

/// Signatures behind mirrors: the blobs come from a pull-through mirror that
/// may only serve content by digest (`capabilities = ["pull"]`), ahead of it
/// a Spegel-style mirror 404s everything; the signature tag and referrers
/// still resolve on the registry, and a required policy is met.
#[test]
fn signatures_resolve_on_the_registry_when_mirrors_cannot_serve_them() {
    let (model, _w, trusted) = signed_model();
    let mirror = Registry::start_proxy(&model.reg.addr);
    let spegel = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spegel_addr = spegel.local_addr().unwrap().to_string();
    serve(spegel, |_| response("404 Not Found", &[], b""));
    let hosts = tempfile::tempdir().unwrap();
    let (host, port) = model.reg.addr.split_once(':').unwrap();
    let sub = hosts.path().join(format!("{host}_{port}_"));
    fs::create_dir(&sub).unwrap();
    fs::write(
        sub.join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n\n[host.\"http://{spegel_addr}\"]\ncapabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{}\"]\ncapabilities = [\"pull\"]\n",
            model.reg.addr, mirror.addr
        ),
    )
    .unwrap();
    let hosts_dir = hosts.path().to_str().unwrap().to_string();
    let insecure = format!("{},{},{spegel_addr}", model.reg.addr, mirror.addr);
    let m = model.installed(&[
        ("COSIGN_KEY", &trusted),
        ("OCIMODEL_VERIFY", "required"),
        ("OCIMODEL_HOSTS_DIR", &hosts_dir),
        ("OCIMODEL_REGISTRIES_CONF", "off"),
        ("OCIMODEL_INSECURE_REGISTRIES", &insecure),
    ]);
    assert!(
        m["signatures"][0]["location"]
            .as_str()
            .unwrap()
            .contains(".sig"),
        "{m}"
    );
    let needle = format!("\"GET /v2/models/mnist/blobs/sha256:{MNIST_SHA256}?ns=");
    assert!(
        mirror
            .log()
            .lines()
            .any(|l| l.contains(&needle) && l.contains("\" 200 ")),
        "the model's blob did not come through the mirror:\n{}",
        mirror.log()
    );
}
