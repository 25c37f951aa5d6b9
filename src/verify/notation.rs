//! Notary Project (notation) signatures: a referrer of artifact type
//! `application/vnd.cncf.notary.signature` (or, legacy, that config media
//! type) whose one layer is a JWS or COSE envelope.
//!
//! Sources: notaryproject/specifications signature-specification.md,
//! signature-envelope-jws.md, signature-envelope-cose.md,
//! trust-store-trust-policy.md.
//!
//! Checked, as the "strict" level does without a timestamp authority or
//! revocation service: the envelope's critical headers and content type; the
//! certificate chain to a NOTATION_CERT trust anchor at the current time,
//! with the code-signing usage; the signature with the leaf's key (the
//! algorithm must fit the key); the signature's expiry; the payload's
//! `targetArtifact` digest, media type and size; and, when
//! OCIMODEL_NOTATION_IDENTITY is set, the leaf's subject. The
//! signingAuthority scheme, RFC 3161 timestamps and revocation are not
//! supported (a signature relying on them is refused, not skipped).

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::Value;

use super::cbor;
use super::der;
use super::keys::PublicKey;
use crate::digest::Digest;

pub const ARTIFACT_TYPE: &str = "application/vnd.cncf.notary.signature";
pub const JWS: &str = "application/jose+json";
pub const COSE: &str = "application/cose";
const PAYLOAD_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";
const SCHEME: &str = "io.cncf.notary.signingScheme";
const EXPIRY: &str = "io.cncf.notary.expiry";
const KNOWN_CRITICAL: &[&str] = &[SCHEME, EXPIRY, "io.cncf.notary.authenticSigningTime"];

/// Which notation signers are trusted.
#[derive(Clone, Debug)]
pub struct Trust {
    /// Trust anchors (roots, or signing certificates trusted directly).
    pub anchors: Vec<Vec<u8>>,
    /// `x509.subject: C=.., ST=.., O=..` identities; empty means any signer
    /// chaining to an anchor.
    pub identities: Vec<BTreeSet<String>>,
}

impl Trust {
    pub fn parse_identities(value: &str) -> Vec<BTreeSet<String>> {
        value
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| dn_set(s.strip_prefix("x509.subject:").unwrap_or(s)))
            .collect()
    }
}

/// A distinguished name as a set of `KEY=value` parts, so order and spacing
/// do not matter (`S` is the spec's alias of `ST`).
fn dn_set(dn: &str) -> BTreeSet<String> {
    dn.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => {
                let k = k.trim();
                let k = if k == "S" { "ST" } else { k };
                format!("{k}={}", v.trim())
            }
            None => p.to_string(),
        })
        .collect()
}

/// The manifest a notation payload must describe.
pub struct Target<'a> {
    pub digest: &'a Digest,
    pub media_type: &'a str,
    pub size: u64,
}

/// What either envelope format says, in one shape.
struct Envelope {
    /// JOSE name of the algorithm (`ES256`, `PS384`, ...).
    alg: String,
    content_type: String,
    critical: Vec<String>,
    /// Critical header names the protected header lacks.
    missing: Vec<String>,
    scheme: String,
    expiry: Option<(std::time::SystemTime, String)>,
    chain: Vec<Vec<u8>>,
    signed: Vec<u8>,
    signature: Vec<u8>,
    payload: Vec<u8>,
}

/// Checks one JWS envelope (`application/jose+json`); returns the signer's subject.
pub fn check_jws(envelope: &[u8], target: &Target, trust: &Trust) -> Result<String> {
    check_envelope(parse_jws(envelope)?, target, trust)
}

/// Checks one COSE_Sign1 envelope (`application/cose`); returns the signer's subject.
pub fn check_cose(envelope: &[u8], target: &Target, trust: &Trust) -> Result<String> {
    check_envelope(parse_cose(envelope)?, target, trust)
}

