//! What both HTTP services share: the one error type that renders every failure as the
//! contract's JSON body, JSON body reading with the contract's limits and codes, bearer
//! authentication, the operations routes and the app's shape around them, the metrics
//! registry, logging set-up, the configuration flags both take, and serving with
//! graceful shutdown.

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod serve;
pub mod telemetry;

pub use error::ApiError;
