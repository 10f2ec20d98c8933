//! Lineage discovery: from what teams already have (Dockerfiles, and the OCI
//! base annotations of pushed images) to lineage YAML, so adopting lineaged
//! does not start with writing the lineage a third time.

pub mod dockerfile;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::registry::ImageRef;

/// The label naming the image a Dockerfile builds.
pub const IMAGE_LABEL: &str = "lineaged.image";

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `registry.example.com/{dir}:latest`: `{dir}` the Dockerfile's
    /// directory under the root walked, `{name}` its last component,
    /// `{variant}` the file name's suffix (`Dockerfile.worker` → `worker`;
    /// empty for a plain `Dockerfile`, with the `-`/`.` before it dropped).
    pub name_template: Option<String>,
    /// `--build-arg NAME=VALUE`s.
    pub build_args: BTreeMap<String, String>,
    /// A backend for `build:`; without one `build:` is left commented out.
    pub backend: Option<String>,
}

/// One Dockerfile read.
#[derive(Debug, Clone)]
pub struct Found {
    /// As the user named it: the root walked joined with the relative path.
    pub path: PathBuf,
    /// Relative to the root walked (the build context's directory).
    pub dir: PathBuf,
    pub image: Option<ImageRef>,
    pub parents: Vec<ImageRef>,
    pub stages: usize,
    /// The output file it belongs in: the first directory under the root.
    pub group: String,
    /// A base or `--from` could not be read: left out of the YAML rather
    /// than written with parents missing.
    pub unresolved: bool,
}

impl Found {
    /// Written to YAML: named, and every base read.
    pub fn listed(&self) -> bool {
        self.image.is_some() && !self.unresolved
    }
}

/// A problem with a place: `file:line: message` (line 0: the whole file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

#[derive(Debug, Default)]
pub struct Discovery {
    pub found: Vec<Found>,
    pub problems: Vec<Problem>,
}

/// `Dockerfile`, `Containerfile`, `Dockerfile.x`, `x.Dockerfile`, `x.dockerfile`.
pub fn is_dockerfile(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    // `Dockerfile.dockerignore` is BuildKit's ignore file for `Dockerfile`.
    if lower.ends_with(".dockerignore") {
        return false;
    }
    lower == "dockerfile"
        || lower == "containerfile"
        || lower.starts_with("dockerfile.")
        || lower.starts_with("containerfile.")
        || lower.ends_with(".dockerfile")
        || lower.ends_with(".containerfile")
}

/// The suffix that tells Dockerfiles in one directory apart.
fn variant(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    for prefix in ["dockerfile.", "containerfile."] {
        if lower.starts_with(prefix) {
            return name[prefix.len()..].to_string();
        }
    }
    for suffix in [".dockerfile", ".containerfile"] {
        if lower.ends_with(suffix) {
            return name[..name.len() - suffix.len()].to_string();
        }
    }
    String::new()
}

/// Directories never walked: VCS data, dependencies, build output.
const SKIP_DIRS: [&str; 6] = [
    ".git",
    "node_modules",
    "vendor",
    "target",
    ".venv",
    "__pycache__",
];

fn walk(dir: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(Problem {
                file: dir.to_path_buf(),
                line: 0,
                message: format!("cannot read directory: {e}"),
            });
            return;
        }
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // Symlinked directories are not followed (no loops).
        let meta = std::fs::symlink_metadata(&p);
        if meta.as_ref().is_ok_and(|m| m.is_dir()) {
            if !SKIP_DIRS.contains(&name) && !name.starts_with('.') {
                walk(&p, out, problems);
            }
        } else if is_dockerfile(name) && p.is_file() {
            out.push(p);
        }
    }
}

/// Walks each root (a directory, or a Dockerfile itself) and reads every
/// Dockerfile found.
pub fn discover(roots: &[PathBuf], opts: &Options) -> Discovery {
    let mut d = Discovery::default();
    for root in roots {
        let mut files = Vec::new();
        let base = if root.is_dir() {
            walk(root, &mut files, &mut d.problems);
            root.clone()
        } else if root.is_file() {
            files.push(root.clone());
            root.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        } else {
            d.problems.push(Problem {
                file: root.clone(),
                line: 0,
                message: "no such file or directory".into(),
            });
            continue;
        };
        for file in files {
            read_one(&base, &file, opts, &mut d);
        }
    }
    // Two Dockerfiles naming one image: the first wins, the second is a problem.
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut keep = Vec::with_capacity(d.found.len());
    for f in std::mem::take(&mut d.found) {
        if let Some(img) = &f.image {
            if let Some(first) = by_name.get(&img.to_string()) {
                d.problems.push(Problem {
                    file: f.path.clone(),
                    line: 0,
                    message: format!("builds {img}, as {} does; skipped", first.display()),
                });
                continue;
            }
            by_name.insert(img.to_string(), f.path.clone());
        }
        keep.push(f);
    }
    d.found = keep;
    d
}

