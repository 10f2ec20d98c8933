//! How lineaged ships, checked where no Docker daemon, Helm or Kubernetes
//! runs: the compose file with Debian's `docker-compose config` and against
//! the demo's config, the Dockerfile against what the build reads, the Helm
//! chart rendered by a stand-in for `helm template` (Go's text/template with
//! sprig, deploy/helm/render-check), the systemd unit with
//! `systemd-analyze verify`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn text(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap()
}

#[test]
fn compose_file_is_valid_and_agrees_with_the_demo_config() {
    let o = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(ROOT)
        .output()
        .expect("docker-compose (Debian package; scripts/test.sh installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resolved: serde_json::Value = serde_saphyr::from_slice(&o.stdout).unwrap();
    let services: BTreeSet<&str> = resolved["services"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        services,
        BTreeSet::from(["demo-ci", "lineaged", "postgres", "registry", "seed"])
    );
    let lineaged = &resolved["services"]["lineaged"];
    assert_eq!(lineaged["build"]["dockerfile"], "Dockerfile");
    let mounts = lineaged["volumes"].to_string();
    assert!(
        mounts.contains("config/compose/lineaged.yaml")
            && mounts.contains("/etc/lineaged/lineaged.yaml"),
        "{mounts}"
    );

    // lineaged's config, with the compose environment, passes `check`.
    let env = lineaged["environment"].as_object().unwrap();
    let mut check = Command::new(env!("CARGO_BIN_EXE_lineaged"));
    check.args([
        "check",
        "-c",
        &format!("{ROOT}/config/compose/lineaged.yaml"),
    ]);
    check.env_clear();
    for (k, v) in env {
        check.env(k, v.as_str().unwrap());
    }
    let o = check.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok: 5 images (4 managed"));

    // The registry tells lineaged about pushes, with the token lineaged expects.
    let registry: serde_json::Value =
        serde_saphyr::from_str(&text("config/compose/registry.yml")).unwrap();
    let endpoint = &registry["notifications"]["endpoints"][0];
    assert_eq!(
        endpoint["url"],
        "http://lineaged:8080/api/v1/hooks/registry/distribution"
    );
    assert_eq!(
        endpoint["headers"]["Authorization"][0],
        format!("Bearer {}", env["DEMO_PUSH_TOKEN"].as_str().unwrap())
    );
    // The demo CI signs with the key lineaged signs with.
    assert_eq!(
        resolved["services"]["demo-ci"]["environment"]["DEMO_CI_SECRET"],
        env["DEMO_CI_SECRET"]
    );
    // The demo script runs the same lineage.
    assert!(text("scripts/demo.sh").contains("config=$root/config/compose/lineaged.yaml"));
}

/// The Dockerfile copies everything `cargo build` reads (a file pulled in
/// by `include_str!` from a new directory would break the image build
/// silently here otherwise), .dockerignore lets it through, and the image
/// runs as a non-root user with the OCI base annotations.
#[test]
fn dockerfile_copies_what_the_build_reads() {
    let dockerfile = text("Dockerfile");
    let copied: BTreeSet<String> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|p| p.trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut needed = BTreeSet::from(
        ["Cargo.toml", "Cargo.lock", "src", "migrations", "benches"].map(String::from),
    );
    // Top-level directories that sources include from.
    for entry in walk(&Path::new(ROOT).join("src")) {
        let code = std::fs::read_to_string(&entry).unwrap_or_default();
        for m in code
            .split("include_str!(\"")
            .skip(1)
            .chain(code.split("include_bytes!(\"").skip(1))
        {
            let rel = &m[..m.find('"').unwrap()];
            let target = entry.parent().unwrap().join(rel);
            let target = target.canonicalize().unwrap();
            let top = target
                .strip_prefix(Path::new(ROOT).canonicalize().unwrap())
                .unwrap()
                .components()
                .next()
                .unwrap();
            needed.insert(top.as_os_str().to_string_lossy().into_owned());
        }
    }
    assert!(
        needed.is_subset(&copied),
        "not copied: {:?}",
        needed.difference(&copied).collect::<Vec<_>>()
    );
    let ignore = text(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "*"),
        "context is not allow-listed"
    );
    for n in &needed {
        assert!(
            ignore
                .lines()
                .any(|l| l == format!("!{n}") || l == format!("!{n}/")),
            ".dockerignore keeps {n} out"
        );
    }
    // The build image is at least the Rust the crate needs.
    let manifest = text("Cargo.toml");
    let msrv = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .unwrap()
        .trim_end_matches('"');
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_IMAGE=docker.io/library/rust:"))
        .unwrap();
    let version = image.split('-').next().unwrap();
    let num = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        num(version) >= num(msrv),
        "rust image {version} < rust-version {msrv}"
    );
    for want in [
        "org.opencontainers.image.base.name=\"${BASE_IMAGE}\"",
        "org.opencontainers.image.base.digest=\"${BASE_DIGEST}\"",
        "USER 65532:65532",
        "EXPOSE 8080",
        "ENTRYPOINT [\"/usr/local/bin/lineaged\"]",
        "--locked",
    ] {
        assert!(dockerfile.contains(want), "Dockerfile lacks {want}");
    }
    assert!(
        !dockerfile.contains("\nHEALTHCHECK"),
        "probes are /healthz and /readyz"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The chart renders for its defaults, both example values files and edge
/// cases; every rendered config passes `lineaged check`; bad values (SQLite
/// with three replicas, Postgres without a Secret…) are refused by the
/// templates and values.schema.json.
#[test]
fn helm_chart_renders_and_refuses_bad_values() {
    let o = Command::new("bash")
        .arg(format!("{ROOT}/deploy/helm/render-check/run.sh"))
        .env("LINEAGED_BIN", env!("CARGO_BIN_EXE_lineaged"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.ends_with("0 failed\n"), "{out}");
    for want in [
        "example-postgres: documents: ConfigMap/lineaged, Deployment/lineaged, Ingress/lineaged, PodDisruptionBudget/lineaged, Role/lineaged-deployer",
        "example-sqlite: documents: ConfigMap/lineaged, Deployment/lineaged, PersistentVolumeClaim/lineaged-data",
        "example-postgres: lineaged check: 0 ok:",
        "fail-sqlite3: refused as expected",
        "fail-pg-nosecret: refused as expected",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
}

#[test]
fn systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = text("deploy/systemd/lineaged.service")
        .replace("/usr/local/bin/lineaged", env!("CARGO_BIN_EXE_lineaged"));
    let path = dir.path().join("lineaged.service");
    std::fs::write(&path, unit).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&o.stderr);
    // It exits 0 on unknown keys and bad values, but says so.
    assert!(o.status.success() && err.trim().is_empty(), "{err}");
}
