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
