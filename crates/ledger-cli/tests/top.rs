//! Black-box tests of `ledger top`: run in a pseudo-terminal, its screen read through a
//! terminal emulator (`vt100`) as a person would see it; and with stdout piped, its
//! plain table. Against command-ingest and the projector served in this process on the
//! real broker, on a topic of their own with [`PARTITIONS`] partitions, which holds only
//! the events [`loaded`] sends, so that every applied offset is known.
//!
//! `LEDGER_TOP_CAPTURE=FILE cargo test -p ledger-cli --test top -- --ignored capture`
//! writes the screen of a run under load to FILE, for the README.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{bare, closed_port_url, code, json, run, stderr, stdout, unique, Services};
use portable_pty::{CommandBuilder, PtySize};

/// Partitions of the topic.
const PARTITIONS: i32 = 3;
/// Accounts opened, and funded, before any test runs: two events each.
const ACCOUNTS: usize = 6;
/// The terminal's size.
const ROWS: u16 = 30;
const COLS: u16 = 100;
/// How long the screen may take to show what is expected.
const SCREEN_WAIT: Duration = Duration::from_secs(30);
/// How long `ledger top` may take to exit once told to.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// The services, with the events the tests expect already sent and applied.
struct Loaded {
    services: Services,
    /// Per partition, the offset after its last event: what the projector's applied
    /// offset must reach.
    ends: BTreeMap<i32, i64>,
}

impl Loaded {
    fn events(&self) -> i64 {
        self.ends.values().sum()
    }
}

/// Starts the services once and sends, through the binary, an open and a deposit for
/// each of [`ACCOUNTS`] accounts, the deposit with `--wait` so that the projector has
/// applied the account's events when it returns.
fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        let services = Services::start("top", Some(PARTITIONS));
        let mut ends: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
        let mut events = 0;
        for _ in 0..ACCOUNTS {
            let acc = unique("top");
            for args in [
                vec!["--json", "open", &acc],
                vec!["--json", "deposit", &acc, "100", "--wait"],
            ] {
                let o = run(&mut services.ledger(), &args);
                assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
                let v = json(&o);
                let (p, offset) = (
                    v["partition"].as_i64().unwrap(),
                    v["offset"].as_i64().unwrap(),
                );
                let end = ends.get_mut(&(p as i32)).unwrap();
                *end = (*end).max(offset + 1);
                events += 1;
            }
        }
        // A fresh topic written only here: the offsets are 0, 1, 2… in each partition.
        assert_eq!(ends.values().sum::<i64>(), events, "{ends:?}");
        Loaded { services, ends }
    })
}

/// Taken by the tests that read the partitions as [`loaded`] left them, and by the one
/// that pauses and rebuilds, so that neither sees the other's doing.
fn steady() -> std::sync::MutexGuard<'static, ()> {
    static STEADY: Mutex<()> = Mutex::new(());
    // A test that failed holding it poisoned it; the others still run.
    STEADY.lock().unwrap_or_else(|e| e.into_inner())
}

