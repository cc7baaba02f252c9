//! Commands as clients send them (JSON), and their validation.
//!
//! Validation walks a parsed `serde_json::Value` by hand instead of deriving
//! `Deserialize`: each failure has to map to exactly one of the contract's error codes
//! with a message that tells the caller what to fix, which serde's errors cannot do.

use serde_json::{Map, Value};

pub use crate::ids::ValidationError;
use crate::ids::{shorten, AccountId, Amount, CommandId};

/// A validated command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The account the command acts on; also the message key.
    pub account_id: AccountId,
    /// The client's idempotency key, when it gave one; the ingest generates one otherwise.
    pub command_id: Option<CommandId>,
    /// What to do.
    pub kind: CommandKind,
}

/// What a command asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// Open the account with a balance of 0.
    OpenAccount,
    /// Add money.
    Deposit(Amount),
    /// Take money out; never below 0.
    Withdraw(Amount),
    /// Move money from the command's account (`from_account` in JSON) to `to`.
    Transfer {
        /// The destination account; never the source.
        to: AccountId,
        /// Minor units.
        amount: Amount,
    },
}

impl CommandKind {
    /// The `type` as it is spelled in JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            CommandKind::OpenAccount => "open_account",
            CommandKind::Deposit(_) => "deposit",
            CommandKind::Withdraw(_) => "withdraw",
            CommandKind::Transfer { .. } => "transfer",
        }
    }
}

const KNOWN_TYPES: &str = "open_account, deposit, withdraw, transfer";

impl Command {
    /// Parses and validates one command from a JSON body.
    ///
    /// Well-formed commands take a typed fast path; anything it does not accept goes
    /// through [`Command::from_json`], which finds the precise error. Both accept exactly
    /// the same commands.
    pub fn from_json_slice(body: &[u8]) -> Result<Self, ValidationError> {
        if let Some(c) = Self::fast_path(body) {
            return Ok(c);
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ValidationError::InvalidJson(format!("the body is not valid JSON: {e}"))
        })?;
        Self::from_json(&value)
    }

    fn fast_path(body: &[u8]) -> Option<Self> {
        // serde reads `null` as an absent optional field, but a field the command does
        // not take is refused even when null: such a body takes the precise path.
        if body.windows(4).any(|w| w == b"null") {
            return None;
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire<'a> {
            #[serde(rename = "type", borrow)]
            kind: &'a str,
            #[serde(borrow)]
            account_id: Option<&'a str>,
            #[serde(borrow)]
            from_account: Option<&'a str>,
            #[serde(borrow)]
            to_account: Option<&'a str>,
            amount: Option<u64>,
            #[serde(borrow)]
            command_id: Option<&'a str>,
        }
        let w: Wire<'_> = serde_json::from_slice(body).ok()?;
        let (account, kind) = match (w.kind, w.account_id, w.from_account, w.to_account, w.amount) {
            ("open_account", Some(acc), None, None, None) => (acc, CommandKind::OpenAccount),
            ("deposit", Some(acc), None, None, Some(a)) => {
                (acc, CommandKind::Deposit(Amount::new(a).ok()?))
            }
            ("withdraw", Some(acc), None, None, Some(a)) => {
                (acc, CommandKind::Withdraw(Amount::new(a).ok()?))
            }
            ("transfer", None, Some(from), Some(to), Some(a)) if from != to => (
                from,
                CommandKind::Transfer {
                    to: AccountId::parse(to).ok()?,
                    amount: Amount::new(a).ok()?,
                },
            ),
            _ => return None,
        };
        Some(Command {
            account_id: AccountId::parse(account).ok()?,
            command_id: match w.command_id {
                Some(c) => Some(CommandId::parse(c).ok()?),
                None => None,
            },
            kind,
        })
    }

    /// Validates one command from a parsed JSON value.
    pub fn from_json(value: &Value) -> Result<Self, ValidationError> {
        let obj = value.as_object().ok_or_else(|| {
            ValidationError::InvalidJson(format!(
                "a command is a JSON object, got {}",
                json_kind(value)
            ))
        })?;
        let type_name = match obj.get("type") {
            None => {
                return Err(ValidationError::MissingField(format!(
                    "field `type` is required: one of {KNOWN_TYPES}"
                )))
            }
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(ValidationError::UnknownCommand(format!(
                    "`type` must be a string, one of {KNOWN_TYPES}; got {}",
                    json_kind(other)
                )))
            }
        };
        let (takes_amount, transfer) = match type_name {
            "open_account" => (false, false),
            "deposit" | "withdraw" => (true, false),
            "transfer" => (true, true),
            other => {
                return Err(ValidationError::UnknownCommand(format!(
                    "unknown command type {}: expected one of {KNOWN_TYPES}",
                    shorten(other)
                )))
            }
        };
        let allowed = |k: &str| match k {
            "type" | "command_id" => true,
            "account_id" => !transfer,
            "from_account" | "to_account" => transfer,
            "amount" => takes_amount,
            _ => false,
        };
        if let Some(field) = obj.keys().find(|k| !allowed(k)) {
            return Err(ValidationError::UnknownField(format!(
                "field {} is not part of a `{type_name}` command",
                shorten(field)
            )));
        }

        let account_field = |field: &str| match required(obj, field, type_name)? {
            Value::String(s) => AccountId::parse(s).map_err(|e| match e {
                ValidationError::InvalidAccountId(m) => {
                    ValidationError::InvalidAccountId(m.replacen("account_id", field, 1))
                }
                other => other,
            }),
            other => Err(ValidationError::InvalidAccountId(format!(
                "{field} must be a string, got {}",
                json_kind(other)
            ))),
        };
        let account_id = account_field(if transfer {
            "from_account"
        } else {
            "account_id"
        })?;
        let to_account = if transfer {
            Some(account_field("to_account")?)
        } else {
            None
        };
        let command_id = match obj.get("command_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(CommandId::parse(s)?),
            Some(other) => {
                return Err(ValidationError::InvalidCommandId(format!(
                    "command_id must be a string, got {}",
                    json_kind(other)
                )))
            }
        };
        let kind = if takes_amount {
            let amount = parse_amount(required(obj, "amount", type_name)?)?;
            match (type_name, to_account) {
                ("deposit", _) => CommandKind::Deposit(amount),
                (_, Some(to)) if to == account_id => {
                    return Err(ValidationError::InvalidTransfer(format!(
                        "from_account and to_account are both {}: a transfer moves money between two accounts",
                        shorten(to.as_str())
                    )))
                }
                (_, Some(to)) => CommandKind::Transfer { to, amount },
                _ => CommandKind::Withdraw(amount),
            }
        } else {
            CommandKind::OpenAccount
        };
        Ok(Command {
            account_id,
            command_id,
            kind,
        })
    }
}

