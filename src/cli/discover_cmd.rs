//! `lineaged discover`: lineage YAML from Dockerfiles or from the OCI base
//! annotations of pushed images.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{ConfigArg, EXIT_FAILED, load_config, print};
use crate::discover::{self, Found, Options};
use crate::registry::{ImageRef, RegistryClient};

#[derive(clap::Subcommand, Debug)]
pub enum DiscoverCommand {
    /// Read Dockerfiles/Containerfiles under PATHs and print (or write) the lineage they imply
    #[command(
        long_about = "Walk PATHs for Dockerfiles and Containerfiles and read every FROM (with \
                  ARG defaults and --build-arg values substituted), multi-stage builds (a stage \
                  is not an image; only stages the last one uses count), COPY --from=<image> and \
                  RUN --mount=…,from=<image>. Each Dockerfile's image is named by its \
                  `LABEL lineaged.image=…`, a lineaged.yaml beside it, or --name-template.\n\n\
                  Prints lineage YAML (or writes one file per top-level directory with -o). \
                  A base that cannot be resolved (`FROM ${BASE}` without a default) is \
                  reported with its file and line, never guessed.\n\nExit codes: 0 every \
                  Dockerfile read cleanly (with --diff: and no differences), 1 problems or \
                  differences (the rest is still printed), 2 bad usage.",
        after_help = "Examples:\n  \
        lineaged discover dockerfiles services/ --name-template 'registry.example.com/{dir}:latest'\n  \
        lineaged discover dockerfiles . --backend ci -o lineage.d/\n  \
        lineaged discover dockerfiles services/ --name-template 'registry.example.com/{name}-{variant}:1' \\\n    \
        --diff lineaged.yaml"
    )]
    Dockerfiles(DockerfilesArgs),
    /// Read the OCI base annotations of pushed images and print the lineage they imply
    #[command(
        long_about = "Read `org.opencontainers.image.base.name` (on the index, the platform \
                  manifest, or the config's labels) of each REF through the config's registries \
                  and print the lineage it implies. Images without the annotation are reported.\n\n\
                  Exit codes: 0 every image had one, 1 some did not or could not be read, \
                  2 bad usage.",
        after_help = "Example:\n  lineaged discover registry -c lineaged.yaml ghcr.io/acme/api:1 ghcr.io/acme/worker:1"
    )]
    Registry(RegistryArgs),
}

#[derive(clap::Args, Debug)]
pub struct DockerfilesArgs {
    /// Directories to walk (or Dockerfiles)
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// Name for images without a label: {dir} (the directory under PATH),
    /// {name} (its last part), {variant} (Dockerfile.worker → worker)
    #[arg(long, value_name = "TEMPLATE")]
    pub name_template: Option<String>,
    /// A build argument, as `docker build --build-arg` (repeatable)
    #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_build_arg)]
    pub build_args: Vec<(String, String)>,
    /// The CI backend for `build:` (otherwise left commented out)
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,
    /// Write one YAML file per top-level directory here instead of printing
    #[arg(short, long, value_name = "DIR", conflicts_with = "diff")]
    pub out_dir: Option<PathBuf>,
    /// Replace files -o would write that exist already
    #[arg(long, requires = "out_dir")]
    pub force: bool,
    /// Compare with this config instead: what Dockerfiles have that it lacks, and the reverse
    #[arg(long, value_name = "CONFIG")]
    pub diff: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct RegistryArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Images to read (tags or digests)
    #[arg(value_name = "REF", required = true, value_parser = super::parse_ref)]
    pub refs: Vec<ImageRef>,
    /// Read this platform's manifest inside a multi-arch index
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]", value_parser = super::parse_platform)]
    pub platforms: Vec<crate::config::Platform>,
    /// Per-request timeout in seconds
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

fn parse_build_arg(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected NAME=VALUE, got `{s}`"))
}

pub fn discover(cmd: &DiscoverCommand) -> ExitCode {
    match cmd {
        DiscoverCommand::Dockerfiles(a) => dockerfiles(a),
        DiscoverCommand::Registry(a) => registry(a),
    }
}

