//! Signature policy, checked after a reference is resolved to a digest and
//! before anything is written to DEST.
//!
//! Forms found for a manifest digest `D` (all are looked up, any valid one
//! from a trusted signer suffices):
//! - cosign legacy: tag `sha256-<hex>.sig`, simple-signing layers;
//! - the same simple-signing manifest stored as a referrer;
//! - sigstore bundles (cosign v3) stored as referrers;
//! - notation JWS and COSE envelopes stored as referrers.
//!
//! Referrers come from the referrers API or its `sha256-<hex>` tag
//! fallback (see [`crate::registry`]); local layouts are searched too.
//!
//! Policy ([`Policy::from_inputs`]): `required` when any key, identity or
//! certificate is configured, else `off`; `if-present` passes unsigned
//! content but still rejects bad signatures; `off` with trust material set
//! is an error, never a silent skip.

pub mod cbor;
pub mod cosign;
pub mod der;
pub mod keys;
pub mod model;
pub mod notation;
pub mod sigstore;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::SignatureError;
use crate::fetch::fetch_small;
use crate::manifest::Document;
use crate::registry::FetchedManifest;
use crate::source::Source;

/// Signature payloads and envelopes are small; refuse bigger ones unread.
const MAX_SIGNATURE_BYTES: u64 = 1 << 20;
/// Signature manifests looked at per digest, so a flood cannot stall a pull.
const MAX_CANDIDATES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Off,
    IfPresent,
    Required,
}

/// What to trust. Built once per run; shared by every model.
#[derive(Clone, Debug)]
pub struct Policy {
    pub mode: Mode,
    pub keys: Vec<keys::PublicKey>,
    pub keyless: Option<sigstore::Keyless>,
    pub notation: Option<notation::Trust>,
    /// CA certificates a sigstore bundle's own certificate chain (no log
    /// entry: `model_signing sign certificate`) must lead to.
    pub certificates: Vec<Vec<u8>>,
    /// The settings that gave `keys` and `certificates`, for messages.
    pub key_setting: &'static str,
    pub certificate_setting: &'static str,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            mode: Mode::Off,
            keys: Vec::new(),
            keyless: None,
            notation: None,
            certificates: Vec::new(),
            key_setting: "COSIGN_KEY",
            certificate_setting: "",
        }
    }
}

