//! Reading a Dockerfile for its lineage: which images the built image is
//! made from. Follows what BuildKit does rather than what a regex sees:
//!
//! - parser directives (`# escape=`), a BOM, comments and line
//!   continuations, heredocs (`RUN <<EOF … EOF`: a `FROM` inside one is not
//!   an instruction; found as BuildKit finds them, word by word);
//! - `ARG` defaults before the first `FROM` substituted into `FROM` lines
//!   (`${VAR}`, `$VAR`, `${VAR:-default}`, `${VAR-default}`, `${VAR:+x}`),
//!   overridden by `--build-arg`s (`--from` takes no variables: BuildKit
//!   refuses them);
//! - multi-stage builds: a stage name (case-insensitive) or index is not an
//!   image (a `COPY --from` may name a stage further down); `FROM stage`,
//!   `COPY --from=stage|N|image` and
//!   `RUN --mount=…,from=stage|image` follow the stage graph from the target
//!   (last) stage, so a stage the target does not use adds nothing;
//! - `FROM scratch` is no parent; `--platform` is kept, never substituted
//!   (`$BUILDPLATFORM` is BuildKit's to fill in).
//!
//! A base that cannot be resolved (`FROM ${BASE}` with no default) is a
//! problem with its line, not a guess.

use std::collections::BTreeMap;

use crate::registry::ImageRef;

/// What a stage starts from, or what a `--from` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Image(ImageRef),
    /// Index into `Dockerfile::stages`.
    Stage(usize),
    Scratch,
    /// Could not be resolved; a problem says why.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: Option<String>,
    /// 1-based line of its `FROM`.
    pub line: usize,
    pub base: Source,
    /// `--platform` as written (`$BUILDPLATFORM`, `linux/amd64`).
    pub platform: Option<String>,
    /// `COPY --from` and `RUN --mount=…,from=`, with their lines.
    pub uses: Vec<(usize, Source)>,
    /// `LABEL`s set in this stage (inherited ones are merged by `labels`).
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct Dockerfile {
    pub stages: Vec<Stage>,
    pub problems: Vec<Problem>,
}

impl Dockerfile {
    /// The images the target stage (the last one) is built from: its base
    /// chain's image first, then every image a stage it depends on starts
    /// from or copies from, in order of appearance, without repeats.
    pub fn parents(&self) -> Vec<ImageRef> {
        let Some(last) = self.stages.len().checked_sub(1) else {
            return Vec::new();
        };
        let mut out: Vec<ImageRef> = Vec::new();
        let mut seen = vec![false; self.stages.len()];
        // The runtime base first: what `org.opencontainers.image.base.name`
        // would name.
        let mut s = last;
        while let Source::Stage(prev) = &self.stages[s].base {
            if *prev >= s {
                break;
            }
            s = *prev;
        }
        if let Source::Image(r) = &self.stages[s].base {
            out.push(r.clone());
        }
        self.visit(last, &mut seen, &mut out);
        out
    }

    fn visit(&self, s: usize, seen: &mut [bool], out: &mut Vec<ImageRef>) {
        if seen[s] {
            return;
        }
        seen[s] = true;
        let stage = &self.stages[s];
        for src in std::iter::once(&stage.base).chain(stage.uses.iter().map(|(_, u)| u)) {
            match src {
                Source::Image(r) if !out.contains(r) => out.push(r.clone()),
                // `seen` stops cycles (`COPY --from` may name a later stage).
                Source::Stage(i) if *i < self.stages.len() => self.visit(*i, seen, out),
                _ => {}
            }
        }
    }

    /// The target stage's labels, with those of the stages it is built on
    /// (`FROM stage` inherits them) underneath.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut chain = Vec::new();
        let mut s = self.stages.len().checked_sub(1);
        while let Some(i) = s {
            chain.push(i);
            s = match self.stages[i].base {
                Source::Stage(p) if p < i => Some(p),
                _ => None,
            };
        }
        let mut out = BTreeMap::new();
        for i in chain.into_iter().rev() {
            out.extend(self.stages[i].labels.clone());
        }
        out
    }
}

