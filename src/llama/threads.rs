//! Thread counts for llama.cpp: how many cores this process may use, and how many of them
//! other processes leave free.
//!
//! ggml's CPU workers meet at spinning barriers many times per token. When another process
//! keeps the same cores busy, a worker that the scheduler has switched out holds every other
//! worker spinning at the next barrier until it runs again, and decoding with as many
//! threads as cores collapses: on a 2-core machine with two busy loops beside it, 2 threads
//! decoded gemma-3-270m at a fraction of the speed of 1 thread (the README's "Shared cores"
//! table has the figures). One thread never waits at a barrier. So when the caller sets no
//! thread count, a [`Context`](crate::Context) starts with the cores that others leave idle
//! ([`default_threads`]) and, while it decodes, follows the load every few seconds
//! (`CoreWatch`): more threads when the other work stops, fewer when it starts.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long [`default_threads`] watches the cores (when its last look is older than
/// [`FRESH`]).
const WINDOW: Duration = Duration::from_millis(60);
/// How long one look at the cores stays good for [`default_threads`].
const FRESH: Duration = Duration::from_secs(2);
/// How often a decoding context looks again.
pub(crate) const RECHECK: Duration = Duration::from_secs(2);
/// A core counts as free when other processes used less than this share of it (summed over
/// the cores: 0.4 busy cores elsewhere still leave 2 threads on 2 cores).
const BUSY_MARGIN: f64 = 0.4;

/// The number of CPUs this process may run on: its affinity mask and cgroup quota
/// (`std::thread::available_parallelism`), or 1.
pub fn available_threads() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

/// The default thread count: the CPUs this process may use ([`available_threads`]) less the
/// cores other processes keep busy right now, at least 1.
///
/// On Linux it reads `/proc/stat` and `/proc/self/stat` twice, 60 ms apart (the answer is
/// reused for 2 s), and leaves this process's own use out, so a busy engine in the same
/// process does not count against itself. Elsewhere, or when `/proc` cannot be read, it is
/// [`available_threads`]. llama.cpp's own default (4) never applies: on a 2-core machine it
/// made decoding about 90x slower.
pub fn default_threads() -> u32 {
    static LAST: Mutex<Option<(Instant, u32)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, n)) = *last {
        if at.elapsed() < FRESH {
            return n;
        }
    }
    let n = CoreWatch::new()
        .and_then(|mut watch| {
            std::thread::sleep(WINDOW);
            watch.free_since_last()
        })
        .unwrap_or_else(available_threads);
    *last = Some((Instant::now(), n));
    n
}

/// Follows how many cores other processes leave free, from one look to the next.
pub(crate) struct CoreWatch {
    cpus: Vec<usize>,
    last: Sample,
    at: Instant,
    /// The shortest time between two looks.
    every: Duration,
    /// Where the counters come from: `/proc` ([`Sample::read`]), or a script in tests, so
    /// that what a test asserts never depends on how busy its machine is.
    read: ReadCounters,
}

/// Reads the counters of the given CPUs.
type ReadCounters = Box<dyn FnMut(&[usize]) -> Option<Sample> + Send>;

impl std::fmt::Debug for CoreWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreWatch").field("cpus", &self.cpus).field("last", &self.last).finish_non_exhaustive()
    }
}

/// Counters at one moment, in the kernel's clock ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// Busy time of the allowed CPUs, all processes.
    pub(crate) busy: u64,
    /// All time of the allowed CPUs (busy and idle).
    pub(crate) total: u64,
    /// This process's own CPU time.
    pub(crate) own: u64,
}

impl CoreWatch {
    /// Starts watching the CPUs in this process's affinity mask, looking again at most every
    /// [`RECHECK`]; `None` where `/proc` is missing or unreadable.
    pub(crate) fn new() -> Option<CoreWatch> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
        let cpus = parse_cpu_list(list.trim())?;
        CoreWatch::with_source(cpus, RECHECK, Box::new(Sample::read))
    }

    /// A watch over `cpus` whose counters come from `read`, looking again at most `every`.
    pub(crate) fn with_source(cpus: Vec<usize>, every: Duration, mut read: ReadCounters) -> Option<CoreWatch> {
        let last = read(&cpus)?;
        Some(CoreWatch { cpus, last, at: Instant::now(), every, read })
    }

    /// The thread count for the time since the last look, once the interval has passed.
    pub(crate) fn poll(&mut self) -> Option<u32> {
        if self.at.elapsed() < self.every {
            return None;
        }
        self.free_since_last()
    }

    /// Free cores since the last look (rounded as [`BUSY_MARGIN`] says, at least 1, at most
    /// [`available_threads`]), and starts the next period.
    fn free_since_last(&mut self) -> Option<u32> {
        let now = (self.read)(&self.cpus)?;
        let last = std::mem::replace(&mut self.last, now);
        self.at = Instant::now();
        let total = now.total.checked_sub(last.total)?;
        if total == 0 {
            return None;
        }
        let others = now.busy.saturating_sub(last.busy).saturating_sub(now.own.saturating_sub(last.own));
        Some(free_cores(self.cpus.len(), others as f64 * self.cpus.len() as f64 / total as f64))
    }
}