/// The raw settings, from env or flags (names as in kitops-init and cosign).
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// OCIMODEL_VERIFY.
    pub verify: Option<Mode>,
    /// COSIGN_KEY.
    pub key: Option<String>,
    /// COSIGN_CERT_IDENTITY / COSIGN_CERT_IDENTITY_REGEXP.
    pub identity: Option<String>,
    pub identity_regexp: Option<String>,
    /// COSIGN_CERT_OIDC_ISSUER / COSIGN_CERT_OIDC_ISSUER_REGEXP.
    pub issuer: Option<String>,
    pub issuer_regexp: Option<String>,
    /// OCIMODEL_TRUSTED_ROOT: a sigstore trusted_root.json.
    pub trusted_root: Option<String>,
    /// NOTATION_CERT and OCIMODEL_NOTATION_IDENTITY.
    pub notation_cert: Option<String>,
    pub notation_identity: Option<String>,
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `OCIMODEL_TRUSTED_ROOT`: the JSON text itself (from a ConfigMap via
/// env), or a path.
fn trusted_root(root: &str) -> Result<sigstore::TrustedRoot> {
    let (name, text) = if root.starts_with('{') {
        ("OCIMODEL_TRUSTED_ROOT".to_string(), root.to_string())
    } else {
        let texts = keys::load_texts("OCIMODEL_TRUSTED_ROOT", root)?;
        texts
            .into_iter()
            .next()
            .expect("load_texts returns at least one")
    };
    sigstore::TrustedRoot::parse(&text, &name)
}

fn matcher(
    exact: Option<&str>,
    regexp: Option<&str>,
    name: &str,
) -> Result<Option<sigstore::Matcher>> {
    match (exact, regexp) {
        (Some(_), Some(_)) => bail!("set {name} or {name}_REGEXP, not both"),
        (Some(e), None) => Ok(Some(sigstore::Matcher::Exact(e.to_string()))),
        (None, Some(r)) => Ok(Some(sigstore::Matcher::Regex(
            regex_lite::Regex::new(r)
                .with_context(|| format!("{name}_REGEXP is not a valid regular expression"))?,
        ))),
        (None, None) => Ok(None),
    }
}

impl Policy {
    pub fn from_inputs(i: &Inputs) -> Result<Policy> {
        let mut policy = Policy::default();
        if let Some(k) = set(&i.key) {
            policy.keys = keys::load_keys("COSIGN_KEY", k)?;
        }
        let identity = matcher(
            set(&i.identity),
            set(&i.identity_regexp),
            "COSIGN_CERT_IDENTITY",
        )?;
        let issuer = matcher(
            set(&i.issuer),
            set(&i.issuer_regexp),
            "COSIGN_CERT_OIDC_ISSUER",
        )?;
        match (identity, issuer, set(&i.trusted_root)) {
            (Some(identity), Some(issuer), Some(root)) => {
                policy.keyless = Some(sigstore::Keyless {
                    identity,
                    issuer,
                    root: trusted_root(root)?,
                });
            }
            (Some(_), Some(_), None) => bail!("keyless verification needs OCIMODEL_TRUSTED_ROOT (a sigstore trusted_root.json); ocimodel makes no network calls to sigstore services"),
            (Some(_), None, _) => bail!("COSIGN_CERT_IDENTITY needs COSIGN_CERT_OIDC_ISSUER (or its _REGEXP) too"),
            (None, Some(_), _) => bail!("COSIGN_CERT_OIDC_ISSUER needs COSIGN_CERT_IDENTITY (or its _REGEXP) too"),
            (None, None, Some(_)) => bail!("OCIMODEL_TRUSTED_ROOT is set but COSIGN_CERT_IDENTITY and COSIGN_CERT_OIDC_ISSUER are not; set them to say whose certificates to accept"),
            (None, None, None) => {}
        }
        if let Some(c) = set(&i.notation_cert) {
            policy.notation = Some(notation::Trust {
                anchors: keys::load_certificates("NOTATION_CERT", c)?,
                identities: set(&i.notation_identity)
                    .map(notation::Trust::parse_identities)
                    .unwrap_or_default(),
            });
        } else if set(&i.notation_identity).is_some() {
            bail!("OCIMODEL_NOTATION_IDENTITY needs NOTATION_CERT (the trusted roots)");
        }
        let configured = policy.has_trust();
        policy.mode = match i.verify {
            None if configured => Mode::Required,
            None => Mode::Off,
            Some(Mode::Off) if configured => bail!(
                "OCIMODEL_VERIFY=off but {} is set; unset one (ocimodel does not skip verification silently)",
                policy.trust_names().join(", ")
            ),
            Some(mode) => mode,
        };
        if policy.mode != Mode::Off && !configured {
            bail!("OCIMODEL_VERIFY asks for signature checks but nothing to trust is set: give COSIGN_KEY, COSIGN_CERT_IDENTITY with COSIGN_CERT_OIDC_ISSUER and OCIMODEL_TRUSTED_ROOT, or NOTATION_CERT");
        }
        Ok(policy)
    }

    pub fn is_off(&self) -> bool {
        self.mode == Mode::Off
    }

    fn has_trust(&self) -> bool {
        !self.keys.is_empty() || self.keyless.is_some() || self.notation.is_some()
    }

    fn trust_names(&self) -> Vec<&'static str> {
        let mut n = Vec::new();
        if !self.keys.is_empty() {
            n.push("COSIGN_KEY");
        }
        if self.keyless.is_some() {
            n.push("COSIGN_CERT_IDENTITY");
        }
        if self.notation.is_some() {
            n.push("NOTATION_CERT");
        }
        n
    }

    fn wants_cosign(&self) -> bool {
        !self.keys.is_empty() || self.keyless.is_some()
    }

    fn looked_for(&self, digest: &Digest) -> String {
        let mut l = Vec::new();
        if self.wants_cosign() {
            l.push(format!(
                "cosign tag {} and sigstore bundle referrers",
                cosign::signature_tag(digest)
            ));
        }
        if self.notation.is_some() {
            l.push("notation referrers".to_string());
        }
        l.join(", ")
    }
}

/// The signature forms ocimodel reads (as recorded in markers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureKind {
    #[serde(rename = "cosign")]
    Cosign,
    #[serde(rename = "sigstore bundle")]
    SigstoreBundle,
    #[serde(rename = "notation")]
    Notation,
}

