//! Lineage discovery: parsing Dockerfiles, and `discover` over a tree of
//! 10,000 of them (multi-stage, ARG-templated, heredocs) on disk.
//!
//! cargo bench --bench discover

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use lineaged::discover::{self, Options, dockerfile};

const GO: &str = "# syntax=docker/dockerfile:1.7\nARG GO_VERSION=1.22\nFROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-alpine AS build\nARG TARGETOS\nARG TARGETARCH\nWORKDIR /src\nCOPY go.mod go.sum ./\nRUN --mount=type=cache,target=/go/pkg/mod \\\n    go mod download\nCOPY . .\nRUN <<EOF\nset -e\nFROM is text here\nCGO_ENABLED=0 go build -o /out/app ./cmd/app\nEOF\n\nFROM build AS test\nRUN go test ./...\n\nFROM gcr.io/distroless/static-debian12:nonroot\nCOPY --from=build /out/app /app\nCOPY --from=ghcr.io/acme/certs:2024 /certs /certs\nLABEL org.opencontainers.image.title=\"app\"\nUSER nonroot:nonroot\nENTRYPOINT [\"/app\"]\n";

fn main() {
    let args = BTreeMap::new();
    // Parse throughput.
    let n = 100_000;
    let t = Instant::now();
    let mut parents = 0usize;
    for _ in 0..n {
        parents += dockerfile::parse(GO, &args).parents().len();
    }
    let el = t.elapsed();
    assert_eq!(parents, 3 * n);
    println!(
        "parse: {n} multi-stage Dockerfiles ({} bytes each) in {:.2} s: {:.1} µs each, {:.0} MB/s",
        GO.len(),
        el.as_secs_f64(),
        el.as_secs_f64() * 1e6 / n as f64,
        (GO.len() * n) as f64 / el.as_secs_f64() / 1e6
    );

    // A tree: 100 teams × 100 services, each with a Dockerfile.
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    for team in 0..100 {
        for svc in 0..100 {
            let d = dir.path().join(format!("team-{team:03}/svc-{svc:03}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("Dockerfile"), GO).unwrap();
        }
    }
    println!(
        "wrote 10,000 Dockerfiles in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let opts = Options {
        name_template: Some("registry.example.com/{dir}:1".into()),
        ..Options::default()
    };
    let roots = [PathBuf::from(dir.path())];
    for round in 0..3 {
        let t = Instant::now();
        let d = discover::discover(&roots, &opts);
        let walk = t.elapsed();
        let t2 = Instant::now();
        let groups = discover::groups(&d.found);
        let mut bytes = 0;
        for files in groups.values() {
            bytes += discover::to_yaml(files, &opts, "bench").len();
        }
        let yaml = t2.elapsed();
        assert_eq!(d.found.len(), 10_000);
        assert!(d.problems.is_empty());
        println!(
            "discover round {round}: 10,000 Dockerfiles walked and read in {:.3} s ({:.0}/s), YAML for 100 teams ({} KB) in {:.3} s",
            walk.as_secs_f64(),
            10_000.0 / walk.as_secs_f64(),
            bytes / 1024,
            yaml.as_secs_f64()
        );
    }
}
