//! The run's report: one HTML page with the benchmark's pictures and its summary table,
//! drawn from the JSON that `scripts/bench.sh` leaves in its output folder.
//!
//! The page stands alone (charts as inline SVG drawn with plotters, CSS inline, no
//! scripts, no links), so it can be mailed or attached to an issue as it is. Everything
//! but [`write`] is a pure function from parsed JSON to strings: a past run's folder
//! renders the same as a fresh one, and the tests render synthetic runs. A chart whose
//! data a run does not hold (runs before the lag histograms and the peer's progress were
//! recorded, or a run that failed half-way) is replaced by a note, never an error.

mod charts;
use charts::*;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// What a run recorded.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// `summary.json`: absent when the run did not get that far.
    pub summary: Option<Value>,
    /// Each step's result (`steps/NAME.json`) by NAME.
    pub steps: BTreeMap<String, Value>,
}

impl Run {
    /// Reads `DIR/summary.json` and `DIR/steps/*.json`; the steps are also taken from the
    /// summary (which embeds them) when the folder holds the summary alone.
    pub fn load(dir: &Path) -> anyhow::Result<Run> {
        let read = |p: &Path| -> anyhow::Result<Value> {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        };
        let summary_path = dir.join("summary.json");
        let summary = if summary_path.exists() {
            Some(read(&summary_path)?)
        } else {
            None
        };
        let mut steps = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(dir.join("steps")) {
            for e in entries {
                let path = e?.path();
                if let (Some(stem), Some("json")) = (
                    path.file_stem().and_then(|s| s.to_str()),
                    path.extension().and_then(|s| s.to_str()),
                ) {
                    steps.insert(stem.to_string(), read(&path)?);
                }
            }
        }
        if steps.is_empty() {
            if let Some(Value::Object(embedded)) = summary.as_ref().and_then(|s| s.get("steps")) {
                steps.extend(embedded.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        if summary.is_none() && steps.is_empty() {
            anyhow::bail!(
                "{} holds no results (neither summary.json nor steps/*.json)",
                dir.display()
            );
        }
        Ok(Run { summary, steps })
    }

    fn step(&self, name: &str) -> Option<&Value> {
        self.steps.get(name)
    }
}

/// What [`write`] wrote.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    /// Charts in the page.
    pub charts: usize,
    /// Size of the page.
    pub bytes: usize,
}

/// Renders the run in `dir` into `out`.
pub fn write(dir: &Path, out: &Path) -> anyhow::Result<Written> {
    let run = Run::load(dir)?;
    let html = render(&run)?;
    std::fs::write(out, &html).with_context(|| format!("writing {}", out.display()))?;
    Ok(Written {
        charts: html.matches("<svg").count(),
        bytes: html.len(),
    })
}

// ---- the page ----

const CSS: &str =
    "body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}\
p.meta,p.note{color:#555}p.note{font-style:italic}\
svg{display:block;max-width:100%;height:auto;margin:1em 0}\
table{border-collapse:collapse;font-size:.85em;width:100%}\
td,th{padding:.25em .5em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}\
td.v{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}\
tr.section th{background:#f3f3f3;padding-top:.6em}\
.ok{color:#1a7f37}.missed{color:#c62828;font-weight:bold}";

/// The whole page.
pub fn render(run: &Run) -> anyhow::Result<String> {
    let mut h = String::new();
    let mode = run
        .summary
        .as_ref()
        .and_then(|s| s.get("mode"))
        .and_then(Value::as_str)
        .unwrap_or("unknown mode");
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>ledger bench ({})</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <h1>ledger bench ({})</h1>\n",
        esc(mode),
        esc(mode)
    );
    h.push_str(&meta_line(run));

    h.push_str("<h2>End-to-end visibility lag</h2>\n");
    h.push_str(&e2e_section(run)?);
    h.push_str("<h2>Replay rate over time</h2>\n");
    h.push_str(&replay_section(run)?);
    h.push_str("<h2>Memory over time</h2>\n");
    h.push_str(&memory_section(run)?);
    h.push_str("<h2>Summary</h2>\n");
    h.push_str(&summary_table(run));
    h.push_str("</body>\n</html>\n");
    Ok(h)
}

fn meta_line(run: &Run) -> String {
    let Some(s) = &run.summary else {
        return "<p class=\"note\">No summary.json: the run did not finish. The charts below \
                come from the steps that did.</p>\n"
            .into();
    };
    let m = &s["machine"];
    let mut parts = Vec::new();
    if let Some(c) = m["cores"].as_u64() {
        parts.push(format!("{c} cores"));
    }
    if let Some(cpu) = m["cpu_model"].as_str() {
        parts.push(cpu.to_string());
    }
    if let Some(l) = m["loadavg"].as_str() {
        let end = m["loadavg_at_end"].as_str().unwrap_or("?");
        parts.push(format!("load average {l} → {end}"));
    }
    if let Some(t) = s["run_seconds"].as_u64() {
        parts.push(format!("{t} s"));
    }
    if let Some(c) = s["git_commit"].as_str() {
        parts.push(format!("commit {c}"));
    }
    format!("<p class=\"meta\">{}</p>\n", esc(&parts.join(", ")))
}

fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", esc(text))
}