impl std::fmt::Display for SignatureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignatureKind::Cosign => "cosign",
            SignatureKind::SigstoreBundle => "sigstore bundle",
            SignatureKind::Notation => "notation",
        })
    }
}

/// A signature that verified: what kind, where it was found, who signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub kind: SignatureKind,
    pub location: String,
    pub signer: String,
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} signature by {} ({})",
            self.kind, self.signer, self.location
        )
    }
}

/// Checks `top` (the manifest or index the reference resolved to) against
/// the policy. Returns the valid signatures: empty only under `if-present`
/// with nothing signed. Errors name every signature tried and why it failed.
pub async fn verify(
    source: &Source,
    top: &FetchedManifest,
    policy: &Policy,
) -> Result<Vec<Signature>> {
    let digest = &top.digest;
    let mut found = 0usize;
    let mut valid = Vec::new();
    let mut problems = Vec::new();
    let mut record = |location: String, kind: SignatureKind, result: Result<String>| match result {
        Ok(signer) => valid.push(Signature {
            kind,
            location,
            signer,
        }),
        Err(e) => problems.push(format!("{kind} {location}: {e:#}")),
    };

    if policy.wants_cosign() {
        let tag = cosign::signature_tag(digest);
        if let Some(sig_manifest) = source
            .tagged(&tag)
            .await
            .with_context(|| format!("looking up cosign signature tag {tag}"))?
        {
            for (i, layer) in simple_signing_layers(&sig_manifest)?
                .into_iter()
                .enumerate()
            {
                found += 1;
                let result = async {
                    let payload = fetch_small(source, &layer, MAX_SIGNATURE_BYTES).await?;
                    cosign::check_simple_signing(&layer, &payload, digest, policy)
                }
                .await;
                record(
                    format!("tag {tag} layer {i}"),
                    SignatureKind::Cosign,
                    result,
                );
            }
        }
    }

    let referrers = source
        .referrers(digest, None)
        .await
        .with_context(|| format!("listing referrers of {digest}"))?;
    let kind_of = |t: &str| {
        if t.starts_with(cosign::BUNDLE_PREFIX) && policy.wants_cosign() {
            Some(SignatureKind::SigstoreBundle)
        } else if t == cosign::SIG_REFERRER && policy.wants_cosign() {
            Some(SignatureKind::Cosign)
        } else if t == notation::ARTIFACT_TYPE && policy.notation.is_some() {
            Some(SignatureKind::Notation)
        } else {
            None
        }
    };
    let candidates = referrers
        .into_iter()
        .filter_map(|r| kind_of(r.artifact_type.as_deref().unwrap_or("")).map(|k| (k, r)))
        .take(MAX_CANDIDATES);
    for (kind, r) in candidates {
        let result = check_referrer(source, top, &r, kind, policy).await;
        found += 1;
        record(format!("referrer {}", r.digest), kind, result);
    }

    if !valid.is_empty() {
        for p in &problems {
            tracing::warn!(digest = %digest, "ignoring a signature that does not verify: {p}");
        }
        return Ok(valid);
    }
    if found == 0 {
        if policy.mode == Mode::IfPresent {
            tracing::warn!(digest = %digest, "no signature found; OCIMODEL_VERIFY=if-present lets it through");
            return Ok(Vec::new());
        }
        return Err(SignatureError(format!(
            "signature verification failed: no signature found for {digest} (looked for {}); sign it, or set OCIMODEL_VERIFY=if-present to allow unsigned models",
            policy.looked_for(digest)
        ))
        .into());
    }
    Err(SignatureError(format!(
        "signature verification failed for {digest}: no valid signature from a trusted signer ({} tried): {}",
        found,
        problems.join("; ")
    ))
    .into())
}

