//! The job deadline, SIGALRM-style: `setitimer(ITIMER_REAL)` for the time
//! left, and a SIGALRM handler (signal-hook) that only raises a flag.
//!
//! Owns the process's ITIMER_REAL and SIGALRM disposition. It never does
//! work in the handler and never starts a thread.
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Alarm {
    fired: Arc<AtomicBool>,
}

impl Alarm {
    /// Install the SIGALRM handler (once per process).
    pub fn install() -> io::Result<Self> {
        let fired = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGALRM, Arc::clone(&fired))?;
        Ok(Self { fired })
    }

    /// Clear the flag and fire in `ms` milliseconds (0: fired already).
    pub fn arm(&self, ms: u64) {
        self.fired.store(false, Ordering::SeqCst);
        if ms == 0 {
            self.fired.store(true, Ordering::SeqCst);
            return;
        }
        set_timer(ms);
    }

    /// Stop the timer; returns whether it had fired.
    pub fn disarm(&self) -> bool {
        set_timer(0);
        self.fired.swap(false, Ordering::SeqCst)
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Relaxed)
    }
}

fn set_timer(ms: u64) {
    let value = libc::timeval { tv_sec: (ms / 1000) as libc::time_t, tv_usec: ((ms % 1000) * 1000) as libc::suseconds_t };
    let zero = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let it = libc::itimerval { it_interval: zero, it_value: value };
    // SAFETY: plain syscall with a valid itimerval; the old value is not wanted.
    let r = unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
    debug_assert_eq!(r, 0, "setitimer failed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn fires_after_the_delay_and_not_after_disarm() {
        let alarm = Alarm::install().unwrap();
        alarm.arm(30);
        assert!(!alarm.fired());
        let t = Instant::now();
        while !alarm.fired() && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(alarm.fired());
        assert!(t.elapsed() >= Duration::from_millis(25));
        assert!(alarm.disarm());
        alarm.arm(20);
        assert!(!alarm.disarm());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!alarm.fired());
        alarm.arm(0);
        assert!(alarm.fired());
        alarm.disarm();
    }
}