fn required<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
    type_name: &str,
) -> Result<&'a Value, ValidationError> {
    obj.get(field).ok_or_else(|| {
        ValidationError::MissingField(format!(
            "field `{field}` is required for a `{type_name}` command"
        ))
    })
}

fn parse_amount(v: &Value) -> Result<Amount, ValidationError> {
    let n = match v {
        Value::Number(n) => n,
        other => {
            return Err(ValidationError::InvalidAmount(format!(
                "amount must be a JSON integer of minor units, got {}",
                json_kind(other)
            )))
        }
    };
    if let Some(u) = n.as_u64() {
        return Amount::new(u);
    }
    if n.as_i64().is_some() {
        return Err(ValidationError::InvalidAmount(format!(
            "amount must be positive, got {n}"
        )));
    }
    Err(ValidationError::InvalidAmount(format!(
        "amount must be an integer number of minor units, never a fraction or an exponent, got {n}"
    )))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_the_command_does_not_take_is_refused_even_when_null() {
        let e = Command::from_json_slice(
            br#"{"type":"open_account","account_id":"acc-1","from_account":null}"#,
        )
        .unwrap_err();
        assert!(matches!(e, ValidationError::UnknownField(_)), "{e:?}");
        // A null optional field the command does take is as if absent.
        let c = Command::from_json_slice(
            br#"{"type":"open_account","account_id":"acc-1","command_id":null}"#,
        );
        assert_eq!(
            c,
            Command::from_json(
                &serde_json::json!({"type":"open_account","account_id":"acc-1","command_id":null})
            )
        );
    }

    #[test]
    fn accepts_the_contract_examples() {
        let c =
            Command::from_json_slice(br#"{"type":"open_account","account_id":"acc-1"}"#).unwrap();
        assert_eq!(c.kind, CommandKind::OpenAccount);
        assert_eq!(c.account_id.as_str(), "acc-1");
        assert_eq!(c.command_id, None);
        let c =
            Command::from_json_slice(br#"{"type":"deposit","account_id":"acc-1","amount":1250}"#)
                .unwrap();
        assert_eq!(c.kind, CommandKind::Deposit(Amount::new(1250).unwrap()));
        let c = Command::from_json_slice(
            br#"{"type":"withdraw","account_id":"acc-1","amount":300,"command_id":"c-42"}"#,
        )
        .unwrap();
        assert_eq!(c.kind, CommandKind::Withdraw(Amount::new(300).unwrap()));
        assert_eq!(c.command_id.unwrap().as_str(), "c-42");
    }

    #[test]
    fn a_transfer_names_two_different_accounts() {
        let c = Command::from_json_slice(
            br#"{"type":"transfer","from_account":"acc-1","to_account":"acc-2","amount":500,"command_id":"t-1"}"#,
        )
        .unwrap();
        assert_eq!(c.account_id.as_str(), "acc-1");
        assert_eq!(
            c.kind,
            CommandKind::Transfer {
                to: AccountId::parse("acc-2").unwrap(),
                amount: Amount::new(500).unwrap()
            }
        );
        let same = Command::from_json_slice(
            br#"{"type":"transfer","from_account":"a","to_account":"a","amount":5}"#,
        );
        assert!(matches!(same, Err(ValidationError::InvalidTransfer(_))));
        let account_id = Command::from_json_slice(
            br#"{"type":"transfer","account_id":"a","to_account":"b","amount":5}"#,
        );
        assert!(matches!(account_id, Err(ValidationError::UnknownField(_))));
        let no_to =
            Command::from_json_slice(br#"{"type":"transfer","from_account":"a","amount":5}"#);
        assert!(matches!(no_to, Err(ValidationError::MissingField(_))));
        let bad_to = Command::from_json_slice(
            br#"{"type":"transfer","from_account":"a","to_account":"b c","amount":5}"#,
        );
        assert!(
            matches!(&bad_to, Err(ValidationError::InvalidAccountId(m)) if m.starts_with("to_account")),
            "{bad_to:?}"
        );
    }

    #[test]
    fn null_command_id_means_absent() {
        let c = Command::from_json_slice(
            br#"{"type":"open_account","account_id":"a","command_id":null}"#,
        )
        .unwrap();
        assert_eq!(c.command_id, None);
    }

    #[test]
    fn fast_and_slow_paths_agree() {
        for body in [
            r#"{"type":"open_account","account_id":"acc-1"}"#,
            r#"{"type":"deposit","account_id":"acc-1","amount":5,"command_id":null}"#,
            r#"{"type":"withdraw","account_id":"a","amount":300,"command_id":"c-42"}"#,
            r#"{"type":"open_account","account_id":"a","amount":5}"#,
            r#"{"type":"deposit","account_id":"a"}"#,
            r#"{"type":"deposit","account_id":"a","amount":0}"#,
            r#"{"type":"deposit","account_id":"a\u0041","amount":1}"#,
            r#"{"type":"deposit","account_id":"a","amount":1,"amount":2}"#,
            r#"{"type":"transfer","from_account":"a","to_account":"b","amount":5}"#,
            r#"{"type":"transfer","from_account":"a","to_account":"a","amount":5}"#,
            r#"{"type":"transfer","account_id":"a","to_account":"b","amount":5}"#,
            r#"{"type":"transfer","from_account":"a","amount":5}"#,
            r#"{"type":"deposit","from_account":"a","amount":5}"#,
        ] {
            let slow = serde_json::from_str::<Value>(body)
                .map_err(|e| ValidationError::InvalidJson(e.to_string()))
                .and_then(|v| Command::from_json(&v));
            let both = Command::from_json_slice(body.as_bytes());
            assert_eq!(both.as_ref().ok(), slow.as_ref().ok(), "{body}");
            assert_eq!(
                both.map_err(|e| std::mem::discriminant(&e)).err(),
                slow.map_err(|e| std::mem::discriminant(&e)).err(),
                "{body}"
            );
            if let Some(fast) = Command::fast_path(body.as_bytes()) {
                assert_eq!(
                    Some(fast),
                    Command::from_json_slice(body.as_bytes()).ok(),
                    "{body}"
                );
            }
        }
    }

    fn arb_leaf() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (0u64..2_000_000_000_000).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[A-Za-z0-9._:\\- ]{0,10}".prop_map(Value::from),
            prop_oneof![
                Just("open_account"),
                Just("deposit"),
                Just("withdraw"),
                Just("transfer")
            ]
            .prop_map(Value::from),
            prop_oneof![Just("a"), Just("b")].prop_map(Value::from),
        ]
    }

    proptest::proptest! {
        #[test]
        fn fast_path_never_disagrees(
            kv in proptest::collection::vec(
                (proptest::prop_oneof![
                    proptest::strategy::Just("type"), proptest::strategy::Just("account_id"),
                    proptest::strategy::Just("amount"), proptest::strategy::Just("command_id"),
                    proptest::strategy::Just("from_account"), proptest::strategy::Just("to_account"),
                    proptest::strategy::Just("x")
                ], arb_leaf()),
                0..6,
            )
        ) {
            let body = serde_json::to_vec(&Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())).unwrap();
            let slow = Command::from_json(&serde_json::from_slice(&body).unwrap());
            if let Some(fast) = Command::fast_path(&body) {
                proptest::prop_assert_eq!(Ok(fast), slow);
            }
        }
    }
}
