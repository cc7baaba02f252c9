//! Unit tests of `records`.

use super::*;
use ledger_domain::REJECTIONS;

#[test]
fn every_status_has_its_own_byte_and_comes_back() {
    let mut seen = std::collections::HashSet::new();
    let all = [CommandStatus::Applied, CommandStatus::Pending]
        .into_iter()
        .chain(REJECTIONS.iter().map(|r| CommandStatus::Rejected(*r)))
        .chain(REJECTIONS.iter().map(|r| CommandStatus::Refunded(*r)));
    for s in all {
        assert!(seen.insert(status_byte(s)), "{s:?} shares its byte");
        assert_eq!(status_of_byte(status_byte(s)), Some(s));
    }
}

#[test]
fn records_are_compact_and_round_trip() {
    let s = AccountState {
        open: true,
        balance: i64::MAX,
        applied_events: 7,
    };
    assert_eq!(decode_account("t", b"a", &encode_account(&s)).unwrap(), s);
    let uuid = CommandId::from_uuid_bits(0x0192_3d4e_5f60_7a8b_9cad_bedf_0011_2233);
    let acc = AccountId::parse("acc-1").unwrap();
    assert_eq!(command_prefix(&uuid).len(), 18);
    let key = command_key(&acc, &uuid);
    let rec = encode_command(&CommandRecord {
        status: CommandStatus::Rejected(Rejection::InsufficientFunds),
        account_id: acc.clone(),
        offset: 41,
        time_ms: 9,
        transfer: None,
        kept_from_ms: 11,
    });
    assert_eq!(rec.len(), 25);
    let back = decode_command("t", 2, 18, &key, &rec).unwrap();
    assert_eq!(back.account_id, acc);
    assert_eq!(
        (
            back.partition,
            back.offset,
            back.event_time_ms,
            back.kept_from_ms
        ),
        (2, 41, 9, 11)
    );
    assert_eq!(
        back.status,
        CommandStatus::Rejected(Rejection::InsufficientFunds)
    );
}

#[test]
fn expiry_entries_sort_by_time_and_name_their_record() {
    let key = follow_up_key(42);
    let times = [i64::MIN, -1, 0, 1, 1_767_225_600_000, i64::MAX];
    let keys: Vec<_> = times.iter().map(|&t| expiry_key(t, &key)).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "sorted as the times are"
    );
    for (t, k) in times.iter().zip(&keys) {
        assert_eq!(decode_expiry_key("t", k).unwrap(), (*t, &key[..]));
    }
    assert_eq!(follow_up_of_key(&key), Some(42));
    assert!(decode_expiry_key("t", b"x1234").is_err());
}

#[test]
fn transfer_records_round_trip() {
    let acc = AccountId::parse("acc-1").unwrap();
    let id = CommandId::parse("t-1").unwrap();
    let key = command_key(&acc, &id);
    for settled_at in [
        None,
        Some(Position {
            partition: 4,
            offset: 17,
        }),
    ] {
        let record = CommandRecord {
            status: CommandStatus::Pending,
            account_id: acc.clone(),
            offset: 3,
            time_ms: 5,
            transfer: Some(TransferRecord {
                to: AccountId::parse("acc-2").unwrap(),
                amount: Amount::new(500).unwrap(),
                settled_at,
            }),
            kept_from_ms: -7,
        };
        let back = decode_command(
            "t",
            1,
            command_prefix(&id).len(),
            &key,
            &encode_command(&record),
        );
        assert_eq!(back.unwrap().into_record(), record);
    }
    let f = FollowUpRecord {
        offset: 12,
        outcome: Err(Rejection::DestinationNotOpen),
    };
    assert_eq!(
        decode_follow_up("t", b"f", &encode_follow_up(&f)).unwrap(),
        f
    );
    let t = Totals {
        balance_sum: -3,
        deposits: u128::MAX,
        withdrawals: 1,
        debited: 2,
        credited: 3,
        refunded: 4,
    };
    assert_eq!(decode_totals("t", &encode_totals(&t)).unwrap(), t);
}

