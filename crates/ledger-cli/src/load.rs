//! The workload of `ledger load`: a reproducible random mix of commands.
//!
//! Pure: the same spec and run id give the same workload, so a run can be repeated
//! exactly (`--seed`). The run id only makes the command ids unique to one run, so that
//! repeating a run against the same services is not taken as a retry of the last one.
//!
//! First one `open_account` per account (`{prefix}-{i}`), then the mix. With
//! `--transfers T` (default 0), each command of the mix is a transfer with probability
//! T; the others keep these proportions:
//!
//! | share | what                                                               |
//! |-------|--------------------------------------------------------------------|
//! | 50 %  | deposit of 1 to 10 000 into an open account                        |
//! | 35 %  | withdrawal of 1 to 8 000 (sometimes more than the balance)         |
//! |  5 %  | deliberate overdraft: a withdrawal far beyond any balance          |
//! |  4 %  | `open_account` of an account that is already open                  |
//! |  3 %  | deposit or withdrawal on an account never opened (`{prefix}-x{k}`) |
//! |  3 %  | exact replay of an earlier command, same command id                |
//!
//! and the transfers these:
//!
//! | share | what                                                                      |
//! |-------|---------------------------------------------------------------------------|
//! | 85 %  | 1 to 8 000 between two distinct open accounts (sometimes more than the    |
//! |       | source's balance: rejected `insufficient_funds`)                          |
//! | 10 %  | 1 to 1 000 from an open account to one never opened (`{prefix}-x{k}`):    |
//! |       | debited, then refunded `destination_not_open`                             |
//! |  5 %  | deliberate overdraft: between two open accounts, far beyond any balance   |
//!
//! A replay may repeat a transfer like any other earlier command. With a single
//! account, the transfers between two open accounts go to a never-opened one instead.

use std::collections::BTreeSet;

use ledger_api::CommandRequest;
use ledger_domain::{AccountId, Amount, Command, CommandId, CommandKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSpec {
    /// Accounts opened first.
    pub accounts: u64,
    /// Commands of the mix, after the opens.
    pub commands: u64,
    /// Seed of the random generator.
    pub seed: u64,
    /// Prefix of the account ids; at most 40 characters of `[A-Za-z0-9._-]`.
    pub prefix: String,
    /// Share of the mix that is transfers, 0.0 to 1.0.
    pub transfers: f64,
}

/// What a generated command is meant to exercise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// The initial opening of an account.
    Open,
    /// A deposit into an open account.
    Deposit,
    /// An ordinary withdrawal; rejected when the balance is short at that point.
    Withdraw,
    /// A withdrawal far beyond any balance the run can build up.
    Overdraft,
    /// Opening an account that is already open.
    DuplicateOpen,
    /// A deposit or withdrawal on an account that is never opened.
    UnknownAccount,
    /// An earlier command sent again with the same command id.
    Replay,
    /// A transfer between two distinct open accounts; rejected when the source's
    /// balance is short at that point.
    Transfer,
    /// A transfer from an open account to one never opened: refunded.
    TransferToUnopened,
    /// A transfer between two open accounts far beyond any balance the run can build up.
    TransferOverdraft,
}

/// One generated command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// What it exercises.
    pub kind: OpKind,
    /// The command; its `command_id` is always set.
    pub command: Command,
}

impl Op {
    /// The command id.
    pub fn command_id(&self) -> &CommandId {
        self.command
            .command_id
            .as_ref()
            .expect("generated commands always carry a command id")
    }

    /// The request body.
    pub fn request(&self) -> CommandRequest {
        CommandRequest::from(&self.command)
    }
}

/// A generated workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// One `open_account` per account, sent first.
    pub opens: Vec<Op>,
    /// The mix, sent once every open is accepted.
    pub commands: Vec<Op>,
}

impl Workload {
    /// Every op, opens first.
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.opens.iter().chain(&self.commands)
    }

    /// Every account the workload touches, opened or not, transfer destinations
    /// included, in order.
    pub fn account_ids(&self) -> BTreeSet<&AccountId> {
        self.ops()
            .flat_map(|op| {
                let to = match &op.command.kind {
                    CommandKind::Transfer { to, .. } => Some(to),
                    _ => None,
                };
                std::iter::once(&op.command.account_id).chain(to)
            })
            .collect()
    }
}

