//! `SchedulerConfig`: a diffusers `scheduler_config.json`, read with serde.
//!
//! Only the fields that shape the noise schedule, the timesteps and the meaning of the model output
//! are read; the solver itself (DDIM, Euler, DPM++ 2M, Karras sigmas) is picked by `SamplerKind`,
//! so solver fields such as `solver_order` or `use_karras_sigmas` are ignored like any unknown field.
//! Fields whose diffusers default differs between scheduler classes stay `Option` here and each
//! sampler applies its own class's default.
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// `_class_name`: the diffusers class the file was written for.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub steps_offset: usize,
    /// Default: `leading` for DDIM, `linspace` for Euler and DPM-Solver (see `spacing`).
    pub timestep_spacing: Option<TimestepSpacing>,
    /// DDIM only; default true.
    pub set_alpha_to_one: Option<bool>,
    /// DDIM only; default true.
    pub clip_sample: Option<bool>,
    pub clip_sample_range: f64,
    /// DPM-Solver: drop the timesteps whose log-SNR is below this (written `-Infinity` = none).
    pub lambda_min_clipped: Option<f64>,
    // Read only to refuse what is not implemented.
    pub thresholding: bool,
    pub rescale_betas_zero_snr: bool,
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,
    pub final_sigmas_type: Option<String>,
}

impl Default for SchedulerConfig {
    /// diffusers' defaults (shared by DDIM, Euler and DPM-Solver where not `Option`).
    fn default() -> Self {
        Self {
            class_name: None,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            steps_offset: 0,
            timestep_spacing: None,
            set_alpha_to_one: None,
            clip_sample: None,
            clip_sample_range: 1.0,
            lambda_min_clipped: None,
            thresholding: false,
            rescale_betas_zero_snr: false,
            interpolation_type: None,
            timestep_type: None,
            final_sigmas_type: None,
        }
    }
}

/// Reads and checks a `scheduler_config.json`.
pub fn load(path: &Path) -> Result<SchedulerConfig> {
    let text = crate::io::read_text(path).with_context(|| format!("cannot read {}", path.display()))?;
    SchedulerConfig::from_json(&text).with_context(|| format!("{}: bad scheduler config", path.display()))
}

impl SchedulerConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(&python_json(text))?;
        let mut obj = value.as_object().context("the config is not a JSON object")?.clone();
        obj.retain(|_, v| !v.is_null()); // `null` means the default, as in diffusers' `trained_betas: null`
        let c: Self = match serde_json::from_value(obj.clone().into()) {
            Ok(c) => c,
            Err(e) => {
                // serde's message does not name the field: find it by reading one field at a time.
                for (key, v) in &obj {
                    let one = serde_json::Map::from_iter([(key.clone(), v.clone())]);
                    if let Err(e) = serde_json::from_value::<Self>(one.into()) {
                        bail!("unsupported `{key}` = {v}: {e}");
                    }
                }
                return Err(e.into());
            }
        };
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<()> {
        let refuse = |field: &str, value: &dyn std::fmt::Display| -> Result<()> {
            bail!("unsupported `{field}` = {value}: not implemented by catlora's samplers")
        };
        if self.thresholding {
            refuse("thresholding", &true)?;
        }
        if self.rescale_betas_zero_snr {
            refuse("rescale_betas_zero_snr", &true)?;
        }
        if let Some(v) = self.interpolation_type.as_deref().filter(|v| *v != "linear") {
            refuse("interpolation_type", &v)?;
        }
        if let Some(v) = self.timestep_type.as_deref().filter(|v| *v != "discrete") {
            refuse("timestep_type", &v)?;
        }
        if let Some(v) = self.final_sigmas_type.as_deref().filter(|v| *v != "zero") {
            refuse("final_sigmas_type", &v)?;
        }
        if self.num_train_timesteps < 2 {
            refuse("num_train_timesteps", &self.num_train_timesteps)?;
        }
        if self.num_train_timesteps > 100_000 {
            bail!("`num_train_timesteps` = {} is more than 100000", self.num_train_timesteps);
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                bail!("`trained_betas` has {} values but `num_train_timesteps` is {}", b.len(), self.num_train_timesteps);
            }
            if let Some((i, v)) = b.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v > 0.0 && **v < 1.0)) {
                bail!("`trained_betas`[{i}] = {v} is not in (0, 1)");
            }
        }
        for (field, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if !(v.is_finite() && v > 0.0 && v < 1.0) {
                bail!("`{field}` = {v} is not in (0, 1)");
            }
        }
        if self.steps_offset >= self.num_train_timesteps {
            bail!("`steps_offset` = {} is not below `num_train_timesteps` = {}", self.steps_offset, self.num_train_timesteps);
        }
        Ok(())
    }

    /// The timestep spacing for a scheduler class whose own default is `class_default`: the
    /// file's value when it has one, as diffusers' `from_pretrained` + `from_config` give it (the
    /// SD 1.5 original has none, so Euler and DPM-Solver take their own `linspace` there).
    pub fn spacing(&self, class_default: TimestepSpacing) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(class_default)
    }
}

