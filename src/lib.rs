//! ocimodel: get ML models out of OCI registries and onto a model server's
//! disk, verified by digest.
//!
//! Modules, in the order data flows through them:
//! [`reference`] → [`source`] (`source/`: layouts and archives, with
//! [`registry`] (`registry/`: transport, auth, errors, ranges, referrers,
//! push) and
//! [`auth`] for registries) → [`verify`] (signatures of the resolved digest,
//! before anything is written; `verify/der.rs` reads certificates) →
//! [`plan`] (index → platform manifest via [`manifest`], then [`format`]
//! says what each layer becomes: a [`format::Plan`], narrowed by
//! [`select`]) → [`fetch`] (stream + verify) → [`unpack`] (`unpack/`: safe
//! extraction into staging; path rules in `paths.rs`, links in `links.rs`)
//! → [`install`] (atomic swap into DEST through [`dirfd`], completion
//! marker).
//!
//! [`pull`] drives one model through them; [`inspect`] reports on one
//! without writing; [`serve`] is the sidecar (probes, metrics, signals),
//! with `s3` (an opt-in read-only S3 endpoint that serves each file as
//! soon as its bytes verify, fed by events from [`pull`]);
//! [`push`] packages a directory; [`cli`] is the command line (`cli/`:
//! typed flags in `args.rs`, the commands in `commands.rs`), with every
//! setting and default in [`config`]. Where bytes may come from besides
//! the registry: `cache` (the node cache and DEST's partial downloads),
//! [`mirrors`] (the node's mirror configuration), `registry/ranges.rs`
//! (one blob over several connections), [`cloud`] (ECR, GAR and ACR
//! credentials from the workload's identity), `model_registry`
//! (`model-registry://` resolved to an OCI reference). After the unpack:
//! `verify/model.rs` (OpenSSF model signatures over the files), `hf_cache`
//! (the Hugging Face hub cache layout). `cpus` says how much of the node a
//! run may keep busy. Beside them: [`digest`], [`error`] (the typed errors
//! code branches on), [`text`] (making outside text safe to print),
//! [`rfc3339`].

pub mod auth;
pub(crate) mod cache;
pub mod cli;
pub mod cloud;
pub(crate) mod config;
pub(crate) mod cpus;
pub mod digest;
pub(crate) mod dirfd;
pub(crate) mod error;
pub(crate) mod fetch;
pub mod format;
pub(crate) mod hf_cache;
pub(crate) mod inspect;
pub(crate) mod install;
pub mod manifest;
pub mod mirrors;
pub(crate) mod model_registry;
pub(crate) mod plan;
pub(crate) mod pull;
pub(crate) mod push;
pub mod reference;
pub(crate) mod registry;
pub(crate) mod rfc3339;
pub(crate) mod s3;
pub mod select;
pub(crate) mod serve;
pub(crate) mod source;
pub(crate) mod text;
pub mod unpack;
pub mod verify;
