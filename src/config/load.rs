//! Reading config files: a file or a directory, UTF-8 and emptiness checks,
//! YAML parsing under budgets, and parse errors as diagnostics.

use std::path::{Path, PathBuf};

use serde_saphyr::SnippetMode;

use super::raw::RawFile;
use super::validate::validate;
use super::{Config, ConfigError, Diagnostic};

/// Loads and validates a config from a YAML file or a directory of them
/// (every `*.yaml` / `*.yml` directly inside, in name order). Environment
/// variables are read for `${VAR}` and `*_env` secrets.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let files = if path.is_dir() {
        yaml_files(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut texts = Vec::with_capacity(files.len());
    for file in files {
        let bytes = std::fs::read(&file).map_err(|source| ConfigError::Io {
            path: file.clone(),
            source,
        })?;
        texts.push((file, bytes));
    }
    load_bytes(texts, &|name| std::env::var(name).ok())
}

/// Loads one document from memory, as if read from `name` (for tests and
/// tools). `env` answers `${VAR}` and `*_env` look-ups.
pub fn load_str(
    name: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    load_bytes(vec![(PathBuf::from(name), text.as_bytes().to_vec())], env)
}

fn load_bytes(
    texts: Vec<(PathBuf, Vec<u8>)>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut diagnostics = Vec::new();
    let mut parsed = Vec::with_capacity(texts.len());
    let mut broken = false;
    for (file, result) in parse_all(texts) {
        diagnostics.extend(result.diagnostics);
        match result.raw {
            Some(raw) => parsed.push((file, raw)),
            None => broken = true,
        }
    }
    // Later checks would only add noise about what the broken files declare.
    // Unknown keys are not that: the rest of the file is checked without them.
    if broken {
        return Err(ConfigError::Invalid(diagnostics));
    }
    let order: Vec<PathBuf> = parsed.iter().map(|(f, _)| f.clone()).collect();
    match validate(parsed, env) {
        Ok(config) if diagnostics.is_empty() => Ok(config),
        Ok(_) => Err(ConfigError::Invalid(diagnostics)),
        Err(more) => {
            diagnostics.extend(more);
            let at = |d: &Diagnostic| order.iter().position(|f| *f == d.file);
            diagnostics.sort_by_key(|d| (at(d), d.line, d.column));
            Err(ConfigError::Invalid(diagnostics))
        }
    }
}

/// One file's parse: the document (unless it could not be read at all) and
/// what was wrong with it.
struct Parsed {
    raw: Option<RawFile>,
    diagnostics: Vec<Diagnostic>,
}

/// Parses files on all cores (YAML parsing is most of a large load), keeping
/// their order.
fn parse_all(texts: Vec<(PathBuf, Vec<u8>)>) -> Vec<(PathBuf, Parsed)> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(texts.len());
    if workers <= 1 {
        return texts
            .into_iter()
            .map(|(f, b)| {
                let r = parse_file(&f, &b);
                (f, r)
            })
            .collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Parsed>> = (0..texts.len()).map(|_| None).collect();
    let slots = std::sync::Mutex::new(&mut results);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((file, bytes)) = texts.get(i) else {
                        break;
                    };
                    let r = parse_file(file, bytes);
                    if let Ok(mut slots) = slots.lock() {
                        slots[i] = Some(r);
                    }
                }
            });
        }
    });
    texts
        .into_iter()
        .zip(results)
        .map(|((f, _), r)| {
            let r = r.unwrap_or_else(|| Parsed {
                raw: None,
                diagnostics: vec![diag(&f, 1, 1, "file was not parsed (internal error)")],
            });
            (f, r)
        })
        .collect()
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let is_yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(ConfigError::NoYamlFiles {
            path: dir.to_path_buf(),
        });
    }
    files.sort();
    Ok(files)
}

fn diag(file: &Path, line: u64, column: u64, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line,
        column,
        message: message.into(),
    }
}

/// Parses one file, reporting every unknown key in one run: each one is
/// reported, blanked out (keeping every other line and column where it
/// was) and the file parsed again, so a config with three typos takes one
/// `check`, and the rest of the file is still validated.
fn parse_file(file: &Path, bytes: &[u8]) -> Parsed {
    let failed = |d| Parsed {
        raw: None,
        diagnostics: vec![d],
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let (line, col) = line_col(bytes, e.valid_up_to());
            return failed(diag(file, line, col, "file is not valid UTF-8"));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    if blank {
        return failed(diag(
            file,
            1,
            1,
            "file is empty: expected a mapping with `images:` and other sections",
        ));
    }
    let mut diagnostics = Vec::new();
    let mut edited: Option<String> = None;
    loop {
        let current = edited.as_deref().unwrap_or(text);
        let e = match parse_text(current) {
            Ok(raw) => {
                return Parsed {
                    raw: Some(raw),
                    diagnostics,
                };
            }
            Err(e) => e,
        };
        let (line, column) = e
            .location()
            .map(|l| (l.line().max(1), l.column().max(1)))
            .unwrap_or((1, 1));
        let message = plain_message(&e);
        let unknown_key = message.starts_with("unknown field `");
        diagnostics.push(diag(file, line, column, message));
        // A hundred typos in one file is enough to be going on with.
        if !unknown_key || diagnostics.len() >= 100 {
            return Parsed {
                raw: None,
                diagnostics,
            };
        }
        match without_entry(current, line, column) {
            Some(next) => edited = Some(next),
            None => {
                return Parsed {
                    raw: None,
                    diagnostics,
                };
            }
        }
    }
}

/// Budgets scale with the text's size, so a 100,000-image lineage loads
/// while an alias bomb or a deeply nested document (whose expansion is far
/// larger than its text) is refused early with little memory.
fn parse_text(text: &str) -> Result<RawFile, serde_saphyr::Error> {
    let len = text.len();
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: (len * 2).max(1_000_000),
            max_nodes: len.max(250_000),
            max_aliases: 10_000,
            max_anchors: 10_000,
            max_depth: 32,
            max_documents: 1,
        },
    };
    serde_saphyr::from_str_with_options::<RawFile>(text, options)
}

