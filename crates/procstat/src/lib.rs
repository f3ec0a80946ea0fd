//! CPU time and resident memory of processes and threads, read from Linux `/proc`: for the
//! node's load reports, the load generators' reports and the tests' memory checks.
//!
//! Every reader returns `None` when the process (or `/proc`) is not there, rather than failing:
//! callers report what they can.

use std::time::Instant;

/// Which process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// The calling process (`/proc/self`).
    Own,
    Pid(u32),
}

impl Process {
    fn dir(self) -> String {
        match self {
            Process::Own => "/proc/self".to_owned(),
            Process::Pid(pid) => format!("/proc/{pid}"),
        }
    }
}

/// CPU time used so far (user + system, every thread), and when it was read.
#[derive(Debug, Clone, Copy)]
pub struct CpuReading {
    pub at: Instant,
    pub cpu_secs: f64,
}

/// One reading of a process's CPU time and resident memory.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub cpu: CpuReading,
    pub rss_kib: u64,
}

/// CPU time of `process`.
pub fn cpu(process: Process) -> Option<CpuReading> {
    let stat = std::fs::read_to_string(format!("{}/stat", process.dir())).ok()?;
    Some(CpuReading {
        at: Instant::now(),
        cpu_secs: parse_cpu_ticks(&stat)? as f64 / clock_ticks_per_sec(),
    })
}

/// Resident memory of `process`, in KiB.
pub fn rss_kib(process: Process) -> Option<u64> {
    let status = std::fs::read_to_string(format!("{}/status", process.dir())).ok()?;
    parse_rss_kib(&status)
}

/// CPU time and resident memory of `process` (memory 0 if unreadable).
pub fn sample(process: Process) -> Option<ProcSample> {
    Some(ProcSample {
        cpu: cpu(process)?,
        rss_kib: rss_kib(process).unwrap_or(0),
    })
}

/// CPU use between two readings, in percent of one core (100 = one core busy). `/proc`
/// counts in clock ticks (10 ms), so windows of a few seconds are good to about 1%.
pub fn cpu_pct(from: CpuReading, to: CpuReading) -> f64 {
    let wall = to.at.saturating_duration_since(from.at).as_secs_f64();
    if wall <= 0.0 {
        0.0
    } else {
        (to.cpu_secs - from.cpu_secs) * 100.0 / wall
    }
}

/// Total CPU time of a set of processes (every thread of each); the ones that are gone count 0.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<u32>,
}

impl CpuMeter {
    pub fn new(pids: Vec<u32>) -> Self {
        Self { pids }
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    pub fn read(&self) -> CpuReading {
        let cpu_secs = self
            .pids
            .iter()
            .filter_map(|&pid| cpu(Process::Pid(pid)))
            .map(|r| r.cpu_secs)
            .sum();
        CpuReading {
            at: Instant::now(),
            cpu_secs,
        }
    }
}

/// CPU time, in seconds, of this process's threads called `name` (`None` if there is none).
/// Read from `schedstat` (nanoseconds), or from `stat` (clock ticks) where that is missing.
pub fn threads_cpu_secs(name: &str) -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let secs = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .map(|ns| ns as f64 / 1e9)
            .or_else(|| {
                let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
                Some(parse_cpu_ticks(&stat)? as f64 / clock_ticks_per_sec())
            });
        if let Some(s) = secs {
            *total.get_or_insert(0.0) += s;
        }
    }
    total
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime (fields 14 and 15) from `/proc/pid/stat`; the command name in field 2 may
/// hold spaces and parentheses, so fields are counted from its last closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The memory available to new work (`MemAvailable` of `/proc/meminfo`), in bytes.
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {

    #[test]
    fn reads_the_memory_available() {
        let bytes = available_memory_bytes().expect("MemAvailable on Linux");
        assert!(bytes > 1 << 20, "{bytes}");
    }

    use super::*;
    use std::time::Duration;

    fn spin(for_how_long: Duration) {
        let start = Instant::now();
        while start.elapsed() < for_how_long {}
    }

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("1234 (truncated"), None);
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tdeadsfu\nVmPeak:\t  1000 kB\nVmRSS:\t   52344 kB\n";
        assert_eq!(parse_rss_kib(status), Some(52344));
        assert_eq!(parse_rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn reads_own_process() {
        let s = sample(Process::Own).unwrap();
        assert!(s.rss_kib > 0);
        let by_pid = rss_kib(Process::Pid(std::process::id())).unwrap();
        assert!(by_pid > 0);
    }

    #[test]
    fn cpu_of_this_process_moves() {
        let meter = CpuMeter::new(vec![std::process::id()]);
        let a = meter.read();
        spin(Duration::from_millis(50));
        let b = meter.read();
        assert!(cpu_pct(a, b) > 10.0, "{}", cpu_pct(a, b));
    }

    #[test]
    fn reads_a_named_thread() {
        let t = std::thread::Builder::new()
            .name("procstat-spin".into())
            .spawn(|| {
                spin(Duration::from_millis(30));
                threads_cpu_secs("procstat-spin")
            })
            .unwrap();
        let secs = t.join().unwrap().unwrap();
        assert!(secs > 0.01, "{secs}");
        assert_eq!(threads_cpu_secs("no-such-thread"), None);
    }
}
