//! `lineaged discover dockerfiles` on real-world-shaped Dockerfiles
//! (tests/fixtures/dockerfiles): multi-stage Go and Node builds, distroless
//! and scratch runtimes, ARG-templated bases, `--platform=$BUILDPLATFORM`,
//! `COPY --from=` an external image and a stage index, bind mounts from an
//! image, heredocs holding `FROM` lines, comments in continuations, and a
//! base that cannot be read.

use std::collections::BTreeMap;
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dockerfiles");
const TEMPLATE: &str = "registry.example.com/{dir}-{variant}:latest";

fn lineaged(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lineaged"))
        .args(args)
        .env_remove("LINEAGED_CONFIG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// image → parents, from lineage YAML.
fn lineage(yaml: &str) -> BTreeMap<String, Vec<String>> {
    let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let from = i["from"]
                .as_array()
                .map(|f| f.iter().map(|p| p.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            (i["name"].as_str().unwrap().to_string(), from)
        })
        .collect()
}

fn expected() -> BTreeMap<String, Vec<String>> {
    [
        // ARG defaults substituted; the name from its LABEL.
        (
            "registry.example.com/platform/python:3.12",
            vec!["docker.io/library/python:3.12-slim"],
        ),
        // The runtime base first, then the build stage's image; the `test`
        // stage (built on `build`) adds nothing; --platform is no base.
        (
            "registry.example.com/payments/api:latest",
            vec![
                "gcr.io/distroless/static-debian12:nonroot",
                "docker.io/library/golang:1.22-alpine",
            ],
        ),
        // Another Dockerfile in the same directory: {variant}; COPY --from
        // an external image is a parent.
        (
            "registry.example.com/payments/api-migrate:latest",
            vec![
                "registry.example.com/platform/python:3.12",
                "ghcr.io/astral-sh/uv:0.4.20",
            ],
        ),
        // Lower-case instructions, a stage name in another case, an unused
        // `test` stage on node:20 left out.
        (
            "registry.example.com/web/frontend:latest",
            vec![
                "docker.io/nginxinc/nginx-unprivileged:1.27-alpine",
                "docker.io/library/node:20-bookworm",
            ],
        ),
        // ${NODE_IMAGE:-node:20-slim}; the FROM lines inside heredocs are
        // text; the name from lineaged.yaml beside it.
        (
            "registry.example.com/web/ssr:2",
            vec!["docker.io/library/node:20-slim"],
        ),
        // FROM scratch is no parent; COPY --from=0 follows stage 0.
        (
            "registry.example.com/tools/scratch:latest",
            vec![
                "docker.io/library/golang:1.22",
                "docker.io/library/busybox:1.36",
            ],
        ),
        // RUN --mount=type=bind,from=<image>.
        (
            "registry.example.com/tools/mounts:latest",
            vec![
                "docker.io/library/debian:bookworm-slim",
                "ghcr.io/acme/certs:2024",
            ],
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect()
}

#[test]
fn dockerfiles_give_the_expected_parents_and_the_unreadable_base_is_reported() {
    let o = lineaged(&[
        "discover",
        "dockerfiles",
        FIXTURES,
        "--name-template",
        TEMPLATE,
    ]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    // One problem: exit 1, the rest still printed.
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(lineage(&out), expected(), "{out}");
    assert!(
        err.contains(&format!(
            "{FIXTURES}/broken/Dockerfile:3: FROM ${{BASE}}: ARG BASE has no default (pass --build-arg BASE=…); not guessed"
        )),
        "{err}"
    );
    assert!(out.contains("broken/Dockerfile: left out"), "{out}");
    assert!(
        !out.contains("node_modules") && !out.contains("alpine:3.19"),
        "{out}"
    );
    assert!(out.contains("# build: { backend: <your CI backend>, context: \"payments/api\", dockerfile: \"payments/api/Dockerfile.migrate\" }"), "{out}");
    assert!(
        err.contains("8 Dockerfiles → 7 images on 12 distinct bases; 1 problem"),
        "{err}"
    );

    // With the base given, as `docker build --build-arg` would.
    let o = lineaged(&[
        "discover",
        "dockerfiles",
        &format!("{FIXTURES}/broken"),
        "--name-template",
        TEMPLATE,
        "--build-arg",
        "BASE=alpine:3.20",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let l = lineage(&text(&o.stdout));
    assert_eq!(
        l["registry.example.com/broken:latest"],
        ["docker.io/library/alpine:3.20"]
    );

    // Without a template, unlabelled Dockerfiles say how to name them.
    let o = lineaged(&["discover", "dockerfiles", &format!("{FIXTURES}/tools")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("cannot tell which image this builds: add `LABEL lineaged.image="),
        "{}",
        text(&o.stderr)
    );
}

/// `-o DIR` writes one file per top-level directory (team); the result is a
/// config `lineaged check` accepts, with the same lineage; `--backend`
/// fills in `build:`.
#[test]
fn written_files_are_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lineage.d");
    let o = lineaged(&[
        "discover",
        "dockerfiles",
        FIXTURES,
        "--name-template",
        TEMPLATE,
        "--backend",
        "ci",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["payments.yaml", "platform.yaml", "tools.yaml", "web.yaml"]
    );
    // Written files are not overwritten without --force (and nothing is).
    let again = lineaged(&[
        "discover",
        "dockerfiles",
        FIXTURES,
        "--name-template",
        TEMPLATE,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("payments.yaml exists (--force replaces it)"),
        "{}",
        text(&again.stderr)
    );
    let mut all = BTreeMap::new();
    for f in &files {
        let yaml = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(yaml.contains("build: { backend: ci, context: "), "{yaml}");
        all.extend(lineage(&yaml));
    }
    assert_eq!(all, expected());
    std::fs::write(
        out.join("00-backends.yaml"),
        "backends:\n  ci: { kind: webhook, url: \"http://ci.example.com/\" }\n",
    )
    .unwrap();
    let o = lineaged(&["check", "-c", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("ok: 18 images (7 managed, 11 external"),
        "{}",
        text(&o.stdout)
    );
}

/// `--diff CONFIG`: what the Dockerfiles have that the config lacks, and
/// the reverse; exit 0 only when they agree.
#[test]
fn diff_against_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lineaged.yaml");
    std::fs::write(
        &cfg,
        "backends:\n  ci: { kind: webhook, url: \"http://ci.example.com/\" }\nimages:\n\
         - name: registry.example.com/platform/python:3.12\n  from: [python:3.12-slim]\n  build: { backend: ci }\n\
         - name: registry.example.com/payments/api:latest\n  from: [gcr.io/distroless/static-debian12:nonroot]\n  build: { backend: ci }\n\
         - name: registry.example.com/payments/gone:1\n  from: [alpine:3]\n  build: { backend: ci }\n",
    )
    .unwrap();
    let o = lineaged(&[
        "discover",
        "dockerfiles",
        &format!("{FIXTURES}/platform"),
        &format!("{FIXTURES}/payments"),
        "--name-template",
        "registry.example.com/payments/{dir}-{variant}:latest",
        "--diff",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "~ registry.example.com/payments/api:latest: Dockerfile FROM [gcr.io/distroless/static-debian12:nonroot, docker.io/library/golang:1.22-alpine], config from [gcr.io/distroless/static-debian12:nonroot]",
            &format!(
                "+ registry.example.com/payments/api-migrate:latest: built by {FIXTURES}/payments/api/Dockerfile.migrate FROM registry.example.com/platform/python:3.12, ghcr.io/astral-sh/uv:0.4.20, not in the config"
            ),
            "- registry.example.com/payments/gone:1: managed in the config, no Dockerfile found builds it",
        ],
        "{out}"
    );
    assert!(
        text(&o.stderr).contains("3 differences with"),
        "{}",
        text(&o.stderr)
    );
}
