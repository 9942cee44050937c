//! Samplers against diffusers 0.42.1: the fixture's timesteps, and `scheduler-reference.json` (made by
//! diffusers + torch 2.12.1 on CPU): timesteps, sigmas and initial noise scales over spacings and
//! step counts, and whole 10-step trajectories with a toy model for every sampler and prediction type.

use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;

use super::*;
use crate::io::safetensors::SafeTensorsFile;

fn sd15(prediction: &str, spacing: Option<&str>) -> SchedulerConfig {
    let spacing = spacing.map_or(String::new(), |s| format!(r#", "timestep_spacing": "{s}""#));
    SchedulerConfig::from_json(&format!(
        r#"{{"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
            "set_alpha_to_one": false, "prediction_type": "{prediction}"{spacing}}}"#
    ))
    .unwrap()
}

fn reference() -> Value {
    serde_json::from_str(include_str!("../../tests/fixtures/scheduler-reference.json")).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    let scale = want.iter().fold(1e-12f64, |m, x| m.max(x.abs()));
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= rel * scale, "{what}: {got:?}\n vs {want:?}");
    }
}

/// The fixture pipelines' schedulers as diffusers builds them from the folders on disk
/// (epsilon: SD 1.x's PNDM config; v-prediction: SD 2.x's DDIM config): timesteps, sigmas and
/// the initial noise scale of every sampler.
#[test]
fn fixture_schedules() {
    let dir = &crate::fixtures::fixtures_dir();
    for (model, refs) in [("tiny-sd", "eps-samplers.safetensors"), ("tiny-sd2-v", "vpred-reference.safetensors")] {
        let config = load(&dir.join(model).join("scheduler/scheduler_config.json")).unwrap();
        let file = SafeTensorsFile::open(&dir.join(refs)).unwrap();
        for kind in SamplerKind::ALL {
            let name = kind.name().replace('-', "_");
            let s = make(kind, &config, 10).unwrap();
            let (_, want) = file.f32(&format!("sched_{name}_timesteps")).unwrap();
            let want: Vec<f64> = want.into_iter().map(|t| t as f64).collect();
            // All are whole numbers: exact equality.
            assert_eq!(s.timesteps(), &want[..], "{model} {kind}");
            let (_, init) = file.f32(&format!("sched_{name}_init_noise_sigma")).unwrap();
            assert_eq!(s.init_noise_sigma() as f32, init[0], "{model} {kind} init_noise_sigma");
            match file.f32(&format!("sched_{name}_sigmas")) {
                Ok((_, want)) => {
                    let got: Vec<f64> = s.sigmas().expect("a sigma schedule").iter().map(|&v| v as f64).collect();
                    close(&got, &want.iter().map(|&v| v as f64).collect::<Vec<_>>(), 2e-7, &format!("{model} {kind} sigmas"));
                }
                Err(_) => assert!(s.sigmas().is_none(), "{model} {kind}: diffusers has no sigmas"),
            }
        }
    }
}

#[test]
fn schedules_match_diffusers() {
    let r = reference();
    let kinds = [SamplerKind::Ddim, SamplerKind::Euler, SamplerKind::DpmPp2m, SamplerKind::DpmPp2mKarras];
    for kind in kinds {
        for spacing in ["leading", "trailing", "linspace"] {
            for n in [1usize, 3, 7, 20, 25, 50] {
                let key = format!("{kind}/{spacing}/{n}");
                let s = make(kind, &sd15("epsilon", Some(spacing)), n).unwrap();
                // Float32 values: compared as such (serde_json may misround the last f64 digit).
                let f32s = |v: &[f64]| v.iter().map(|&t| t as f32).collect::<Vec<_>>();
                assert_eq!(f32s(s.timesteps()), f32s(&floats(&r[&key])), "{key}");
                let init = r[format!("{key}/init")].as_f64().unwrap();
                // torch's float32 sqrt (MKL) is off the correctly rounded one by an ulp at times.
                close(&[s.init_noise_sigma()], &[init], 2e-7, &format!("{key} init_noise_sigma"));
            }
        }
    }
}

