//! The run's report: one HTML page with the benchmark's pictures and its summary table,
//! drawn from the JSON that `scripts/bench.sh` leaves in its output folder.
//!
//! The page stands alone (charts as inline SVG drawn with plotters, CSS inline, no
//! scripts, no links), so it can be mailed or attached to an issue as it is. Everything
//! but [`write`] is a pure function from parsed JSON to strings: a past run's folder
//! renders the same as a fresh one, and the tests render synthetic runs. A chart whose
//! data a run does not hold (runs before the lag histograms and the peer's progress were
//! recorded, or a run that failed half-way) is replaced by a note, never an error.

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

// ---- charts ----

const SIZE: (u32, u32) = (900, 420);
const FONT: &str = "sans-serif";
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
    RGBColor(140, 86, 75),
];
const MARK: RGBColor = RGBColor(200, 30, 30);
const REFERENCE: RGBColor = RGBColor(110, 110, 110);

type Drawn = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Draws on a fresh SVG canvas and returns the SVG.
fn svg_of(
    draw: impl for<'b> FnOnce(&DrawingArea<SVGBackend<'b>, Shift>) -> Drawn,
) -> anyhow::Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("drawing a chart: {e}");
        root.fill(&WHITE).map_err(err)?;
        draw(&root).map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}

/// Histogram bins per decade of lag: each about 10 % wider than the one before, far
/// coarser than HdrHistogram's 0.1 %, so no bin is empty for want of resolution.
const BINS_PER_DECADE: f64 = 24.0;

/// The lag histogram on a log axis, so the body (a few ms) and the tail (up to seconds)
/// both show; with vertical lines at the marked percentiles.
fn lag_histogram_svg(d: &[(f64, u64)], marks: &[(String, f64)]) -> anyhow::Result<String> {
    let (lo, hi) = log_range(&[d]);
    let bin_of = |v: f64| ((v.max(lo).log10() - lo.log10()) * BINS_PER_DECADE).floor() as usize;
    let edge = |i: usize| lo * 10f64.powf(i as f64 / BINS_PER_DECADE);
    let last = bin_of(hi);
    let mut bins = vec![0u64; last + 1];
    for &(v, c) in d {
        bins[bin_of(v).min(last)] += c;
    }
    let y_max = nice_ceil(bins.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.15);
    svg_of(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Lag from 202 to visible: histogram", (FONT, 22))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(
                (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
                0f64..y_max,
            )?;
        chart
            .configure_mesh()
            .x_desc("lag from 202 to visible (ms, log scale)")
            .y_desc("commands per bin (bins 10 % wide)")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .x_label_formatter(&|v| fmt_num(*v))
            .y_label_formatter(&|v| fmt_si(*v))
            .draw()?;
        chart.draw_series(
            bins.iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, &c)| {
                    Rectangle::new(
                        [(edge(i), 0.0), (edge(i + 1), c as f64)],
                        PALETTE[0].mix(0.75).filled(),
                    )
                }),
        )?;
        draw_marks(&mut chart, marks, y_max)?;
        Ok(())
    })
}

/// Labels at 1, 2 and 5 times each power of ten in the range: a log axis labelled at its
/// decades alone leaves too few numbers to read a value off.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut p = 10f64.powf(lo.log10().floor());
    while p <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = m * p;
            if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                out.push(v);
            }
        }
        p *= 10.0;
    }
    out
}

/// The largest of 1, 2, 5 times a power of ten that is at most `v` (> 0).
fn floor_125(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .iter()
        .map(|m| m * p)
        .find(|&x| x <= v * (1.0 + 1e-9))
        .unwrap_or(p)
}

/// A log axis from a round number (1, 2, 5) at or below the lowest value to a round number at
/// or above the highest, a decade wide at least.
fn log_range(ds: &[&[(f64, u64)]]) -> (f64, f64) {
    let lo = ds
        .iter()
        .filter_map(|d| d.first().map(|p| p.0))
        .fold(f64::INFINITY, f64::min)
        .max(1e-3);
    let hi = ds
        .iter()
        .filter_map(|d| d.last().map(|p| p.0))
        .fold(0.0, f64::max);
    let lo = floor_125(lo);
    (lo, nice_ceil(hi.max(lo * 10.0)))
}

