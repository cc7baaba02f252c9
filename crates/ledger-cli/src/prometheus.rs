//! Reading a service's `GET /metrics`: the Prometheus text exposition format (and
//! OpenMetrics, which the services answer), enough to sum a counter over its label sets.
//!
//! A sample line is `name{label="value",…} value [timestamp]`. Label values are quoted
//! and may hold spaces, braces and escaped quotes, so a line is read with the quotes in
//! mind rather than split on whitespace.

/// The sum of every sample of the metric `name` (exactly that name: not its `_created`
/// or `_bucket` siblings), over all its label sets; `None` when the text has none.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for sample in text.lines().filter_map(parse_line) {
        if sample.name == name {
            *found.get_or_insert(0.0) += sample.value;
        }
    }
    found
}

/// One sample line.
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    /// The labels are not kept: only the name and the value are needed.
    value: f64,
}

/// A sample line read, or `None` for a comment, a blank line, or a line that is not a
/// sample (which a reader of a format with extensions skips rather than fails on).
fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    let rest = match rest.strip_prefix('{') {
        Some(inside) => &inside[closing_brace(inside)? + 1..],
        None => rest,
    };
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name, value })
}

/// Where the label set that `s` starts inside of ends: the first `}` outside quotes.
fn closing_brace(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the ingest answers, trimmed: OpenMetrics from prometheus-client.
    const INGEST: &str = r#"# HELP ingest_commands_accepted Commands acknowledged by the broker, by type.
# TYPE ingest_commands_accepted counter
ingest_commands_accepted_total{type="open_account"} 3
ingest_commands_accepted_total{type="deposit"} 12
ingest_commands_accepted_total{type="withdraw"} 0
ingest_commands_accepted_total{type="transfer"} 5
ingest_commands_accepted_created{type="deposit"} 1714000000.0
# HELP ingest_commands_rejected Commands refused, by error code.
# TYPE ingest_commands_rejected counter
ingest_commands_rejected_total{code="invalid_amount"} 2
ingest_in_flight 1
# EOF
"#;

    #[test]
    fn a_counter_is_summed_over_its_label_sets_and_nothing_else() {
        assert_eq!(sum(INGEST, "ingest_commands_accepted_total"), Some(20.0));
        assert_eq!(sum(INGEST, "ingest_commands_rejected_total"), Some(2.0));
        assert_eq!(sum(INGEST, "ingest_in_flight"), Some(1.0));
        assert_eq!(sum(INGEST, "ingest_commands_accepted"), None);
        assert_eq!(sum("", "ingest_in_flight"), None);
    }

    #[test]
    fn label_values_may_hold_spaces_braces_and_quotes() {
        let line = r#"errors_total{reason="a } b \"quoted\" c",kind="x"} 7 1714000000000"#;
        assert_eq!(
            parse_line(line),
            Some(Sample {
                name: "errors_total",
                value: 7.0,
            })
        );
        assert_eq!(sum(line, "errors_total"), Some(7.0));
    }

    #[test]
    fn odd_lines_are_skipped_not_fatal() {
        for line in [
            "# a comment",
            "   ",
            "no_value",
            "bad{unterminated=\"x} 1",
            "x{} not-a-number",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
        assert_eq!(parse_line("x 1.5e3").map(|s| s.value), Some(1500.0));
        assert_eq!(
            parse_line("le{le=\"+Inf\"} +Inf").map(|s| s.value),
            Some(f64::INFINITY)
        );
    }
}
