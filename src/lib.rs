//! ocimodel: get ML models out of OCI registries and onto a model server's
//! disk, verified by digest.
//!
//! Modules, in the order data flows through them:
//! [`reference`] → [`source`] (`source/`: layouts and archives, with
//! [`registry`] (`registry/`: `transport`, `auth`, `errors`, `mirror`
//! routing, `blob` and `ranges`, `referrers`, `push`) and [`auth`] for
//! registries; `source/`: `docker` archives, `file` reading, the `store`
//! of fetched blobs) → [`verify`] (signatures of the resolved digest,
//! before anything is written; `verify/`: `cosign`, `sigstore`,
//! `notation`, `keys`, `der` certificates, `cbor`) →
//! [`plan`] (index → platform manifest via [`manifest`], then [`format`]
//! says what each layer becomes: a [`format::Plan`], narrowed by
//! [`select`]) → [`fetch`] (stream + verify) → [`unpack`] (`unpack/`: safe
//! extraction into staging; path rules in `paths.rs`, links in `links.rs`)
//! → [`install`] (atomic swap into DEST through [`dirfd`]; the completion
//! marker in `install/marker.rs`).
//!
//! [`pull`] drives one model through them, with the run's [`settings`]
//! (`pull/`: `kit.rs` follows KitOps parent kits, `write.rs` fetches a
//! plan into staging, `stream.rs` tells the S3 endpoint which files
//! verified, `listing.rs` names tar layers' files ahead for its listing);
//! [`inspect`] reports on one without writing; [`serve`] is the sidecar
//! (probes, metrics, signals), with [`s3`] (an opt-in read-only S3
//! endpoint that serves each file as soon as its bytes verify, fed by
//! events from [`pull`]; `s3/`: `catalog.rs` which files may be served,
//! `server.rs` the S3 API, `body.rs` its file bodies); [`push`] packages a directory (`push/`:
//! `files.rs` walks it); [`cli`] is the command line (`cli/`: typed flags
//! in `args.rs`, their values and parsers in `values.rs`, `prepare.rs`
//! turning them into jobs, settings and a client, the commands in
//! `commands.rs`), with every setting and
//! default in [`config`]. Where bytes may come from besides the registry:
//! [`cache`] (the node cache and DEST's partial downloads; [`clone`]
//! copies whole files from it by sharing extents where the filesystem
//! can), [`mirrors`] (the node's mirror configuration; `registry/mirror.rs` routes by it),
//! `registry/ranges.rs` (one blob over several connections), [`cloud`]
//! (ECR, GAR and ACR credentials from the workload's identity; `cloud/`:
//! `aws`, `gcp`, `azure`, `sigv4`), [`model_registry`] (`model-registry://`
//! resolved to an OCI reference). After the unpack: `verify/model.rs`
//! (OpenSSF model signatures over the files), [`hf_cache`] (the Hugging
//! Face hub cache layout). [`cpus`] says how much of the node a run may
//! keep busy; [`progress`] shows
//! how far a transfer is (bars on a terminal, log lines elsewhere). Beside them: [`digest`] (and hex), [`error`] (the typed
//! errors code branches on, and `root_cause`), [`text`] (making outside
//! text safe to print), [`rfc3339`].
//!
//! # Layers
//!
//! Imports run down these layers, never up, and never in a circle
//! (between modules, or between the files of one directory module);
//! `scripts/check-structure.sh` checks both, and that no file is over 700
//! lines before its tests. A module may import from its own layer or any
//! below it.
//!
//! 1. ground: `config`, `error`, `text`, `digest`, `rfc3339`, `cpus`,
//!    `dirfd`, `clone`;
//! 2. names: `reference`, `manifest`, `select`, `mirrors`, `auth`;
//! 3. services and content: `cloud`, `model_registry`, `format`, `unpack`,
//!    `cache`, `hf_cache`;
//! 4. transport: `registry`;
//! 5. sources: `source`;
//! 6. stages: `fetch`, `progress`, `s3`, `verify`, `install`, `settings`, `plan`,
//!    `push`;
//! 7. pipeline: `pull`;
//! 8. front: `inspect`, `serve`, `cli`.
//!
//! So nothing under `cloud/`, nor `model_registry.rs` or `auth.rs`, imports
//! `registry/`: the registry client builds the cloud credential flow and
//! implements `model_registry::ApiReader`, not the other way round. A
//! helper two layers need lives in the lower one (`root_cause` in `error`,
//! the `model-registry://` scheme in `reference`, Docker Hub's names in
//! `config`); settings travel down as values (`ClientOptions`,
//! `Settings`), read once in `cli/prepare.rs`.

pub mod auth;
pub(crate) mod cache;
pub mod cli;
pub(crate) mod clone;
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
pub(crate) mod progress;
pub(crate) mod pull;
pub(crate) mod push;
pub mod reference;
pub(crate) mod registry;
pub(crate) mod rfc3339;
pub(crate) mod s3;
pub mod select;
pub(crate) mod serve;
pub(crate) mod settings;
pub(crate) mod source;
pub(crate) mod text;
pub mod unpack;
pub mod verify;
