//! How `ledger top` draws a [`Snapshot`] on the terminal: a pure function of the
//! snapshot, so that a test can draw one into ratatui's `TestBackend` and read the cells.
//!
//! From top to bottom: the header (topic, total lag, instances, time) and a status line
//! naming any service that did not answer; the partition table; sparklines of the total
//! apply rate and of the ingest's accept rate; the parked accounts.

use ratatui::layout::{Alignment, Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, Wrap};
use ratatui::Frame;

use super::snapshot::{header_text, rate_text, row_cells, time_text, Snapshot, COLUMNS};
use crate::output::{parked_cells, PARKED_COLUMNS};

/// Height of each sparkline's box: four rows of bars.
const SPARK_HEIGHT: u16 = 6;

/// Which of [`COLUMNS`] hold numbers, right-aligned so that their digits line up.
const NUMERIC: [bool; 8] = [true, false, false, true, true, true, true, false];

/// Draws the whole view.
pub fn draw(frame: &mut Frame, s: &Snapshot) {
    // Room for every partition, its header and the borders; what is left goes to the
    // parked accounts.
    let table_height = (s.partitions.len().max(1) as u16).saturating_add(3);
    let [header, partitions, rates, parked] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(table_height),
        Constraint::Length(SPARK_HEIGHT),
        Constraint::Min(3),
    ])
    .areas(frame.area());
    draw_header(frame, header, s);
    draw_partitions(frame, partitions, s);
    draw_rates(frame, rates, s);
    draw_parked(frame, parked, s);
}

fn draw_header(frame: &mut Frame, area: Rect, s: &Snapshot) {
    let title = Line::from(vec![
        Span::styled("ledger top  ", Style::new().bold()),
        Span::raw(header_text(s)),
    ]);
    // Which services did not answer; what they said is shown in full in their boxes.
    let mut problems = Vec::new();
    if s.problems.projector.is_some() {
        problems.push("projector unreachable");
    }
    if s.problems.ingest.is_some() {
        problems.push("ingest unreachable");
    }
    let status = if problems.is_empty() {
        Line::from(format!(
            "every {:.1} s · q quits",
            s.interval_ms as f64 / 1000.0
        ))
        .dim()
    } else {
        Line::from(problems.join(" · ")).fg(Color::Red)
    };
    // The time on the right of the status line, where a long topic cannot push it off.
    let time = time_text(s);
    let [top, bottom] = Layout::vertical([Constraint::Length(1); 2]).areas(area);
    let [status_area, time_area] = Layout::horizontal([
        Constraint::Min(0),
        Constraint::Length(time.chars().count() as u16),
    ])
    .areas(bottom);
    frame.render_widget(title, top);
    frame.render_widget(status, status_area);
    frame.render_widget(Line::from(time), time_area);
}

fn numeric_cell(text: String, numeric: bool) -> Cell<'static> {
    let line = Line::from(text);
    Cell::from(if numeric {
        line.alignment(Alignment::Right)
    } else {
        line
    })
}

fn draw_partitions(frame: &mut Frame, area: Rect, s: &Snapshot) {
    let block = Block::bordered().title(" partitions ");
    if let Some(e) = &s.problems.projector {
        let text = Paragraph::new(format!("projector unreachable: {e}"))
            .fg(Color::Red)
            .wrap(Wrap { trim: true })
            .block(block);
        frame.render_widget(text, area);
        return;
    }
    if s.partitions.is_empty() {
        frame.render_widget(
            Paragraph::new("waiting for the projector…")
                .dim()
                .block(block),
            area,
        );
        return;
    }
    let header = Row::new(
        COLUMNS
            .iter()
            .zip(NUMERIC)
            .map(|(h, numeric)| numeric_cell(h.to_string(), numeric)),
    )
    .style(Style::new().add_modifier(Modifier::BOLD));
    let cells: Vec<[String; 8]> = s.partitions.iter().map(row_cells).collect();
    // Each column as wide as its widest cell, as `kafka-consumer-groups` prints them.
    let widths: Vec<Constraint> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, h)| Constraint::Length(widest(cells.iter().map(|c| c[i].as_str()), h)))
        .collect();
    let rows = s.partitions.iter().zip(cells).map(|(r, cells)| {
        let row = Row::new(
            cells
                .into_iter()
                .zip(NUMERIC)
                .map(|(c, n)| numeric_cell(c, n)),
        );
        if r.paused {
            row.fg(Color::Yellow)
        } else {
            row
        }
    });
    frame.render_widget(table(rows, widths, header, block), area);
}

