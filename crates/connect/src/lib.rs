//! The connector runtime. Every integration is a pipeline: a [`source::Source`] feeding a topic
//! through transforms, or a topic feeding a [`sink::Sink`]. The runtime around them gives each
//! connector the same idempotency, retries, circuit breaking, rate limiting, dead-lettering,
//! cursor safety, metrics and health, so a connector implements only its gear's protocol.
//!
//! Architecture Invariant: the runtime reaches the log only through [`backbone::Backbone`];
//! nothing here knows about segment files, and nothing here knows HTTP routing or DTOs.
//!
//! Architecture Invariant: a source's cursor is committed only after every event of the batch it
//! covers has been appended and acknowledged (or dead-lettered); a sink's event is acked only
//! after the sink reported its write durable.

pub mod backbone;
pub mod batch;
pub mod breaker;
pub mod metrics;
pub mod ratelimit;
pub mod retry;
pub mod runtime;
pub mod schedule;
pub mod secret;
pub mod sink;
pub mod source;
pub mod testkit;
pub mod topic;
pub mod transform;
