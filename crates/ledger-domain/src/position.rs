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

/// [`Position::from_token`] as a regular expression, for the OpenAPI documents: clients
/// still treat the token as opaque, and the pattern lets a malformed one be refused
/// before it is sent. Numbers are written without leading zeros, as [`Position::token`]
/// writes them; nine digits cover every partition count Kafka allows and 18 any offset
/// a log reaches (a million events a second for 30 000 years). With the topic's
/// `partitions` known (the projector's served document), the partition is one of them.
pub fn token_pattern(partitions: Option<i32>) -> String {
    let partition = match partitions {
        Some(n) => {
            let each: Vec<String> = (0..n.max(1)).map(|p| p.to_string()).collect();
            format!("({})", each.join("|"))
        }
        None => "(0|[1-9][0-9]{0,8})".to_string(),
    };
    format!(r"^v1\.{partition}\.(0|[1-9][0-9]{{0,17}})$")
}

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
        let digits = |s: &str, most: usize| {
            (s == "0" || !s.starts_with('0'))
                && !s.is_empty()
                && s.len() <= most
                && s.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(p, 9) || !digits(o, 18) {
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
            partition: 999_999_999,
            offset: 999_999_999_999_999_999,
        };
        assert_eq!(Position::from_token(&big.token()).unwrap(), big);
    }

    proptest::proptest! {
        /// The pattern in the OpenAPI documents and the parser accept the same tokens.
        #[test]
        fn the_pattern_is_the_parser(
            t in proptest::prop_oneof![
                proptest::string::string_regex(r"v1\.[0-9]{0,11}\.[0-9]{0,20}").unwrap(),
                proptest::string::string_regex(r"[v1.0-9 -]{0,12}").unwrap(),
                proptest::prelude::any::<String>(),
            ]
        ) {
            let pattern = regex::Regex::new(&token_pattern(None)).unwrap();
            proptest::prop_assert_eq!(Position::from_token(&t).is_ok(), pattern.is_match(&t), "{:?}", t);
            let six = regex::Regex::new(&token_pattern(Some(6))).unwrap();
            let of_six = Position::from_token(&t).is_ok_and(|p| p.partition < 6);
            proptest::prop_assert_eq!(of_six, six.is_match(&t), "{:?}", t);
        }
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
            "v1.1000000000.1",
            "v1.1.99999999999999999999",
            "v1.1.1000000000000000000",
            "v1.02.1",
            "v1.2.01",
            "v1.00.0",
            "v1. 1.1",
        ] {
            assert!(Position::from_token(t).is_err(), "{t:?}");
        }
    }
}
