//! Shorthands for tests in every crate: events and bodies from literals. They panic on
//! an invalid literal, which in a test is the right answer. Built only for this crate's
//! tests and with the `testing` feature, which other crates enable as a
//! dev-dependency.

use crate::event::{Event, EventBody};
use crate::ids::{AccountId, Amount, CommandId};

/// An event with this id, command id, account and body, at time 0.
pub fn event(event_id: u128, command_id: &str, account_id: &str, body: EventBody) -> Event {
    Event {
        event_id,
        command_id: CommandId::parse(command_id).expect("tests pass valid command ids"),
        account_id: AccountId::parse(account_id).expect("tests pass valid account ids"),
        time_ms: 0,
        body,
    }
}

/// A deposit of `n` minor units.
pub fn deposit(n: u64) -> EventBody {
    EventBody::Deposit {
        amount: Amount::new(n).expect("tests pass valid amounts"),
    }
}

/// A withdrawal of `n` minor units.
pub fn withdraw(n: u64) -> EventBody {
    EventBody::Withdraw {
        amount: Amount::new(n).expect("tests pass valid amounts"),
    }
}

/// A transfer of `n` minor units to `to` (the event's account is the source).
pub fn transfer(to: &str, n: u64) -> EventBody {
    EventBody::Transfer {
        to: AccountId::parse(to).expect("tests pass valid account ids"),
        amount: Amount::new(n).expect("tests pass valid amounts"),
    }
}
