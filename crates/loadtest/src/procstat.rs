//! CPU time and resident memory of a process, from `/proc`.

use std::time::Instant;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// User + system CPU time, in seconds.
    pub cpu_secs: f64,
    pub rss_kib: u64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Reads `/proc/{pid}` (`"self"` for this process); `None` if the process is gone.
pub fn sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu_secs = parse_cpu_ticks(&stat)? as f64 / clock_ticks();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = parse_rss_kib(&status).unwrap_or(0);
    Some(ProcSample {
        at: Instant::now(),
        cpu_secs,
        rss_kib,
    })
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
                Some(parse_cpu_ticks(&stat)? as f64 / clock_ticks())
            });
        if let Some(s) = secs {
            *total.get_or_insert(0.0) += s;
        }
    }
    total
}

/// utime + stime (fields 14 and 15) from `/proc/pid/stat`; the command name in field 2 may
/// hold spaces, so fields are counted from its closing parenthesis.
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

/// CPU use between two samples, in percent of one core.
pub fn cpu_pct(from: &ProcSample, to: &ProcSample) -> f64 {
    let wall = to.at.saturating_duration_since(from.at).as_secs_f64();
    if wall <= 0.0 {
        0.0
    } else {
        (to.cpu_secs - from.cpu_secs) * 100.0 / wall
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tdeadsfu\nVmPeak:\t  1000 kB\nVmRSS:\t   52344 kB\n";
        assert_eq!(parse_rss_kib(status), Some(52344));
    }

    #[test]
    fn reads_own_process() {
        let s = sample("self").unwrap();
        assert!(s.rss_kib > 0);
    }

    #[test]
    fn reads_a_named_thread() {
        let t = std::thread::Builder::new()
            .name("procstat-spin".into())
            .spawn(|| {
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(30) {}
                threads_cpu_secs("procstat-spin")
            })
            .unwrap();
        let secs = t.join().unwrap().unwrap();
        assert!(secs > 0.01, "{secs}");
        assert_eq!(threads_cpu_secs("no-such-thread"), None);
    }
}
