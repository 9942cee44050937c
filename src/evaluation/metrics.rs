//! The evaluation metrics: the project's single definition of each, on CLIP embeddings. All are
//! pure functions of embedding vectors (one per image or text, any length, need not be unit
//! length: cosines are computed in full, in f64). Errors name which input is at fault.
use anyhow::{Result, bail, ensure};

/// Cosine similarity `a·b / (|a| |b|)`, in [-1, 1]. Errors when the lengths differ or either
/// vector is zero (its direction, and so the cosine, is undefined).
pub fn cosine(a: &[f32], b: &[f32]) -> Result<f64> {
    ensure!(a.len() == b.len(), "cannot compare embeddings of lengths {} and {}", a.len(), b.len());
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    ensure!(na > 0.0 && nb > 0.0, "cannot take the cosine of a zero embedding");
    // Rounding can push |cos| of parallel vectors just past 1.
    Ok((dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0))
}

/// Cosine mapped to [0, 1]: `(cos + 1) / 2`, so that opposite is 0, orthogonal 1/2, identical 1.
fn unit_similarity(a: &[f32], b: &[f32]) -> Result<f64> {
    Ok((cosine(a, b)? + 1.0) / 2.0)
}

/// **Prompt similarity** (CLIP score without the ×100 or clipping): the mean over images of
/// `cos(text, image)`, where `text` is the prompt's text embedding. In [-1, 1]; higher means
/// the images follow the prompt more closely.
pub fn prompt_similarity(text: &[f32], images: &[Vec<f32>]) -> Result<f64> {
    ensure!(!images.is_empty(), "prompt similarity needs at least one image");
    let mut sum = 0.0;
    for (i, img) in images.iter().enumerate() {
        sum += cosine(text, img).map_err(|e| e.context(format!("prompt similarity, image {i}")))?;
    }
    Ok(sum / images.len() as f64)
}

/// **Identity similarity**: the mean over all (generated, training) image pairs of
/// `(cos + 1) / 2`. In [0, 1]; higher means the generated images look more like the subject
/// the adapter was trained on.
pub fn identity_similarity(generated: &[Vec<f32>], training: &[Vec<f32>]) -> Result<f64> {
    ensure!(!generated.is_empty(), "identity similarity needs at least one generated image");
    ensure!(!training.is_empty(), "identity similarity needs at least one training (reference) image");
    let mut sum = 0.0;
    for (i, g) in generated.iter().enumerate() {
        for (j, t) in training.iter().enumerate() {
            sum +=
                unit_similarity(g, t).map_err(|e| e.context(format!("identity similarity, generated image {i} / training image {j}")))?;
        }
    }
    Ok(sum / (generated.len() * training.len()) as f64)
}

/// **KPS** (knowledge preservation score). `base[i]` and `adapted[i]` are the embeddings of the
/// images that the base model and the adapted model (adapter active) generate from the same
/// trigger-less prompt and seed. KPS is the harmonic mean over pairs of `(cos + 1) / 2`: in
/// [0, 1], 1 when the adapter leaves every such image unchanged. The harmonic mean lets one
/// badly changed pair pull the score down more than an arithmetic mean would; a pair with
/// exactly opposite embeddings (similarity 0) makes KPS 0.
///
/// The CAT paper does not publish its KPS formula; this definition is the project's
/// reconstruction from its description.
pub fn kps(base: &[Vec<f32>], adapted: &[Vec<f32>]) -> Result<f64> {
    ensure!(!base.is_empty(), "KPS needs at least one (base, adapted) image pair");
    ensure!(
        base.len() == adapted.len(),
        "KPS pairs images one to one, but there are {} base and {} adapted images",
        base.len(),
        adapted.len()
    );
    let mut inverse_sum = 0.0;
    for (i, (b, a)) in base.iter().zip(adapted).enumerate() {
        let s = unit_similarity(b, a).map_err(|e| e.context(format!("KPS, pair {i}")))?;
        if s == 0.0 {
            return Ok(0.0); // the limit of the harmonic mean as one term goes to 0
        }
        inverse_sum += 1.0 / s;
    }
    Ok(base.len() as f64 / inverse_sum)
}

