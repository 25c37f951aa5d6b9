//! KitOps parent kits: a child ModelKit whose model comes from other kits
//! (`kit unpack` installs the parents' model layers first, eldest first).

use anyhow::{bail, Context, Result};

use super::{ClientFactory, Job, Settings};
use crate::format::Format;
use crate::plan::{plan, Planned};
use crate::reference::Target;
use crate::source::Source;
use crate::verify;

/// A KitOps parent kit, resolved by digest and planned (model layers only).
pub(super) struct Parent {
    pub(super) source: Source,
    pub(super) planned: Planned,
    /// Pinned by digest, for logs and the marker.
    pub(super) reference: String,
}

/// Longest chain of parent kits followed (kit's `MaxModelRefChain`).
const MAX_KIT_PARENTS: usize = 10;

/// The parent kits a child ModelKit's model comes from, eldest first, as
/// `kit unpack` installs them: each resolved to a digest once, checked by
/// the same signature policy and reached with the same registry settings;
/// only their model layers, and none when `OCIMODEL_KIT_FILTER` leaves the
/// model out. A chain longer than 10 or one that loops is refused. A parent
/// named by tag is not pinned by its child's digest: refused under
/// `OCIMODEL_REQUIRE_DIGEST`, else followed with a warning.
pub(super) async fn kit_parents(
    job: &Job,
    settings: &Settings,
    clients: &ClientFactory,
    child: &Planned,
) -> Result<Vec<Parent>> {
    let mut chain = Vec::new();
    let Some(mut next) = child.plan.parent.clone() else {
        return Ok(chain);
    };
    let filter = &settings.format.kit_filter;
    if !filter.is_empty() && !filter.iter().any(|f| f == "model") {
        tracing::info!(uri = %job.uri, parent = %next, "the parent kit's model is left out by OCIMODEL_KIT_FILTER");
        return Ok(chain);
    }
    let mut parent_settings = settings.clone();
    parent_settings.format.kit_filter = vec!["model".to_string()];
    let mut seen = std::collections::HashSet::new();
    loop {
        if chain.len() == MAX_KIT_PARENTS {
            bail!(
                "the ModelKit's chain of parent kits is longer than {MAX_KIT_PARENTS} (at {next})"
            );
        }
        if !seen.insert(next.clone()) {
            bail!("the ModelKit's chain of parent kits loops back to {next}");
        }
        let step = || format!("parent kit {next}");
        let image = crate::reference::ImageRef::parse(&next).with_context(step)?;
        // A tag in the Kitfile is not pinned by the child's digest: whoever
        // moves it changes the weights a pinned child installs.
        let by_tag = image.digest.is_none();
        if by_tag && settings.require_digest {
            bail!("parent kit {next} is named by tag in the ModelKit's Kitfile, so the child's digest does not pin the parent's model, and OCIMODEL_REQUIRE_DIGEST is set; the Kitfile's model.path must name the parent by digest (REGISTRY/REPO@sha256:...)");
        }
        let source = Source::new(
            &Target::Registry(image),
            || clients(),
            settings.cache.clone(),
        )
        .with_context(step)?;
        let top = source.resolve().await.with_context(step)?;
        if !settings.verify.is_off() {
            for s in verify::verify(&source, &top, &settings.verify)
                .await
                .with_context(step)?
            {
                tracing::info!(uri = %job.uri, parent = %next, "verified {s}");
            }
        }
        let planned = plan(&source, top, &parent_settings)
            .await
            .with_context(step)?;
        if planned.plan.format != Format::KitOps {
            bail!(
                "parent kit {next} is a {} artifact, not a ModelKit",
                planned.plan.format
            );
        }
        let reference = source.pinned(&planned.top.digest);
        if by_tag {
            tracing::warn!(uri = %job.uri, parent = %reference, "the kit's model comes from its parent kit, named by tag: the child's digest does not pin it (it resolved to {})", planned.top.digest);
        } else {
            tracing::info!(uri = %job.uri, parent = %reference, "the kit's model comes from its parent kit");
        }
        let up = planned.plan.parent.clone();
        chain.push(Parent {
            source,
            planned,
            reference,
        });
        match up {
            Some(u) => next = u,
            None => break,
        }
    }
    chain.reverse();
    Ok(chain)
}