/// A table of the view's style: columns as wide as their cells, packed to the left.
fn table<'a>(
    rows: impl IntoIterator<Item = Row<'a>>,
    widths: impl IntoIterator<Item = Constraint>,
    header: Row<'a>,
    block: Block<'a>,
) -> Table<'a> {
    Table::new(rows, widths)
        .header(header)
        .column_spacing(2)
        .flex(Flex::Start)
        .block(block)
}

/// The width of a column: its widest cell or its header.
fn widest<'a>(cells: impl Iterator<Item = &'a str>, header: &str) -> u16 {
    cells
        .map(|c| c.chars().count())
        .chain([header.len()])
        .max()
        .unwrap_or_default()
        .min(u16::MAX as usize) as u16
}

/// The last samples that fit in `width` columns: a sparkline draws from its first datum
/// on, and the newest must be the one shown at the right.
fn newest(history: &[Option<u64>], width: u16) -> &[Option<u64>] {
    &history[history.len().saturating_sub(width as usize)..]
}

fn draw_rates(frame: &mut Frame, area: Rect, s: &Snapshot) {
    let [apply, accept] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let inner_width = apply.width.saturating_sub(2);
    let block = Block::bordered().title(format!(
        " apply {}/s, all partitions ",
        rate_text(s.apply_rate)
    ));
    frame.render_widget(
        Sparkline::default()
            .block(block)
            .data(newest(&s.apply_history, inner_width))
            .fg(Color::Green),
        apply,
    );
    let accepted = s
        .accepted_total
        .map(|n| format!(", {n} accepted"))
        .unwrap_or_default();
    let block = Block::bordered().title(format!(
        " ingest accept {}/s{accepted} ",
        rate_text(s.accept_rate)
    ));
    if let Some(e) = &s.problems.ingest {
        frame.render_widget(
            Paragraph::new(format!("ingest unreachable: {e}"))
                .fg(Color::Red)
                .wrap(Wrap { trim: true })
                .block(block),
            accept,
        );
    } else {
        let inner_width = accept.width.saturating_sub(2);
        frame.render_widget(
            Sparkline::default()
                .block(block)
                .data(newest(&s.accept_history, inner_width))
                .fg(Color::Cyan),
            accept,
        );
    }
}

