//! The server's JSON as tables a person reads: the locks for `locker status`, a lock's queue,
//! and its history for `locker history`. Times are shown relative to now ("3m 10s ago", "in
//! 2m"), the way a person asks "since when, until when"; history shows them as written, since
//! it is a record.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use locker_protocol::{Holder, Lock};
use serde_json::Value;

/// Columns of text, each as wide as its widest cell, two spaces apart.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: Vec<&'static str>) -> Self {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    fn render(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|row| row[i].chars().count())
                .chain([self.header[i].len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let line = |cells: Vec<&str>| {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            line.trim_end().to_string() + "\n"
        };
        let mut text = line(self.header.clone());
        for row in &self.rows {
            text.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        text
    }
}

/// The table of `locker status`: one row per holder (one for a free lock).
pub fn locks(locks: &BTreeMap<String, Lock>, now: SystemTime) -> String {
    if locks.is_empty() {
        return "no locks\n".into();
    }
    let mut table = Table::new(vec![
        "NAME",
        "STATE",
        "KEY",
        "TOKEN",
        "HOLDER",
        "BUILD",
        "SINCE",
        "LEASE ENDS",
        "QUEUE",
    ]);
    for (name, lock) in locks {
        let queue = lock.queue.len().to_string();
        if lock.holders.is_empty() {
            table.rows.push(
                [name, "free", "-", "-", "-", "-", "-", "-", &queue]
                    .map(str::to_owned)
                    .to_vec(),
            );
            continue;
        }
        for (i, holder) in lock.holders.iter().enumerate() {
            let first = i == 0;
            let only_first = |text: String| if first { text } else { String::new() };
            table.rows.push(vec![
                only_first(name.clone()),
                only_first("held".into()),
                only_first(lock.key.clone()),
                only_first(lock.token.map_or_else(|| "-".into(), |t| t.to_string())),
                requestor(holder),
                build(&holder.owner),
                holder
                    .since
                    .as_deref()
                    .or(lock.locked_at.as_deref())
                    .map_or_else(|| "-".into(), |t| relative(t, now)),
                holder
                    .expires_at
                    .as_deref()
                    .map_or_else(|| "never".into(), |t| relative(t, now)),
                only_first(queue.clone()),
            ]);
        }
    }
    table.render()
}

/// Who waits for lock `name`, in order; empty when nobody does.
pub fn queue(name: &str, lock: &Lock, now: SystemTime) -> String {
    if lock.queue.is_empty() {
        return String::new();
    }
    let mut table = Table::new(vec!["#", "REQUESTOR", "KEY", "BUILD", "WAITING SINCE"]);
    for (i, waiter) in lock.queue.iter().enumerate() {
        table.rows.push(vec![
            (i + 1).to_string(),
            waiter.requestor.clone(),
            waiter.key.clone(),
            build(&waiter.owner),
            relative(&waiter.since, now),
        ]);
    }
    format!("\nqueue of '{name}':\n{}", table.render())
}

/// The table of `locker history`, from the server's list of entries.
pub fn history(name: &str, entries: &[Value]) -> String {
    if entries.is_empty() {
        return format!("no history for lock '{name}'\n");
    }
    let mut table = Table::new(vec![
        "ID",
        "TIME",
        "OP",
        "REQUESTOR",
        "KEY",
        "TOKEN",
        "REVISION",
        "BUILD",
        "CLIENT",
        "REASON",
    ]);
    for entry in entries {
        let owner: BTreeMap<String, String> =
            serde_json::from_value(entry["owner"].clone()).unwrap_or_default();
        let field = |name: &str| match &entry[name] {
            Value::Null => "-".to_string(),
            Value::String(s) if s.is_empty() => "-".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        table.rows.push(vec![
            field("id"),
            field("time"),
            field("op"),
            field("requestor"),
            field("key"),
            field("token"),
            field("revision"),
            build(&owner),
            field("client"),
            field("reason"),
        ]);
    }
    table.render()
}

fn requestor(holder: &Holder) -> String {
    match holder.count {
        0 | 1 => holder.requestor.clone(),
        n => format!("{} ({n})", holder.requestor),
    }
}

/// Who a claim is for, from its owner: `pipeline/job #build` and the build's link when the
/// owner says, else its note and host.
fn build(owner: &BTreeMap<String, String>) -> String {
    let field = |name: &str| {
        owner
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let mut parts = Vec::new();
    match (field("pipeline"), field("job"), field("build")) {
        (Some(pipeline), Some(job), Some(build)) => {
            parts.push(format!("{pipeline}/{job} #{build}"))
        }
        _ => parts.extend(field("note").map(str::to_owned)),
    }
    parts.extend(field("build_url").map(str::to_owned));
    if parts.is_empty() || field("note").is_some() {
        parts.extend(field("host").map(|host| format!("on {host}")));
    }
    match parts.join(" ") {
        text if text.is_empty() => "-".into(),
        text => text,
    }
}

/// A time of the API relative to `now`: `3m 10s ago`, `in 2m`.
fn relative(time: &str, now: SystemTime) -> String {
    let Ok(at) = humantime::parse_rfc3339_weak(time) else {
        return time.to_string();
    };
    match now.duration_since(at) {
        Ok(past) => format!("{} ago", rounded(past)),
        Err(e) => format!("in {}", rounded(e.duration())),
    }
}

/// A duration in its two largest units, in whole seconds: `1d 2h`, `3m 10s`, `0s`.
fn rounded(duration: Duration) -> String {
    let mut left = duration.as_secs();
    let mut parts = Vec::new();
    for (unit, seconds) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if left >= seconds {
            parts.push(format!("{}{unit}", left / seconds));
            left %= seconds;
        }
    }
    match parts.len() {
        0 => "0s".into(),
        _ => parts.into_iter().take(2).collect::<Vec<_>>().join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn times_are_relative_in_two_units() {
        let now = at("2026-01-15T08:00:00Z");
        assert_eq!(relative("2026-01-15T07:56:50.000Z", now), "3m 10s ago");
        assert_eq!(relative("2026-01-15T08:02:00.400Z", now), "in 2m");
        assert_eq!(relative("2026-01-14T05:00:01.000Z", now), "1d 2h ago");
        assert_eq!(relative("2026-01-15T08:00:00.000Z", now), "0s ago");
        assert_eq!(relative("not a time", now), "not a time");
    }

    #[test]
    fn a_build_is_named_by_pipeline_job_and_number_with_its_link() {
        let owner = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            build(&owner(&[
                ("pipeline", "main"),
                ("job", "deploy"),
                ("build", "42"),
                ("build_url", "https://ci/b/42")
            ])),
            "main/deploy #42 https://ci/b/42"
        );
        assert_eq!(
            build(&owner(&[("note", "locker run: make"), ("host", "box")])),
            "locker run: make on box"
        );
        assert_eq!(build(&owner(&[])), "-");
    }

    #[test]
    fn columns_line_up_and_shared_rows_leave_the_lock_blank() {
        let lock: Lock = serde_json::from_value(serde_json::json!({
            "key": "blue", "locked_by": {"a": 1, "bb": 2}, "revision": 3,
            "locked_at": "2026-01-15T07:59:00.000Z", "token": 3,
            "holders": [
                {"requestor": "a", "count": 1, "since": "2026-01-15T07:59:00.000Z", "expires_at": null, "owner": {}},
                {"requestor": "bb", "count": 2, "since": "2026-01-15T07:59:30.000Z", "expires_at": "2026-01-15T08:01:00.000Z", "owner": {}}
            ],
            "queue": [{"requestor": "w", "key": "green", "since": "2026-01-15T07:59:50.000Z", "owner": {}}]
        }))
        .unwrap();
        let table = locks(
            &BTreeMap::from([("env".to_string(), lock)]),
            at("2026-01-15T08:00:00Z"),
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let holder_column = lines[0].find("HOLDER").unwrap();
        assert_eq!(&lines[1][holder_column..holder_column + 1], "a", "{table}");
        assert_eq!(
            &lines[2][holder_column..holder_column + 6],
            "bb (2)",
            "{table}"
        );
        assert!(lines[1].starts_with("env   held   blue  3"), "{table}");
        assert!(lines[2].starts_with("   "), "{table}");
        assert!(lines[2].contains("in 1m"), "{table}");
        assert!(lines[1].ends_with("1"), "queue length: {table}");
    }
}
