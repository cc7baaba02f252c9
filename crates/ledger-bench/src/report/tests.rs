//! Unit tests of `report`.

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