/// Dashed vertical lines at the marks, labelled at the top.
fn draw_marks<DB: DrawingBackend, X, Y>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, Y>>,
    marks: &[(String, f64)],
    y_top: f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, (name, v)) in marks.iter().enumerate() {
        chart.draw_series(DashedLineSeries::new(
            vec![(*v, 0.0), (*v, y_top)],
            6,
            4,
            MARK.stroke_width(2),
        ))?;
        // Staggered, so close percentiles do not print over each other.
        let y = y_top * (0.97 - 0.07 * i as f64);
        let label = format!("{name} {} ms", fmt_num(*v));
        let style = (FONT, 15).into_font().color(&MARK);
        // Left of the line where the right of it is too close to the edge.
        let room = chart.plotting_area().get_pixel_range().0.end - chart.backend_coord(&(*v, y)).0;
        let text = if room < 10 * label.len() as i32 {
            Text::new(label, (-5, 0), style.pos(Pos::new(HPos::Right, VPos::Top)))
        } else {
            Text::new(label, (5, 0), style)
        };
        chart.draw_series(std::iter::once(EmptyElement::at((*v, y)) + text))?;
    }
    Ok(())
}

/// The cumulative distribution as a line, a point where the value has grown by 0.5 %
/// at least: finer than a pixel on the log axis, and a few hundred points instead of the
/// histogram's thousands of values.
fn cdf_points(d: &[(f64, u64)]) -> Vec<(f64, f64)> {
    let n = total(d) as f64;
    let mut seen = 0u64;
    let mut points = vec![(d[0].0, 0.0)];
    let mut last_v = 0.0;
    for (i, &(v, c)) in d.iter().enumerate() {
        seen += c;
        if v >= last_v * 1.005 || i + 1 == d.len() {
            points.push((v, seen as f64 / n));
            last_v = v;
        }
    }
    points
}

/// The cumulative distributions on a log lag axis, the first curve's marks drawn.
fn lag_cdf_svg(
    curves: &[(String, &[(f64, u64)])],
    marks: &[(String, f64)],
) -> anyhow::Result<String> {
    let (lo, hi) = log_range(&curves.iter().map(|c| c.1).collect::<Vec<_>>());
    svg_of(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Lag: cumulative distribution", (FONT, 22))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(
                (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
                0f64..1.0,
            )?;
        chart
            .configure_mesh()
            .x_desc("lag (ms, log scale)")
            .y_desc("share of commands at or below")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .x_label_formatter(&|v| fmt_num(*v))
            .y_label_formatter(&|v| format!("{:.0} %", v * 100.0))
            .draw()?;
        for (i, (label, d)) in curves.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(cdf_points(d), color.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
        }
        draw_marks(&mut chart, marks, 1.0)?;
        chart
            .configure_series_labels()
            // Where a CDF on a log axis is empty: low lags, high shares.
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        Ok(())
    })
}

/// A labelled series in its colour.
struct Line {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

impl Line {
    fn new(label: &str, color: RGBColor, points: Vec<(f64, f64)>) -> Self {
        Line {
            label: label.to_string(),
            color,
            points,
        }
    }
}

/// A line chart on linear axes.
struct Lines<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    /// Whether the y labels are abbreviated (300k) or plain (420).
    y_si: bool,
    series: Vec<Line>,
    /// Horizontal dashed lines, at the `y` of their one point.
    references: Vec<Line>,
}