fn parse_jws(envelope: &[u8]) -> Result<Envelope> {
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let env: Value = serde_json::from_slice(envelope).context("the JWS envelope is not JSON")?;
    let field = |name: &str| {
        env[name]
            .as_str()
            .ok_or_else(|| anyhow!("the JWS envelope has no '{name}'"))
    };
    let (protected_b64, payload_b64, signature_b64) =
        (field("protected")?, field("payload")?, field("signature")?);
    let protected: Value = serde_json::from_slice(
        &b64url
            .decode(protected_b64)
            .context("the protected header is not base64url")?,
    )
    .context("the protected header is not JSON")?;
    let critical: Vec<String> = protected["crit"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let expiry = match protected[EXPIRY].as_str() {
        Some(e) => Some((
            crate::rfc3339::parse(e).map_err(|err| anyhow!("bad {EXPIRY}: {err}"))?,
            e.to_string(),
        )),
        None => None,
    };
    Ok(Envelope {
        alg: protected["alg"].as_str().unwrap_or("").to_string(),
        content_type: protected["cty"].as_str().unwrap_or("").to_string(),
        missing: critical
            .iter()
            .filter(|c| protected[c.as_str()].is_null())
            .cloned()
            .collect(),
        critical,
        scheme: protected[SCHEME].as_str().unwrap_or("").to_string(),
        expiry,
        chain: env["header"]["x5c"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter_map(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                    .collect()
            })
            .unwrap_or_default(),
        signed: format!("{protected_b64}.{payload_b64}").into_bytes(),
        signature: b64url
            .decode(signature_b64)
            .context("the signature is not base64url")?,
        payload: b64url
            .decode(payload_b64)
            .context("the payload is not base64url")?,
    })
}

/// The protected header's algorithm (label 1) by name.
fn cose_algorithm(protected: &cbor::Value) -> Result<&'static str> {
    use cbor::Value as C;
    Ok(match protected.get(&C::Uint(1)).and_then(C::int) {
        Some(-7) => "ES256",
        Some(-35) => "ES384",
        Some(-37) => "PS256",
        Some(-38) => "PS384",
        Some(-39) => "PS512",
        Some(other) => bail!("COSE algorithm {other} is not supported"),
        None => bail!("the protected header names no algorithm"),
    })
}

/// `io.cncf.notary.expiry` as an epoch time (tag 1), if present.
fn cose_expiry(protected: &cbor::Value) -> Result<Option<(std::time::SystemTime, String)>> {
    use cbor::Value as C;
    Ok(match protected.get(&C::Text(EXPIRY)) {
        Some(C::Tag(1, t)) => {
            let secs = t
                .int()
                .filter(|s| *s >= 0)
                .ok_or_else(|| anyhow!("bad {EXPIRY}"))?;
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
            Some((at, humantime::format_rfc3339_seconds(at).to_string()))
        }
        Some(_) => bail!("bad {EXPIRY}: not an epoch time (tag 1)"),
        None => None,
    })
}

/// Sig_structure = ["Signature1", protected, external_aad = h'', payload].
fn sig_structure(protected_bytes: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut signed = vec![0x84];
    signed.extend(cbor::head(3, 10));
    signed.extend_from_slice(b"Signature1");
    signed.extend(cbor::head(2, protected_bytes.len()));
    signed.extend_from_slice(protected_bytes);
    signed.push(0x40);
    signed.extend(cbor::head(2, payload.len()));
    signed.extend_from_slice(payload);
    signed
}

