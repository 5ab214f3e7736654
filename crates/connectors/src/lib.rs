//! Gear connectors, one module per gear, each behind a Cargo feature. They implement the
//! runtime's [`gearbox_connect::source::Source`] and [`gearbox_connect::sink::Sink`] traits and
//! nothing else: retries, dead-lettering, cursors, metrics and health come from the runtime.

#[cfg(any(feature = "files", feature = "sql"))]
pub mod batch;
#[cfg(feature = "http")]
pub mod http_delivery;
#[cfg(feature = "http")]
pub mod http_poll;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod registry;
#[cfg(feature = "webhook")]
pub mod webhook;

/// Installs rustls's ring crypto provider for the process, once; HTTP connectors call it before
/// building a client (reqwest is built without a default provider, see Cargo.toml).
#[cfg(feature = "http")]
pub fn install_tls_provider() {
    // An error means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