/// Amounts of ordinary deposits.
const DEPOSIT_MAX: u64 = 10_000;
/// Amounts of ordinary withdrawals.
const WITHDRAW_MAX: u64 = 8_000;
/// Smallest deliberate overdraft.
const OVERDRAFT_MIN: u64 = 1_000_000_000;
/// Distinct never-opened accounts.
const UNKNOWN_ACCOUNTS: u64 = 16;
/// Amounts of transfers to a never-opened account: small, so that most are debited
/// (and refunded) rather than rejected for want of funds.
const UNOPENED_TRANSFER_MAX: u64 = 1_000;

/// Generates the workload of `spec`; command ids are `{run_id}:{n}`.
///
/// # Panics
/// When the prefix or run id cannot form valid ids (the command line validates both).
pub fn generate(spec: &WorkloadSpec, run_id: &str) -> Workload {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut next_id = 0u64;
    let mut new_id = || {
        let id = CommandId::parse(&format!("{run_id}:{next_id}"))
            .expect("the run id forms valid command ids");
        next_id += 1;
        Some(id)
    };
    let account = |i: u64| {
        AccountId::parse(&format!("{}-{i}", spec.prefix))
            .expect("the prefix forms valid account ids")
    };
    let amount = |n: u64| Amount::new(n).expect("generated amounts are in range");

    let opens: Vec<Op> = (0..spec.accounts)
        .map(|i| Op {
            kind: OpKind::Open,
            command: Command {
                account_id: account(i),
                command_id: new_id(),
                kind: CommandKind::OpenAccount,
            },
        })
        .collect();

    let mut commands: Vec<Op> = Vec::with_capacity(spec.commands as usize);
    // Indices of the mix's originals, the commands a replay may repeat.
    let mut originals: Vec<usize> = Vec::new();
    let unopened = |rng: &mut StdRng| {
        AccountId::parse(&format!(
            "{}-x{}",
            spec.prefix,
            rng.random_range(0..UNKNOWN_ACCOUNTS)
        ))
        .expect("the prefix forms valid account ids")
    };
    for _ in 0..spec.commands {
        let any_account = |rng: &mut StdRng| account(rng.random_range(0..spec.accounts));
        // Drawn only when transfers are asked for: without them the generator draws
        // exactly the numbers it always did, so a seed keeps giving the same workload.
        if spec.transfers > 0.0 && rng.random_bool(spec.transfers.min(1.0)) {
            let roll = rng.random_range(0..100u32);
            let from = rng.random_range(0..spec.accounts);
            // Another open account, if there is one.
            let other = (spec.accounts >= 2).then(|| {
                let to = rng.random_range(0..spec.accounts - 1);
                account(if to >= from { to + 1 } else { to })
            });
            let (kind, to, n) = match (roll, other) {
                (0..85, Some(to)) => (OpKind::Transfer, to, rng.random_range(1..=WITHDRAW_MAX)),
                (95..100, Some(to)) => (
                    OpKind::TransferOverdraft,
                    to,
                    rng.random_range(OVERDRAFT_MIN..=ledger_domain::MAX_AMOUNT),
                ),
                _ => (
                    OpKind::TransferToUnopened,
                    unopened(&mut rng),
                    rng.random_range(1..=UNOPENED_TRANSFER_MAX),
                ),
            };
            originals.push(commands.len());
            commands.push(Op {
                kind,
                command: Command {
                    account_id: account(from),
                    command_id: new_id(),
                    kind: CommandKind::Transfer {
                        to,
                        amount: amount(n),
                    },
                },
            });
            continue;
        }
        let roll = rng.random_range(0..1000u32);
        let op = match roll {
            0..500 => Op {
                kind: OpKind::Deposit,
                command: Command {
                    account_id: any_account(&mut rng),
                    command_id: new_id(),
                    kind: CommandKind::Deposit(amount(rng.random_range(1..=DEPOSIT_MAX))),
                },
            },
            500..850 => Op {
                kind: OpKind::Withdraw,
                command: Command {
                    account_id: any_account(&mut rng),
                    command_id: new_id(),
                    kind: CommandKind::Withdraw(amount(rng.random_range(1..=WITHDRAW_MAX))),
                },
            },
            850..900 => Op {
                kind: OpKind::Overdraft,
                command: Command {
                    account_id: any_account(&mut rng),
                    command_id: new_id(),
                    kind: CommandKind::Withdraw(amount(
                        rng.random_range(OVERDRAFT_MIN..=ledger_domain::MAX_AMOUNT),
                    )),
                },
            },
            900..940 => Op {
                kind: OpKind::DuplicateOpen,
                command: Command {
                    account_id: any_account(&mut rng),
                    command_id: new_id(),
                    kind: CommandKind::OpenAccount,
                },
            },
            940..970 => {
                let account_id = unopened(&mut rng);
                let a = amount(rng.random_range(1..=DEPOSIT_MAX));
                let kind = if rng.random_bool(0.5) {
                    CommandKind::Deposit(a)
                } else {
                    CommandKind::Withdraw(a)
                };
                Op {
                    kind: OpKind::UnknownAccount,
                    command: Command {
                        account_id,
                        command_id: new_id(),
                        kind,
                    },
                }
            }
            _ => {
                // Replay an earlier original (never a replay of a replay), or the first
                // open when the mix has nothing yet.
                let pick = if originals.is_empty() {
                    &opens[rng.random_range(0..opens.len())]
                } else {
                    &commands[originals[rng.random_range(0..originals.len())]]
                };
                Op {
                    kind: OpKind::Replay,
                    command: pick.command.clone(),
                }
            }
        };
        if op.kind != OpKind::Replay {
            originals.push(commands.len());
        }
        commands.push(op);
    }
    Workload { opens, commands }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn spec(accounts: u64, commands: u64, seed: u64) -> WorkloadSpec {
        WorkloadSpec {
            accounts,
            commands,
            seed,
            prefix: format!("load-{seed}"),
            transfers: 0.0,
        }
    }

    fn with_transfers(share: f64, accounts: u64, commands: u64, seed: u64) -> WorkloadSpec {
        WorkloadSpec {
            transfers: share,
            ..spec(accounts, commands, seed)
        }
    }

    /// FNV-1a of every op, in order: a fingerprint of a workload.
    fn fingerprint(w: &Workload) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for op in w.ops() {
            let kind = match &op.command.kind {
                CommandKind::OpenAccount => "o".to_string(),
                CommandKind::Deposit(a) => format!("d{}", a.minor_units()),
                CommandKind::Withdraw(a) => format!("w{}", a.minor_units()),
                CommandKind::Transfer { to, amount } => format!("t{to}{}", amount.minor_units()),
            };
            let line = format!(
                "{:?} {} {} {kind};",
                op.kind,
                op.command.account_id,
                op.command_id()
            );
            for b in line.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    #[test]
    fn the_same_seed_gives_the_same_workload() {
        let a = generate(&spec(50, 5000, 7), "run");
        let b = generate(&spec(50, 5000, 7), "run");
        assert_eq!(a, b);
        let c = generate(&spec(50, 5000, 8), "run");
        assert_ne!(a.commands, c.commands);
        // The run id changes the command ids, nothing else.
        let d = generate(&spec(50, 5000, 7), "other");
        let strip = |w: &Workload| -> Vec<(OpKind, AccountId, CommandKind)> {
            w.ops()
                .map(|o| (o.kind, o.command.account_id.clone(), o.command.kind.clone()))
                .collect()
        };
        assert_eq!(strip(&a), strip(&d));
        assert!(d
            .ops()
            .all(|o| o.command_id().as_str().starts_with("other:")));
    }

    #[test]
    fn without_transfers_a_seed_gives_the_workload_it_always_gave() {
        // The fingerprint of this workload before transfers existed: `--transfers 0`
        // must not change what a seed generates.
        let w = generate(&spec(50, 5000, 7), "run");
        assert_eq!(fingerprint(&w), 0xb09d_04c3_bd8c_efd3);
        assert!(w
            .commands
            .iter()
            .all(|o| !matches!(o.command.kind, CommandKind::Transfer { .. })));
        // And with transfers the seed still decides everything.
        let t = with_transfers(0.2, 50, 5000, 7);
        assert_eq!(generate(&t, "run"), generate(&t, "run"));
    }

    #[test]
    fn opens_come_first_one_per_account() {
        let w = generate(&spec(20, 400, 7), "r");
        assert_eq!(w.opens.len(), 20);
        for (i, op) in w.opens.iter().enumerate() {
            assert_eq!(op.kind, OpKind::Open);
            assert_eq!(op.command.kind, CommandKind::OpenAccount);
            assert_eq!(op.command.account_id.as_str(), format!("load-7-{i}"));
        }
        assert_eq!(w.commands.len(), 400);
    }

    #[test]
    fn the_mix_has_the_documented_shares() {
        let n = 20_000;
        let w = generate(&spec(50, n, 3), "r");
        let mut counts: HashMap<OpKind, u64> = HashMap::new();
        for op in &w.commands {
            *counts.entry(op.kind).or_default() += 1;
        }
        let share = |k| counts.get(&k).copied().unwrap_or(0) as f64 / n as f64;
        let near = |k, want: f64| {
            let got = share(k);
            assert!((got - want).abs() < 0.015, "{k:?}: {got} vs {want}");
        };
        near(OpKind::Deposit, 0.50);
        near(OpKind::Withdraw, 0.35);
        near(OpKind::Overdraft, 0.05);
        near(OpKind::DuplicateOpen, 0.04);
        near(OpKind::UnknownAccount, 0.03);
        near(OpKind::Replay, 0.03);
        // Deposits ~50 %, withdrawals ~40 % of the mix, counted by command type.
        let deposits = w
            .commands
            .iter()
            .filter(|o| matches!(o.command.kind, CommandKind::Deposit(_)))
            .count() as f64;
        let withdrawals = w
            .commands
            .iter()
            .filter(|o| matches!(o.command.kind, CommandKind::Withdraw(_)))
            .count() as f64;
        assert!((deposits / n as f64 - 0.52).abs() < 0.03);
        assert!((withdrawals / n as f64 - 0.42).abs() < 0.03);
    }

    #[test]
    fn transfers_take_their_share_and_the_rest_keeps_its_proportions() {
        let n = 40_000;
        let w = generate(&with_transfers(0.3, 50, n, 3), "r");
        let mut counts: HashMap<OpKind, u64> = HashMap::new();
        for op in &w.commands {
            *counts.entry(op.kind).or_default() += 1;
        }
        let share = |k| counts.get(&k).copied().unwrap_or(0) as f64 / n as f64;
        let near = |k, want: f64| {
            let got = share(k);
            assert!((got - want).abs() < 0.01, "{k:?}: {got} vs {want}");
        };
        near(OpKind::Transfer, 0.3 * 0.85);
        near(OpKind::TransferToUnopened, 0.3 * 0.10);
        near(OpKind::TransferOverdraft, 0.3 * 0.05);
        near(OpKind::Deposit, 0.7 * 0.50);
        near(OpKind::Withdraw, 0.7 * 0.35);
        near(OpKind::Overdraft, 0.7 * 0.05);
        near(OpKind::DuplicateOpen, 0.7 * 0.04);
        near(OpKind::UnknownAccount, 0.7 * 0.03);
        near(OpKind::Replay, 0.7 * 0.03);
        // Replays repeat transfers too.
        assert!(w
            .commands
            .iter()
            .any(|o| o.kind == OpKind::Replay
                && matches!(o.command.kind, CommandKind::Transfer { .. })));

        let all = generate(&with_transfers(1.0, 5, 1000, 3), "r");
        assert!(all
            .commands
            .iter()
            .all(|o| matches!(o.command.kind, CommandKind::Transfer { .. })));
    }

    #[test]
    fn every_transfer_names_two_different_accounts() {
        for accounts in [1, 2, 10] {
            let w = generate(&with_transfers(0.5, accounts, 3000, 13), "r");
            let opened: HashSet<&AccountId> =
                w.opens.iter().map(|o| &o.command.account_id).collect();
            let mut transfers = 0;
            for op in &w.commands {
                let CommandKind::Transfer { to, amount } = &op.command.kind else {
                    continue;
                };
                transfers += 1;
                let from = &op.command.account_id;
                assert_ne!(from, to, "{op:?}");
                assert!(opened.contains(from), "{op:?}");
                assert!(w.account_ids().contains(to));
                match op.kind {
                    OpKind::Transfer => {
                        assert!(opened.contains(to));
                        assert!(amount.minor_units() <= WITHDRAW_MAX);
                    }
                    OpKind::TransferOverdraft => {
                        assert!(opened.contains(to));
                        assert!(amount.minor_units() > 3000 * DEPOSIT_MAX);
                    }
                    OpKind::TransferToUnopened => {
                        assert!(!opened.contains(to));
                        assert!(to.as_str().starts_with("load-13-x"), "{to}");
                        assert!(amount.minor_units() <= UNOPENED_TRANSFER_MAX);
                    }
                    OpKind::Replay => {}
                    other => panic!("{other:?} is not a transfer"),
                }
            }
            assert!(
                transfers > 1000,
                "{accounts} accounts: {transfers} transfers"
            );
            if accounts == 1 {
                // No second open account: every transfer goes to a never-opened one.
                assert!(w
                    .commands
                    .iter()
                    .all(|o| !matches!(o.kind, OpKind::Transfer | OpKind::TransferOverdraft)));
            }
        }
    }

    #[test]
    fn kinds_do_what_they_say() {
        let w = generate(&spec(10, 5000, 11), "r");
        let opened: HashSet<&AccountId> = w.opens.iter().map(|o| &o.command.account_id).collect();
        for op in &w.commands {
            let acc = &op.command.account_id;
            match op.kind {
                OpKind::Open => panic!("opens are not part of the mix"),
                OpKind::Deposit => assert!(opened.contains(acc)),
                OpKind::Withdraw => assert!(opened.contains(acc)),
                OpKind::Overdraft => {
                    assert!(opened.contains(acc));
                    let CommandKind::Withdraw(a) = op.command.kind else {
                        panic!("an overdraft is a withdrawal")
                    };
                    // More than every deposit of the run together.
                    assert!(a.minor_units() > 5000 * DEPOSIT_MAX);
                }
                OpKind::DuplicateOpen => {
                    assert!(opened.contains(acc));
                    assert_eq!(op.command.kind, CommandKind::OpenAccount);
                }
                OpKind::UnknownAccount => {
                    assert!(!opened.contains(acc));
                    assert!(acc.as_str().starts_with("load-11-x"));
                }
                OpKind::Replay => {}
                OpKind::Transfer | OpKind::TransferToUnopened | OpKind::TransferOverdraft => {
                    panic!("no transfers without --transfers")
                }
            }
        }
    }

    #[test]
    fn command_ids_are_unique_except_replays_which_repeat_an_earlier_command_exactly() {
        let w = generate(&spec(5, 3000, 5), "run-x");
        let mut seen: HashMap<&CommandId, &Command> = HashMap::new();
        let mut replays = 0;
        for op in w.ops() {
            match seen.get(op.command_id()) {
                None => {
                    assert_ne!(op.kind, OpKind::Replay, "a replay repeats an earlier id");
                    seen.insert(op.command_id(), &op.command);
                }
                Some(first) => {
                    assert_eq!(op.kind, OpKind::Replay);
                    assert_eq!(*first, &op.command);
                    replays += 1;
                }
            }
        }
        assert!(replays > 0);
    }

    #[test]
    fn every_command_is_valid_json_for_the_ingest() {
        let w = generate(
            &with_transfers(0.3, 3, 500, 1),
            "0123456789abcdef0123456789abcdef",
        );
        for op in w.ops() {
            assert_eq!(Command::from(op.request()), op.command);
            // What the ingest validates, transfers between two accounts included.
            let json = serde_json::to_value(op.request()).unwrap();
            assert_eq!(Command::from_json(&json).as_ref(), Ok(&op.command));
        }
    }

    #[test]
    fn the_longest_prefix_and_the_most_accounts_still_form_valid_ids() {
        // The command line allows a 40-character prefix and up to 1 000 000 accounts.
        let prefix = "p".repeat(40);
        assert!(AccountId::parse(&format!("{prefix}-999999")).is_ok());
        assert!(AccountId::parse(&format!("{prefix}-x{}", UNKNOWN_ACCOUNTS - 1)).is_ok());
        let s = WorkloadSpec {
            accounts: 3,
            commands: 300,
            seed: 0,
            prefix,
            transfers: 0.5,
        };
        assert_eq!(
            generate(&s, "0123456789abcdef0123456789abcdef").opens.len(),
            3
        );
    }

    #[test]
    fn no_commands_is_only_opens() {
        let w = generate(&spec(3, 0, 1), "r");
        assert_eq!(w.opens.len(), 3);
        assert!(w.commands.is_empty());
        assert_eq!(w.account_ids().len(), 3);
    }
}
