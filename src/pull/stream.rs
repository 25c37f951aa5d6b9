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
    /// The signature did not verify: nothing is served before the tree
    /// check, which refuses it.
    Closed,
}

impl SignedGate {
    fn offer(&self, root: &Path, record: &FileRecord) {
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

    fn judge(&self, signed: &Arc<SignedFiles>, record: &FileRecord, file: VerifiedFile) {
        match signed.vouches(&record.path, &record.digest) {
            Some(true) => self.publisher.serve(record.path.clone(), file),
            Some(false) => self.refuse(record),
            // Hashed again as the signer did, off the async workers.
            None => {
                let (publisher, signed, record) =
                    (self.publisher.clone(), signed.clone(), record.clone());
                let refuse = self.refusal(&record);
                let hash = move || {
                    // One CPU's worth at a time, beside the download's hashing.
                    let cpu = crate::cpus::Slot::take();
                    let judged = signed.vouches_for_bytes(&record.path, &file.file);
                    drop(cpu);
                    match judged {
                        Ok(Some(true)) => publisher.serve(record.path.clone(), file),
                        Ok(Some(false)) => publisher.failed(&record.path, &refuse),
                        // Ignored by the signature: served after the tree check.
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(path = %record.path, "cannot hash it as the signature does ({e:#}); it is served after the whole tree's check")
                        }
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn_blocking(hash)),
                    Err(_) => hash(),
                }
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