fn lines_svg(c: &Lines<'_>) -> anyhow::Result<String> {
    let x_max = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let y_max = c
        .series
        .iter()
        .chain(&c.references)
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let x_max = nice_ceil(x_max.max(1e-3));
    // Room above the highest line for the legend (upper right), a row per entry.
    let rows = (c.series.len() + c.references.len()) as f64;
    let y_max = nice_ceil(y_max.max(1e-3) * (1.08 + 0.075 * rows));
    let y_si = c.y_si;
    svg_of(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(c.title, (FONT, 22))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc(c.x_desc)
            .y_desc(c.y_desc)
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .x_label_formatter(&|v| fmt_num(*v))
            .y_label_formatter(&|v| if y_si { fmt_si(*v) } else { fmt_num(*v) })
            .draw()?;
        for line in &c.series {
            let style = line.color.stroke_width(2);
            chart
                .draw_series(LineSeries::new(line.points.iter().copied(), style))?
                .label(line.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        }
        for r in &c.references {
            let y = r.points.first().map_or(0.0, |p| p.1);
            let style = r.color.stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(0.0, y), (x_max, y)],
                    8,
                    5,
                    style,
                ))?
                .label(r.label.as_str())
                .legend(move |(x, y)| {
                    DashedPathElement::new(vec![(x, y), (x + 24, y)], 6, 3, style)
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        Ok(())
    })
}

// ---- numbers ----

/// The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten)
/// that is at least `v` (> 0): an axis end close above the data.
fn nice_ceil(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&x| x >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * p)
}

/// A number with no more digits than it has: 0.25, 6.64, 60.1, 1200.
fn fmt_num(v: f64) -> String {
    let s = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn fmt_ms_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{} ms", fmt_num(v)))
}

/// An integer with thousands separators: 84,965.
fn fmt_int(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// An axis label: 250, 2.5k, 300k, 1.2M.
fn fmt_si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", fmt_num(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", fmt_num(v / 1e3))
    } else {
        fmt_num(v)
    }
}

