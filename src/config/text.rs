//! Small text helpers for config values: `${VAR}` interpolation and durations.

use std::time::Duration;

/// Replaces `${VAR}` with the variable's value and `${VAR:-default}` with the
/// value or the default when unset or empty. `$$` is a literal `$`; any other
/// `$` is kept as is. An unset `${VAR}` without a default is an error naming
/// the variable (never a value).
pub fn interpolate(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{input}`"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid = !name.is_empty()
                && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("invalid variable name `{name}` in `${{{expr}}}`"));
            }
            match (
                lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!("environment variable {name} is not set"));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `90s`, `15m`, `2h`, `1d`, `500ms` or a bare number of seconds.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration `{input}` (expected e.g. 30s, 15m, 2h)"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    };
    secs.map(Duration::from_secs).ok_or_else(|| {
        format!("invalid duration `{input}` (expected a number with ms, s, m, h or d)")
    })
}

/// Edit distance (insertions, deletions, substitutions and swaps of two
/// neighbours: `form` is one edit from `from`), for "did you mean".
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `word` when it is close enough to be a typo
/// (at most 2 edits, and fewer than half the word).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = 2.min(word.chars().count().saturating_sub(1) / 2).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d > 0 && *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The shortest exact form `parse_duration` reads back: `24h`, `90s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        return format!("{}ms", d.as_millis());
    }
    // Days from two on: "24h" reads better than "1d".
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s.is_multiple_of(n) && (unit != "d" || s >= 2 * 86_400) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_word() {
        assert_eq!(edit_distance("form", "from"), 1);
        assert_eq!(edit_distance("alpne", "alpine"), 1);
        assert_eq!(closest("form", ["name", "from", "schedule"]), Some("from"));
        assert_eq!(
            closest("shcedule", ["name", "from", "schedule"]),
            Some("schedule")
        );
        assert_eq!(closest("xyz", ["name", "from"]), None);
        assert_eq!(closest("buld", ["build", "deploy"]), Some("build"));
    }

    #[test]
    fn durations_format_back() {
        for t in ["24h", "90s", "15m", "2d", "500ms"] {
            assert_eq!(format_duration(parse_duration(t).unwrap()), t);
        }
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("registry.example.com".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolates() {
        assert_eq!(
            interpolate("${HOST}/app:1", &env).unwrap(),
            "registry.example.com/app:1"
        );
        assert_eq!(interpolate("a-${NOPE:-x}-b", &env).unwrap(), "a-x-b");
        assert_eq!(interpolate("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(interpolate("${EMPTY}", &env).unwrap(), "");
        assert_eq!(interpolate("cost $$5 $x", &env).unwrap(), "cost $5 $x");
        assert_eq!(interpolate("plain", &env).unwrap(), "plain");
        assert_eq!(
            interpolate("${NOPE}", &env).unwrap_err(),
            "environment variable NOPE is not set"
        );
        assert!(
            interpolate("${HOST", &env)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            interpolate("${1X}", &env)
                .unwrap_err()
                .contains("invalid variable")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("2 hours").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
    }
}