fn para(text: &str) -> String {
    format!("<p>{}</p>\n", esc(text))
}

// ---- end to end ----

fn e2e_section(run: &Run) -> anyhow::Result<String> {
    let Some(e2e) = run.step("e2e") else {
        return Ok(note("The run has no end-to-end step."));
    };
    let mut h = String::new();
    let lag = distribution(&e2e["lag_202_to_visible_histogram"]);
    let from_due = distribution(&e2e["visible_from_due_histogram"]);
    let summary = &e2e["lag_202_to_visible"];
    let marks: Vec<(String, f64)> = [("p50", "p50_ms"), ("p99", "p99_ms")]
        .iter()
        .filter_map(|(name, key)| Some((name.to_string(), summary[*key].as_f64()?)))
        .collect();
    h.push_str(&para(&format!(
        "Every command's lag from its 202 until the projector answered its visibility query: \
         {} commands at {}/s offered for {} s (after {} s of warm-up). p50 {}, p99 {}, max {}.",
        fmt_int(summary["count"].as_f64().unwrap_or(0.0)),
        fmt_int(e2e["offered_per_s"].as_f64().unwrap_or(0.0)),
        fmt_num(e2e["duration_s"].as_f64().unwrap_or(0.0)),
        fmt_num(e2e["warmup_s"].as_f64().unwrap_or(0.0)),
        fmt_ms_opt(summary["p50_ms"].as_f64()),
        fmt_ms_opt(summary["p99_ms"].as_f64()),
        fmt_ms_opt(summary["max_ms"].as_f64()),
    )));
    let Some(lag) = lag else {
        h.push_str(&note(
            "This run's e2e.json holds the percentiles only, no lag histogram (runs before \
             the report was added did not record one): no distribution to draw.",
        ));
        return Ok(h);
    };
    h.push_str(&lag_histogram_svg(&lag, &marks)?);
    let mut curves = vec![("202 → visible".to_string(), lag.as_slice())];
    if let Some(d) = &from_due {
        curves.push((
            "due → visible (with the wait for the 202)".to_string(),
            d.as_slice(),
        ));
    }
    h.push_str(&lag_cdf_svg(&curves, &marks)?);
    let by_second = lag_by_second(&e2e["lag_202_to_visible_by_second"]);
    if by_second.len() >= 2 {
        let pick = |i: usize| -> Vec<(f64, f64)> {
            by_second.iter().map(|r| (r.0 + 0.5, r.1[i])).collect()
        };
        h.push_str(&lines_svg(&Lines {
            title: "Lag per second of the run",
            x_desc: "second of the measured window",
            y_desc: "lag 202 → visible (ms)",
            y_si: false,
            series: vec![
                Line::new("p50", PALETTE[0], pick(0)),
                Line::new("p99", PALETTE[1], pick(1)),
                Line::new("max", PALETTE[4], pick(2)),
            ],
            references: vec![],
        })?);
    }
    Ok(h)
}

