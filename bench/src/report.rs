//! The results table, printed and written into `BENCHMARKS.md`.
//!
//! The benchmark owns only the part of `BENCHMARKS.md` between two marker comments; anything
//! outside them (the hand-written analysis) survives a new run.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::load::Outcome;
use crate::machine::Machine;

const BEGIN: &str = "<!-- bench:begin: written by `cargo run --release -p locker-bench -- all`; edit outside the markers -->";
const END: &str = "<!-- bench:end -->";

/// Whether a row met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// No target, or it could not be judged.
    None,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub scenario: String,
    pub clients: String,
    pub rate: String,
    pub p50: String,
    pub p90: String,
    pub p99: String,
    pub max: String,
    pub comparison: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    /// A row with the rate and latencies of a load run.
    pub fn measured(id: &str, scenario: &str, outcome: &Outcome, unit: &str) -> Row {
        Row {
            id: id.into(),
            scenario: scenario.into(),
            clients: outcome.clients.to_string(),
            rate: format!("{} {unit}", thousands(outcome.rate())),
            p50: ms(outcome.percentile(50.0)),
            p90: ms(outcome.percentile(90.0)),
            p99: ms(outcome.percentile(99.0)),
            max: ms(outcome.max()),
            comparison: String::new(),
            target: String::new(),
            verdict: Verdict::None,
        }
    }

    /// A row without a load run (start-up, process timings, a skipped scenario).
    pub fn plain(id: &str, scenario: &str) -> Row {
        Row {
            id: id.into(),
            scenario: scenario.into(),
            clients: "–".into(),
            rate: "–".into(),
            p50: "–".into(),
            p90: "–".into(),
            p99: "–".into(),
            max: "–".into(),
            comparison: String::new(),
            target: String::new(),
            verdict: Verdict::None,
        }
    }

    /// Sets the target and whether it was met.
    pub fn judge(&mut self, target: &str, met: bool) {
        self.target = target.into();
        self.verdict = if met { Verdict::Met } else { Verdict::Missed };
    }
}

/// Everything one run found.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    /// One report of several runs of the same scenarios: each number is the median of the
    /// runs' (rate, p50, p90, p99 and max each on its own), the comparison is the one of the
    /// run with the median rate (followed by every run's rate and p99), and a target counts as
    /// met when most runs met it. Runs whose rows do not line up (a scenario failed in one) are
    /// not combined: the first run is kept, and a note says why.
    pub fn median_of(mut runs: Vec<Report>) -> Report {
        if runs.len() <= 1 {
            return runs.pop().unwrap_or_default();
        }
        let n = runs.len();
        let mut notes: Vec<String> = runs
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                r.notes
                    .iter()
                    .map(move |note| format!("Run {}: {note}", i + 1))
            })
            .collect();
        let lined_up = runs.iter().all(|r| {
            r.rows.len() == runs[0].rows.len()
                && r.rows
                    .iter()
                    .zip(&runs[0].rows)
                    .all(|(a, b)| a.id == b.id && a.scenario == b.scenario)
        });
        if !lined_up {
            notes.push(format!(
                "The {n} runs produced different rows (a scenario failed in one), so the table is the first run's, not a median."
            ));
            let first = runs.swap_remove(0);
            return Report {
                rows: first.rows,
                notes,
            };
        }
        notes.insert(
            0,
            format!(
                "Every number is the median of {n} runs of every scenario (each column on its own); a comparison is the one of the run with the median rate, and \"met\" means met in most runs."
            ),
        );
        let rows = (0..runs[0].rows.len())
            .map(|i| combine(&runs.iter().map(|r| &r.rows[i]).collect::<Vec<_>>()))
            .collect();
        Report { rows, notes }
    }

    /// The table in Markdown.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| # | Scenario | Clients | Rate | p50 ms | p90 ms | p99 ms | max ms | Comparison | Target | Met |\n\
             |---|---|--:|--:|--:|--:|--:|--:|---|---|---|\n",
        );
        for r in &self.rows {
            let met = match r.verdict {
                Verdict::Met => "yes",
                Verdict::Missed => "**no**",
                Verdict::None => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.id,
                r.scenario,
                r.clients,
                r.rate,
                r.p50,
                r.p90,
                r.p99,
                r.max,
                r.comparison,
                r.target,
                met
            );
        }
        out
    }

    /// The generated section of `BENCHMARKS.md`.
    pub fn section(&self, machine: &Machine) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{BEGIN}");
        let _ = writeln!(out, "Run on {}.\n", machine.date);
        let _ = writeln!(out, "**Machine**\n");
        let _ = writeln!(out, "- CPU: {}", machine.cpu);
        let _ = writeln!(out, "- Memory: {}", machine.memory);
        let _ = writeln!(out, "- Disk under the servers' data: {}", machine.disk);
        let _ = writeln!(out, "- OS: {}\n", machine.os);
        let _ = writeln!(out, "**Results**\n");
        out.push_str(&self.table());
        let _ = writeln!(out, "\n**Run notes**\n");
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        let _ = writeln!(out, "{END}");
        out
    }

    /// Writes the generated section into `path`, keeping what lies outside its markers.
    pub fn write(&self, machine: &Machine, path: &Path) -> std::io::Result<()> {
        let section = self.section(machine);
        let text = match fs::read_to_string(path) {
            Ok(old) => splice(&old, &section),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
                "# Benchmarks\n\nHow to run them: see `bench/README.md`.\n\n{section}\n## Analysis\n\nWhat limits each missed target, with profiles: to be written after a run.\n"
            ),
            Err(e) => return Err(e),
        };
        fs::write(path, text)
    }
}

