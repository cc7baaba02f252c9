//! Black-box tests of the `ledger` binary against real services: command-ingest and the
//! projector run in this process (one pair for the whole file, on a topic of its own,
//! with an auth token) on the real broker of `LEDGER_TEST_BROKERS`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{bare, closed_port_url, code, json, run, stderr, stdout, unique, Services};
use serde_json::Value;

/// The services of this file's tests, started once.
fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| Services::start("cli", None))
}

/// The binary, pointed at the services.
fn ledger() -> Command {
    services().ledger()
}

/// `ledger tail --from-beginning` of one partition of the services' topic, each line
/// parsed; the tail must exit 0.
fn tail_partition(s: &Services, partition: &str) -> Vec<Value> {
    let o = run(
        &mut bare(),
        &[
            "tail",
            "--from-beginning",
            "--partition",
            partition,
            "--brokers",
            &s.brokers,
            "--topic",
            &s.topic,
        ],
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
        .collect()
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

#[test]
fn usage_errors_exit_2_before_any_request() {
    // Pointed at a closed port: any request would make it exit 3 instead.
    let url = closed_port_url();
    for args in [
        &["deposit", "acc-1", "-5"][..],
        &["deposit", "acc-1", "1.5"],
        &["deposit", "acc-1", "0"],
        &["withdraw", "acc-1", "1000000000001"],
        &["open", "a b"],
        &["open"],
        &["open", "acc-1", "--command-id", "bad id"],
        &["status", ""],
        &["load", "--accounts", "0", "--commands", "1"],
        &["load", "--accounts", "1", "--commands", "1", "--rate", "0"],
        &[
            "load",
            "--accounts",
            "2",
            "--commands",
            "1",
            "--transfers",
            "1.5",
        ],
        &["transfer", "acc-1", "acc-1", "5"],
        &["transfer", "acc-1", "acc-2", "0"],
        &["transfer", "acc-1", "acc-2"],
        &["admin", "pause", "--partition", "-1"],
        &["admin", "parked", "skip", "a b"],
        &["admin", "rebuild", "now"],
        &["top", "--interval-ms", "0"],
        &["frobnicate"],
    ] {
        let o = run(
            bare()
                .arg("--ingest-url")
                .arg(&url)
                .arg("--projector-url")
                .arg(&url),
            args,
        );
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty());
    }
    let o = run(&mut bare(), &["--ingest-url", "not a url", "open", "a"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // With --json, a usage error is also the JSON document on stdout.
    let o = run(&mut bare(), &["--json", "withdraw", "acc-1", "1.5"]);
    assert_eq!(code(&o), 2);
    let v = json(&o);
    assert_eq!(v["error"]["code"], "usage");
    assert_eq!(v["exit_code"], 2);
}

#[test]
fn an_unreachable_service_exits_3_naming_the_url() {
    let url = closed_port_url();
    let o = run(
        bare().env("LEDGER_INGEST_URL", &url),
        &["deposit", "acc-1", "5"],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&url), "{err}");

    let o = run(
        bare().env("LEDGER_PROJECTOR_URL", &url),
        &["--json", "balance", "acc-1"],
    );
    assert_eq!(code(&o), 3);
    let v = json(&o);
    assert_eq!(v["exit_code"], 3);
    assert!(v["error"]["message"].as_str().unwrap().contains(&url));

    let o = run(
        bare().env("LEDGER_INGEST_URL", &url),
        &["load", "--accounts", "2", "--commands", "5"],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
}

#[test]
fn a_missing_or_wrong_token_is_refused() {
    let s = services();
    let o = run(
        bare().env("LEDGER_INGEST_URL", &s.ingest),
        &["open", &unique("acc")],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("unauthorized"), "{}", stderr(&o));
    let o = run(
        ledger().arg("--auth-token").arg("wrong"),
        &["balance", "acc-1"],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

#[test]
fn json_output_of_open_deposit_balance_and_status() {
    let acc = unique("acc");
    let cid = unique("cmd");
    let o = run(
        &mut ledger(),
        &["--json", "open", &acc, "--command-id", &cid],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let opened = json(&o);
    assert_eq!(
        keys(&opened),
        ["command_id", "event_id", "offset", "partition", "token"]
    );
    assert_eq!(opened["command_id"], cid.as_str());

    let o = run(&mut ledger(), &["--json", "deposit", &acc, "1250"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let deposited = json(&o);
    assert_eq!(keys(&deposited), keys(&opened));
    assert_eq!(deposited["partition"], opened["partition"]);
    let token = deposited["token"].as_str().unwrap();
    let generated = deposited["command_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    let o = run(
        &mut ledger(),
        &["--json", "balance", &acc, "--after", token],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let b = json(&o);
    assert_eq!(
        keys(&b),
        ["account_id", "applied_events", "balance", "open"]
    );
    assert_eq!(b["balance"], 1250);
    assert_eq!(b["open"], true);
    assert_eq!(b["applied_events"], 2);

    let o = run(&mut ledger(), &["--json", "status", &cid, "--after", token]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(
        keys(&s),
        [
            "account_id",
            "command_id",
            "offset",
            "partition",
            "reason",
            "status"
        ]
    );
    assert_eq!(s["status"], "applied");
    assert_eq!(s["reason"], Value::Null);
    assert_eq!(s["account_id"], acc.as_str());
    assert_eq!(s["offset"], opened["offset"]);

    // Human output of the same queries.
    let o = run(&mut ledger(), &["balance", &acc]);
    assert_eq!(
        stdout(&o).trim(),
        format!("{acc}: balance 1250 (open, 2 applied events)")
    );
    let o = run(&mut ledger(), &["status", &cid]);
    assert!(stdout(&o).starts_with(&format!("{cid}: applied on {acc}")));
}

#[test]
fn unknown_accounts_and_commands_exit_1() {
    let o = run(&mut ledger(), &["balance", &unique("nobody")]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("account_not_found"), "{}", stderr(&o));
    let o = run(&mut ledger(), &["--json", "status", &unique("nothing")]);
    assert_eq!(code(&o), 1);
    assert_eq!(json(&o)["error"]["code"], "command_not_found");
}

#[test]
fn wait_prints_the_outcome_and_the_balance_and_a_rejection_exits_1() {
    let acc = unique("acc");
    let o = run(&mut ledger(), &["open", &acc, "--wait"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("outcome: applied"), "{}", stdout(&o));

    let dep = unique("dep");
    let o = run(
        &mut ledger(),
        &["deposit", &acc, "1250", "--wait", "--command-id", &dep],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("outcome: applied"), "{out}");
    assert!(out.contains(&format!("{acc}: balance 1250")), "{out}");

    // The same command id again: accepted again, applied once.
    let o = run(
        &mut ledger(),
        &[
            "--json",
            "deposit",
            &acc,
            "1250",
            "--wait",
            "--command-id",
            &dep,
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["balance"], 1250);

    let o = run(&mut ledger(), &["withdraw", &acc, "5000", "--wait"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("rejected (insufficient_funds)"), "{out}");
    assert!(out.contains("balance 1250"), "{out}");

    let o = run(
        &mut ledger(),
        &["--json", "withdraw", &acc, "250", "--wait"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["status"], "applied");
    assert_eq!(v["balance"], 1000);
    assert_eq!(v["account_id"], acc.as_str());

    let o = run(
        &mut ledger(),
        &["--json", "deposit", &unique("never-opened"), "5", "--wait"],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["reason"], "account_not_open");
    assert_eq!(v["balance"], Value::Null);
}

#[test]
fn transfer_wait_prints_both_balances_and_a_refund_or_rejection_exits_1() {
    let (from, to) = (unique("from"), unique("to"));
    for acc in [&from, &to] {
        assert_eq!(code(&run(&mut ledger(), &["open", acc, "--wait"])), 0);
    }
    assert_eq!(
        code(&run(&mut ledger(), &["deposit", &from, "1000", "--wait"])),
        0
    );

    let o = run(&mut ledger(), &["transfer", &from, &from, "5"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("two accounts"), "{}", stderr(&o));

    let tid = unique("t");
    let o = run(
        &mut ledger(),
        &[
            "transfer",
            &from,
            &to,
            "300",
            "--wait",
            "--command-id",
            &tid,
        ],
    );
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "{out}\n{}", stderr(&o));
    assert!(
        out.contains(&format!("accepted transfer of 300 from {from} to {to}")),
        "{out}"
    );
    assert!(
        out.contains("outcome: applied, settled at partition"),
        "{out}"
    );
    assert!(out.contains(&format!("{from}: balance 700")), "{out}");
    assert!(out.contains(&format!("{to}: balance 300")), "{out}");

    let o = run(&mut ledger(), &["status", &tid, "--account", &from]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("applied on {from}"))
            && stdout(&o).contains(&format!("; transfer of 300 to {to}, settled at partition")),
        "{}",
        stdout(&o)
    );
    let o = run(&mut ledger(), &["--json", "status", &tid]);
    let v = json(&o);
    assert_eq!(v["transfer"]["to_account"], to.as_str());
    assert_eq!(v["transfer"]["amount"], 300);
    assert!(v["transfer"]["settled_at"]["offset"].is_i64());

    // To an account never opened: debited, then refunded.
    let ghost = unique("ghost");
    let o = run(
        &mut ledger(),
        &["--json", "transfer", &from, &ghost, "100", "--wait"],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["status"], "refunded");
    assert_eq!(v["reason"], "destination_not_open");
    assert_eq!(v["balance"], 700);
    assert_eq!(v["to_account"], ghost.as_str());
    assert_eq!(v["to_balance"], Value::Null);
    assert!(v["settled_at"]["partition"].is_i64(), "{v}");

    let o = run(&mut ledger(), &["transfer", &from, &to, "5000", "--wait"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("outcome: rejected (insufficient_funds)"),
        "{}",
        stdout(&o)
    );

    // The money of the whole topic: conserved, as always.
    let o = run(&mut ledger(), &["--json", "totals"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["conserved"], true);
    let o = run(&mut ledger(), &["totals"]);
    assert!(stdout(&o).contains("conserved: yes"), "{}", stdout(&o));
}

#[test]
fn load_with_transfers_verifies_every_settlement_and_the_money() {
    let o = run(
        &mut ledger(),
        &[
            "--json",
            "load",
            "--accounts",
            "10",
            "--commands",
            "300",
            "--transfers",
            "0.4",
            "--verify",
            "--prefix",
            &unique("lt"),
        ],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let v = json(&o);
    let verify = &v["verify"];
    assert_eq!(verify["mismatch_count"], 0, "{verify}");
    assert_eq!(verify["still_pending"], 0);
    assert!(
        verify["transfers_checked"].as_u64().unwrap() > 50,
        "{verify}"
    );
    assert_eq!(verify["money"]["ok"], true, "{verify}");
    assert_eq!(
        verify["money"]["balance_sum"],
        verify["money"]["model_balance_sum"]
    );
}

#[test]
fn send_reports_accepted_and_invalid_lines() {
    let acc = unique("send");
    let lines = [
        format!(r#"{{"type":"open_account","account_id":"{acc}"}}"#),
        format!(r#"{{"type":"deposit","account_id":"{acc}","amount":700}}"#),
        format!(r#"{{"type":"deposit","account_id":"{acc}","amount":-3}}"#),
        String::new(),
        format!(
            r#"{{"type":"withdraw","account_id":"{acc}","amount":200,"command_id":"{acc}-w"}}"#
        ),
    ];
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for l in &lines {
        writeln!(file, "{l}").unwrap();
    }
    let path = file.path().to_str().unwrap();

    let o = run(
        &mut ledger(),
        &["--json", "send", path, "--batch-size", "2"],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["lines"], 4);
    assert_eq!(v["accepted"], 3);
    assert_eq!(v["invalid"], 1);
    assert_eq!(v["invalid_lines"][0]["line"], 3);
    assert_eq!(v["invalid_lines"][0]["code"], "invalid_amount");
    let token = v["tokens"][0].as_str().unwrap();
    let o = run(
        &mut ledger(),
        &["--json", "balance", &acc, "--after", token],
    );
    assert_eq!(json(&o)["balance"], 500);

    // From stdin, human output; only the valid lines.
    let mut child = ledger()
        .args(["send", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}\n{}", lines[1], lines[4]).unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("sent 2 commands from -: 2 accepted, 0 invalid"),
        "{}",
        stdout(&o)
    );
    let token = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("tokens: "))
        .unwrap()
        .to_string();
    // The deposit had no command id: a new one, applied; the withdrawal's was kept:
    // a duplicate, applied once.
    let o = run(
        &mut ledger(),
        &["--json", "balance", &acc, "--after", &token],
    );
    assert_eq!(json(&o)["balance"], 1200);
}

#[test]
fn load_with_verify_exits_0_and_prints_its_figures() {
    let o = run(
        &mut ledger(),
        &[
            "load",
            "--accounts",
            "20",
            "--commands",
            "400",
            "--verify",
            "--seed",
            "7",
        ],
    );
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "{out}\n{}", stderr(&o));
    for needle in [
        "seed 7, prefix load-7",
        "420 accepted",
        "accepted/s",
        "accept latency: p50",
        "visibility lag (",
        "no mismatch",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }

    let o = run(
        &mut ledger(),
        &[
            "--json",
            "load",
            "--accounts",
            "5",
            "--commands",
            "60",
            "--verify",
            "--prefix",
            &unique("j"),
            "--concurrency",
            "4",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["sent"], 65);
    assert_eq!(v["accepted"], 65);
    assert!(v["accepted_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["accept_latency"]["p99_ms"].as_f64().is_some());
    assert_eq!(v["verify"]["mismatch_count"], 0);
    assert!(v["verify"]["visibility_lag"]["p50_ms"].as_f64().is_some());
    assert!(v["seed"].as_u64().is_some());
}

#[test]
fn load_verify_exits_1_when_the_projection_differs_from_the_model() {
    // An account the run will open was opened and funded before: the projector's
    // balance and the run's own open differ from what the run alone implies.
    let prefix = unique("m");
    let acc = format!("{prefix}-1");
    assert_eq!(code(&run(&mut ledger(), &["open", &acc, "--wait"])), 0);
    assert_eq!(
        code(&run(&mut ledger(), &["deposit", &acc, "777", "--wait"])),
        0
    );
    let o = run(
        &mut ledger(),
        &[
            "load",
            "--accounts",
            "3",
            "--commands",
            "30",
            "--seed",
            "9",
            "--prefix",
            &prefix,
            "--verify",
        ],
    );
    let out = stdout(&o);
    assert_eq!(code(&o), 1, "{out}\n{}", stderr(&o));
    assert!(out.contains("MISMATCH"), "{out}");
    assert!(out.contains(&format!("account {acc}: expected")), "{out}");
    let listed = out.lines().filter(|l| l.starts_with("  ")).count();
    assert!((1..=10).contains(&listed), "{out}");
}

#[test]
fn tail_prints_the_events_of_the_log_as_json_lines() {
    let s = services();
    let account = unique("tail");
    let o = run(&mut ledger(), &["--json", "open", &account]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let opened: Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = run(&mut ledger(), &["--json", "deposit", &account, "250"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let deposited: Value = serde_json::from_slice(&o.stdout).unwrap();
    let partition = opened["partition"].to_string();

    let lines = tail_partition(s, &partition);
    let ours: Vec<&Value> = lines
        .iter()
        .filter(|l| l["account_id"] == account.as_str())
        .collect();
    assert_eq!(ours.len(), 2, "{lines:?}");
    assert_eq!(ours[0]["type"], "ledger.account_opened.v1");
    assert_eq!(ours[0]["command_id"], opened["command_id"]);
    assert_eq!(ours[0]["event_id"], opened["event_id"]);
    assert_eq!(ours[0]["offset"], opened["offset"]);
    assert_eq!(ours[1]["type"], "ledger.deposited.v1");
    assert_eq!(ours[1]["amount"], 250);
    assert_eq!(ours[1]["offset"], deposited["offset"]);
    assert!(lines.iter().all(|l| l["partition"] == opened["partition"]));

    // A transfer to an account never opened: the transfer and the projector's refund
    // land in the source's partition, each with its other account.
    let o = run(
        &mut ledger(),
        &[
            "--json",
            "transfer",
            &account,
            &unique("nobody"),
            "50",
            "--wait",
        ],
    );
    assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stderr));
    let refunded: Value = serde_json::from_slice(&o.stdout).unwrap();
    let lines: Vec<Value> = tail_partition(s, &partition)
        .into_iter()
        .filter(|l| l["account_id"] == account.as_str())
        .collect();
    let transfer = lines
        .iter()
        .find(|l| l["offset"] == refunded["offset"])
        .expect("the transfer's event");
    assert_eq!(transfer["to_account"], refunded["to_account"]);
    assert_eq!(transfer["amount"], 50);
    let refund = lines
        .iter()
        .find(|l| l["offset"] == refunded["settled_at"]["offset"])
        .expect("the refund's event");
    assert_eq!(refund["to_account"], refunded["to_account"]);
    assert_eq!(refund["reason"], "destination_not_open");
    assert_eq!(refund["command_id"], transfer["command_id"]);

    let o = run(
        &mut bare(),
        &[
            "tail",
            "--partition",
            "999",
            "--brokers",
            &s.brokers,
            "--topic",
            &s.topic,
        ],
    );
    assert_eq!(code(&o), 2, "a partition the topic lacks is a usage error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no partition 999"));
}
