//! `report.html`: one self-contained page (images inline, no scripts, no network) with the
//! metrics table, image grids and the training loss curves.
use super::results::EvalResults;
use anyhow::{Context, Result};
use std::fmt::Write;
use std::path::{Path, PathBuf};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn fmt(v: f64) -> String {
    format!("{v:.4}")
}

/// The charts of one training log (JSON lines with `step`): the loss terms, moving-averaged,
/// and, when the run evaluated itself (`eval` lines), its KPS, identity and prompt similarity.
fn loss_svg(name: &str, log: &Path) -> Result<String> {
    let text = std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    // A step line holds the step, the learning rate (another scale, not drawn) and every loss
    // term by name, the total as `loss`; terms that stay 0 are dropped below.
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut scores: Vec<(&str, Vec<(f64, f64)>)> =
        ["kps", "identity_similarity", "prompt_similarity"].iter().map(|&k| (k, Vec::new())).collect();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: malformed log line", log.display()))?;
        let step = v.get("step").and_then(|s| s.as_f64()).unwrap_or(0.0);
        if let Some(e) = v.get("eval") {
            for (key, pts) in scores.iter_mut() {
                if let Some(y) = e.get(*key).and_then(|y| y.as_f64()) {
                    pts.push((step, y));
                }
            }
            continue;
        }
        let terms = v.as_object().into_iter().flatten().filter(|(k, _)| !matches!(k.as_str(), "step" | "lr"));
        for (key, y) in terms.filter_map(|(k, y)| Some((k, y.as_f64()?))) {
            match series.iter_mut().find(|(k, _)| k == key) {
                Some((_, pts)) => pts.push((step, y)),
                None => series.push((key.clone(), vec![(step, y)])),
            }
        }
    }
    // The total first, then the terms by name.
    series.sort_by(|a, b| (a.0 != "loss", &a.0).cmp(&(b.0 != "loss", &b.0)));
    series.retain(|(_, p)| p.iter().any(|&(_, y)| y != 0.0));
    // Per-step losses are noisy (random timesteps): draw a moving average.
    let smooth = |p: &[(f64, f64)]| -> Vec<(f64, f64)> {
        let w = (p.len() / 20).max(1);
        (0..p.len())
            .map(|i| {
                let lo = i.saturating_sub(w - 1);
                (p[i].0, p[lo..=i].iter().map(|q| q.1).sum::<f64>() / (i + 1 - lo) as f64)
            })
            .collect()
    };
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series.iter().map(|(k, p)| (k.as_str(), smooth(p))).collect();
    let mut out = chart(name, &curves, &format!("{} (moving average)", escape(name)));
    scores.retain(|(_, p)| !p.is_empty());
    if !scores.is_empty() {
        out.push_str(&chart(name, &scores, &format!("{}: evaluations during training", escape(name))));
    }
    Ok(out)
}

/// One line chart: each curve as (name, points), the y axis from 0 to the largest value.
fn chart(name: &str, curves: &[(&str, Vec<(f64, f64)>)], caption: &str) -> String {
    let (w, h, pad) = (480.0, 220.0, 36.0);
    let xmax = curves.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).fold(1.0f64, f64::max);
    let ymax = curves.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).fold(1e-12f64, f64::max);
    let colours = ["#222", "#1f77b4", "#9467bd", "#d62728", "#ff7f0e", "#8c564b", "#2ca02c"];
    let mut s = format!(
        r##"<figure><svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="loss curves of {n}"><rect width="100%" height="100%" fill="#fff" stroke="#ccc"/>"##,
        n = escape(name)
    );
    let _ = write!(
        s,
        r#"<text x="4" y="14" font-size="11">{}</text><text x="{}" y="{}" font-size="11">step {}</text>"#,
        fmt(ymax),
        w - 90.0,
        h - 6.0,
        xmax as u64
    );
    for (i, (key, pts)) in curves.iter().enumerate() {
        let points: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", pad + x / xmax * (w - 2.0 * pad), h - pad - y / ymax * (h - 2.0 * pad)))
            .collect();
        let c = colours[i % colours.len()];
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" font-size="11" fill="{c}">{k}</text>"#,
            points.join(" "),
            w - 80.0,
            16.0 + 14.0 * i as f64,
            k = escape(key)
        );
    }
    let _ = write!(s, "</svg><figcaption>{caption}</figcaption></figure>");
    s
}

