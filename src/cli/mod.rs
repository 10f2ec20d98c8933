//! The command line. Exit codes scripts can rely on: 0 success, 1 a failed
//! check or run, 2 bad usage.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config};
use crate::lineage::{GraphFormat, Lineage};
use crate::registry::ImageRef;

mod api_client;
mod approve_cmd;
mod check_cmd;
mod discover_cmd;
mod resolve_cmd;
mod serve_cmd;
mod status_cmd;
mod store_cmd;
mod trigger_cmd;
mod verify_cmd;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "lineaged",
    version,
    about = "Keeps container images rebuilt on fresh base images",
    long_about = "lineaged tracks image lineage (image → base images), watches registries for \
                  base image changes and rebuilds every descendant once, in dependency order, \
                  through CI webhooks.\n\nCONFIG is ./lineaged.yaml unless -c or LINEAGED_CONFIG \
                  says otherwise.\n\nExit codes: 0 success, 1 failed check or run, 2 bad usage.",
    arg_required_else_help = true,
    after_help = "Examples:\n  \
        lineaged check -c config/example.yaml\n  \
        lineaged plan -c config/example.yaml --changed python:3.12-slim\n  \
        lineaged serve -c lineage.d/\n  \
        lineaged status --output json | jq -r '.stale_images[].name'\n\n\
        See it work: scripts/demo.sh (a registry, a 3-level lineage and a CI, on this machine)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text (coloured only on a terminal) or JSON, one object
    /// per line, for log shippers
    #[arg(long, global = true, value_enum, env = "LINEAGED_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: watch registries and serve the API (until SIGINT/SIGTERM)
    #[command(after_help = "Examples:\n  \
        lineaged serve -c config/example.yaml\n  \
        LINEAGED_CONFIG=/etc/lineaged LINEAGED_LOG_FORMAT=json lineaged serve")]
    Serve(ConfigArg),
    /// Validate a config; every error as file:line:col: message
    #[command(
        long_about = "Validate a config without starting anything: YAML, unknown keys (with \
                  did-you-mean), references between images, backends and registries, cycles, \
                  schedules, secrets present. Every problem is printed as file:line:col: message, \
                  all in one run.\n\nWith --online, also ask the configured registries whether \
                  every external base image exists (a typo in `from:` otherwise becomes a new \
                  external image that never changes).\n\nExit codes: 0 valid, 1 problems found, \
                  2 bad usage.",
        after_help = "Examples:\n  lineaged check -c lineaged.yaml\n  \
        lineaged check -c lineage.d/ --online"
    )]
    Check(CheckArgs),
    /// Dry run: the waves of rebuilds a change of the given images would cause
    #[command(after_help = "Examples:\n  \
        lineaged plan -c config/example.yaml --changed python:3.12-slim\n  \
        lineaged plan --changed debian:bookworm-slim --output json | jq '.waves | length'")]
    Plan(PlanArgs),
    /// Print the lineage graph
    #[command(after_help = "Examples:\n  \
        lineaged graph -c config/example.yaml | dot -Tsvg > lineage.svg\n  \
        lineaged graph --format mermaid")]
    Graph(GraphArgs),
    /// Apply the database migrations and exit
    Migrate(ConfigArg),
    /// Resolve image references to digests through the configured registries
    Resolve(ResolveArgs),
    /// Ask a running daemon what needs attention: stale images, running
    /// rollouts, failing jobs, degraded registries
    #[command(
        long_about = "Ask a running daemon what needs attention: stale images, running \
                  rollouts, failing jobs, images failing checks, degraded registries.\n\n\
                  The API token comes from LINEAGED_TOKEN (never a flag: flags show in `ps`).\n\n\
                  Exit codes: 0 the daemon answered, 1 it could not be asked (unreachable, \
                  wrong token, error), 2 bad usage."
    )]
    Status(StatusArgs),
    /// List approvals (pending ones unless --all)
    #[command(
        long_about = "List approvals: images waiting for a person before their deploy (or build). \
                  Pending ones unless --all.\n\nThe API token comes from LINEAGED_TOKEN.\n\n\
                  Exit codes: 0 listed, 1 the daemon could not be asked, 2 bad usage."
    )]
    Approvals(ApprovalsArgs),
    /// Approve a pending approval: the image goes on to its deploy (or build)
    #[command(
        long_about = "Approve a pending approval by id (see `lineaged approvals`): the image \
                  goes on to its deploy (or build). Recorded with the API token's name.\n\n\
                  The token (write role) comes from LINEAGED_TOKEN.\n\n\
                  Exit codes: 0 approved, 1 refused (not pending, unknown id, wrong token) or \
                  unreachable, 2 bad usage.",
        after_help = "Example:\n  LINEAGED_TOKEN=… lineaged approve 12 --reason \"CAB-881 signed off\""
    )]
    Approve(DecideArgs),
    /// Reject a pending approval: the image is refused and its children blocked
    #[command(
        long_about = "Reject a pending approval by id: the image is refused (not deployed, or \
                  not built) and its children in the rollout are blocked. A rejected digest \
                  is not asked about again.\n\nThe token (write role) comes from LINEAGED_TOKEN.\n\n\
                  Exit codes: 0 rejected, 1 refused or unreachable, 2 bad usage.",
        after_help = "Example:\n  LINEAGED_TOKEN=… lineaged reject 12 --reason \"freeze until Monday\""
    )]
    Reject(DecideArgs),
    /// Send (or print with --dry-run) the CI request a rebuild of IMAGE would make
    #[command(
        long_about = "Send (or print with --dry-run) the exact CI request a rebuild of IMAGE \
                  would make: the URL, headers (credentials masked as ***) and body, with the \
                  parents' current digests read from their registries (--offline: null).\n\n\
                  A sent trigger is not tracked: its job and rollout ids are 0 and its callback \
                  is refused.\n\nExit codes: 0 printed or accepted, 1 refused or failed \
                  (the error says whether the daemon would retry), 2 bad usage."
    )]
    Trigger(TriggerArgs),
    /// Run the supply-chain gates (trusted registries, signatures, scans) for references
    #[command(
        long_about = "Run the supply-chain gates of the config's policy for the given \
                  references (tags are resolved to digests; rules match the tag's name) and \
                  print each gate's verdict with its reason.\n\nExit codes: 0 all passed (or \
                  only warned), 1 any refused or could not be checked, 2 bad usage."
    )]
    Verify(VerifyArgs),
    /// Lineage from what you have: Dockerfiles, or the base annotations of pushed images
    #[command(subcommand)]
    Discover(discover_cmd::DiscoverCommand),
    /// Print the config's JSON Schema (draft 2020-12) for editors
    #[command(
        long_about = "Print the JSON Schema (draft 2020-12) of a config file, with every \
                  field's description, for editor completion and checks. VS Code (with the YAML \
                  extension) and other yaml-language-server editors use it when a file starts \
                  with a `# yaml-language-server: $schema=PATH` comment; the repository's copy \
                  is docs/lineaged.schema.json.\n\nThe schema checks one file's shape; \
                  `lineaged check` checks everything else (references, cycles, secrets).",
        after_help = "Example:\n  lineaged schema > lineaged.schema.json\n  \
        # first line of lineaged.yaml:\n  \
        # yaml-language-server: $schema=./lineaged.schema.json"
    )]
    Schema,
    /// Print shell completions (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "Examples:\n  \
        lineaged completions bash > /etc/bash_completion.d/lineaged\n  \
        lineaged completions zsh > \"${fpath[1]}/_lineaged\"\n  \
        lineaged completions fish > ~/.config/fish/completions/lineaged.fish")]
    Completions(CompletionsArgs),
    /// Print the man page (or write one per command with --out-dir)
    #[command(after_help = "Examples:\n  \
        lineaged man | man -l -\n  \
        lineaged man --out-dir /usr/local/share/man/man1")]
    Man(ManArgs),
    /// Write a synthetic lineage of N images (for benchmarks)
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write lineaged.1 and lineaged-COMMAND.1 here instead of printing lineaged.1
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Also resolve every external image through the configured registries
    /// and report those that do not exist (needs network access)
    #[arg(long)]
    pub online: bool,
    /// Per-request timeout in seconds for --online
    #[arg(long, default_value_t = 30, requires = "online")]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct ConfigArg {
    /// Config file, or a directory of *.yaml/*.yml files merged in name order
    #[arg(
        short,
        long,
        value_name = "CONFIG",
        env = "LINEAGED_CONFIG",
        default_value = "lineaged.yaml"
    )]
    pub config: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// A changed image (repeatable), e.g. python:3.12-slim
    #[arg(long = "changed", value_name = "REF", required = true, value_parser = parse_ref)]
    pub changed: Vec<ImageRef>,
    /// Output: text (a table for people) or json (for scripts and `jq`)
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(clap::Args, Debug)]
pub struct TriggerArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The managed image to rebuild, e.g. registry.example.com/app:1
    #[arg(value_name = "IMAGE", value_parser = parse_ref)]
    pub image: ImageRef,
    /// Print the request; send nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask registries for the parents' digests
    #[arg(long)]
    pub offline: bool,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Image references (tag or @sha256 digest)
    #[arg(value_name = "REF", required = true, value_parser = parse_ref)]
    pub refs: Vec<ImageRef>,
    /// Which rules to apply: deploy, cascade, or all gates the rule has
    #[arg(long, default_value = "all", value_parser = ["all", "deploy", "cascade"])]
    pub purpose: String,
    /// Output: text (a table for people) or json (for scripts and `jq`)
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(clap::Args, Debug)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Image references to resolve, e.g. python:3.12-slim
    #[arg(value_name = "REF", required = true, value_parser = parse_ref)]
    pub refs: Vec<ImageRef>,
    /// Resolve the digest of this platform inside a multi-arch index (repeatable)
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]", value_parser = parse_platform)]
    pub platforms: Vec<crate::config::Platform>,
    /// Per-request timeout in seconds
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