/// A scripted watch for tests: each look reports the next of `busy_elsewhere` (cores kept
/// busy by other processes, over 100 ticks per CPU), then nothing.
#[cfg(test)]
pub(crate) fn scripted_watch(cpus: usize, busy_elsewhere: &[f64]) -> CoreWatch {
    let script: Vec<f64> = busy_elsewhere.to_vec();
    let mut script = script.into_iter();
    let mut at = Sample { busy: 0, total: 0, own: 0 };
    let read = move |cpus: &[usize]| {
        let first = at.total == 0;
        if !first {
            let busy = script.next()?;
            at.busy += (busy * 100.0) as u64;
        }
        at.total += 100 * cpus.len() as u64;
        Some(at)
    };
    CoreWatch::with_source((0..cpus).collect(), Duration::ZERO, Box::new(read)).unwrap()
}

/// The thread count for `cpus` CPUs of which others keep `busy` (in cores) occupied.
fn free_cores(cpus: usize, busy: f64) -> u32 {
    let free = (cpus as f64 - busy + BUSY_MARGIN).floor().max(1.0) as u32;
    free.min(available_threads()).min(cpus as u32).max(1)
}

impl Sample {
    fn read(cpus: &[usize]) -> Option<Sample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let (mut busy, mut total) = (0u64, 0u64);
        let mut seen = 0;
        for line in stat.lines() {
            let Some(rest) = line.strip_prefix("cpu") else { continue };
            let mut fields = rest.split_ascii_whitespace();
            let Some(Ok(cpu)) = fields.next().map(str::parse::<usize>) else { continue };
            if !cpus.contains(&cpu) {
                continue;
            }
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            let v: Vec<u64> = fields.take(8).map(|f| f.parse().unwrap_or(0)).collect();
            if v.len() < 8 {
                return None;
            }
            busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
            total += v.iter().sum::<u64>();
            seen += 1;
        }
        if seen == 0 {
            return None;
        }
        // /proc/self/stat: "pid (comm) state ..." with utime and stime the 14th and 15th fields;
        // comm may hold spaces, so count from the last ')'.
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after = own.get(own.rfind(')')? + 1..)?;
        let f: Vec<&str> = after.split_ascii_whitespace().collect();
        let own = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some(Sample { busy, total, own })
    }
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0-2,8,10-11"), Some(vec![0, 1, 2, 8, 10, 11]));
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("2-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn busy_cores_elsewhere_lower_the_count_but_never_below_one() {
        let n = available_threads().min(2);
        assert_eq!(free_cores(2, 0.0), n);
        assert_eq!(free_cores(2, 0.3), n);
        assert_eq!(free_cores(2, 1.0), 1);
        assert_eq!(free_cores(2, 2.0), 1);
        assert_eq!(free_cores(2, 5.0), 1);
    }

    #[test]
    fn a_watch_follows_what_other_processes_keep_busy() {
        let n = available_threads().min(2);
        let mut watch = scripted_watch(2, &[2.0, 1.0, 0.0]);
        assert_eq!(watch.poll(), Some(1), "every core busy elsewhere: one thread");
        assert_eq!(watch.poll(), Some(1));
        assert_eq!(watch.poll(), Some(n), "all free again: all of them");
        assert_eq!(watch.poll(), None, "no reading, no change");
    }

    #[test]
    fn the_default_is_between_one_and_the_available_cpus() {
        let n = default_threads();
        assert!(n >= 1 && n <= available_threads(), "{n}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_spinning_does_not_count_against_itself() {
        let mut watch = CoreWatch::new().expect("/proc is readable on Linux");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        watch.every = Duration::ZERO;
        let free = watch.poll();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
        // Other processes (the test harness's neighbours) may take cores, so only the bounds
        // hold in general; on an idle machine this is every allowed CPU.
        let free = free.expect("a reading");
        assert!(free >= 1 && free <= available_threads(), "{free}");
    }
}
