//! Keyless (Fulcio certificate + Rekor log entry) checks, fully offline.
//!
//! Trust comes from a sigstore `trusted_root.json` (OCIMODEL_TRUSTED_ROOT):
//! its certificate authorities anchor signing certificates, its
//! transparency logs' keys sign log entries. A keyless signature passes when
//! - the log entry's signed entry timestamp (SET) verifies against a
//!   trusted log key (it proves the integration time), and so does its
//!   inclusion proof with a signed checkpoint, when the bundle carries one;
//! - the entry's body records this very signature and certificate;
//! - the certificate chains to a trusted CA, with the code-signing usage,
//!   and was valid at the time the log integrated the entry;
//! - its subject alternative name matches COSIGN_CERT_IDENTITY(_REGEXP)
//!   and its OIDC issuer extension matches COSIGN_CERT_OIDC_ISSUER.
//!
//! Not checked: the certificate's embedded SCTs (CT log proofs) and RFC 3161
//! timestamps.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::der;
use super::keys::{describe_chain_error, rfc3339, PublicKey};
use crate::digest::hex;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), as webpki wants it.
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
const OID_FULCIO_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
const OID_FULCIO_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";

/// Which certificates a keyless policy accepts.
#[derive(Clone, Debug)]
pub struct Keyless {
    pub identity: Matcher,
    pub issuer: Matcher,
    pub root: TrustedRoot,
}

#[derive(Clone, Debug)]
pub enum Matcher {
    Exact(String),
    Regex(regex_lite::Regex),
}

impl Matcher {
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(e) => e == s,
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Exact(e) => write!(f, "'{e}'"),
            Matcher::Regex(r) => write!(f, "/{}/", r.as_str()),
        }
    }
}

/// The parts of a sigstore trusted root used offline.
#[derive(Clone, Debug)]
pub struct TrustedRoot {
    /// Each CA: (anchors, intermediates, valid-for window in Unix seconds).
    cas: Vec<Authority>,
    logs: Vec<Log>,
}

#[derive(Clone, Debug)]
struct Authority {
    root: Vec<u8>,
    intermediates: Vec<Vec<u8>>,
    valid: (u64, u64),
}

