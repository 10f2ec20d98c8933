//! Registries: image references, and the distribution client that resolves
//! digests (auth, rate limits, multi-arch, base annotations).

mod auth;
mod client;
pub mod manifest;
mod reference;

pub use auth::{Challenge, Credentials, parse_challenge};
pub use client::{RateBudget, RegistryClient, RegistryError, Resolution};
pub use reference::{DOCKER_HUB, ImageRef, RefError, validate_digest};
