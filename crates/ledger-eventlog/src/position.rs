//! A position in the log and its consistency token. They are defined in the domain,
//! which follow-up events derive their ids from; re-exported here, where the services
//! find them beside the log they name.

pub use ledger_domain::position::{Position, TokenError};
