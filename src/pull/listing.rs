//! The keys an artifact's tar layers will hold, known before they download,
//! for the S3 endpoint's listing.
//!
//! A tar layer that holds one file (modctl and KitOps write one per weight)
//! names it, with its size, in its first header. Read ahead from every
//! layer, those make the listing whole at once, so a loader that lists the
//! bucket first (vLLM does) starts while the layers download instead of after
//! the last one. What is read ahead is **unverified** and only names keys:
//! a file's bytes are still served once its layer verified, and a key the
//! installed model lacks is dropped then ([`crate::s3::catalog`]). When any
//! layer may hold more than one file, nothing is published and the listing
//! waits for the layers, as without this.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::{StreamExt, TryStreamExt};

use crate::format::{Action, Plan};
use crate::manifest::{Compression, Descriptor};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::s3::Publisher;
use crate::select::Filter;
use crate::source::Source;
use crate::unpack::{clean_dir, clean_path, join};

/// Bytes read from a layer's start: its first tar header (after a PAX or
/// GNU long-name header).
const HEAD: u64 = 8 << 10;
/// After the file's data, at most this much end-of-archive padding (Go's
/// writer leaves 1 KiB; GNU and Python tar pad to 10 KiB records).
const TAIL: u64 = 20 << 10;
const BLOCK: u64 = 512;
/// Layers read ahead at once (two requests each, a few KiB).
const AT_ONCE: usize = 4;
/// After this the listing waits for the layers, as without reading ahead.
const PATIENCE: Duration = Duration::from_secs(15);

/// The reading ahead of one pull; stopped when dropped (with the pull).
pub(super) struct ReadAhead(tokio::task::JoinHandle<()>);

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts reading ahead when `plan`'s tar layers are an artifact's plain
/// ones, fetched from a registry: once every layer named its one file, the
/// keys go to `publisher` and the listing is whole.
pub(super) fn start(
    source: &Source,
    plan: &Plan,
    filter: &Filter,
    publisher: &Publisher,
) -> Option<ReadAhead> {
    let Source::Registry {
        client,
        reference,
        cache,
    } = source
    else {
        return None; // local layers unpack at disk speed
    };
    let mut layers = Vec::new();
    for step in &plan.steps {
        match &step.action {
            Action::WriteFile(_) => {}
            Action::ExtractTar {
                compression: Compression::None,
                into,
                within: None,
                content_digest: None,
            } => layers.push((step.layer.clone(), into.clone())),
            // Compressed, stacked (an image) or checked as a whole tree.
            _ => return None,
        }
    }
    if layers.is_empty() {
        return None;
    }
    // Layers the node cache holds unpack at disk speed, and the listing
    // with them: no request is worth it. (Their names are not read from the
    // cache: any pod on the node can write there, and the listing would be
    // its word until the layers verified.)
    if let Some(cache) = cache {
        if layers.iter().all(|(layer, _)| cache.holds(&layer.digest)) {
            tracing::debug!("S3 endpoint: every tar layer is in the node cache; the listing comes as they unpack");
            return None;
        }
    }
    let (client, reference) = (client.clone(), reference.clone());
    let (filter, publisher) = (filter.clone(), publisher.clone());
    Some(ReadAhead(tokio::spawn(async move {
        let named = tokio::time::timeout(PATIENCE, named_keys(&client, &reference, layers));
        match named.await {
            Ok(Ok(Some(keys))) => {
                let keys: Vec<_> = keys
                    .into_iter()
                    .filter(|(key, ..)| filter.allows(key))
                    .collect();
                tracing::debug!(keys = keys.len(), "S3 endpoint: every tar layer named its file; the listing is whole");
                publisher.planned(keys);
                publisher.listed();
            }
            Ok(Ok(None)) => tracing::debug!("S3 endpoint: a tar layer may hold several files; the listing waits for the layers"),
            Ok(Err(e)) => tracing::debug!("S3 endpoint: cannot read the tar layers ahead ({e:#}); the listing waits for them"),
            Err(_) => tracing::debug!("S3 endpoint: reading the tar layers ahead took too long; the listing waits for them"),
        }
    })))
}