/// **Diversity** of the images generated from one prompt: the mean over all unordered pairs of
/// distinct images of `1 - cos`. In [0, 2]; 0 when all images are identical, higher when they
/// differ more. Needs at least two images.
pub fn diversity(images: &[Vec<f32>]) -> Result<f64> {
    if images.len() < 2 {
        bail!("diversity compares images pairwise and needs at least 2 images, got {}", images.len());
    }
    let (mut sum, mut pairs) = (0.0, 0usize);
    for i in 0..images.len() {
        for j in (i + 1)..images.len() {
            sum += 1.0 - cosine(&images[i], &images[j]).map_err(|e| e.context(format!("diversity, images {i} and {j}")))?;
            pairs += 1;
        }
    }
    Ok(sum / pairs as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: [f32; 2] = [1.0, 0.0];
    const Y: [f32; 2] = [0.0, 1.0];
    const NEG_X: [f32; 2] = [-1.0, 0.0];

    fn v(rows: &[[f32; 2]]) -> Vec<Vec<f32>> {
        rows.iter().map(|r| r.to_vec()).collect()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn cosine_of_basic_cases() {
        close(cosine(&X, &X).unwrap(), 1.0);
        close(cosine(&X, &Y).unwrap(), 0.0);
        close(cosine(&X, &NEG_X).unwrap(), -1.0);
        // Not unit length: cosine ignores scale.
        close(cosine(&[3.0, 0.0], &[1.0, 1.0]).unwrap(), std::f64::consts::FRAC_1_SQRT_2);
        assert!(cosine(&X, &[1.0, 0.0, 0.0]).unwrap_err().to_string().contains("lengths 2 and 3"));
        assert!(cosine(&X, &[0.0, 0.0]).unwrap_err().to_string().contains("zero"));
    }

    #[test]
    fn prompt_similarity_is_mean_cosine() {
        close(prompt_similarity(&X, &v(&[X, Y, NEG_X])).unwrap(), 0.0);
        close(prompt_similarity(&X, &v(&[X, X])).unwrap(), 1.0);
        close(prompt_similarity(&X, &v(&[X, Y])).unwrap(), 0.5);
        assert!(prompt_similarity(&X, &[]).unwrap_err().to_string().contains("at least one image"));
    }

    #[test]
    fn identity_similarity_averages_all_pairs() {
        close(identity_similarity(&v(&[X]), &v(&[X])).unwrap(), 1.0);
        close(identity_similarity(&v(&[X]), &v(&[Y])).unwrap(), 0.5);
        close(identity_similarity(&v(&[X]), &v(&[NEG_X])).unwrap(), 0.0);
        // Pairs (X,X)=1, (X,Y)=.5, (Y,X)=.5, (Y,Y)=1.
        close(identity_similarity(&v(&[X, Y]), &v(&[X, Y])).unwrap(), 0.75);
        assert!(identity_similarity(&[], &v(&[X])).unwrap_err().to_string().contains("generated"));
        assert!(identity_similarity(&v(&[X]), &[]).unwrap_err().to_string().contains("training"));
    }

    #[test]
    fn kps_is_harmonic_mean_of_pair_similarities() {
        close(kps(&v(&[X, Y]), &v(&[X, Y])).unwrap(), 1.0);
        close(kps(&v(&[X]), &v(&[Y])).unwrap(), 0.5);
        // Similarities 1 and 1/2: harmonic mean 2 / (1 + 2) = 2/3, below the arithmetic 3/4.
        close(kps(&v(&[X, X]), &v(&[X, Y])).unwrap(), 2.0 / 3.0);
        // One opposite pair sinks the score.
        close(kps(&v(&[X, X]), &v(&[X, NEG_X])).unwrap(), 0.0);
        assert!(kps(&[], &[]).unwrap_err().to_string().contains("at least one"));
        assert!(kps(&v(&[X, Y]), &v(&[X])).unwrap_err().to_string().contains("2 base and 1 adapted"));
    }

    #[test]
    fn diversity_is_mean_pairwise_distance() {
        close(diversity(&v(&[X, X, X])).unwrap(), 0.0);
        close(diversity(&v(&[X, Y])).unwrap(), 1.0);
        close(diversity(&v(&[X, NEG_X])).unwrap(), 2.0);
        // Pairs (X,Y)=1, (X,-X)=2, (Y,-X)=1: mean 4/3.
        close(diversity(&v(&[X, Y, NEG_X])).unwrap(), 4.0 / 3.0);
        assert!(diversity(&v(&[X])).unwrap_err().to_string().contains("at least 2 images, got 1"));
        assert!(diversity(&[]).unwrap_err().to_string().contains("got 0"));
    }

    #[test]
    fn errors_say_which_input() {
        let err = format!("{:#}", diversity(&v(&[X, [0.0, 0.0]])).unwrap_err());
        assert!(err.contains("images 0 and 1") && err.contains("zero"), "{err}");
    }
}