/// Python's `json.dumps` writes `NaN`, `Infinity` and `-Infinity` (diffusers does for
/// `lambda_min_clipped`); serde_json refuses them, so they become `null` (= the default) outside strings.
fn python_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(ch) = rest.chars().next() {
        if in_string {
            in_string = ch != '"' || escaped;
            escaped = ch == '\\' && !escaped;
        } else if ch == '"' {
            in_string = true;
        } else if let Some(word) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|w| rest.starts_with(w)) {
            out.push_str("null");
            rest = &rest[word.len()..];
            continue;
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_config() {
        let p = crate::fixtures::fixture("tiny-sd/scheduler/scheduler_config.json");
        let c = load(&p).unwrap();
        assert_eq!(c.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!((c.beta_start, c.beta_end, c.num_train_timesteps, c.steps_offset), (0.00085, 0.012, 1000, 1));
        assert_eq!(c.prediction_type, PredictionType::Epsilon);
        assert_eq!(c.set_alpha_to_one, Some(false));
        assert_eq!(c.clip_sample, None);
        // The file says `leading`: every sampler uses it, as diffusers' from_pretrained does.
        assert_eq!(c.spacing(TimestepSpacing::Linspace), TimestepSpacing::Leading);
        // Without the key (SD 1.5's original file), each sampler takes its own default.
        let bare = SchedulerConfig::from_json(r#"{"_class_name": "PNDMScheduler", "steps_offset": 1}"#).unwrap();
        assert_eq!(bare.spacing(TimestepSpacing::Linspace), TimestepSpacing::Linspace);
        assert_eq!(bare.spacing(TimestepSpacing::Leading), TimestepSpacing::Leading);
    }

    #[test]
    fn defaults_python_infinity_and_errors() {
        let c = SchedulerConfig::from_json(
            r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "x": "NaN-Infinity",
                "prediction_type": "v_prediction", "timestep_spacing": "leading", "solver_order": 2}"#,
        )
        .unwrap();
        assert_eq!(c.lambda_min_clipped, None);
        assert_eq!(c.prediction_type, PredictionType::VPrediction);
        assert_eq!(c.spacing(TimestepSpacing::Linspace), TimestepSpacing::Leading);
        assert_eq!(c.beta_schedule, BetaSchedule::Linear);
        let e = format!("{:#}", SchedulerConfig::from_json(r#"{"beta_schedule": "sigmoid"}"#).unwrap_err());
        assert!(e.contains("beta_schedule") && e.contains("sigmoid"), "{e}");
        let e = format!("{:#}", SchedulerConfig::from_json(r#"{"prediction_type": "flow_prediction"}"#).unwrap_err());
        assert!(e.contains("prediction_type") && e.contains("flow_prediction"), "{e}");
        let e = format!("{:#}", SchedulerConfig::from_json(r#"{"thresholding": true}"#).unwrap_err());
        assert!(e.contains("thresholding"), "{e}");
        let e = format!("{:#}", load(Path::new("/nonexistent/scheduler_config.json")).unwrap_err());
        assert!(e.contains("/nonexistent/scheduler_config.json"), "{e}");
    }
}
