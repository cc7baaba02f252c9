//! The rules of the ledger: what an event does to one account.
//!
//! [`decide`] is a pure function of the account's state and the event body, so replaying
//! the same events in the same order always yields the same state.

use serde::{Deserialize, Serialize};

use crate::event::EventBody;
pub use crate::event::{Rejection, REJECTIONS};

/// The state of one account as the projection holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    /// Whether the account has been opened.
    pub open: bool,
    /// Balance in minor units; never negative.
    pub balance: i64,
    /// How many events took effect on this account (rejected and duplicate ones do not).
    pub applied_events: u64,
}

/// Applies one event body to an account (`None` when it does not exist yet) and returns
/// its new state, or why the event changes nothing.
///
/// A transfer debits like a withdrawal, and its credit adds like a deposit, refused for
/// the destination's own reasons. A completion changes no account: it only settles the
/// transfer's status, which [`crate::model::apply_event`] records.
pub fn decide(state: Option<&AccountState>, body: &EventBody) -> Result<AccountState, Rejection> {
    let open = state.filter(|s| s.open);
    let mut next = match (body, open) {
        (EventBody::TransferCredit { amount, .. }, _) => {
            return decide(state, &EventBody::Deposit { amount: *amount }).map_err(|r| match r {
                Rejection::AccountNotOpen => Rejection::DestinationNotOpen,
                Rejection::BalanceOverflow => Rejection::DestinationBalanceOverflow,
                other => other,
            })
        }
        (EventBody::OpenAccount, Some(_)) => return Err(Rejection::AccountAlreadyOpen),
        (EventBody::OpenAccount, None) => AccountState {
            open: true,
            balance: 0,
            applied_events: state.map_or(0, |s| s.applied_events),
        },
        (_, None) => return Err(Rejection::AccountNotOpen),
        (EventBody::TransferCompleted { .. } | EventBody::Unpark { .. }, Some(s)) => return Ok(*s),
        (EventBody::Deposit { amount } | EventBody::TransferRefund { amount, .. }, Some(s)) => {
            let amount =
                i64::try_from(amount.minor_units()).map_err(|_| Rejection::BalanceOverflow)?;
            let balance = s
                .balance
                .checked_add(amount)
                .ok_or(Rejection::BalanceOverflow)?;
            AccountState { balance, ..*s }
        }
        (EventBody::Withdraw { amount } | EventBody::Transfer { amount, .. }, Some(s)) => {
            let amount =
                i64::try_from(amount.minor_units()).map_err(|_| Rejection::InsufficientFunds)?;
            if s.balance < amount {
                return Err(Rejection::InsufficientFunds);
            }
            AccountState {
                balance: s.balance - amount,
                ..*s
            }
        }
    };
    next.applied_events += 1;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{deposit as dep, withdraw as wd};

    #[test]
    fn the_contract_example() {
        let s = decide(None, &EventBody::OpenAccount).unwrap();
        let s = decide(Some(&s), &dep(1250)).unwrap();
        let s = decide(Some(&s), &wd(300)).unwrap();
        assert_eq!(
            s,
            AccountState {
                open: true,
                balance: 950,
                applied_events: 3
            }
        );
    }

    #[test]
    fn rejections() {
        assert_eq!(decide(None, &dep(1)), Err(Rejection::AccountNotOpen));
        assert_eq!(decide(None, &wd(1)), Err(Rejection::AccountNotOpen));
        let s = decide(None, &EventBody::OpenAccount).unwrap();
        assert_eq!(
            decide(Some(&s), &EventBody::OpenAccount),
            Err(Rejection::AccountAlreadyOpen)
        );
        assert_eq!(decide(Some(&s), &wd(1)), Err(Rejection::InsufficientFunds));
        let rich = AccountState {
            balance: i64::MAX - 5,
            ..s
        };
        assert_eq!(
            decide(Some(&rich), &dep(6)),
            Err(Rejection::BalanceOverflow)
        );
        assert_eq!(decide(Some(&rich), &dep(5)).unwrap().balance, i64::MAX);
    }

    #[test]
    fn withdrawing_everything_leaves_zero() {
        let s = decide(None, &EventBody::OpenAccount).unwrap();
        let s = decide(Some(&s), &dep(10)).unwrap();
        assert_eq!(decide(Some(&s), &wd(10)).unwrap().balance, 0);
    }

    #[test]
    fn reason_codes_round_trip() {
        for r in REJECTIONS {
            assert_eq!(Rejection::from_code(r.code()), Some(r));
        }
        assert_eq!(Rejection::from_code("nope"), None);
    }
}
