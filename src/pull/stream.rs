//! What the S3 endpoint is told while a pull streams: each file as its
//! bytes verify, which under a model-signature policy means once the file
//! matches the digest its verified signature lists for it.
//!
//! The signature file (`model.sig`) downloads first; until it is in and
//! verified, files that arrive are held, opened when their blob verified.
//! Files the download's digest cannot judge (shard or other-hash
//! serializations) are hashed again as the signer did, off the async
//! workers, and served when they match. Ignored paths wait for the whole
//! tree's check, as does everything when the signature does not verify:
//! that check then says why.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::format::{Format, Plan};
use crate::s3::{Publisher, VerifiedFile};
use crate::unpack::FileRecord;
use crate::verify::model::{read_signature_file, read_signed, ModelPolicy, SignedFiles};

use super::Settings;

/// How a streaming pull reports its files.
#[derive(Clone, Debug)]
pub(super) enum Streaming {
    /// Each file as its blob or tar layer verifies.
    Each(Publisher),
    /// Each file once it also matches its signed digest.
    Signed(Arc<SignedGate>),
}

impl Streaming {
    /// Streaming for this plan, if the endpoint is on and files may be
    /// served before the install: not for an image (a later layer may
    /// change or delete a file).
    pub(super) fn for_plan(settings: &Settings, plan: &Plan) -> Option<Streaming> {
        let publisher = settings.publisher()?.clone();
        if plan.format == Format::Image {
            return None;
        }
        Some(match settings.model_signature.is_off() {
            true => Streaming::Each(publisher),
            false => Streaming::Signed(Arc::new(SignedGate {
                publisher,
                policy: settings.model_signature.clone(),
                state: Mutex::new(Gate::Waiting(Vec::new())),
            })),
        })
    }

    /// The file to download first: the signature, which the others wait on.
    pub(super) fn first(&self) -> Option<&str> {
        match self {
            Streaming::Each(_) => None,
            Streaming::Signed(g) => Some(&g.policy.signature),
        }
    }

    /// The attempt's tree check has decided (or the attempt ended): from
    /// now on it alone says what is served, so a file still being hashed
    /// again is not served when its hash comes in.
    pub(super) fn close(&self) {
        if let Streaming::Signed(g) = self {
            *g.state.lock().unwrap_or_else(|e| e.into_inner()) = Gate::Closed;
        }
    }

    /// `root/record.path` verified against its blob or layer digest.
    pub(super) fn verified(&self, root: &Path, record: &FileRecord) {
        match self {
            Streaming::Each(p) => p.verified(root, record),
            Streaming::Signed(g) => g.offer(root, record),
        }
    }

    pub(super) fn failed(&self, key: &str, why: &str) {
        match self {
            Streaming::Each(p) => p.failed(key, why),
            Streaming::Signed(g) => g.publisher.failed(key, why),
        }
    }
}

/// Files waiting on the model signature, then judged by it.
#[derive(Debug)]
pub(super) struct SignedGate {
    publisher: Publisher,
    policy: Arc<ModelPolicy>,
    state: Mutex<Gate>,
}

#[derive(Debug)]
enum Gate {
    /// The signature is not in yet: files that verified, held open.
    Waiting(Vec<(FileRecord, VerifiedFile)>),
    Signed(Arc<SignedFiles>),
    /// Nothing more is served through the gate: the signature did not
    /// verify (the tree check refuses it), or the tree check has decided.
    Closed,
}