/// BuildKit's automatic platform args: known to exist, values unknown here.
const PLATFORM_ARGS: [&str; 8] = [
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
];

/// One instruction: its keyword (upper case), arguments and first line.
struct Instruction {
    keyword: String,
    args: String,
    line: usize,
}

/// Parses `text`; `build_args` are `--build-arg`s (they override `ARG`
/// defaults, and only declared `ARG`s take them, as in `docker build`).
pub fn parse(text: &str, build_args: &BTreeMap<String, String>) -> Dockerfile {
    let mut out = Dockerfile::default();
    // Global scope: ARGs before the first FROM.
    let mut global: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut stage_args: BTreeMap<String, Option<String>> = BTreeMap::new();
    let list = instructions(text);
    // Every stage's name: `COPY --from` may name a stage defined further down.
    let names: Vec<Option<String>> = list
        .iter()
        .filter(|i| i.keyword == "FROM")
        .map(|i| stage_name(&i.args))
        .collect();
    for ins in list {
        let line = ins.line;
        match ins.keyword.as_str() {
            "ARG" => {
                let in_stage = !out.stages.is_empty();
                for word in split_words(&ins.args) {
                    let (name, default) = match word.split_once('=') {
                        Some((n, d)) => (n.to_string(), Some(unquote(d))),
                        None => (word.clone(), None),
                    };
                    let value = if let Some(v) = build_args.get(&name) {
                        Some(v.clone())
                    } else if let Some(d) = default {
                        // A default may use earlier ARGs.
                        let scope = if in_stage { &stage_args } else { &global };
                        expand(&d, scope).ok()
                    } else if in_stage {
                        // `ARG NAME` in a stage takes the global value.
                        global.get(&name).cloned().flatten()
                    } else {
                        None
                    };
                    if in_stage {
                        stage_args.insert(name, value);
                    } else {
                        global.insert(name, value);
                    }
                }
            }
            "FROM" => {
                stage_args = BTreeMap::new();
                let words = split_words(&ins.args);
                let mut platform = None;
                let mut rest = Vec::new();
                for w in words {
                    if let Some(p) = w.strip_prefix("--platform=") {
                        platform = Some(p.to_string());
                    } else if w.starts_with("--") {
                        // Other flags are not about the base.
                    } else {
                        rest.push(w);
                    }
                }
                let name = stage_name(&ins.args);
                let earlier = &names[..out.stages.len().min(names.len())];
                let base = match rest.first() {
                    None => {
                        out.problems.push(Problem {
                            line,
                            message: "FROM without an image".into(),
                        });
                        Source::Unknown
                    }
                    Some(raw) => match expand(raw, &global) {
                        Ok(v) => resolve_from(&v, earlier, None, line, "FROM", &mut out.problems),
                        Err(var) => {
                            out.problems.push(unresolved(line, "FROM", raw, &var));
                            Source::Unknown
                        }
                    },
                };
                out.stages.push(Stage {
                    name,
                    line,
                    base,
                    platform,
                    uses: Vec::new(),
                    labels: BTreeMap::new(),
                });
            }
            "COPY" | "RUN" if !out.stages.is_empty() => {
                // (value, a mount's: names only, no stage index)
                let mut froms: Vec<(String, bool)> = Vec::new();
                for w in split_words(&ins.args) {
                    if !w.starts_with("--") {
                        break;
                    }
                    if let Some(f) = w.strip_prefix("--from=") {
                        if ins.keyword == "COPY" {
                            froms.push((unquote(f), false));
                        }
                    } else if let Some(m) = w.strip_prefix("--mount=") {
                        let m = unquote(m);
                        let from = m.split(',').find_map(|kv| {
                            let (k, v) = kv.split_once('=')?;
                            k.trim()
                                .eq_ignore_ascii_case("from")
                                .then(|| v.trim().to_string())
                        });
                        if let Some(f) = from {
                            froms.push((f, true));
                        }
                    }
                }
                let what = if ins.keyword == "COPY" {
                    "COPY --from"
                } else {
                    "RUN --mount from"
                };
                for (f, mount) in froms {
                    // BuildKit refuses variables here ("variable expansion is
                    // not supported for --from"): so does this.
                    let src = if f.contains('$') {
                        out.problems.push(Problem {
                            line,
                            message: format!(
                                "{what}={f}: BuildKit does not expand variables in --from; this Dockerfile does not build"
                            ),
                        });
                        Source::Unknown
                    } else {
                        let stage_no = if mount { None } else { Some(out.stages.len()) };
                        resolve_from(&f, &names, stage_no, line, what, &mut out.problems)
                    };
                    if let Some(stage) = out.stages.last_mut() {
                        stage.uses.push((line, src));
                    }
                }
            }
            "LABEL" if !out.stages.is_empty() => {
                let scope = merged(&global, &stage_args);
                for w in split_words(&ins.args) {
                    if let Some((k, v)) = w.split_once('=')
                        && let Ok(v) = expand(&unquote(v), &scope)
                        && let Some(stage) = out.stages.last_mut()
                    {
                        stage.labels.insert(unquote(k), v);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn merged(
    global: &BTreeMap<String, Option<String>>,
    stage: &BTreeMap<String, Option<String>>,
) -> BTreeMap<String, Option<String>> {
    // Only ARGs declared in the stage are visible in it (a global ARG must
    // be re-declared), as in BuildKit.
    stage
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.clone().or_else(|| global.get(k).cloned().flatten()),
            )
        })
        .collect()
}

fn unresolved(line: usize, what: &str, raw: &str, var: &str) -> Problem {
    let message = if PLATFORM_ARGS.contains(&var) {
        format!(
            "{what} {raw}: ${var} is set by BuildKit per platform; a base cannot depend on it here"
        )
    } else {
        format!("{what} {raw}: ARG {var} has no default (pass --build-arg {var}=…); not guessed")
    };
    Problem { line, message }
}

/// A stage name (any of `names`), a stage index below `index_below`
/// (`COPY --from=0`; `None`: indexes are not stages), `scratch`, or an image.
fn resolve_from(
    value: &str,
    names: &[Option<String>],
    index_below: Option<usize>,
    line: usize,
    what: &str,
    problems: &mut Vec<Problem>,
) -> Source {
    let lower = value.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| n.as_deref() == Some(&lower)) {
        return Source::Stage(i);
    }
    if let Some(limit) = index_below
        && !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
    {
        return match value.parse::<usize>() {
            Ok(i) if i < limit => Source::Stage(i),
            _ => {
                problems.push(Problem {
                    line,
                    message: format!("{what}={value}: there is no stage {value} before this line"),
                });
                Source::Unknown
            }
        };
    }
    if lower == "scratch" {
        return Source::Scratch;
    }
    match ImageRef::parse(value) {
        Ok(r) => Source::Image(r),
        Err(e) => {
            problems.push(Problem {
                line,
                message: format!("{what} {value}: {e}"),
            });
            Source::Unknown
        }
    }
}

/// A `FROM` line's stage name (`AS name`), lower case.
fn stage_name(args: &str) -> Option<String> {
    let words: Vec<String> = split_words(args)
        .into_iter()
        .filter(|w| !w.starts_with("--"))
        .collect();
    match words.as_slice() {
        [_, kw, n] if kw.eq_ignore_ascii_case("as") => Some(n.to_ascii_lowercase()),
        _ => None,
    }
}

/// Substitutes `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:+x}`,
/// `${VAR+x}`; `\$` is a literal `$`. Err names a variable without value.
fn expand(input: &str, vars: &BTreeMap<String, Option<String>>) -> Result<String, String> {
    let value = |name: &str| vars.get(name).cloned().flatten();
    let mut out = String::with_capacity(input.len());
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{') {
            // The matching brace: defaults may hold `${…}` themselves.
            let mut depth = 0usize;
            let Some(end) = chars[i + 2..].iter().position(|&c| {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => return true,
                    '}' => depth -= 1,
                    _ => {}
                }
                false
            }) else {
                return Err(chars[i + 2..].iter().collect());
            };
            let body: String = chars[i + 2..i + 2 + end].iter().collect();
            i += end + 3;
            let name_end = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(body.len());
            let (name, op) = body.split_at(name_end);
            let v = value(name);
            let set = v.as_deref().is_some_and(|v| !v.is_empty());
            match op {
                "" => out.push_str(&v.ok_or_else(|| name.to_string())?),
                _ if op.starts_with(":-") => {
                    if set {
                        out.push_str(&v.unwrap_or_default());
                    } else {
                        out.push_str(&expand(&op[2..], vars)?);
                    }
                }
                _ if op.starts_with('-') => match v {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&expand(&op[1..], vars)?),
                },
                _ if op.starts_with(":+") => {
                    if set {
                        out.push_str(&expand(&op[2..], vars)?);
                    }
                }
                _ if op.starts_with('+') => {
                    if v.is_some() {
                        out.push_str(&expand(&op[1..], vars)?);
                    }
                }
                _ => return Err(name.to_string()),
            }
        } else {
            let rest: String = chars[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            if rest.is_empty() {
                out.push('$');
                i += 1;
                continue;
            }
            i += 1 + rest.chars().count();
            out.push_str(&value(&rest).ok_or(rest)?);
        }
    }
    Ok(out)
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

/// Whitespace-separated words; quotes group (and stay: `unquote` takes them
/// off where a value is read).
fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
            }
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// The instructions of a Dockerfile: directives read, comments dropped,
/// continuations joined, heredoc bodies skipped.
fn instructions(text: &str) -> Vec<Instruction> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    // Parser directives: `# key=value` lines at the very top.
    while let Some(l) = lines.get(i) {
        let Some(d) = l.trim().strip_prefix('#') else {
            break;
        };
        let Some((k, v)) = d.split_once('=') else {
            break;
        };
        let k = k.trim().to_ascii_lowercase();
        if k.contains(' ') || k.is_empty() {
            break;
        }
        if k == "escape" && v.trim() == "`" {
            escape = '`';
        }
        i += 1;
    }
    let mut out = Vec::new();
    while i < lines.len() {
        let first = i;
        let mut logical = String::new();
        while let Some(raw) = lines.get(i) {
            i += 1;
            let trimmed = raw.trim_start();
            if trimmed.starts_with('#') || (trimmed.is_empty() && !logical.is_empty()) {
                continue;
            }
            let l = raw.trim_end();
            if let Some(body) = l.strip_suffix(escape) {
                logical.push_str(body);
                logical.push(' ');
                continue;
            }
            logical.push_str(l);
            break;
        }
        let logical = logical.trim();
        if logical.is_empty() {
            continue;
        }
        let (keyword, args) = match logical.split_once(char::is_whitespace) {
            Some((k, a)) => (k.to_ascii_uppercase(), a.trim().to_string()),
            None => (logical.to_ascii_uppercase(), String::new()),
        };
        // Heredocs: skip each body up to its terminator.
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            for (strip_tabs, word) in heredocs(&args) {
                while let Some(l) = lines.get(i) {
                    i += 1;
                    let l = if strip_tabs {
                        l.trim_start_matches('\t')
                    } else {
                        l
                    };
                    if l == word {
                        break;
                    }
                }
            }
        }
        out.push(Instruction {
            keyword,
            args,
            line: first + 1,
        });
    }
    out
}

