//! cosign signatures: the legacy simple-signing form (tag `sha256-<hex>.sig`,
//! or the same manifest as a referrer) and sigstore bundles v0.3 stored as
//! referrers (cosign v3's default).
//!
//! Sources: sigstore/cosign specs/SIGNATURE_SPEC.md and BUNDLE_SPEC.md,
//! sigstore/protobuf-specs sigstore_bundle.proto and envelope.proto (DSSE).

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::der;
use super::sigstore::{self, Expect, InclusionProof, TlogEntry};
use super::Policy;
use crate::digest::{unhex, Digest};
use crate::manifest::Descriptor;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The artifact type of a simple-signing manifest stored as a referrer.
pub const SIG_REFERRER: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
pub const BUNDLE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
const ANN_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
const ANN_CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
const ANN_CHAIN: &str = "dev.sigstore.cosign/chain";
const ANN_BUNDLE: &str = "dev.sigstore.cosign/bundle";
const SIMPLE_SIGNING_TYPE: &str = "cosign container image signature";
const IN_TOTO: &str = "application/vnd.in-toto+json";
const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// Where cosign keeps the legacy signatures of `digest`: tag `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}-{}.sig", digest.algorithm().name(), digest.hex())
}

/// Checks one simple-signing layer whose payload was fetched (and checked
/// against the layer digest). Returns who signed.
pub fn check_simple_signing(
    layer: &Descriptor,
    payload: &[u8],
    subject: &Digest,
    policy: &Policy,
) -> Result<String> {
    let sig_b64 = layer
        .annotations
        .get(ANN_SIGNATURE)
        .ok_or_else(|| anyhow!("the layer has no {ANN_SIGNATURE} annotation"))?;
    let signature = B64
        .decode(sig_b64.trim())
        .context("the signature annotation is not base64")?;
    let signer = match layer.annotations.get(ANN_CERTIFICATE) {
        Some(cert_pem) if policy.keyless.is_some() => {
            let chain = layer
                .annotations
                .get(ANN_CHAIN)
                .map(|c| der::pem_blocks(c))
                .transpose()
                .context("the chain annotation")?
                .unwrap_or_default()
                .into_iter()
                .map(|(_, d)| d)
                .collect::<Vec<_>>();
            let leaf = der::pem_blocks(cert_pem)
                .context("the certificate annotation")?
                .into_iter()
                .next()
                .map(|(_, d)| d)
                .ok_or_else(|| anyhow!("the certificate annotation holds no certificate"))?;
            let bundle = layer
                .annotations
                .get(ANN_BUNDLE)
                .ok_or_else(|| anyhow!("a keyless signature without a transparency-log bundle ({ANN_BUNDLE}) cannot be checked offline"))?;
            let entry = legacy_tlog_entry(bundle)?;
            keyless_check(&leaf, &chain, &entry, payload, payload, &signature, policy)?
        }
        _ => key_check(policy, payload, &signature)?,
    };
    check_simple_signing_claim(payload, subject)?;
    Ok(signer)
}

/// The claim inside a valid signature must be about this manifest.
fn check_simple_signing_claim(payload: &[u8], subject: &Digest) -> Result<()> {
    let claim: Value = serde_json::from_slice(payload).context("the signed payload is not JSON")?;
    let critical = &claim["critical"];
    if critical["type"].as_str() != Some(SIMPLE_SIGNING_TYPE) {
        bail!("the signed payload is not a cosign container image signature");
    }
    let signed = critical["image"]["docker-manifest-digest"]
        .as_str()
        .ok_or_else(|| anyhow!("the signed payload names no docker-manifest-digest"))?;
    if signed != subject.to_string() {
        bail!("the signature is valid but signs {signed}, not {subject}");
    }
    Ok(())
}

/// Checks a sigstore bundle (a referrer's single layer) for image `subject`.
pub fn check_bundle(bytes: &[u8], subject: &Digest, policy: &Policy) -> Result<String> {
    let verified = verify_bundle(bytes, None, policy)?;
    let Signed::Statement(payload) = &verified.signed else {
        bail!("the bundle holds a message signature, not a DSSE envelope; that is not how cosign signs images");
    };
    check_statement(payload, subject)?;
    Ok(verified.signer)
}

/// What a verified bundle's signature covers.
#[derive(Debug)]
pub enum Signed {
    /// A DSSE envelope's payload (an in-toto statement), still to be read.
    Statement(Vec<u8>),
    /// A message signature over the artifact the caller gave.
    Artifact,
}

/// A bundle whose signature, log entry and certificate checked out.
#[derive(Debug)]
pub struct VerifiedBundle {
    pub signer: String,
    pub signed: Signed,
}