#[derive(Clone, Debug)]
struct Log {
    id: Vec<u8>,
    key: PublicKey,
    valid: (u64, u64),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RootJson {
    #[serde(default)]
    tlogs: Vec<TlogJson>,
    #[serde(default)]
    certificate_authorities: Vec<CaJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogJson {
    public_key: KeyJson,
    log_id: LogIdJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyJson {
    raw_bytes: String,
    #[serde(default)]
    valid_for: Option<ValidFor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogIdJson {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CaJson {
    cert_chain: ChainJson,
    #[serde(default)]
    valid_for: Option<ValidFor>,
}

#[derive(Deserialize)]
struct ChainJson {
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct ValidFor {
    start: Option<String>,
    end: Option<String>,
}

fn window(v: &Option<ValidFor>) -> Result<(u64, u64)> {
    let at = |s: &Option<String>, default: u64| -> Result<u64> {
        match s {
            None => Ok(default),
            Some(s) => Ok(crate::rfc3339::parse(s)?
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)),
        }
    };
    match v {
        None => Ok((0, u64::MAX)),
        Some(v) => Ok((at(&v.start, 0)?, at(&v.end, u64::MAX)?)),
    }
}

impl TrustedRoot {
    pub fn parse(text: &str, name: &str) -> Result<TrustedRoot> {
        let json: RootJson = serde_json::from_str(text)
            .with_context(|| format!("{name}: not a sigstore trusted_root.json"))?;
        let mut cas = Vec::new();
        for ca in &json.certificate_authorities {
            let mut chain = Vec::new();
            for c in &ca.cert_chain.certificates {
                let der_bytes = B64
                    .decode(&c.raw_bytes)
                    .with_context(|| format!("{name}: bad certificate base64"))?;
                der::parse_certificate(&der_bytes)
                    .with_context(|| format!("{name}: bad CA certificate"))?;
                chain.push(der_bytes);
            }
            // Leaf-most first, root last (as sigstore writes them).
            let Some(root) = chain.pop() else { continue };
            cas.push(Authority {
                root,
                intermediates: chain,
                valid: window(&ca.valid_for).with_context(|| name.to_string())?,
            });
        }
        let mut logs = Vec::new();
        for t in &json.tlogs {
            let spki = B64
                .decode(&t.public_key.raw_bytes)
                .with_context(|| format!("{name}: bad log key base64"))?;
            logs.push(Log {
                id: B64
                    .decode(&t.log_id.key_id)
                    .with_context(|| format!("{name}: bad log id base64"))?,
                key: PublicKey::from_spki(&spki, format!("{name} transparency log key"))?,
                valid: window(&t.public_key.valid_for).with_context(|| name.to_string())?,
            });
        }
        if cas.is_empty() {
            bail!("{name} has no certificate authorities");
        }
        if logs.is_empty() {
            bail!("{name} has no transparency logs, so no log entry could be checked");
        }
        Ok(TrustedRoot { cas, logs })
    }
}

/// One transparency-log entry, from a bundle or a cosign bundle annotation.
pub struct TlogEntry {
    pub body: Vec<u8>,
    pub integrated_time: u64,
    pub log_index: u64,
    pub log_id: Vec<u8>,
    pub set: Option<Vec<u8>>,
    pub proof: Option<InclusionProof>,
}

pub struct InclusionProof {
    pub log_index: u64,
    pub tree_size: u64,
    pub root_hash: Vec<u8>,
    pub hashes: Vec<Vec<u8>>,
    pub checkpoint: String,
}

/// What the log entry's body must record.
pub struct Expect<'a> {
    pub signature: &'a [u8],
    pub certificate: &'a [u8],
    /// SHA-256 of what was signed (hashedrekord) or of the DSSE payload.
    pub payload_sha256: [u8; 32],
}

impl TlogEntry {
    /// Checks the entry against the trusted logs; returns the integrated time.
    pub fn verify(&self, root: &TrustedRoot, expect: &Expect) -> Result<u64> {
        let log = root
            .logs
            .iter()
            .find(|l| l.id == self.log_id)
            .ok_or_else(|| {
                anyhow!(
                    "the log entry comes from log {}, which OCIMODEL_TRUSTED_ROOT does not trust",
                    hex(&self.log_id)
                )
            })?;
        if self.integrated_time < log.valid.0 || self.integrated_time > log.valid.1 {
            bail!("the log entry's time is outside its log key's validity");
        }
        // The SET is what proves the integration time the certificate is
        // checked at; an inclusion proof alone leaves that time unsigned.
        let Some(set) = &self.set else {
            bail!("the log entry has no signed entry timestamp (inclusionPromise), so its signing time is unproven; RFC 3161 timestamps are not supported");
        };
        {
            // RFC 8785 canonical JSON of these four fields (keys sorted, no
            // spaces); the base64 body needs no escaping.
            let signed = format!(
                r#"{{"body":"{}","integratedTime":{},"logID":"{}","logIndex":{}}}"#,
                B64.encode(&self.body),
                self.integrated_time,
                hex(&self.log_id),
                self.log_index
            );
            if !log.key.verify(signed.as_bytes(), set) {
                bail!("the log entry's signed entry timestamp does not verify with the log's key");
            }
        }
        if let Some(proof) = &self.proof {
            proof.verify(&self.body, &log.key, &log.id)?;
        }
        self.check_body(expect)?;
        Ok(self.integrated_time)
    }

    /// The body must be about this signature, certificate and payload, or a
    /// valid entry for something else could be replayed.
    fn check_body(&self, expect: &Expect) -> Result<()> {
        let body: serde_json::Value =
            serde_json::from_slice(&self.body).context("the log entry's body is not JSON")?;
        let kind = body["kind"].as_str().unwrap_or("");
        let spec = &body["spec"];
        let want_hash = hex(&expect.payload_sha256);
        let same_cert = |v: &serde_json::Value| {
            v.as_str()
                .and_then(|s| B64.decode(s).ok())
                .and_then(|pem| der::pem_blocks(&String::from_utf8_lossy(&pem)).ok())
                .is_some_and(|blocks| blocks.iter().any(|(_, d)| d == expect.certificate))
        };
        let same_sig = |v: &serde_json::Value| {
            v.as_str()
                .and_then(|s| B64.decode(s).ok())
                .is_some_and(|s| s == expect.signature)
        };
        let ok = match kind {
            "dsse" => {
                spec["payloadHash"]["value"].as_str() == Some(want_hash.as_str())
                    && spec["signatures"].as_array().is_some_and(|sigs| {
                        sigs.iter()
                            .any(|s| same_sig(&s["signature"]) && same_cert(&s["verifier"]))
                    })
            }
            // intoto v0.0.2: the envelope's signatures base64 once more.
            "intoto" => {
                let content = &spec["content"];
                content["payloadHash"]["value"].as_str() == Some(want_hash.as_str())
                    && content["envelope"]["signatures"]
                        .as_array()
                        .is_some_and(|sigs| {
                            sigs.iter().any(|s| {
                                let inner = s["sig"]
                                    .as_str()
                                    .and_then(|b| B64.decode(b).ok())
                                    .and_then(|b| String::from_utf8(b).ok());
                                same_sig(&serde_json::Value::from(inner.unwrap_or_default()))
                                    && same_cert(&s["publicKey"])
                            })
                        })
            }
            "hashedrekord" => {
                spec["data"]["hash"]["value"].as_str() == Some(want_hash.as_str())
                    && same_sig(&spec["signature"]["content"])
                    && same_cert(&spec["signature"]["publicKey"]["content"])
            }
            other => bail!(
                "log entries of kind '{other}' are not supported (dsse, intoto, hashedrekord)"
            ),
        };
        if !ok {
            bail!("the log entry records a different signature, certificate or payload");
        }
        Ok(())
    }
}

impl InclusionProof {
    /// RFC 9162 §2.1.3.2 inclusion proof, then the checkpoint's signature
    /// (a signed note) and its size and root.
    fn verify(&self, body: &[u8], key: &PublicKey, log_id: &[u8]) -> Result<()> {
        let leaf = hash_leaf(body);
        let root = root_from_proof(self.log_index, self.tree_size, leaf, &self.hashes)
            .ok_or_else(|| anyhow!("the inclusion proof is malformed"))?;
        if root.as_slice() != self.root_hash.as_slice() {
            bail!("the inclusion proof does not lead to the log's root hash");
        }
        let (note, signatures) = self
            .checkpoint
            .split_once("\n\n")
            .ok_or_else(|| anyhow!("the checkpoint is not a signed note"))?;
        let signed = format!("{note}\n");
        let mut lines = note.lines();
        let _origin = lines.next();
        let size: Option<u64> = lines.next().and_then(|l| l.parse().ok());
        let note_root = lines.next().and_then(|l| B64.decode(l).ok());
        if size != Some(self.tree_size) || note_root.as_deref() != Some(&self.root_hash[..]) {
            bail!("the checkpoint names a different tree size or root than the inclusion proof");
        }
        let hint = &log_id[..4.min(log_id.len())];
        let good = signatures
            .lines()
            .filter_map(|l| l.strip_prefix("\u{2014} "))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(_, b)| B64.decode(b.trim()).ok())
            .any(|raw| {
                raw.len() > 4 && &raw[..4] == hint && key.verify(signed.as_bytes(), &raw[4..])
            });
        if !good {
            bail!("the checkpoint is not signed by the log's key");
        }
        Ok(())
    }
}

pub fn hash_leaf(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn hash_children(l: &[u8], r: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// The root an inclusion path leads to, or `None` if it cannot fit the tree.
pub fn root_from_proof(
    index: u64,
    size: u64,
    leaf: [u8; 32],
    path: &[Vec<u8>],
) -> Option<[u8; 32]> {
    if index >= size {
        return None;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in path {
        if s == 0 || p.len() != 32 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = hash_children(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = hash_children(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

/// Checks a signing certificate (leaf DER, with any chain the signature
/// carried) against the policy at `time`; returns the matched identity.
pub fn check_certificate(
    leaf: &[u8],
    chain: &[Vec<u8>],
    keyless: &Keyless,
    time: u64,
) -> Result<String> {
    let cert = der::parse_certificate(leaf).context("the signing certificate")?;
    let ee_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&ee_der)
        .map_err(|e| anyhow!("the signing certificate is malformed: {e:?}"))?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(time));
    // Only CAs whose validFor window covers the signing time may anchor the
    // chain; when none does, nothing vouches for the certificate: refuse.
    let current: Vec<&Authority> = keyless
        .root
        .cas
        .iter()
        .filter(|ca| ca.valid.0 <= time && time <= ca.valid.1)
        .collect();
    if current.is_empty() {
        bail!(
            "no certificate authority in OCIMODEL_TRUSTED_ROOT was valid at {} (the time the log recorded the signature), so the signing certificate cannot be trusted",
            rfc3339(time)
        );
    }
    let mut last = webpki::Error::UnknownIssuer;
    let mut chained = false;
    for ca in current {
        let root_der = CertificateDer::from(ca.root.as_slice());
        let anchor = webpki::anchor_from_trusted_cert(&root_der)
            .map_err(|e| anyhow!("OCIMODEL_TRUSTED_ROOT: bad CA certificate: {e:?}"))?;
        let intermediates: Vec<CertificateDer> = ca
            .intermediates
            .iter()
            .chain(chain.iter())
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        match ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &intermediates,
            at,
            webpki::KeyUsage::required(EKU_CODE_SIGNING),
            None,
            None,
        ) {
            Ok(_) => {
                chained = true;
                break;
            }
            Err(e) => last = e,
        }
    }
    if !chained {
        bail!(
            "{}",
            describe_chain_error(&last, "OCIMODEL_TRUSTED_ROOT", time)
        );
    }
    let names = cert.alt_names()?;
    let Some(identity) = names.iter().find(|n| keyless.identity.matches(n.value())) else {
        let have: Vec<&str> = names.iter().map(|n| n.value()).collect();
        bail!(
            "certificate identity mismatch: signed by [{}], policy wants {}",
            have.join(", "),
            keyless.identity
        );
    };
    let issuer = oidc_issuer(&cert)?;
    if !keyless.issuer.matches(&issuer) {
        bail!(
            "certificate OIDC issuer mismatch: issued by '{issuer}', policy wants {}",
            keyless.issuer
        );
    }
    Ok(format!("{} (issuer {issuer})", identity.value()))
}

/// Fulcio's issuer extension: v2 is a DER UTF8String, v1 the raw text.
fn oidc_issuer(cert: &der::Certificate) -> Result<String> {
    if let Some(v) = cert.extension(OID_FULCIO_ISSUER_V2) {
        let text = der::Reader::new(v)
            .expect(0x0c)
            .context("issuer extension")?;
        return Ok(String::from_utf8_lossy(text).into_owned());
    }
    if let Some(v) = cert.extension(OID_FULCIO_ISSUER_V1) {
        return Ok(String::from_utf8_lossy(v).into_owned());
    }
    bail!("the signing certificate has no OIDC issuer extension (1.3.6.1.4.1.57264.1.8)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree built the RFC 6962 way, to check proofs against.
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = leaves.len().next_power_of_two() / 2;
        hash_children(&mth(&leaves[..k]), &mth(&leaves[k..]))
    }

    fn path(leaves: &[[u8; 32]], m: usize) -> Vec<Vec<u8>> {
        if leaves.len() == 1 {
            return Vec::new();
        }
        let k = leaves.len().next_power_of_two() / 2;
        if m < k {
            let mut p = path(&leaves[..k], m);
            p.push(mth(&leaves[k..]).to_vec());
            p
        } else {
            let mut p = path(&leaves[k..], m - k);
            p.push(mth(&leaves[..k]).to_vec());
            p
        }
    }

    #[test]
    fn inclusion_proofs_lead_to_the_root_for_every_leaf_and_size() {
        for n in 1..=17usize {
            let leaves: Vec<[u8; 32]> = (0..n).map(|i| hash_leaf(&[i as u8])).collect();
            let root = mth(&leaves);
            for m in 0..n {
                let p = path(&leaves, m);
                assert_eq!(
                    root_from_proof(m as u64, n as u64, leaves[m], &p),
                    Some(root),
                    "leaf {m} of {n}"
                );
                if n > 1 {
                    let other = (m + 1) % n;
                    assert_ne!(
                        root_from_proof(other as u64, n as u64, leaves[m], &p),
                        Some(root)
                    );
                }
            }
            assert_eq!(root_from_proof(n as u64, n as u64, leaves[0], &[]), None);
        }
    }
}