/// Checks one signature referrer of `top` of the given kind; returns who
/// signed.
async fn check_referrer(
    source: &Source,
    top: &FetchedManifest,
    r: &crate::manifest::Descriptor,
    kind: SignatureKind,
    policy: &Policy,
) -> Result<String> {
    let digest = &top.digest;
    let m = source.manifest(&r.digest).await?;
    let Document::Manifest(m) = Document::parse(&m.bytes, m.content_type.as_deref())? else {
        bail!("not an image manifest");
    };
    if m.subject.as_ref().map(|s| &s.digest) != Some(digest) {
        bail!("its subject is not {digest}");
    }
    match kind {
        SignatureKind::Cosign => {
            let mut last = Err(anyhow!("no simple-signing layer"));
            for layer in m
                .layers
                .iter()
                .filter(|l| l.media_type == cosign::SIMPLE_SIGNING)
            {
                let payload = fetch_small(source, layer, MAX_SIGNATURE_BYTES).await?;
                last = cosign::check_simple_signing(layer, &payload, digest, policy);
                if last.is_ok() {
                    break;
                }
            }
            last
        }
        SignatureKind::SigstoreBundle => {
            let [layer] = m.layers.as_slice() else {
                bail!(
                    "a bundle manifest must have exactly one layer, not {}",
                    m.layers.len()
                );
            };
            let bytes = fetch_small(source, layer, MAX_SIGNATURE_BYTES).await?;
            cosign::check_bundle(&bytes, digest, policy)
        }
        _ => {
            let [layer] = m.layers.as_slice() else {
                bail!(
                    "a notation signature must have exactly one layer, not {}",
                    m.layers.len()
                );
            };
            let check = match layer.media_type.as_str() {
                notation::JWS => notation::check_jws,
                notation::COSE => notation::check_cose,
                other => bail!(
                    "envelope type '{other}' is neither {} nor {}",
                    notation::JWS,
                    notation::COSE
                ),
            };
            let bytes = fetch_small(source, layer, MAX_SIGNATURE_BYTES).await?;
            let trust = policy
                .notation
                .as_ref()
                .expect("kind chosen only with notation trust");
            let target = notation::Target {
                digest,
                media_type: &media_type_of(top),
                size: top.bytes.len() as u64,
            };
            check(&bytes, &target, trust)
        }
    }
}

/// The simple-signing layers of a cosign `.sig` manifest.
fn simple_signing_layers(m: &FetchedManifest) -> Result<Vec<crate::manifest::Descriptor>> {
    match Document::parse(&m.bytes, m.content_type.as_deref())
        .context("the cosign signature manifest")?
    {
        Document::Manifest(m) => Ok(m
            .layers
            .into_iter()
            .filter(|l| l.media_type == cosign::SIMPLE_SIGNING)
            .collect()),
        Document::Index(_) => bail!("the cosign signature tag holds an index, not a manifest"),
    }
}