/// Checks a sigstore bundle's signature against the policy's keys or
/// keyless trust: for a DSSE envelope, over its PAE; for a message
/// signature, over `artifact` (refused without one). What the payload says
/// is the caller's to check.
pub fn verify_bundle(
    bytes: &[u8],
    artifact: Option<&[u8]>,
    policy: &Policy,
) -> Result<VerifiedBundle> {
    let bundle: Value = serde_json::from_slice(bytes).context("the bundle is not JSON")?;
    let media_type = bundle["mediaType"].as_str().unwrap_or("");
    let version = bundle_version(media_type)
        .ok_or_else(|| anyhow!("not a sigstore bundle (mediaType '{media_type}')"))?;
    let (signed_bytes, logged, signatures, signed) = bundle_content(&bundle, artifact)?;
    let material = &bundle["verificationMaterial"];
    let certs = bundle_certificates(material)?;
    let leaf = certs.first().cloned();
    let chain = certs.get(1..).unwrap_or_default().to_vec();
    let mut errors = Vec::new();
    for sig in &signatures {
        let keyless = || {
            let leaf = leaf.as_deref().expect("only called with a certificate");
            bundle_tlog_entry(material, version).and_then(|entry| {
                keyless_check(leaf, &chain, &entry, &signed_bytes, &logged, sig, policy)
            })
        };
        let chained = || {
            let leaf = leaf.as_deref().expect("only called with a certificate");
            certificate_check(leaf, &chain, &signed_bytes, sig, policy)
        };
        let result = match (
            &leaf,
            policy.keyless.is_some(),
            !policy.certificates.is_empty(),
        ) {
            (Some(_), true, true) => keyless().or_else(|a| {
                chained().map_err(|b| anyhow!("keyless: {a:#}; certificate chain: {b:#}"))
            }),
            (Some(_), true, false) => keyless(),
            (Some(_), false, true) => chained(),
            _ => key_check(policy, &signed_bytes, sig),
        };
        match result {
            Ok(signer) => return Ok(VerifiedBundle { signer, signed }),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("{}", errors.join("; "))
}

/// What a bundle's signatures cover: (the bytes signed, the bytes the log
/// records the digest of, the signatures, what the caller gets back).
type BundleContent = (Vec<u8>, Vec<u8>, Vec<Vec<u8>>, Signed);

fn bundle_content(bundle: &Value, artifact: Option<&[u8]>) -> Result<BundleContent> {
    Ok(if !bundle["dsseEnvelope"].is_null() {
        let envelope = &bundle["dsseEnvelope"];
        let payload_type = envelope["payloadType"].as_str().unwrap_or("");
        if payload_type != IN_TOTO {
            bail!("the DSSE payload type is '{payload_type}', not {IN_TOTO}");
        }
        let payload = b64_field(&envelope["payload"], "dsseEnvelope.payload")?;
        let signatures: Vec<Vec<u8>> = envelope["signatures"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["sig"].as_str())
                    .filter_map(|s| B64.decode(s).ok())
                    .collect()
            })
            .unwrap_or_default();
        if signatures.is_empty() {
            bail!("the DSSE envelope has no signatures");
        }
        (
            dsse_pae(payload_type, &payload),
            payload.clone(),
            signatures,
            Signed::Statement(payload),
        )
    } else if !bundle["messageSignature"].is_null() {
        let Some(artifact) = artifact else {
            bail!("the bundle holds a message signature, which needs the signed artifact");
        };
        let m = &bundle["messageSignature"];
        let want = b64_field(
            &m["messageDigest"]["digest"],
            "messageSignature.messageDigest",
        )?;
        if m["messageDigest"]["algorithm"].as_str() != Some("SHA2_256")
            || want.as_slice() != Sha256::digest(artifact).as_slice()
        {
            bail!("the bundle's message digest is not the artifact's SHA-256");
        }
        let sig = b64_field(&m["signature"], "messageSignature.signature")?;
        (
            artifact.to_vec(),
            artifact.to_vec(),
            vec![sig],
            Signed::Artifact,
        )
    } else {
        bail!("the bundle holds neither a DSSE envelope nor a message signature");
    })
}

/// The signing certificate, then any chain, from `verificationMaterial`.
fn bundle_certificates(material: &Value) -> Result<Vec<Vec<u8>>> {
    let mut certs = Vec::new();
    if let Some(raw) = material["certificate"]["rawBytes"].as_str() {
        certs.push(
            B64.decode(raw)
                .context("verificationMaterial.certificate")?,
        );
    } else if let Some(list) = material["x509CertificateChain"]["certificates"].as_array() {
        for c in list {
            certs.push(b64_field(
                &c["rawBytes"],
                "x509CertificateChain.certificates",
            )?);
        }
    }
    Ok(certs)
}

/// DSSE v1 pre-authentication encoding (envelope.proto).
pub fn dsse_pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(payload);
    pae
}