#[test]
fn parked_records_round_trip_and_keys_sort_by_offset() {
    let m = ParkMark {
        first_offset: 7,
        waiting: 3,
        reason: "unknown event type 100".into(),
    };
    assert_eq!(
        decode_park_mark("t", b"K", &encode_park_mark(&m)).unwrap(),
        m
    );
    for e in [
        ParkEntry::Unreadable(vec![0xEB, 9]),
        ParkEntry::Waiting(vec![1, 2]),
    ] {
        assert_eq!(
            decode_park_entry("t", b"k", &encode_park_entry(&e)).unwrap(),
            e
        );
    }
    let acc = AccountId::parse("acc-1").unwrap();
    let (a, b) = (park_entry_key(&acc, 9), park_entry_key(&acc, 300));
    assert!(a < b && a.starts_with(&park_entry_prefix(&acc)));
    assert_eq!(park_entry_offset("t", &b).unwrap(), 300);
    // "acc-1" never shares a prefix with "acc-10".
    let longer = park_entry_prefix(&AccountId::parse("acc-10").unwrap());
    assert!(!longer.starts_with(&park_entry_prefix(&acc)));
    assert!(decode_park_mark("t", b"K", &[0; 15]).is_err());
    let released = Released {
        events: vec![(4, vec![1, 2]), (9, vec![])],
        skipped: Some(crate::Skipped {
            partition: 2,
            offset: 3,
            account_id: acc.clone(),
            payload: vec![0xEB, 9],
            reason: "unknown event type 100".into(),
        }),
    };
    let bytes = encode_released(&released);
    assert_eq!(decode_released("t", b"u", &bytes).unwrap(), released);
    assert!(decode_released("t", b"u", &bytes[..bytes.len() - 1]).is_err());
    assert_eq!(
        decode_released("t", b"u", &encode_released(&Released::default())).unwrap(),
        Released::default()
    );
    assert!(decode_park_entry("t", b"k", &[7]).is_err());
}

#[test]
fn tree_names_carry_their_generation() {
    assert_eq!(
        tree_generation("t", partition_tree_name("t", 3).as_bytes()),
        Some((3, 0))
    );
    assert_eq!(
        tree_generation("t", generation_tree_name("t", 3, 2).as_bytes()),
        Some((3, 2))
    );
    assert_eq!(
        tree_generation("u", generation_tree_name("t", 3, 2).as_bytes()),
        None
    );
    assert!(is_state_key(b"acc") && is_state_key(TOTALS_KEY) && !is_state_key(OFFSET_KEY));
    assert!(
        !is_state_key(EMITTED_KEY) && !is_state_key(DIGEST_KEY) && !is_state_key(PARKED_COUNT_KEY)
    );
}

#[test]
fn command_ids_are_self_delimiting() {
    // "ab" + account "c" and "abc" + account "" must never share a key, nor may a
    // text id collide with a UUID one.
    let acc = AccountId::parse("x").unwrap();
    let ab = command_key(&acc, &CommandId::parse("ab").unwrap());
    let abc = command_key(&acc, &CommandId::parse("abc").unwrap());
    assert!(!abc.starts_with(&command_prefix(&CommandId::parse("ab").unwrap())));
    assert_ne!(ab, abc);
}

#[test]
fn damaged_values_are_errors_not_panics() {
    assert!(decode_account("t", b"a", &[1, 2, 3]).is_err());
    assert!(decode_account("t", b"a", &[9; 17]).is_err());
    assert!(decode_command("t", 0, 1, b"cx", &[200; 17]).is_err());
    assert!(decode_command("t", 0, 1, b"cx", &[0; 20]).is_err());
    assert!(decode_follow_up("t", b"f", &[0; 8]).is_err());
    assert!(decode_totals("t", &[0; 95]).is_err());
    assert!(decode_offset("t", &[1]).is_err());
}
