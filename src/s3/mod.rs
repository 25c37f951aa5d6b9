//! A read-only S3 endpoint on loopback, in sidecar mode
//! (`OCIMODEL_S3_LISTEN`): it serves the models this sidecar installs,
//! while it installs them, so an engine that streams weights from S3
//! (vLLM's `--load-format runai_streamer`) starts on the first shard
//! instead of waiting for the whole pull. Only verified bytes leave.
//!
//! [`catalog`] is the verified-file registry (one owner, fed by events from
//! the pulls); [`server`] is the HTTP side, its bodies read by `body.rs`. `docs/streaming.md` says how to
//! use it.

mod body;
pub mod catalog;
pub mod server;

pub use catalog::{bucket_names, Catalog, Publisher, VerifiedFile};
