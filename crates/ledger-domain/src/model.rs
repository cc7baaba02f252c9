//! Idempotent application of events, over any state that can look up accounts and
//! command ids, and [`Model`], its in-memory implementation.
//!
//! The projector's sled store implements [`LedgerState`] over a transaction; tests and
//! `ledger load --verify` use [`Model`] as the oracle. Both run the same
//! [`apply_event`], so the oracle cannot drift from the product.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::ids::{AccountId, CommandId};
use crate::rules::{decide, AccountState, Rejection};

/// The outcome recorded under a command id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandStatus {
    /// The event took effect.
    Applied,
    /// The event changed nothing, for this reason.
    Rejected(Rejection),
}

impl CommandStatus {
    /// The rejection reason code, if any.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            CommandStatus::Applied => None,
            CommandStatus::Rejected(r) => Some(r.code()),
        }
    }
}

/// What applying one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyResult {
    /// It took effect.
    Applied,
    /// It was refused; the outcome is recorded under its command id.
    Rejected(Rejection),
    /// Its command id was seen before: nothing changed, and the first outcome stands.
    Duplicate,
}

/// A command's recorded outcome with the account it concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    /// The outcome.
    pub status: CommandStatus,
    /// The account of the command.
    pub account_id: AccountId,
}

/// State that [`apply_event`] can read and write.
pub trait LedgerState {
    /// Error of the underlying storage.
    type Error;
    /// The account's current state.
    fn account(&mut self, id: &AccountId) -> Result<Option<AccountState>, Self::Error>;
    /// Stores the account's new state.
    fn put_account(&mut self, id: &AccountId, state: AccountState) -> Result<(), Self::Error>;
    /// Whether an outcome is already recorded under this command id for this account:
    /// a command id is an idempotency key per account (a retry always names its
    /// account), so the same id on another account is another command.
    fn command_seen(&mut self, account: &AccountId, id: &CommandId) -> Result<bool, Self::Error>;
    /// Records the first outcome of a command id, for the event that carried it.
    fn record_command(&mut self, event: &Event, status: CommandStatus) -> Result<(), Self::Error>;
}

/// Applies one event idempotently: a command id seen before changes nothing.
pub fn apply_event<S: LedgerState>(state: &mut S, event: &Event) -> Result<ApplyResult, S::Error> {
    if state.command_seen(&event.account_id, &event.command_id)? {
        return Ok(ApplyResult::Duplicate);
    }
    let current = state.account(&event.account_id)?;
    let status = match decide(current.as_ref(), &event.body) {
        Ok(next) => {
            state.put_account(&event.account_id, next)?;
            CommandStatus::Applied
        }
        Err(rejection) => CommandStatus::Rejected(rejection),
    };
    state.record_command(event, status)?;
    Ok(match status {
        CommandStatus::Applied => ApplyResult::Applied,
        CommandStatus::Rejected(r) => ApplyResult::Rejected(r),
    })
}

/// The ledger in memory: the oracle that results are checked against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// Every account that exists, by id.
    pub accounts: BTreeMap<AccountId, AccountState>,
    /// Every command's first outcome, by account and command id.
    pub commands: HashMap<(AccountId, CommandId), CommandRecord>,
}

