//! ocimodel: get ML models out of OCI registries and onto a model server's
//! disk, verified by digest.
//!
//! Modules, in the order data flows through them:
//! [`reference`] → [`source`] ([`registry`] with [`auth`], or an OCI layout)
//! → [`verify`] (signatures of the resolved digest, before
//! anything is written) → [`manifest`] (index → platform manifest) → [`format`] (which format,
//! what each layer becomes: a [`format::Plan`], narrowed by [`select`])
//! → [`fetch`] (stream + verify) → [`unpack`] (safe extraction into staging)
//! → [`install`] (atomic swap into DEST, completion marker).
//! [`pull`] drives one model through them; [`inspect`] reports on one
//! without writing; [`serve`] is the sidecar (probes, metrics, signals);
//! [`cli`] is the command line.

pub mod auth;
pub mod cli;
pub mod config;
pub mod digest;
pub mod dirfd;
pub mod error;
pub mod fetch;
pub mod format;
pub mod inspect;
pub mod install;
pub mod manifest;
pub mod plan;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod rfc3339;
pub mod select;
pub mod serve;
pub mod source;
pub mod text;
pub mod unpack;
pub mod verify;
