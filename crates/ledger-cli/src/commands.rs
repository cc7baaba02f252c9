//! The subcommands: what each one requests, prints, and exits with.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_domain::{AccountId, Command, CommandId, CommandKind};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::cli::{Cli, Cmd, LoadArgs, SubmitArgs};
use crate::client::{backoff, found, Client, ClientConfig, ClientError, Service};
use crate::error::{CliError, Exit};
use crate::load::WorkloadSpec;
use crate::output::{
    account_line, command_line, outcome_text, settlement_text, totals_text, Output,
};
use crate::runner::{self, LoadOptions, LoadReport};
use crate::verify::MoneyCheck;
use ledger_api::{Accepted, CommandOutcome, CommandRequest, ErrorCode, LogPosition};
use ledger_eventlog::tail::TailOptions;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<Exit, CliError> {
    let out = Output::new(cli.json);
    let client = Arc::new(Client::new(ClientConfig {
        ingest: cli.ingest_url,
        projector: cli.projector_url,
        auth_token: cli.auth_token,
        retry_for: Duration::from_secs(cli.retry_for),
    })?);
    match cli.command {
        Cmd::Open { account, submit } => {
            submit_one(&client, out, account, CommandKind::OpenAccount, submit).await
        }
        Cmd::Deposit {
            account,
            amount,
            submit,
        } => submit_one(&client, out, account, CommandKind::Deposit(amount), submit).await,
        Cmd::Withdraw {
            account,
            amount,
            submit,
        } => submit_one(&client, out, account, CommandKind::Withdraw(amount), submit).await,
        Cmd::Transfer {
            from,
            to,
            amount,
            submit,
        } => {
            // The ingest would refuse it (400 invalid_transfer): say so without asking.
            if from == to {
                return Err(CliError::Usage(format!(
                    "from and to are both {from}: a transfer moves money between two accounts"
                )));
            }
            submit_one(
                &client,
                out,
                from,
                CommandKind::Transfer { to, amount },
                submit,
            )
            .await
        }
        Cmd::Balance { account, after } => {
            let v = client.account(&account, after.as_deref()).await?;
            out.result(&v, || account_line(&v));
            Ok(Exit::Success)
        }
        Cmd::Status {
            command_id,
            account,
            after,
        } => {
            let v = client
                .command(&command_id, account.as_ref(), after.as_deref())
                .await?;
            out.result(&v, || command_line(&v));
            Ok(Exit::Success)
        }
        Cmd::Totals { after } => {
            let t = client.totals(after.as_deref()).await?;
            out.result(&t, || totals_text(&t));
            Ok(if t.conserved {
                Exit::Success
            } else {
                Exit::Mismatch
            })
        }
        Cmd::Send { file, batch_size } => send(&client, out, &file, batch_size as usize).await,
        Cmd::Load(args) => load(client, out, args).await,
        Cmd::Tail(args) => {
            let options = TailOptions {
                from_beginning: args.from_beginning,
                partition: args.partition,
                follow: args.follow,
            };
            if !options.from_beginning && !options.follow {
                eprintln!(
                    "ledger tail: starting at the end and stopping there prints nothing; \
                     add --from-beginning to read the log, or --follow to wait for new events"
                );
            }
            crate::tail::run(args.kafka, options).await?;
            Ok(Exit::Success)
        }
        Cmd::Admin(command) => crate::admin::run(&client, out, command).await,
        Cmd::Top(args) => crate::top::run(client, out, args).await,
    }
}