fn read_one(base: &Path, file: &Path, opts: &Options, d: &mut Discovery) {
    let text = match std::fs::read(file) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            d.problems.push(Problem {
                file: file.to_path_buf(),
                line: 0,
                message: format!("cannot read: {e}"),
            });
            return;
        }
    };
    let parsed = dockerfile::parse(&text, &opts.build_args);
    for p in &parsed.problems {
        d.problems.push(Problem {
            file: file.to_path_buf(),
            line: p.line,
            message: p.message.clone(),
        });
    }
    if parsed.stages.is_empty() {
        d.problems.push(Problem {
            file: file.to_path_buf(),
            line: 0,
            message: "no FROM: not a Dockerfile?".into(),
        });
        return;
    }
    let dir = file
        .parent()
        .and_then(|p| p.strip_prefix(base).ok())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let group = dir
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .or_else(|| {
            base.canonicalize()
                .ok()
                .and_then(|b| b.file_name().map(|n| n.to_string_lossy().into_owned()))
        })
        .unwrap_or_else(|| "lineage".into());
    let file_name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let image = match name_image(base, &dir, file_name, &parsed, opts) {
        Ok(r) => Some(r),
        Err(message) => {
            d.problems.push(Problem {
                file: file.to_path_buf(),
                line: 0,
                message,
            });
            None
        }
    };
    d.found.push(Found {
        path: file.to_path_buf(),
        dir,
        image,
        parents: parsed.parents(),
        stages: parsed.stages.len(),
        group,
        unresolved: !parsed.problems.is_empty(),
    });
}

