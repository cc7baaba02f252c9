//! `ledger admin …`: the projector's operations routes (`/v1/admin/…`) from the command
//! line: pause and resume, the verified rebuild (followed to its end with `--wait`), and
//! parked accounts.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ledger_api::{ErrorCode, RebuildPhase, RebuildView};
use ledger_domain::UnparkKind;

use crate::cli::{AdminCmd, ParkedCmd, RebuildArgs};
use crate::client::{Client, ClientError};
use crate::error::{CliError, Exit};
use crate::output::{parked_text, pause_text, phase_name, rebuild_text, unpark_line, Output};
use crate::runner::progress_wanted;

/// How often `rebuild --wait` asks how the rebuild stands.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// Runs `ledger admin …`.
pub async fn run(client: &Client, out: Output, command: AdminCmd) -> Result<Exit, CliError> {
    match command {
        AdminCmd::Pause(p) => pause(client, out, true, p.partition).await,
        AdminCmd::Resume(p) => pause(client, out, false, p.partition).await,
        AdminCmd::Rebuild(args) => rebuild(client, out, args).await,
        AdminCmd::Parked { action: None } => {
            let v = client.parked().await?;
            out.result(&v, || parked_text(&v));
            Ok(Exit::Success)
        }
        AdminCmd::Parked {
            action: Some(action),
        } => {
            let (account, action) = match action {
                ParkedCmd::Retry { account } => (account, UnparkKind::Retry),
                ParkedCmd::Skip { account } => (account, UnparkKind::Skip),
            };
            let a = client.unpark(&account, action).await.map_err(|e| {
                refused(e, ErrorCode::AccountNotParked, || {
                    format!(
                        "{account} is not parked: no event of it waits to be retried or skipped \
                         (`ledger admin parked` lists those that are)"
                    )
                })
            })?;
            out.result(&a, || unpark_line(&a));
            Ok(Exit::Success)
        }
    }
}

async fn pause(
    client: &Client,
    out: Output,
    pause: bool,
    partition: Option<i32>,
) -> Result<Exit, CliError> {
    let v = client.pause(pause, partition).await?;
    out.result(&v, || pause_text(&v));
    Ok(Exit::Success)
}

/// The service's refusal with `code` as a [`CliError::Refused`] saying what it means
/// for the user; any other error as it is.
fn refused(e: ClientError, code: ErrorCode, message: impl FnOnce() -> String) -> CliError {
    if e.is_api(code) {
        CliError::Refused {
            code,
            message: message(),
        }
    } else {
        e.into()
    }
}

async fn rebuild(client: &Client, out: Output, args: RebuildArgs) -> Result<Exit, CliError> {
    let mut view = if args.status {
        client.rebuild().await?
    } else {
        client.start_rebuild().await.map_err(|e| {
            refused(e, ErrorCode::RebuildRunning, || {
                "a rebuild is already running on this instance; \
                 follow it with `ledger admin rebuild --status --wait`"
                    .into()
            })
        })?
    };
    if args.wait {
        view = follow(client, out, view).await?;
    }
    out.result(&view, || rebuild_text(&view));
    Ok(rebuild_exit(view.phase))
}

/// The exit a rebuild's phase calls for: 1 once it ended without a swap.
fn rebuild_exit(phase: RebuildPhase) -> Exit {
    match phase {
        RebuildPhase::Mismatch => Exit::Mismatch,
        RebuildPhase::Failed => Exit::Failed,
        RebuildPhase::Replaying | RebuildPhase::Verifying | RebuildPhase::Swapped => Exit::Success,
    }
}

/// What a rebuild in progress shows: `rebuild on proj-a: replaying, 12345 events
/// replayed`.
fn progress_line(v: &RebuildView) -> String {
    format!(
        "rebuild on {}: {}, {} events replayed",
        v.instance_id,
        phase_name(v.phase),
        v.events_replayed
    )
}

/// Asks how the rebuild stands every [`POLL_EVERY`] until it is over: a spinner on a
/// terminal, otherwise a line on stderr at each change of phase (stdout keeps only the
/// result, so that `--json` stays one document).
async fn follow(
    client: &Client,
    out: Output,
    mut view: RebuildView,
) -> Result<RebuildView, CliError> {
    let bar = if progress_wanted(out.json) {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .expect("the template is valid"),
        );
        Some(bar)
    } else {
        None
    };
    let mut last_phase = None;
    loop {
        match &bar {
            Some(bar) => {
                bar.set_message(progress_line(&view));
                // Spinning from the first answer on, never with an empty line.
                if last_phase.is_none() {
                    bar.enable_steady_tick(Duration::from_millis(100));
                }
            }
            None if !out.json && last_phase != Some(view.phase) => {
                eprintln!("{}", progress_line(&view));
            }
            None => {}
        }
        last_phase = Some(view.phase);
        if view.phase.is_final() {
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
        view = client.rebuild().await?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_exits_1_only_when_it_ended_without_a_swap() {
        let code = |p| rebuild_exit(p).code();
        assert_eq!(code(RebuildPhase::Replaying), 0);
        assert_eq!(code(RebuildPhase::Verifying), 0);
        assert_eq!(code(RebuildPhase::Swapped), 0);
        assert_eq!(code(RebuildPhase::Mismatch), 1);
        assert_eq!(code(RebuildPhase::Failed), 1);
    }

    #[test]
    fn refusals_the_user_can_act_on_say_what_to_do() {
        let api = |code: &str, status| ClientError::Api {
            url: "http://p/v1/admin/rebuild".into(),
            status,
            code: code.into(),
            message: "busy".into(),
        };
        let e = refused(
            api("rebuild_running", 409),
            ErrorCode::RebuildRunning,
            || "already running".into(),
        );
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.code(), "rebuild_running");
        assert_eq!(e.to_string(), "already running");
        // Another error passes through as it was.
        let e = refused(
            api("unauthorized", 401),
            ErrorCode::RebuildRunning,
            || unreachable!(),
        );
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.code(), "unauthorized");
    }
}
