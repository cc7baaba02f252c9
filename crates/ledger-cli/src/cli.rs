//! The command line of `ledger`, parsed with clap.
//!
//! Every argument that names a domain value (account id, amount, command id) is parsed
//! into its `ledger_domain` type here, so a malformed value is a usage error (exit 2)
//! before any request is made.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ledger_domain::{AccountId, Amount, CommandId};
use ledger_eventlog::config::KafkaArgs;
use reqwest::Url;

/// `ledger`: send commands to the ledger, query the projection, generate load and verify
/// it against a model, operate the projector, and watch it all live.
///
/// Exit codes: 0 success, 1 rejected or mismatch, 2 usage error, 3 service unavailable.
#[derive(Debug, Parser)]
#[command(name = "ledger", version, about, long_about)]
pub struct Cli {
    /// Base URL of command-ingest.
    #[arg(
        long,
        env = "LEDGER_INGEST_URL",
        default_value = "http://127.0.0.1:8080",
        value_parser = parse_base_url,
        global = true
    )]
    pub ingest_url: Url,
    /// Base URL of the projector.
    #[arg(
        long,
        env = "LEDGER_PROJECTOR_URL",
        default_value = "http://127.0.0.1:8081",
        value_parser = parse_base_url,
        global = true
    )]
    pub projector_url: Url,
    /// Bearer token sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "LEDGER_AUTH_TOKEN", hide_env_values = true, global = true)]
    pub auth_token: Option<String>,
    /// Machine-readable output: one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to keep retrying a request that fails with 503 or a lost connection, in
    /// seconds. Retrying a command is safe: its command id is the idempotency key.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        global = true
    )]
    pub retry_for: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Open an account (balance 0).
    Open {
        /// The account id: 1 to 64 characters of [A-Za-z0-9._-].
        #[arg(value_parser = parse_account)]
        account: AccountId,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Deposit an amount (integer minor units) into an account.
    Deposit {
        /// The account id.
        #[arg(value_parser = parse_account)]
        account: AccountId,
        /// Integer minor units, 1 to 1000000000000.
        #[arg(value_parser = parse_amount, allow_negative_numbers = true)]
        amount: Amount,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Withdraw an amount (integer minor units) from an account.
    Withdraw {
        /// The account id.
        #[arg(value_parser = parse_account)]
        account: AccountId,
        /// Integer minor units, 1 to 1000000000000.
        #[arg(value_parser = parse_amount, allow_negative_numbers = true)]
        amount: Amount,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Move an amount (integer minor units) from one account to another. The source is
    /// debited at once; the destination is credited through the log, or, when it is not
    /// open, the amount is refunded to the source.
    Transfer {
        /// The source account.
        #[arg(value_parser = parse_account)]
        from: AccountId,
        /// The destination account; not the source.
        #[arg(value_parser = parse_account)]
        to: AccountId,
        /// Integer minor units, 1 to 1000000000000.
        #[arg(value_parser = parse_amount, allow_negative_numbers = true)]
        amount: Amount,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Show an account's balance as projected.
    Balance {
        /// The account id.
        #[arg(value_parser = parse_account)]
        account: AccountId,
        /// Answer only once everything up to this consistency token is applied. The read
        /// waits through a partition moving between projector instances (a crash, a
        /// restart, a scale-up) instead of failing with partition_moving; without a token
        /// such a read answers partition_moving at once, and is retried for --retry-for.
        #[arg(long, value_name = "TOKEN")]
        after: Option<String>,
    },
    /// Show a command's outcome as projected.
    Status {
        /// The command id.
        #[arg(value_parser = parse_command_id)]
        command_id: CommandId,
        /// The account that sent it. A command id is an idempotency key per account;
        /// needed only when several accounts used the same id.
        #[arg(long, value_parser = parse_account)]
        account: Option<AccountId>,
        /// Answer only once everything up to this consistency token is applied.
        #[arg(long, value_name = "TOKEN")]
        after: Option<String>,
    },
    /// Show the money in the ledger, summed over every partition, and whether it is
    /// conserved: the balances plus the transfers in flight equal the deposits minus the
    /// withdrawals. Exits 1 when it is not.
    Totals {
        /// Answer only once everything up to this consistency token is applied.
        #[arg(long, value_name = "TOKEN")]
        after: Option<String>,
    },
    /// Send JSON lines of commands from FILE (or `-` for stdin), in batches.
    Send {
        /// The file of JSON lines, or `-` for stdin.
        file: PathBuf,
        /// Commands per batch request.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        batch_size: u64,
    },
    /// Generate a reproducible random workload, measure it, and optionally verify it.
    Load(LoadArgs),
    /// Operate the projector: pause and resume applying, rebuild the store beside the
    /// live one and swap it in once verified, and decide for parked accounts.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// A live view of every partition (owner, applied offset, lag, apply rate) and the
    /// ingest's accept rate, refreshed each interval; `q` quits. When stdout is not a
    /// terminal (or with --json), prints one snapshot, with rates from two samples an
    /// interval apart, and exits.
    Top(TopArgs),
    /// Print the topic's events as JSON lines, one per event, with partition and offset
    /// (reads Kafka directly, as any other consumer could; joins no group, commits
    /// nothing).
    Tail(TailArgs),
}

/// `ledger admin …`: the projector's operations routes.
#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Stop applying one partition, or all; queries keep being served and the lag grows
    /// (visible in `ledger top`). Lasts until resumed, a restart or a rebalance.
    Pause(PartitionArg),
    /// Apply again what `pause` stopped: one partition, or all.
    Resume(PartitionArg),
    /// Rebuild the projector's store from offset 0 beside the live one, compare the two
    /// by a state digest at the same offsets, and swap them only if they agree. Exits 1
    /// on a mismatch or a failure (the live store is then kept).
    Rebuild(RebuildArgs),
    /// List the accounts whose events wait behind one this projector cannot apply, or
    /// decide for one of them.
    Parked {
        /// Without one: list them.
        #[command(subcommand)]
        action: Option<ParkedCmd>,
    },
}

/// `--partition N` of `pause` and `resume`.
#[derive(Debug, Args)]
pub struct PartitionArg {
    /// Only this partition [default: every partition].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
}

/// Options of `admin rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Follow the rebuild until it is over, showing its phase and the events replayed;
    /// exit 0 once swapped, 1 on a mismatch or a failure.
    #[arg(long)]
    pub wait: bool,
    /// Show the last rebuild instead of starting one (with --wait: follow it).
    #[arg(long)]
    pub status: bool,
}

/// What to do with a parked account. The decision is written to the log, so every
/// instance, and any later rebuild, applies it at the same place.
#[derive(Debug, Subcommand)]
pub enum ParkedCmd {
    /// Apply the account's waiting events again, in order (after an upgrade that
    /// knows them).
    Retry {
        /// The parked account.
        #[arg(value_parser = parse_account)]
        account: AccountId,
    },
    /// Send the account's first waiting event to the dead-letter topic and apply the
    /// events behind it.
    Skip {
        /// The parked account.
        #[arg(value_parser = parse_account)]
        account: AccountId,
    },
}

/// Options of `top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between two refreshes, in milliseconds; rates are measured over it.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(100..=60_000)
    )]
    pub interval_ms: u64,
}

