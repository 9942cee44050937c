//! Text-to-image generation.
