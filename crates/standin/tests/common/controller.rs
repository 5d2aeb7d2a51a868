//! A test double of guestbox's controller VM: 192.168.0.2 on the guest's private link
//! (the unix datagram socket pair QEMU's `-netdev dgram` uses), as a user-space TCP/IP
//! stack (smoltcp) in the test process. It forwards a host port on 127.0.0.1 to the
//! guest's 192.168.0.1:22, and the guest's connections to 192.168.0.2:445 to a host SMB
//! server on 127.0.0.1. No tap device, no host address on the link.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

struct Link {
    sock: UnixDatagram,
    peer: PathBuf,
    buf: Vec<u8>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a Link);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        // The guest may not be up yet: a lost frame is what a cable does too.
        let _ = self.0.sock.send_to(&b, &self.0.peer);
        r
    }
}

impl Device for Link {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        match self.sock.recv(&mut self.buf) {
            Ok(n) => Some((Rx(self.buf[..n].to_vec()), Tx(self))),
            Err(_) => None,
        }
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

pub struct Controller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// 127.0.0.1:ssh_port reaches the guest's 192.168.0.1:22.
    pub ssh_port: u16,
}

struct Pair {
    host: TcpStream,
    sock: SocketHandle,
    to_guest: Vec<u8>,
    to_host: Vec<u8>,
    host_eof: bool,
    /// The guest side reached Established once: before, "cannot receive" means "not yet".
    opened: bool,
}

fn tcp_socket<'a>() -> tcp::Socket<'a> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        tcp::SocketBuffer::new(vec![0; 256 * 1024]),
    )
}

impl Controller {
    /// Binds `link_dir/link-ctl.sock` (the controller's end) and talks to
    /// `link_dir/link-guest.sock`. `smb`: where the guest's SMB connections go.
    pub fn start(link_dir: &Path, smb: Option<SocketAddr>) -> Controller {
        let short = super::short_link(link_dir);
        let local = short.join("link-ctl.sock");
        let _ = std::fs::remove_file(&local);
        let sock = UnixDatagram::bind(&local).unwrap();
        sock.set_nonblocking(true).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let ssh_port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let mut dev = Link {
            sock,
            peer: short.join("link-guest.sock"),
            buf: vec![0; 65536],
        };
        let thread = std::thread::spawn(move || {
            let mut iface = Interface::new(
                Config::new(HardwareAddress::Ethernet(EthernetAddress([
                    0x52, 0x54, 0x00, 0x12, 0x34, 0x02,
                ]))),
                &mut dev,
                Instant::now(),
            );
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(IpAddress::v4(192, 168, 0, 2), 24))
                    .unwrap();
            });
            let mut sockets = SocketSet::new(vec![]);
            let mut pairs: Vec<Pair> = Vec::new();
            let mut smb_listen = smb.map(|_| {
                let mut s = tcp_socket();
                s.listen(445).unwrap();
                sockets.add(s)
            });
            let mut port = 40000u16;
            while !stop2.load(Ordering::Relaxed) {
                let mut busy = false;
                if let Ok((host, _)) = listener.accept() {
                    host.set_nonblocking(true).unwrap();
                    let mut s = tcp_socket();
                    port = port.wrapping_add(1).max(40000);
                    s.connect(iface.context(), (IpAddress::v4(192, 168, 0, 1), 22), port)
                        .unwrap();
                    let h = sockets.add(s);
                    pairs.push(Pair {
                        host,
                        sock: h,
                        to_guest: vec![],
                        to_host: vec![],
                        host_eof: false,
                        opened: false,
                    });
                }
                if let (Some(h), Some(addr)) = (smb_listen, smb) {
                    let s = sockets.get_mut::<tcp::Socket>(h);
                    if s.is_active() && s.state() == tcp::State::Established {
                        if let Ok(host) = TcpStream::connect(addr) {
                            host.set_nonblocking(true).unwrap();
                            pairs.push(Pair {
                                host,
                                sock: h,
                                to_guest: vec![],
                                to_host: vec![],
                                host_eof: false,
                                opened: false,
                            });
                        } else {
                            s.abort();
                        }
                        let mut n = tcp_socket();
                        n.listen(445).unwrap();
                        smb_listen = Some(sockets.add(n));
                    }
                }
                iface.poll(Instant::now(), &mut dev, &mut sockets);
                let mut buf = [0u8; 65536];
                pairs.retain_mut(|p| {
                    let s = sockets.get_mut::<tcp::Socket>(p.sock);
                    if s.state() == tcp::State::Established {
                        p.opened = true;
                    }
                    if !p.host_eof && p.to_guest.len() < 65536 {
                        match p.host.read(&mut buf) {
                            Ok(0) => p.host_eof = true,
                            Ok(n) => {
                                p.to_guest.extend_from_slice(&buf[..n]);
                                busy = true;
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(_) => p.host_eof = true,
                        }
                    }
                    if !p.to_guest.is_empty() && s.can_send() {
                        if let Ok(n) = s.send_slice(&p.to_guest) {
                            p.to_guest.drain(..n);
                            busy = true;
                        }
                    }
                    if p.host_eof && p.to_guest.is_empty() && s.may_send() {
                        s.close();
                    }
                    while s.can_recv() {
                        match s.recv_slice(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                p.to_host.extend_from_slice(&buf[..n]);
                                busy = true;
                            }
                        }
                    }
                    while !p.to_host.is_empty() {
                        match p.host.write(&p.to_host) {
                            Ok(n) => {
                                p.to_host.drain(..n);
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => {
                                p.to_host.clear();
                                s.abort();
                            }
                        }
                    }
                    let guest_done = (p.opened || !s.is_open()) && !s.may_recv() && !s.can_recv();
                    if guest_done && p.to_host.is_empty() {
                        let _ = p.host.shutdown(std::net::Shutdown::Write);
                        if !s.is_open() {
                            return false;
                        }
                    }
                    true
                });
                if !busy {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Controller {
            stop,
            thread: Some(thread),
            ssh_port,
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