fn draw_parked(frame: &mut Frame, area: Rect, s: &Snapshot) {
    let incomplete = if s.parked_complete == Some(false) {
        ", incomplete"
    } else {
        ""
    };
    match (&s.parked, &s.problems.parked) {
        (Some(accounts), _) if !accounts.is_empty() => {
            let block = Block::bordered().title(format!(
                " parked accounts ({}{incomplete}) ",
                accounts.len()
            ));
            let header = Row::new(PARKED_COLUMNS).style(Style::new().add_modifier(Modifier::BOLD));
            let rows = accounts.iter().map(|a| Row::new(parked_cells(a)));
            let widths = [
                Constraint::Length(widest(
                    accounts.iter().map(|a| a.account_id.as_str()),
                    "ACCOUNT",
                )),
                Constraint::Length(9),
                Constraint::Length(12),
                Constraint::Length(7),
                Constraint::Length(widest(accounts.iter().map(|a| a.reason.as_str()), "REASON")),
                Constraint::Length(widest(
                    accounts.iter().map(|a| a.served_by.as_str()),
                    "SERVED BY",
                )),
            ];
            frame.render_widget(table(rows, widths, header, block), area);
        }
        (Some(_), _) => frame.render_widget(
            Paragraph::new("none")
                .dim()
                .block(Block::bordered().title(format!(" parked accounts{incomplete} "))),
            area,
        ),
        (None, problem) => frame.render_widget(
            Paragraph::new(match problem {
                Some(e) => format!("n/a ({e})"),
                None => "n/a".into(),
            })
            .dim()
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" parked accounts ")),
            area,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::tests::{down, two_refreshes};
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    /// The screen `s` draws to, one string per row.
    fn screen(s: &Snapshot, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, s)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    /// The words of the table row of `partition`, borders left out.
    fn row_of(lines: &[String], partition: &str) -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                l.trim_matches(|c: char| c == '│' || c.is_whitespace())
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .find(|words| words.first().map(String::as_str) == Some(partition) && words.len() >= 7)
            .unwrap_or_else(|| panic!("no row of partition {partition} in\n{}", lines.join("\n")))
    }

    #[test]
    fn every_partition_is_a_row_with_its_offsets_lag_rate_and_pause() {
        let lines = screen(&two_refreshes(), 100, 30);
        assert_eq!(
            lines[0].trim_end(),
            "ledger top  topic ledger.events  total lag 1  2 instances"
        );
        assert!(
            lines[1].starts_with("every 1.0 s · q quits"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with(" 2023-11-14T22:13:21Z"), "{}", lines[1]);
        assert!(lines[2].contains(" partitions "), "{}", lines[2]);
        for h in COLUMNS {
            assert!(lines[3].contains(h), "{h} missing from {}", lines[3]);
        }
        assert_eq!(
            row_of(&lines, "0"),
            ["0", "proj-a", "owner", "15", "16", "1", "5.0"]
        );
        assert_eq!(
            row_of(&lines, "1"),
            ["1", "proj-a", "owner", "4", "4", "0", "0.0", "PAUSED"]
        );
        assert_eq!(
            row_of(&lines, "2"),
            ["2", "proj-b", "owner", "2", "2", "0", "2.0"]
        );
        let text = lines.join("\n");
        assert!(text.contains(" apply 7.0/s, all partitions "), "{text}");
        assert!(
            text.contains(" ingest accept 10.0/s, 30 accepted "),
            "{text}"
        );
        assert!(text.contains(" parked accounts (1) "), "{text}");
        assert!(
            text.contains("unknown event type ledger.frozen.v9"),
            "{text}"
        );
        let parked = lines.iter().find(|l| l.contains("acc-9")).unwrap();
        assert!(parked.contains("proj-a"), "{parked}");
    }

    #[test]
    fn a_service_that_does_not_answer_is_shown_not_fatal() {
        let mut s = two_refreshes();
        s.problems.projector = Some(down("http://127.0.0.1:1/v1/progress").to_string());
        s.partitions.clear();
        s.problems.ingest = Some("cannot reach the ingest".into());
        s.parked = None;
        s.problems.parked = Some("no_such_route".into());
        let text = screen(&s, 100, 30).join("\n");
        assert!(
            text.contains("projector unreachable: service unavailable: cannot reach http://127.0.0.1:1/v1/progress"),
            "{text}"
        );
        assert!(
            text.contains("ingest unreachable: cannot reach the ingest"),
            "{text}"
        );
        assert!(text.contains("n/a (no_such_route)"), "{text}");
    }

    #[test]
    fn before_the_first_sample_it_waits_and_on_a_small_terminal_it_still_draws() {
        let text = screen(
            &Snapshot::waiting(std::time::Duration::from_secs(1)),
            100,
            30,
        )
        .join("\n");
        assert!(text.contains("waiting for the projector…"), "{text}");
        assert!(text.contains("parked accounts"), "{text}");
        // Too small for everything: drawn clipped, never a panic.
        screen(&two_refreshes(), 20, 5);
    }

    #[test]
    fn sparklines_show_the_newest_samples() {
        let history: Vec<Option<u64>> = (0..60).map(Some).collect();
        assert_eq!(newest(&history, 10).first(), Some(&Some(50)));
        assert_eq!(newest(&history, 100).len(), 60);
    }
}