/// Renders the report. `logs` are the training logs found beside the adapters.
pub fn render(out: &Path, r: &EvalResults, logs: &[(String, PathBuf)], title: &str, notes_html: &str) -> Result<String> {
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{t}</title><style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;margin:12px 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} th:first-child,td:first-child{{text-align:left}}
.grid td{{text-align:center;vertical-align:top}} .grid img{{width:96px;height:96px;image-rendering:pixelated;margin:1px}}
figure{{display:inline-block;margin:8px}} .note{{color:#555;max-width:60em}}</style></head><body><h1>{t}</h1>"#,
        t = escape(title)
    );
    h.push_str(notes_html);
    let _ = write!(
        h,
        "<p>Trigger <code>{}</code>, {} prompts, seeds {:?}, {} steps of {}, CFG {}, {} px.</p>",
        escape(&r.trigger),
        r.prompts.len(),
        r.seeds,
        r.steps,
        escape(&r.sampler),
        r.cfg,
        r.resolution
    );

    let extra_keys: Vec<String> = {
        let mut k: Vec<String> = r.models.iter().flat_map(|m| m.extra.keys().cloned()).collect();
        k.sort();
        k.dedup();
        k
    };
    h.push_str(r#"<h2>Metrics</h2><table id="metrics"><tr><th>model</th><th>prompt similarity</th><th>identity similarity</th><th>KPS</th><th>diversity</th>"#);
    for k in &extra_keys {
        let _ = write!(h, "<th>{}</th>", escape(&k.replace('_', " ")));
    }
    h.push_str("</tr>");
    for m in &r.models {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            escape(&m.name),
            fmt(m.prompt_similarity),
            fmt(m.identity_similarity),
            m.kps.map_or("–".into(), fmt),
            fmt(m.diversity)
        );
        for k in &extra_keys {
            let _ = write!(h, "<td>{}</td>", m.extra.get(k).map_or("–".into(), |v| fmt(*v)));
        }
        h.push_str("</tr>");
    }
    h.push_str(r#"</table><p class="note">Prompt similarity: mean CLIP cosine between the trigger-less prompt and the trigger-prompt images. Identity similarity: mean (cos+1)/2 between trigger-prompt images and the training images. KPS: harmonic mean over (prompt, seed) of (cos+1)/2 between the base model's and the adapter's trigger-less images; the paper's own KPS formula is not public, this is catlora's reconstruction. Diversity: mean 1−cos over pairs of trigger-less images of one prompt. Definitions: <code>src/evaluation/metrics.rs</code>.</p>"#);

    let models: Vec<&str> = r.models.iter().map(|m| m.name.as_str()).collect();
    for (variant, heading) in [("trigger", "With the trigger"), ("plain", "Without the trigger (knowledge preservation)")] {
        let _ = write!(h, r#"<h2>{heading}</h2><table class="grid"><tr><th>prompt</th>"#);
        for m in &models {
            let _ = write!(h, "<th>{}</th>", escape(m));
        }
        h.push_str("</tr>");
        for pi in 0..r.prompts.len() {
            let prompt = r.images.iter().find(|i| i.prompt_index == pi && i.variant == variant).map(|i| i.prompt.as_str()).unwrap_or("");
            let _ = write!(h, "<tr><td>{}</td>", escape(prompt));
            for m in &models {
                h.push_str("<td>");
                for img in r.images.iter().filter(|i| i.prompt_index == pi && i.variant == variant && i.model == *m) {
                    let bytes =
                        std::fs::read(out.join(&img.file)).with_context(|| format!("cannot read {}", out.join(&img.file).display()))?;
                    let _ = write!(h, r#"<img alt="{} seed {}" src="data:image/png;base64,{}">"#, escape(m), img.seed, base64(&bytes));
                }
                h.push_str("</td>");
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    if !logs.is_empty() {
        h.push_str("<h2>Training loss</h2>");
        for (name, log) in logs {
            h.push_str(&loss_svg(name, log)?);
        }
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_chart_draws_each_logged_term_that_moves() {
        let dir = std::env::temp_dir().join(format!("catlora-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("a.log.jsonl");
        let lines = [
            r#"{"step":1,"lr":0.5,"loss":0.3,"diffusion":0.2,"cat":0.1,"blank":0}"#,
            r#"{"step":2,"lr":0.5,"loss":0.25,"diffusion":0.15,"cat":0.1,"blank":0}"#,
            r#"{"step":2,"eval":{"kps":0.9}}"#,
        ];
        std::fs::write(&log, lines.join("\n")).unwrap();
        let svg = loss_svg("a", &log).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let legend = |k: &str| svg.match_indices(&format!(">{k}</text>")).count();
        assert_eq!([legend("loss"), legend("cat"), legend("diffusion"), legend("kps")], [1, 1, 1, 1], "{svg}");
        assert_eq!([legend("lr"), legend("blank"), legend("step")], [0, 0, 0], "the rate, a zero term and the step are not drawn");
        let order: Vec<usize> = ["loss", "cat", "diffusion"].iter().map(|k| svg.find(&format!(">{k}</text>")).unwrap()).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "the total first, then the terms by name");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
