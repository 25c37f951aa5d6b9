//! The values flags take: every choice a `ValueEnum` (so `--log-format jsn`
//! is an error naming the choices) and the parsers of sizes and owners,
//! with their conversions into the pipeline's own types.

use anyhow::{anyhow, Result};
use clap::ValueEnum;

use crate::manifest::Compression;
use crate::push;
use crate::verify::{self};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum LogFormat {
    Text,
    Json,
}

/// What a read-only command prints: a table for people, or JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Output {
    Text,
    Json,
}

/// What to do with an artifact of unknown type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Unknown {
    Refuse,
    Raw,
}

/// A switch (`OCIMODEL_CLOUD_AUTH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum OnOff {
    On,
    Off,
}

/// `OCIMODEL_VERIFY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum VerifyMode {
    Off,
    IfPresent,
    Required,
}

impl From<VerifyMode> for verify::Mode {
    fn from(m: VerifyMode) -> verify::Mode {
        match m {
            VerifyMode::Off => verify::Mode::Off,
            VerifyMode::IfPresent => verify::Mode::IfPresent,
            VerifyMode::Required => verify::Mode::Required,
        }
    }
}

/// `OCIMODEL_RECHECK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum RecheckMode {
    Size,
    Digest,
}

/// How `push` packages a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum PushFormat {
    /// CNCF ModelPack.
    Modelpack,
    /// One layer per file, as `oras push` writes them.
    Oras,
    /// An image with the files under /models.
    Modelcar,
}

impl From<PushFormat> for push::PushFormat {
    fn from(f: PushFormat) -> push::PushFormat {
        match f {
            PushFormat::Modelpack => push::PushFormat::ModelPack,
            PushFormat::Oras => push::PushFormat::Oras,
            PushFormat::Modelcar => push::PushFormat::Modelcar,
        }
    }
}

/// Layer compression for modelcar images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Compress {
    None,
    Gzip,
    Zstd,
}

impl From<Compress> for Compression {
    fn from(c: Compress) -> Compression {
        match c {
            Compress::None => Compression::None,
            Compress::Gzip => Compression::Gzip,
            Compress::Zstd => Compression::Zstd,
        }
    }
}

/// `123`, `64K`, `500M`, `2G`, `1T` (powers of 1024).
/// A range size: a size from 64K to 32M (a range must fit the memory
/// window ranges share; smaller ones would be all overhead).
pub(super) fn parse_range_size(s: &str) -> std::result::Result<u64, String> {
    let n = parse_size(s)?;
    if !(64 << 10..=crate::registry::RANGE_WINDOW).contains(&n) {
        return Err(format!("'{s}': a range is 64K to 32M"));
    }
    Ok(n)
}

pub(super) fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("'{s}': use a number with an optional K, M, G or T")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n.saturating_mul(mult))
        .map_err(|_| format!("'{s}' is not a size"))
}

/// `OCIMODEL_RESUME_MIN`: a size, or off (`None`).
#[derive(Clone, Copy, Debug)]
pub(super) struct ResumeMin(pub(super) Option<u64>);

pub(super) fn parse_resume_min(s: &str) -> std::result::Result<ResumeMin, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(ResumeMin(None));
    }
    parse_size(s).map(|n| ResumeMin(Some(n)))
}

pub(super) fn parse_owner(s: &str) -> Result<(u32, u32)> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("OCIMODEL_OWNER must be uid:gid, got '{s}'"))?;
    Ok((
        u.parse()
            .map_err(|_| anyhow!("OCIMODEL_OWNER: bad uid '{u}'"))?,
        g.parse()
            .map_err(|_| anyhow!("OCIMODEL_OWNER: bad gid '{g}'"))?,
    ))
}