fn dockerfiles(a: &DockerfilesArgs) -> ExitCode {
    let opts = Options {
        name_template: a.name_template.clone(),
        build_args: a.build_args.iter().cloned().collect::<BTreeMap<_, _>>(),
        backend: a.backend.clone(),
    };
    let d = discover::discover(&a.paths, &opts);
    for p in &d.problems {
        eprintln!("{p}");
    }
    let named = d.found.iter().filter(|f| f.listed()).count();
    let bases: std::collections::BTreeSet<String> = d
        .found
        .iter()
        .flat_map(|f| f.parents.iter().map(|p| p.to_string()))
        .collect();
    let summary = format!(
        "{} Dockerfile{} → {named} image{} on {} distinct base{}; {} problem{}",
        d.found.len(),
        plural(d.found.len()),
        plural(named),
        bases.len(),
        plural(bases.len()),
        d.problems.len(),
        plural(d.problems.len())
    );
    let mut failed = !d.problems.is_empty();
    if let Some(cfg_path) = &a.diff {
        let cfg = match load_config(&ConfigArg {
            config: cfg_path.clone(),
        }) {
            Ok(c) => c,
            Err(code) => return code,
        };
        let diffs = discover::diff(&d.found, &cfg);
        for x in &diffs {
            print(&format!("{x}\n"));
        }
        eprintln!(
            "{summary}; {} difference{} with {}",
            diffs.len(),
            plural(diffs.len()),
            cfg_path.display()
        );
        failed |= !diffs.is_empty();
    } else if let Some(dir) = &a.out_dir {
        let from = paths_text(&a.paths);
        let write = || -> std::io::Result<Vec<PathBuf>> {
            let files: Vec<(PathBuf, String)> = discover::groups(&d.found)
                .into_iter()
                .filter(|(_, files)| files.iter().any(|f| f.listed()))
                .map(|(group, files)| {
                    let path = dir.join(format!("{group}.yaml"));
                    (path, discover::to_yaml(&files, &opts, &from))
                })
                .collect();
            // Nothing is written when anything would be overwritten.
            if let Some((p, _)) = files.iter().find(|(p, _)| p.exists() && !a.force) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists (--force replaces it)", p.display()),
                ));
            }
            std::fs::create_dir_all(dir)?;
            for (path, text) in &files {
                std::fs::write(path, text)?;
            }
            Ok(files.into_iter().map(|(p, _)| p).collect())
        };
        match write() {
            Ok(written) => {
                for w in &written {
                    eprintln!("wrote {}", w.display());
                }
                eprintln!("{summary}");
            }
            Err(e) => {
                eprintln!("error: cannot write to {}: {e}", dir.display());
                return ExitCode::from(EXIT_FAILED);
            }
        }
    } else {
        let all: Vec<&Found> = d.found.iter().collect();
        print(&discover::to_yaml(&all, &opts, &paths_text(&a.paths)));
        eprintln!("{summary}");
    }
    if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn paths_text(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn registry(a: &RegistryArgs) -> ExitCode {
    let cfg = match load_config(&a.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let client = match RegistryClient::new(&cfg.registries, Duration::from_secs(a.timeout.max(1))) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", crate::error_chain(&e));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let rt = match super::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut out = String::from("images:\n");
    let mut problems = 0usize;
    rt.block_on(async {
        for r in &a.refs {
            match client.base_annotations(r, &a.platforms).await {
                Ok(b) => match b.name.as_deref().map(ImageRef::parse) {
                    Some(Ok(base)) => {
                        let digest = b
                            .digest
                            .map(|d| format!("      # built on {}\n", discover::comment(&d)))
                            .unwrap_or_default();
                        out.push_str(&format!(
                            "  - name: {}\n    from:\n      - {}\n{digest}",
                            discover::scalar(&r.to_string()),
                            discover::scalar(&base.to_string())
                        ));
                    }
                    Some(Err(e)) => {
                        problems += 1;
                        eprintln!("{r}: its base annotation is not an image reference: {e}");
                    }
                    None => {
                        problems += 1;
                        eprintln!(
                            "{r}: no org.opencontainers.image.base.name (index, manifest or config labels)"
                        );
                    }
                },
                Err(e) => {
                    problems += 1;
                    eprintln!("{r}: {}", crate::error_chain(&e));
                }
            }
        }
    });
    print(&out);
    eprintln!(
        "{} of {} image{} name their base",
        a.refs.len() - problems,
        a.refs.len(),
        plural(a.refs.len())
    );
    if problems > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}
