//! Unit tests of `commands`.

use super::*;

#[test]
fn a_transfer_still_pending_after_the_wait_exits_3_and_says_how_to_look_again() {
    let e = CliError::StillPending {
        command_id: CommandId::parse("t-1").unwrap(),
        account: AccountId::parse("acc-1").unwrap(),
        to: AccountId::parse("acc-2").unwrap(),
        waited_s: 30,
    };
    assert_eq!(e.exit_code(), 3);
    assert_eq!(e.code(), "still_pending");
    let text = e.to_string();
    assert!(text.contains("still pending after 30 s"), "{text}");
    assert!(text.contains("ledger status t-1 --account acc-1"), "{text}");
}

#[test]
fn the_money_line_names_what_is_wrong() {
    let mut m = MoneyCheck {
        conserved: true,
        complete: true,
        pending_transfers_sum: 0,
        balance_sum: 70,
        model_balance_sum: 70,
        ok: true,
    };
    assert_eq!(
        money_line(&m),
        "money: conserved, every partition counted, nothing in flight; \
         this run's balances sum to 70, as in the model"
    );
    m.pending_transfers_sum = 30;
    m.model_balance_sum = 100;
    m.ok = false;
    assert_eq!(
        money_line(&m),
        "MONEY WRONG: conserved yes, every partition counted yes, 30 in pending transfers; \
         this run's balances sum to 70, the model's to 100"
    );
}

#[test]
fn lines_without_a_command_id_get_one() {
    let id = |line: &str| Command::from(prepare_line(line).unwrap()).command_id;
    assert!(id(r#"{"type":"deposit","account_id":"a","amount":5}"#).is_some());
    assert!(id(r#"{"type":"open_account","account_id":"a","command_id":null}"#).is_some());
    assert_eq!(
        id(r#"{"type":"open_account","account_id":"a","command_id":"mine"}"#),
        Some(CommandId::parse("mine").unwrap())
    );
}

#[test]
fn invalid_lines_carry_the_contract_code() {
    let code = |l: &str| prepare_line(l).unwrap_err().0;
    assert_eq!(code("{"), "invalid_json");
    assert_eq!(code("[1]"), "invalid_json");
    assert_eq!(
        code(r#"{"type":"deposit","account_id":"a","amount":1.5}"#),
        "invalid_amount"
    );
    assert_eq!(
        code(r#"{"type":"close","account_id":"a"}"#),
        "unknown_command"
    );
}

#[test]
fn the_summary_keeps_the_last_token_per_partition_and_the_first_invalid_lines() {
    let mut s = SendSummary::default();
    let acc = |p, o| Accepted {
        command_id: CommandId::parse("c").unwrap(),
        event_id: uuid::Uuid::nil(),
        partition: p,
        offset: o,
        token: format!("v1.{p}.{o}"),
    };
    s.accepted(acc(1, 5));
    s.accepted(acc(1, 3));
    s.accepted(acc(0, 9));
    assert_eq!(s.last[&1].1, "v1.1.5");
    assert_eq!(s.last[&0].1, "v1.0.9");
    for i in 0..15 {
        s.invalid(i, "invalid_json", "x");
    }
    assert_eq!(s.invalid, 15);
    assert_eq!(s.invalid_lines.len(), MAX_INVALID_LISTED);
}
