//! Status API under load, on SQLite and Postgres: 100,000 images and
//! 1,000,000 events stored, then wrk (32 connections) against
//! `GET /api/v1/images?limit=100` and `GET /api/v1/images/{ref}` (random
//! refs), and an SSE fan-out: 200 clients on `/api/v1/events`, 100 events
//! appended, time until every client has all of them.
//!
//! cargo bench --bench api     (IMAGES, EVENTS, SECONDS, BACKENDS=sqlite,postgres)
//! Needs `wrk` (Debian package wrk) and Postgres (TEST_DATABASE_URL or
//! 127.0.0.1:5432). wrk shares the 2 cores with the daemon and the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lineaged::config::load_str;
use lineaged::daemon::{RunOptions, start};
use lineaged::store::{NewEvent, now_millis};
use lineaged::watch::WatchOptions;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-read-token";

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Default)]
struct Wrk {
    p50: String,
    p99: String,
    rps: String,
    errors: String,
}

fn wrk(url: &str, script: &std::path::Path, seconds: usize) -> Wrk {
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk (Debian package wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut w = Wrk {
        errors: "0".into(),
        ..Wrk::default()
    };
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["50%", v] => w.p50 = v.to_string(),
            ["99%", v] => w.p99 = v.to_string(),
            ["Requests/sec:", v] => w.rps = v.to_string(),
            ["Non-2xx", "or", "3xx", "responses:", v] => w.errors = v.to_string(),
            _ => {}
        }
    }
    if w.p99.is_empty() {
        eprintln!(
            "wrk output:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    w
}

async fn seed(url: &str, events: usize, now: i64) {
    let t = Instant::now();
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.expect("pg");
        for sql in [
            "UPDATE images SET current_digest = 'sha256:' || lpad(length(name)::text || md5(name), 64, '0'), last_checked_at = $1, last_changed_at = $1",
            "INSERT INTO rollouts (state, cause, created_at, finished_at) SELECT 'succeeded', '{}', $1, $1 FROM generate_series(1, 1000)",
            "INSERT INTO rollout_images (rollout_id, image, wave, state, updated_at, built_digest)
               SELECT (row_number() OVER (ORDER BY name)) % 1000 + 1, name, 1, 'done', $1, current_digest FROM images WHERE managed",
            "INSERT INTO jobs (kind, unique_key, idempotency_key, image, rollout_id, state, run_at, created_at, updated_at, finished_at)
               SELECT 'rebuild', 'rebuild:' || image, 'bench-' || image, image, rollout_id, 'succeeded', $1, $1, $1, $1 FROM rollout_images",
        ] {
            sqlx::query(sql).bind(now).execute(&mut c).await.expect("seed");
        }
        // Numbered images in a keyed temp table: a hash/index join, not a
        // nested loop over 1M × 100k.
        sqlx::query("CREATE TEMP TABLE imgs AS SELECT (row_number() OVER (ORDER BY name)) - 1 AS i, name FROM images")
            .execute(&mut c)
            .await
            .expect("imgs");
        sqlx::query("ALTER TABLE imgs ADD PRIMARY KEY (i)")
            .execute(&mut c)
            .await
            .expect("pk");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM imgs")
            .fetch_one(&mut c)
            .await
            .expect("n");
        sqlx::query(
            "INSERT INTO events (at, kind, image, rollout_id, data)
             SELECT $1 + g, (ARRAY['digest_changed','job_dispatched','job_succeeded','rollout_started'])[1 + g % 4],
                    imgs.name, g % 1000 + 1, '{\"bench\":true}'
             FROM generate_series(0, $2 - 1) g JOIN imgs ON imgs.i = g % $3",
        )
        .bind(now)
        .bind(events as i64)
        .bind(n)
        .execute(&mut c)
        .await
        .expect("events");
        sqlx::query("ANALYZE")
            .execute(&mut c)
            .await
            .expect("analyze");
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
        for sql in [
            "UPDATE images SET current_digest = printf('sha256:%064d', rowid), last_checked_at = $1, last_changed_at = $1",
            "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 1000)
               INSERT INTO rollouts (state, cause, created_at, finished_at) SELECT 'succeeded', '{}', $1, $1 FROM g",
            "INSERT INTO rollout_images (rollout_id, image, wave, state, updated_at, built_digest)
               SELECT rowid % 1000 + 1, name, 1, 'done', $1, current_digest FROM images WHERE managed",
            "INSERT INTO jobs (kind, unique_key, idempotency_key, image, rollout_id, state, run_at, created_at, updated_at, finished_at)
               SELECT 'rebuild', 'rebuild:' || image, 'bench-' || image, image, rollout_id, 'succeeded', $1, $1, $1, $1 FROM rollout_images",
        ] {
            sqlx::query(sql).bind(now).execute(&mut c).await.expect("seed");
        }
        sqlx::query(
            "WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x < $2 - 1),
                  n AS (SELECT COUNT(*) AS n FROM images)
             INSERT INTO events (at, kind, image, rollout_id, data)
             SELECT $1 + x, CASE x % 4 WHEN 0 THEN 'digest_changed' WHEN 1 THEN 'job_dispatched' WHEN 2 THEN 'job_succeeded' ELSE 'rollout_started' END,
                    (SELECT name FROM images WHERE rowid = 1 + x % n.n), x % 1000 + 1, '{\"bench\":true}'
             FROM g, n",
        )
        .bind(now)
        .bind(events as i64)
        .execute(&mut c)
        .await
        .expect("events");
        sqlx::query("ANALYZE")
            .execute(&mut c)
            .await
            .expect("analyze");
    }
    println!(
        "  seeded digests, 1,000 rollouts, a job and a rollout entry per managed image, {events} events in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// 200 clients follow the event stream from its end; 100 events are
/// appended; returns (p50, p99, max) of the time until a client had all.
async fn sse_fanout(base: &str, store: &lineaged::store::Store, clients: usize) -> (f64, f64, f64) {
    let last = {
        let mut after = 0;
        loop {
            let page = store.events_after(after, 10_000).await.expect("events");
            match page.last() {
                Some(e) => after = e.id,
                None => break after,
            }
        }
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let n_events = 100;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(clients);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, ready) = (
            http.clone(),
            format!("{base}/api/v1/events?after={last}"),
            ready_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut resp = http.get(url).bearer_auth(TOKEN).send().await.expect("sse");
            assert_eq!(resp.status().as_u16(), 200);
            let _ = ready.send(()).await;
            let mut seen = 0;
            while seen < n_events {
                let chunk = resp.chunk().await.expect("chunk").expect("stream ended");
                seen += String::from_utf8_lossy(&chunk).matches("\nid:").count()
                    + usize::from(chunk.starts_with(b"id:"));
            }
            Instant::now()
        }));
    }
    for _ in 0..clients {
        ready_rx.recv().await;
    }
    let t0 = Instant::now();
    for i in 0..n_events {
        let e = NewEvent {
            kind: "bench".into(),
            image: None,
            rollout_id: None,
            job_id: None,
            data: serde_json::json!({ "i": i }),
        };
        store.append_event(&e, now_millis()).await.expect("append");
    }
    let mut done: Vec<f64> = Vec::new();
    for t in tasks {
        let at = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("fan-out in time")
            .expect("client");
        done.push(at.duration_since(t0).as_secs_f64() * 1000.0);
    }
    done.sort_by(f64::total_cmp);
    let q = |p: f64| done[((done.len() as f64 * p) as usize).min(done.len() - 1)];
    (q(0.5), q(0.99), done[done.len() - 1])
}

