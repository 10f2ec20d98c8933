//! A recording HTTP peer for CI contract tests: it keeps every request as
//! received (method, raw path and query, headers, body) and answers from a
//! script of (status, headers, body), as the real API documents them.
//! Jenkins' crumb issuer is answered on its own path with a session cookie.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, StatusCode, Uri};

pub const CRUMB: &str = "4f2b8a1c0d9e";
pub const SESSION: &str = "JSESSIONID.3a1f=node01x2y3z";

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query exactly as sent (percent-encoding kept).
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Form fields in order.
    pub fn form(&self) -> Vec<(String, String)> {
        let body = String::from_utf8(self.body.clone()).unwrap();
        reqwest::Url::parse(&format!("http://x/?{body}"))
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

pub fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

impl Answer {
    pub fn with(mut self, name: &'static str, value: &str) -> Answer {
        self.headers.push((name, value.to_string()));
        self
    }
}

#[derive(Default)]
pub struct Peer {
    pub seen: Mutex<Vec<Seen>>,
    pub script: Mutex<VecDeque<Answer>>,
    /// Jenkins without CSRF protection: the crumb issuer answers 404.
    pub no_crumb: std::sync::atomic::AtomicBool,
}

impl Peer {
    pub async fn start() -> (Arc<Peer>, String) {
        let peer = Arc::new(Peer::default());
        let p = peer.clone();
        let handler = move |method: Method,
                            uri: Uri,
                            headers: HeaderMap,
                            body: axum::body::Bytes| {
            let p = p.clone();
            async move {
                let raw = uri
                    .path_and_query()
                    .map(|pq| pq.as_str().to_string())
                    .unwrap_or_default();
                p.seen.lock().unwrap().push(Seen {
                    method: method.clone(),
                    uri: raw.clone(),
                    headers,
                    body: body.to_vec(),
                });
                let mut resp = axum::http::Response::builder();
                if method == Method::GET && raw.ends_with("/crumbIssuer/api/json") {
                    if p.no_crumb.load(std::sync::atomic::Ordering::Relaxed) {
                        return resp
                            .status(404)
                            .body(axum::body::Body::from("Not Found"))
                            .unwrap();
                    }
                    return resp
                        .status(200)
                        .header("content-type", "application/json")
                        .header("set-cookie", format!("{SESSION}; Path=/; HttpOnly"))
                        .body(axum::body::Body::from(format!(
                            r#"{{"_class":"hudson.security.csrf.DefaultCrumbIssuer","crumb":"{CRUMB}","crumbRequestField":"Jenkins-Crumb"}}"#
                        )))
                        .unwrap();
                }
                let a =
                    p.script.lock().unwrap().pop_front().unwrap_or_else(|| {
                        answer(500, r#"{"message":"peer: no scripted answer"}"#)
                    });
                resp = resp.status(StatusCode::from_u16(a.status).unwrap());
                if !a.body.is_empty() {
                    resp = resp.header("content-type", "application/json");
                }
                for (k, v) in &a.headers {
                    resp = resp.header(*k, v);
                }
                resp.body(axum::body::Body::from(a.body)).unwrap()
            }
        };
        let app = axum::Router::new().fallback(handler);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (peer, url)
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        let mut s = self.script.lock().unwrap();
        s.clear();
        s.extend(answers);
    }

    /// The requests so far, crumb fetches included; clears the record.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}
