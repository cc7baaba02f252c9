//! `ledger tail`: the topic's events as JSON lines on stdout, one per event, the way
//! `kcat` prints a topic; a message that is not an event prints as its error.

use std::io::Write;

use ledger_domain::EventBody;
use ledger_eventlog::cloudevents;
use ledger_eventlog::config::KafkaArgs;
use ledger_eventlog::tail::{tail, TailError, TailOptions, Tailed};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// One printed line.
#[derive(Debug, Serialize)]
struct Line {
    partition: i32,
    offset: i64,
    #[serde(flatten)]
    content: Content,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Content {
    Event {
        /// `ce_type`, from the decoded body.
        #[serde(rename = "type")]
        event_type: &'static str,
        event_id: uuid::Uuid,
        command_id: String,
        account_id: String,
        /// `ce_time`.
        time: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        amount: Option<u64>,
        /// A transfer's destination (on the transfer, its completion and its refund).
        #[serde(skip_serializing_if = "Option::is_none")]
        to_account: Option<String>,
        /// A credit's source.
        #[serde(skip_serializing_if = "Option::is_none")]
        from_account: Option<String>,
        /// Why a refund's destination refused the credit.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    Undecodable {
        key: Option<String>,
        /// The `ce_type` header, if the writer set one.
        #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
        event_type: Option<String>,
        error: LineError,
    },
}

#[derive(Debug, Serialize)]
struct LineError {
    kind: &'static str,
    message: String,
}

fn line(t: Tailed) -> Line {
    let content = match t.event {
        Ok(e) => {
            let (amount, to_account, from_account, reason) = match &e.body {
                EventBody::OpenAccount => (None, None, None, None),
                EventBody::Deposit { amount } | EventBody::Withdraw { amount } => {
                    (Some(amount), None, None, None)
                }
                EventBody::Transfer { to, amount }
                | EventBody::TransferCompleted { to, amount } => {
                    (Some(amount), Some(to), None, None)
                }
                EventBody::TransferCredit { from, amount } => {
                    (Some(amount), None, Some(from), None)
                }
                EventBody::TransferRefund { to, amount, reason } => {
                    (Some(amount), Some(to), None, Some(reason.code()))
                }
                // An operator's decision for a parked account: `reason` names it.
                EventBody::Unpark { action, .. } => (None, None, None, Some(action.as_str())),
            };
            Content::Event {
                event_type: cloudevents::event_type(&e.body),
                event_id: uuid::Uuid::from_u128(e.event_id),
                command_id: e.command_id.to_string(),
                account_id: e.account_id.to_string(),
                time: cloudevents::time(e.time_ms),
                amount: amount.map(|a| a.minor_units()),
                to_account: to_account.map(ToString::to_string),
                from_account: from_account.map(ToString::to_string),
                reason,
            }
        }
        Err(e) => Content::Undecodable {
            key: t.key,
            event_type: t.ce_type,
            error: LineError {
                kind: e.kind(),
                message: e.to_string(),
            },
        },
    };
    Line {
        partition: t.partition,
        offset: t.offset,
        content,
    }
}

/// Prints the topic as `options` say until its end, Ctrl-C, or a closed stdout. Returns
/// how many lines it printed.
pub async fn run(kafka: KafkaArgs, options: TailOptions) -> Result<u64, TailError> {
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    let signal = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let printed = tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let result = tail(&kafka.client(), &kafka.topic, options, &stop, |t| {
            let ok = serde_json::to_writer(&mut out, &line(t)).is_ok() && writeln!(out).is_ok();
            // Flush per line when following, so a pipe sees each event as it comes.
            ok && (!options.follow || out.flush().is_ok())
        });
        let _ = out.flush();
        result
    })
    .await
    .expect("the tail thread does not panic");
    signal.abort();
    printed
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_eventlog::codec::{decode, test_vector_event, DecodeError};

    #[test]
    fn an_event_prints_as_one_json_object() {
        let t = Tailed {
            partition: 2,
            offset: 41,
            key: Some("acc-1".into()),
            ce_type: Some("ledger.withdrawn.v1".into()),
            event: Ok(test_vector_event()),
        };
        assert_eq!(
            serde_json::to_string(&line(t)).unwrap(),
            r#"{"partition":2,"offset":41,"type":"ledger.withdrawn.v1","event_id":"01923456-789a-7bcd-8ef0-123456789abc","command_id":"c-42","account_id":"acc-1","time":"2026-01-01T00:00:00.000Z","amount":300}"#
        );
    }

    #[test]
    fn transfer_events_carry_their_other_account_and_a_refund_its_reason() {
        use ledger_domain::{AccountId, Amount, Rejection};
        let base = test_vector_event();
        let amount = Amount::new(500).unwrap();
        let acc = |s: &str| AccountId::parse(s).unwrap();
        let print = |body: EventBody| {
            let t = Tailed {
                partition: 2,
                offset: 41,
                key: None,
                ce_type: None,
                event: Ok(ledger_domain::Event {
                    body,
                    ..base.clone()
                }),
            };
            serde_json::to_value(line(t)).unwrap()
        };
        let v = print(EventBody::Transfer {
            to: acc("acc-2"),
            amount,
        });
        assert_eq!(v["to_account"], "acc-2");
        assert_eq!(v["amount"], 500);
        assert_eq!(v["account_id"], "acc-1");
        assert!(v.get("from_account").is_none() && v.get("reason").is_none());
        let v = print(EventBody::TransferCredit {
            from: acc("acc-1"),
            amount,
        });
        assert_eq!(v["from_account"], "acc-1");
        assert!(v.get("to_account").is_none());
        let v = print(EventBody::TransferRefund {
            to: acc("acc-x"),
            amount,
            reason: Rejection::DestinationNotOpen,
        });
        assert_eq!(v["to_account"], "acc-x");
        assert_eq!(v["reason"], "destination_not_open");
        let v = print(EventBody::TransferCompleted {
            to: acc("acc-2"),
            amount,
        });
        assert_eq!(v["to_account"], "acc-2");
        // The fields every event has are still there.
        for key in [
            "partition",
            "offset",
            "type",
            "event_id",
            "command_id",
            "time",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn a_message_that_is_not_an_event_prints_its_error() {
        let t = Tailed {
            partition: 0,
            offset: 7,
            key: Some("q".into()),
            ce_type: None,
            event: decode(b"{}"),
        };
        assert!(matches!(t.event, Err(DecodeError::BadMagic(_))));
        let v: serde_json::Value = serde_json::to_value(line(t)).unwrap();
        assert_eq!(v["error"]["kind"], "bad_magic");
        assert_eq!(v["key"], "q");
        assert_eq!(v["offset"], 7);
    }
}
