//! Comparing what the projector answers with the model, account by account and command
//! by command, and the checks of transfers that settled where the model did not expect.

use super::*;

/// Compares one account; also returns how many more events the projector applied to it
/// than the model did.
pub(super) fn compare_account(
    id: &AccountId,
    modelled: Option<&AccountState>,
    actual: Option<&AccountView>,
) -> (Option<Mismatch>, u64) {
    let expected = modelled.map(|s| describe_account(s.open, s.balance, s.applied_events));
    let excess = actual.map_or(0, |v| {
        v.applied_events
            .saturating_sub(modelled.map_or(0, |s| s.applied_events))
    });
    let actual = actual.map(|v| describe_account(v.open, v.balance, v.applied_events));
    let none = || "not found".to_string();
    let mismatch = (expected != actual).then(|| Mismatch {
        subject: format!("account {id}"),
        expected: expected.unwrap_or_else(none),
        actual: actual.unwrap_or_else(none),
    });
    (mismatch, excess)
}

pub(super) fn describe_account(open: bool, balance: i64, applied_events: u64) -> String {
    format!("open {open}, balance {balance}, {applied_events} applied events")
}

/// Compares one command with the projector's answer (`None`: it does not know it); also
/// returns 1 when it does not (lost).
pub(super) fn compare_command(
    oracle: &Oracle,
    account: &AccountId,
    id: &CommandId,
    actual: Option<&CommandView>,
) -> (Option<Mismatch>, u64) {
    let key = (account.clone(), id.clone());
    let expected = oracle.model.commands.get(&key).map(|r| {
        let (p, o) = oracle.first_position[&key];
        let outcome = outcome_text(CommandOutcome::from(r.status), r.status.reason());
        let transfer = r
            .transfer
            .as_ref()
            .map(|t| describe_transfer(&t.to, t.amount, t.settled_at));
        describe_command(&outcome, r.account_id.as_str(), p, o, transfer)
    });
    let actual = actual.map(|v| {
        let outcome = outcome_text(v.status, v.reason.as_deref());
        let transfer = v.transfer.as_ref().map(|t| {
            let settled_at = t.settled_at.map(|p| Position {
                partition: p.partition,
                offset: p.offset,
            });
            describe_transfer(&t.to_account, t.amount, settled_at)
        });
        describe_command(
            &outcome,
            v.account_id.as_str(),
            v.partition,
            v.offset,
            transfer,
        )
    });
    let lost = u64::from(actual.is_none());
    let none = || "not found".to_string();
    let mismatch = (expected != actual).then(|| Mismatch {
        subject: format!("command {id} of {account}"),
        expected: expected.unwrap_or_else(none),
        actual: actual.unwrap_or_else(none),
    });
    (mismatch, lost)
}

pub(super) fn describe_command(
    outcome: &str,
    account: &str,
    partition: i32,
    offset: i64,
    transfer: Option<String>,
) -> String {
    let mut s = format!("{outcome} on {account} at {partition}/{offset}");
    if let Some(t) = transfer {
        s.push_str(&format!("; {t}"));
    }
    s
}

pub(super) fn describe_transfer(
    to: &AccountId,
    amount: Amount,
    settled_at: Option<Position>,
) -> String {
    match settled_at {
        Some(p) => format!(
            "transfer of {amount} to {to}, settled at {}/{}",
            p.partition, p.offset
        ),
        None => format!("transfer of {amount} to {to}, not settled"),
    }
}

/// Transfers refunded for want of an open destination although the destination was
/// open before they were sent. The model cannot judge such a refund by itself: the
/// refused credit's position is known to the projector only. But `opened_first` lists
/// the opens accepted before any transfer of the run was sent (the run opens its
/// accounts first), and a credit is written after its transfer, so it comes after them
/// in the destination's partition: where the model applied such an open, the credit
/// must have found the account open.
pub(super) fn refunds_to_open_accounts(
    oracle: &Oracle,
    opened_first: &[(&AccountId, &CommandId)],
    settlements: &[Settlement],
) -> Vec<Mismatch> {
    let open: HashSet<&AccountId> = opened_first
        .iter()
        .filter(|(account, id)| {
            oracle
                .model
                .commands
                .get(&((*account).clone(), (*id).clone()))
                .is_some_and(|r| r.status == CommandStatus::Applied)
        })
        .map(|(account, _)| *account)
        .collect();
    settlements
        .iter()
        .filter_map(|s| {
            let Settled::Refunded(_, reason @ Rejection::DestinationNotOpen) = s.settled else {
                return None;
            };
            let record = oracle
                .model
                .commands
                .get(&(s.account.clone(), s.command_id.clone()))?;
            let to = &record.transfer.as_ref()?.to;
            open.contains(to).then(|| Mismatch {
                subject: format!("command {} of {}", s.command_id, s.account),
                expected: format!("credited: {to} was open before the transfer was sent"),
                actual: outcome_text(CommandOutcome::Refunded, Some(reason.code())),
            })
        })
        .collect()
}

/// Settlements reported in a partition where they cannot be: a credit lands in its
/// destination's partition, a refund in its source's. Each account's partition is where
/// the ingest put its commands; a destination the run never wrote to is not judged.
pub(super) fn settled_elsewhere(oracle: &Oracle, settlements: &[Settlement]) -> Vec<Mismatch> {
    let partition: HashMap<&AccountId, i32> = oracle
        .first_position
        .iter()
        .map(|((account, _), (p, _))| (account, *p))
        .collect();
    settlements
        .iter()
        .filter_map(|s| {
            let record = oracle
                .model
                .commands
                .get(&(s.account.clone(), s.command_id.clone()))?;
            let to = &record.transfer.as_ref()?.to;
            let (at, whose) = match s.settled {
                Settled::Credited(at) => (at, to),
                Settled::Refunded(at, _) => (at, &s.account),
            };
            let expected = *partition.get(whose)?;
            (at.partition != expected).then(|| Mismatch {
                subject: format!("command {} of {}", s.command_id, s.account),
                expected: format!("settled in partition {expected}, {whose}'s"),
                actual: format!(
                    "settled at partition {}, offset {}",
                    at.partition, at.offset
                ),
            })
        })
        .collect()
}
