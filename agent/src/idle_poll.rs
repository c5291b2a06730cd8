//! Polling before a data-plane worker sleeps.
//!
//! A proxy hop costs a request two wake-ups: the proxy's thread sleeps in `epoll_wait` until
//! the request arrives, and again until the answer does. On a virtual machine a sleeping
//! thread's CPU halts, and waking it takes an inter-processor interrupt through the
//! hypervisor: tens of microseconds per hop, more than the proxy's own work for a small
//! request. So before a worker sleeps it first polls the runtime's epoll for a short window;
//! an event arriving within it finds the thread running. Measured on the bench (`http_mesh`,
//! concurrency 1): p50 141–162 µs without, 114–124 µs with a 50 µs window
//! (docs/performance.md#http).
//!
//! The window adapts as Linux's `haltpoll` idle governor does: a poll that found nothing,
//! followed by a sleep shorter than the largest window, means a longer poll would have
//! caught the event, so the window doubles; a sleep longer than that means polling only
//! burns CPU, so it halves, down to nothing at low load. One worker polls at a time.
//!
//! tokio does not expose its epoll descriptor: the runtime's are the eventpoll descriptors
//! that appear while it is built (`build`). A descriptor of another poller would only end a
//! window early.

use std::{
    cell::Cell,
    io,
    os::fd::RawFd,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// The smallest window a growing one starts from.
const START: Duration = Duration::from_micros(10);

pub struct IdlePoll {
    /// The runtime's epoll descriptors.
    fds: OnceLock<Vec<RawFd>>,
    max: Duration,
    window_ns: AtomicU64,
    /// A worker is polling: the others sleep at once.
    polling: AtomicBool,
}

thread_local! {
    /// When this worker went to sleep after a poll that found nothing.
    static SLEPT_AFTER_MISS: Cell<Option<Instant>> = const { Cell::new(None) };
}

impl IdlePoll {
    /// Polls for up to `max` before a worker sleeps; zero turns polling off.
    pub fn new(max: Duration) -> Self {
        Self {
            fds: OnceLock::new(),
            max,
            window_ns: AtomicU64::new(duration_ns(max)),
            polling: AtomicBool::new(false),
        }
    }

    /// Builds `builder`'s runtime with this poll before each worker's sleep.
    pub fn build(self, builder: &mut tokio::runtime::Builder) -> io::Result<tokio::runtime::Runtime> {
        let this = Arc::new(self);
        let (park, unpark) = (Arc::clone(&this), Arc::clone(&this));
        let before = epoll_fds();
        let runtime = builder
            .on_thread_park(move || park.before_sleep())
            .on_thread_unpark(move || unpark.woken())
            .build()?;
        let fds: Vec<RawFd> = epoll_fds().into_iter().filter(|fd| !before.contains(fd)).collect();
        if fds.is_empty() && !this.max.is_zero() {
            tracing::warn!(
                "no epoll descriptor appeared with the data-plane runtime: polling before sleep is off"
            );
        }
        let _ = this.fds.set(fds);
        Ok(runtime)
    }

    fn before_sleep(&self) {
        if self.max.is_zero() {
            return;
        }
        let Some(fds) = self.fds.get().filter(|f| !f.is_empty()) else { return };
        let window = Duration::from_nanos(self.window_ns.load(Ordering::Relaxed));
        if !window.is_zero() {
            if self.polling.swap(true, Ordering::Acquire) {
                return;
            }
            let found = poll_until(fds, Instant::now() + window);
            self.polling.store(false, Ordering::Release);
            if found {
                return;
            }
        }
        SLEPT_AFTER_MISS.set(Some(Instant::now()));
    }

    fn woken(&self) {
        if let Some(slept) = SLEPT_AFTER_MISS.take() {
            let window = self.window_ns.load(Ordering::Relaxed);
            self.window_ns.store(adapt(window, slept.elapsed(), self.max), Ordering::Relaxed);
        }
    }
}

/// The next window after a poll of `window` ns found nothing and the sleep lasted `slept`.
fn adapt(window: u64, slept: Duration, max: Duration) -> u64 {
    let max = duration_ns(max);
    if duration_ns(slept) <= max {
        window.saturating_mul(2).clamp(duration_ns(START).min(max), max)
    } else {
        window / 2
    }
}

/// Whether any of `fds` became readable before `deadline`.
fn poll_until(fds: &[RawFd], deadline: Instant) -> bool {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` entries; a zero timeout never blocks.
        if unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 0) } > 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::hint::spin_loop();
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The eventpoll descriptors this process has open.
fn epoll_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Vec::new() };
    dir.flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[eventpoll]"))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    #[test]
    fn the_window_grows_when_a_short_sleep_followed_and_shrinks_after_a_long_one() {
        // A miss then a 30 µs sleep: a longer window would have caught it.
        assert_eq!(adapt(0, Duration::from_micros(30), MAX), 10_000);
        assert_eq!(adapt(10_000, Duration::from_micros(30), MAX), 20_000);
        assert_eq!(adapt(40_000, Duration::from_micros(30), MAX), 50_000, "capped");
        // A miss then a long sleep: polling only burns CPU.
        assert_eq!(adapt(50_000, Duration::from_millis(5), MAX), 25_000);
        let mut w = 50_000;
        for _ in 0..20 {
            w = adapt(w, Duration::from_millis(5), MAX);
        }
        assert_eq!(w, 0, "off at low load");
    }

    #[test]
    fn a_poll_ends_when_a_descriptor_is_ready_or_at_its_deadline() {
        use std::{
            io::Write as _,
            os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        };
        let (reader, mut writer) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        // SAFETY: plain syscalls on descriptors this test owns; the epoll fd is owned below.
        let epoll = unsafe { OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) };
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
        // SAFETY: as above.
        let added = unsafe {
            libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, reader.as_raw_fd(), &mut event)
        };
        assert_eq!(added, 0);

        let start = Instant::now();
        assert!(!poll_until(&[epoll.as_raw_fd()], start + Duration::from_millis(2)), "nothing ready");
        assert!(start.elapsed() >= Duration::from_millis(2));
        writer.write_all(b"x").expect("write");
        let start = Instant::now();
        assert!(poll_until(&[epoll.as_raw_fd()], start + Duration::from_secs(5)), "the reader is ready");
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
