//! A descriptor sent with `send_with_fd` arrives, whatever alignment the allocator gives
//! byte buffers. This test binary's allocator hands out every byte-aligned allocation one
//! byte off a word boundary: a control buffer kept in a `Vec<u8>` (as the agent's mux client
//! once had) is then misaligned for `cmsghdr`, which debug builds catch on dereference.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

struct OddBytes;

// SAFETY: byte-aligned blocks are System blocks of one more byte, shifted by one; every
// other layout goes to System unchanged. dealloc undoes the same shift.
unsafe impl GlobalAlloc for OddBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() == 1 {
            let inner = Layout::from_size_align_unchecked(layout.size() + 1, 8);
            let p = System.alloc(inner);
            if p.is_null() {
                p
            } else {
                p.add(1)
            }
        } else {
            System.alloc(layout)
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.align() == 1 {
            let inner = Layout::from_size_align_unchecked(layout.size() + 1, 8);
            System.dealloc(ptr.sub(1), inner)
        } else {
            System.dealloc(ptr, layout)
        }
    }
}

#[global_allocator]
static ALLOC: OddBytes = OddBytes;

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn byte_buffers_really_are_misaligned_here() {
    // A heap buffer on purpose: that is what the allocator above shifts.
    let v: Vec<u8> = std::iter::repeat_n(0u8, 24).collect();
    assert_ne!(v.as_ptr() as usize % 8, 0);
}

#[test]
fn a_descriptor_arrives_and_works() {
    let (a, b) = UnixStream::pair().unwrap();
    let (mut read_end, write_end) = pipe();
    for _ in 0..3 {
        let n = sys::fdpass::send_with_fd(a.as_raw_fd(), b"x", write_end.as_raw_fd()).unwrap();
        assert_eq!(n, 1);
        let mut buf = [0u8; 8];
        let (n, fd) = sys::fdpass::recv_with_fd(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"x");
        let fd: OwnedFd = fd.expect("the descriptor came with the byte");
        assert_ne!(fd.as_raw_fd(), write_end.as_raw_fd());
        let mut copy = std::fs::File::from(fd);
        copy.write_all(b"through the copy").unwrap();
    }
    drop(write_end);
    let mut got = String::new();
    read_end.read_to_string(&mut got).unwrap();
    assert_eq!(got, "through the copythrough the copythrough the copy");
}

#[test]
fn an_empty_message_is_refused_not_sent_without_its_descriptor() {
    let (a, _b) = UnixStream::pair().unwrap();
    let e = sys::fdpass::send_with_fd(a.as_raw_fd(), b"", 0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}