/// The bundle format's (major, minor) version from its media type:
/// `application/vnd.dev.sigstore.bundle+json;version=0.1` (0.1, 0.2) or
/// `application/vnd.dev.sigstore.bundle.v0.3+json` (0.3 on).
fn bundle_version(media_type: &str) -> Option<(u32, u32)> {
    let v = if let Some(v) =
        media_type.strip_prefix("application/vnd.dev.sigstore.bundle+json;version=")
    {
        v
    } else {
        media_type
            .strip_prefix("application/vnd.dev.sigstore.bundle.v")?
            .strip_suffix("+json")?
    };
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The in-toto statement must name this manifest and be a signature.
fn check_statement(payload: &[u8], subject: &Digest) -> Result<()> {
    let statement: Value =
        serde_json::from_slice(payload).context("the DSSE payload is not JSON")?;
    let predicate = statement["predicateType"].as_str().unwrap_or("");
    if predicate != COSIGN_SIGN_PREDICATE {
        bail!("the bundle is an attestation ({predicate}), not a cosign signature");
    }
    let alg = subject.algorithm().name();
    let names: Vec<String> = statement["subject"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["digest"][alg].as_str())
                .map(|h| format!("{alg}:{h}"))
                .collect()
        })
        .unwrap_or_default();
    if !names.iter().any(|n| *n == subject.to_string()) {
        bail!(
            "the signature is valid but signs {}, not {subject}",
            if names.is_empty() {
                "no digest".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    Ok(())
}

/// Tries every configured key.
fn key_check(policy: &Policy, message: &[u8], signature: &[u8]) -> Result<String> {
    let setting = policy.key_setting;
    if policy.keys.is_empty() {
        bail!("the signature is key-based but no {setting} is configured");
    }
    match policy.keys.iter().find(|k| k.verify(message, signature)) {
        Some(k) => Ok(format!("{} key {}", k.kind.name(), k.name)),
        None => bail!(
            "the signature does not verify with {setting} ({} key{} tried)",
            policy.keys.len(),
            if policy.keys.len() == 1 { "" } else { "s" }
        ),
    }
}

/// A certificate without a log entry (`model_signing sign certificate`):
/// its key signed `signed` and it chains to the policy's CA certificates
/// now. With no signed timestamp nothing proves an earlier signing time, so
/// an expired certificate is refused.
fn certificate_check(
    leaf: &[u8],
    chain: &[Vec<u8>],
    signed: &[u8],
    signature: &[u8],
    policy: &Policy,
) -> Result<String> {
    let cert = der::parse_certificate(leaf).context("the signing certificate")?;
    let key = super::keys::PublicKey::from_spki(cert.spki, "the signing certificate".into())?;
    if !key.verify(signed, signature) {
        bail!("the signature does not verify with the signing certificate's key");
    }
    super::keys::check_chain(
        leaf,
        chain,
        &policy.certificates,
        policy.certificate_setting,
    )?;
    Ok(format!("certificate {}", cert.subject))
}

/// Keyless: the certificate's key signed `signed`, the log entry recorded
/// that signature over `logged` (the DSSE payload, or the simple-signing
/// payload itself), and the certificate fits the policy at the logged time.
fn keyless_check(
    leaf: &[u8],
    chain: &[Vec<u8>],
    entry: &TlogEntry,
    signed: &[u8],
    logged: &[u8],
    signature: &[u8],
    policy: &Policy,
) -> Result<String> {
    let keyless = policy.keyless.as_ref().expect("checked by the caller");
    let cert = der::parse_certificate(leaf).context("the signing certificate")?;
    let key = super::keys::PublicKey::from_spki(cert.spki, "the signing certificate".into())?;
    if !key.verify(signed, signature) {
        bail!("the signature does not verify with the signing certificate's key");
    }
    let expect = Expect {
        signature,
        certificate: leaf,
        payload_sha256: Sha256::digest(logged).into(),
    };
    let time = entry.verify(&keyless.root, &expect)?;
    let who = sigstore::check_certificate(leaf, chain, keyless, time)?;
    Ok(format!("certificate for {who}"))
}

/// `dev.sigstore.cosign/bundle`: `{"SignedEntryTimestamp", "Payload": {"body",
/// "integratedTime", "logIndex", "logID"}}`, then the payload itself signed.
fn legacy_tlog_entry(annotation: &str) -> Result<TlogEntry> {
    let v: Value = serde_json::from_str(annotation).context("the bundle annotation is not JSON")?;
    let p = &v["Payload"];
    let log_id = p["logID"].as_str().unwrap_or("");
    Ok(TlogEntry {
        body: b64_field(&p["body"], "Payload.body")?,
        integrated_time: int_field(&p["integratedTime"], "Payload.integratedTime")?,
        log_index: int_field(&p["logIndex"], "Payload.logIndex")?,
        log_id: unhex(log_id).ok_or_else(|| anyhow!("Payload.logID is not hex"))?,
        set: Some(b64_field(
            &v["SignedEntryTimestamp"],
            "SignedEntryTimestamp",
        )?),
        proof: None,
    })
}

/// A bundle's first transparency-log entry. From bundle v0.2 on the format
/// requires an inclusion proof beside the SET (as sigstore-go and
/// sigstore-js enforce); a newer bundle without one is refused.
fn bundle_tlog_entry(material: &Value, version: (u32, u32)) -> Result<TlogEntry> {
    let e = &material["tlogEntries"][0];
    if e.is_null() {
        bail!("the bundle has no transparency-log entry; a keyless signature cannot be checked without one");
    }
    let set = match e["inclusionPromise"]["signedEntryTimestamp"].as_str() {
        Some(s) => Some(B64.decode(s).context("signedEntryTimestamp")?),
        None => None,
    };
    let p = &e["inclusionProof"];
    let proof = if p.is_null() {
        if version >= (0, 2) {
            bail!(
                "the bundle (v{}.{}) has no inclusion proof; from v0.2 on a sigstore bundle must carry one, and a signed entry timestamp alone is not accepted",
                version.0,
                version.1
            );
        }
        None
    } else {
        Some(InclusionProof {
            log_index: int_field(&p["logIndex"], "inclusionProof.logIndex")?,
            tree_size: int_field(&p["treeSize"], "inclusionProof.treeSize")?,
            root_hash: b64_field(&p["rootHash"], "inclusionProof.rootHash")?,
            hashes: p["hashes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|h| b64_field(h, "inclusionProof.hashes"))
                        .collect()
                })
                .transpose()?
                .unwrap_or_default(),
            checkpoint: p["checkpoint"]["envelope"]
                .as_str()
                .ok_or_else(|| anyhow!("the inclusion proof has no checkpoint"))?
                .to_string(),
        })
    };
    Ok(TlogEntry {
        body: b64_field(&e["canonicalizedBody"], "canonicalizedBody")?,
        integrated_time: int_field(&e["integratedTime"], "integratedTime")?,
        log_index: int_field(&e["logIndex"], "logIndex")?,
        log_id: b64_field(&e["logId"]["keyId"], "logId.keyId")?,
        set,
        proof,
    })
}

fn b64_field(v: &Value, name: &str) -> Result<Vec<u8>> {
    let s = v
        .as_str()
        .ok_or_else(|| anyhow!("the bundle has no {name}"))?;
    B64.decode(s)
        .with_context(|| format!("{name} is not base64"))
}

/// Protobuf JSON writes 64-bit integers as strings; accept both.
fn int_field(v: &Value, name: &str) -> Result<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| anyhow!("the bundle has no integer {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_must_name_the_manifest_and_the_type() {
        let d: Digest = "sha256:1998cf6ed2fb4d60eb2224b3713867d92d383aa71bf159d36114169b8f932743"
            .parse()
            .unwrap();
        // The worked example of docs/formats.md §8.3, byte for byte.
        let payload = br#"{"critical":{"identity":{"docker-reference":"registry.example.com/models/llama"},"image":{"docker-manifest-digest":"sha256:1998cf6ed2fb4d60eb2224b3713867d92d383aa71bf159d36114169b8f932743"},"type":"cosign container image signature"},"optional":null}"#;
        assert_eq!(payload.len(), 249);
        check_simple_signing_claim(payload, &d).unwrap();
        let other: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        let err = check_simple_signing_claim(payload, &other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("signs sha256:1998"), "{err}");
        let wrong_type =
            String::from_utf8_lossy(payload).replace("cosign container image signature", "x");
        assert!(check_simple_signing_claim(wrong_type.as_bytes(), &d).is_err());
    }

    #[test]
    fn statements_must_be_signatures_of_the_manifest() {
        let d: Digest = "sha256:1998cf6ed2fb4d60eb2224b3713867d92d383aa71bf159d36114169b8f932743"
            .parse()
            .unwrap();
        // docs/formats.md §8.4's statement, 213 bytes.
        let st = br#"{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"sha256":"1998cf6ed2fb4d60eb2224b3713867d92d383aa71bf159d36114169b8f932743"}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{}}"#;
        assert_eq!(st.len(), 213);
        check_statement(st, &d).unwrap();
        let att = String::from_utf8_lossy(st)
            .replace("sigstore.dev/cosign/sign/v1", "slsa.dev/provenance/v1");
        assert!(check_statement(att.as_bytes(), &d)
            .unwrap_err()
            .to_string()
            .contains("attestation"));
    }
}
