//! The `lineaged` binary as a user runs it: check, plan, graph, exit codes.

use std::path::Path;
use std::process::{Command, Output};

fn lineaged(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lineaged"))
        .args(args)
        .env_remove("LINEAGED_CONFIG")
        .env("LINEAGED_TEST_TOKEN", "s3cr3t-value")
        .env("LINEAGED_TEST_HOST", "registry.example.com")
        .output()
        .expect("run lineaged")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml");
const TEAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/lineage.d");

#[test]
fn examples_pass_check() {
    for cfg in [EXAMPLE, TEAMS] {
        let o = lineaged(&["check", "-c", cfg]);
        assert_eq!(o.status.code(), Some(0), "{cfg}: {}", stderr(&o));
        assert!(stdout(&o).starts_with("ok: "), "{}", stdout(&o));
    }
}

#[test]
fn help_on_every_command_and_usage_errors_exit_2() {
    for cmd in [
        &[][..],
        &["serve"],
        &["check"],
        &["plan"],
        &["graph"],
        &["migrate"],
        &["resolve"],
        &["status"],
        &["trigger"],
        &["verify"],
        &["approvals"],
        &["approve"],
        &["reject"],
        &["schema"],
        &["completions"],
        &["man"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = lineaged(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert!(stdout(&o).contains("Usage:"), "{args:?}");
    }
    // `lineaged` alone prints the whole help (to stderr: it is a usage error).
    let bare = lineaged(&[]);
    assert_eq!(bare.status.code(), Some(2));
    for want in [
        "Usage:",
        "Commands:",
        "serve",
        "check",
        "Examples:",
        "scripts/demo.sh",
    ] {
        assert!(stderr(&bare).contains(want), "{want}: {}", stderr(&bare));
    }
    // Every option says what it is, `--output` included.
    let plan = stdout(&lineaged(&["plan", "--help"]));
    assert!(
        plan.contains("--output <OUTPUT>") && plan.contains("for scripts"),
        "{plan}"
    );
    assert_eq!(lineaged(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(lineaged(&["plan", "-c", EXAMPLE]).status.code(), Some(2));
    let o = lineaged(&["plan", "-c", EXAMPLE, "--changed", "Not/A:Ref"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("lowercase"), "{}", stderr(&o));
    let o = lineaged(&["graph", "-c", EXAMPLE, "--format", "png"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn every_kind_of_error_is_reported_at_once_with_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "bad.yaml",
        r#"backends:
  gh:
    kind: github_actions
    repository: org/images
    token_env: LINEAGED_TEST_UNSET_VAR
images:
  - name: Python:3.12
  - name: ${LINEAGED_TEST_HOST}/a:1
    from: ["${LINEAGED_TEST_HOST}/c:1"]
    build: { backend: nope, workflow: a.yml }
  - name: registry.example.com/b:1
    from: [registry.example.com/a:1]
    build: { backend: gh, workflow: b.yml }
  - name: registry.example.com/c:1
    from: [registry.example.com/b:1]
    build: { backend: gh, workflow: c.yml }
  - name: docker.io/library/python:3.12
  - name: python:3.12
  - name: x:1
    schedule: "every tuesday"
api:
  cors_origins: ["https://dash.example.com/path"]
  sse_keepalive: 0s
"#,
    );
    let o = lineaged(&["check", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let expect = [
        format!("{cfg}:5:16: environment variable LINEAGED_TEST_UNSET_VAR (token_env) is not set"),
        format!(
            "{cfg}:7:11: invalid image reference `Python:3.12`: repository name must be lowercase: `Python`"
        ),
        format!(
            "{cfg}:8:11: cycle in lineage: registry.example.com/a:1 → registry.example.com/c:1 → registry.example.com/b:1 → registry.example.com/a:1"
        ),
        format!("{cfg}:10:23: unknown backend `nope` (declared backends: gh)"),
        format!(
            "{cfg}:18:11: duplicate image docker.io/library/python:3.12 (first declared at {cfg}:17:11)"
        ),
    ];
    for e in &expect {
        assert!(err.contains(e.as_str()), "missing {e:?} in:\n{err}");
    }
    assert!(
        err.contains(&format!(
            "{cfg}:20:15: invalid schedule `every tuesday`: 2 fields; a schedule has 5 (min hour day month weekday)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{cfg}:22:18: cors origin `https://dash.example.com/path`"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{cfg}:23:18: sse_keepalive must be at least 1s")),
        "{err}"
    );
    assert!(err.contains("8 errors in"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unknown_field_and_syntax_errors_name_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "f.yaml",
        "images:\n  - name: a:1\n    colour: blue\n",
    );
    let o = lineaged(&["check", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("{cfg}:3:5: unknown field `colour`")),
        "{}",
        stderr(&o)
    );

    let cfg = write(
        dir.path(),
        "g.yaml",
        "images:\n  - name: a:1\n    from: [b:1\n",
    );
    let o = lineaged(&["check", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with(&format!("{cfg}:3:")),
        "{}",
        stderr(&o)
    );

    let cfg = write(
        dir.path(),
        "h.yaml",
        "images:\n  - name: a:1\n    name: b:1\n",
    );
    let o = lineaged(&["check", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&format!("{cfg}:3:")), "{}", stderr(&o));
}

#[test]
fn secrets_never_appear_in_output() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "s.yaml",
        "backends:\n  gh: { kind: github_actions, repository: o/r, token_env: LINEAGED_TEST_TOKEN }\nimages:\n  - name: a:1\n    build: { backend: gh }\n",
    );
    let o = lineaged(&["check", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("needs `workflow (file name or id)`"), "{all}");
    assert!(!all.contains("s3cr3t-value"), "{all}");
}

#[test]
fn bad_files_get_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(String, &str)> = vec![
        (write(dir.path(), "empty.yaml", ""), "file is empty"),
        (
            write(dir.path(), "comments.yaml", "# nothing\n\n"),
            "file is empty",
        ),
        (
            {
                let p = dir.path().join("latin1.yaml");
                std::fs::write(&p, b"images:\n  - name: caf\xe9:1\n").unwrap();
                p.to_string_lossy().into_owned()
            },
            ":2:14: file is not valid UTF-8",
        ),
        (
            dir.path()
                .join("missing.yaml")
                .to_string_lossy()
                .into_owned(),
            "no config at",
        ),
    ];
    for (cfg, want) in cases {
        let o = lineaged(&["check", "-c", &cfg]);
        assert_eq!(o.status.code(), Some(1), "{cfg}");
        assert!(stderr(&o).contains(want), "{cfg}: {}", stderr(&o));
    }
    let empty_dir = tempfile::tempdir().unwrap();
    let o = lineaged(&["check", "-c", &empty_dir.path().to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("directory has no *.yaml or *.yml files"));
}

#[test]
fn alias_bombs_and_deep_nesting_are_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let many_aliases = format!(
        "images:\n  - name: &p base:1\n  - name: app:1\n    from: [{}]\n",
        vec!["*p"; 20_000].join(", ")
    );
    let mut laughs =
        String::from("images:\n  - name: x\n    build:\n      backend: ci\n      inputs:\n");
    laughs.push_str("        k0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        laughs.push_str(&format!("        k{i}: &a{i} [{refs}]\n"));
    }
    let deep = format!("images: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    for (name, text, want) in [
        ("aliases.yaml", many_aliases, "parser safety limit"),
        ("laughs.yaml", laughs, ":6:"),
        ("deep.yaml", deep, "nesting is too deep"),
    ] {
        let cfg = write(dir.path(), name, &text);
        let o = lineaged(&["check", "-c", &cfg]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        assert!(stderr(&o).contains(want), "{name}: {}", stderr(&o));
    }
}

#[test]
fn directory_merges_files_and_names_both_places_of_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "team-a.yaml",
        "backends:\n  ci: { kind: webhook, url: http://127.0.0.1:9/ }\nimages:\n  - name: base:1\n  - name: r.example.com/a:1\n    from: [base:1]\n    build: { backend: ci }\n",
    );
    let b = write(
        dir.path(),
        "team-b.yml",
        "images:\n  - name: r.example.com/b:1\n    from: [r.example.com/a:1]\n    build: { backend: ci }\n",
    );
    write(dir.path(), "README.md", "not yaml, ignored\n");
    let d = dir.path().to_string_lossy().into_owned();
    let o = lineaged(&["plan", "-c", &d, "--changed", "base:1", "--output", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "changed": ["docker.io/library/base:1"],
            "waves": [["r.example.com/a:1"], ["r.example.com/b:1"]]
        })
    );

    let c = write(
        dir.path(),
        "team-c.yaml",
        "backends:\n  ci: { kind: webhook, url: http://127.0.0.1:9/ }\nimages:\n  - name: docker.io/library/base:1\n",
    );
    let o = lineaged(&["check", "-c", &d]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{c}:4:11: duplicate image docker.io/library/base:1 (first declared at {a}:4:11)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{c}:2:7: backend `ci` is already declared at {a}:2:7"
        )),
        "{err}"
    );
    let _ = b;
}

#[test]
fn plan_text_and_json_for_the_example() {
    let o = lineaged(&[
        "plan",
        "-c",
        EXAMPLE,
        "--changed",
        "python:3.12-slim",
        "--changed",
        "docker.io/library/debian:bookworm-slim",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("WAVE  COUNT  IMAGE"), "{text}");
    assert!(text.contains("4 rebuilds in 3 waves"), "{text}");

    let o = lineaged(&[
        "plan",
        "-c",
        EXAMPLE,
        "--changed",
        "python:3.12-slim",
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v["waves"],
        serde_json::json!([
            ["registry.example.com/platform/python:3.12"],
            ["registry.example.com/platform/runtime:1"],
            ["registry.example.com/apps/api:stable"]
        ])
    );

    let o = lineaged(&["plan", "-c", EXAMPLE, "--changed", "alpine:3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("docker.io/library/alpine:3 is not in the lineage"));
}

#[test]
fn graph_formats_and_dot_is_accepted_by_graphviz() {
    let o = lineaged(&["graph", "-c", TEAMS, "--format", "json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["images"].as_array().unwrap().len(), 8);
    assert!(v["edges"].as_array().unwrap().contains(&serde_json::json!({
        "parent": "docker.io/library/postgres:16",
        "child": "registry.example.com/data/etl:nightly"
    })));

    let o = lineaged(&["graph", "-c", TEAMS, "--format", "mermaid"]);
    assert!(stdout(&o).starts_with("flowchart TD\n"));
    assert_eq!(stdout(&o).matches(" --> ").count(), 7);

    let o = lineaged(&["graph", "-c", TEAMS, "--format", "dot"]);
    let dot = stdout(&o);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "g.dot", &dot);
    // .ci/run installs graphviz; a missing `dot` is a failure, not a skip.
    let g = Command::new("dot")
        .args(["-Tsvg", "-o", "/dev/null", &path])
        .output()
        .expect("graphviz `dot` must be installed (apt-get install graphviz)");
    assert!(
        g.status.success(),
        "dot rejected:\n{dot}\n{}",
        String::from_utf8_lossy(&g.stderr)
    );
}

/// What each CI kind needs is checked at its line: a workflow_dispatch
/// image without `workflow`, a repository that is not owner/name, a mode
/// the kind lacks, reserved or too many inputs, a deploy through a CI kind.
#[test]
fn ci_kinds_are_checked_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "ci.yaml",
        r#"backends:
  gh: { kind: github_actions, token_env: LINEAGED_TEST_TOKEN, mode: repository_dispatch }
  gl: { kind: gitlab, url: "https://gitlab.example.com", token_env: LINEAGED_TEST_TOKEN, mode: pipelines }
  jk: { kind: jenkins }
  tk: { kind: tekton, url: "http://el.example.com" }
  jk2: { kind: jenkins, url: "http://jenkins.example.com", username: robot }
  gh2: { kind: github_actions, repository: /acme/images, token_env: LINEAGED_TEST_TOKEN }
images:
  - name: registry.example.com/a:1
    build: { backend: gh, mode: workflow_dispatch, repository: acme/a }
  - name: registry.example.com/b:1
    build: { backend: gh, repository: acme }
  - name: registry.example.com/c:1
    build: { backend: gl, inputs: { image: x, LINEAGED_JOB_ID: "1" } }
  - name: registry.example.com/d:1
    build: { backend: gh, repository: acme/d, inputs: { a: "1", b: "2", c: "3", d: "4", e: "5" } }
  - name: registry.example.com/e:1
    build: { backend: tk }
    deploy: { backend: tk }
  - name: registry.example.com/f:1
    build: { backend: gl, project: a/f, inputs: { "a]b": x } }
"#,
    );
    let o = lineaged(&["check", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for e in [
        format!("{cfg}:3:96: mode must be one of trigger, api, got `pipelines`"),
        format!("{cfg}:4:7: backend `jk` (kind jenkins) needs `url`"),
        format!(
            "{cfg}:10:23: build of registry.example.com/a:1 on backend `gh` (kind github_actions) needs `workflow (file name or id)`"
        ),
        format!("{cfg}:12:39: repository must be `owner/name`, got `acme`"),
        format!(
            "{cfg}:14:23: build of registry.example.com/c:1 on backend `gl` (kind gitlab) needs `project (here or on the backend)`"
        ),
        format!("{cfg}:14:44: build input `image` is reserved: lineaged sends it itself"),
        format!("{cfg}:14:64: build input `LINEAGED_JOB_ID` is reserved"),
        format!(
            "{cfg}:16:23: build of registry.example.com/d:1: repository_dispatch's client_payload takes at most 10 inputs; lineaged sends 6 and `inputs` adds 5"
        ),
        format!(
            "{cfg}:19:24: deploy through backend `tk` (kind tekton): deploys go to webhook, argocd, flux or kubernetes backends"
        ),
    ] {
        assert!(err.contains(e.as_str()), "missing {e:?} in:\n{err}");
    }
}

/// The deploy kinds' needs, each at its line: what a backend lacks, what a
/// deploy names wrongly or names for another kind, and approvals.
#[test]
fn deploy_kinds_and_approvals_are_checked_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "deploy.yaml",
        r#"backends:
  ci: { kind: webhook, url: "http://ci.example.com" }
  argo: { kind: argocd, url: "https://argocd.example.com" }
  flux: { kind: flux, url: "https://flux.example.com/hook/1" }
  k8s: { kind: kubernetes, kubeconfig: /nonexistent/kubeconfig }
  k8s2: { kind: kubernetes, api_url: "https://k8s.example.com" }
images:
  - name: registry.example.com/a:1
    build: { backend: k8s2 }
  - name: registry.example.com/b:1
    build: { backend: ci }
    deploy: { backend: argo, namespace: shop }
  - name: registry.example.com/c:1
    build: { backend: ci }
    deploy: { backend: k8s2, workload: pod/c }
  - name: registry.example.com/d:1
    build: { backend: ci }
    deploy: { backend: k8s2, workload: deployment/d, app: x }
    approval: { expires: 1h, before: deploy-ish }
  - name: registry.example.com/e:1
    build: { backend: ci }
    approval: { }
"#,
    );
    let o = lineaged(&["check", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for e in [
        format!("{cfg}:3:9: backend `argo` (kind argocd) needs `token_env or token_file`"),
        format!(
            "{cfg}:4:9: backend `flux` (kind flux) needs `secret_env or secret_file (the Receiver's HMAC token)`"
        ),
        format!("{cfg}:5:40: cannot read kubeconfig /nonexistent/kubeconfig"),
        format!(
            "{cfg}:9:23: build of registry.example.com/a:1 through backend `k8s2` (kind kubernetes): it deploys, it does not build"
        ),
        format!(
            "{cfg}:12:24: deploy through backend `argo` (kind argocd) needs `app` (the application's name)"
        ),
        format!("{cfg}:12:41: deploy.namespace is not used by backend `argo` (kind argocd)"),
        format!(
            "{cfg}:15:40: workload must be deployment/NAME, statefulset/NAME or daemonset/NAME, got `pod/c`"
        ),
        format!("{cfg}:18:59: deploy.app is not used by backend `k8s2` (kind kubernetes)"),
        format!("{cfg}:19:38: approval.before must be `deploy` or `build`, got `deploy-ish`"),
        format!(
            "{cfg}:22:15: registry.example.com/e:1 asks for approval before a stage it does not have"
        ),
    ] {
        assert!(err.contains(e.as_str()), "missing {e:?} in:\n{err}");
    }
}

/// `lineaged trigger --dry-run` prints each kind's exact request, the
/// credential masked, and exits 0 without sending anything.
#[test]
fn trigger_dry_run_prints_each_kinds_request() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "ci.yaml",
        r#"backends:
  gh: { kind: github_actions, repository: acme/images, token_env: LINEAGED_TEST_TOKEN }
  gl: { kind: gitlab, project: acme/images, token_env: LINEAGED_TEST_TOKEN }
  jk: { kind: jenkins, url: "https://jenkins.example.com", username: robot, token_env: LINEAGED_TEST_TOKEN }
  az: { kind: azure_pipelines, organization: acme, project: images, token_env: LINEAGED_TEST_TOKEN }
  bk: { kind: buildkite, organization: acme, token_env: LINEAGED_TEST_TOKEN }
  tk: { kind: tekton, url: "http://el.example.com:8080", secret_env: LINEAGED_TEST_TOKEN }
api: { public_url: "https://lineaged.example.com" }
images:
  - name: registry.example.com/base:1
  - name: registry.example.com/gh:1
    from: [registry.example.com/base:1]
    build: { backend: gh, workflow: build.yml }
  - name: registry.example.com/gl:1
    build: { backend: gl, ref: main }
  - name: registry.example.com/jk:1
    build: { backend: jk, job: team/gl }
  - name: registry.example.com/az:1
    build: { backend: az, pipeline: "7" }
  - name: registry.example.com/bk:1
    build: { backend: bk, pipeline: images }
  - name: registry.example.com/tk:1
    build: { backend: tk }
"#,
    );
    let want = [
        (
            "gh",
            "POST https://api.github.com/repos/acme/images/actions/workflows/build.yml/dispatches",
            "authorization: ***",
        ),
        (
            "gl",
            "POST https://gitlab.com/api/v4/projects/acme%2Fimages/trigger/pipeline",
            "token=***",
        ),
        (
            "jk",
            "POST https://jenkins.example.com/job/team/job/gl/buildWithParameters",
            "authorization: ***",
        ),
        (
            "az",
            "POST https://dev.azure.com/acme/images/_apis/pipelines/7/runs?api-version=7.1",
            "authorization: ***",
        ),
        (
            "bk",
            "POST https://api.buildkite.com/v2/organizations/acme/pipelines/images/builds",
            "authorization: ***",
        ),
        (
            "tk",
            "POST http://el.example.com:8080",
            "x-hub-signature-256: sha256=",
        ),
    ];
    for (name, line, credential) in want {
        let image = format!("registry.example.com/{name}:1");
        let o = lineaged(&["trigger", "-c", &cfg, &image, "--dry-run", "--offline"]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        assert!(out.contains(&format!("{line}\n")), "{name}:\n{out}");
        assert!(
            out.to_lowercase().contains(&credential.to_lowercase()),
            "{name}:\n{out}"
        );
        assert!(
            out.contains("https://lineaged.example.com/api/v1/jobs/0/result"),
            "{name}:\n{out}"
        );
        assert!(
            !out.contains("s3cr3t-value"),
            "{name}: the token leaked:\n{out}"
        );
        assert!(stderr(&o).contains("dry run: nothing sent"), "{name}");
    }
    let o = lineaged(&[
        "trigger",
        "-c",
        &cfg,
        "registry.example.com/base:1",
        "--dry-run",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("has no `build:`"), "{}", stderr(&o));
}

/// Policy mistakes are reported at their lines: a key that is not a PEM
/// public key, a bad mode and apply_to, `required` beyond the authorities,
/// a scan rule without a scanner, an unknown severity.
#[test]
fn policy_rules_are_checked_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let key = write(dir.path(), "not-a-key.pub", "hello\n");
    let cfg = write(
        dir.path(),
        "p.yaml",
        &format!(
            r#"policy:
  rules:
    - images: ["**"]
      mode: block
      apply_to: [build]
      signatures:
        required: 2
        authorities:
          - cosign: {{ public_key_file: "{key}" }}
    - images: ["registry.example.com/**"]
      scan: {{ max_severity: severe }}
    - images: ["x/**"]
      scan: {{ max_severity: high }}
"#
        ),
    );
    let o = lineaged(&["check", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for e in [
        format!("{cfg}:4:13: mode must be `enforce` or `warn`, got `block`"),
        format!("{cfg}:5:18: apply_to takes `deploy` and `cascade`, got `build`"),
        format!("{cfg}:9:40: public key {key} is not a PEM `PUBLIC KEY`"),
        format!("{cfg}:7:19: required must be between 1 and the number of authorities (1), got 2"),
        format!("{cfg}:11:29: unknown severity `severe`"),
        format!("{cfg}:10:7: a scan gate needs policy.scan.command"),
    ] {
        assert!(err.contains(e.as_str()), "missing {e:?} in:\n{err}");
    }
}

/// Keys are parsed at load (an Ed25519 key is refused there, not at every
/// image), one key may not count twice, Notation-only quorums that can
/// never pass are refused, globs must be normalised, bounded waits.
#[test]
fn policy_keys_and_quorums_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let ed = write(
        dir.path(),
        "ed.pub",
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n",
    );
    // A P-256 key (from RFC 9500's test keys is not needed: any valid point).
    let p256 = write(
        dir.path(),
        "p.pub",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEQiVI+I+3gv+17KN0RFLHKh5Vj71v\nc75eSOkyMsxFxbFsTNEMTLjVuKFxOelIgsiZJXKZNCX0FBmrfpCkKklCcg==\n-----END PUBLIC KEY-----\n",
    );
    std::fs::create_dir(dir.path().join("ca")).unwrap();
    let ca = dir.path().join("ca").to_string_lossy().into_owned();
    let cfg = write(
        dir.path(),
        "k.yaml",
        &format!(
            r#"policy:
  signature_grace: 10m
  scan: {{ command: ["trivy", "{{ref}}"], timeout: 1h }}
  rules:
    - images: ["python:*"]
      signatures: {{ authorities: [{{ cosign: {{ public_key_file: "{ed}" }} }}] }}
    - images: ["r.example.com/a/**"]
      signatures:
        required: 2
        authorities:
          - cosign: {{ public_key_file: "{p256}" }}
          - cosign: {{ public_key_file: "{p256}" }}
    - images: ["r.example.com/b/**"]
      signatures:
        required: 2
        authorities:
          - cosign: {{ public_key_file: "{p256}" }}
          - notation: {{ trust_store: "{ca}" }}
"#
        ),
    );
    let o = lineaged(&["check", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for e in [
        "signature_grace must be at most 5m".to_string(),
        "scan.timeout must be between 1s and 14m".to_string(),
        "glob `python:*` can match nothing: rules match normalised references".to_string(),
        format!("public key {ed}: not an ECDSA P-256 public key"),
        format!("cosign key {p256} is listed twice in one rule"),
        "notation needs trusted_identities".to_string(),
    ] {
        assert!(err.contains(e.as_str()), "missing {e:?} in:\n{err}");
    }
}

/// Notification sinks' needs, each at its line.
#[test]
fn notification_sinks_are_checked_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "notify.yaml",
        r#"notifications:
  - { kind: slack, url: "https://hooks.slack.com/services/T/B/X", on: [rollout_started] }
  - { kind: pager, url: "https://example.com", on: [rollout_started] }
  - { kind: webhook, url: "https://example.com/hook", on: [rollout_begun] }
  - { kind: email, from: "not an address", to: [ops@example.com], smtp: { host: smtp.example.com, tls: none, username: u, password_env: LINEAGED_TEST_TOKEN }, on: [approval_pending] }
  - { kind: teams, url_env: LINEAGED_TEST_TOKEN, on: [] }
"#,
    );
    let o = lineaged(&["check", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for e in [
        format!("{cfg}:2:25: a slack webhook URL is a credential: give it as url_env or url_file"),
        format!(
            "{cfg}:3:13: notification kind must be slack, teams, webhook or email, got `pager`"
        ),
        format!("{cfg}:4:60: unknown event `rollout_begun`"),
        format!("{cfg}:5:73: smtp: a password is never sent without TLS (tls: none)"),
        format!("{cfg}:5:26: from: not a mail address: `not an address`"),
        format!("{cfg}:6:5: notification `teams-5` needs `on:` (the events it hears)"),
    ] {
        assert!(err.contains(e.as_str()), "missing {e:?} in:\n{err}");
    }
}

/// Logs carry colour codes only on a terminal; `--log-format json` writes
/// one JSON object per line for log shippers.
#[test]
fn logs_are_plain_off_a_terminal_and_json_on_request() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = write(
        dir.path(),
        "serve.yaml",
        &format!(
            "database: {{ url: \"sqlite://{}/l.db\" }}\nlisten: \"127.0.0.1:{port}\"\n",
            dir.path().display()
        ),
    );
    for json in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lineaged"));
        if json {
            cmd.args(["--log-format", "json"]);
        }
        let mut child = cmd
            .args(["serve", "-c", &cfg])
            .env("LINEAGED_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            !first.contains('\u{1b}'),
            "colour codes in a pipe: {first:?}"
        );
        if json {
            let v: serde_json::Value = serde_json::from_str(&first).unwrap();
            assert!(v["level"].is_string() && v["message"].is_string(), "{v}");
        } else {
            assert!(first.contains(" INFO "), "{first}");
        }
    }
}

/// Typos get a suggestion: an unknown key names the field it was probably
/// meant to be; a parent one letter away from a declared image is not
/// silently watched as a new external image.
#[test]
fn typos_get_did_you_mean() {
    let dir = tempfile::tempdir().unwrap();
    let key = write(
        dir.path(),
        "key.yaml",
        "images:\n  - name: a:1\n    form: [b:1]\n",
    );
    let err = stderr(&lineaged(&["check", "-c", &key]));
    assert!(
        err.contains(&format!(
            "{key}:3:5: unknown field `form`, expected one of name, from,"
        )) && err.contains("did you mean `from`?"),
        "{err}"
    );
    let parent = write(
        dir.path(),
        "parent.yaml",
        "backends:\n  ci: { kind: webhook, url: \"http://ci.example.com\" }\nimages:\n  - name: alpine:3\n  - name: registry.example.com/app:1\n    from: [alpne:3]\n    build: { backend: ci }\n  - name: registry.example.com/tool:1\n    from: [\"python:3.11\", \"alpine:3.20\"]\n    build: { backend: ci }\n",
    );
    let o = lineaged(&["check", "-c", &parent]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{parent}:5:11: registry.example.com/app:1: parent alpne:3 is not declared; did you mean alpine:3?"
        )),
        "{err}"
    );
    // Another tag of a declared repository, or an unrelated name, is fine.
    assert_eq!(err.matches("did you mean").count(), 1, "{err}");
}

/// Three typos take one `check`: every unknown key is reported (nested,
/// in sequences, with block values under them), and the rest of the file
/// is still validated. A backend with a bad kind is reported once, not
/// again as "unknown backend" where images use it.
#[test]
fn every_unknown_key_and_other_problem_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "typos.yaml",
        "backends:\n  ci:\n    kind: webhok\n    url: \"http://ci.example.com\"\n  gh:\n    kind: github_actions\n    tokn_env: GH\nimages:\n  - name: a:1\n    form: [b:1]\n    schedule: \"every day\"\n    build: { backend: ci }\n  - nmae: c:1\n    name: registry.example.com/d:1\n    build:\n      backend: ci\n      inptus:\n        x: y\n        z: w\n    deploy: { backend: nowhere, tyop: 1 }\n",
    );
    let o = lineaged(&["check", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for want in [
        format!("{cfg}:3:11: backend `ci`: unknown kind `webhok`"),
        format!("{cfg}:7:5: unknown field `tokn_env`"),
        format!("{cfg}:10:5: unknown field `form`"),
        format!("{cfg}:13:5: unknown field `nmae`"),
        format!("{cfg}:17:7: unknown field `inptus`"),
        format!("{cfg}:20:24: unknown backend `nowhere`"),
        format!("{cfg}:20:33: unknown field `tyop`"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("did you mean `webhook`?"), "{err}");
    assert!(err.contains("did you mean `token_env`?"), "{err}");
    assert!(err.contains("did you mean `name`?"), "{err}");
    // The schedule is checked too, though the file had unknown keys.
    assert!(err.contains(&format!("{cfg}:11:")), "{err}");
    // `ci` is reported once, for its kind.
    assert!(!err.contains("unknown backend `ci`"), "{err}");
    // In file order.
    let lines: Vec<u64> = err
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{cfg}:")))
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{err}");
}

/// `-c` defaults to ./lineaged.yaml (or LINEAGED_CONFIG); without one the
/// error says how to give one.
#[test]
fn config_defaults_to_lineaged_yaml_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_lineaged"))
            .arg("check")
            .current_dir(dir)
            .env_remove("LINEAGED_CONFIG")
            .output()
            .unwrap()
    };
    let o = run(dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no config at lineaged.yaml: pass -c FILE|DIR or set LINEAGED_CONFIG"),
        "{}",
        stderr(&o)
    );
    std::fs::copy(EXAMPLE, dir.path().join("lineaged.yaml")).unwrap();
    let o = run(dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ok: "));
}

/// Shell completions for each shell, and man pages rendered by clap.
#[test]
fn completions_and_man_pages() {
    let bash = stdout(&lineaged(&["completions", "bash"]));
    assert!(
        bash.contains("_lineaged()") && bash.contains("approvals"),
        "{bash}"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let o = lineaged(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}");
        assert!(stdout(&o).contains("check"), "{shell}");
    }
    assert_eq!(lineaged(&["completions", "tcsh"]).status.code(), Some(2));
    // bash accepts the script.
    let dir = tempfile::tempdir().unwrap();
    let script = write(dir.path(), "c.bash", &bash);
    let o = Command::new("bash").args(["-n", &script]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let page = stdout(&lineaged(&["man"]));
    assert!(
        page.starts_with(".ie") || page.contains(".TH lineaged 1"),
        "{page}"
    );
    assert!(
        page.contains("lineaged\\-check") || page.contains("check"),
        "{page}"
    );
    let out = dir.path().join("man1");
    let o = lineaged(&["man", "--out-dir", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for page in [
        "lineaged.1",
        "lineaged-check.1",
        "lineaged-serve.1",
        "lineaged-approve.1",
    ] {
        assert!(out.join(page).is_file(), "{page}");
    }
}

/// The JSON Schema: the repository's copy is what `lineaged schema` prints;
/// every example config validates against it with an independent validator
/// (Python's jsonschema), and it refuses an unknown key and a bad kind.
#[test]
fn schema_is_current_and_validates_the_examples() {
    let root = env!("CARGO_MANIFEST_DIR");
    let o = lineaged(&["schema"]);
    assert_eq!(o.status.code(), Some(0));
    let printed = stdout(&o);
    let checked_in = std::fs::read_to_string(format!("{root}/docs/lineaged.schema.json")).unwrap();
    assert!(
        printed == checked_in,
        "docs/lineaged.schema.json is stale: run `cargo run -- schema > docs/lineaged.schema.json`"
    );
    let v: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");

    let mut examples = vec![format!("{root}/config/example.yaml")];
    for dir in ["config/lineage.d", "config/compose"] {
        let Ok(entries) = std::fs::read_dir(format!("{root}/{dir}")) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                examples.push(p.to_string_lossy().into_owned());
            }
        }
    }
    for ex in &examples {
        // Editors find the schema from the first line.
        let first = std::fs::read_to_string(ex).unwrap();
        let first = first.lines().next().unwrap();
        let rel = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{ex} has no $schema line: {first}"));
        let target = Path::new(ex).parent().unwrap().join(rel);
        assert!(target.is_file(), "{ex}: {}", target.display());
    }
    let dir = tempfile::tempdir().unwrap();
    let generated = write(
        dir.path(),
        "generated.yaml",
        &stdout(&lineaged(&["generate", "--images", "300"])),
    );
    let typo = write(
        dir.path(),
        "typo.yaml",
        "images:\n  - name: a:1\n    form: [b:1]\n",
    );
    let kind = write(
        dir.path(),
        "kind.yaml",
        "backends:\n  ci: { kind: webhok, url: \"http://ci\" }\n",
    );
    let validate = |files: &[&String]| {
        Command::new("python3")
            .arg(format!("{root}/tests/tools/validate_schema.py"))
            .arg(format!("{root}/docs/lineaged.schema.json"))
            .args(files)
            .output()
            .expect("python3 (scripts/test.sh installs python3-jsonschema)")
    };
    let mut good: Vec<&String> = examples.iter().collect();
    good.push(&generated);
    let o = validate(&good);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o).matches(": ok").count(), good.len());
    let o = validate(&[&typo, &kind]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("typo.yaml: images/0: Additional properties are not allowed ('form'"),
        "{out}"
    );
    assert!(
        out.contains("kind.yaml: backends/ci/kind: 'webhok' is not one of"),
        "{out}"
    );
}

/// Listening on 0.0.0.0 without `api.public_url`: CI would be told to call
/// back http://0.0.0.0:8080; `check` says so (and still passes).
#[test]
fn check_warns_when_callbacks_would_go_to_a_wildcard_address() {
    let dir = tempfile::tempdir().unwrap();
    let body = "backends:\n  ci: { kind: webhook, url: \"http://ci.example.com\" }\nimages:\n  - name: registry.example.com/a:1\n    from: [alpine:3]\n    build: { backend: ci }\n";
    let wild = write(
        dir.path(),
        "wild.yaml",
        &format!("listen: \"0.0.0.0:8080\"\n{body}"),
    );
    let o = lineaged(&["check", "-c", &wild]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o)
            .contains("warning: api.public_url is not set and lineaged listens on 0.0.0.0:8080"),
        "{}",
        stderr(&o)
    );
    let set = write(
        dir.path(),
        "set.yaml",
        &format!(
            "listen: \"0.0.0.0:8080\"\napi: {{ public_url: \"https://lineaged.example.com\" }}\n{body}"
        ),
    );
    let o = lineaged(&["check", "-c", &set]);
    assert_eq!(o.status.code(), Some(0));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}

/// Unknown keys inside a flow mapping that spans lines, and after a
/// non-ASCII key on the same line, keep their places.
#[test]
fn unknown_keys_in_multi_line_and_non_ascii_flow_mappings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "flow.yaml",
        "backends:\n  ci: { kind: webhook,\n        typo: 1 }\n  cd: { kind: webhook, url: \"http://x\", settél: 1, tyop: 2 }\nimages:\n  - name: a:1\n    scedule: x\n",
    );
    let err = stderr(&lineaged(&["check", "-c", &cfg]));
    for want in [
        format!("{cfg}:3:9: unknown field `typo`"),
        format!("{cfg}:4:41: unknown field `settél`"),
        format!("{cfg}:4:52: unknown field `tyop`"),
        format!("{cfg}:7:5: unknown field `scedule`"),
        format!("{cfg}:2:7: backend `ci` (kind webhook) needs `url`"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("did not find expected"), "{err}");
}
