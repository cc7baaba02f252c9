//! The report's charts as inline SVG, drawn with plotters: the lag histogram and CDF,
//! lines over time, their axes and marks, and the number formats they print.

use super::*;

pub(super) const SIZE: (u32, u32) = (900, 420);
pub(super) const FONT: &str = "sans-serif";
pub(super) const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
    RGBColor(140, 86, 75),
];
pub(super) const MARK: RGBColor = RGBColor(200, 30, 30);
pub(super) const REFERENCE: RGBColor = RGBColor(110, 110, 110);

type Drawn = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Draws on a fresh SVG canvas and returns the SVG.
pub(super) fn svg_of(
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
pub(super) const BINS_PER_DECADE: f64 = 24.0;

/// The lag histogram on a log axis, so the body (a few ms) and the tail (up to seconds)
/// both show; with vertical lines at the marked percentiles.
pub(super) fn lag_histogram_svg(
    d: &[(f64, u64)],
    marks: &[(String, f64)],
) -> anyhow::Result<String> {
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
pub(super) fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
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
pub(super) fn floor_125(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .iter()
        .map(|m| m * p)
        .find(|&x| x <= v * (1.0 + 1e-9))
        .unwrap_or(p)
}

/// A log axis from a round number (1, 2, 5) at or below the lowest value to a round number at
/// or above the highest, a decade wide at least.
pub(super) fn log_range(ds: &[&[(f64, u64)]]) -> (f64, f64) {
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
pub(super) fn draw_marks<DB: DrawingBackend, X, Y>(
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
pub(super) fn cdf_points(d: &[(f64, u64)]) -> Vec<(f64, f64)> {
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
pub(super) fn lag_cdf_svg(
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
pub(super) struct Line {
    pub(super) label: String,
    pub(super) color: RGBColor,
    pub(super) points: Vec<(f64, f64)>,
}

impl Line {
    pub(super) fn new(label: &str, color: RGBColor, points: Vec<(f64, f64)>) -> Self {
        Line {
            label: label.to_string(),
            color,
            points,
        }
    }
}

/// A line chart on linear axes.
pub(super) struct Lines<'a> {
    pub(super) title: &'a str,
    pub(super) x_desc: &'a str,
    pub(super) y_desc: &'a str,
    /// Whether the y labels are abbreviated (300k) or plain (420).
    pub(super) y_si: bool,
    pub(super) series: Vec<Line>,
    /// Horizontal dashed lines, at the `y` of their one point.
    pub(super) references: Vec<Line>,
}

pub(super) fn lines_svg(c: &Lines<'_>) -> anyhow::Result<String> {
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
pub(super) fn nice_ceil(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&x| x >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * p)
}

/// A number with no more digits than it has: 0.25, 6.64, 60.1, 1200.
pub(super) fn fmt_num(v: f64) -> String {
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

pub(super) fn fmt_ms_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{} ms", fmt_num(v)))
}

/// An integer with thousands separators: 84,965.
pub(super) fn fmt_int(v: f64) -> String {
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
pub(super) fn fmt_si(v: f64) -> String {
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
pub(super) fn esc(s: &str) -> String {
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
