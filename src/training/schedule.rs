//! Learning-rate schedules: linear warm-up, then constant, linear decay or cosine decay to zero,
//! as diffusers' `get_scheduler` defines them.
use super::config::Schedule;

/// The learning rate for optimiser step `step` (0-based) of `total`.
pub fn learning_rate(base: f64, schedule: Schedule, warmup: usize, step: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// Linear warm-up then cosine decay to `floor * peak`: the toy pretraining's schedule (kept
/// apart from [`learning_rate`]'s cosine, which decays to 0, so that both keep their bits).
pub fn cosine_to_floor(step: usize, total: usize, peak: f64, warmup: usize, floor: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let p = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    peak * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        assert_eq!(learning_rate(1.0, Schedule::Constant, 0, 5, 10), 1.0);
        assert_eq!(learning_rate(1.0, Schedule::Constant, 4, 0, 10), 0.25);
        assert_eq!(learning_rate(1.0, Schedule::Constant, 4, 3, 10), 1.0);
        assert_eq!(learning_rate(1.0, Schedule::Linear, 0, 0, 10), 1.0);
        assert!((learning_rate(1.0, Schedule::Linear, 0, 5, 10) - 0.5).abs() < 1e-12);
        assert!((learning_rate(1.0, Schedule::Cosine, 0, 5, 10) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, Schedule::Cosine, 2, 9, 10) < 0.05);
    }
}