/// COSE_Sign1 (RFC 9052) as signature-envelope-cose.md profiles it:
/// `[protected, unprotected, payload, signature]`, tag 18.
fn parse_cose(envelope: &[u8]) -> Result<Envelope> {
    use cbor::Value as C;
    let top = cbor::decode(envelope).context("the COSE envelope is not CBOR")?;
    let top = match top {
        C::Tag(18, inner) => *inner,
        other => other,
    };
    let C::Array(parts) = top else {
        bail!("the COSE envelope is not a COSE_Sign1 array");
    };
    let [C::Bytes(protected_bytes), unprotected, C::Bytes(payload), C::Bytes(signature)] =
        parts.as_slice()
    else {
        bail!("the COSE envelope is not [protected, unprotected, payload, signature]");
    };
    let protected = cbor::decode(protected_bytes).context("the protected header is not CBOR")?;
    let text = |v: Option<&C>| match v {
        Some(C::Text(t)) => t.to_string(),
        _ => String::new(),
    };
    let alg = cose_algorithm(&protected)?;
    let critical: Vec<String> = match protected.get(&C::Uint(2)) {
        Some(C::Array(items)) => items
            .iter()
            .map(|i| match i {
                C::Text(t) => t.to_string(),
                other => format!("{other:?}"),
            })
            .collect(),
        _ => Vec::new(),
    };
    let expiry = cose_expiry(&protected)?;
    let chain = match unprotected.get(&C::Uint(33)) {
        Some(C::Array(certs)) => certs
            .iter()
            .filter_map(|c| match c {
                C::Bytes(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect(),
        Some(C::Bytes(one)) => vec![one.to_vec()],
        _ => Vec::new(),
    };
    let signed = sig_structure(protected_bytes, payload);
    Ok(Envelope {
        alg: alg.to_string(),
        content_type: text(protected.get(&C::Uint(3))),
        missing: critical
            .iter()
            .filter(|c| protected.get(&C::Text(c.as_str())).is_none())
            .cloned()
            .collect(),
        critical,
        scheme: text(protected.get(&C::Text(SCHEME))),
        expiry,
        chain,
        signed,
        signature: signature.to_vec(),
        payload: payload.to_vec(),
    })
}

/// The checks both envelope formats share.
fn check_envelope(e: Envelope, target: &Target, trust: &Trust) -> Result<String> {
    if e.content_type != PAYLOAD_TYPE {
        bail!(
            "the envelope's content type is '{}', not {PAYLOAD_TYPE}",
            e.content_type
        );
    }
    if !e.critical.iter().any(|c| c == SCHEME) {
        bail!("the protected header does not mark {SCHEME} critical");
    }
    if let Some(c) = e
        .critical
        .iter()
        .find(|c| !KNOWN_CRITICAL.contains(&c.as_str()))
    {
        bail!("the protected header has critical field '{c}', which ocimodel does not understand");
    }
    if let Some(c) = e.missing.first() {
        bail!("critical field '{c}' is missing from the protected header");
    }
    if e.scheme != "notary.x509" {
        bail!(
            "signing scheme '{}' is not supported (only notary.x509; signingAuthority needs a timestamp authority)",
            e.scheme
        );
    }
    if let Some((at, text)) = &e.expiry {
        if *at < std::time::SystemTime::now() {
            bail!("the notation signature expired at {text}");
        }
    }

    let leaf = e
        .chain
        .first()
        .ok_or_else(|| anyhow!("the envelope carries no certificate chain"))?;
    let cert = der::parse_certificate(leaf).context("the signing certificate")?;
    check_chain(leaf, &e.chain[1..], trust)?;
    let key = PublicKey::from_spki(cert.spki, "the notation signing certificate".into())?;
    if !key.verify_jws(&e.alg, &e.signed, &e.signature)? {
        bail!("the notation signature does not verify with its certificate's key (tampered envelope or payload)");
    }

    let payload: Value = serde_json::from_slice(&e.payload).context("the payload is not JSON")?;
    let t = &payload["targetArtifact"];
    let (digest, media_type, size) = (
        t["digest"].as_str().unwrap_or(""),
        t["mediaType"].as_str().unwrap_or(""),
        t["size"].as_u64(),
    );
    if digest != target.digest.to_string() {
        bail!(
            "the signature is valid but signs {digest}, not {}",
            target.digest
        );
    }
    if media_type != target.media_type || size != Some(target.size) {
        bail!(
            "the signed target is {media_type} of {} bytes, but the manifest is {} of {} bytes",
            size.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
            target.media_type,
            target.size
        );
    }
    if !trust.identities.is_empty() && !trust.identities.contains(&dn_set(&cert.subject)) {
        bail!(
            "the signer '{}' is not in OCIMODEL_NOTATION_IDENTITY",
            cert.subject
        );
    }
    Ok(cert.subject.clone())
}

/// The leaf must chain (through the envelope's other certificates) to a
/// trust anchor now, or be an anchor itself.
fn check_chain(leaf: &[u8], rest: &[Vec<u8>], trust: &Trust) -> Result<()> {
    super::keys::check_chain(leaf, rest, &trust.anchors, "NOTATION_CERT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_compare_as_sets() {
        let ids = Trust::parse_identities("x509.subject: C=US, S=WA, O=example.io, CN=signer");
        assert!(ids.contains(&dn_set("CN=signer, O=example.io, ST=WA, C=US")));
        assert!(!ids.contains(&dn_set("C=US, ST=WA, O=evil.io, CN=signer")));
    }
}
