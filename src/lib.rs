//! lineaged: keeps container images rebuilt on fresh base images.
//!
//! The library does the work; `main.rs` only calls [`cli::main`]. Modules
//! follow the domain: `config` (YAML → validated model), `lineage` (graph and
//! rollout waves), `registry` (image references), `store` (durable state and
//! the job queue).

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deploy;
pub mod discover;
pub mod dispatch;
pub mod lineage;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod policy;
pub mod registry;
pub mod rollout;
pub mod store;
pub mod watch;

/// Installs the TLS crypto provider (ring) for every HTTPS client in the
/// process. reqwest is built without a bundled provider; call this before
/// building a client. Idempotent.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An error with its sources on one line (`error sending request: dns
/// error: failed to lookup address …`): the cause underneath is usually the
/// useful part. A source whose text is already in the line is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let msg = src.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = src.source();
    }
    s
}