/// Heredoc markers, as BuildKit finds them: shell words matching
/// `^(\d*)<<(-?)\s*([^<]*)$` (`<<EOF`, `<<-EOF`, `<<"EOF"`, `2<<'END-X'`),
/// never in the JSON (exec) form: (strip tabs, terminator).
fn heredocs(args: &str) -> Vec<(bool, String)> {
    if args.trim_start().starts_with('[') {
        return Vec::new();
    }
    split_words(args)
        .iter()
        .filter_map(|w| {
            let rest = w.trim_start_matches(|c: char| c.is_ascii_digit());
            let rest = rest.strip_prefix("<<")?;
            let (strip, rest) = match rest.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, rest),
            };
            if rest.contains('<') {
                return None;
            }
            let name = unquote(rest);
            (!name.is_empty()).then_some((strip, name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parents(text: &str) -> Vec<String> {
        let d = parse(text, &BTreeMap::new());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        d.parents().iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn expansion_forms() {
        let vars: BTreeMap<String, Option<String>> = [
            ("A".to_string(), Some("a".to_string())),
            ("E".to_string(), Some(String::new())),
            ("U".to_string(), None),
        ]
        .into();
        let x = |s: &str| expand(s, &vars);
        assert_eq!(x("$A-${A}").unwrap(), "a-a");
        assert_eq!(x("${E:-d}").unwrap(), "d");
        assert_eq!(x("${E-d}").unwrap(), "");
        assert_eq!(x("${U:-d}").unwrap(), "d");
        assert_eq!(x("${NOPE:-x${A}}").unwrap(), "xa");
        assert_eq!(x("${A:+set}${U:+no}").unwrap(), "set");
        assert_eq!(x("\\$A").unwrap(), "$A");
        assert_eq!(x("${U}").unwrap_err(), "U");
        assert_eq!(x("$NOPE").unwrap_err(), "NOPE");
    }

    #[test]
    fn stages_are_not_images_and_unused_stages_add_nothing() {
        let p = parents(
            "FROM golang:1.22 AS Build\nRUN go build\nFROM node:20 AS unused\nFROM gcr.io/distroless/static\nCOPY --from=build /app /app\n",
        );
        assert_eq!(
            p,
            [
                "gcr.io/distroless/static:latest",
                "docker.io/library/golang:1.22"
            ]
        );
    }

    #[test]
    fn heredoc_bodies_are_not_instructions() {
        let p = parents(
            "FROM alpine:3.20\nRUN <<EOF\nFROM ubuntu:22.04\necho hi\nEOF\nCOPY <<-'CONF' /etc/x\n\tFROM debian:12\n\tCONF\n",
        );
        assert_eq!(p, ["docker.io/library/alpine:3.20"]);
    }

    #[test]
    fn heredocs_as_buildkit_finds_them() {
        // Not heredocs: `<<` inside a word, quoted, or in the exec form.
        let p = parents(
            "FROM alpine:3.20 AS a\nRUN sed -i 's/<<VERSION>>/1/' f\nRUN echo \"<<EOF\"\nRUN [\"sh\", \"-c\", \"cat <<EOF\"]\nFROM debian:12\nCOPY --from=a /x /x\n",
        );
        assert_eq!(
            p,
            [
                "docker.io/library/debian:12",
                "docker.io/library/alpine:3.20"
            ]
        );
        // A terminator with a dash, and two heredocs on one line.
        let p = parents(
            "FROM alpine:3.20\nRUN <<END-OF-SCRIPT cat - <<'TWO'\nFROM a:1\nEND-OF-SCRIPT\nFROM b:1\nTWO\n",
        );
        assert_eq!(p, ["docker.io/library/alpine:3.20"]);
    }

    #[test]
    fn a_bom_and_later_stages_and_mount_names() {
        // BOM; COPY --from a stage defined further down; a mount's from=0
        // is a name, not an index; mount keys in any case.
        let p = parents(
            "\u{feff}FROM golang:1.22 AS build\nCOPY --from=tools /bin/x /x\nFROM busybox:1.36 AS tools\nFROM gcr.io/distroless/static\nCOPY --from=build /app /app\nRUN --mount=type=bind,FROM=ghcr.io/acme/certs:1,target=/c true\n",
        );
        assert_eq!(
            p,
            [
                "gcr.io/distroless/static:latest",
                "docker.io/library/golang:1.22",
                "docker.io/library/busybox:1.36",
                "ghcr.io/acme/certs:1",
            ]
        );
    }

    #[test]
    fn variables_in_from_are_refused_as_buildkit_does() {
        let d = parse(
            "ARG IMG=alpine:3\nFROM debian:12\nARG IMG\nCOPY --from=$IMG /x /x\n",
            &BTreeMap::new(),
        );
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        assert_eq!(d.problems[0].line, 4);
        assert!(d.problems[0].message.contains("does not expand variables"));
    }

    #[test]
    fn escape_directive_and_continuations() {
        let p = parents("# escape=`\nFROM `\n  mcr.microsoft.com/windows/servercore:ltsc2022\n");
        assert_eq!(p, ["mcr.microsoft.com/windows/servercore:ltsc2022"]);
    }
}
