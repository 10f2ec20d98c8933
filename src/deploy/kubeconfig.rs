//! Where the Kubernetes API is and how to authenticate: a kubeconfig's
//! current context, an explicit `api_url` (+ `ca_file`, `token_*`), or,
//! by default, the pod's service account.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::{Auth, Client, http_client, read_pem};
use crate::config::Backend;

/// Mounted into every pod that has a service account.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

pub(super) fn client(b: &Backend) -> Result<Client, String> {
    if let Some(path) = &b.kubeconfig {
        return from_kubeconfig(path).map_err(|e| format!("kubeconfig {}: {e}", path.display()));
    }
    if let Some(base) = &b.api_url {
        let ca = b.ca_file.as_deref().map(read_pem).transpose()?;
        return Ok(Client {
            http: http_client(ca, None, false)?,
            base: base.clone(),
            auth: b.token.clone().map_or(Auth::None, Auth::Bearer),
        });
    }
    in_cluster(Path::new(SERVICE_ACCOUNT))
}

/// The service account's token and CA, the API at
/// `KUBERNETES_SERVICE_HOST:PORT` (or `kubernetes.default.svc`).
fn in_cluster(dir: &Path) -> Result<Client, String> {
    let token = dir.join("token");
    if !token.exists() {
        return Err(format!(
            "not running in a pod ({} is missing): set api_url or kubeconfig on the backend",
            token.display()
        ));
    }
    let base = match (
        std::env::var("KUBERNETES_SERVICE_HOST"),
        std::env::var("KUBERNETES_SERVICE_PORT"),
    ) {
        (Ok(h), Ok(p)) if h.contains(':') => format!("https://[{h}]:{p}"),
        (Ok(h), Ok(p)) => format!("https://{h}:{p}"),
        _ => "https://kubernetes.default.svc".into(),
    };
    Ok(Client {
        http: http_client(Some(read_pem(&dir.join("ca.crt"))?), None, false)?,
        base,
        auth: Auth::BearerFile(token),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct KubeConfig {
    #[serde(default)]
    current_context: String,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: T,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    exec: Option<serde_json::Value>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde_json::Value>,
}

fn from_kubeconfig(path: &Path) -> Result<Client, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let kc: KubeConfig = serde_saphyr::from_str(&text).map_err(|e| e.to_string())?;
    let ctx_name = if kc.current_context.is_empty() {
        kc.contexts
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_default()
    } else {
        kc.current_context.clone()
    };
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .ok_or_else(|| format!("no context `{ctx_name}`"))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.value.cluster)
        .ok_or_else(|| format!("no cluster `{}`", ctx.value.cluster))?;
    let empty = User::default();
    let user = kc
        .users
        .iter()
        .find(|u| u.name == ctx.value.user)
        .map_or(&empty, |u| &u.value);
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(format!(
            "user `{}` authenticates through an exec or auth-provider plugin, which lineaged does not run: give it a token or client certificate",
            ctx.value.user
        ));
    }
    // Relative paths in a kubeconfig are relative to the file.
    let dir = path.parent().unwrap_or(Path::new("."));
    let data = |inline: &Option<String>, file: &Option<PathBuf>, what: &str| match (inline, file) {
        (Some(d), _) => base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .map(Some)
            .map_err(|e| format!("{what}-data is not base64: {e}")),
        (None, Some(f)) => read_pem(&dir.join(f)).map(Some),
        (None, None) => Ok(None),
    };
    let c = &cluster.value;
    let ca = data(
        &c.certificate_authority_data,
        &c.certificate_authority,
        "certificate-authority",
    )?;
    let cert = data(
        &user.client_certificate_data,
        &user.client_certificate,
        "client-certificate",
    )?;
    let key = data(&user.client_key_data, &user.client_key, "client-key")?;
    let identity = match (cert, key) {
        (Some(mut c), Some(k)) => {
            c.push(b'\n');
            c.extend_from_slice(&k);
            Some(c)
        }
        (None, None) => None,
        _ => return Err("client certificate and key must both be given".into()),
    };
    let auth = match (&user.token, &user.token_file) {
        (Some(t), _) => Auth::Bearer(crate::config::Secret::new(t.clone())),
        (None, Some(f)) => Auth::BearerFile(dir.join(f)),
        (None, None) => Auth::None,
    };
    Ok(Client {
        http: http_client(ca, identity, c.insecure_skip_tls_verify)?,
        base: c.server.trim_end_matches('/').to_string(),
        auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_current_context() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        std::fs::write(
            &p,
            "apiVersion: v1\nkind: Config\ncurrent-context: b\ncontexts:\n- name: a\n  context: {cluster: one, user: u}\n- name: b\n  context: {cluster: two, user: u}\nclusters:\n- name: one\n  cluster: {server: 'https://one:6443'}\n- name: two\n  cluster: {server: 'http://127.0.0.1:8080/'}\nusers:\n- name: u\n  user: {token: abc}\n",
        )
        .unwrap();
        let c = from_kubeconfig(&p).unwrap();
        assert_eq!(c.base, "http://127.0.0.1:8080");
        assert!(matches!(c.auth, Auth::Bearer(ref t) if t.expose() == "abc"));
        std::fs::write(
            &p,
            "current-context: a\ncontexts:\n- name: a\n  context: {cluster: one, user: u}\nclusters:\n- name: one\n  cluster: {server: 'https://one'}\nusers:\n- name: u\n  user:\n    exec: {command: aws}\n",
        )
        .unwrap();
        let e = from_kubeconfig(&p).err().unwrap();
        assert!(e.contains("exec or auth-provider plugin"), "{e}");
    }

    #[test]
    fn outside_a_pod_says_what_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let e = in_cluster(dir.path()).err().unwrap();
        assert!(e.contains("set api_url or kubeconfig"), "{e}");
    }
}