/// A fresh command id: a UUID, so that a retry of this very command is recognised.
/// Time-ordered (v7), like the ingest's own, so the projector's index stays local.
fn new_command_id() -> CommandId {
    CommandId::parse(&uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid command id")
}

/// What `--wait` prints: the ingest's answer, the outcome, and the balance after it
/// (`null` when the account is not open); for a transfer also its destination's.
#[derive(Debug, Serialize)]
struct Waited {
    #[serde(flatten)]
    accepted: Accepted,
    status: CommandOutcome,
    reason: Option<String>,
    account_id: String,
    balance: Option<i64>,
    #[serde(flatten)]
    transfer: Option<WaitedTransfer>,
}

/// A transfer's part of [`Waited`].
#[derive(Debug, Serialize)]
struct WaitedTransfer {
    to_account: String,
    /// `null` when the destination is not open.
    to_balance: Option<i64>,
    amount: u64,
    /// Where its credit (applied) or its refund (refunded) was applied.
    settled_at: Option<LogPosition>,
}

async fn submit_one(
    client: &Client,
    out: Output,
    account_id: AccountId,
    kind: CommandKind,
    args: SubmitArgs,
) -> Result<Exit, CliError> {
    let command_id = args.command_id.unwrap_or_else(new_command_id);
    let command = Command {
        account_id,
        command_id: Some(command_id.clone()),
        kind,
    };
    let what = match &command.kind {
        CommandKind::OpenAccount => format!("open_account {}", command.account_id),
        CommandKind::Deposit(a) => format!("deposit of {a} into {}", command.account_id),
        CommandKind::Withdraw(a) => format!("withdraw of {a} from {}", command.account_id),
        CommandKind::Transfer { to, amount } => {
            format!("transfer of {amount} from {} to {to}", command.account_id)
        }
    };
    let submitted = client.submit(&CommandRequest::from(&command)).await?;
    let a = submitted.accepted;
    let accepted_line = format!(
        "accepted {what}: command {}, partition {}, offset {}, token {}",
        a.command_id, a.partition, a.offset, a.token
    );
    if !args.wait {
        out.result(&a, || accepted_line);
        return Ok(Exit::Success);
    }
    // A transfer is pending until its credit or refund has come back through the log.
    let deadline = Instant::now() + client.retry_for();
    let status = client
        .command_settled(
            &command_id,
            Some(&command.account_id),
            Some(&a.token),
            deadline,
        )
        .await?;
    let to = match &command.kind {
        CommandKind::Transfer { to, .. } => Some(to),
        _ => None,
    };
    if !status.status.is_final() {
        return Err(CliError::StillPending {
            command_id,
            to: to.unwrap_or(&command.account_id).clone(),
            account: command.account_id,
            waited_s: client.retry_for().as_secs(),
        });
    }
    let settled_at = status.transfer.as_ref().and_then(|t| t.settled_at);
    let settled_token = status
        .transfer
        .as_ref()
        .and_then(|t| t.settled_token.as_deref());
    // Read each account after the event that last changed it: a refund in the source's
    // partition, a credit in the destination's.
    let source_after = match (status.status, settled_token) {
        (CommandOutcome::Refunded, Some(t)) => t,
        _ => &a.token,
    };
    let account = found(
        client
            .account(&command.account_id, Some(source_after))
            .await,
    )?;
    let destination = match to {
        Some(to) => {
            let after = match (status.status, settled_token) {
                (CommandOutcome::Applied, Some(t)) => Some(t),
                _ => None,
            };
            Some((to, found(client.account(to, after).await)?))
        }
        None => None,
    };
    let applied = status.status == CommandOutcome::Applied;
    let open_balance =
        |v: &Option<ledger_api::AccountView>| v.as_ref().filter(|v| v.open).map(|v| v.balance);
    let waited = Waited {
        accepted: a,
        status: status.status,
        reason: status.reason.clone(),
        account_id: command.account_id.to_string(),
        balance: open_balance(&account),
        transfer: match (&destination, &command.kind) {
            (Some((to, v)), CommandKind::Transfer { amount, .. }) => Some(WaitedTransfer {
                to_account: to.to_string(),
                to_balance: open_balance(v),
                amount: amount.minor_units(),
                settled_at,
            }),
            _ => None,
        },
    };
    out.result(&waited, || {
        let mut outcome = outcome_text(status.status, status.reason.as_deref());
        if let Some(s) = status
            .transfer
            .as_ref()
            .and_then(|t| settlement_text(t, status.status))
        {
            outcome.push_str(&format!(", {s}"));
        }
        let balance = |id: &AccountId, v: &Option<ledger_api::AccountView>| match v {
            Some(v) => account_line(v),
            None => format!("{id}: not open"),
        };
        let mut text = format!(
            "{accepted_line}\noutcome: {outcome}\n{}",
            balance(&command.account_id, &account)
        );
        if let Some((to, v)) = &destination {
            text.push_str(&format!("\n{}", balance(to, v)));
        }
        text
    });
    Ok(if applied {
        Exit::Success
    } else {
        Exit::Rejected
    })
}

/// At most this many invalid lines are listed.
const MAX_INVALID_LISTED: usize = 10;

/// An input line that was not accepted.
#[derive(Debug, Serialize)]
struct InvalidLine {
    line: u64,
    code: String,
    message: String,
}

/// The summary of `ledger send`.
#[derive(Debug, Default, Serialize)]
struct SendSummary {
    /// Non-blank lines read.
    lines: u64,
    /// Commands accepted.
    accepted: u64,
    /// Lines refused, locally or by the ingest.
    invalid: u64,
    /// The first invalid lines.
    invalid_lines: Vec<InvalidLine>,
    /// Per partition written to, the token of the last accepted command: query with
    /// `--after` to read your writes.
    tokens: Vec<String>,
    #[serde(skip)]
    last: BTreeMap<i32, (i64, String)>,
}

impl SendSummary {
    fn invalid(&mut self, line: u64, code: &str, message: &str) {
        self.invalid += 1;
        if self.invalid_lines.len() < MAX_INVALID_LISTED {
            self.invalid_lines.push(InvalidLine {
                line,
                code: code.to_string(),
                message: message.to_string(),
            });
        }
    }

    fn accepted(&mut self, a: Accepted) {
        self.accepted += 1;
        let e = self
            .last
            .entry(a.partition)
            .or_insert((a.offset, a.token.clone()));
        if a.offset > e.0 {
            *e = (a.offset, a.token);
        }
    }
}

/// Parses one input line and gives it a command id when it has none, so that
/// retrying its batch cannot apply it twice.
fn prepare_line(line: &str) -> Result<CommandRequest, (String, String)> {
    let mut v: Value = serde_json::from_str(line).map_err(|e| {
        (
            ErrorCode::InvalidJson.as_str().to_string(),
            format!("the line is not valid JSON: {e}"),
        )
    })?;
    if let Value::Object(map) = &mut v {
        if map.get("command_id").is_none_or(Value::is_null) {
            map.insert("command_id".into(), new_command_id().as_str().into());
        }
    }
    let command = Command::from_json(&v)
        .map_err(|e| (ErrorCode::from(&e).as_str().to_string(), e.to_string()))?;
    Ok(CommandRequest::from(&command))
}

async fn send(
    client: &Client,
    out: Output,
    file: &Path,
    batch_size: usize,
) -> Result<Exit, CliError> {
    let read_error = |source| CliError::Read {
        path: file.to_path_buf(),
        source,
    };
    let reader: Box<dyn AsyncBufRead + Unpin + Send> = if file == Path::new("-") {
        Box::new(BufReader::new(tokio::io::stdin()))
    } else {
        Box::new(BufReader::new(
            tokio::fs::File::open(file).await.map_err(read_error)?,
        ))
    };
    let mut lines = reader.lines();
    let mut summary = SendSummary::default();
    let mut batch: Vec<(u64, CommandRequest)> = Vec::with_capacity(batch_size);
    let mut number = 0u64;
    while let Some(line) = lines.next_line().await.map_err(read_error)? {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        match prepare_line(&line) {
            Ok(v) => batch.push((number, v)),
            Err((code, message)) => summary.invalid(number, &code, &message),
        }
        if batch.len() >= batch_size {
            send_batch(client, std::mem::take(&mut batch), &mut summary).await?;
        }
    }
    if !batch.is_empty() {
        send_batch(client, batch, &mut summary).await?;
    }
    summary.tokens = summary.last.values().map(|(_, t)| t.clone()).collect();
    out.result(&summary, || {
        let mut text = format!(
            "sent {} commands from {}: {} accepted, {} invalid",
            summary.lines,
            file.display(),
            summary.accepted,
            summary.invalid
        );
        for l in &summary.invalid_lines {
            text.push_str(&format!("\n  line {}: {}: {}", l.line, l.code, l.message));
        }
        if summary.invalid > summary.invalid_lines.len() as u64 {
            text.push_str(&format!(
                "\n  … and {} more",
                summary.invalid - summary.invalid_lines.len() as u64
            ));
        }
        if !summary.tokens.is_empty() {
            text.push_str(&format!("\ntokens: {}", summary.tokens.join(" ")));
        }
        text
    });
    Ok(if summary.invalid > 0 {
        Exit::Rejected
    } else {
        Exit::Success
    })
}

/// Sends one batch; items the ingest could not write yet (`log_unavailable`,
/// `overloaded`) are sent again, with the same command ids, until the retry window ends.
async fn send_batch(
    client: &Client,
    mut pending: Vec<(u64, CommandRequest)>,
    summary: &mut SendSummary,
) -> Result<(), CliError> {
    let deadline = Instant::now() + client.retry_for();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let values: Vec<CommandRequest> = pending.iter().map(|(_, v)| v.clone()).collect();
        let results = client.submit_batch(&values).await?;
        let mut again = Vec::new();
        let mut last_error = None;
        for ((line, value), result) in pending.into_iter().zip(results) {
            match result {
                Ok(a) => summary.accepted(a),
                Err(e) if matches!(e.code, ErrorCode::LogUnavailable | ErrorCode::Overloaded) => {
                    last_error = Some(e);
                    again.push((line, value));
                }
                Err(e) => summary.invalid(line, e.code.as_str(), &e.message),
            }
        }
        let Some(e) = last_error else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Unavailable {
                url: client.base_url(Service::Ingest).to_string(),
                code: e.code.to_string(),
                message: format!(
                    "{} (for {} commands of a batch; {} accepted so far)",
                    e.message,
                    again.len(),
                    summary.accepted
                ),
                waited_ms: client.retry_for().as_millis(),
            }
            .into());
        }
        tokio::time::sleep(backoff(attempt).min(deadline - now)).await;
        pending = again;
    }
}