/// `ledger` running in a pseudo-terminal, its output fed to a terminal emulator.
struct Terminal {
    screen: Arc<Mutex<vt100::Parser>>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    keys: Box<dyn Write + Send>,
    // The pty itself: dropping it would hang the child up.
    _master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Terminal {
    /// Runs the binary with `args` and `env` (and none of the test's own `LEDGER_*`)
    /// in a [`ROWS`] x [`COLS`] terminal.
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Terminal {
        let pair = portable_pty::native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("a pseudo-terminal opens");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_ledger"));
        cmd.args(args);
        for var in common::LEDGER_VARS {
            cmd.env_remove(var);
        }
        cmd.env("TERM", "xterm-256color");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = pair.slave.spawn_command(cmd).expect("the binary starts");
        // Only the child holds the terminal's other end now: when it exits, reading
        // ends.
        drop(pair.slave);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            nonzero(ROWS),
            nonzero(COLS),
            0,
        )));
        let mut output = pair.master.try_clone_reader().unwrap();
        let feed = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = output.read(&mut buf) {
                feed.lock().unwrap().process(&buf[..n]);
            }
        });
        let keys = pair.master.take_writer().unwrap();
        Terminal {
            screen,
            child,
            keys,
            _master: pair.master,
        }
    }

    /// The screen, one string per row.
    fn rows(&self) -> Vec<String> {
        self.screen.lock().unwrap().screen().rows(0, COLS).collect()
    }

    /// Reads the screen until `check` finds what it waits for; past [`SCREEN_WAIT`],
    /// panics showing the last screen.
    fn wait_for<T>(&self, what: &str, mut check: impl FnMut(&[String]) -> Option<T>) -> T {
        ledger_testkit::retry_blocking(what, SCREEN_WAIT, || {
            let rows = self.rows();
            check(&rows).ok_or_else(|| format!("the screen:\n{}", rows.join("\n")))
        })
    }

    fn press(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits up to [`EXIT_WAIT`] for the process to exit; its exit code.
    fn exit_code(&mut self) -> u32 {
        let child = &mut self.child;
        ledger_testkit::retry_blocking("ledger top to exit", EXIT_WAIT, || match child.try_wait() {
            Ok(Some(status)) => Ok(status.exit_code()),
            Ok(None) => Err("still running".to_string()),
            Err(e) => Err(e.to_string()),
        })
    }

    fn in_alternate_screen(&self) -> bool {
        self.screen.lock().unwrap().screen().alternate_screen()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // A failed test leaves nothing running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn nonzero(n: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(n).expect("a terminal has rows and columns")
}

/// The words of the partition table's row of `partition` on a screen (borders left
/// out): partition, owner, role, applied, high watermark, lag, apply rate[, PAUSED].
fn partition_row(rows: &[String], partition: i32) -> Option<Vec<String>> {
    let wanted = partition.to_string();
    rows.iter()
        .map(|l| {
            l.trim_matches(|c: char| c == '│' || c.is_whitespace())
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|words| words.len() >= 7 && words[0] == wanted)
}

/// Every partition's applied offset as the screen (or the plain table) shows it, once
/// every partition's row is there.
fn applied_offsets(rows: &[String]) -> Option<BTreeMap<i32, i64>> {
    (0..PARTITIONS)
        .map(|p| Some((p, partition_row(rows, p)?[3].parse().ok()?)))
        .collect()
}

fn top_args(interval_ms: &str) -> Vec<&str> {
    vec!["top", "--interval-ms", interval_ms]
}

fn env_of(s: &Services) -> Vec<(&'static str, &str)> {
    vec![
        ("LEDGER_INGEST_URL", s.ingest.as_str()),
        ("LEDGER_PROJECTOR_URL", s.projector.as_str()),
        ("LEDGER_AUTH_TOKEN", common::TOKEN),
    ]
}

#[test]
fn top_shows_every_partition_with_its_applied_offset_and_q_quits() {
    let l = loaded();
    let _steady = steady();
    let mut term = Terminal::spawn(&top_args("300"), &env_of(&l.services));
    // One screen that shows it all: every partition applied to its end, and the ingest's
    // count, which is this topic's alone.
    let accepted = format!(" ingest accept 0.0/s, {} accepted ", l.events());
    let rows = term.wait_for("every partition at its last event", |rows| {
        let caught_up = applied_offsets(rows)? == l.ends;
        let counted = rows.iter().any(|r| r.contains(&accepted));
        (caught_up && counted).then(|| rows.to_vec())
    });
    let screen = rows.join("\n");
    let applied = applied_offsets(&rows).unwrap();
    assert_eq!(applied.values().sum::<i64>(), l.events(), "{screen}");
    assert_eq!(l.events(), 2 * ACCOUNTS as i64);
    assert!(term.in_alternate_screen(), "drawn on the alternate screen");
    assert!(
        rows[0].contains(&format!(
            "topic {}  total lag 0  1 instance",
            l.services.topic
        )),
        "{screen}"
    );
    for p in 0..PARTITIONS {
        let row = partition_row(&rows, p).unwrap();
        assert_eq!(row[2], "owner", "{screen}");
        assert_eq!(row[3], row[4], "applied up to the high watermark: {screen}");
        assert_eq!(row[5], "0", "no lag: {screen}");
    }
    assert!(screen.contains("parked accounts"), "{screen}");

    term.press("q");
    assert_eq!(term.exit_code(), 0);
    assert!(!term.in_alternate_screen(), "the terminal was restored");
}

#[test]
fn top_shows_services_that_do_not_answer_and_esc_quits() {
    let (projector, ingest) = (closed_port_url(), closed_port_url());
    let mut term = Terminal::spawn(
        &top_args("200"),
        &[
            ("LEDGER_INGEST_URL", &ingest),
            ("LEDGER_PROJECTOR_URL", &projector),
        ],
    );
    term.wait_for("both services shown unreachable", |rows| {
        let screen = rows.join("\n");
        (screen.contains("projector unreachable")
            && screen.contains(&projector)
            && screen.contains("ingest unreachable"))
        .then_some(())
    });
    term.press("\x1b");
    assert_eq!(term.exit_code(), 0);
}

#[test]
fn top_ends_on_sigterm_and_restores_the_terminal() {
    let url = closed_port_url();
    let mut term = Terminal::spawn(
        &top_args("200"),
        &[("LEDGER_INGEST_URL", &url), ("LEDGER_PROJECTOR_URL", &url)],
    );
    term.wait_for("the view drawn", |rows| {
        rows.iter()
            .any(|r| r.contains("projector unreachable"))
            .then_some(())
    });
    assert!(term.in_alternate_screen());
    let pid = term.child.process_id().expect("the child has a pid");
    let o = run(
        &mut std::process::Command::new("kill"),
        &["-TERM", &pid.to_string()],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(term.exit_code(), 0);
    assert!(!term.in_alternate_screen(), "the terminal was restored");
}

#[test]
fn top_piped_prints_one_table_of_every_partition_and_exits_0() {
    let l = loaded();
    let _steady = steady();
    let o = run(l.services.ledger().stdin(Stdio::null()), &top_args("200"));
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "{out}\n{}", stderr(&o));
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    assert!(
        lines[0].starts_with(&format!(
            "topic {}  total lag 0  1 instance  ",
            l.services.topic
        )),
        "{out}"
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "PARTITION",
            "OWNER",
            "ROLE",
            "APPLIED",
            "HIGH",
            "WATERMARK",
            "LAG",
            "APPLY/S",
            "PAUSED"
        ],
        "{out}"
    );
    assert_eq!(applied_offsets(&lines).as_ref(), Some(&l.ends), "{out}");
    // Nothing is applied or accepted meanwhile: both rates are measured, and zero.
    assert!(
        out.contains("apply rate 0.0/s, ingest accept rate 0.0/s (over 0.2 s)"),
        "{out}"
    );
    assert!(out.contains("\nparked accounts"), "{out}");
    // No escape sequences for a pipe.
    assert!(!out.contains('\x1b'), "{out:?}");

    let o = run(
        &mut l.services.ledger(),
        &["--json", "top", "--interval-ms", "100"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["topic"], l.services.topic.as_str());
    let partitions = v["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), PARTITIONS as usize, "{v}");
    let applied: i64 = partitions
        .iter()
        .map(|p| p["applied_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(applied, l.events());
    assert_eq!(v["accepted_total"], l.events());
    assert_eq!(v["apply_rate"], 0.0);
    assert_eq!(v["interval_ms"], 100);
}

#[test]
fn top_piped_without_a_projector_exits_3() {
    let url = closed_port_url();
    let o = run(
        bare().env("LEDGER_PROJECTOR_URL", &url),
        &["top", "--interval-ms", "100"],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains(&url), "{}", stderr(&o));
}

/// `ledger --json top`'s paused flags, by partition.
fn paused(s: &Services) -> Vec<bool> {
    let o = run(&mut s.ledger(), &["--json", "top", "--interval-ms", "100"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    json(&o)["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["paused"].as_bool().unwrap())
        .collect()
}

#[test]
fn admin_pause_shows_in_top_and_the_other_operations_answer() {
    let s = &loaded().services;
    let _steady = steady();
    let o = run(
        &mut s.ledger(),
        &["--json", "admin", "pause", "--partition", "1"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["paused_partitions"], serde_json::json!([1]));
    assert_eq!(paused(s), [false, true, false]);
    let o = run(&mut s.ledger(), &["admin", "resume"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("no partition is paused"),
        "{}",
        stdout(&o)
    );
    assert_eq!(paused(s), [false; 3]);

    let o = run(&mut s.ledger(), &["admin", "parked"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "no parked accounts");
    let nobody = unique("nobody");
    let o = run(
        &mut s.ledger(),
        &["--json", "admin", "parked", "skip", &nobody],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(json(&o)["error"]["code"], "account_not_parked");
    assert!(
        stderr(&o).contains(&format!("{nobody} is not parked")),
        "{}",
        stderr(&o)
    );

    // A verified rebuild of the applied events: the digests agree, the store is swapped.
    let o = run(&mut s.ledger(), &["--json", "admin", "rebuild", "--wait"]);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert_eq!(v["phase"], "swapped", "{v}");
    for p in v["partitions"].as_array().unwrap() {
        assert_eq!(p["live_digest"], p["rebuilt_digest"], "{v}");
    }
    let o = run(&mut s.ledger(), &["admin", "rebuild", "--status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains(": swapped, "), "{}", stdout(&o));
}

/// Not a check: the screen of a run under load, written to `LEDGER_TOP_CAPTURE` for the
/// README. Against the services that `LEDGER_INGEST_URL` and `LEDGER_PROJECTOR_URL` (and
/// `LEDGER_AUTH_TOKEN`) name when both are set, as `ledger` itself would use them (a
/// projector group of your own, say), otherwise against this file's. Sends commands at a
/// steady rate while `top` runs, and captures once the sparklines hold a dozen refreshes.
#[test]
#[ignore = "writes a capture for the README; run by hand with LEDGER_TOP_CAPTURE=FILE"]
fn capture() {
    let file = std::env::var("LEDGER_TOP_CAPTURE").expect("LEDGER_TOP_CAPTURE names the file");
    let env: Vec<(&str, String)> = match (
        std::env::var("LEDGER_INGEST_URL"),
        std::env::var("LEDGER_PROJECTOR_URL"),
    ) {
        (Ok(ingest), Ok(projector)) => {
            let mut env = vec![
                ("LEDGER_INGEST_URL", ingest),
                ("LEDGER_PROJECTOR_URL", projector),
            ];
            env.extend(std::env::var("LEDGER_AUTH_TOKEN").map(|t| ("LEDGER_AUTH_TOKEN", t)));
            env
        }
        _ => env_of(&loaded().services)
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut load = bare()
        .envs(env.iter().copied())
        .args([
            "load",
            "--accounts",
            "40",
            "--commands",
            "8000",
            "--rate",
            "400",
            "--transfers",
            "0.2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut term = Terminal::spawn(&top_args("1000"), &env);
    let started = Instant::now();
    let screen = term.wait_for("a dozen refreshes under load", |rows| {
        let busy = (0..PARTITIONS).all(|p| {
            partition_row(rows, p).is_some_and(|r| r[6].parse::<f64>().is_ok_and(|x| x > 0.0))
        });
        (busy && started.elapsed() >= Duration::from_secs(12)).then(|| rows.join("\n"))
    });
    std::fs::write(&file, screen + "\n").unwrap();
    term.press("q");
    assert_eq!(term.exit_code(), 0);
    let _ = load.kill();
    let _ = load.wait();
}
