//! Process metrics from `/proc`: CPU time (`/proc/<pid>/stat` utime + stime) and memory
//! (`VmRSS`, `VmHWM` from `/proc/<pid>/status`), and the machine's description
//! (`/proc/cpuinfo`).

use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on when `getconf`
/// is missing). Asked once.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Which process to read: a pid, or this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pid {
    /// Another process.
    Of(u32),
    /// The bench itself (`/proc/self`).
    This,
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::Of(pid) => format!("/proc/{pid}"),
            Pid::This => "/proc/self".to_owned(),
        }
    }
}

/// User plus system CPU seconds `pid` has used so far (all its threads).
pub(crate) fn cpu_seconds(pid: Pid) -> Result<f64> {
    let path = format!("{}/stat", pid.dir());
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks =
        parse_stat_cpu_ticks(&text).with_context(|| format!("{path}: unexpected format"))?;
    Ok(ticks as f64 / clock_ticks())
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses itself, so fields are counted after
/// the last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field n is fields[n - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    /// `VmRSS`: resident now.
    pub(crate) rss_kib: u64,
    /// `VmHWM`: the peak resident size since the process started.
    pub(crate) hwm_kib: u64,
}

/// `VmRSS` and `VmHWM` of `pid`.
pub(crate) fn memory(pid: Pid) -> Result<Memory> {
    let path = format!("{}/status", pid.dir());
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_status_memory(&text).with_context(|| format!("{path}: no VmRSS/VmHWM"))
}

fn parse_status_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// The pid in a pid file (the stack's `.stack/pids/*.pid`), if the file names a live process.
pub(crate) fn pid_from_file(path: &std::path::Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

/// The machine: logical CPUs and the CPU model, e.g. `2 × AMD EPYC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Machine {
    /// Logical CPUs this process may run on (what `nproc` prints).
    pub(crate) cpus: usize,
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub(crate) model: String,
    /// Total memory in MiB (`MemTotal` of `/proc/meminfo`).
    pub(crate) memory_mib: u64,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub(crate) kernel: String,
}

/// Describes this machine.
pub(crate) fn machine() -> Machine {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib / 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    Machine {
        cpus,
        model,
        memory_mib,
        kernel,
    }
}

/// Fails unless `/proc` is there to read (the bench measures nothing without it).
pub(crate) fn check() -> Result<()> {
    if cpu_seconds(Pid::This).is_err() || memory(Pid::This).is_err() {
        bail!("/proc/self/stat or /proc/self/status is not readable: the bench needs Linux /proc");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_fields_after_the_command_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    4 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_memory_fields() {
        let status =
            "Name:\tpushfleet\nVmPeak:\t  100 kB\nVmHWM:\t    9000 kB\nVmRSS:\t    8000 kB\n";
        assert_eq!(
            parse_status_memory(status),
            Some(Memory {
                rss_kib: 8000,
                hwm_kib: 9000
            })
        );
        assert_eq!(parse_status_memory("Name: x\n"), None);
    }

    #[test]
    fn this_process_is_readable() {
        check().expect("/proc");
        assert!(cpu_seconds(Pid::This).expect("cpu") >= 0.0);
        let m = memory(Pid::This).expect("memory");
        assert!(m.hwm_kib >= m.rss_kib && m.rss_kib > 0);
    }
}
