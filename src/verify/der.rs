//! Just enough DER to read public keys and certificates for signature checks.
//!
//! Chain validation is left to `webpki`; this module only pulls out what it
//! does not expose: a key's algorithm and bits, a certificate's subject,
//! subject alternative names and the Fulcio extensions. Every length is
//! checked against the input; indefinite lengths and multi-byte tags are
//! refused (DER forbids the one and X.509 never needs the other).

use anyhow::{anyhow, bail, Result};
use base64::Engine;

pub const TAG_BOOLEAN: u8 = 0x01;
pub const TAG_INTEGER: u8 = 0x02;
pub const TAG_BIT_STRING: u8 = 0x03;
pub const TAG_OCTET_STRING: u8 = 0x04;
pub const TAG_OID: u8 = 0x06;
pub const TAG_SEQUENCE: u8 = 0x30;
pub const TAG_SET: u8 = 0x31;

/// A cursor over consecutive DER elements.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// The next element: its tag, its contents, and the whole encoding.
    pub fn read_any(&mut self) -> Result<(u8, &'a [u8], &'a [u8])> {
        let d = self.data;
        let (&tag, rest) = d
            .split_first()
            .ok_or_else(|| anyhow!("DER: unexpected end"))?;
        if tag & 0x1f == 0x1f {
            bail!("DER: multi-byte tags are not supported");
        }
        let (&first, rest) = rest
            .split_first()
            .ok_or_else(|| anyhow!("DER: missing length"))?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                bail!("DER: bad length");
            }
            let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            bail!("DER: element longer than its input");
        }
        let header = d.len() - rest.len();
        self.data = &rest[len..];
        Ok((tag, &rest[..len], &d[..header + len]))
    }

    /// The contents of the next element, which must have tag `tag`.
    pub fn expect(&mut self, tag: u8) -> Result<&'a [u8]> {
        let (t, body, _) = self.read_any()?;
        if t != tag {
            bail!("DER: expected tag {tag:#04x}, found {t:#04x}");
        }
        Ok(body)
    }

    /// The contents of the next element if it has tag `tag`.
    pub fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>> {
        if self.peek_tag() == Some(tag) {
            self.expect(tag).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// An OID's contents in dotted form (`1.2.840.10045.2.1`).
pub fn oid_string(body: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for &b in body {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (acc / 40).min(2);
                parts.push(first);
                parts.push(acc - first * 40);
            } else {
                parts.push(acc);
            }
            acc = 0;
        }
    }
    parts
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// A SubjectPublicKeyInfo: the algorithm, its parameter OID (the curve) if
/// any, and the key bits.
pub struct Spki<'a> {
    pub algorithm: String,
    pub parameter: Option<String>,
    pub key: &'a [u8],
}

pub fn parse_spki(der: &[u8]) -> Result<Spki<'_>> {
    let mut outer = Reader::new(der);
    let mut seq = Reader::new(outer.expect(TAG_SEQUENCE)?);
    let mut alg = Reader::new(seq.expect(TAG_SEQUENCE)?);
    let algorithm = oid_string(alg.expect(TAG_OID)?);
    let parameter = alg.optional(TAG_OID)?.map(oid_string);
    let bits = seq.expect(TAG_BIT_STRING)?;
    let (&unused, key) = bits
        .split_first()
        .ok_or_else(|| anyhow!("DER: empty key bit string"))?;
    if unused != 0 {
        bail!("DER: key bit string has unused bits");
    }
    Ok(Spki {
        algorithm,
        parameter,
        key,
    })
}

/// The parts of an X.509 certificate signature policy looks at.
pub struct Certificate<'a> {
    pub der: &'a [u8],
    pub spki: &'a [u8],
    /// `C=US, O=example, CN=signer`, in certificate order.
    pub subject: String,
    pub extensions: Vec<Extension<'a>>,
}

pub struct Extension<'a> {
    pub oid: String,
    pub value: &'a [u8],
}

/// A subject alternative name of the kinds signing certificates use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AltName {
    Email(String),
    Uri(String),
    Dns(String),
}

impl AltName {
    pub fn value(&self) -> &str {
        match self {
            AltName::Email(s) | AltName::Uri(s) | AltName::Dns(s) => s,
        }
    }
}

pub fn parse_certificate(der: &[u8]) -> Result<Certificate<'_>> {
    let mut outer = Reader::new(der);
    let mut cert = Reader::new(outer.expect(TAG_SEQUENCE)?);
    let mut tbs = Reader::new(cert.expect(TAG_SEQUENCE)?);
    tbs.optional(0xa0)?; // version
    tbs.expect(TAG_INTEGER)?; // serial
    tbs.expect(TAG_SEQUENCE)?; // signature algorithm
    tbs.expect(TAG_SEQUENCE)?; // issuer
    tbs.expect(TAG_SEQUENCE)?; // validity
    let subject = name_string(tbs.expect(TAG_SEQUENCE)?)?;
    let (_, _, spki) = tbs.read_any()?;
    let mut extensions = Vec::new();
    while !tbs.is_empty() {
        let (tag, body, _) = tbs.read_any()?;
        if tag != 0xa3 {
            continue; // unique IDs
        }
        let mut list = Reader::new(Reader::new(body).expect(TAG_SEQUENCE)?);
        while !list.is_empty() {
            let mut ext = Reader::new(list.expect(TAG_SEQUENCE)?);
            let oid = oid_string(ext.expect(TAG_OID)?);
            ext.optional(TAG_BOOLEAN)?;
            let value = ext.expect(TAG_OCTET_STRING)?;
            extensions.push(Extension { oid, value });
        }
    }
    Ok(Certificate {
        der,
        spki,
        subject,
        extensions,
    })
}

