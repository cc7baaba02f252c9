//! The fault suite: each case drives a real load through `ledger load --verify` against
//! the real binaries and a real broker while one fault strikes, and then requires that
//! every command that got a 202 is in the state exactly once and that no balance or
//! command status differs from the model.

use ledger_faults::scenario::{run, Fault, LoadSpec};
use ledger_faults::{repo_root, summary, Bins, OwnBroker};

/// The cases run one at a time: each already runs several processes on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A broker (or cluster) of the case's own: its first port and how many brokers.
type Own = Option<(u16, u8)>;

async fn case(fault: Fault, spec: LoadSpec, own_broker: Own) {
    let _serial = SERIAL.lock().await;
    let brokers = ledger_testkit::brokers();
    let bins = Bins::locate().expect("the service binaries are built");
    let topic = ledger_testkit::unique_topic("fault");
    let dir = tempfile::tempdir().unwrap();
    let own = own_broker
        .map(|(port, nodes)| OwnBroker::start_cluster(&repo_root(), port, nodes).unwrap());
    let r = run(
        fault,
        &bins,
        &brokers,
        own.as_ref(),
        &topic,
        dir.path(),
        spec,
    )
    .await
    .unwrap_or_else(|e| panic!("{fault}: {e:#}"));
    assert_eq!(
        r.accepted,
        u64::from(spec.accounts + spec.commands),
        "{fault}: {}",
        summary(&r)
    );
    assert_eq!(
        (r.lost, r.applied_twice, r.mismatches),
        (0, 0, 0),
        "{fault}: {}",
        summary(&r)
    );
    assert!(
        r.money_conserved && r.transfers > 0,
        "{fault}: transfers in the mix, money conserved: {}",
        summary(&r)
    );
    eprintln!(
        "{fault}: {}{}",
        summary(&r),
        r.recovery_s
            .map(|s| format!(
                "; every new command got a 202 from {s:.1} s after the brokers were back"
            ))
            .unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_killed_five_times_under_load() {
    case(
        Fault::KillProjector(5),
        LoadSpec {
            accounts: 40,
            commands: 8000,
            rate: 1200,
            seed: 11,
        },
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_aborted_between_writing_transfer_follow_ups_and_storing_them() {
    case(
        Fault::CrashAfterFollowUps(3),
        LoadSpec {
            accounts: 40,
            commands: 6000,
            rate: 1000,
            seed: 17,
        },
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_for_seconds_during_the_load() {
    case(
        Fault::BrokerOutage(5),
        LoadSpec {
            accounts: 30,
            commands: 5000,
            rate: 800,
            seed: 12,
        },
        Some((19592, 1)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_and_restarted_during_the_load() {
    case(
        Fault::KillIngest(2),
        LoadSpec {
            accounts: 30,
            commands: 5000,
            rate: 1000,
            seed: 13,
        },
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_join_leave_and_are_killed_in_a_group_of_three() {
    case(
        Fault::GroupOfThree,
        LoadSpec {
            accounts: 40,
            commands: 20000,
            rate: 1500,
            seed: 14,
        },
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_disk_fills_up_and_the_space_comes_back() {
    case(
        Fault::DiskFull,
        LoadSpec {
            accounts: 50,
            commands: 12000,
            rate: 3000,
            seed: 15,
        },
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_mixed_into_a_live_load() {
    case(
        Fault::Poison(25),
        LoadSpec {
            accounts: 30,
            commands: 5000,
            rate: 1500,
            seed: 16,
        },
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_frozen_longer_than_the_delivery_timeout_with_commands_in_flight() {
    case(
        Fault::BrokerFrozen(8),
        LoadSpec {
            accounts: 30,
            commands: 6000,
            rate: 600,
            seed: 17,
        },
        Some((19492, 1)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_ten_broker_restarts_under_load() {
    case(
        Fault::BrokerRestartStorm(10),
        LoadSpec {
            accounts: 30,
            commands: 12000,
            rate: 300,
            seed: 18,
        },
        Some((19592, 1)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_of_a_busy_partition_killed_then_a_second_broker_down_on_three_brokers() {
    case(
        Fault::LeaderKilled,
        LoadSpec {
            accounts: 30,
            commands: 12000,
            rate: 400,
            seed: 19,
        },
        Some((19792, 3)),
    )
    .await;
}
