//! Registries: image references (and, later, digest resolution).

mod reference;

pub use reference::{DOCKER_HUB, ImageRef, RefError, validate_digest};
