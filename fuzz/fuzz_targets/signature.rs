//! The signature parsers never panic on hostile input: DER certificates and
//! keys, PEM, sigstore bundles (key and keyless paths), notation JWS and
//! COSE envelopes, trusted roots, and inclusion proofs. The first byte picks one.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ocimodel::verify::der;
use ocimodel::digest::Digest;
use ocimodel::verify::{cosign, keys, notation, sigstore, Inputs, Policy};

const KEY: &str = include_str!("../../tests/fixtures/signature-examples/cosign.pub");
const SUBJECT: &str = "sha256:1998cf6ed2fb4d60eb2224b3713867d92d383aa71bf159d36114169b8f932743";

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        Policy::from_inputs(&Inputs {
            key: Some(KEY.to_string()),
            ..Inputs::default()
        })
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let subject: Digest = SUBJECT.parse().unwrap();
    match which % 8 {
        0 => {
            if let Ok(c) = der::parse_certificate(rest) {
                let _ = c.alt_names();
                let _ = c.extension("1.3.6.1.4.1.57264.1.8");
            }
        }
        1 => {
            let _ = keys::PublicKey::from_spki(rest, "fuzz".into()).map(|k| k.verify(b"m", rest));
        }
        2 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = der::pem_blocks(s);
                let _ = keys::load_keys("K", &format!("-----BEGIN PUBLIC KEY-----\n{s}"));
            }
        }
        3 => {
            let _ = cosign::check_bundle(rest, &subject, policy());
        }
        4 | 7 => {
            let trust = notation::Trust {
                anchors: Vec::new(),
                identities: Vec::new(),
            };
            let target = notation::Target {
                digest: &subject,
                media_type: "application/vnd.oci.image.manifest.v1+json",
                size: 309,
            };
            let check = if which % 8 == 4 {
                notation::check_jws
            } else {
                notation::check_cose
            };
            let _ = check(rest, &target, &trust);
        }
        5 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = sigstore::TrustedRoot::parse(s, "fuzz");
            }
        }
        6 => {
            // An inclusion path: index, size, then 32-byte hashes.
            if rest.len() >= 16 {
                let index = u64::from_le_bytes(rest[..8].try_into().unwrap());
                let size = u64::from_le_bytes(rest[8..16].try_into().unwrap());
                let path: Vec<Vec<u8>> = rest[16..].chunks(32).map(<[u8]>::to_vec).collect();
                let _ = sigstore::root_from_proof(index, size, [0; 32], &path);
            }
        }
        _ => unreachable!(),
    }
});
