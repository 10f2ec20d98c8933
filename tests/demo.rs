//! `scripts/demo.sh`, as a new user runs it: a real registry, the demo CI
//! and `lineaged serve` on SQLite; a new base image rolls through three
//! levels, each image rebuilt once; Ctrl-C leaves nothing behind.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;

use support::fleet::free_port;

#[test]
fn demo_rolls_a_new_base_through_three_levels_and_ctrl_c_cleans_up() {
    let port = free_port();
    let mut child = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh"))
        .env("LINEAGED_BIN", env!("CARGO_BIN_EXE_lineaged"))
        .env("DEMO_PORT", port.to_string())
        .env_remove("DEMO_EXIT")
        .env_remove("LINEAGED_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stdout and stderr interleaved, line by line, as a terminal shows them.
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while !out.contains("Ctrl-C stops everything") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the demo did not get to waiting for Ctrl-C:\n{out}");
            }
        }
    }
    assert!(out.contains("rollout 1 succeeded"), "{out}");
    assert!(
        out.contains(&format!("the dashboard: http://127.0.0.1:{port}/")),
        "{out}"
    );
    for image in ["runtime", "api", "worker", "api-debug"] {
        let done: Vec<&str> = out
            .lines()
            .filter(|l| {
                l.contains(" done ") && l.ends_with("…") && l.contains(&format!("/demo/{image}:1 "))
            })
            .collect();
        assert_eq!(done.len(), 1, "{image}: {done:?}\n{out}");
        // Rebuilt once by the CI, on the new parent.
        let runs = out
            .lines()
            .filter(|l| l.contains("rebuilding") && l.contains(&format!("/demo/{image}:1 on")))
            .count();
        assert_eq!(runs, 1, "{image}\n{out}");
    }
    assert!(out.contains("wave 3  done"), "{out}");
    assert_eq!(out.matches("callback HTTP 200").count(), 4, "{out}");
    let work = out
        .lines()
        .find_map(|l| l.split("(SQLite in ").nth(1))
        .map(|w| w.trim_end_matches(')').to_string())
        .expect("work dir named");
    assert!(std::path::Path::new(&work).is_dir());

    // The rebuilt images' own pushes start no second rollout.
    std::thread::sleep(Duration::from_secs(3));
    let rollouts = Command::new("curl")
        .args(["-fsS", &format!("http://127.0.0.1:{port}/api/v1/rollouts")])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&rollouts.stdout).unwrap();
    assert_eq!(v["rollouts"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["rollouts"][0]["state"], "succeeded", "{v}");

    // Ctrl-C: everything stops and the temporary directory goes.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130));
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        out.push_str(&line);
        out.push('\n');
    }
    assert!(out.contains("stopped the demo"), "{out}");
    assert!(!std::path::Path::new(&work).exists(), "{work} left behind");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "lineaged still listening"
    );
    let left = Command::new("pgrep").args(["-f", &work]).output().unwrap();
    assert!(
        left.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
