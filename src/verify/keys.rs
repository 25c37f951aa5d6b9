//! Public keys and certificates from policy settings, and the signature
//! schemes each signature form uses.
//!
//! Every setting takes a path, a comma-separated list of paths (a directory
//! means the files in it, as a mounted ConfigMap or Secret looks), or the
//! PEM text itself (what `configMapKeyRef`/`secretKeyRef` env gives).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ring::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::der;

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), as webpki wants it.
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// A signing certificate must chain, through the other certificates it came
/// with, to one of `anchors` (from `setting`) now, for code signing.
pub fn check_chain(
    leaf: &[u8],
    rest: &[Vec<u8>],
    anchors: &[Vec<u8>],
    setting: &str,
) -> Result<()> {
    let now = UnixTime::now();
    let ee_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&ee_der)
        .map_err(|e| anyhow!("the signing certificate is malformed: {e:?}"))?;
    let anchors = anchors
        .iter()
        .map(|a| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(a.as_slice()))
                .map(|t| t.to_owned())
                .map_err(|e| anyhow!("{setting}: bad certificate: {e:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let intermediates: Vec<CertificateDer> = rest
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    match ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        now,
        webpki::KeyUsage::required(EKU_CODE_SIGNING),
        None,
        None,
    ) {
        Ok(_) => Ok(()),
        // webpki ranks a missing EKU on a path through an untrusted CA
        // above the untrusted CA itself; say which it is.
        Err(webpki::Error::RequiredEkuNotFoundContext(_)) if has_code_signing(leaf) => bail!(
            "{}",
            describe_chain_error(&webpki::Error::UnknownIssuer, setting, now.as_secs())
        ),
        Err(e) => bail!("{}", describe_chain_error(&e, setting, now.as_secs())),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::EcdsaP256 => "ECDSA P-256",
            KeyKind::EcdsaP384 => "ECDSA P-384",
            KeyKind::Ed25519 => "Ed25519",
            KeyKind::Rsa => "RSA",
        }
    }
}

/// Whether the certificate's extended key usage names code signing.
fn has_code_signing(cert: &[u8]) -> bool {
    let Ok(cert) = der::parse_certificate(cert) else {
        return false;
    };
    let Some(eku) = cert.extension("2.5.29.37") else {
        return false;
    };
    let mut list = match der::Reader::new(eku).expect(0x30) {
        Ok(body) => der::Reader::new(body),
        Err(_) => return false,
    };
    while let Ok(oid) = list.expect(0x06) {
        if oid == EKU_CODE_SIGNING {
            return true;
        }
    }
    false
}

/// A public key that signatures are checked against.
#[derive(Clone, Debug)]
pub struct PublicKey {
    pub kind: KeyKind,
    /// The key bits as ring wants them (EC point, Ed25519 bytes, RSAPublicKey DER).
    bits: Vec<u8>,
    /// Where it came from, for messages: `COSIGN_KEY (/keys/cosign.pub)`.
    pub name: String,
}

impl PublicKey {
    /// A key from a DER SubjectPublicKeyInfo.
    pub fn from_spki(der_bytes: &[u8], name: String) -> Result<PublicKey> {
        let spki =
            der::parse_spki(der_bytes).with_context(|| format!("{name}: not a public key"))?;
        let kind = match (spki.algorithm.as_str(), spki.parameter.as_deref()) {
            ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => KeyKind::EcdsaP256,
            ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => KeyKind::EcdsaP384,
            ("1.2.840.10045.2.1", curve) => bail!(
                "{name}: ECDSA curve {} is not supported (use P-256 or P-384)",
                curve.unwrap_or("unnamed")
            ),
            ("1.3.101.112", _) => KeyKind::Ed25519,
            ("1.2.840.113549.1.1.1", _) | ("1.2.840.113549.1.1.10", _) => KeyKind::Rsa,
            (alg, _) => bail!("{name}: key algorithm {alg} is not supported (use ECDSA P-256/P-384, Ed25519 or RSA)"),
        };
        Ok(PublicKey {
            kind,
            bits: spki.key.to_vec(),
            name,
        })
    }

    /// Checks a signature as cosign and sigstore bundles make them: ECDSA
    /// in DER over SHA-256 (SHA-384 also accepted for P-384 keys, as newer
    /// signers pick the hash by curve), Ed25519 over the message, RSA
    /// PKCS#1 v1.5 or PSS with SHA-256.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let algs: &[&'static dyn VerificationAlgorithm] = match self.kind {
            KeyKind::EcdsaP256 => &[&sig::ECDSA_P256_SHA256_ASN1],
            KeyKind::EcdsaP384 => &[&sig::ECDSA_P384_SHA384_ASN1, &sig::ECDSA_P384_SHA256_ASN1],
            KeyKind::Ed25519 => &[&sig::ED25519],
            KeyKind::Rsa => &[
                &sig::RSA_PKCS1_2048_8192_SHA256,
                &sig::RSA_PSS_2048_8192_SHA256,
            ],
        };
        self.verify_with(algs, message, signature)
    }

    /// Checks a JWS signature (RFC 7518) for algorithm `alg`; ECDSA is raw
    /// `r||s` there. Errors when `alg` does not fit the key.
    pub fn verify_jws(&self, alg: &str, message: &[u8], signature: &[u8]) -> Result<bool> {
        let algs: &[&'static dyn VerificationAlgorithm] = match (alg, self.kind) {
            ("ES256", KeyKind::EcdsaP256) => &[&sig::ECDSA_P256_SHA256_FIXED],
            ("ES384", KeyKind::EcdsaP384) => &[&sig::ECDSA_P384_SHA384_FIXED],
            ("PS256", KeyKind::Rsa) => &[&sig::RSA_PSS_2048_8192_SHA256],
            ("PS384", KeyKind::Rsa) => &[&sig::RSA_PSS_2048_8192_SHA384],
            ("PS512", KeyKind::Rsa) => &[&sig::RSA_PSS_2048_8192_SHA512],
            _ => bail!(
                "signature algorithm {alg} does not fit the signer's {} key (or is not supported)",
                self.kind.name()
            ),
        };
        Ok(self.verify_with(algs, message, signature))
    }

    fn verify_with(
        &self,
        algs: &[&'static dyn VerificationAlgorithm],
        msg: &[u8],
        signature: &[u8],
    ) -> bool {
        algs.iter().any(|alg| {
            UnparsedPublicKey::new(*alg, &self.bits)
                .verify(msg, signature)
                .is_ok()
        })
    }
}