async fn load(client: Arc<Client>, out: Output, args: LoadArgs) -> Result<Exit, CliError> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let prefix = args.prefix.unwrap_or_else(|| format!("load-{seed}"));
    let spec = WorkloadSpec {
        accounts: args.accounts,
        commands: args.commands,
        seed,
        prefix,
        transfers: args.transfers,
    };

    // Fail fast, and with exit 3, when a service is not there at all.
    client.ready(Service::Ingest).await?;
    if args.verify {
        client.ready(Service::Projector).await?;
        // The model starts from empty accounts: a run with the same prefix before would
        // make every balance differ.
        let first = AccountId::parse(&format!("{}-0", spec.prefix))
            .expect("the prefix forms valid account ids");
        match client.account(&first, None).await {
            Ok(_) => {
                return Err(CliError::Usage(format!(
                    "account {first} exists already (an earlier run with prefix {}?); \
                     --verify needs fresh accounts: pass another --seed or --prefix",
                    spec.prefix
                )))
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !out.json {
        println!(
            "load: {} accounts, then {} commands{}; seed {}, prefix {}, concurrency {}{}",
            spec.accounts,
            spec.commands,
            if spec.transfers > 0.0 {
                format!(" ({:.0} % transfers)", spec.transfers * 100.0)
            } else {
                String::new()
            },
            spec.seed,
            spec.prefix,
            args.concurrency,
            args.rate
                .map(|r| format!(", paced at {r}/s"))
                .unwrap_or_default()
        );
    }
    let opts = LoadOptions {
        spec,
        rate: args.rate,
        concurrency: args.concurrency as usize,
        verify: args.verify,
        progress: runner::progress_wanted(out.json),
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let report = runner::run(client, opts, &run_id).await?;
    out.result(&report, || load_text(&report));
    Ok(match &report.verify {
        Some(v) if !v.passed() => Exit::Mismatch,
        _ => Exit::Success,
    })
}

fn load_text(r: &LoadReport) -> String {
    let mut t = format!(
        "sent {} commands in {:.2} s: {} accepted, {:.0} accepted/s, {} retried",
        r.sent, r.elapsed_s, r.accepted, r.accepted_per_s, r.retried
    );
    if let Some(l) = &r.accept_latency {
        t.push_str(&format!("\naccept latency: {l}"));
    }
    if let Some(v) = &r.verify {
        t.push_str(&format!(
            "\nprojector caught up {:.2} s after the last accept",
            v.catch_up_ms as f64 / 1000.0
        ));
        match &v.visibility_lag {
            Some(l) => t.push_str(&format!("\nvisibility lag ({} samples): {l}", l.samples)),
            None => t.push_str("\nvisibility lag: no samples"),
        }
        if v.lag_samples_failed > 0 {
            t.push_str(&format!(" ({} samples failed)", v.lag_samples_failed));
        }
        if v.transfers_checked > 0 {
            t.push_str(&format!(
                "\n{} transfers settled {:.2} s after the catch-up",
                v.transfers_checked,
                v.settle_ms as f64 / 1000.0
            ));
        }
        if v.earlier_copies > 0 {
            t.push_str(&format!(
                "\n{} retried commands were found written earlier than their accepted position",
                v.earlier_copies
            ));
        }
        if v.mismatch_count == 0 {
            t.push_str(&format!(
                "\nverified {} accounts and {} commands against the model: no mismatch (0 lost, 0 applied twice)",
                v.accounts_checked, v.commands_checked
            ));
        } else {
            t.push_str(&format!(
                "\nMISMATCH: {} of {} accounts and {} commands differ from the model; the first {}:",
                v.mismatch_count,
                v.accounts_checked,
                v.commands_checked,
                v.mismatches.len()
            ));
            t.push_str(&format!(
                "\n{} accepted commands lost, {} events applied twice, {} transfers still pending",
                v.lost, v.applied_twice, v.still_pending
            ));
            for m in &v.mismatches {
                t.push_str(&format!(
                    "\n  {}: expected {}, got {}",
                    m.subject, m.expected, m.actual
                ));
            }
        }
        t.push_str(&format!("\n{}", money_line(&v.money)));
    }
    t
}

/// The money check of `--verify` in one line.
fn money_line(m: &MoneyCheck) -> String {
    let sums = if m.balance_sum == m.model_balance_sum {
        format!(
            "this run's balances sum to {}, as in the model",
            m.balance_sum
        )
    } else {
        format!(
            "this run's balances sum to {}, the model's to {}",
            m.balance_sum, m.model_balance_sum
        )
    };
    if m.ok {
        format!("money: conserved, every partition counted, nothing in flight; {sums}")
    } else {
        let yes_no = |b: bool| if b { "yes" } else { "NO" };
        format!(
            "MONEY WRONG: conserved {}, every partition counted {}, {} in pending transfers; {sums}",
            yes_no(m.conserved),
            yes_no(m.complete),
            m.pending_transfers_sum
        )
    }
}

#[cfg(test)]
mod tests;