impl Model {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event idempotently.
    pub fn apply(&mut self, event: &Event) -> ApplyResult {
        match apply_event(self, event) {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

impl LedgerState for Model {
    type Error = std::convert::Infallible;

    fn account(&mut self, id: &AccountId) -> Result<Option<AccountState>, Self::Error> {
        Ok(self.accounts.get(id).copied())
    }

    fn put_account(&mut self, id: &AccountId, state: AccountState) -> Result<(), Self::Error> {
        self.accounts.insert(id.clone(), state);
        Ok(())
    }

    fn command_seen(&mut self, account: &AccountId, id: &CommandId) -> Result<bool, Self::Error> {
        // The map is keyed by owned pairs; a lookup by borrowed parts would need a
        // custom key type, and this is the oracle, not the hot path.
        Ok(self.commands.contains_key(&(account.clone(), id.clone())))
    }

    fn record_command(&mut self, event: &Event, status: CommandStatus) -> Result<(), Self::Error> {
        self.commands.insert(
            (event.account_id.clone(), event.command_id.clone()),
            CommandRecord {
                status,
                account_id: event.account_id.clone(),
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBody;
    use crate::ids::Amount;
    use crate::testing::event;
    use proptest::prelude::*;

    #[test]
    fn repeated_command_id_is_a_duplicate_and_keeps_the_first_outcome() {
        let mut m = Model::new();
        assert_eq!(
            m.apply(&event(1, "c1", "a", EventBody::OpenAccount)),
            ApplyResult::Applied
        );
        let wd = EventBody::Withdraw {
            amount: Amount::new(5).unwrap(),
        };
        assert_eq!(
            m.apply(&event(2, "c2", "a", wd)),
            ApplyResult::Rejected(Rejection::InsufficientFunds)
        );
        let dep = EventBody::Deposit {
            amount: Amount::new(50).unwrap(),
        };
        assert_eq!(m.apply(&event(3, "c3", "a", dep)), ApplyResult::Applied);
        // The retried withdrawal would now succeed, but its command id was decided already.
        assert_eq!(m.apply(&event(4, "c2", "a", wd)), ApplyResult::Duplicate);
        assert_eq!(m.accounts[&AccountId::parse("a").unwrap()].balance, 50);
        assert_eq!(
            m.commands[&(
                AccountId::parse("a").unwrap(),
                CommandId::parse("c2").unwrap()
            )]
                .status,
            CommandStatus::Rejected(Rejection::InsufficientFunds)
        );
    }

    #[test]
    fn a_command_id_is_scoped_to_its_account() {
        let mut m = Model::new();
        assert_eq!(
            m.apply(&event(1, "x", "a", EventBody::OpenAccount)),
            ApplyResult::Applied
        );
        assert_eq!(
            m.apply(&event(2, "x", "b", EventBody::OpenAccount)),
            ApplyResult::Applied
        );
        assert_eq!(
            m.apply(&event(3, "x", "b", EventBody::OpenAccount)),
            ApplyResult::Duplicate
        );
        assert_eq!(m.accounts.len(), 2);
        assert_eq!(m.commands.len(), 2);
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        let body = prop_oneof![
            Just(EventBody::OpenAccount),
            (1u64..=2_000).prop_map(|a| EventBody::Deposit {
                amount: Amount::new(a).unwrap()
            }),
            (1u64..=2_000).prop_map(|a| EventBody::Withdraw {
                amount: Amount::new(a).unwrap()
            }),
            Just(EventBody::Deposit {
                amount: Amount::new(crate::MAX_AMOUNT).unwrap()
            }),
        ];
        // Few accounts and few command ids, so that collisions and repeats are common.
        (0u8..4, 0u16..40, body).prop_map(|(acc, cmd, body)| {
            event(
                u128::from(cmd),
                &format!("c{cmd}"),
                &format!("acc-{acc}"),
                body,
            )
        })
    }

    proptest! {
        #[test]
        fn balances_are_never_negative(events in proptest::collection::vec(arb_event(), 0..200)) {
            let mut m = Model::new();
            for e in &events {
                m.apply(e);
                for s in m.accounts.values() {
                    prop_assert!(s.balance >= 0);
                }
            }
        }

        #[test]
        fn replay_from_empty_is_deterministic(events in proptest::collection::vec(arb_event(), 0..200)) {
            let mut a = Model::new();
            let mut b = Model::new();
            let ra: Vec<_> = events.iter().map(|e| a.apply(e)).collect();
            let rb: Vec<_> = events.iter().map(|e| b.apply(e)).collect();
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn redelivering_any_event_changes_nothing(
            events in proptest::collection::vec(arb_event(), 1..200),
            picks in proptest::collection::vec(any::<proptest::sample::Index>(), 1..20),
        ) {
            let mut m = Model::new();
            for e in &events {
                m.apply(e);
            }
            let before = m.clone();
            for p in picks {
                prop_assert_eq!(m.apply(p.get(&events)), ApplyResult::Duplicate);
            }
            prop_assert_eq!(m, before);
        }
    }
}
