//! Host ports for NetIn: handed out from the backend's range, never one something on the host
//! already listens on.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};

use crate::error::Error;

#[derive(Debug)]
pub struct PortAllocator {
    first: u16,
    last: u16,
    taken: BTreeSet<u16>,
}

impl PortAllocator {
    pub fn new(first: u16, count: u16) -> Self {
        PortAllocator {
            first,
            last: first.saturating_add(count.saturating_sub(1)),
            taken: BTreeSet::new(),
        }
    }

    /// Takes `wanted`, or the lowest free port of the range.
    pub fn acquire(&mut self, wanted: Option<u16>) -> Result<u16, Error> {
        match wanted {
            Some(port) => {
                if self.taken.contains(&port) || !free_on_host(port) {
                    return Err(Error::PortInUse(port));
                }
                if port < self.first || port > self.last {
                    return Err(Error::PortOutOfRange {
                        port,
                        first: self.first,
                        last: self.last,
                    });
                }
                self.taken.insert(port);
                Ok(port)
            }
            None => {
                let port = (self.first..=self.last)
                    .find(|p| !self.taken.contains(p) && free_on_host(*p))
                    .ok_or(Error::PortsExhausted {
                        first: self.first,
                        last: self.last,
                    })?;
                self.taken.insert(port);
                Ok(port)
            }
        }
    }

    /// Marks a port as taken (by a container found at recovery).
    pub fn mark_taken(&mut self, port: u16) {
        self.taken.insert(port);
    }

    pub fn release(&mut self, port: u16) {
        self.taken.remove(&port);
    }
}

/// Whether nothing on the host listens on `port` (any address).
fn free_on_host(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_someone_listens_on_is_in_use() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut ports = PortAllocator::new(port, 1);
        assert!(matches!(ports.acquire(Some(port)), Err(Error::PortInUse(p)) if p == port));
        assert!(matches!(
            ports.acquire(None),
            Err(Error::PortsExhausted { .. })
        ));
    }

    #[test]
    fn ports_are_not_handed_out_twice_until_released() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let mut ports = PortAllocator::new(port, 1);
        assert_eq!(ports.acquire(None).expect("free"), port);
        assert!(ports.acquire(Some(port)).is_err());
        ports.release(port);
        assert_eq!(ports.acquire(Some(port)).expect("free again"), port);
    }
}
