//! The email sink: the message as plain text over SMTP through lettre
//! (STARTTLS on 587 by default, TLS on 465, or plain text to a relay
//! inside the cluster), with the job's idempotency key as the
//! `Message-ID`, so a mail client folds a rare repeat into one.

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::Message;
use crate::config::{Email, SmtpTls};
use crate::dispatch::DispatchError;
use crate::dispatch::request::scrub_text;

/// `Name <local@domain>` or `local@domain`, checked the way lettre reads it.
pub fn mailbox(s: &str) -> Result<Mailbox, String> {
    s.parse::<Mailbox>().map_err(|e| e.to_string())
}

/// The subject line and the plain-text body.
pub fn render(m: &Message) -> (String, String) {
    let mut body = format!("{}\n\n{}\n", m.title, m.text);
    if let Some(i) = &m.image {
        body.push_str(&format!("\nImage:   {i}"));
    }
    if let Some(d) = &m.old_digest {
        body.push_str(&format!("\nWas:     {d}"));
    }
    if let Some(d) = &m.digest {
        body.push_str(&format!("\nDigest:  {d}"));
    }
    if let Some(r) = m.rollout_id {
        body.push_str(&format!("\nRollout: {r}"));
    }
    body.push('\n');
    for (label, url) in &m.links {
        body.push_str(&format!("\n{label}: {url}"));
    }
    body.push('\n');
    (format!("[lineaged] {}", m.title), body)
}

/// Sends `m`; SMTP 4xx and connection trouble are retried, 5xx are not.
pub async fn deliver(
    e: &Email,
    id: &str,
    m: &Message,
    timeout: std::time::Duration,
) -> Result<(), DispatchError> {
    let invalid = |what: &str, err: String| DispatchError::Invalid(format!("{what}: {err}"));
    let (subject, body) = render(m);
    let mut b = lettre::Message::builder()
        .from(mailbox(&e.from).map_err(|x| invalid("from", x))?)
        .subject(subject)
        .message_id(Some(format!("<{id}@lineaged>")))
        .header(ContentType::TEXT_PLAIN);
    for t in &e.to {
        b = b.to(mailbox(t).map_err(|x| invalid("to", x))?);
    }
    let mail = b
        .body(body)
        .map_err(|x| invalid("message", x.to_string()))?;
    let builder = match e.tls {
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&e.host)
            .map_err(|x| invalid("smtp", x.to_string()))?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&e.host)
            .map_err(|x| invalid("smtp", x.to_string()))?,
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&e.host),
    };
    let mut builder = builder.port(e.port).timeout(Some(timeout));
    let mut secrets = Vec::new();
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        builder = builder.credentials(Credentials::new(u.clone(), p.expose().to_string()));
        secrets.push(p.expose().to_string());
    }
    match builder.build().send(mail).await {
        Ok(_) => Ok(()),
        Err(err) => {
            let text = scrub_text(&err.to_string(), &secrets);
            Err(match err.status() {
                Some(code) if err.is_permanent() => DispatchError::Rejected {
                    status: code.to_string().parse().unwrap_or(550),
                    message: text,
                },
                Some(code) => DispatchError::Unavailable {
                    status: code.to_string().parse().unwrap_or(451),
                    message: text,
                    retry_after: None,
                },
                None => DispatchError::Network(text),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes_and_the_rendered_mail() {
        assert!(mailbox("lineaged <lineaged@example.com>").is_ok());
        assert!(mailbox("ops@example.com").is_ok());
        assert!(mailbox("not an address").is_err());
        let m = Message {
            on: crate::config::NotifyOn::DeployFailed,
            event_id: 1,
            title: "r/a:1 deploy failed".into(),
            text: "HTTP 403: forbidden".into(),
            image: Some("r/a:1".into()),
            rollout_id: Some(2),
            old_digest: Some("sha256:old".into()),
            digest: Some("sha256:new".into()),
            links: vec![("Dashboard".into(), "http://l/".into())],
            data: serde_json::json!({}),
            at: 0,
        };
        let (subject, body) = render(&m);
        assert_eq!(subject, "[lineaged] r/a:1 deploy failed");
        assert!(
            body.contains("Was:     sha256:old\nDigest:  sha256:new"),
            "{body}"
        );
        assert!(body.ends_with("Dashboard: http://l/\n"));
    }
}