#[test]
fn trajectories_match_diffusers() {
    let r = reference();
    let d = Device::default();
    let t = |v: [f32; 8]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, 2, 2, 2]), &d);
    let x0 = t([0.8, -0.3, 1.2, 0.05, -1.1, 0.4, 2.0, -0.7]);
    let base = t([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8]);
    let noise = t([1.0, -0.5, 0.25, 2.0, -1.5, 0.75, -0.25, 0.5]);
    for kind in SamplerKind::ALL {
        for pred in ["epsilon", "v_prediction", "sample"] {
            let key = format!("{kind}/{pred}");
            let Some(want) = r.get(&key) else { continue };
            let config = sd15(pred, None);
            let mut s = make(kind, &config, 10).unwrap();
            let ancestral = (kind == SamplerKind::EulerAncestral).then(|| euler::EulerAncestral::new(&config, 10));
            let mut rng = crate::rng::Rng::new(0);
            let mut x = x0.clone().mul_scalar(s.init_noise_sigma() as f32);
            for i in 0..s.timesteps().len() {
                let input = s.scale_model_input(x.clone(), i);
                let out = input.mul_scalar(0.5) + base.clone().mul_scalar((i + 1) as f32).mul_scalar(0.1);
                x = match &ancestral {
                    // diffusers' noise replaced by a fixed tensor on both sides.
                    Some(a) => a.step_with_noise(out, i, x, noise.clone()),
                    None => s.step(out, i, x, &mut rng),
                };
            }
            let got: Vec<f64> = x.into_data().as_slice::<f32>().unwrap().to_vec().into_iter().map(|v| v as f64).collect();
            close(&got, &floats(want), 1e-6, &key);
        }
    }
}

#[test]
fn other_schedules_match_diffusers() {
    let r = reference();
    let dpm = |extra: &str, karras: bool, n: usize| {
        let config = SchedulerConfig::from_json(&format!("{{{extra}}}")).unwrap();
        dpm::DpmPp2m::new(&config, n, karras)
    };
    let sd = r#""beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1"#;
    let cases = [
        ("dpm/clipped/linspace/10", dpm(&format!(r#"{sd}, "lambda_min_clipped": -2.0"#), false, 10)),
        ("dpm/clipped/trailing/10", dpm(&format!(r#"{sd}, "lambda_min_clipped": -2.0, "timestep_spacing": "trailing""#), false, 10)),
        ("dpm/clipped/leading/10", dpm(&format!(r#"{sd}, "lambda_min_clipped": -2.0, "timestep_spacing": "leading""#), false, 10)),
        ("dpm/cosine/karras/10", dpm(r#""beta_schedule": "squaredcos_cap_v2""#, true, 10)),
        ("dpm/linear/karras/15", dpm("", true, 15)),
    ];
    let f32s = |v: &[f64]| v.iter().map(|&t| t as f32).collect::<Vec<_>>();
    let sigmas = |v: &[f32]| v.iter().map(|&s| s as f64).collect::<Vec<_>>();
    for (key, s) in &cases {
        assert_eq!(f32s(s.timesteps()), f32s(&floats(&r[*key])), "{key}");
        close(&sigmas(s.sigmas().unwrap()), &floats(&r[format!("{key}/sigmas")]), 2e-7, key);
    }
    let euler = euler::Euler::new(&SchedulerConfig::default(), 15);
    assert_eq!(f32s(euler.timesteps()), f32s(&floats(&r["euler/linear/linspace/15"])));
    close(&sigmas(euler.sigmas().unwrap()), &floats(&r["euler/linear/linspace/15/sigmas"]), 2e-7, "euler sigmas");
}

#[test]
fn kinds_and_errors() {
    for kind in SamplerKind::ALL {
        assert_eq!(kind.name().parse::<SamplerKind>().unwrap(), kind);
    }
    for (alias, kind) in [
        ("DPM++ 2M Karras", SamplerKind::DpmPp2mKarras),
        ("dpmpp_2m_karras", SamplerKind::DpmPp2mKarras),
        ("DPM++ 2M", SamplerKind::DpmPp2m),
        ("dpmsolver++", SamplerKind::DpmPp2m),
        ("Euler a", SamplerKind::EulerAncestral),
        ("euler_a", SamplerKind::EulerAncestral),
        ("euler_ancestral", SamplerKind::EulerAncestral),
        ("k_euler_a", SamplerKind::EulerAncestral),
        ("k_euler", SamplerKind::Euler),
        ("DDIM", SamplerKind::Ddim),
    ] {
        assert_eq!(alias.parse::<SamplerKind>().unwrap(), kind, "{alias}");
    }
    let e = "heun".parse::<SamplerKind>().unwrap_err().to_string();
    assert!(e.contains("heun") && e.contains("ddim, euler, euler-a, dpmpp-2m, dpmpp-2m-karras"), "{e}");
    assert!(make(SamplerKind::Ddim, &SchedulerConfig::default(), 0).is_err());
    assert!(make(SamplerKind::Euler, &SchedulerConfig::default(), 1001).is_err());
    let s = make(SamplerKind::Ddim, &SchedulerConfig::default(), 1000).unwrap();
    assert_eq!((s.timesteps()[0], s.timesteps()[999]), (999.0, 0.0));
}
