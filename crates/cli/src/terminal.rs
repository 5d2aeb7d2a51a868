//! The local terminal for `guestbox shell`: raw mode while the guest owns it.

/// Restores the terminal's settings when dropped.
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode; None if stdin is not a terminal.
    pub fn enable() -> Option<Self> {
        // SAFETY: termios is plain data; the calls only read and write it.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(Self { saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

/// (rows, columns) of our terminal (stdin's, else stdout's), 24x80 when there is none.
pub fn size() -> (u16, u16) {
    for fd in [0, 1] {
        // SAFETY: winsize is plain data that the ioctl fills.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
                return (ws.ws_row, ws.ws_col);
            }
        }
    }
    (24, 80)
}