/// One row from the same row of several runs (see [`Report::median_of`]).
fn combine(rows: &[&Row]) -> Row {
    let n = rows.len();
    let rates: Vec<Option<(f64, String)>> = rows.iter().map(|r| parse_rate(&r.rate)).collect();
    // The run whose rate (or, for rows without one, p50) is the median lends its comparison.
    let key = |i: usize| {
        rates[i]
            .as_ref()
            .map(|(rate, _)| *rate)
            .or_else(|| parse_ms(&rows[i].p50))
            .unwrap_or(0.0)
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
    let middle = rows[order[n / 2]];
    let mut row = middle.clone();
    if let Some(unit) = rates.iter().flatten().map(|(_, unit)| unit.clone()).next()
        && let Some(rate) = median_f64(rates.iter().flatten().map(|(r, _)| *r).collect())
    {
        row.rate = format!("{} {unit}", thousands(rate));
    }
    for (column, get) in [
        (
            &mut row.p50,
            (|r: &Row| r.p50.clone()) as fn(&Row) -> String,
        ),
        (&mut row.p90, |r: &Row| r.p90.clone()),
        (&mut row.p99, |r: &Row| r.p99.clone()),
        (&mut row.max, |r: &Row| r.max.clone()),
    ] {
        if let Some(v) = median_f64(rows.iter().filter_map(|r| parse_ms(&get(r))).collect()) {
            *column = format!("{v:.2}");
        }
    }
    let mut runs = Vec::new();
    if rates.iter().all(Option::is_some) {
        let list: Vec<String> = rates.iter().flatten().map(|(r, _)| thousands(*r)).collect();
        runs.push(format!("rate {}", list.join(" / ")));
    }
    if rows.iter().all(|r| parse_ms(&r.p99).is_some()) {
        let list: Vec<&str> = rows.iter().map(|r| r.p99.as_str()).collect();
        runs.push(format!("p99 {} ms", list.join(" / ")));
    } else if rows.iter().all(|r| parse_ms(&r.p50).is_some()) {
        let list: Vec<&str> = rows.iter().map(|r| r.p50.as_str()).collect();
        runs.push(format!("p50 {} ms", list.join(" / ")));
    }
    if !runs.is_empty() {
        row.comparison = format!("{}; runs: {}", row.comparison, runs.join("; "));
    }
    let judged = rows.iter().filter(|r| r.verdict != Verdict::None).count();
    if judged > 0 {
        let met = rows.iter().filter(|r| r.verdict == Verdict::Met).count();
        row.verdict = if 2 * met > n {
            Verdict::Met
        } else {
            Verdict::Missed
        };
        row.target = format!("{} (met in {met} of {n} runs)", row.target);
    }
    row
}

/// "19,105 cycles/s" as (19105, "cycles/s"); none for "–".
fn parse_rate(text: &str) -> Option<(f64, String)> {
    let (number, unit) = text.split_once(' ')?;
    let number = number.replace(',', "").parse().ok()?;
    Some((number, unit.to_string()))
}

/// "3.03" as 3.03; none for "–".
fn parse_ms(text: &str) -> Option<f64> {
    text.parse().ok()
}

/// The median (the upper one of an even count); none when empty.
fn median_f64(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// Replaces the marked section of `old` with `section` (appending it if `old` has none).
fn splice(old: &str, section: &str) -> String {
    let begin = old.find("<!-- bench:begin");
    let end = old.find(END);
    match (begin, end) {
        (Some(b), Some(e)) if b < e => {
            let after = &old[e + END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{section}{after}", &old[..b])
        }
        _ => format!("{old}\n{section}"),
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// A number rounded to an integer, with thousands separated by commas.
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A ratio as a percentage.
pub fn percent(part: f64, whole: f64) -> String {
    if whole == 0.0 {
        return "n/a".into();
    }
    format!("{:.0} %", 100.0 * part / whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }

    fn row(rate: &str, p99: &str, comparison: &str, met: bool) -> Row {
        let mut row = Row::plain("2", "Durable cycles");
        row.rate = rate.into();
        row.p50 = "1.00".into();
        row.p99 = p99.into();
        row.comparison = comparison.into();
        row.judge("p99 < 8 ms", met);
        row
    }

    #[test]
    fn several_runs_give_each_column_its_median_and_the_majority_verdict() {
        let runs = vec![
            Report {
                rows: vec![row("1,000 cycles/s", "9.00", "slow run", false)],
                notes: vec!["a".into()],
            },
            Report {
                rows: vec![row("3,000 cycles/s", "5.00", "fast run", true)],
                notes: vec![],
            },
            Report {
                rows: vec![row("2,000 cycles/s", "7.00", "middle run", true)],
                notes: vec![],
            },
        ];
        let combined = Report::median_of(runs);
        let r = &combined.rows[0];
        assert_eq!(r.rate, "2,000 cycles/s");
        assert_eq!(r.p99, "7.00");
        assert_eq!(
            r.comparison,
            "middle run; runs: rate 1,000 / 3,000 / 2,000; p99 9.00 / 5.00 / 7.00 ms"
        );
        assert_eq!(r.verdict, Verdict::Met);
        assert_eq!(r.target, "p99 < 8 ms (met in 2 of 3 runs)");
        assert!(
            combined.notes.iter().any(|n| n == "Run 1: a"),
            "{:?}",
            combined.notes
        );
    }

    #[test]
    fn runs_that_do_not_line_up_are_not_combined() {
        let runs = vec![
            Report {
                rows: vec![row("1,000 cycles/s", "9.00", "first", false)],
                notes: vec![],
            },
            Report {
                rows: vec![],
                notes: vec![],
            },
        ];
        let combined = Report::median_of(runs);
        assert_eq!(combined.rows[0].comparison, "first");
        assert!(combined.notes.last().unwrap().contains("different rows"));
    }

    #[test]
    fn splicing_keeps_the_hand_written_parts() {
        let old =
            format!("# B\nintro\n<!-- bench:begin: x -->\nold table\n{END}\n## Analysis\nkept\n");
        let new = splice(&old, &format!("{BEGIN}\nnew table\n{END}\n"));
        assert!(new.starts_with("# B\nintro\n<!-- bench:begin"), "{new}");
        assert!(
            new.contains("new table") && !new.contains("old table"),
            "{new}"
        );
        assert!(new.ends_with("## Analysis\nkept\n"), "{new}");
    }
}