/// Text for HTML (element content and quoted attributes).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small run in the shape bench.sh records: a lag distribution with a tail, a
    /// replay of 300 000 events in 3.4 s (twice), a sampled peer, and the summary.
    fn synthetic_run() -> Run {
        let mut lag = Vec::new();
        for i in 0..200u64 {
            lag.push(json!([2.0 + i as f64 * 0.05, 100 - i / 2]));
        }
        lag.push(json!([60.1, 30]));
        lag.push(json!([99.07, 1]));
        let from_due: Vec<Value> = lag
            .iter()
            .map(|p| json!([p[0].as_f64().unwrap() + 5.0, p[1]]))
            .collect();
        let by_second: Vec<Value> = (0..10)
            .map(|s| json!({"second": s, "count": 2000, "p50_ms": 6.5, "p99_ms": 20.0 + s as f64, "max_ms": 40.0}))
            .collect();
        let replay_samples: Vec<Value> = (1..=17)
            .map(|i| {
                let t = i as f64 * 0.2;
                json!([
                    t,
                    ((t - 0.3).max(0.0) * 95_000.0).min(299_000.0).round(),
                    200
                ])
            })
            .collect();
        let peer_samples: Vec<Value> = (1..36)
            .map(|i| {
                let t = i as f64 * 0.25;
                json!([t, ((t - 2.5).max(0.0) * 47_000.0).min(299_000.0).round()])
            })
            .collect();
        let mut steps = BTreeMap::new();
        steps.insert(
            "e2e".into(),
            json!({
                "offered_per_s": 2000.0, "duration_s": 10.0, "warmup_s": 2.0,
                "lag_202_to_visible": {"count": 15131, "p50_ms": 6.64, "p99_ms": 60.1, "max_ms": 99.07},
                "lag_202_to_visible_histogram": lag,
                "visible_from_due_histogram": from_due,
                "lag_202_to_visible_by_second": by_second,
            }),
        );
        steps.insert(
            "replay".into(),
            json!({"events": 300000, "seconds": 3.531, "replay_per_s": 84965.0, "workers": 2,
                   "samples": replay_samples}),
        );
        steps.insert(
            "replay_1_worker".into(),
            json!({"events": 300000, "seconds": 3.24, "replay_per_s": 92599.0,
                   "samples": replay_samples}),
        );
        steps.insert(
            "kstreams_eos".into(),
            json!({"events": 300000, "seconds": 8.907, "per_s": 33681,
                   "samples": peer_samples, "rss_samples_mb": [[0.5, 80], [1.0, 300], [8.0, 420]]}),
        );
        steps.insert(
            "kstreams_alos".into(),
            json!({"events": 300000, "seconds": 8.984, "per_s": 33393}),
        );
        steps.insert("raw_consume".into(), json!({"records_per_s": 292682.9268}));
        steps.insert("machine".into(), json!({"cores": 2}));
        let summary = json!({
            "mode": "quick",
            "machine": {"cores": 2, "cpu_model": "Test CPU", "loadavg": "0.1 0.2 0.3", "loadavg_at_end": "1.5 1.0 0.5"},
            "run_seconds": 163,
            "git_commit": "abc1234",
            "targets": {"replay_peak_rss_mb": {"target": "<= 256", "value": 284.7, "met": false}},
            "table": [
                {"section": "Projector replay"},
                {"name": "replay_per_s", "value": "84,965/s", "target": "", "met": null,
                 "note": "300,000 events in 3.531 s from process start"},
                {"name": "replay_peak_rss_mb", "value": "285 MB", "target": "<= 256", "met": false, "note": "VmHWM"},
                {"section": "End to end"},
                {"name": "e2e_lag_p99_ms", "value": "60.1 ms", "target": "<= 50", "met": false, "note": ""},
            ],
        });
        Run {
            summary: Some(summary),
            steps,
        }
    }

    #[test]
    fn renders_a_self_contained_page_with_the_charts_and_the_figures() {
        let html = render(&synthetic_run()).unwrap();
        // Histogram, CDF, lag per second, replay rate, memory.
        assert_eq!(html.matches("<svg").count(), 5, "{html}");
        assert_eq!(html.matches("</svg>").count(), 5);
        for label in [
            "lag from 202 to visible (ms, log scale)",
            "share of commands at or below",
            "seconds since the process started",
            "events/s",
            "RSS (MB)",
        ] {
            assert!(html.contains(label), "axis label {label:?} missing");
        }
        for figure in [
            "p50 6.64 ms",
            "p99 60.1 ms",
            "projector, 2 workers: 84,965/s",
            "projector, 1 worker: 92,599/s",
            "Kafka Streams, exactly_once_v2: 33,681/s",
            // Not sampled in this run: its mean as a reference line.
            "Kafka Streams, at_least_once: 33,393/s (mean; not sampled)",
            "raw Kafka consume (ConsumerPerformance): 292,683/s",
            "replay target: peak ≤ 256 MB",
        ] {
            assert!(html.contains(&esc(figure)), "figure {figure:?} missing");
        }
        // The table, as bench.sh printed it.
        assert!(html.contains("<td>replay_per_s</td><td class=\"v\">84,965/s</td>"));
        assert!(html.contains("&lt;= 50 <span class=\"missed\">MISSED</span>"));
        assert!(html.contains("<th colspan=\"4\">End to end</th>"));
        assert!(html.contains("2 cores, Test CPU"));
        // Nothing to fetch: no scripts, no links, no external resources.
        for outside in ["<script", "href=", "src=", "url(", "@import", "<link"] {
            assert!(!html.contains(outside), "{outside} in the page");
        }
    }

    #[test]
    fn an_older_run_renders_with_notes_instead_of_charts() {
        let mut run = synthetic_run();
        for name in ["e2e", "replay", "replay_1_worker", "kstreams_eos"] {
            let step = run.steps.get_mut(name).unwrap().as_object_mut().unwrap();
            for k in [
                "lag_202_to_visible_histogram",
                "visible_from_due_histogram",
                "lag_202_to_visible_by_second",
                "samples",
                "rss_samples_mb",
            ] {
                step.remove(k);
            }
        }
        run.summary
            .as_mut()
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove("table");
        run.summary.as_mut().unwrap()["replay_per_s"] = json!(84965.0);
        let html = render(&run).unwrap();
        assert_eq!(html.matches("<svg").count(), 0);
        assert!(html.contains("no lag histogram"));
        assert!(html.contains("no replay progress samples"));
        // The summary's own figures instead of the printed rows.
        assert!(html.contains("<td>replay_per_s</td><td class=\"v\">84965</td>"));
    }

    #[test]
    fn a_run_without_a_summary_still_renders_its_steps() {
        let mut run = synthetic_run();
        run.summary = None;
        let html = render(&run).unwrap();
        assert!(html.contains("the run did not finish"));
        assert_eq!(html.matches("<svg").count(), 5);
    }

    #[test]
    fn progress_runs_from_the_start_to_the_end_of_the_work() {
        let step = json!({"seconds": 2.0, "events": 100,
                          "samples": [[0.5, 0], [1.0, -1], [1.5, 60], [2.5, 100]]});
        assert_eq!(
            progress(&step),
            Some(vec![(0.0, 0.0), (0.5, 0.0), (1.5, 60.0), (2.0, 100.0)])
        );
        assert_eq!(progress(&json!({"seconds": 2.0, "events": 100})), None);
    }

    #[test]
    fn interval_rates_cover_the_run_without_gaps() {
        let points = [
            (0.0, 0.0),
            (0.2, 0.0),
            (0.4, 100.0),
            (0.6, 300.0),
            (0.8, 500.0),
            (0.9, 600.0),
        ];
        let r = interval_rates(&points, 0.25);
        // [0, 0.4], then [0.4, 0.9] (0.8 .. 0.9 is too short alone, so it joins).
        assert_eq!(r.len(), 2);
        assert!((r[0].2 - 250.0).abs() < 1e-9);
        assert!((r[1].0 - 0.4).abs() < 1e-9 && (r[1].1 - 0.9).abs() < 1e-9);
        assert!((r[1].2 - 1000.0).abs() < 1e-9);
        // Every event is in some interval.
        let sum: f64 = r.iter().map(|(a, b, rate)| (b - a) * rate).sum();
        assert!((sum - 600.0).abs() < 1e-6);
        assert!(interval_rates(&[], 1.0).is_empty());
        assert_eq!(
            interval_rates(&[(0.0, 0.0), (0.1, 10.0)], 1.0),
            vec![(0.0, 0.1, 100.0)]
        );
    }

    #[test]
    fn numbers() {
        assert!((nice_ceil(0.07) - 0.08).abs() < 1e-12);
        assert_eq!(nice_ceil(2.2), 2.5);
        assert_eq!(nice_ceil(300.0), 300.0);
        assert_eq!(nice_ceil(546.0), 600.0);
        assert_eq!(nice_ceil(100.0), 100.0);
        assert_eq!(log_ticks(1.0, 120.0).len(), 7);
        assert_eq!(floor_125(0.08), 0.05);
        assert_eq!(floor_125(3.0), 2.0);
        assert_eq!(floor_125(10.0), 10.0);
        let cdf = cdf_points(&[(1.0, 1), (1.001, 1), (2.0, 2)]);
        assert_eq!(cdf, vec![(1.0, 0.0), (1.0, 0.25), (2.0, 1.0)]);
        assert_eq!(fmt_int(292682.9268), "292,683");
        assert_eq!(fmt_int(999.0), "999");
        assert_eq!(fmt_num(6.640), "6.64");
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(60.1), "60.1");
        assert_eq!(fmt_si(250_000.0), "250k");
        assert_eq!(fmt_si(2_500.0), "2.5k");
        assert_eq!(esc("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }

    #[test]
    fn writes_the_page_from_a_run_folder() {
        let dir = tempfile::tempdir().unwrap();
        let run = synthetic_run();
        std::fs::create_dir(dir.path().join("steps")).unwrap();
        for (name, v) in &run.steps {
            std::fs::write(dir.path().join(format!("steps/{name}.json")), v.to_string()).unwrap();
        }
        std::fs::write(
            dir.path().join("summary.json"),
            run.summary.unwrap().to_string(),
        )
        .unwrap();
        let out = dir.path().join("report.html");
        let w = write(dir.path(), &out).unwrap();
        assert_eq!(w.charts, 5);
        assert!(std::fs::read_to_string(&out)
            .unwrap()
            .starts_with("<!DOCTYPE html>"));
        assert!(write(&dir.path().join("nothing"), &out).is_err());
    }
}