/// The image a Dockerfile builds: its `lineaged.image` label, else the one
/// image a `lineaged.yaml` beside it builds (with this dockerfile), else the
/// name template.
fn name_image(
    base: &Path,
    dir: &Path,
    file_name: &str,
    parsed: &dockerfile::Dockerfile,
    opts: &Options,
) -> Result<ImageRef, String> {
    let parse = |s: &str, from: &str| {
        ImageRef::parse(s).map_err(|e| format!("{from} names `{s}`, not an image reference: {e}"))
    };
    if let Some(name) = parsed.labels().get(IMAGE_LABEL) {
        return parse(name, &format!("LABEL {IMAGE_LABEL}"));
    }
    if let Some(name) = beside(&base.join(dir), file_name) {
        return parse(&name, "lineaged.yaml beside it");
    }
    let Some(t) = &opts.name_template else {
        return Err(format!(
            "cannot tell which image this builds: add `LABEL {IMAGE_LABEL}=registry/repo:tag`, \
             a lineaged.yaml beside it, or pass --name-template (e.g. \
             'registry.example.com/{{dir}}:latest')"
        ));
    };
    let dir_text = if dir.as_os_str().is_empty() {
        base.canonicalize()
            .ok()
            .and_then(|b| b.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default()
    } else {
        dir.to_string_lossy().replace('\\', "/")
    };
    let name = dir_text.rsplit('/').next().unwrap_or_default().to_string();
    let v = variant(file_name).to_ascii_lowercase();
    let mut out = t.replace("{dir}", &dir_text).replace("{name}", &name);
    if v.is_empty() {
        out = out
            .replace("-{variant}", "")
            .replace(".{variant}", "")
            .replace("{variant}", "");
    } else {
        out = out.replace("{variant}", &v);
    }
    let out = out.to_ascii_lowercase();
    parse(&out, "--name-template")
}

/// The image a `lineaged.yaml` next to a Dockerfile declares building it:
/// the one whose `build.dockerfile` names this file, else the only image
/// with a `build:`.
fn beside(dir: &Path, file_name: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        images: Vec<Img>,
    }
    #[derive(serde::Deserialize)]
    struct Img {
        name: String,
        build: Option<Build>,
    }
    #[derive(serde::Deserialize)]
    struct Build {
        dockerfile: Option<String>,
    }
    let text = std::fs::read_to_string(dir.join("lineaged.yaml")).ok()?;
    let f: File = serde_saphyr::from_str(&text).ok()?;
    let built: Vec<&Img> = f.images.iter().filter(|i| i.build.is_some()).collect();
    let named = built.iter().find(|i| {
        i.build
            .as_ref()
            .and_then(|b| b.dockerfile.as_deref())
            .is_some_and(|d| Path::new(d).file_name().and_then(|n| n.to_str()) == Some(file_name))
    });
    match (named, built.as_slice()) {
        (Some(i), _) => Some(i.name.clone()),
        (None, [only]) => Some(only.name.clone()),
        _ => None,
    }
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A YAML scalar: plain when it is safely plain (image references almost
/// always are), double-quoted otherwise (`[::1]:5000/x`, odd backend names).
pub fn scalar(s: &str) -> String {
    let plain = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/:@-".contains(c));
    if plain { s.to_string() } else { quoted(s) }
}

/// Text for a comment line: no line breaks or other control characters.
pub fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Lineage YAML for these Dockerfiles (one group's file).
pub fn to_yaml(found: &[&Found], opts: &Options, generated_from: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Discovered by `lineaged discover dockerfiles` from {}.",
        comment(generated_from)
    );
    if opts.backend.is_none() {
        let _ = writeln!(
            out,
            "# Fill in `build:` (or pass --backend) to have lineaged rebuild these images."
        );
    }
    out.push_str("images:\n");
    for f in found {
        let path = comment(&f.path.to_string_lossy().replace('\\', "/"));
        let Some(image) = f.image.as_ref().filter(|_| f.listed()) else {
            let _ = writeln!(
                out,
                "  # {path}: left out, see the problems reported for it"
            );
            continue;
        };
        let stages = if f.stages == 1 {
            String::new()
        } else {
            format!(" ({} stages)", f.stages)
        };
        let _ = writeln!(out, "  # {path}{stages}");
        let _ = writeln!(out, "  - name: {}", scalar(&image.to_string()));
        if !f.parents.is_empty() {
            out.push_str("    from:\n");
            for p in &f.parents {
                let _ = writeln!(out, "      - {}", scalar(&p.to_string()));
            }
        }
        let context = f.dir.to_string_lossy().replace('\\', "/");
        let context = if context.is_empty() {
            ".".to_string()
        } else {
            context
        };
        let dockerfile = f
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let build = format!(
            "{{ backend: {}, context: {}, dockerfile: {} }}",
            opts.backend
                .as_deref()
                .map_or("<your CI backend>".to_string(), scalar),
            quoted(&context),
            quoted(&format!("{}/{dockerfile}", context.trim_end_matches('/')))
        );
        if opts.backend.is_some() {
            let _ = writeln!(out, "    build: {build}");
        } else {
            let _ = writeln!(out, "    # build: {build}");
        }
    }
    out
}

/// Groups for `-o DIR`: file name (without `.yaml`) → Dockerfiles.
pub fn groups(found: &[Found]) -> BTreeMap<String, Vec<&Found>> {
    let mut out: BTreeMap<String, Vec<&Found>> = BTreeMap::new();
    for f in found {
        let name: String = f
            .group
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        out.entry(name).or_default().push(f);
    }
    out
}

/// One difference between discovered lineage and a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// Discovered, not in the config: (image, parents, where).
    Missing(String, Vec<String>, PathBuf),
    /// In the config (managed), built by no Dockerfile found.
    Extra(String),
    /// Both, with other parents: (image, discovered, configured).
    Parents(String, Vec<String>, Vec<String>),
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Missing(i, p, at) => write!(
                f,
                "+ {i}: built by {} FROM {}, not in the config",
                at.display(),
                if p.is_empty() {
                    "scratch".to_string()
                } else {
                    p.join(", ")
                }
            ),
            Difference::Extra(i) => {
                write!(
                    f,
                    "- {i}: managed in the config, no Dockerfile found builds it"
                )
            }
            Difference::Parents(i, d, c) => write!(
                f,
                "~ {i}: Dockerfile FROM [{}], config from [{}]",
                d.join(", "),
                c.join(", ")
            ),
        }
    }
}

/// What the discovered lineage has that `cfg` lacks, and the reverse.
/// Parents compare as sets of normalised references.
pub fn diff(found: &[Found], cfg: &Config) -> Vec<Difference> {
    let configured: BTreeMap<String, &crate::config::Image> =
        cfg.images.iter().map(|i| (i.name.to_string(), i)).collect();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for f in found {
        let Some(image) = &f.image else {
            continue;
        };
        let name = image.to_string();
        seen.insert(name.clone());
        if f.unresolved {
            // Its problems are reported; its parents are not known.
            continue;
        }
        let discovered: Vec<String> = f.parents.iter().map(|p| p.to_string()).collect();
        match configured.get(&name) {
            None => out.push(Difference::Missing(name, discovered, f.path.clone())),
            Some(img) => {
                let have: BTreeSet<String> = img.parents.iter().map(|p| p.to_string()).collect();
                let want: BTreeSet<String> = discovered.iter().cloned().collect();
                if have != want {
                    out.push(Difference::Parents(
                        name,
                        discovered,
                        img.parents.iter().map(|p| p.to_string()).collect(),
                    ));
                }
            }
        }
    }
    for img in &cfg.images {
        let name = img.name.to_string();
        if img.is_managed() && !seen.contains(&name) {
            out.push(Difference::Extra(name));
        }
    }
    out
}
