//! What the benchmark sends: commands as clients write them, and events as the ingest
//! would have written them, over a fixed set of accounts.
//!
//! Ids look like the real ones (a UUID v7 command id, as the ingest generates when the
//! client gives none; a UUID v7 event id), so that record sizes, and everything that
//! scales with them, match production rather than a toy.

use bytes::Bytes;
use ledger_domain::{AccountId, Amount, CommandId, Event, EventBody};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// The id of account number `k`.
pub fn account_id(k: u64) -> String {
    format!("acc-{k}")
}

pub use ledger_eventlog::fresh::now_ms;

/// A random deposit (60 %) or withdrawal (40 %) of 1 to 10 000 minor units.
fn money_body(rng: &mut StdRng) -> EventBody {
    let amount = Amount::new(rng.random_range(1..=10_000)).expect("1..=10 000 is a valid amount");
    if rng.random_bool(0.6) {
        EventBody::Deposit { amount }
    } else {
        EventBody::Withdraw { amount }
    }
}

/// The event the ingest writes for a typical command: a deposit into `acc-1234` whose
/// command id the ingest generated.
pub fn typical_event() -> Event {
    Event {
        event_id: Uuid::now_v7().as_u128(),
        command_id: CommandId::parse(&Uuid::now_v7().to_string())
            .expect("a hyphenated UUID is a valid command id"),
        account_id: AccountId::parse(&account_id(1234)).expect("a valid account id"),
        time_ms: now_ms(),
        body: EventBody::Deposit {
            amount: Amount::new(1250).expect("a valid amount"),
        },
    }
}

/// The JSON of one command, without a command id (the ingest generates one).
fn command_json(account: &str, body: EventBody) -> String {
    match body {
        EventBody::OpenAccount => {
            format!(r#"{{"type":"open_account","account_id":"{account}"}}"#)
        }
        EventBody::Deposit { amount } => {
            format!(r#"{{"type":"deposit","account_id":"{account}","amount":{amount}}}"#)
        }
        EventBody::Withdraw { amount } => {
            format!(r#"{{"type":"withdraw","account_id":"{account}","amount":{amount}}}"#)
        }
        EventBody::Transfer { to, amount } => format!(
            r#"{{"type":"transfer","from_account":"{account}","to_account":"{to}","amount":{amount}}}"#,
            to = to.as_str()
        ),
        // Follow-ups and control events are the projector's to write, never a client's:
        // the ingest refuses this as an unknown command.
        EventBody::TransferCredit { .. }
        | EventBody::TransferRefund { .. }
        | EventBody::TransferCompleted { .. }
        | EventBody::Unpark { .. } => r#"{"type":"follow_up"}"#.to_string(),
    }
}

/// `n` single-command bodies: deposits and withdrawals on random accounts out of
/// `accounts`. Built up front so the load generator spends no CPU on them while
/// measuring.
pub fn single_bodies(n: usize, accounts: u64, seed: u64) -> Vec<Bytes> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let acc = account_id(rng.random_range(0..accounts));
            let body = money_body(&mut rng);
            Bytes::from(command_json(&acc, body))
        })
        .collect()
}

/// `n` batch bodies of `items` deposits and withdrawals each.
pub fn batch_bodies(n: usize, items: usize, accounts: u64, seed: u64) -> Vec<Bytes> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut s = String::with_capacity(items * 72 + 2);
            s.push('[');
            for i in 0..items {
                if i > 0 {
                    s.push(',');
                }
                let acc = account_id(rng.random_range(0..accounts));
                let body = money_body(&mut rng);
                s.push_str(&command_json(&acc, body));
            }
            s.push(']');
            Bytes::from(s)
        })
        .collect()
}

/// One command with its own id, for runs that follow each command to the projector.
pub fn command_with_id(account: &str, body: EventBody, command_id: &str) -> Bytes {
    let mut s = command_json(account, body);
    s.pop();
    s.push_str(&format!(r#","command_id":"{command_id}"}}"#));
    Bytes::from(s)
}

/// A random deposit or withdrawal body, for [`command_with_id`].
pub fn random_money(rng: &mut StdRng) -> EventBody {
    money_body(rng)
}

/// The events of a replay: one `open_account` per account first, then deposits and
/// withdrawals on random accounts (some withdrawals are rejected for insufficient
/// funds, as in real traffic).
pub struct ReplayEvents {
    rng: StdRng,
    /// Random (v4) command ids, as clients that bring their own may send, instead of
    /// the ingest's time-ordered v7.
    random_ids: bool,
    accounts: u64,
    total: u64,
    next: u64,
    time_ms: i64,
    /// Event time added after each event.
    spacing_ms: i64,
}

impl ReplayEvents {
    /// `total` events over `accounts` accounts.
    pub fn new(total: u64, accounts: u64, seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            random_ids: false,
            accounts,
            total,
            next: 0,
            time_ms: now_ms(),
            spacing_ms: 0,
        }
    }

    /// Events `ms` apart in event time, the first `total * ms` before now, so that they
    /// span history as a log of that length does.
    pub fn with_spacing(mut self, ms: i64) -> Self {
        self.spacing_ms = ms;
        self.time_ms = now_ms() - ms.saturating_mul(self.total as i64);
        self
    }

    /// Random (v4) command ids instead of time-ordered v7 ones.
    pub fn with_random_ids(mut self) -> Self {
        self.random_ids = true;
        self
    }
}

impl Iterator for ReplayEvents {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.next >= self.total {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let (account, body) = if i < self.accounts {
            (i, EventBody::OpenAccount)
        } else {
            (
                self.rng.random_range(0..self.accounts),
                money_body(&mut self.rng),
            )
        };
        let time_ms = self.time_ms;
        self.time_ms += self.spacing_ms;
        Some(Event {
            event_id: Uuid::now_v7().as_u128(),
            // Time-ordered v7, as the ingest generates them when a client sends none;
            // random v4 for clients that bring their own.
            command_id: CommandId::parse(
                &if self.random_ids {
                    Uuid::new_v4()
                } else {
                    Uuid::now_v7()
                }
                .to_string(),
            )
            .expect("a hyphenated UUID is a valid command id"),
            account_id: AccountId::parse(&account_id(account)).expect("a valid account id"),
            time_ms,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_commands() {
        for b in single_bodies(50, 100, 1) {
            ledger_domain::Command::from_json_slice(&b).unwrap();
        }
        let batch = &batch_bodies(1, 20, 100, 2)[0];
        let v: serde_json::Value = serde_json::from_slice(batch).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 20);
        for item in v.as_array().unwrap() {
            ledger_domain::Command::from_json(item).unwrap();
        }
        let mut rng = StdRng::seed_from_u64(3);
        let c = command_with_id("acc-1", random_money(&mut rng), "e2e-1-2");
        let cmd = ledger_domain::Command::from_json_slice(&c).unwrap();
        assert_eq!(cmd.command_id.unwrap().as_str(), "e2e-1-2");
    }

    #[test]
    fn replay_opens_first() {
        let ev: Vec<Event> = ReplayEvents::new(30, 10, 1).collect();
        assert_eq!(ev.len(), 30);
        assert!(ev[..10].iter().all(|e| e.body == EventBody::OpenAccount));
        assert!(ev[10..].iter().all(|e| e.body != EventBody::OpenAccount));
    }
}
