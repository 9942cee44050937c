//! Text-to-image generation: loading a pipeline folder and running the sampler loop.
pub mod infotext;
pub mod model;
pub mod txt2img;