/// The PEM texts a setting names: `(where, text)` pairs.
pub fn load_texts(var: &str, value: &str) -> Result<Vec<(String, String)>> {
    if value.contains("-----BEGIN") {
        return Ok(vec![(var.to_string(), value.to_string())]);
    }
    let mut texts = Vec::new();
    for item in value
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let path = Path::new(item);
        if path.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("{var}: cannot read directory {item}"))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                // Kubernetes volume bookkeeping (`..data`) starts with a dot.
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("{var}: cannot read {}", f.display()))?;
                texts.push((format!("{var} ({})", f.display()), text));
            }
        } else {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "{var}: cannot read {item} (give a path, a directory, or the PEM text itself)"
                )
            })?;
            texts.push((format!("{var} ({item})"), text));
        }
    }
    if texts.is_empty() {
        bail!("{var} names no files");
    }
    Ok(texts)
}

/// Every public key in a setting (PEM `PUBLIC KEY` blocks; a certificate's
/// key counts too).
pub fn load_keys(var: &str, value: &str) -> Result<Vec<PublicKey>> {
    let mut keys = Vec::new();
    for (name, text) in load_texts(var, value)? {
        let blocks = der::pem_blocks(&text).with_context(|| name.clone())?;
        for (label, bytes) in blocks {
            let key = match label.as_str() {
                "PUBLIC KEY" => PublicKey::from_spki(&bytes, name.clone())?,
                "CERTIFICATE" => {
                    let cert = der::parse_certificate(&bytes)
                        .with_context(|| format!("{name}: bad certificate"))?;
                    PublicKey::from_spki(cert.spki, name.clone())?
                }
                other if other.contains("PRIVATE") => {
                    bail!("{name} holds a private key; give the public key (cosign.pub) instead")
                }
                _ => continue,
            };
            keys.push(key);
        }
    }
    if keys.is_empty() {
        bail!("{var}: no PEM public key found");
    }
    Ok(keys)
}

/// Every certificate (DER) in a setting.
pub fn load_certificates(var: &str, value: &str) -> Result<Vec<Vec<u8>>> {
    let mut certs = Vec::new();
    for (name, text) in load_texts(var, value)? {
        for (label, bytes) in der::pem_blocks(&text).with_context(|| name.clone())? {
            if label == "CERTIFICATE" {
                der::parse_certificate(&bytes)
                    .with_context(|| format!("{name}: bad certificate"))?;
                certs.push(bytes);
            }
        }
    }
    if certs.is_empty() {
        return Err(anyhow!("{var}: no PEM certificate found"));
    }
    Ok(certs)
}

/// A webpki chain error in words.
pub fn describe_chain_error(e: &webpki::Error, trust: &str, time: u64) -> String {
    let when = rfc3339(time);
    match e {
        webpki::Error::CertExpired { .. } => {
            format!("the signing certificate had expired at {when}")
        }
        webpki::Error::CertNotValidYet { .. } => {
            format!("the signing certificate was not yet valid at {when}")
        }
        webpki::Error::UnknownIssuer => {
            format!("the signing certificate does not chain to a CA in {trust} (untrusted)")
        }
        webpki::Error::InvalidSignatureForPublicKey => format!(
            "the signing certificate names a CA in {trust} as its issuer but was not signed by that CA's key (another CA under the same name)"
        ),
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "the signing certificate lacks the code-signing extended key usage".into()
        }
        other => format!("the signing certificate is not trusted: {other:?}"),
    }
}

pub(super) fn rfc3339(time: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(time))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_are_refused_with_advice() {
        let pem = "-----BEGIN EC PRIVATE KEY-----\nAQID\n-----END EC PRIVATE KEY-----\n";
        let err = load_keys("COSIGN_KEY", pem).unwrap_err().to_string();
        assert!(err.contains("private key"), "{err}");
    }

    #[test]
    fn missing_paths_say_what_to_give() {
        let err = format!(
            "{:#}",
            load_keys("COSIGN_KEY", "/nonexistent/cosign.pub").unwrap_err()
        );
        assert!(
            err.contains("COSIGN_KEY: cannot read /nonexistent/cosign.pub"),
            "{err}"
        );
    }

    #[test]
    fn unknown_algorithms_are_named() {
        // SPKI for an X25519 key (1.3.101.110): not a signing key.
        let der = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00, 1, 2, 3, 4, 5,
            6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
            29, 30, 31, 32,
        ];
        let err = PublicKey::from_spki(&der, "k".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("1.3.101.110"), "{err}");
    }
}
