"""Writes reference.json, the expected values of the scheduler tests (tests.rs), with the
reference stack of the fixtures: diffusers 0.42.1 and torch 2.12.1 on CPU.
    pip install torch==2.12.1 diffusers==0.42.1 && python3 src/schedulers/reference.py
The toy model is `0.5 * scaled_input + 0.1 * (i + 1) * base`; Euler ancestral's noise is a fixed
tensor. Schedulers are built from the SD 1.5 values as the fixture pipeline's in-memory PNDM
config (no timestep_spacing, so each class uses its own default)."""
import json, os

import torch
import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea_mod
from diffusers import DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler
base = dict(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', steps_offset=1)
def make(kind, **kw):
    c = dict(base); c.update(kw)
    if kind == 'ddim': return DDIMScheduler(set_alpha_to_one=False, **c)
    if kind == 'euler': return EulerDiscreteScheduler(**c)
    if kind == 'euler-a': return EulerAncestralDiscreteScheduler(**c)
    if kind == 'dpmpp-2m': return DPMSolverMultistepScheduler(**c)
    if kind == 'dpmpp-2m-karras': return DPMSolverMultistepScheduler(use_karras_sigmas=True, **c)
out = {}
x0 = torch.tensor([0.8, -0.3, 1.2, 0.05, -1.1, 0.4, 2.0, -0.7], dtype=torch.float32).reshape(1,2,2,2)
base_t = torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8], dtype=torch.float32).reshape(1,2,2,2)
noise_t = torch.tensor([1.0, -0.5, 0.25, 2.0, -1.5, 0.75, -0.25, 0.5], dtype=torch.float32).reshape(1,2,2,2)
ea_mod.randn_tensor = lambda shape, **kw: noise_t.clone()
for kind in ['ddim','euler','euler-a','dpmpp-2m','dpmpp-2m-karras']:
    for pred in ['epsilon','v_prediction','sample']:
        if kind == 'euler-a' and pred == 'sample': continue
        s = make(kind, prediction_type=pred)
        s.set_timesteps(10)
        x = x0 * s.init_noise_sigma
        for i, t in enumerate(s.timesteps):
            xin = s.scale_model_input(x, t)
            out_ = xin * 0.5 + base_t * (i + 1) * 0.1
            x = s.step(out_, t, x, return_dict=False)[0]
        out[f'{kind}/{pred}'] = x.flatten().tolist()
    s = make(kind); s.set_timesteps(10)
    out[f'{kind}/timesteps'] = s.timesteps.double().tolist()
    out[f'{kind}/init'] = float(s.init_noise_sigma)
    if hasattr(s, 'sigmas'): out[f'{kind}/sigmas'] = s.sigmas.double().tolist()
# spacing variants
for kind in ['ddim','euler','dpmpp-2m','dpmpp-2m-karras']:
    for sp in ['leading','trailing','linspace']:
        for n in [1, 3, 7, 20, 25, 50]:
            s = make(kind, timestep_spacing=sp); s.set_timesteps(n)
            out[f'{kind}/{sp}/{n}'] = s.timesteps.double().tolist()
            if hasattr(s, 'sigmas'): out[f'{kind}/{sp}/{n}/sigmas'] = s.sigmas.double().tolist()
            out[f'{kind}/{sp}/{n}/init'] = float(s.init_noise_sigma)
extra = {
  'dpm/clipped/linspace/10': DPMSolverMultistepScheduler(**base, lambda_min_clipped=-2.0),
  'dpm/clipped/trailing/10': DPMSolverMultistepScheduler(**base, lambda_min_clipped=-2.0, timestep_spacing='trailing'),
  'dpm/clipped/leading/10': DPMSolverMultistepScheduler(**base, lambda_min_clipped=-2.0, timestep_spacing='leading'),
  'dpm/cosine/karras/10': DPMSolverMultistepScheduler(beta_schedule='squaredcos_cap_v2', use_karras_sigmas=True),
  'dpm/linear/karras/15': DPMSolverMultistepScheduler(use_karras_sigmas=True),
  'euler/linear/linspace/15': EulerDiscreteScheduler(),
}
for k, sch in extra.items():
    sch.set_timesteps(int(k.split('/')[-1]))
    out[k] = sch.timesteps.double().tolist()
    out[k + '/sigmas'] = sch.sigmas.double().tolist()
keep = {k: v for k, v in out.items() if not k.endswith('/sigmas') or k.startswith('dpm/') or k.startswith('euler/linear')}

json.dump(keep, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'reference.json'), 'w'), separators=(',', ':'), sort_keys=True)
