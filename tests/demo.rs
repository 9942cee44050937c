//! `catlora demo` end to end with the embedded toy models: every file it promises, every number
//! per method, and the paper's claims as this run shows them.
use std::process::Command;

#[test]
fn demo_runs_on_the_embedded_models_and_shows_the_claims() {
    let out = std::env::temp_dir().join(format!("catlora-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(env!("CARGO_BIN_EXE_catlora")).args(["demo", "--out"]).arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "demo failed: {stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("KPS") && stdout.contains("cat") && stdout.contains("dreambooth"), "{stdout}");

    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    for method in ["base", "lora", "cat", "dreambooth"] {
        let m = &r["methods"][method];
        for key in ["identity_similarity", "prompt_similarity", "diversity", "copy_rate", "colour_diversity"] {
            assert!(m[key].as_f64().is_some_and(f64::is_finite), "{method}.{key} missing: {m}");
        }
        assert_eq!(m["kps"].is_null(), method == "base", "{method}.kps: {m}");
        // The histogram behind colour_diversity covers every class image: 32 seeds x 4 prompts.
        let n: u64 = m["colours"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(n, 128, "{method}.colours: {m}");
        // The second, guided sampling of the same class prompts.
        let g = &m["guided"];
        assert!(g["colour_diversity"].as_f64().is_some_and(f64::is_finite) && g["copy_rate"].as_f64().is_some(), "{method}.guided: {m}");
        let n: u64 = g["colours"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(n, 128, "{method}.guided.colours: {m}");
        assert!(out.join(format!("guided/{method}/p03-s31.png")).is_file(), "guided images of {method} missing");
    }
    let claims = r["claims"].as_array().unwrap();
    assert_eq!(claims.len(), 4);
    // The paper's claims, with the committed models and the defaults.
    for c in claims {
        assert!(c["holds"].as_bool().unwrap(), "does not hold: {}", c["claim"]);
    }

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("with guidance 3") && html.contains("copy rate") && html.contains("colour diversity") && html.contains("<svg"),
        "report lacks its parts"
    );
    for f in [
        "adapters/lora.safetensors",
        "adapters/cat.safetensors",
        "adapters/dreambooth.safetensors",
        "adapters/cat.log.jsonl",
        "data/00.png",
        "data/00.txt",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    std::fs::remove_dir_all(&out).unwrap();
}
