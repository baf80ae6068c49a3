//! A TCP forwarder between the router and its NATS server, so that a test decides when the
//! router may reconnect: after the test's own subscriber is in place on a restarted server
//! (otherwise a fast reconnect could publish `router.start` before anyone listens).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Gate {
    pub url: String,
    open: Arc<AtomicBool>,
    /// Cancelled to cut the connections forwarded so far.
    current: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Gate {
    /// Forwards to `127.0.0.1:upstream_port` while open (it starts open).
    pub async fn start(upstream_port: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("nats://{}", listener.local_addr().expect("addr"));
        let open = Arc::new(AtomicBool::new(true));
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (is_open, cut, token) = (open.clone(), current.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let mut inbound = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                if !is_open.load(Ordering::SeqCst) {
                    continue; // dropped: the router sees the connection close at once
                }
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream_port)).await
                else {
                    continue;
                };
                let cut = cut.lock().expect("gate lock").clone();
                let token = token.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.cancelled() => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Gate {
            url,
            open,
            current,
            stop,
        }
    }

    /// Cuts the forwarded connections and refuses new ones.
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        let mut current = self.current.lock().expect("gate lock");
        current.cancel();
        *current = CancellationToken::new();
    }

    /// Forwards new connections again.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.cancel();
        self.close();
    }
}
