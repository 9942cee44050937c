"""Checks that LoRA files written by catlora load in diffusers' `load_lora_weights` and give the
same image as catlora from the same initial latents. A developer check (needs the benchmark venv:
`bash scripts/setup-bench.sh`), not part of the test suite.

usage: python bench/check_diffusers_lora.py MODEL_DIR LORA_FILE INIT_LATENTS CATLORA_PNG PROMPT STEPS
"""
import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

model, lora, latents_file, catlora_png, prompt, steps = sys.argv[1:7]
pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe.load_lora_weights(lora)
latents = load_file(latents_file)["latents"]
h, w = latents.shape[2] * 8 // 4 * (pipe.vae_scale_factor // 2), latents.shape[3] * 8 // 4 * (pipe.vae_scale_factor // 2)
h, w = latents.shape[2] * pipe.vae_scale_factor, latents.shape[3] * pipe.vae_scale_factor
with torch.no_grad():
    img = pipe(prompt, num_inference_steps=int(steps), guidance_scale=7.5, height=h, width=w, latents=latents, output_type="np").images[0]
ours = np.asarray(Image.open(catlora_png).convert("RGB"), dtype=np.float32) / 255.0
ref = np.round(img * 255.0) / 255.0
err = np.abs(ours - ref).mean()
print(f"{lora}: mean abs pixel difference diffusers vs catlora = {err:.2e} ({err * 255:.3f} / 255)")
sys.exit(0 if err <= 1.0 / 255 else 1)