pub(crate) fn parse_platform(s: &str) -> Result<crate::config::Platform, String> {
    crate::config::Platform::parse(s)
        .ok_or_else(|| format!("expected os/arch[/variant], got `{s}`"))
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Base URL of the daemon's API
    #[arg(long, env = "LINEAGED_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API token (read role is enough); from the environment only
    #[arg(skip = std::env::var("LINEAGED_TOKEN").ok().filter(|t| !t.is_empty()))]
    pub token: Option<String>,
    /// Output: text (a table for people) or json (for scripts and `jq`)
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Per-request timeout in seconds
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// Where the daemon's API is.
#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// Base URL of the daemon's API
    #[arg(long, env = "LINEAGED_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Per-request timeout in seconds
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct ApprovalsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Decided ones too (newest first)
    #[arg(long)]
    pub all: bool,
    /// Output: text (a table for people) or json (for scripts and `jq`)
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(clap::Args, Debug)]
pub struct DecideArgs {
    /// The approval's id
    pub id: i64,
    /// Why (kept with the decision and in the event log)
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Graph format: dot (Graphviz), mermaid (Markdown, GitHub renders it) or
    /// json (nodes and edges, for tools)
    #[arg(long, value_enum, default_value_t = Format::Dot)]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Number of images
    #[arg(long, default_value_t = 1000)]
    pub images: usize,
    /// Random seed; the same seed gives the same lineage
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write this many files (team-NNN.yaml) into --out-dir instead of stdout
    #[arg(long, default_value_t = 1, requires = "out_dir")]
    pub files: usize,
    /// Directory for --files
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Dot,
    Mermaid,
    Json,
}