/// Options of `tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Start at each partition's first event [default: at its end].
    #[arg(long)]
    pub from_beginning: bool,
    /// Only this partition.
    #[arg(long, value_name = "N")]
    pub partition: Option<i32>,
    /// Keep printing new events until Ctrl-C [default: stop at the end].
    #[arg(long)]
    pub follow: bool,
    /// Where the log is.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Options of `open`, `deposit`, `withdraw` and `transfer`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The idempotency key; a UUID is generated when absent.
    #[arg(long, value_name = "ID", value_parser = parse_command_id)]
    pub command_id: Option<CommandId>,
    /// Wait for the projection and print the outcome and the balance (a transfer's: both
    /// balances, once it is applied, refunded or rejected; for at most --retry-for
    /// seconds, then exit 3). The wait reads with the command's consistency token, so it
    /// waits through a partition moving between projector instances too.
    #[arg(long)]
    pub wait: bool,
}

/// Options of `load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Accounts to open first.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub accounts: u64,
    /// Commands to send after the accounts are open.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub commands: u64,
    /// Pace the whole run at this many commands per second.
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Concurrent requests.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,
    /// Seed of the workload; random (and printed) when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Wait for the projector and check every balance and command outcome against a
    /// model of what was accepted.
    #[arg(long)]
    pub verify: bool,
    /// Prefix of the account ids [default: load-<seed>].
    #[arg(long, value_parser = parse_prefix)]
    pub prefix: Option<String>,
    /// Share of the mix that is transfers, 0.0 to 1.0: mostly between two of the run's
    /// accounts, some to a never-opened account (refunded), a few overdrafts.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub transfers: f64,
}

