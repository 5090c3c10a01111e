//! Personal API keys: static keys a user mints for clients that take
//! nothing but a static key, each bound to the identity it was minted for
//! and judged as that identity, narrowed to some models and an expiry.
//!
//! - `format`: what a key looks like (a prefix secret scanners know);
//! - `record`: what is stored for it, sealed so the store cannot forge one;
//! - `records`: the records in Redis, shared by every replica;
//! - `store`: minting, checking (with a short cache), listing, revoking;
//! - `config`, `error`.
//!
//! The `/.attach/keys` endpoints are `proxy::keys`.

pub mod config;
pub mod error;
pub mod format;
pub mod record;
pub mod records;
pub mod store;

pub use config::ApiKeysConfig;
pub use error::KeysError;
pub use store::{KeyGrant, KeyRefusal, KeyStore, Verified};
