//! Durations as pipeline authors write them (`500ms`, `10s`, `5m`, `1h`), and back again for log lines.

use std::time::Duration;

/// Parses a duration such as `500ms`, `10s`, `5m`, `1h` or `1h 30m`.
///
/// The error text says what was wrong with the text (an unknown unit, a missing unit, ...).
pub fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("it is empty".to_owned());
    }
    humantime::parse_duration(trimmed).map_err(|err| err.to_string())
}

/// Formats a duration for a log line, to the millisecond (`1s 250ms`, `0s`).
pub fn format(duration: Duration) -> String {
    let millis = Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    if millis.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(millis).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_pipeline_authors_use() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse(" 2s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_text_that_is_not_a_duration() {
        for text in ["", "  ", "10", "ten seconds", "5 parsecs", "-1s", "1.5.2s"] {
            assert!(
                parse(text).is_err(),
                "{text:?} should not parse as a duration"
            );
        }
    }

    #[test]
    fn a_missing_unit_is_explained() {
        let err = parse("10").unwrap_err();
        assert!(
            err.contains("unit"),
            "expected the error to mention the unit, got {err:?}"
        );
    }

    #[test]
    fn formats_to_the_millisecond() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_micros(1500)), "1ms");
        assert_eq!(format(Duration::from_millis(1250)), "1s 250ms");
        assert_eq!(format(Duration::from_secs(90)), "1m 30s");
    }
}
