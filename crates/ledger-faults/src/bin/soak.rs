//! `soak`: the fault suite's faults in a random loop for as long as asked, each round a
//! fresh stack with a verified load, a fifth of it transfers. Ends with a table of faults
//! injected, commands accepted (and transfers among them), lost, applied twice and rounds
//! whose money was not conserved, and exits 1 unless the last three are 0 and every round
//! verified. Run it through `scripts/soak.sh --minutes N`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use ledger_faults::scenario::{run, Fault, LoadSpec};
use ledger_faults::{repo_root, Bins, OwnBroker};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Runs the faults in a random loop.
#[derive(Parser, Debug)]
#[command(name = "soak")]
struct Args {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 20)]
    minutes: u64,
    /// Port of the broker the soak starts (and stops) for itself.
    #[arg(long, default_value_t = 19692)]
    kafka_port: u16,
    /// First port of the three-broker cluster the soak starts for the leader kill
    /// (three brokers and their controller on four consecutive ports).
    #[arg(long, default_value_t = 19792)]
    cluster_port: u16,
    /// Seed of the fault sequence; random when absent.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Default)]
struct Tally {
    rounds: u64,
    accepted: u64,
    transfers: u64,
    lost: u64,
    applied_twice: u64,
    /// Rounds whose money was not conserved (or left in flight).
    money_wrong: u64,
    failed: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let bins = Bins::locate()?;
    let broker = OwnBroker::start(&repo_root(), args.kafka_port)?;
    let cluster = OwnBroker::start_cluster(&repo_root(), args.cluster_port, 3)?;
    let brokers = broker.brokers();
    let deadline = Instant::now() + Duration::from_secs(args.minutes * 60);
    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    eprintln!("soak: {} min, seed {seed}, broker {brokers}", args.minutes);

    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        let fault = match rng.random_range(0..10) {
            9 => Fault::CrashAfterFollowUps(rng.random_range(1..=3)),
            5 => Fault::Poison(rng.random_range(1..=50)),
            0 => Fault::KillProjector(rng.random_range(1..=5)),
            1 => Fault::KillIngest(rng.random_range(1..=3)),
            2 => Fault::BrokerOutage(rng.random_range(3..=10)),
            3 => Fault::GroupOfThree,
            6 => Fault::BrokerFrozen(rng.random_range(4..=12)),
            7 => Fault::BrokerRestartStorm(rng.random_range(2..=10)),
            8 => Fault::LeaderKilled,
            _ => Fault::DiskFull,
        };
        let own = if fault == Fault::LeaderKilled {
            &cluster
        } else {
            &broker
        };
        let spec = LoadSpec {
            accounts: rng.random_range(20..=80),
            commands: rng.random_range(4000..=12000),
            rate: rng.random_range(800..=2500),
            seed: rng.random(),
        };
        let dir = tempfile::tempdir()?;
        let topic = format!("soak.{seed}.{round}");
        let started = Instant::now();
        let t = tally.entry(kind(fault).to_string()).or_default();
        t.rounds += 1;
        match run(fault, &bins, &brokers, Some(own), &topic, dir.path(), spec).await {
            Ok(r) => {
                t.accepted += r.accepted;
                t.transfers += r.transfers;
                t.lost += r.lost;
                t.applied_twice += r.applied_twice;
                t.money_wrong += u64::from(!r.money_conserved);
                eprintln!(
                    "round {round}: {fault}, {} commands at {}/s: accepted {} ({} transfers), lost {}, applied twice {}, money {}{} ({:.0} s)",
                    spec.accounts + spec.commands, spec.rate, r.accepted, r.transfers, r.lost, r.applied_twice,
                    if r.money_conserved { "conserved" } else { "NOT conserved" },
                    r.recovery_s.map(|s| format!(", every new command got a 202 from {s:.1} s after the brokers were back")).unwrap_or_default(),
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                t.failed += 1;
                eprintln!("round {round}: {fault}: FAILED: {e:#}");
                failures.push(format!("round {round} ({fault}): {e:#}"));
                // Keep the evidence.
                let kept = dir.keep();
                eprintln!("  logs kept in {}", kept.display());
            }
        }
    }

    let total = tally.values().fold(Tally::default(), |mut a, t| {
        a.rounds += t.rounds;
        a.accepted += t.accepted;
        a.transfers += t.transfers;
        a.lost += t.lost;
        a.applied_twice += t.applied_twice;
        a.money_wrong += t.money_wrong;
        a.failed += t.failed;
        a
    });
    println!(
        "\nsoak: {} min, seed {seed}, {} rounds\n",
        args.minutes, total.rounds
    );
    println!("| fault | injected | commands accepted | of which transfers | lost | applied twice | money not conserved | rounds failed |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, t) in tally.iter().chain([(&"total".to_string(), &total)]) {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            t.rounds, t.accepted, t.transfers, t.lost, t.applied_twice, t.money_wrong, t.failed
        );
    }
    for f in &failures {
        println!("\n{f}");
    }
    if total.lost > 0 || total.applied_twice > 0 || total.money_wrong > 0 || total.failed > 0 {
        // `exit` runs no destructors: stop the brokers this soak started first.
        drop(broker);
        drop(cluster);
        std::process::exit(1);
    }
    Ok(())
}

fn kind(f: Fault) -> &'static str {
    match f {
        Fault::KillProjector(_) => "projector SIGKILL",
        Fault::KillIngest(_) => "ingest SIGKILL",
        Fault::CrashAfterFollowUps(_) => "abort between follow-ups and store",
        Fault::BrokerOutage(_) => "broker outage",
        Fault::BrokerFrozen(_) => "broker frozen",
        Fault::BrokerRestartStorm(_) => "broker restart storm",
        Fault::LeaderKilled => "leader killed (3 brokers)",
        Fault::GroupOfThree => "group of three: join, leave, kill",
        Fault::DiskFull => "disk full",
        Fault::Poison(_) => "poison events",
    }
}
