//! `OCIMODEL_HF_REPO=ORG/NAME`: the model installed as a repository of a
//! Hugging Face hub cache, so that DEST serves as `HF_HUB_CACHE` and an
//! engine started with `HF_HUB_OFFLINE=1` and `--model ORG/NAME` (vLLM, TGI,
//! transformers) finds it with the very flags it uses to download from the
//! Hub. The layout is the one `huggingface_hub` reads:
//!
//! ```text
//! DEST/models--ORG--NAME/refs/main                REVISION
//! DEST/models--ORG--NAME/snapshots/REVISION/…     the model's files
//! ```
//!
//! REVISION is the first 40 hex digits of the installed digest: the cache
//! wants a 40-hex commit id, and this one names the exact content. The files
//! live in the snapshot itself rather than as links into `blobs/`: readers
//! open snapshots by path, and one DEST holds one revision.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::digest::Digest;
use crate::unpack::{Contents, FileRecord};

/// A Hub repository id, checked as `huggingface_hub` checks one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfRepo(String);

impl HfRepo {
    /// `NAME` or `ORG/NAME`: letters, digits, `-`, `_`, `.`; no `--` or
    /// `..`; no `-` or `.` at either end; at most 96 characters.
    pub fn parse(s: &str) -> Result<HfRepo> {
        let s = s.trim();
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        };
        let parts: Vec<&str> = s.split('/').collect();
        if s.len() > 96
            || parts.len() > 2
            || !parts.iter().all(|p| part_ok(p))
            || s.contains("--")
            || s.contains("..")
        {
            bail!(
                "'{}' is not a Hugging Face repository id; write NAME or ORG/NAME (letters, digits, '-', '_', '.')",
                crate::text::escape_controls(s)
            );
        }
        Ok(HfRepo(s.to_string()))
    }

    pub fn id(&self) -> &str {
        &self.0
    }

    /// `models--ORG--NAME`, the repository's folder in the cache.
    fn folder(&self) -> String {
        format!("models--{}", self.0.replace('/', "--"))
    }

    /// The revision a digest installs as.
    fn revision(digest: &Digest) -> &str {
        &digest.hex()[..40]
    }

    /// Where the model's files are, relative to DEST.
    pub fn snapshot(&self, digest: &Digest) -> String {
        format!("{}/snapshots/{}", self.folder(), Self::revision(digest))
    }

    /// Moves the staged tree into the snapshot for `digest`, writes
    /// `refs/main`, and rewrites `contents` to match (the ref included, so
    /// `check` finds nothing extra). `staging`'s top entries become one:
    /// the repository's folder.
    pub fn arrange(
        &self,
        staging: &Path,
        digest: &Digest,
        contents: &mut Contents,
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        let folder = self.folder();
        let snapshot = self.snapshot(digest);
        let mut names = Vec::new();
        for entry in fs::read_dir(staging).context("reading staging")? {
            names.push(entry?.file_name());
        }
        if names.iter().any(|n| *n == *folder) {
            bail!("the model has its own top-level '{folder}', where the Hugging Face cache layout puts the repository");
        }
        let made = |rel: &str| -> Result<()> {
            let path = staging.join(rel);
            fs::create_dir(&path).with_context(|| format!("cannot create {rel} in staging"))?;
            finish_entry(&path, 0o755, true, owner)
        };
        for rel in [
            folder.clone(),
            format!("{folder}/snapshots"),
            snapshot.clone(),
            format!("{folder}/refs"),
        ] {
            made(&rel)?;
        }
        for name in &names {
            fs::rename(staging.join(name), staging.join(&snapshot).join(name))
                .with_context(|| format!("cannot move {name:?} into {snapshot}"))?;
        }
        let main = format!("{folder}/refs/main");
        let revision = Self::revision(digest);
        let mut f = fs::File::create_new(staging.join(&main))
            .with_context(|| format!("cannot create {main}"))?;
        f.write_all(revision.as_bytes())?;
        finish_entry(&staging.join(&main), 0o644, false, owner)?;

        for file in &mut contents.files {
            file.path = format!("{snapshot}/{}", file.path);
        }
        contents.links = std::mem::take(&mut contents.links)
            .into_iter()
            .map(|(link, target)| (format!("{snapshot}/{link}"), target))
            .collect();
        contents.files.push(FileRecord {
            path: main,
            size: revision.len() as u64,
            digest: Digest::of(crate::unpack::MARKER_ALGORITHM, revision.as_bytes()),
        });
        contents.files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(())
    }
}

/// What the unpack gives every entry it makes: the shared mode, the owner.
fn finish_entry(path: &Path, mode: u32, dir: bool, owner: Option<(u32, u32)>) -> Result<()> {
    let mode = crate::unpack::shared_mode(mode, dir);
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode on {}", path.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {} to {uid}:{gid}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_ids_are_checked_as_the_hub_checks_them() {
        for ok in ["mnist", "acme/mnist", "meta-llama/Llama-3.1-8B", "a_b/c.d"] {
            assert_eq!(HfRepo::parse(ok).unwrap().id(), ok);
        }
        for bad in [
            "", "/", "a/", "/a", "a/b/c", "a--b", "a/b..c", "-a", "a.", "../x", "a b", "a\nb",
        ] {
            assert!(HfRepo::parse(bad).is_err(), "{bad:?}");
        }
        assert!(HfRepo::parse(&"a".repeat(97)).is_err());
        let d = Digest::sha256_of(b"x");
        let repo = HfRepo::parse("acme/mnist").unwrap();
        assert_eq!(
            repo.snapshot(&d),
            format!("models--acme--mnist/snapshots/{}", &d.hex()[..40])
        );
    }
}
