//! What the machine is doing while a benchmark runs: threads, memory high-water marks, the load
//! average, and the CPU time other processes take (a ratio measured under load means nothing),
//! plus the statistics of repeated timings.
use anyhow::{Context, Result, bail};

/// rayon's default pool size: `RAYON_NUM_THREADS`, else every CPU this process may use.
pub fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0).unwrap_or_else(cpus)
}

/// The CPUs this process may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// glibc's malloc settings that the engines' processes inherit from this one (`GLIBC_TUNABLES`),
/// for the engine line: PyTorch otherwise runs with malloc's defaults.
pub fn malloc_settings() -> String {
    std::env::var("GLIBC_TUNABLES").map_or(", default malloc".into(), |t| format!(", GLIBC_TUNABLES={t}"))
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// A field of `/proc/self/status` (`VmRSS`, `VmHWM`), in MiB.
pub fn proc_status_mb(field: &str) -> Result<f64> {
    let text = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status (Linux only)")?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kb: f64 = rest.trim().trim_end_matches("kB").trim().parse().with_context(|| format!("bad {field} line: {line}"))?;
            return Ok(kb / 1024.0);
        }
    }
    bail!("/proc/self/status has no {field}")
}

/// Resets this process's RSS high-water mark to the current RSS (Linux >= 4.0).
pub fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Busy CPU time of the whole machine and of this process with its finished children, in clock
/// ticks.
#[derive(Clone, Copy, Debug)]
pub struct CpuSnapshot {
    machine_busy: u64,
    children: u64,
    at: std::time::Instant,
}

impl CpuSnapshot {
    /// `None` where `/proc` cannot be read.
    pub fn take() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
        let machine_busy = cpu.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).take(8).map(|(_, v)| v).sum();
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The fields after the parenthesised command name, from the state (field 3) on: utime,
        // stime, cutime and cstime are fields 14 to 17 of the line.
        let after = &own[own.rfind(')')? + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let children = (11..=14).map(|i| f.get(i).and_then(|v| v.parse::<u64>().ok())).sum::<Option<u64>>()?;
        Some(Self { machine_busy, children, at: std::time::Instant::now() })
    }

    /// Cores' worth of CPU that other processes used since `self` (this process and its
    /// children, finished and waited for, are subtracted).
    pub fn others_since(&self) -> Option<f64> {
        let now = Self::take()?;
        let ticks = clock_ticks_per_second();
        let wall = now.at.duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return None;
        }
        let busy = now.machine_busy.saturating_sub(self.machine_busy) as f64;
        let ours = now.children.saturating_sub(self.children) as f64;
        Some(((busy - ours) / ticks / wall).max(0.0))
    }
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on.
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// Whether a measurement counts. The 1-minute load average lags (a build that ended half a minute
/// earlier still shows in it), so what decides is measured directly where `/proc` allows: the CPU
/// time other processes took while the case ran, at most a fifth of a core. Without that reading
/// the load average before the run must be at most cores − 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Idle {
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    /// Cores' worth of CPU other processes used during the run.
    pub others: Option<f64>,
}

/// Other processes' CPU use during a run, in cores, above which its time ratios are withheld.
pub const MAX_OTHERS: f64 = 0.2;

impl Idle {
    pub fn is_idle(&self) -> bool {
        match self.others {
            Some(o) => o <= MAX_OTHERS,
            None => self.load_before.is_none_or(|l| l <= cpus().saturating_sub(1).max(1) as f64),
        }
    }

    pub fn describe(&self) -> String {
        let f = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.2}"));
        format!(
            "load average (1 min) {} before, {} after; other processes used {} CPU(s) meanwhile; {} CPU(s){}",
            f(self.load_before),
            f(self.load_after),
            f(self.others),
            cpus(),
            if self.is_idle() { "" } else { " — NOT IDLE: ratios withheld" }
        )
    }
}

/// Watches the machine over one run; see [`Idle`].
pub struct IdleWatch {
    load_before: Option<f64>,
    cpu: Option<CpuSnapshot>,
}

impl IdleWatch {
    pub fn start() -> Self {
        Self { load_before: load_average(), cpu: CpuSnapshot::take() }
    }
    pub fn finish(&self) -> Idle {
        Idle { load_before: self.load_before, load_after: load_average(), others: self.cpu.and_then(|c| c.others_since()) }
    }
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}

pub fn mean_abs(v: &[f32]) -> f64 {
    v.iter().map(|x| x.abs() as f64).sum::<f64>() / v.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_and_machine_readings() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(min(&[4.0, 1.0, 2.0]), 1.0);
        assert!(median(&[]).is_nan());
        let w = IdleWatch::start();
        assert!(w.cpu.is_some(), "/proc/stat and /proc/self/stat are readable");
        let busy_until = std::time::Instant::now() + std::time::Duration::from_millis(50);
        while std::time::Instant::now() < busy_until {}
        let idle = w.finish();
        assert!(idle.others.is_some_and(|o| o >= 0.0));
        assert!(idle.describe().contains("load average"));
        // The lagging load average alone does not withhold a measurement that saw no other work.
        assert!(Idle { load_before: Some(cpus() as f64 + 1.0), load_after: None, others: Some(0.0) }.is_idle());
        let busy = Idle { load_before: Some(0.0), load_after: None, others: Some(1.5) };
        assert!(!busy.is_idle() && busy.describe().contains("NOT IDLE"));
        assert!(!Idle { load_before: Some(cpus() as f64 + 1.0), load_after: None, others: None }.is_idle());
    }
}
