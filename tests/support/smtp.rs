//! An SMTP server peer (RFC 5321: greeting, EHLO, MAIL, RCPT, DATA with
//! dot-unstuffing, RSET, NOOP, QUIT) that keeps every message it accepts.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as received (CRLF line ends, unstuffed).
    pub data: String,
}

#[derive(Default)]
pub struct Smtp {
    pub mails: Mutex<Vec<Mail>>,
    /// Commands out of order or unknown: the peer answers 5xx and notes them.
    pub errors: Mutex<Vec<String>>,
}

impl Smtp {
    pub async fn start() -> (Arc<Smtp>, u16) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let me = Arc::new(Smtp::default());
        let peer = me.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let peer = peer.clone();
                tokio::spawn(async move {
                    let _ = peer.session(sock).await;
                });
            }
        });
        (me, port)
    }

    async fn session(&self, sock: tokio::net::TcpStream) -> std::io::Result<()> {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 peer.example ESMTP ready\r\n").await?;
        let mut mail = Mail::default();
        let mut greeted = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_string();
            let upper = cmd.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO ") || upper.starts_with("HELO ") {
                greeted = true;
                b"250-peer.example\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"
            } else if !greeted {
                self.errors
                    .lock()
                    .unwrap()
                    .push(format!("before EHLO: {cmd}"));
                b"503 5.5.1 EHLO first\r\n"
            } else if let Some(a) = upper.strip_prefix("MAIL FROM:") {
                mail = Mail {
                    from: cmd[10..10 + a.len()]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string(),
                    ..Default::default()
                };
                b"250 2.1.0 OK\r\n"
            } else if upper.starts_with("RCPT TO:") {
                if mail.from.is_empty() {
                    self.errors
                        .lock()
                        .unwrap()
                        .push(format!("RCPT before MAIL: {cmd}"));
                    b"503 5.5.1 MAIL first\r\n"
                } else {
                    mail.to.push(cmd[8..].trim().to_string());
                    b"250 2.1.5 OK\r\n"
                }
            } else if upper == "DATA" {
                if mail.to.is_empty() {
                    self.errors.lock().unwrap().push("DATA without RCPT".into());
                    b"503 5.5.1 RCPT first\r\n"
                } else {
                    w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    let mut data = String::new();
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).await? == 0 {
                            return Ok(());
                        }
                        if l == ".\r\n" {
                            break;
                        }
                        // Dot-unstuffing.
                        data.push_str(l.strip_prefix('.').unwrap_or(&l));
                    }
                    mail.data = data;
                    self.mails.lock().unwrap().push(std::mem::take(&mut mail));
                    b"250 2.0.0 OK queued\r\n"
                }
            } else if upper == "RSET" {
                mail = Mail::default();
                b"250 2.0.0 OK\r\n"
            } else if upper == "NOOP" {
                b"250 2.0.0 OK\r\n"
            } else if upper == "QUIT" {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            } else {
                self.errors.lock().unwrap().push(format!("unknown: {cmd}"));
                b"502 5.5.2 Command not recognized\r\n"
            };
            w.write_all(reply).await?;
        }
    }
}