/// The text with the block-style mapping entry whose key starts at
/// `line`:`column` (1-based) blanked out: the key and its value to the end
/// of the line, and the lines below indented deeper (or a sequence at the
/// key's own indentation). Every other line keeps its number and columns.
/// `None` when the key is not the first thing on its line (flow style).
fn without_entry(text: &str, line: u64, column: u64) -> Option<String> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    let first = usize::try_from(line).ok()?.checked_sub(1)?;
    let col = usize::try_from(column).ok()?.checked_sub(1)?;
    let head = lines.get(first)?;
    let cut = head.char_indices().nth(col).map(|(i, _)| i)?;
    let before = &head[..cut];
    let in_flow = flow_depth(lines[..first].iter().copied().chain([before])) > 0;
    if in_flow || !before.chars().all(|c| c == ' ' || c == '-') {
        // In a flow mapping (`{ backend: ci, typo: 1 }`, maybe over several
        // lines): spaces over the entry and its comma, when it ends on this
        // line; one space per character keeps later columns.
        let end = flow_entry_end(&head[cut..])?;
        let mut line = head.to_string();
        let width = head[cut..cut + end].chars().count();
        line.replace_range(cut..cut + end, &" ".repeat(width));
        lines[first] = "";
        let mut out = lines.join("\n");
        let start: usize = lines[..first].iter().map(|l| l.len() + 1).sum();
        out.insert_str(start, &line);
        return Some(out);
    }
    lines[first] = before;
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    for l in lines.iter_mut().skip(first + 1) {
        let t = l.trim();
        let inside = t.is_empty()
            || t.starts_with('#')
            || indent(l) > col
            || (indent(l) == col && t.starts_with('-'));
        if !inside {
            break;
        }
        *l = "";
    }
    Some(lines.join("\n"))
}

/// The error's message without serde-saphyr's own position suffix or snippet:
/// the diagnostic carries the position in `file:line:col` form already.
fn plain_message(e: &serde_saphyr::Error) -> String {
    let rendered = e.render_with_options(serde_saphyr::render_options! {
        snippets: SnippetMode::Off,
    });
    let first = rendered.lines().next().unwrap_or("invalid YAML").trim();
    let msg = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    let msg = msg.trim_end_matches(['.', ':']).trim();
    if let Some(limit) = msg.strip_prefix("budget breached:") {
        format!(
            "refused: the document exceeds a parser safety limit ({}); YAML alias bombs and huge expansions are not accepted",
            limit.trim()
        )
    } else if msg.contains("recursion limit") || msg.contains("depth") {
        format!("refused: nesting is too deep ({msg})")
    } else if let Some(hint) = did_you_mean(msg) {
        format!("{msg}; did you mean `{hint}`?")
    } else {
        msg.to_string()
    }
}

/// For "unknown field `form`, expected one of name, from, …": the field
/// the typo was probably meant to be.
fn did_you_mean(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split_once("expected one of ")
        .or_else(|| rest.split_once("expected "))?
        .1;
    let names: Vec<&str> = expected
        .split(',')
        .map(|n| n.trim().trim_matches('`'))
        .collect();
    super::text::closest(field, names).map(str::to_string)
}

/// How many flow collections (`{`, `[`) are open at the end of these lines
/// (quotes and comments skipped).
fn flow_depth<'a>(lines: impl Iterator<Item = &'a str>) -> usize {
    let mut depth = 0usize;
    for l in lines {
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for c in l.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '#') if prev.is_whitespace() => break,
                (None, '"' | '\'') if depth > 0 || prev.is_whitespace() => quote = Some(c),
                (None, '{' | '[') => depth += 1,
                (None, '}' | ']') => depth = depth.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
    }
    depth
}

/// Byte length of a flow entry (`key: value,`) at the start of `rest`,
/// with its comma; the closing `}` is left. `None` when it does not end on
/// this line.
fn flow_entry_end(rest: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') if depth > 0 => depth -= 1,
            (None, '}') => return Some(i),
            (None, ',') if depth == 0 => return Some(i + 1),
            (None, '#') => return None,
            _ => {}
        }
    }
    None
}

fn line_col(bytes: &[u8], offset: usize) -> (u64, u64) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count() as u64
        + 1;
    (line, col)
}
