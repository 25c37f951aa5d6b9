//! `ocimodel inspect` and `ocimodel referrers`: what a reference holds and
//! what refers to it, without writing anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use crate::format::{artifact_type, Action};
use crate::manifest::Descriptor;
use crate::plan::plan;
use crate::progress::mib;
use crate::pull::Settings;
use crate::source::Source;

/// Everything `inspect` reports.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub reference: String,
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub artifact_type: String,
    pub format: String,
    /// Bytes that would be downloaded.
    pub total_size: u64,
    pub annotations: BTreeMap<String, String>,
    /// Layers written as whole files.
    pub files: Vec<FileRow>,
    /// Tar layers, whose entries are known only once unpacked.
    pub archives: Vec<ArchiveRow>,
    /// Files made from the manifest itself (a KitOps Kitfile).
    pub generated: Vec<String>,
    pub skipped: Vec<SkippedRow>,
    pub referrers: Vec<Descriptor>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRow {
    pub path: String,
    pub size: u64,
    pub digest: String,
    pub media_type: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveRow {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// Where its entries go: `/models` of an image, the root, or a directory.
    pub unpacks_to: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedRow {
    pub digest: String,
    pub media_type: String,
    pub reason: String,
}

pub async fn inspect(source: &Source, settings: &Settings) -> Result<Report> {
    let top = source.resolve().await?;
    let planned = plan(source, top, settings).await?;
    let plan = &planned.plan;
    let mut files = Vec::new();
    let mut archives = Vec::new();
    for step in &plan.steps {
        let l = &step.layer;
        match &step.action {
            Action::WriteFile(path) => files.push(FileRow {
                path: path.clone(),
                size: l.size,
                digest: l.digest.to_string(),
                media_type: l.media_type.clone(),
            }),
            Action::ApplyTar(_) => archives.push(ArchiveRow {
                digest: l.digest.to_string(),
                size: l.size,
                media_type: l.media_type.clone(),
                unpacks_to: format!("{} (image layer)", settings.subtree.display()),
            }),
            Action::ExtractTar { into, within, .. } => archives.push(ArchiveRow {
                digest: l.digest.to_string(),
                size: l.size,
                media_type: l.media_type.clone(),
                unpacks_to: match (into, within) {
                    (Some(d), _) | (None, Some(d)) => format!("{d}/"),
                    (None, None) => "/".to_string(),
                },
            }),
        }
    }
    let referrers = source.referrers(&planned.top.digest, None).await?;
    Ok(Report {
        reference: source.pinned(&planned.top.digest),
        digest: planned.top.digest.to_string(),
        manifest_digest: (planned.manifest_digest != planned.top.digest)
            .then(|| planned.manifest_digest.to_string()),
        platform: planned.platform.clone(),
        artifact_type: artifact_type(&planned.manifest).to_string(),
        format: plan.format.to_string(),
        total_size: plan.total_bytes(),
        annotations: planned.manifest.annotations.clone(),
        files,
        archives,
        generated: plan.generated.iter().map(|(p, _)| p.clone()).collect(),
        skipped: plan
            .skipped
            .iter()
            .map(|(l, why)| SkippedRow {
                digest: l.digest.to_string(),
                media_type: l.media_type.clone(),
                reason: why.clone(),
            })
            .collect(),
        referrers,
    })
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}", &hex[..12]),
        _ => digest.to_string(),
    }
}

/// The report for people.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Reference:     {}", r.reference);
    let _ = writeln!(out, "Digest:        {}", r.digest);
    if let Some(m) = &r.manifest_digest {
        let _ = writeln!(
            out,
            "Manifest:      {m} ({})",
            r.platform.as_deref().unwrap_or("unspecified")
        );
    }
    let _ = writeln!(out, "Format:        {}", r.format);
    let _ = writeln!(out, "Artifact type: {}", r.artifact_type);
    let _ = writeln!(
        out,
        "Total size:    {} ({} bytes)",
        mib(r.total_size),
        r.total_size
    );
    if !r.annotations.is_empty() {
        let _ = writeln!(out, "Annotations:");
        for (k, v) in &r.annotations {
            let v = if v.chars().count() > 70 {
                format!("{}…", v.chars().take(70).collect::<String>())
            } else {
                v.clone()
            };
            let _ = writeln!(out, "  {k}: {v}");
        }
    }
    if !r.files.is_empty() {
        let _ = writeln!(out, "Files:");
        let rows: Vec<Vec<String>> = r
            .files
            .iter()
            .map(|f| {
                vec![
                    f.path.clone(),
                    f.size.to_string(),
                    short(&f.digest),
                    f.media_type.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["PATH", "SIZE", "DIGEST", "MEDIA TYPE"], &rows));
    }
    if !r.archives.is_empty() {
        let _ = writeln!(
            out,
            "Archive layers (their files are listed in the marker once unpacked):"
        );
        let rows: Vec<Vec<String>> = r
            .archives
            .iter()
            .map(|a| {
                vec![
                    short(&a.digest),
                    a.size.to_string(),
                    a.unpacks_to.clone(),
                    a.media_type.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["DIGEST", "SIZE", "UNPACKS TO", "MEDIA TYPE"],
            &rows,
        ));
    }
    if !r.generated.is_empty() {
        let _ = writeln!(out, "Generated:     {}", r.generated.join(", "));
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(out, "Skipped layers:");
        for s in &r.skipped {
            let _ = writeln!(out, "  {} {}: {}", short(&s.digest), s.media_type, s.reason);
        }
    }
    out.push_str(&render_referrers(&r.referrers));
    out
}

/// Referrers for people.
pub fn render_referrers(referrers: &[Descriptor]) -> String {
    if referrers.is_empty() {
        return "Referrers:     none\n".to_string();
    }
    let rows: Vec<Vec<String>> = referrers
        .iter()
        .map(|d| {
            let notes: Vec<String> = d
                .annotations
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            vec![
                d.digest.to_string(),
                d.artifact_type.clone().unwrap_or_else(|| "-".into()),
                d.size.to_string(),
                notes.join(" "),
            ]
        })
        .collect();
    format!(
        "Referrers:\n{}",
        table(&["DIGEST", "ARTIFACT TYPE", "SIZE", "ANNOTATIONS"], &rows)
    )
}
