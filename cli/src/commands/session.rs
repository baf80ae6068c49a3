//! A shell session in an instance (`kiln ssh NAME`): the controller's WebSocket at
//! `/v3/processes/:guid/instances/:index/ssh`. Our stdin goes out as binary messages (an
//! empty one at its end); binary messages back carry stdout (first byte 1) or stderr (2);
//! a text message says how the shell ended (`{"exit_code": N}` or `{"error": "..."}`), which
//! becomes our exit code. There is no pseudo-terminal: the local terminal stays in its
//! usual line mode (Ctrl-D ends the session, Ctrl-C ends kiln and with it the session).

use std::io::IsTerminal;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::api::Client;
use crate::output::paint_err;

/// Opens the session at `path` and relays until it ends; the shell's exit code.
pub async fn open(client: &mut Client, path: &str) -> anyhow::Result<u8> {
    client.fresh().await?;
    let tty = std::io::stdin().is_terminal();
    let url = match client.api.split_once("://") {
        Some(("http", rest)) => format!("ws://{rest}{path}?tty={tty}"),
        Some(("https", rest)) => format!("wss://{rest}{path}?tty={tty}"),
        _ => anyhow::bail!("the API URL {} is not http(s)", client.api),
    };
    let mut request = url.as_str().into_client_request()?;
    let token = client.config.access_token.clone().unwrap_or_default();
    request.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("bearer {token}"))?,
    );
    let (socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: Value = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            let detail = body["errors"][0]["detail"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {}", response.status()));
            anyhow::bail!("{detail}");
        }
        Err(e) => anyhow::bail!("opening the session at {url}: {e}"),
    };
    if tty {
        eprintln!("(a shell in the instance, without a terminal: Ctrl-D ends it)");
    }
    let (mut to_server, mut from_server) = socket.split();
    // Our stdin, until its end (then an empty message closes the shell's).
    let input = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = to_server.send(Message::Binary(Vec::new().into())).await;
                    // Kept open: closing it would end the session before its output.
                    std::future::pending::<()>().await;
                }
                Ok(n) => {
                    if to_server
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
    let mut code = None;
    while let Some(message) = from_server.next().await {
        match message {
            Ok(Message::Binary(frame)) => match frame.split_first() {
                Some((1, data)) => {
                    stdout.write_all(data).await?;
                    stdout.flush().await?;
                }
                Some((2, data)) => {
                    stderr.write_all(data).await?;
                    stderr.flush().await?;
                }
                _ => {}
            },
            Ok(Message::Text(text)) => {
                let end: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                code = Some(match end["exit_code"].as_i64() {
                    Some(c) => u8::try_from(c).unwrap_or(1),
                    None => {
                        let why = end["error"].as_str().unwrap_or("the session ended");
                        eprintln!("{} {why}", paint_err("FAILED"));
                        1
                    }
                });
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    input.abort();
    match code {
        Some(code) => Ok(code),
        None => anyhow::bail!("the session ended without saying how (the controller went away?)"),
    }
}
