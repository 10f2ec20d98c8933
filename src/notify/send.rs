//! One message to one sink, in the sink's format:
//!
//! - Slack incoming webhook: `{"text", "blocks"}` (the text is the
//!   fallback for notifications); 200 `ok`.
//! - Teams workflow webhook ("When a Teams webhook request is received"):
//!   `{"type": "message", "attachments": [{"contentType":
//!   "application/vnd.microsoft.card.adaptive", "content": <card>}]}`; 202.
//! - webhook: `{"type": "lineaged.<event>", "timestamp", "data"}` signed
//!   per Standard Webhooks, `webhook-id` the job's idempotency key on
//!   every attempt.

use serde_json::{Value, json};

use super::Message;
use crate::config::{Sink, SinkKind};
use crate::dispatch::DispatchError;
use crate::dispatch::request::{classify, read_capped, scrub, scrub_text};
use crate::store::JobRecord;

/// The body a sink gets for `m`.
pub fn body(kind: SinkKind, m: &Message) -> Value {
    match kind {
        SinkKind::Email => {
            let (subject, text) = super::email::render(m);
            json!({ "subject": subject, "text": text })
        }
        SinkKind::Slack => slack(m),
        SinkKind::Teams => teams(m),
        SinkKind::Webhook => json!({
            "type": format!("lineaged.{}", m.on.as_str()),
            "timestamp": chrono::DateTime::from_timestamp_millis(m.at)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "data": m,
        }),
    }
}

fn slack(m: &Message) -> Value {
    // mrkdwn: &, < and > are escaped; links are <url|label>.
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let links: Vec<String> = m
        .links
        .iter()
        .map(|(label, url)| format!("<{}|{}>", url, esc(label)))
        .collect();
    json!({
        "text": format!("{}: {}", m.title, m.text),
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn",
                "text": format!("*{}*\n{}", esc(&m.title), esc(&m.text)) } },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": links.join(" · ") } ] },
        ],
    })
}

fn teams(m: &Message) -> Value {
    let mut facts = Vec::new();
    if let Some(i) = &m.image {
        facts.push(json!({ "title": "Image", "value": i }));
    }
    if let Some(r) = m.rollout_id {
        facts.push(json!({ "title": "Rollout", "value": r.to_string() }));
    }
    if let Some(d) = &m.old_digest {
        facts.push(json!({ "title": "Was", "value": d }));
    }
    if let Some(d) = &m.digest {
        facts.push(json!({ "title": "Digest", "value": d }));
    }
    let actions: Vec<Value> = m
        .links
        .iter()
        .map(|(label, url)| json!({ "type": "Action.OpenUrl", "title": label, "url": url }))
        .collect();
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    { "type": "TextBlock", "text": m.title, "weight": "Bolder", "size": "Medium", "wrap": true },
                    { "type": "TextBlock", "text": m.text, "wrap": true },
                    { "type": "FactSet", "facts": facts },
                ],
                "actions": actions,
            },
        }],
    })
}

/// Sends `m` to `sink`; the status of a 2xx, or the classified failure
/// (the sink's URL and secret never in the text).
pub async fn deliver(
    http: &reqwest::Client,
    sink: &Sink,
    job: &JobRecord,
    m: &Message,
    timeout: std::time::Duration,
) -> Result<u16, DispatchError> {
    if let Some(e) = &sink.email {
        return super::email::deliver(e, &job.idempotency_key, m, timeout)
            .await
            .map(|()| 250);
    }
    let body = serde_json::to_vec(&body(sink.kind, m)).unwrap_or_default();
    let mut secrets = vec![sink.url.expose().to_string()];
    let mut req = http
        .post(sink.url.expose())
        .timeout(timeout)
        .header("content-type", "application/json");
    if sink.kind == SinkKind::Webhook {
        let ts = crate::store::now_millis() / 1000;
        req = req
            .header("webhook-id", &job.idempotency_key)
            .header("webhook-timestamp", ts.to_string());
        if let Some(secret) = &sink.secret {
            let key = crate::dispatch::webhook::signing_key(secret.expose());
            req = req.header(
                "webhook-signature",
                crate::dispatch::webhook::sign(&key, &job.idempotency_key, ts, &body),
            );
            secrets.push(secret.expose().to_string());
        }
    }
    let r = req
        .body(body)
        .send()
        .await
        .map_err(|e| DispatchError::Network(crate::error_chain(&e.without_url())))
        .map_err(|e| scrub(e, &secrets))?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = read_capped(r, 16 * 1024).await;
    if (200..300).contains(&status) {
        return Ok(status);
    }
    let text = scrub_text(&String::from_utf8_lossy(&bytes), &secrets);
    Err(scrub(classify(status, &headers, text.as_bytes()), &secrets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NotifyOn;

    fn message() -> Message {
        Message {
            on: NotifyOn::ApprovalPending,
            event_id: 9,
            title: "r/a:1 waits for approval".into(),
            text: "Approve <it> & go".into(),
            image: Some("r/a:1".into()),
            rollout_id: Some(3),
            old_digest: None,
            digest: Some("sha256:abc".into()),
            links: vec![("Dashboard".into(), "http://l/".into())],
            data: json!({}),
            at: 1_700_000_000_000,
        }
    }

    #[test]
    fn slack_escapes_and_links() {
        let b = body(SinkKind::Slack, &message());
        assert_eq!(b["text"], "r/a:1 waits for approval: Approve <it> & go");
        assert_eq!(
            b["blocks"][0]["text"]["text"],
            "*r/a:1 waits for approval*\nApprove &lt;it&gt; &amp; go"
        );
        assert_eq!(
            b["blocks"][1]["elements"][0]["text"],
            "<http://l/|Dashboard>"
        );
    }

    #[test]
    fn teams_is_an_adaptive_card_message() {
        let b = body(SinkKind::Teams, &message());
        assert_eq!(b["type"], "message");
        let card = &b["attachments"][0];
        assert_eq!(
            card["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(card["content"]["type"], "AdaptiveCard");
        assert_eq!(card["content"]["actions"][0]["url"], "http://l/");
        assert_eq!(card["content"]["body"][2]["facts"][0]["value"], "r/a:1");
    }

    #[test]
    fn webhook_is_a_standard_webhooks_payload() {
        let b = body(SinkKind::Webhook, &message());
        assert_eq!(b["type"], "lineaged.approval_pending");
        assert_eq!(b["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(b["data"]["digest"], "sha256:abc");
    }
}