pub(crate) fn parse_ref(s: &str) -> Result<ImageRef, String> {
    ImageRef::parse(s).map_err(|e| e.to_string())
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing(cli.log_format);
    crate::init_tls();
    match cli.command {
        Command::Serve(a) => serve_cmd::serve(&a),
        Command::Check(a) => check_cmd::check(&a),
        Command::Completions(a) => completions(&a),
        Command::Discover(c) => discover_cmd::discover(&c),
        Command::Schema => {
            let mut s =
                serde_json::to_string_pretty(&config::schema::json_schema()).unwrap_or_default();
            s.push('\n');
            print(&s);
            ExitCode::SUCCESS
        }
        Command::Man(a) => man(&a),
        Command::Plan(a) => plan(&a),
        Command::Graph(a) => graph(&a),
        Command::Migrate(a) => store_cmd::migrate(&a),
        Command::Resolve(a) => resolve_cmd::resolve(&a),
        Command::Status(a) => status_cmd::status(&a),
        Command::Approvals(a) => approve_cmd::list(&a),
        Command::Approve(a) => approve_cmd::decide(&a, true),
        Command::Reject(a) => approve_cmd::decide(&a, false),
        Command::Trigger(a) => trigger_cmd::trigger(&a),
        Command::Verify(a) => verify_cmd::verify(&a),
        Command::Generate(a) => generate(&a),
    }
}