impl SignedGate {
    fn offer(self: &Arc<Self>, root: &Path, record: &FileRecord) {
        let Some(file) = VerifiedFile::open(root, record) else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            Gate::Closed => {}
            Gate::Signed(signed) => self.judge(signed, record, file),
            Gate::Waiting(_) if record.path == self.policy.signature => {
                let signed = read_signature_file(&file.file)
                    .and_then(|bytes| read_signed(&bytes, &self.policy));
                let Gate::Waiting(held) = std::mem::replace(&mut *state, Gate::Closed) else {
                    unreachable!("matched as waiting above");
                };
                match signed {
                    Ok(signed) => {
                        let signed = Arc::new(signed);
                        tracing::info!(signature = %self.policy.signature, signer = %signed.signer, "model signature verified; serving each file that matches it");
                        self.publisher.serve(record.path.clone(), file);
                        for (r, f) in held {
                            self.judge(&signed, &r, f);
                        }
                        *state = Gate::Signed(signed);
                    }
                    Err(e) => {
                        tracing::warn!(signature = %self.policy.signature, "the model signature does not verify ({e:#}); no file is served")
                    }
                }
            }
            Gate::Waiting(held) => held.push((record.clone(), file)),
        }
    }

    fn judge(self: &Arc<Self>, signed: &Arc<SignedFiles>, record: &FileRecord, file: VerifiedFile) {
        match signed.vouches(&record.path, &record.digest) {
            Some(true) => self.publisher.serve(record.path.clone(), file),
            Some(false) => self.refuse(record),
            // Hashed again as the signer did, off the async workers (the
            // caller holds the gate's lock: never inline).
            None => {
                let (gate, signed, record) = (self.clone(), signed.clone(), record.clone());
                let hash = move || {
                    let judged = signed.vouches_for_bytes(&record.path, &file.file, file.size);
                    gate.decide(&record, file, judged)
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn_blocking(hash)),
                    Err(_) => drop(std::thread::spawn(hash)),
                }
            }
        }
    }

    /// A file hashed again: served or refused, unless the gate closed
    /// meanwhile (then the tree check says, as it does for everything).
    fn decide(
        &self,
        record: &FileRecord,
        file: VerifiedFile,
        judged: anyhow::Result<Option<bool>>,
    ) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*state, Gate::Signed(_)) {
            return;
        }
        match judged {
            Ok(Some(true)) => self.publisher.serve(record.path.clone(), file),
            Ok(Some(false)) => self.refuse(record),
            // Ignored by the signature: served after the tree check.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %record.path, "cannot hash it as the signature does ({e:#}); it is served after the whole tree's check")
            }
        }
    }

    fn refuse(&self, record: &FileRecord) {
        self.publisher.failed(&record.path, &self.refusal(record));
    }

    fn refusal(&self, record: &FileRecord) -> String {
        format!(
            "model signature {}: {} is not signed with these bytes",
            self.policy.signature,
            crate::text::escape_controls(&record.path)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::s3::catalog::FileState;
    use crate::s3::Catalog;
    use std::time::Duration;

    /// A gate whose signature verified, listing `a.bin` by shards.
    fn signed_gate(dir: &Path, bytes: &[u8]) -> (Catalog, Arc<SignedGate>, FileRecord) {
        std::fs::write(dir.join("a.bin"), bytes).unwrap();
        let (catalog, publishers) = Catalog::start(&[("models".into(), dir.into())]);
        let signed = SignedFiles::sharded_for_tests(10, &[("a.bin", bytes)]);
        let gate = Arc::new(SignedGate {
            publisher: publishers[0].clone(),
            policy: Arc::new(ModelPolicy::default()),
            state: Mutex::new(Gate::Signed(Arc::new(signed))),
        });
        let record = FileRecord {
            path: "a.bin".into(),
            size: bytes.len() as u64,
            digest: Digest::sha256_of(bytes),
        };
        (catalog, gate, record)
    }

    async fn served(catalog: &Catalog, within: Duration) -> bool {
        catalog
            .wait_for(within, |s| match s.buckets["models"].keys.get("a.bin") {
                Some(FileState::Verified(_)) => Some(()),
                _ => None,
            })
            .await
            .is_some()
    }

    #[tokio::test]
    async fn a_file_hashed_again_is_not_served_once_the_gate_closed() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..35u8).collect();
        // Open: hashed again as the signature's shards, then served.
        let (catalog, gate, record) = signed_gate(dir.path(), &bytes);
        gate.offer(dir.path(), &record);
        assert!(served(&catalog, Duration::from_secs(10)).await);

        // A hash that comes in after the tree check decided: not served.
        let (catalog, gate, record) = signed_gate(dir.path(), &bytes);
        let file = VerifiedFile::open(dir.path(), &record).unwrap();
        Streaming::Signed(gate.clone()).close();
        gate.decide(&record, file, Ok(Some(true)));
        assert!(!served(&catalog, Duration::from_millis(300)).await);
    }
}
