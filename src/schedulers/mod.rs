//! Noise schedules and samplers (DDIM, Euler, Euler ancestral, DPM++ 2M with and without Karras
//! sigmas), configured from a diffusers `scheduler_config.json`.
