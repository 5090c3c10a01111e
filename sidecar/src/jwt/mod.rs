//! JWT verification: keys from each issuer's JWKS, the checks every token
//! must pass, and the cache of tokens already verified.

pub mod error;
pub mod jwks;
pub mod keys;
mod token_cache;
pub mod verifier;

pub use error::AuthError;
pub use jwks::{JwksCache, KeySource};
pub use verifier::{IssuerPolicy, Verifier};

#[cfg(test)]
mod tests;
