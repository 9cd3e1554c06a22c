//! LLDP, as IPA 13 collects it (`ipa-collect-lldp`, or the `lldp` collector): one packet
//! socket per interface for the LLDP ethertype, the first frame each interface receives
//! within `lldp_timeout`, its TLVs as `[type, hex value]` pairs.
//!
//! IPA sets `IFF_PROMISC` on each interface and clears it afterwards; rivet asks for
//! promiscuous reception through `PACKET_ADD_MEMBERSHIP` instead, which the kernel undoes by
//! itself when the socket closes, so an interrupted collection leaves no flag behind.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::model::LldpMap;

/// Sockets listening for LLDP, one per interface.
pub(crate) struct Listener {
    socks: Vec<(String, OwnedFd)>,
    /// Interfaces that could not be listened on: they get an empty list.
    failed: Vec<String>,
}

impl Listener {
    /// Opens a socket on each of `names` (`lo` is skipped, as IPA skips it).
    pub(crate) fn open(names: &[String]) -> Listener {
        let mut l = Listener {
            socks: vec![],
            failed: vec![],
        };
        for name in names.iter().filter(|n| *n != "lo") {
            match open_one(name) {
                Ok(fd) => l.socks.push((name.clone(), fd)),
                Err(e) => {
                    tracing::warn!("cannot listen for LLDP on {name}: {e}");
                    l.failed.push(name.clone());
                }
            }
        }
        l
    }

    /// Waits up to `timeout` for one LLDP frame per interface.
    pub(crate) fn receive(mut self, timeout: Duration) -> LldpMap {
        let mut out = LldpMap::new();
        let deadline = Instant::now() + timeout;
        while !self.socks.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let waiting: Vec<&String> = self.socks.iter().map(|(n, _)| n).collect();
                tracing::warn!("LLDP timed out, remaining interfaces: {waiting:?}");
                break;
            }
            let mut fds: Vec<libc::pollfd> = self
                .socks
                .iter()
                .map(|(_, fd)| libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: `fds` is a valid array of pollfd for the length given.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if n < 0 {
                tracing::warn!("LLDP poll failed: {}", std::io::Error::last_os_error());
                break;
            }
            let ready: Vec<usize> = (0..fds.len()).filter(|i| fds[*i].revents != 0).collect();
            for i in ready.into_iter().rev() {
                if let Some(tlvs) = recv_frame(&self.socks[i].1) {
                    let (name, _) = self.socks.remove(i);
                    tracing::info!("found LLDP info for interface {name}");
                    out.insert(name, tlvs);
                }
            }
        }
        for name in self.socks.into_iter().map(|(n, _)| n).chain(self.failed) {
            out.entry(name).or_default();
        }
        out
    }
}

/// A packet socket bound to `name`, receiving the LLDP ethertype promiscuously.
fn open_one(name: &str) -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_LLDP as u16).to_be();
    let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: `cname` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket() takes no pointers; a non-negative result is a descriptor we own.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and belongs to nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid before the fields are set.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: packet_mreq is plain data; all-zero is valid before the fields are set.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = ifindex as i32;
    mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
    // SAFETY: `mreq` is a valid packet_mreq of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

/// One received frame's TLVs; `None` for a frame this host sent itself, or a read error.
fn recv_frame(sock: &OwnedFd) -> Option<Vec<(u8, String)>> {
    let mut buf = [0u8; 1600];
    // SAFETY: sockaddr_ll is plain data; recvfrom fills it.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `buf` and `from` are valid for the sizes given for the whole call.
    let n = unsafe {
        libc::recvfrom(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_ll).cast(),
            &mut len,
        )
    };
    if n < 0 {
        tracing::warn!("LLDP receive failed: {}", std::io::Error::last_os_error());
        return Some(vec![]);
    }
    if from.sll_pkttype == libc::PACKET_OUTGOING {
        return None;
    }
    let frame = &buf[..n as usize];
    // Shorter than an Ethernet header: IPA records no TLVs for it.
    Some(if frame.len() < 14 {
        vec![]
    } else {
        parse_tlvs(&frame[14..])
    })
}

/// TLVs of an LLDPDU: a 7-bit type and a 9-bit length, then the value; up to and including
/// the End TLV (the bytes after it are frame padding).
pub(crate) fn parse_tlvs(mut buf: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    while buf.len() >= 2 {
        let hdr = u16::from_be_bytes([buf[0], buf[1]]);
        let (kind, len) = ((hdr >> 9) as u8, (hdr & 0x1ff) as usize);
        let value = &buf[2..(2 + len).min(buf.len())];
        out.push((kind, value.iter().map(|b| format!("{b:02x}")).collect()));
        buf = &buf[(2 + len).min(buf.len())..];
        if kind == 0 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An LLDPDU: chassis id (MAC), port id ("ge-0/0/1"), TTL 120, End.
    fn lldpdu() -> Vec<u8> {
        let mut d = vec![0x02, 0x07, 0x04, 0x00, 0x1b, 0x21, 0x3c, 0x4d, 0x5e];
        d.extend_from_slice(&[0x04, 0x09, 0x05]);
        d.extend_from_slice(b"ge-0/0/1");
        d.extend_from_slice(&[0x06, 0x02, 0x00, 0x78, 0x00, 0x00]);
        d
    }

    #[test]
    fn tlvs_as_ipa_lists_them() {
        let mut padded = lldpdu();
        padded.extend_from_slice(&[0; 10]);
        let tlvs = parse_tlvs(&padded);
        assert_eq!(
            tlvs,
            vec![
                (1, "04001b213c4d5e".to_string()),
                (2, "0567652d302f302f31".to_string()),
                (3, "0078".to_string()),
                (0, String::new()),
            ]
        );
    }

    /// A real frame over a veth pair inside a network namespace private to this thread.
    #[test]
    fn receives_a_frame_over_veth() {
        // SAFETY: geteuid takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED receives_a_frame_over_veth: needs root");
            return;
        }
        // SAFETY: unshare takes no pointers; it moves only this test's thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error();
            eprintln!("SKIPPED receives_a_frame_over_veth: no private network namespace: {e}");
            return;
        }
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["link", "add", "lv0", "type", "veth", "peer", "name", "lv1"]);
        ip(&["link", "set", "lv0", "up"]);
        ip(&["link", "set", "lv1", "up"]);
        let listener = Listener::open(&["lv0".into(), "lo".into(), "nope0".into()]);
        let tx = open_one("lv1").unwrap();
        let mut frame = vec![0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xcc]);
        frame.extend(lldpdu());
        // SAFETY: `frame` is valid for its length; the socket is bound to lv1.
        let sent = unsafe { libc::send(tx.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(sent, frame.len() as isize);
        let map = listener.receive(Duration::from_secs(5));
        assert_eq!(map["lv0"][1], (2, "0567652d302f302f31".to_string()));
        assert_eq!(map["nope0"], vec![]);
        assert!(!map.contains_key("lo"));
    }
}
