//! A position in the log, and the consistency token that names it.
//!
//! The ingest hands a token to the client with every accepted command; the projector
//! answers a query `?after=TOKEN` only once it has applied everything up to that
//! position. Clients treat the token as opaque, so its format may change with a new
//! version prefix.

use std::fmt;
use std::str::FromStr;

/// One event's place in the topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The partition.
    pub partition: i32,
    /// The event's offset within the partition.
    pub offset: i64,
}

/// A token that is not one this service issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed consistency token {0:?}: use a token returned by POST /v1/commands")]
pub struct TokenError(pub String);

const PREFIX: &str = "v1.";

impl Position {
    /// The token that names this position.
    pub fn token(&self) -> String {
        format!("{PREFIX}{}.{}", self.partition, self.offset)
    }

    /// Parses a token.
    pub fn from_token(token: &str) -> Result<Self, TokenError> {
        let bad = || TokenError(token.chars().take(100).collect());
        let rest = token.strip_prefix(PREFIX).ok_or_else(bad)?;
        let (p, o) = rest.split_once('.').ok_or_else(bad)?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(p) || !digits(o) {
            return Err(bad());
        }
        Ok(Position {
            partition: p.parse().map_err(|_| bad())?,
            offset: o.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.token())
    }
}

impl FromStr for Position {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_token(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = Position {
            partition: 2,
            offset: 41,
        };
        assert_eq!(Position::from_token(&p.token()).unwrap(), p);
        let big = Position {
            partition: i32::MAX,
            offset: i64::MAX,
        };
        assert_eq!(Position::from_token(&big.token()).unwrap(), big);
    }

    #[test]
    fn malformed() {
        for t in [
            "",
            "v1.",
            "v1.2",
            "v1.2.",
            "v1.-1.3",
            "v1.2.-3",
            "v2.1.1",
            "v1.1.1.1",
            "v1.a.1",
            "v1.99999999999.1",
            "v1.1.99999999999999999999",
            "v1. 1.1",
        ] {
            assert!(Position::from_token(t).is_err(), "{t:?}");
        }
    }
}
