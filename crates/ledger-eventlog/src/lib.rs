//! The event log: everything the services need to write to and read from Kafka.
//!
//! - [`codec`]: the versioned binary envelope, the one place that knows the wire format;
//! - [`cloudevents`]: the CloudEvents headers that say what each event is, for any
//!   consumer;
//! - [`config`]: broker address and pass-through librdkafka properties;
//! - [`producer`]: the acks=all, idempotent producer that writes events, and the
//!   supervisor that replaces it when it stops delivering;
//! - [`probe`]: whether the topic is reachable, from a metadata client that rebuilds
//!   itself;
//! - [`admin`]: topic creation with the contract's settings;
//! - [`position`]: a place in the log, and the consistency token that names it;
//! - [`consume`]: the commit-after-apply consumer loop, with its dead-letter path;
//! - [`follow`]: tailing partitions read-only into a store, outside the group, while
//!   they are handed over;
//! - [`fresh`]: the ids and time a service gives an event it writes;
//! - [`tail`]: reading the topic as an outsider, for `ledger tail`.

pub mod admin;
pub mod cloudevents;
pub mod codec;
pub mod config;
pub mod consume;
pub mod follow;
pub mod fresh;
pub mod position;
pub mod probe;
pub mod producer;
mod stats;
pub mod tail;

pub use codec::{decode, encode, DecodeError};
pub use config::KafkaConfig;
pub use position::{Position, TokenError};