fn parse_account(s: &str) -> Result<AccountId, String> {
    AccountId::parse(s).map_err(|e| e.to_string())
}

fn parse_command_id(s: &str) -> Result<CommandId, String> {
    CommandId::parse(s).map_err(|e| e.to_string())
}

fn parse_amount(s: &str) -> Result<Amount, String> {
    let n: u64 = s.parse().map_err(|_| {
        format!("amount must be a positive integer number of minor units, got {s:?}")
    })?;
    Amount::new(n).map_err(|e| e.to_string())
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("share must be a number from 0.0 to 1.0, got {s:?}")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("rate must be a positive number, got {s:?}")),
    }
}

/// Longest prefix: room for `-<index>` within the 64 characters of an account id.
const MAX_PREFIX_LEN: usize = 40;

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.len() > MAX_PREFIX_LEN {
        return Err(format!(
            "prefix must be at most {MAX_PREFIX_LEN} characters, got {}",
            s.len()
        ));
    }
    AccountId::parse(s).map(|_| s.to_string()).map_err(|_| {
        format!("prefix must be 1 to {MAX_PREFIX_LEN} characters of [A-Za-z0-9._-], got {s:?}")
    })
}

fn parse_base_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a URL ({e}): {s:?}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "only plain http:// URLs are supported, got {:?}",
            url.scheme()
        ));
    }
    if url.host_str().is_none() {
        return Err(format!("the URL has no host: {s:?}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("a base URL takes no query or fragment: {s:?}"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn domain_values_are_validated_while_parsing() {
        assert!(parse_amount("1250").is_ok());
        for bad in ["0", "-5", "1.5", "1e3", "1000000000001", ""] {
            assert!(parse_amount(bad).is_err(), "{bad}");
        }
        assert!(parse_account("acc-1").is_ok());
        assert!(parse_account("a b").is_err());
        assert!(parse_command_id("c:1").is_ok());
        assert!(parse_command_id("").is_err());
        assert!(parse_prefix("load-7").is_ok());
        assert!(parse_prefix(&"p".repeat(41)).is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("12.5").is_ok());
        for good in ["0", "0.25", "1", "1.0"] {
            assert!(parse_share(good).is_ok(), "{good}");
        }
        for bad in ["-0.1", "1.01", "NaN", "inf", "30%", ""] {
            assert!(parse_share(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn transfer_takes_two_accounts_and_an_amount() {
        let cli = Cli::try_parse_from([
            "ledger",
            "transfer",
            "acc-1",
            "acc-2",
            "500",
            "--command-id",
            "t-1",
            "--wait",
        ])
        .unwrap();
        let Cmd::Transfer {
            from,
            to,
            amount,
            submit,
        } = cli.command
        else {
            panic!("not a transfer: {:?}", cli.command)
        };
        assert_eq!((from.as_str(), to.as_str()), ("acc-1", "acc-2"));
        assert_eq!(amount.minor_units(), 500);
        assert_eq!(submit.command_id.unwrap().as_str(), "t-1");
        assert!(submit.wait);
        for bad in [
            &["ledger", "transfer", "acc-1", "acc-2"][..],
            &["ledger", "transfer", "acc-1", "acc-2", "-5"],
            &["ledger", "transfer", "acc-1", "a b", "5"],
            &["ledger", "transfer", "acc-1", "acc-2", "1.5"],
        ] {
            let err = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn totals_and_the_transfer_share_of_load() {
        let cli = Cli::try_parse_from(["ledger", "totals", "--after", "v1.2.41"]).unwrap();
        assert!(matches!(cli.command, Cmd::Totals { after: Some(t) } if t == "v1.2.41"));
        let load = |extra: &[&str]| {
            let mut args = vec!["ledger", "load", "--accounts", "2", "--commands", "5"];
            args.extend(extra);
            Cli::try_parse_from(args).map(|c| match c.command {
                Cmd::Load(l) => l.transfers,
                other => panic!("not a load: {other:?}"),
            })
        };
        assert_eq!(load(&[]).unwrap(), 0.0);
        assert_eq!(load(&["--transfers", "0.3"]).unwrap(), 0.3);
        assert_eq!(load(&["--transfers", "1.5"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn base_urls_are_plain_http() {
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("https://example.com").is_err());
        assert!(parse_base_url("127.0.0.1:8080").is_err());
    }

    #[test]
    fn a_negative_amount_is_a_usage_error_not_a_flag() {
        let err = Cli::try_parse_from(["ledger", "deposit", "acc-1", "-5"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("amount"), "{err}");
    }

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("ledger").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    #[test]
    fn admin_pause_and_resume_take_an_optional_partition() {
        let partition = |args: &[&str]| match parse(args).unwrap() {
            Cmd::Admin(AdminCmd::Pause(p)) => ("pause", p.partition),
            Cmd::Admin(AdminCmd::Resume(p)) => ("resume", p.partition),
            other => panic!("{other:?}"),
        };
        assert_eq!(partition(&["admin", "pause"]), ("pause", None));
        assert_eq!(
            partition(&["admin", "pause", "--partition", "3"]),
            ("pause", Some(3))
        );
        assert_eq!(
            partition(&["admin", "resume", "--partition", "0"]),
            ("resume", Some(0))
        );
        for bad in [
            &["admin", "pause", "--partition", "-1"][..],
            &["admin", "pause", "--partition", "x"],
            &["admin", "pause", "3"],
            &["admin"],
            &["admin", "frobnicate"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn admin_rebuild_starts_or_shows_and_may_wait() {
        let rebuild = |args: &[&str]| match parse(args).unwrap() {
            Cmd::Admin(AdminCmd::Rebuild(r)) => (r.status, r.wait),
            other => panic!("{other:?}"),
        };
        assert_eq!(rebuild(&["admin", "rebuild"]), (false, false));
        assert_eq!(rebuild(&["admin", "rebuild", "--wait"]), (false, true));
        assert_eq!(rebuild(&["admin", "rebuild", "--status"]), (true, false));
        assert_eq!(
            rebuild(&["admin", "rebuild", "--status", "--wait"]),
            (true, true)
        );
    }

    #[test]
    fn admin_parked_lists_or_decides_for_a_valid_account() {
        assert!(matches!(
            parse(&["admin", "parked"]).unwrap(),
            Cmd::Admin(AdminCmd::Parked { action: None })
        ));
        match parse(&["admin", "parked", "retry", "acc-1"]).unwrap() {
            Cmd::Admin(AdminCmd::Parked {
                action: Some(ParkedCmd::Retry { account }),
            }) => assert_eq!(account.as_str(), "acc-1"),
            other => panic!("{other:?}"),
        }
        match parse(&["admin", "parked", "skip", "acc-2"]).unwrap() {
            Cmd::Admin(AdminCmd::Parked {
                action: Some(ParkedCmd::Skip { account }),
            }) => assert_eq!(account.as_str(), "acc-2"),
            other => panic!("{other:?}"),
        }
        for bad in [
            &["admin", "parked", "retry"][..],
            &["admin", "parked", "skip", "a b"],
            &["admin", "parked", "forget", "acc-1"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn top_refreshes_every_second_unless_told() {
        let interval = |args: &[&str]| {
            parse(args).map(|c| match c {
                Cmd::Top(t) => t.interval_ms,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(interval(&["top"]).unwrap(), 1000);
        assert_eq!(interval(&["top", "--interval-ms", "250"]).unwrap(), 250);
        assert_eq!(interval(&["--json", "top"]).unwrap(), 1000);
        for bad in ["0", "99", "60001", "1s"] {
            let err = interval(&["top", "--interval-ms", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }
}
