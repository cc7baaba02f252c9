//! The fault suite: each case drives a real load through `ledger load --verify` against
//! the real binaries and a real broker while one fault strikes, and then requires that
//! every command that got a 202 is in the state exactly once and that no balance or
//! command status differs from the model.

use ledger_faults::scenario::{run, Fault, LoadSpec};
use ledger_faults::{repo_root, summary, Bins, OwnBroker};

/// The cases run one at a time: each already runs several processes on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn case(fault: Fault, spec: LoadSpec, own_broker_port: Option<u16>) {
    let _serial = SERIAL.lock().await;
    let brokers = ledger_testkit::brokers();
    let bins = Bins::locate().expect("the service binaries are built");
    let topic = ledger_testkit::unique_topic("fault");
    let dir = tempfile::tempdir().unwrap();
    let own = own_broker_port.map(|port| OwnBroker::start(&repo_root(), port).unwrap());
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
async fn broker_stopped_for_seconds_during_the_load() {
    case(
        Fault::BrokerOutage(5),
        LoadSpec {
            accounts: 30,
            commands: 5000,
            rate: 800,
            seed: 12,
        },
        Some(19592),
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
async fn a_second_projector_joins_the_group_and_leaves() {
    case(
        Fault::SecondProjector,
        LoadSpec {
            accounts: 40,
            commands: 8000,
            rate: 1000,
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
