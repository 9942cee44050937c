//! `eval` end to end on the fixture models: every image is generated and scored, results.json is
//! complete, and report.html renders in headless Chromium with all its images.
mod common;
use catlora::evaluation::eval::{EvalOptions, EvalResults, check_images, evaluate, write_outputs};
use catlora::io::image::{read_png_text, save_png};
use catlora::schedulers::SamplerKind;
use common::*;
use std::path::PathBuf;
use std::process::Command;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("catlora-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn eval_generates_scores_and_reports() {
    let dir = temp("e2e");
    let data = dir.join("data");
    for k in 0..2u8 {
        let rgb: Vec<u8> = (0..64 * 64 * 3).map(|i| ((i as u32 * (7 + k as u32)) % 251) as u8).collect();
        save_png(&data.join(format!("{k}.png")), &rgb, 64, 64, &[]).unwrap();
    }
    // The same adapter twice under two names: both must score identically.
    let lora = fixtures().join("lora-kohya/lora.safetensors");
    let copy = dir.join("second.safetensors");
    std::fs::copy(&lora, &copy).unwrap();
    let out = dir.join("out");
    let opts = EvalOptions {
        model: fixtures().join("tiny-sd"),
        clip: fixtures().join("tiny-clip"),
        adapters: vec![lora.clone(), copy.clone()],
        weights: Vec::new(),
        negative_prompt: String::new(),
        data,
        trigger: "sks".into(),
        prompts: vec!["sks, a photo of a teapot".into(), "a teapot on a table".into()],
        seeds: 2,
        first_seed: 5,
        steps: 2,
        sampler: SamplerKind::Ddim,
        cfg: 7.5,
        resolution: 64,
        out: out.clone(),
        device: "cpu".into(),
        precision: catlora::precision::Precision::Fp32,
    };
    let g = evaluate(&opts, |_| {}).unwrap();
    let r = &g.results;
    assert_eq!(r.images.len(), 3 * 2 * 2 * 2, "models x prompts x variants x seeds");
    assert_eq!(r.prompts[1], "sks, a teapot on a table");
    assert_eq!(r.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["base", "lora", "second"]);
    assert!(r.models[0].kps.is_none());
    let (a, b) = (&r.models[1], &r.models[2]);
    assert_eq!(a.kps, b.kps);
    assert_eq!(a.identity_similarity, b.identity_similarity);
    let kps = a.kps.unwrap();
    assert!(kps > 0.0 && kps < 1.0, "kps {kps}");
    // The base model's trigger-less images equal each adapter's when the adapter is off; with it on they differ.
    let base_plain = std::fs::read(out.join(&r.images.iter().find(|i| i.model == "base" && i.variant == "plain").unwrap().file)).unwrap();
    let lora_plain = std::fs::read(out.join(&r.images.iter().find(|i| i.model == "lora" && i.variant == "plain").unwrap().file)).unwrap();
    assert_ne!(base_plain, lora_plain);
    // Each image carries its settings as AUTOMATIC1111 writes them, the adapter as a LoRA tag.
    let text = |model: &str| {
        let rec = r.images.iter().find(|i| i.model == model && i.variant == "trigger").unwrap();
        read_png_text(&out.join(&rec.file)).unwrap().into_iter().find(|(k, _)| k == "parameters").expect("a parameters chunk").1
    };
    assert_eq!(
        text("lora"),
        "sks, a photo of a teapot <lora:lora:1>\nSteps: 2, Sampler: DDIM, CFG scale: 7.5, Seed: 5, Size: 64x64, Model: tiny-sd"
    );
    assert_eq!(text("base"), "sks, a photo of a teapot\nSteps: 2, Sampler: DDIM, CFG scale: 7.5, Seed: 5, Size: 64x64, Model: tiny-sd");

    write_outputs(&out, r, &opts.adapters, "catlora test report", "").unwrap();
    let back: EvalResults = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(&back, r);
    check_images(&out, &back).unwrap();

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("<img ").count(), r.images.len());
    assert!(!html.contains("http://") || html.matches("http://").all(|_| html.contains("http://www.w3.org/2000/svg")));

    // Rendered by a real browser: every image decodes (naturalWidth > 0) and the table is there.
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("headless Chromium is needed for this test: `apt-get install chromium` (.ci/run installs it)");
    let probe = out.join("probe.html");
    let script = r#"<script>window.onload=()=>{const i=[...document.images];document.title=i.length+' '+i.filter(x=>x.complete&&x.naturalWidth>0).length+' '+document.querySelectorAll('#metrics tr').length;}</script>"#;
    std::fs::write(&probe, html.replace("</body>", &format!("{script}</body>"))).unwrap();
    let profile = dir.join("chrome-profile");
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("file://{}", probe.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    let n = r.images.len();
    assert!(
        dom.contains(&format!("<title>{n} {n} 4</title>")),
        "Chromium did not render every image: {}",
        dom.lines().find(|l| l.contains("<title>")).unwrap_or("no title")
    );
    std::fs::remove_dir_all(dir).unwrap();
}
