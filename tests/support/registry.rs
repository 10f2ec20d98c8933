//! A real CNCF distribution registry (`docker-registry`, Debian package) on
//! a free port with temp storage, and helpers that push images to it.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// ((os, arch), (manifest digest, size)) for one index entry.
pub type IndexEntry<'a> = ((&'a str, &'a str), (String, usize));

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Default)]
pub struct RegistryOptions {
    /// (user, password) for htpasswd basic auth.
    pub basic_auth: Option<(String, String)>,
    /// Notification endpoint URL and bearer token.
    pub notify: Option<(String, String)>,
}

pub struct TestRegistry {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
    auth: Option<(String, String)>,
    http: reqwest::Client,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestRegistry {
    pub async fn start(opts: RegistryOptions) -> TestRegistry {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = &opts.basic_auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apache2-utils) must be installed");
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, &out.stdout).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                path.display()
            ));
        }
        if let Some((url, token)) = &opts.notify {
            cfg.push_str(&format!(
                "notifications:\n  endpoints:\n    - name: lineaged\n      url: {url}\n      headers:\n        Authorization: [\"Bearer {token}\"]\n      timeout: 2s\n      threshold: 5\n      backoff: 200ms\n"
            ));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(match std::env::var_os("LINEAGED_TEST_REGISTRY_LOG") {
                Some(_) => Stdio::inherit(),
                None => Stdio::null(),
            })
            .spawn()
            .expect(
                "docker-registry (Debian package) must be installed; scripts/test.sh installs it",
            );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let reg = TestRegistry {
            addr,
            child,
            _dir: dir,
            auth: opts.basic_auth,
            http,
        };
        // The registry is a separate process: wait until it answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reg
                .http
                .get(format!("http://{}/v2/", reg.addr))
                .send()
                .await
                && (r.status().is_success() || r.status().as_u16() == 401)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {}",
                reg.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        reg
    }

    fn req(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> (String, usize) {
        let digest = format!("sha256:{:x}", Sha256::digest(data));
        let r = self
            .req(
                reqwest::Method::POST,
                format!("http://{}/v2/{repo}/blobs/uploads/", self.addr),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "start upload");
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{loc}", self.addr)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .req(reqwest::Method::PUT, format!("{loc}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "finish upload");
        (digest, data.len())
    }

    /// Pushes a manifest body; returns its digest as the registry reports it.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let r = self
            .req(
                reqwest::Method::PUT,
                format!("http://{}/v2/{repo}/manifests/{reference}", self.addr),
            )
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let digest = r
            .headers()
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            status.as_u16(),
            201,
            "push manifest: {}",
            r.text().await.unwrap_or_default()
        );
        let digest = digest.unwrap();
        assert_eq!(digest, format!("sha256:{:x}", Sha256::digest(body)));
        digest
    }

    /// Pushes a single-platform image (unique content from `seed`) with
    /// optional manifest annotations and config labels. Returns (digest, size).
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        seed: &str,
        platform: (&str, &str),
        annotations: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
    ) -> (String, usize) {
        let config = json!({
            "architecture": platform.1, "os": platform.0,
            "config": { "Labels": labels },
            "rootfs": { "type": "layers", "diff_ids": [] },
            "history": [{ "created_by": seed }]
        });
        let config = serde_json::to_vec(&config).unwrap();
        let (cdigest, csize) = self.push_blob(repo, &config).await;
        let (ldigest, lsize) = self
            .push_blob(repo, format!("layer {seed}").as_bytes())
            .await;
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ldigest, "size": lsize }]
        });
        if !annotations.is_empty() {
            manifest["annotations"] = json!(annotations);
        }
        let body = serde_json::to_vec(&manifest).unwrap();
        let digest = self.push_manifest(repo, tag, OCI_MANIFEST, &body).await;
        (digest, body.len())
    }

    /// Pushes an index over already pushed manifests.
    pub async fn push_index(&self, repo: &str, tag: &str, entries: &[IndexEntry<'_>]) -> String {
        let manifests: Vec<_> = entries
            .iter()
            .map(|((os, arch), (d, size))| {
                json!({
                    "mediaType": OCI_MANIFEST, "digest": d, "size": size,
                    "platform": { "os": os, "architecture": arch }
                })
            })
            .collect();
        let body = serde_json::to_vec(
            &json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests }),
        )
        .unwrap();
        self.push_manifest(repo, tag, OCI_INDEX, &body).await
    }
}

/// skopeo's view of a digest, for cross-checking.
pub fn skopeo_digest(addr: &str, repo_tag: &str, creds: Option<(&str, &str)>) -> String {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some((u, p)) = creds {
        cmd.arg(format!("--creds={u}:{p}"));
    }
    let out = cmd
        .arg(format!("docker://{addr}/{repo_tag}"))
        .output()
        .expect("skopeo (Debian package) must be installed; scripts/test.sh installs it");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("sha256:{:x}", Sha256::digest(&out.stdout))
}