/// `[[ms, count], ...]` as recorded by `stats::recorded`: sorted, no empty buckets.
fn distribution(v: &Value) -> Option<Vec<(f64, u64)>> {
    let mut out: Vec<(f64, u64)> = v
        .as_array()?
        .iter()
        .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_u64()?)))
        .filter(|&(ms, c)| c > 0 && ms.is_finite() && ms >= 0.0)
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!out.is_empty()).then_some(out)
}

fn total(d: &[(f64, u64)]) -> u64 {
    d.iter().map(|p| p.1).sum()
}

/// (second, [p50, p99, max]) of each second that saw a command.
fn lag_by_second(v: &Value) -> Vec<(f64, [f64; 3])> {
    v.as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    Some((
                        r["second"].as_f64()?,
                        [
                            r["p50_ms"].as_f64()?,
                            r["p99_ms"].as_f64()?,
                            r["max_ms"].as_f64()?,
                        ],
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---- replay ----

/// The progress samples of a replay or a peer, from 0 at its start to all its events at
/// the time it finished (both known exactly; the samples fall in between). Samples after
/// that (the peer's are taken until its JVM exits) are left out: the rate is of the work.
fn progress(step: &Value) -> Option<Vec<(f64, f64)>> {
    let samples = step["samples"].as_array()?;
    let done = match (step["seconds"].as_f64(), step["events"].as_f64()) {
        (Some(t), Some(n)) => Some((t, n)),
        _ => None,
    };
    let mut points = vec![(0.0, 0.0)];
    points.extend(samples.iter().filter_map(|s| {
        let (t, n) = (s.get(0)?.as_f64()?, s.get(1)?.as_f64()?);
        // -1: the projector did not answer that sample.
        (n >= 0.0 && done.is_none_or(|d| t < d.0)).then_some((t, n))
    }));
    if let Some(d) = done {
        points.push(d);
    }
    (points.len() > 2).then_some(points)
}

/// Rates over consecutive intervals of at least `window` seconds of cumulative samples:
/// (start, end, per second). A last stretch shorter than that joins the interval before.
pub fn interval_rates(points: &[(f64, f64)], window: f64) -> Vec<(f64, f64, f64)> {
    let mut out: Vec<(f64, f64, f64)> = Vec::new();
    let Some(&first) = points.first() else {
        return out;
    };
    let (mut anchor, mut prev_anchor) = (first, first);
    for &(t, n) in &points[1..] {
        if t - anchor.0 >= window - 1e-9 {
            out.push((anchor.0, t, (n - anchor.1) / (t - anchor.0)));
            prev_anchor = anchor;
            anchor = (t, n);
        }
    }
    if let Some(&(t, n)) = points.last() {
        if t > anchor.0 {
            match out.last_mut() {
                Some(last) => *last = (prev_anchor.0, t, (n - prev_anchor.1) / (t - prev_anchor.0)),
                None => out.push((anchor.0, t, (n - anchor.1) / (t - anchor.0))),
            }
        }
    }
    out
}

/// An interval rate series as a step line.
fn steps_of(rates: &[(f64, f64, f64)]) -> Vec<(f64, f64)> {
    rates
        .iter()
        .flat_map(|&(a, b, r)| [(a, r), (b, r)])
        .collect()
}

/// The colour of each process in the replay and memory charts, the same in both.
fn process_color(step: &str) -> RGBColor {
    match step {
        "replay" => PALETTE[0],
        "replay_1_worker" => PALETTE[1],
        "kstreams_eos" => PALETTE[2],
        _ => PALETTE[3],
    }
}

const PEERS: [(&str, &str); 2] = [
    ("kstreams_eos", "Kafka Streams, exactly_once_v2"),
    ("kstreams_alos", "Kafka Streams, at_least_once"),
];

fn replay_section(run: &Run) -> anyhow::Result<String> {
    // Cumulative progress of each process that has it.
    let mut series: Vec<Line> = Vec::new();
    let mut references: Vec<Line> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let cores = run
        .step("machine")
        .or_else(|| run.summary.as_ref().map(|s| &s["machine"]))
        .and_then(|m| m["cores"].as_u64());
    for name in ["replay", "replay_1_worker"] {
        let Some(step) = run.step(name) else { continue };
        let workers = match (name, step["workers"].as_u64()) {
            ("replay_1_worker", _) | (_, Some(1)) => "1 worker".to_string(),
            (_, Some(n)) => format!("{n} workers"),
            (_, None) => match cores {
                Some(c) => format!("default workers, {c} cores"),
                None => "default workers".to_string(),
            },
        };
        let label = format!(
            "projector, {workers}: {}/s",
            fmt_int(step["replay_per_s"].as_f64().unwrap_or(0.0))
        );
        match progress(step) {
            Some(points) => series.push(Line::new(&label, process_color(name), points)),
            None => missing.push(label),
        }
    }
    for (name, what) in PEERS {
        let Some(step) = run.step(name) else { continue };
        let per_s = step["per_s"].as_f64().unwrap_or(0.0);
        let label = format!("{what}: {}/s", fmt_int(per_s));
        match progress(step) {
            Some(points) => series.push(Line::new(&label, process_color(name), points)),
            // Runs before the peer was sampled: its mean is all there is.
            None => references.push(Line::new(
                &format!("{label} (mean; not sampled)"),
                process_color(name),
                vec![(0.0, per_s)],
            )),
        }
    }
    if let Some(per_s) = run
        .step("raw_consume")
        .and_then(|s| s["records_per_s"].as_f64())
    {
        references.push(Line::new(
            &format!(
                "raw Kafka consume (ConsumerPerformance): {}/s",
                fmt_int(per_s)
            ),
            REFERENCE,
            vec![(0.0, per_s)],
        ));
    }
    if series.is_empty() {
        return Ok(note("The run has no replay progress samples to draw."));
    }
    // Short enough to show start-up and stalls, long enough that the projector's batches
    // (thousands of events applied at once) do not turn the line into a saw.
    let longest = series
        .iter()
        .filter_map(|s| s.points.last().map(|p| p.0))
        .fold(0.0, f64::max);
    let window = (longest / 40.0).clamp(0.5, 1.0);
    let mut h = para(&format!(
        "Events per second over intervals of at least {} s, from each process's start (so \
         start-up shows as the flat beginning) until everything is applied: the projector by \
         its own /v1/progress (sampled every 200 ms), the Kafka Streams peer by its group's \
         committed offsets (sampled every 250 ms). The legend gives each one's mean from \
         process start to the end; dashed lines are means without a time series.",
        fmt_num(window)
    ));
    for line in &mut series {
        line.points = steps_of(&interval_rates(&line.points, window));
    }
    h.push_str(&lines_svg(&Lines {
        title: "Replay rate",
        x_desc: "seconds since the process started",
        y_desc: "events/s",
        y_si: true,
        series,
        references,
    })?);
    for m in missing {
        h.push_str(&note(&format!(
            "{m}: no progress samples in this run's JSON."
        )));
    }
    Ok(h)
}

fn memory_section(run: &Run) -> anyhow::Result<String> {
    let mut series = Vec::new();
    // [t, events, RSS MB] for the projector, [t, RSS MB] for the peer.
    for (name, label, column, key) in [
        ("replay", "projector", 2, "samples"),
        ("replay_1_worker", "projector, 1 worker", 2, "samples"),
        (PEERS[0].0, PEERS[0].1, 1, "rss_samples_mb"),
        (PEERS[1].0, PEERS[1].1, 1, "rss_samples_mb"),
    ] {
        if let Some(samples) = run.step(name).and_then(|s| s[key].as_array()) {
            let points: Vec<(f64, f64)> = samples
                .iter()
                .filter_map(|s| Some((s.get(0)?.as_f64()?, s.get(column)?.as_f64()?)))
                .collect();
            if points.len() >= 2 {
                series.push(Line::new(label, process_color(name), points));
            }
        }
    }
    if series.is_empty() {
        return Ok(note("The run has no memory samples to draw."));
    }
    let target = run
        .summary
        .as_ref()
        .and_then(|s| s["targets"]["replay_peak_rss_mb"]["target"].as_str())
        .and_then(|t| t.trim_start_matches("<=").trim().parse::<f64>().ok());
    let mut h = para(
        "Resident set size (VmRSS) of the replaying process, sampled every 200 ms for the \
         projector and 500 ms for the peer (a JVM with -Xmx512m).",
    );
    h.push_str(&lines_svg(&Lines {
        title: "Resident memory",
        x_desc: "seconds since the process started",
        y_desc: "RSS (MB)",
        y_si: false,
        series,
        references: target
            .map(|t| {
                vec![Line::new(
                    &format!("replay target: peak ≤ {} MB", fmt_num(t)),
                    REFERENCE,
                    vec![(0.0, t)],
                )]
            })
            .unwrap_or_default(),
    })?);
    Ok(h)
}

// ---- the table ----

/// The summary table: the rows bench.sh printed (stored in summary.json as `table`), or
/// for a summary written before that, its figures and targets as they are.
fn summary_table(run: &Run) -> String {
    let Some(s) = &run.summary else {
        return note("No summary.json: no table.");
    };
    let mut h = String::from("<table>\n");
    if let Some(rows) = s["table"].as_array() {
        h.push_str("<tr><th>figure</th><th>value</th><th>target</th><th>how</th></tr>\n");
        for r in rows {
            if let Some(section) = r["section"].as_str() {
                let _ = writeln!(
                    h,
                    "<tr class=\"section\"><th colspan=\"4\">{}</th></tr>",
                    esc(section)
                );
                continue;
            }
            let met = match r["met"].as_bool() {
                Some(true) => " <span class=\"ok\">ok</span>",
                Some(false) => " <span class=\"missed\">MISSED</span>",
                None => "",
            };
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"v\">{}</td><td>{}{met}</td><td>{}</td></tr>",
                esc(r["name"].as_str().unwrap_or("")),
                esc(r["value"].as_str().unwrap_or("-")),
                esc(r["target"].as_str().unwrap_or("")),
                esc(r["note"].as_str().unwrap_or("")),
            );
        }
    } else {
        h.push_str("<tr><th>figure</th><th>value</th><th>target</th></tr>\n");
        let targets = &s["targets"];
        if let Some(o) = s.as_object() {
            for (k, v) in o {
                let value = match v {
                    Value::Number(n) => fmt_num(n.as_f64().unwrap_or(0.0)),
                    Value::String(t) => t.clone(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => "-".into(),
                    _ => continue,
                };
                let t = &targets[k];
                let target = match (t["target"].as_str(), t["met"].as_bool()) {
                    (Some(t), Some(true)) => format!("{} <span class=\"ok\">ok</span>", esc(t)),
                    (Some(t), _) => format!("{} <span class=\"missed\">MISSED</span>", esc(t)),
                    _ => String::new(),
                };
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td class=\"v\">{}</td><td>{target}</td></tr>",
                    esc(k),
                    esc(&value)
                );
            }
        }
    }
    h.push_str("</table>\n");
    h
}

#[cfg(test)]
mod tests;