/// Every layer's key, size and ETag, or `None` when one may hold more than
/// one file or two name the same key.
async fn named_keys(
    client: &Arc<RegistryClient>,
    reference: &ImageRef,
    layers: Vec<(Descriptor, Option<String>)>,
) -> Result<Option<Vec<(String, u64, String)>>> {
    let files: Vec<Option<(String, u64, String)>> = futures_util::stream::iter(layers)
        .map(|(layer, into)| async move {
            let Some((path, size)) = one_file(client, reference, &layer).await? else {
                return Ok(None);
            };
            let mut rel = clean_dir(&into)?;
            rel.extend(clean_path(&path)?);
            // Until it verified, the layer's digest stands for the file's.
            let etag = crate::s3::catalog::etag(&layer.digest);
            let key = join(&rel);
            // A control character has no place in a listing's XML.
            let listable = !key.is_empty() && !key.chars().any(char::is_control);
            Ok::<_, anyhow::Error>(listable.then_some((key, size, etag)))
        })
        .buffer_unordered(AT_ONCE)
        .try_collect()
        .await?;
    let Some(files) = files.into_iter().collect::<Option<Vec<_>>>() else {
        return Ok(None);
    };
    let unique: BTreeSet<&str> = files.iter().map(|(k, ..)| k.as_str()).collect();
    Ok((unique.len() == files.len()).then_some(files))
}

/// The path and size of the one regular file `layer` holds, read from its
/// first and last bytes; `None` when there could be more.
async fn one_file(
    client: &Arc<RegistryClient>,
    reference: &ImageRef,
    layer: &Descriptor,
) -> Result<Option<(PathBuf, u64)>> {
    let head = client
        .blob_bytes(reference, &layer.digest, 0, layer.size.min(HEAD))
        .await?;
    let Some((path, size, data_at)) = first_entry(&head) else {
        return Ok(None);
    };
    let Some(end) = data_end(data_at, size) else {
        return Ok(None);
    };
    if end > layer.size || layer.size - end > TAIL {
        return Ok(None);
    }
    // The rest must be end-of-archive zeros: another header would be a file.
    let tail = if layer.size as usize <= head.len() {
        head[end as usize..].to_vec()
    } else if end == layer.size {
        Vec::new()
    } else {
        client
            .blob_bytes(reference, &layer.digest, end, layer.size)
            .await?
    };
    let whole = tail.len() as u64 == layer.size - end && tail.iter().all(|b| *b == 0);
    Ok(whole.then_some((path, size)))
}

/// Where an entry's data, padded to whole blocks, ends; `None` past 2^64
/// (a base-256 or PAX size may say anything).
fn data_end(data_at: u64, size: u64) -> Option<u64> {
    size.div_ceil(BLOCK)
        .checked_mul(BLOCK)
        .and_then(|padded| padded.checked_add(data_at))
}

/// A tar stream's first entry when it is a regular file: its path, its
/// size and where its data starts.
fn first_entry(head: &[u8]) -> Option<(PathBuf, u64, u64)> {
    let mut archive = tar::Archive::new(Cursor::new(head));
    let entry = archive.entries().ok()?.next()?.ok()?;
    if !entry.header().entry_type().is_file() {
        return None;
    }
    let path: &Path = &entry.path().ok()?;
    Some((path.to_path_buf(), entry.size(), entry.raw_file_position()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn the_first_entry_names_its_file_size_and_data() {
        let long = format!("{}/model.safetensors", "d".repeat(120));
        let tar = tar_of(&[(&long, b"weights")]);
        let (path, size, at) = first_entry(&tar).unwrap();
        assert_eq!((path, size), (PathBuf::from(&long), 7));
        assert_eq!(&tar[at as usize..at as usize + 7], b"weights");
        // Behind a GNU long-name header: its data starts two blocks later.
        assert_eq!(at, 3 * BLOCK);
    }

    #[test]
    fn a_size_past_two_to_the_64_ends_nowhere() {
        assert_eq!(data_end(512, 7), Some(1024));
        assert_eq!(data_end(512, 0), Some(512));
        // The tar reader takes a base-256 size this close to 2^64 ...
        let mut h = tar::Header::new_gnu();
        h.set_size(u64::MAX - 1100);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path("w").unwrap();
        h.set_cksum();
        let (_, size, at) = first_entry(h.as_bytes()).unwrap();
        assert_eq!((size, at), (u64::MAX - 1100, 512));
        // ... and behind a long name's two blocks, its padded end is past it.
        assert_eq!(data_end(at + 2 * BLOCK, size), None);
        assert_eq!(data_end(512, u64::MAX), None);
    }

    #[test]
    fn a_directory_first_names_nothing() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, "w/", &[][..]).unwrap();
        assert!(first_entry(&b.into_inner().unwrap()).is_none());
        assert!(first_entry(b"not a tar").is_none());
    }
}