fn main() {
    lineaged::init_tls();
    let images = env_num("IMAGES", 100_000);
    let events = env_num("EVENTS", 1_000_000);
    let seconds = env_num("SECONDS", 10);
    let backends = std::env::var("BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let pg_admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = lineaged::lineage::generate_yaml(images, 7);
    println!("api bench: {images} images, {events} events, wrk -t2 -c32 -d{seconds}s");
    let mut rows = Vec::new();
    for backend in backends.split(',') {
        let db_name = format!("lineaged_api_bench_{}", std::process::id());
        let url = match backend {
            "sqlite" => format!("sqlite://{}/api.db", dir.path().display()),
            "postgres" => {
                rt.block_on(async {
                    let mut c = sqlx::PgConnection::connect(&pg_admin)
                        .await
                        .expect("postgres");
                    sqlx::query(&format!("CREATE DATABASE {db_name}"))
                        .execute(&mut c)
                        .await
                        .expect("create db");
                });
                let (head, _) = pg_admin.rsplit_once('/').expect("db url");
                format!("{head}/{db_name}")
            }
            other => panic!("unknown backend {other}"),
        };
        println!("{backend}:");
        let yaml = format!(
            "database: {{ url: \"{url}\" }}\napi:\n  tokens: [{{ name: bench, role: read, token_env: T }}]\n{generated}"
        );
        let t = Instant::now();
        let cfg = Arc::new(
            load_str("bench.yaml", &yaml, &|n| {
                (n == "T").then(|| TOKEN.to_string())
            })
            .expect("config"),
        );
        let names: Vec<String> = cfg
            .images
            .iter()
            .step_by((images / 1000).max(1))
            .map(|i| i.name.to_string())
            .collect();
        let shutdown = CancellationToken::new();
        let opts = RunOptions {
            watch: false,
            rollouts: false,
            reconcile_interval: Duration::from_secs(3600),
            watch_options: WatchOptions {
                node_id: "bench".into(),
                ..WatchOptions::default()
            },
            registry_timeout: Duration::from_secs(5),
        };
        let (daemon, base) = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let d = start(cfg.clone(), l, shutdown.clone(), opts)
                .await
                .expect("start");
            let base = format!("http://{}", d.addr);
            (d, base)
        });
        println!(
            "  config loaded and synced in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        rt.block_on(seed(&url, events, now_millis()));

        let list_script = dir.path().join("list.lua");
        std::fs::write(
            &list_script,
            format!("wrk.headers[\"Authorization\"] = \"Bearer {TOKEN}\"\n"),
        )
        .expect("lua");
        let one_script = dir.path().join("one.lua");
        let lua_names: Vec<String> = names
            .iter()
            .map(|n| format!("\"{}\"", n.replace('/', "%2F").replace(':', "%3A")))
            .collect();
        std::fs::write(
            &one_script,
            format!(
                "wrk.headers[\"Authorization\"] = \"Bearer {TOKEN}\"\nlocal names = {{{}}}\nrequest = function()\n  return wrk.format(\"GET\", \"/api/v1/images/\" .. names[math.random(#names)])\nend\n",
                lua_names.join(",")
            ),
        )
        .expect("lua");
        // Warm-up, then the measured runs.
        let _ = wrk(&format!("{base}/api/v1/images?limit=100"), &list_script, 2);
        let list = wrk(
            &format!("{base}/api/v1/images?limit=100"),
            &list_script,
            seconds,
        );
        println!(
            "  GET /images?limit=100   p50 {:>9} p99 {:>9} {:>9} req/s  non-2xx {}",
            list.p50, list.p99, list.rps, list.errors
        );
        let one = wrk(&format!("{base}/api/v1/images"), &one_script, seconds);
        println!(
            "  GET /images/{{ref}}       p50 {:>9} p99 {:>9} {:>9} req/s  non-2xx {}",
            one.p50, one.p99, one.rps, one.errors
        );
        // Graph views: a neighbourhood of 500 images at most, with states.
        let graph_script = dir.path().join("graph.lua");
        std::fs::write(
            &graph_script,
            format!(
                "wrk.headers[\"Authorization\"] = \"Bearer {TOKEN}\"\nlocal names = {{{}}}\nrequest = function()\n  return wrk.format(\"GET\", \"/api/v1/graph?limit=500&up=5&down=5&image=\" .. names[math.random(#names)])\nend\n",
                lua_names.join(",")
            ),
        )
        .expect("lua");
        let graph = wrk(&format!("{base}/api/v1/graph"), &graph_script, seconds);
        println!(
            "  GET /graph?image=&limit=500 p50 {:>9} p99 {:>9} {:>9} req/s  non-2xx {}",
            graph.p50, graph.p99, graph.rps, graph.errors
        );
        let (p50, p99, max) = rt.block_on(sse_fanout(&base, &daemon.store, 200));
        println!(
            "  SSE 200 clients, 100 events: all delivered p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms"
        );
        rows.push((backend.to_string(), list, one, graph, (p50, p99, max)));
        shutdown.cancel();
        rt.block_on(async {
            let _ = daemon.wait().await;
            if backend == "postgres" {
                let mut c = sqlx::PgConnection::connect(&pg_admin)
                    .await
                    .expect("postgres");
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        });
    }
    println!("\n| backend | endpoint | p50 | p99 | req/s |\n|---|---|---|---|---|");
    for (b, list, one, graph, _) in &rows {
        println!(
            "| {b} | `GET /api/v1/images?limit=100` | {} | {} | {} |",
            list.p50, list.p99, list.rps
        );
        println!(
            "| {b} | `GET /api/v1/images/{{ref}}` | {} | {} | {} |",
            one.p50, one.p99, one.rps
        );
        println!(
            "| {b} | `GET /api/v1/graph?image={{ref}}&limit=500&up=5&down=5` | {} | {} | {} |",
            graph.p50, graph.p99, graph.rps
        );
    }
    for (b, _, _, _, (p50, p99, max)) in &rows {
        println!(
            "| {b} | SSE fan-out, 200 clients × 100 events | {p50:.0} ms | {p99:.0} ms | max {max:.0} ms |"
        );
    }
}