/// The manifest's media type, from its own `mediaType` field (what a
/// signer saw), else the registry's Content-Type.
fn media_type_of(top: &FetchedManifest) -> String {
    serde_json::from_slice::<serde_json::Value>(&top.bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .or_else(|| top.content_type.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs::default()
    }

    #[test]
    fn nothing_configured_is_off() {
        assert!(Policy::from_inputs(&inputs()).unwrap().is_off());
    }

    #[test]
    fn asking_without_trust_is_an_error() {
        for mode in [Mode::Required, Mode::IfPresent] {
            let i = Inputs {
                verify: Some(mode),
                ..inputs()
            };
            let err = Policy::from_inputs(&i).unwrap_err().to_string();
            assert!(err.contains("nothing to trust"), "{err}");
        }
    }

    #[test]
    fn keyless_needs_all_three_parts() {
        let i = Inputs {
            identity: Some("a@b".into()),
            ..inputs()
        };
        assert!(Policy::from_inputs(&i)
            .unwrap_err()
            .to_string()
            .contains("COSIGN_CERT_OIDC_ISSUER"));
        let i = Inputs {
            identity: Some("a@b".into()),
            issuer: Some("https://issuer".into()),
            ..inputs()
        };
        assert!(Policy::from_inputs(&i)
            .unwrap_err()
            .to_string()
            .contains("OCIMODEL_TRUSTED_ROOT"));
        let i = Inputs {
            identity: Some("a@b".into()),
            identity_regexp: Some(".*".into()),
            ..inputs()
        };
        assert!(Policy::from_inputs(&i)
            .unwrap_err()
            .to_string()
            .contains("not both"));
    }

    /// The worked examples of docs/formats.md §8 (tests/fixtures/signature-examples),
    /// verified as written and refused with one byte changed.
    mod worked_examples {
        use super::super::*;
        use crate::manifest::Descriptor;

        const DIR: &str = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/signature-examples"
        );
        const SUBJECT: &str =
            "sha256:1998cf6ed2fb4d60eb2224b3713867d92d383aa71bf159d36114169b8f932743";
        const COSIGN_SIG: &str = "MEYCIQDhPHObz13JQHoOfhPgcjC2NkkgjN6rOT27o/jM3PNEjAIhALLDhrpUvheSz3JtqKJFGmgThqaAfH06K/w/gVYsdcUo";

        fn read(name: &str) -> Vec<u8> {
            std::fs::read(format!("{DIR}/{name}")).unwrap()
        }

        fn key_policy() -> Policy {
            Policy::from_inputs(&Inputs {
                key: Some(format!("{DIR}/cosign.pub")),
                ..Inputs::default()
            })
            .unwrap()
        }

        fn layer(payload: &[u8]) -> Descriptor {
            serde_json::from_value(serde_json::json!({
                "mediaType": cosign::SIMPLE_SIGNING,
                "digest": Digest::sha256_of(payload).to_string(),
                "size": payload.len(),
                "annotations": {"dev.cosignproject.cosign/signature": COSIGN_SIG}
            }))
            .unwrap()
        }

        #[test]
        fn cosign_simple_signing() {
            let payload = read("simplesigning.json");
            let subject: Digest = SUBJECT.parse().unwrap();
            let policy = key_policy();
            let who = cosign::check_simple_signing(&layer(&payload), &payload, &subject, &policy)
                .unwrap();
            assert!(who.contains("ECDSA P-256"), "{who}");
            let mut tampered = payload.clone();
            tampered[10] ^= 1;
            let err = cosign::check_simple_signing(&layer(&payload), &tampered, &subject, &policy)
                .unwrap_err();
            assert!(err.to_string().contains("does not verify"), "{err}");
        }

        #[test]
        fn sigstore_bundle_with_key() {
            let bundle = read("bundle.sigstore.json");
            let subject: Digest = SUBJECT.parse().unwrap();
            cosign::check_bundle(&bundle, &subject, &key_policy()).unwrap();
            let other: Digest = format!("sha256:{}", "1".repeat(64)).parse().unwrap();
            let err = cosign::check_bundle(&bundle, &other, &key_policy()).unwrap_err();
            assert!(err.to_string().contains("signs sha256:1998"), "{err}");
            let tampered = String::from_utf8(bundle)
                .unwrap()
                .replace("MEUCICBT", "MEUCICBU");
            assert!(cosign::check_bundle(tampered.as_bytes(), &subject, &key_policy()).is_err());
        }

        #[test]
        fn notation_jws() {
            let envelope = read("notation.jws.json");
            let v: serde_json::Value = serde_json::from_slice(&envelope).unwrap();
            let cert = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                v["header"]["x5c"][0].as_str().unwrap(),
            )
            .unwrap();
            // The example's self-signed signer, trusted directly.
            let trust = notation::Trust {
                anchors: vec![cert],
                identities: notation::Trust::parse_identities(
                    "x509.subject: C=US, ST=WA, O=example.io, CN=signer",
                ),
            };
            let subject: Digest = SUBJECT.parse().unwrap();
            let target = notation::Target {
                digest: &subject,
                media_type: "application/vnd.oci.image.manifest.v1+json",
                size: 309,
            };
            // The certificate is valid through 2026; past that, expiry is
            // what must be reported.
            let before_expiry = std::time::SystemTime::now()
                < humantime::parse_rfc3339("2027-01-01T00:00:00Z").unwrap();
            let signed_by_the_example = |result: Result<String>| match result {
                Ok(who) => assert_eq!(who, "C=US, ST=WA, O=example.io, CN=signer"),
                Err(e) => assert!(!before_expiry && e.to_string().contains("expired"), "{e}"),
            };
            signed_by_the_example(notation::check_jws(&envelope, &target, &trust));
            // The same signature as a COSE_Sign1 envelope (docs/formats.md §8.6).
            let cose = read("notation.cose");
            signed_by_the_example(notation::check_cose(&cose, &target, &trust));
            let mut tampered = cose.clone();
            let at = tampered.len() - 70; // inside the payload
            tampered[at] ^= 1;
            assert!(notation::check_cose(&tampered, &target, &trust).is_err());
            let wrong_size = notation::Target {
                size: 310,
                ..target
            };
            let err = notation::check_jws(&envelope, &wrong_size, &trust)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("309 bytes") || err.contains("expired"),
                "{err}"
            );
        }
    }
}