impl Certificate<'_> {
    pub fn extension(&self, oid: &str) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|e| e.oid == oid)
            .map(|e| e.value)
    }

    /// Email, URI and DNS subject alternative names.
    pub fn alt_names(&self) -> Result<Vec<AltName>> {
        let Some(value) = self.extension("2.5.29.17") else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        let mut list = Reader::new(Reader::new(value).expect(TAG_SEQUENCE)?);
        while !list.is_empty() {
            let (tag, body, _) = list.read_any()?;
            let text = || String::from_utf8_lossy(body).into_owned();
            match tag {
                0x81 => names.push(AltName::Email(text())),
                0x82 => names.push(AltName::Dns(text())),
                0x86 => names.push(AltName::Uri(text())),
                _ => {}
            }
        }
        Ok(names)
    }
}

/// A Name as `C=US, ST=WA, O=example.io, CN=signer`.
fn name_string(body: &[u8]) -> Result<String> {
    let mut parts = Vec::new();
    let mut rdns = Reader::new(body);
    while !rdns.is_empty() {
        let mut set = Reader::new(rdns.expect(TAG_SET)?);
        while !set.is_empty() {
            let mut atv = Reader::new(set.expect(TAG_SEQUENCE)?);
            let oid = oid_string(atv.expect(TAG_OID)?);
            let (_, value, _) = atv.read_any()?;
            let key = match oid.as_str() {
                "2.5.4.6" => "C",
                "2.5.4.8" => "ST",
                "2.5.4.7" => "L",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                "2.5.4.3" => "CN",
                "1.2.840.113549.1.9.1" => "emailAddress",
                other => {
                    parts.push(format!("{other}={}", String::from_utf8_lossy(value)));
                    continue;
                }
            };
            parts.push(format!("{key}={}", String::from_utf8_lossy(value)));
        }
    }
    Ok(parts.join(", "))
}

/// Each PEM block's label and DER bytes, in order. (Not rustls-pki-types'
/// `PemObject`: it skips labels it does not know, and a cosign key file's
/// `ENCRYPTED SIGSTORE PRIVATE KEY` must be seen, to be refused with advice.)
pub fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let label_end = after
            .find("-----")
            .ok_or_else(|| anyhow!("PEM: unterminated BEGIN line"))?;
        let label = after[..label_end].to_string();
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let end = body_start
            .find(&end_marker)
            .ok_or_else(|| anyhow!("PEM: no '{end_marker}'"))?;
        let b64: String = body_start[..end]
            .lines()
            .filter(|l| !l.contains(':')) // RFC 1421 headers (encrypted keys)
            .collect::<String>()
            .split_whitespace()
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| anyhow!("PEM block '{label}': bad base64: {e}"))?;
        blocks.push((label, der));
        rest = &body_start[end + end_marker.len()..];
    }
    Ok(blocks)
}

/// Turns a raw `r||s` ECDSA signature (JWS, COSE) into DER.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let int = |x: &[u8]| {
        let x = &x[x.iter().take_while(|&&b| b == 0).count().min(x.len() - 1)..];
        let mut v = Vec::with_capacity(x.len() + 3);
        v.push(TAG_INTEGER);
        let pad = x[0] & 0x80 != 0;
        v.push((x.len() + usize::from(pad)) as u8);
        if pad {
            v.push(0);
        }
        v.extend_from_slice(x);
        v
    };
    let body = [int(r), int(s)].concat();
    let mut out = vec![TAG_SEQUENCE];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend(body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_read_in_dotted_form() {
        assert_eq!(
            oid_string(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
            "1.2.840.10045.2.1"
        );
        assert_eq!(oid_string(&[0x2b, 0x65, 0x70]), "1.3.101.112");
    }

    #[test]
    fn lengths_past_the_input_are_refused() {
        assert!(Reader::new(&[0x30, 0x05, 0x01]).read_any().is_err());
        assert!(Reader::new(&[0x30, 0x80]).read_any().is_err());
        assert!(Reader::new(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff])
            .read_any()
            .is_err());
        assert!(Reader::new(&[0x1f, 0x01, 0x00]).read_any().is_err());
    }

    #[test]
    fn raw_ecdsa_becomes_der() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a sign pad
        raw[63] = 0x01; // s is 1 after stripping zeros
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 38, 0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x01]);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_none());
    }

    #[test]
    fn pem_blocks_are_split_and_decoded() {
        let text = "junk\n-----BEGIN PUBLIC KEY-----\nAQID\n-----END PUBLIC KEY-----\n-----BEGIN CERTIFICATE-----\nBAU=\n-----END CERTIFICATE-----\n";
        let blocks = pem_blocks(text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0], ("PUBLIC KEY".to_string(), vec![1, 2, 3]));
        assert_eq!(blocks[1].1, vec![4, 5]);
        assert!(pem_blocks("-----BEGIN X-----\nAQID\n").is_err());
    }
}