fn generate(a: &GenerateArgs) -> ExitCode {
    let Some(dir) = &a.out_dir else {
        print(&crate::lineage::generate_yaml(a.images, a.seed));
        return ExitCode::SUCCESS;
    };
    let docs = crate::lineage::generate_files(a.images, a.seed, a.files);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (i, d) in docs.iter().enumerate() {
            std::fs::write(dir.join(format!("team-{i:03}.yaml")), d)?;
        }
        Ok(())
    };
    match write() {
        Ok(()) => {
            eprintln!(
                "wrote {} files with {} images to {}",
                docs.len(),
                a.images,
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", dir.display());
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LINEAGED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // Colour codes only where a person reads them: a file or a log
        // collector gets plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn completions(a: &CompletionsArgs) -> ExitCode {
    use clap::CommandFactory as _;
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "lineaged", &mut std::io::stdout());
    ExitCode::SUCCESS
}

fn man(a: &ManArgs) -> ExitCode {
    use clap::CommandFactory as _;
    let cmd = Cli::command();
    let Some(dir) = &a.out_dir else {
        let mut page = Vec::new();
        return match clap_mangen::Man::new(cmd).render(&mut page) {
            Ok(()) => {
                let _ = std::io::stdout().lock().write_all(&page);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the man page: {e}");
                ExitCode::from(EXIT_FAILED)
            }
        };
    };
    let written = std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(cmd, dir));
    match written {
        Ok(()) => {
            eprintln!("wrote man pages to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write man pages to {}: {e}", dir.display());
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Loads the config, printing every diagnostic to stderr on failure.
pub(crate) fn load_config(arg: &ConfigArg) -> Result<Config, ExitCode> {
    if !arg.config.exists() {
        eprintln!(
            "error: no config at {}: pass -c FILE|DIR or set LINEAGED_CONFIG \
             (an example: config/example.yaml; `lineaged schema` for editors)",
            arg.config.display()
        );
        return Err(ExitCode::from(EXIT_FAILED));
    }
    config::load(&arg.config).map_err(|e| {
        let lines = e.diagnostics();
        let mut err = std::io::stderr().lock();
        for l in &lines {
            let _ = writeln!(err, "{l}");
        }
        let n = lines.len();
        let _ = writeln!(
            err,
            "{n} error{} in {}",
            if n == 1 { "" } else { "s" },
            arg.config.display()
        );
        ExitCode::from(EXIT_FAILED)
    })
}

/// A tokio runtime for a command; failure is printed and becomes exit 1.
pub(crate) fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the runtime: {e}");
        ExitCode::from(EXIT_FAILED)
    })
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub(crate) fn print(s: &str) {
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

fn plan(args: &PlanArgs) -> ExitCode {
    let cfg = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let lineage = Lineage::new(&cfg.images);
    let unknown: Vec<&ImageRef> = args
        .changed
        .iter()
        .filter(|c| !lineage.contains(c))
        .collect();
    if !unknown.is_empty() {
        for u in unknown {
            eprintln!(
                "error: image {u} is not in the lineage of {}",
                args.config.config.display()
            );
        }
        return ExitCode::from(EXIT_FAILED);
    }
    let plan = match lineage.plan(&args.changed) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match args.output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&plan).unwrap_or_default();
            s.push('\n');
            print(&s);
        }
        Output::Text => print(&plan_text(&plan)),
    }
    ExitCode::SUCCESS
}

/// The plan as a readable table with counts.
pub fn plan_text(plan: &crate::lineage::Plan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for c in &plan.changed {
        let _ = writeln!(out, "changed  {c}");
    }
    if plan.waves.is_empty() {
        out.push_str("no managed image descends from the changed images: nothing to rebuild\n");
        return out;
    }
    let _ = writeln!(out, "\nWAVE  COUNT  IMAGE");
    for (i, wave) in plan.waves.iter().enumerate() {
        for (j, img) in wave.iter().enumerate() {
            if j == 0 {
                let _ = writeln!(out, "{:<4}  {:<5}  {img}", i + 1, wave.len());
            } else {
                let _ = writeln!(out, "{:<4}  {:<5}  {img}", "", "");
            }
        }
    }
    let n = plan.image_count();
    let _ = writeln!(
        out,
        "\n{n} rebuild{} in {} wave{}",
        if n == 1 { "" } else { "s" },
        plan.waves.len(),
        if plan.waves.len() == 1 { "" } else { "s" }
    );
    out
}

fn graph(args: &GraphArgs) -> ExitCode {
    let cfg = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let format = match args.format {
        Format::Dot => GraphFormat::Dot,
        Format::Mermaid => GraphFormat::Mermaid,
        Format::Json => GraphFormat::Json,
    };
    print(&Lineage::new(&cfg.images).render(format));
    ExitCode::SUCCESS
}
